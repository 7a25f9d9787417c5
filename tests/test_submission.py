"""The SMTP submission listener: smtplib against a real listener, delivery through a
real `mailmand run` to a real aiosmtpd relay, a SIGKILL right after the 250, and
each error reply a client must understand."""

from __future__ import annotations

import base64
import os
import re
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import threading
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from mailmand.config import AuthConfig, Config, SubmissionConfig, TlsFilesConfig, load, replace
from mailmand.errors import NotFound
from mailmand.queues.spool import SpoolQueue
from mailmand.stores import Status, open_store
from mailmand.submission import SubmissionServer, _Smtp
from tests.conftest import run_cli
from tests.daemonproc import DaemonProcess, wait_until

MESSAGE = (b"From: App <app@example.com>\r\nTo: ann@example.com\r\nBcc: hidden@example.com\r\n"
           b"Subject: submitted\r\n\r\nhello over SMTP\r\n")
QUEUED = re.compile(r"2\.0\.0 queued as ([0-9a-f]{32})$")
SESSIONS = 6  # concurrent clients in the group-commit tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def submit(port: int, raw: bytes = MESSAGE, rcpt: tuple[str, ...] = ("ann@example.com", "hidden@example.com"),
           sender: str = "app@example.com") -> tuple[int, str]:
    """MAIL, RCPT, DATA by hand: the DATA reply is what a client reads the id from."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo()
        assert s.mail(sender)[0] == 250
        for r in rcpt:
            assert s.rcpt(r)[0] == 250
        code, text = s.data(raw)
        return code, text.decode()


def pending(cfg: Config) -> int:
    q = SpoolQueue(cfg.queue.path)
    try:
        return q.pending()
    finally:
        q.close()


@pytest.fixture
def listener(make_config) -> Iterator:
    """An in-process listener on a free loopback port: listener(**server_config) -> (server, cfg)."""
    started: list[SubmissionServer] = []

    def start(listen: str = "127.0.0.1:0", auth: AuthConfig | None = None, tls: TlsFilesConfig | None = None,
              **server: object) -> tuple[SubmissionServer, Config]:
        cfg = make_config(submission=SubmissionConfig(listen=(listen,), auth=auth, tls=tls), **server)
        srv = SubmissionServer(cfg).start()
        started.append(srv)
        return srv, cfg

    yield start
    for srv in started:
        srv.stop()


def server_yaml(port: int) -> str:
    return f"    submission:\n      listen: 127.0.0.1:{port}\n"


# -- through a real daemon ---------------------------------------------------------


def test_submitted_message_is_delivered_with_its_id_and_bcc_in_the_envelope_only(smtp_server, write_config):
    relay = smtp_server()
    port = free_port()
    conf = write_config(relay.port, extra_server=server_yaml(port))
    daemon = DaemonProcess(conf).ready()
    try:
        daemon.wait_for(f"submission listening on 127.0.0.1:{port}")
        code, text = submit(port)
        assert code == 250, text
        m = QUEUED.match(text)
        assert m, f"reply {text!r} is not Postfix's `queued as <id>` shape"
        assert wait_until(lambda: len(relay.messages) == 1, timeout=20)
    finally:
        assert daemon.stop() == 0
    got = relay.messages[0]
    assert got.mail_from == "app@example.com"
    assert set(got.rcpt_tos) == {"ann@example.com", "hidden@example.com"}
    parsed = message_from_bytes(got.data)
    assert parsed["Bcc"] is None, "a Bcc header must never reach the relay"
    assert parsed["Subject"] == "submitted" and parsed.get_payload().strip() == "hello over SMTP"
    assert parsed["Message-ID"], "the pipeline adds what the client did not give"
    shown = run_cli("show", m.group(1), "--json", "-c", str(conf))
    assert shown.returncode == 0, shown.stderr
    assert '"status": "sent"' in shown.stdout.decode()


def test_sigkill_right_after_the_250_then_restart_delivers(smtp_server, write_config):
    relay = smtp_server()
    port = free_port()
    # The first daemon's relay is a port nobody listens on: whatever it did with
    # the message, only the 250's promise can get it delivered after the kill.
    dead_conf = write_config(free_port(), extra_server=server_yaml(port))
    daemon = DaemonProcess(dead_conf).ready()
    daemon.wait_for(f"submission listening on 127.0.0.1:{port}")
    code, text = submit(port)
    daemon.kill()
    assert code == 250, text
    message_id = QUEUED.match(text).group(1)  # type: ignore[union-attr]
    conf = write_config(relay.port, extra_server=server_yaml(port))  # same spool and store, a live relay
    restarted = DaemonProcess(conf).ready()
    try:
        assert wait_until(lambda: len(relay.messages) >= 1, timeout=30), restarted.log
    finally:
        assert restarted.stop() == 0
    assert len(relay.messages) == 1
    assert message_from_bytes(relay.messages[0].data)["Subject"] == "submitted"
    store = open_store(load(conf).server.database)
    try:
        assert store.get(message_id).status is Status.SENT
    finally:
        store.close()


def test_sigkill_with_sessions_in_flight_then_restart_delivers_every_250(smtp_server, write_config):
    """Several sessions submit at once, so their messages share queue writes (a group
    commit); the daemon is killed in the middle of it. Every message that got its 250 is
    delivered after the restart: a 250 came only once its write was durable, whichever
    write it was in."""
    relay = smtp_server()
    port = free_port()
    dead_conf = write_config(free_port(), extra_server=server_yaml(port))
    daemon = DaemonProcess(dead_conf).ready()
    daemon.wait_for(f"submission listening on 127.0.0.1:{port}")
    answered: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(SESSIONS)

    def session(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo()
                start.wait()
                for i in range(1000):
                    s.mail("app@example.com")
                    s.rcpt("ann@example.com")
                    code, text = s.data(MESSAGE.replace(b"Subject: submitted", f"Subject: s{n}-{i}".encode()))
                    m = QUEUED.match(text.decode())
                    if code == 250 and m:
                        with lock:
                            answered.append(m.group(1))
        except (OSError, smtplib.SMTPException):
            return  # the daemon died under it: what got no 250 is the client's to send again

    threads = [threading.Thread(target=session, args=(n,)) for n in range(SESSIONS)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(answered) >= 60, timeout=60), daemon.log
    daemon.kill()
    for t in threads:
        t.join(30)
    ids = set(answered)
    conf = write_config(relay.port, extra_server=server_yaml(port))  # same spool and store, a live relay
    restarted = DaemonProcess(conf).ready()
    store = open_store(load(conf).server.database)
    try:
        def delivered() -> bool:
            try:
                return all(store.get(i).status is Status.SENT for i in ids)
            except NotFound:  # still in the spool: the restarted daemon has not ingested it yet
                return False

        assert wait_until(delivered, timeout=60), restarted.log
    finally:
        store.close()
        assert restarted.stop() == 0
    assert len(relay.messages) >= len(ids)


def test_a_listen_address_in_use_stops_the_start_with_one_line(write_config):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = write_config(9, extra_server=server_yaml(port))
        out = run_cli("run", "-c", str(conf), timeout=30)
    assert out.returncode != 0
    err = out.stderr.decode()
    assert f"email.server.submission.listen: cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err


# -- replies, in process ------------------------------------------------------------


def test_250_only_once_the_queue_holds_it(listener):
    srv, cfg = listener()
    port = srv.addresses[0][1]
    code, text = submit(port)
    assert code == 250 and QUEUED.match(text), text
    assert pending(cfg) == 1


def test_messages_that_arrive_together_share_a_write_and_hear_250_only_after_it(listener):
    """The group commit, seen from the clients: while the spool cannot be written (the
    test holds its write lock, as a long sync would), every session waits for its reply;
    once it can, they all get their 250, from fewer writes than messages."""
    srv, cfg = listener()
    port = srv.addresses[0][1]
    assert submit(port)[0] == 250  # the spool and its table are there
    writes = srv.commits.writes
    blocker = sqlite3.connect(cfg.queue.path / "data.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock: the listener's next write waits on it
    replies: list[tuple[int, str]] = []
    threads = [threading.Thread(target=lambda: replies.append(submit(port))) for _ in range(SESSIONS)]
    try:
        for t in threads:
            t.start()
        # Every message has been received and is waiting on a write: the first on the lock,
        # the rest for the write after it.
        assert wait_until(lambda: srv.commits.waiting == SESSIONS - 1, timeout=30)
        assert replies == [], "a 250 before the write it is in"
        assert pending(cfg) == 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    for t in threads:
        t.join(30)
    assert [code for code, _ in replies] == [250] * SESSIONS, replies
    assert pending(cfg) == 1 + SESSIONS
    assert srv.commits.writes - writes == 2  # one waiting on the lock, then one for all the rest


def test_malformed_addresses_get_501_or_553_and_nothing_is_queued(listener):
    srv, cfg = listener()
    with smtplib.SMTP("127.0.0.1", srv.addresses[0][1], timeout=10) as s:
        s.ehlo()
        assert s.mail("not an address")[0] in (501, 553)
        assert s.mail("a@b..example")[0] == 553
        assert s.mail("app@example.com")[0] == 250
        code, text = s.rcpt("nobody@")
        assert code in (501, 553), text
        assert s.rcpt("x@@example.com")[0] in (501, 553)
        assert s.docmd("DATA")[0] == 503  # no valid recipient: no transaction to finish
    assert pending(cfg) == 0


def test_size_is_advertised_and_552_past_it(listener):
    srv, cfg = listener(max_message_size=2048)
    port = srv.addresses[0][1]
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo()
        assert s.esmtp_features["size"] == "2048"
        assert s.mail("app@example.com", ["SIZE=100000"])[0] == 552  # declared up front
        s.rset()
        assert s.mail("app@example.com")[0] == 250
        assert s.rcpt("ann@example.com")[0] == 250
        big = MESSAGE + (b"x" * 70 + b"\r\n") * 60
        code, text = s.data(big)
        assert code == 552, text
        # The client's limit counts the message as queued (with the headers it adds):
        # one just under SIZE is still refused when it grows past max-message-size.
        s.rset()
        s.mail("app@example.com")
        s.rcpt("ann@example.com")
        near = MESSAGE + (b"y" * 70 + b"\r\n") * 26
        near += b"z" * (2030 - len(near)) + b"\r\n"  # 2032 bytes: under SIZE until Message-ID and Date
        code, text = s.data(near)
        assert code == 552 and b"5.3.4" in text, text
    assert pending(cfg) == 0


def test_more_than_max_recipients_get_452_and_the_rest_is_queued(listener):
    srv, cfg = listener(max_recipients=2)
    with smtplib.SMTP("127.0.0.1", srv.addresses[0][1], timeout=10) as s:
        s.ehlo()
        s.mail("app@example.com")
        assert s.rcpt("a@example.com")[0] == 250
        assert s.rcpt("b@example.com")[0] == 250
        code, text = s.rcpt("c@example.com")
        assert code == 452 and b"max-recipients is 2" in text
        code, text = s.data(MESSAGE)
        assert code == 250, text
    q = SpoolQueue(cfg.queue.path, daemon=True)
    try:
        [item] = q.take(10)
        assert item.data["rcpt_to"] == ["a@example.com", "b@example.com"]
    finally:
        q.close()


def test_auth_required_530_then_plain_and_login_work(listener):
    srv, cfg = listener(auth=AuthConfig(username="app", password="s3cret"))
    port = srv.addresses[0][1]
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo()
        assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
        code, text = s.mail("app@example.com")
        assert code == 530, text
    for mechanism in ("PLAIN", "LOGIN"):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo()
            s.user, s.password = "app", "wrong"
            auth = s.auth_plain if mechanism == "PLAIN" else s.auth_login
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                s.auth(mechanism, auth, initial_response_ok=mechanism == "PLAIN")
            assert refused.value.smtp_code == 535
            s.user, s.password = "app", "s3cret"
            assert s.auth(mechanism, auth, initial_response_ok=mechanism == "PLAIN")[0] == 235
            s.mail("app@example.com")
            s.rcpt("ann@example.com")
            code, text = s.data(MESSAGE)
            assert code == 250, (mechanism, text)
    assert pending(cfg) == 2


def test_auth_in_clear_off_loopback_gets_538(listener):
    srv, cfg = listener(listen="0.0.0.0:0", auth=AuthConfig(username="app", password="s3cret"))
    with smtplib.SMTP("127.0.0.1", srv.addresses[0][1], timeout=10) as s:
        s.ehlo()
        assert "auth" not in s.esmtp_features, "AUTH is offered only after STARTTLS off loopback"
        code, text = s.docmd("AUTH", "PLAIN AGFwcABzM2NyZXQ=")  # \0app\0s3cret
        assert code == 538, text
        assert s.mail("app@example.com")[0] == 530
    assert pending(cfg) == 0


def test_starttls_off_loopback_then_auth_then_queued(listener, tls_ca, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    tls_ca.cert.cert_chain_pems[0].write_to_path(str(cert))
    tls_ca.cert.private_key_pem.write_to_path(str(key))
    srv, cfg = listener(listen="0.0.0.0:0", auth=AuthConfig(username="app", password="s3cret"),
                        tls=TlsFilesConfig(cert_file=cert, key_file=key))
    context = ssl.create_default_context(cafile=str(tls_ca.ca_file))
    with smtplib.SMTP("127.0.0.1", srv.addresses[0][1], timeout=10) as s:
        s.ehlo()
        assert "starttls" in s.esmtp_features
        assert s.starttls(context=context)[0] == 220  # verified against the test CA
        s.ehlo()
        assert "PLAIN" in s.esmtp_features["auth"]
        s.login("app", "s3cret")
        s.mail("app@example.com")
        s.rcpt("ann@example.com")
        code, text = s.data(MESSAGE)
        assert code == 250, text
    assert pending(cfg) == 1


def test_without_auth_configured_auth_is_neither_offered_nor_accepted(listener):
    srv, cfg = listener()
    with smtplib.SMTP("127.0.0.1", srv.addresses[0][1], timeout=10) as s:
        s.ehlo()
        assert "auth" not in s.esmtp_features
        assert s.docmd("AUTH", "PLAIN AGFwcABzM2NyZXQ=")[0] == 502


def _mount_tmpfs(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def test_a_full_spool_disk_gets_451_and_recovers_without_restart(make_config, tmp_path):
    disk = tmp_path / "small"
    _mount_tmpfs(disk)
    try:
        cfg = make_config(submission=SubmissionConfig(listen=("127.0.0.1:0",)), max_message_size=16384)
        cfg = replace(cfg, queue=replace(cfg.queue, path=disk / "spool", min_free=65536))
        srv = SubmissionServer(cfg).start()
        try:
            port = srv.addresses[0][1]
            assert submit(port)[0] == 250
            filler = disk / "filler"
            with open(filler, "wb") as f:  # fill the disk to the last block
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            code, text = submit(port)
            assert code == 451, text
            assert text.startswith("4.3.0")
            filler.unlink()
            code, text = submit(port)
            assert code == 250, text
        finally:
            srv.stop()
        assert pending(cfg) == 2
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_reload_changes_auth_and_limits_for_the_next_connection(smtp_server, write_config):
    relay = smtp_server()
    port = free_port()

    def conf_with(password: str, size: str = "16KiB") -> Path:
        conf = write_config(relay.port, extra_server=f"    max-message-size: {size}\n" + server_yaml(port) +
                            f"      auth: {{username: app, password: {password}}}\n")
        conf.chmod(0o600)  # a literal password in a file others can read is refused
        return conf

    def login(password: str) -> int:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo()
            try:
                return s.login("app", password)[0]
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code

    conf = conf_with("pw-Alpha-1")
    daemon = DaemonProcess(conf).ready()
    try:
        daemon.wait_for(f"submission listening on 127.0.0.1:{port}")
        assert login("pw-Alpha-1") == 235
        big = MESSAGE + (b"x" * 70 + b"\r\n") * 400  # about 29 KB

        def send_big(password: str) -> int:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.login("app", password)
                s.mail("app@example.com")
                s.rcpt("ann@example.com")
                return s.data(big)[0]

        assert send_big("pw-Alpha-1") == 552
        conf_with("pw-Bravo-2", size="1MiB")
        daemon.wait_for("configuration reloaded", timeout=10)
        assert login("pw-Bravo-2") == 235
        assert login("pw-Alpha-1") == 535
        assert send_big("pw-Bravo-2") == 250, "the new max-message-size, at the listener and in its client"
        assert "pw-Alpha-1" not in daemon.log and "pw-Bravo-2" not in daemon.log
    finally:
        assert daemon.stop() == 0


def test_an_8bit_body_and_its_headers_are_queued_intact(listener):
    srv, cfg = listener()
    body = "Grüße, naïve café — ✓\r\n".encode()
    raw = (b"From: app@example.com\r\nTo: ann@example.com\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
           b"Message-ID: <fixed@example.com>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body)
    code, text = submit(srv.addresses[0][1], raw, rcpt=("ann@example.com",))
    assert code == 250, text
    q = SpoolQueue(cfg.queue.path, daemon=True)
    try:
        [item] = q.take(1)
    finally:
        q.close()
    queued = base64.b64decode(item.data["raw"])
    assert queued.endswith(b"\r\n\r\n" + body)
    assert b"Message-ID: <fixed@example.com>\r\n" in queued, "what the client gave is kept"
    assert item.data["mail_from"] == "app@example.com" and item.data["rcpt_to"] == ["ann@example.com"]


def test_a_list_of_addresses_listens_on_each(make_config):
    cfg = make_config(submission=SubmissionConfig(listen=("127.0.0.1:0", "127.0.0.2:0")))
    srv = SubmissionServer(cfg).start()
    try:
        assert [host for host, _ in srv.addresses] == ["127.0.0.1", "127.0.0.2"]
        for host, port in srv.addresses:
            with smtplib.SMTP(host, port, timeout=10) as s:
                s.ehlo()
                assert s.mail("app@example.com")[0] == 250
                assert s.rcpt("ann@example.com")[0] == 250
                assert s.data(MESSAGE)[0] == 250
    finally:
        srv.stop()
    assert pending(cfg) == 2


def test_a_listener_off_loopback_without_tls_is_logged_as_a_warning(listener, caplog):
    with caplog.at_level("WARNING", logger="mailmand.submission"):
        listener(listen="0.0.0.0:0", auth=AuthConfig(username="app", password="s3cret"))
    assert "has no tls: AUTH will be refused (538)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mailmand.submission"):
        listener()
    assert caplog.text == "", "loopback without auth is the quiet default"


def test_with_the_redis_queue_250_once_in_the_stream_and_451_while_redis_is_down(tmp_path, redis_key):
    from mailmand.config import DatabaseConfig, QueueConfig, ServerConfig, SmtpConfig
    from tests.redisutil import free_port as redis_free_port
    from tests.redisutil import redis_url, require_redis

    def config(url: str) -> Config:
        return Config(queue=QueueConfig(engine="redis", url=url, name=redis_key),
                      server=ServerConfig(database=DatabaseConfig(path=tmp_path / "mailmand.db"),
                                          smtp=SmtpConfig(host="127.0.0.1", port=9),
                                          submission=SubmissionConfig(listen=("127.0.0.1:0",))))

    down = SubmissionServer(config(f"redis://:hunter2@127.0.0.1:{redis_free_port()}/0")).start()
    try:
        code, text = submit(down.addresses[0][1])
        assert code == 451 and "hunter2" not in text, text
    finally:
        down.stop()
    up = SubmissionServer(config(redis_url())).start()
    try:
        code, text = submit(up.addresses[0][1])
        assert code == 250, text
    finally:
        up.stop()
    [(_, fields)] = require_redis().xrange(redis_key)  # type: ignore[attr-defined]
    assert QUEUED.match(text).group(1).encode() in b"".join(fields.values())  # type: ignore[union-attr]


# -- the listener's reading of MAIL FROM:/RCPT TO: ------------------------------------------


class _AiosmtpdReading(SMTP):
    """aiosmtpd's own reading, on an SMTP object that never serves (no loop, no socket)."""

    def __init__(self, limit: int) -> None:
        self.local_part_limit = limit


class _OurReading(_Smtp):
    def __init__(self, limit: int) -> None:
        self.local_part_limit = limit


PATHS = ["<ann@example.com>", " <ann@example.com>", "<ann@example.com> SIZE=100 BODY=8BITMIME", "<a@b.c>x",
         "<ann@example.com>\tSIZE=1  ", "<ann@example.com> (comment) SIZE=1", "<>", "<a b@example.com>",
         '<"a b"@example.com>', "<ann@example.com", "ann@example.com", "<a@[127.0.0.1]>", "<@route:a@b.com>",
         "<o'neil+x@sub.example.org>", "<ann@-example.com>", "<" + "x" * 70 + "@example.com>", "<a@b.c> <d@e.f>"]


@settings(max_examples=400, deadline=None)
@given(arg=st.one_of(st.sampled_from(PATHS),
                     st.builds(lambda a, b: a + b, st.sampled_from(PATHS),
                               st.text(st.sampled_from(" \t<>()@.\"aA=1"), max_size=8)),
                     st.text(st.sampled_from(" \t<>()@.\"aA=1,:;[]\\"), max_size=16)),
       limit=st.sampled_from([0, 64]))
def test_the_listener_reads_an_envelope_address_as_aiosmtpd_does(arg, limit):
    """A plain `<local@domain>` is read without the email package's parser; whatever the
    line holds, the address and the parameters come out as aiosmtpd's own reading has them."""
    def outcome(read):  # aiosmtpd itself raises on some lines ("<": IndexError); so must we then
        try:
            return read(arg)
        except Exception as exc:
            return type(exc)

    assert outcome(_OurReading(limit)._getaddr) == outcome(_AiosmtpdReading(limit)._getaddr)
