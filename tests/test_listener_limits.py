"""The submission listener under attack: an open relay refused at load, clients
not listed refused at connect, connection caps, the greeting and idle
deadlines, AUTH guessing slowed by growing lockouts, accept errors logged once,
and a flood of idle connections that leaves delivery running. Real sockets
from many loopback source addresses, a real daemon, a real relay."""

from __future__ import annotations

import base64
import logging
import math
import os
import resource
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailmand import Client, Email
from mailmand.config import AuthConfig, SubmissionConfig, load
from mailmand.errors import ConfigError
from mailmand.submission import SubmissionServer
from tests.conftest import ROOT, run_cli
from tests.daemonproc import DaemonProcess, wait_until

PASSWORD = "correct-horse-9"
MESSAGE = b"From: app@example.com\r\nTo: ann@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connect(port: int, source: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def line(s: socket.socket) -> bytes:
    """One reply line, or b"" at EOF."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            return data
        data += chunk
    return data


@pytest.fixture
def listener(make_config) -> Iterator:
    """listener(**submission_keys) -> (server, port): an in-process listener on 0.0.0.0."""
    started: list[SubmissionServer] = []

    def start(**keys: object) -> tuple[SubmissionServer, int]:
        keys.setdefault("listen", ("0.0.0.0:0",))
        keys.setdefault("clients", ("127.0.0.0/8",))
        srv = SubmissionServer(make_config(submission=SubmissionConfig(**keys))).start()  # type: ignore[arg-type]
        started.append(srv)
        return srv, srv.addresses[0][1]

    yield start
    for srv in started:
        srv.stop()


# -- who may submit ------------------------------------------------------------------------


def test_an_open_relay_is_a_configuration_error(write_config, make_config):
    port = free_port()
    conf = write_config(9, extra_server=f"    submission:\n      listen: 0.0.0.0:{port}\n")
    for cmd in (("check-config", "-c", str(conf)), ("run", "-c", str(conf))):
        out = run_cli(*cmd, timeout=30)
        assert out.returncode == os.EX_CONFIG, (cmd, out.stderr)
        assert (f"email.server.submission.listen: 0.0.0.0:{port} is not on loopback and has no auth: anyone "
                "who can reach it could send mail through your relay; set auth, or name who may submit in "
                "clients: [CIDR, ...]") in out.stderr.decode()
    with pytest.raises(ConfigError, match="is not on loopback and has no auth"):
        SubmissionServer(make_config(submission=SubmissionConfig(listen=("0.0.0.0:0",))))
    for extra in ("      clients: [10.0.0.0/8, 127.0.0.1]\n", "      auth: {username: a, password: b}\n"):
        conf.write_text(conf.read_text().replace(f"0.0.0.0:{port}\n", f"0.0.0.0:{port}\n{extra}"))
        conf.chmod(0o600)
        assert run_cli("check-config", "-c", str(conf)).returncode == 0
        conf = write_config(9, extra_server=f"    submission:\n      listen: 0.0.0.0:{port}\n")
    assert load(write_config(9, extra_server="    submission:\n      listen: 127.0.0.1:2525\n")).server.submission


def test_clients_not_listed_are_refused_at_connect(listener):
    srv, port = listener(clients=("127.0.0.2/32",))
    with connect(port, "127.0.0.1") as s:
        assert line(s).startswith(b"554 5.7.1 127.0.0.1 may not submit mail here")
        assert line(s) == b""
    with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.2", 0), timeout=10) as s:
        s.ehlo()
        s.mail("app@example.com")
        s.rcpt("ann@example.com")
        assert s.data(MESSAGE)[0] == 250


# -- how many ------------------------------------------------------------------------------


def test_connections_past_the_caps_get_421_and_a_close_frees_a_place(listener):
    srv, port = listener(max_connections=3, max_connections_per_client=2)
    held = [connect(port, "127.0.0.2"), connect(port, "127.0.0.2")]
    for s in held:
        assert line(s).startswith(b"220 ")
    with connect(port, "127.0.0.2") as s:
        assert line(s).startswith(b"421 4.7.0 Too many connections from 127.0.0.2")
        assert line(s) == b""
    held.append(connect(port, "127.0.0.3"))
    assert line(held[-1]).startswith(b"220 ")
    with connect(port, "127.0.0.4") as s:
        assert line(s).startswith(b"421 4.7.0 Too many connections, try again later")
    held.pop(0).close()
    assert wait_until(lambda: srv.guard.anvil.total == 2, timeout=10)
    with connect(port, "127.0.0.4") as s:
        assert line(s).startswith(b"220 ")
    for s in held:
        s.close()


# -- how long ------------------------------------------------------------------------------


def test_a_client_that_never_greets_is_dropped(listener):
    srv, port = listener(greeting_timeout=1.0)
    with connect(port) as silent, connect(port) as greeted:
        assert line(silent).startswith(b"220 ") and line(greeted).startswith(b"220 ")
        greeted.sendall(b"EHLO client.example\r\n")
        while not line(greeted).startswith(b"250 "):
            pass
        assert line(silent).startswith(b"421 4.4.2 ")  # not a command in a second: gone
        assert line(silent) == b""
        time.sleep(1.5)  # past the greeting deadline: a greeted client stays
        greeted.sendall(b"NOOP\r\n")
        assert line(greeted).startswith(b"250 ")


def test_an_idle_client_is_dropped_after_timeout(listener):
    srv, port = listener(timeout=1.0)
    with connect(port, timeout=30) as s:
        assert line(s).startswith(b"220 ")
        s.sendall(b"EHLO client.example\r\n")
        while not line(s).startswith(b"250 "):
            pass
        assert line(s) == b"", "an idle client must be closed"
    assert wait_until(lambda: srv.guard.anvil.total == 0, timeout=10)


# -- how often AUTH may fail ---------------------------------------------------------------


def _auth(s: smtplib.SMTP, password: str) -> int:
    code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0app\0{password}".encode()).decode())
    return code


def test_guessing_is_slowed_to_under_one_try_a_second_per_client(listener):
    srv, port = listener(listen=("127.0.0.1:0",), auth=AuthConfig(username="app", password=PASSWORD))
    replies: dict[int, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def guesser(n: int) -> None:  # one of ten connections from one address, each reconnecting
        guess = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.9", 0), timeout=30) as s:
                    s.ehlo()
                    while not stop.is_set():
                        guess += 1
                        code = _auth(s, f"guess-{n}-{guess}")
                        with lock:
                            replies[code] = replies.get(code, 0) + 1
            except (smtplib.SMTPException, OSError) as exc:
                code = getattr(exc, "smtp_code", 0)
                with lock:
                    replies[code] = replies.get(code, 0) + 1
                stop.wait(0.05)

    threads = [threading.Thread(target=guesser, args=(n,), daemon=True) for n in range(9)]
    started = time.monotonic()
    for t in threads:
        t.start()
    stop.wait(8)
    # Meanwhile: the right password from that address is not even checked...
    def right_password() -> bytes:
        try:
            with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.9", 0), timeout=30) as s:
                s.ehlo()
                code, text = s.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0app\0{PASSWORD}".encode()).decode())
                return b"%d %s" % (code, text)
        except smtplib.SMTPConnectError as exc:
            return b"%d %s" % (exc.smtp_code, exc.smtp_error)

    reply = right_password()
    while b"Too many connections" in reply:  # the guessers hold the client's places: try again
        reply = right_password()
    assert reply.startswith((b"454 4.7.0 Too many failed logins", b"421 4.7.0 Too many failed logins")), reply
    # ...while another client logs in as ever.
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo()
        assert _auth(s, PASSWORD) == 235
    stop.set()
    elapsed = time.monotonic() - started
    for t in threads:
        t.join(timeout=60)
    checked = replies.get(535, 0)  # passwords checked and refused (454 and 421: not checked)
    print(f"\nguessing from one address, 9 connections, {elapsed:.1f}s: {checked} password(s) checked "
          f"({checked / elapsed:.2f}/s); replies {dict(sorted(replies.items()))}")
    assert 1 <= checked <= 1 + elapsed, replies  # at most one a second...
    # ...and fewer as it goes on: each check waits for the lockout the previous one started,
    # which doubles (1 s, 2 s, 4 s, ...), so n checks take at least 2^(n-1) - 1 seconds.
    assert checked <= 1 + math.log2(1 + elapsed), replies
    assert replies.get(454, 0) + replies.get(421, 0) > 0, replies


def test_each_failure_costs_a_growing_delay_and_then_the_connection(listener):
    srv, port = listener(listen=("127.0.0.1:0",), auth=AuthConfig(username="app", password=PASSWORD),
                         auth_failures=2)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo()
        for lockout in (1.0, 2.0):  # FAIL_DELAY, then doubled
            asked = time.monotonic()
            assert _auth(s, "wrong") == 535
            assert time.monotonic() - asked >= lockout, "a refused password is answered after its lockout"
        assert s.getreply()[0] == 421  # auth-failures reached: too many failed logins, closed
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.noop()


def test_a_locked_out_client_is_not_checked_even_with_the_right_password(listener):
    srv, port = listener(listen=("127.0.0.1:0",), auth=AuthConfig(username="app", password=PASSWORD))
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as waiting, \
            smtplib.SMTP("127.0.0.1", port, timeout=30) as guessing:
        waiting.ehlo()  # connected before the lockout
        guessing.ehlo()
        guessing.putcmd("AUTH", "PLAIN " + base64.b64encode(b"\0app\0wrong").decode())
        assert wait_until(lambda: srv.guard.anvil.locked("127.0.0.1") > 0, timeout=10)
        code, text = waiting.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0app\0{PASSWORD}".encode()).decode())
        assert code == 454 and b"4.7.0 Too many failed logins from 127.0.0.1" in text, (code, text)
        assert guessing.getreply()[0] == 535
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:  # once the lockout is over
        s.ehlo()
        assert wait_until(lambda: srv.guard.anvil.locked("127.0.0.1") == 0, timeout=10)
        assert _auth(s, PASSWORD) == 235


# -- accept errors --------------------------------------------------------------------------


def test_accept_errors_are_logged_once_then_summarised(listener, caplog):
    srv, port = listener()
    clients = [socket.socket() for _ in range(20)]  # made now: the test process is about to run out
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hogs: list[int] = []
    with caplog.at_level(logging.WARNING):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
            try:
                while True:
                    hogs.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            for c in clients:
                c.settimeout(10)
                c.connect(("127.0.0.1", port))
            time.sleep(2.5)  # asyncio retries the accept each second: several failures
        finally:
            for fd in hogs:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for c in clients[:10]:
            assert line(c).startswith(b"220 "), "accepted once handles are free again"
    for c in clients:
        c.close()
    lines = [r for r in caplog.records if "accept" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "cannot accept connections" in lines[0].getMessage() and not lines[0].exc_info


# -- a flood ---------------------------------------------------------------------------------


def flood(port: int, count: int, sources: int) -> list[socket.socket]:
    """`count` idle connections from `sources` loopback addresses (127.0.1.x): they say nothing."""
    held = []
    for i in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.bind((f"127.0.1.{1 + i % sources}", 0))
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        held.append(s)
    return held


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def deliver_during(relay, conf: Path, n: int) -> None:
    client = Client(load(conf))
    try:
        for i in range(n):
            client.enqueue(Email(sender="app@example.com", to="ann@example.com", subject=f"during {i}", text="x"))
    finally:
        client.close()
    assert wait_until(lambda: len(relay.messages) >= n, timeout=60), f"{len(relay.messages)} of {n} delivered"


def test_two_thousand_idle_connections_do_not_stop_delivery(smtp_server, write_config):
    relay = smtp_server()
    port = free_port()
    conf = write_config(relay.port, extra_server=f"    submission:\n      listen: 127.0.0.1:{port}\n"
                                                 "      greeting-timeout: 5m\n")  # they all stay
    daemon = DaemonProcess(conf).ready()
    held: list[socket.socket] = []
    try:
        daemon.wait_for(f"submission listening on 127.0.0.1:{port}")
        before = open_files(daemon.proc.pid)
        held = flood(port, 2000, sources=200)
        assert wait_until(lambda: "submission: refused a connection" in daemon.log, timeout=30), daemon.log
        time.sleep(2)  # the backlog drains: every connection admitted or refused
        during = open_files(daemon.proc.pid)
        deliver_during(relay, conf, 20)
        print(f"\n2000 idle connections from 200 addresses: daemon files {before} -> {during}; "
              f"20 of 20 delivered meanwhile")
        assert during - before <= 100 + 10, (before, during)  # max-connections, and a little slack
        assert daemon.proc.poll() is None
        # 1,900 refusals so far: one line (a summary a minute after).
        assert daemon.log.count("submission: refused a connection from") == 1, daemon.log
    finally:
        for s in held:
            s.close()
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.log


def test_the_reserve_keeps_file_handles_for_delivery(smtp_server, write_config):
    """A process allowed 256 files, a listener asked to hold 1000: the listener
    gets what is left after the reserve, and delivery goes on through a flood."""
    relay = smtp_server()
    port = free_port()
    conf = write_config(relay.port, extra_server=f"    submission:\n      listen: 127.0.0.1:{port}\n"
                                                 "      max-connections: 1000\n"
                                                 "      max-connections-per-client: 1000\n"
                                                 "      greeting-timeout: 5m\n")
    proc = subprocess.Popen(["prlimit", "--nofile=256:256", "--", sys.executable, "-m", "mailmand", "run",
                             "-c", str(conf)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    held: list[socket.socket] = []
    try:
        assert wait_until(lambda: any("mailmand running" in x for x in lines), timeout=30), lines
        assert wait_until(lambda: any("submission listening" in x for x in lines), timeout=30), lines
        warned = [x for x in lines if "max-connections 1000 lowered to" in x]
        assert warned, lines
        held = flood(port, 600, sources=1)
        time.sleep(2)
        deliver_during(relay, conf, 10)
        assert proc.poll() is None
    finally:
        for s in held:
            s.close()
        proc.terminate()
        proc.wait(timeout=60)
        reader.join(timeout=10)
        proc.stderr.close()  # type: ignore[union-attr]
    log = "".join(lines)
    assert "Too many open files" not in log, log[-3000:]
    assert "Traceback" not in log


def test_the_documented_defaults(write_config):
    sub = load(write_config(9, extra_server="    submission:\n      listen: 127.0.0.1:2525\n")).server.submission
    assert sub is not None
    assert (sub.clients, sub.max_connections, sub.max_connections_per_client, sub.auth_failures,
            sub.greeting_timeout, sub.timeout) == (None, 100, 10, 3, 30.0, 300.0)
