"""Real Postfix peers on loopback: the C `smtp-sink` and a private Postfix instance.

Loaded as a pytest plugin (conftest's `pytest_plugins`), it gives the fixtures
`smtp_sink` (a factory: `smtp_sink("-q", ".") -> Sink`, each stopped at
teardown) and `postfix` (one private Postfix for the test session, see
`Postfix`). The benchmarks use the same classes (bench/wan.py).

Both come from Debian's `postfix` package (.ci/run installs it). Without it,
or without root (Postfix's master and smtp-sink start as root and drop to
their users), the tests skip with the reason — unless
MAILMAND_TEST_REQUIRE_SERVICES=1 (CI), which makes that a failure.

The private instance never touches /etc/postfix or the system's queue: its
own main.cf and master.cf in a scratch directory (`postfix -c DIR`), its own
queue directory, its log in a file (postlogd), loopback listeners only,
chroot off, and mail delivered to the `discard` transport — or relayed to a
`relayhost` when it plays a satellite in bench/wan.py.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTSUPER = shutil.which("postsuper") or "/usr/sbin/postsuper"
HOST = "127.0.0.1"


def missing() -> str | None:
    """Why the Postfix peers cannot run here, or None."""
    if not (os.access(SMTP_SINK, os.X_OK) and os.access(POSTFIX, os.X_OK)):
        return "Postfix is not installed (Debian package `postfix`: smtp-sink, postfix)"
    if os.geteuid() != 0:
        return "Postfix's master and smtp-sink start as root"
    return None


def require() -> None:
    reason = missing()
    if reason is None:
        return
    if os.environ.get("MAILMAND_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"MAILMAND_TEST_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, alive: Callable[[], bool] = lambda: True, timeout: float = 20.0) -> None:
    """Until something answers a greeting on `port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the server for port {port} exited")
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as s:
                if s.recv(100).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port} within {timeout:g}s")


def scratch(prefix: str) -> Path:
    """A directory Postfix's unprivileged users can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


# -- smtp-sink --------------------------------------------------------------------


class Sink:
    """Postfix's C `smtp-sink` on a free loopback port. `options` are its own:
    `-f CMDS` 5xx, `-r CMDS` 4xx, `-q CMDS` hang up, `-Q CMDS` 421 and hang up
    (commands: MAIL, RCPT, DATA, "." for the end of data, ...). Messages are
    dumped one file each into `dump`, so tests can see what arrived."""

    def __init__(self, *options: str, dump: bool = True, backlog: int = 1000) -> None:
        self.port = free_port()
        self.dir = scratch("mailmand-sink-")
        os.chown(self.dir, _uid("nobody"), -1)
        cmd = [SMTP_SINK, "-u", "nobody", *options]
        if dump:
            cmd += ["-d", f"{self.dir}/%Y%m%d%H%M%S."]
        cmd += [f"{HOST}:{self.port}", str(backlog)]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_listening(self.port, lambda: self._proc.poll() is None)
        except RuntimeError:
            self.stop()
            raise

    def messages(self) -> list[bytes]:
        """Each dumped message (smtp-sink's own X- headers first, then the message).
        smtp-sink opens a dump file at MAIL and removes it a moment after a
        transaction that ended before DATA: an empty one is no message."""
        return [data for p in sorted(self.dir.iterdir()) if p.is_file() and (data := p.read_bytes())]

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


# -- a private Postfix ------------------------------------------------------------

# Services a Postfix instance needs to take mail in and hand it on; chroot off
# (no /var/spool/postfix copy of /etc to build), unprivileged where Debian runs them so.
MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """A private Postfix instance (`postfix -c DIR`), started at construction.

    Listeners (all on 127.0.0.1):
    - `port`: smtpd offering PIPELINING;
    - `plain_port`: the same smtpd with PIPELINING not offered
      (`smtpd_discard_ehlo_keywords`).
    Both run with `smtpd_forbid_unauth_pipelining = yes`: a client that
    breaks RFC 2920's rules (or pipelines where it was not offered) is cut off
    with "554 5.5.0 Error: SMTP protocol synchronization".

    Scripted refusals for the tests: RCPT to `gone@refuse.test` gets 550, to
    `later@refuse.test` 450; a message whose Subject starts "reject-me" is
    refused at the end of data (header_checks). Everything else goes to the
    `discard` transport, unless `main` says otherwise (a relayhost)."""

    def __init__(self, main: dict[str, str] | None = None, *, refusals: bool = True) -> None:
        self.root = scratch("mailmand-postfix-")
        self.conf = self.root / "conf"
        self.conf.mkdir()
        (self.root / "queue").mkdir()
        data = self.root / "data"
        data.mkdir()
        os.chown(data, _uid("postfix"), -1)
        self.log_file = self.root / "maillog"
        self.port, self.plain_port = free_port(), free_port()
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.root / "queue"),
            "data_directory": str(data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "myhostname": "postfix-under-test.invalid",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "default_transport": "discard",
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.root),
            "syslog_name": "postfix-mailmand-test",
            "smtpd_forbid_unauth_pipelining": "yes",
        }
        if refusals:
            (self.conf / "header_checks").write_text("/^Subject: reject-me/ REJECT 5.7.1 content refused\n")
            settings["header_checks"] = f"regexp:{self.conf / 'header_checks'}"
            settings["smtpd_recipient_restrictions"] = (
                "check_recipient_access inline:{ {gone@refuse.test = 550 5.1.1 no such user},"
                " {later@refuse.test = 450 4.2.0 try later} }, permit_mynetworks, reject")
        settings.update(main or {})
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (self.conf / "master.cf").write_text(
            f"{HOST}:{self.port} inet n - n - - smtpd\n"
            f"{HOST}:{self.plain_port} inet n - n - - smtpd -o smtpd_discard_ehlo_keywords=pipelining\n"
            + MASTER_CF)
        self._postfix("start")
        try:
            wait_listening(self.port)
            wait_listening(self.plain_port)
        except RuntimeError:
            self.stop()
            raise

    def _postfix(self, *args: str) -> None:
        done = subprocess.run([POSTFIX, "-c", str(self.conf), *args], capture_output=True, text=True,
                              timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
                               f" {self.log()[-500:]}")

    def postsuper(self, *args: str) -> None:
        subprocess.run([POSTSUPER, "-c", str(self.conf), *args], check=True, capture_output=True, timeout=60)

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def delivered(self) -> list[str]:
        """The Message-IDs cleanup took in (one line per message queued), in order."""
        return re.findall(r"cleanup\[\d+\]: \w+: message-id=<([^>]*)>", self.log())

    def wait_log(self, condition: Callable[[str], bool], timeout: float = 20.0) -> bool:
        """Poll the log (postlogd writes it a moment after the fact) until `condition` holds."""
        deadline = time.monotonic() + timeout
        while not condition(self.log()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        try:
            self._postfix("stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            self._postfix("abort")
        shutil.rmtree(self.root, ignore_errors=True)


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture
def smtp_sink() -> Iterator[Callable[..., Sink]]:
    require()
    sinks: list[Sink] = []

    def start(*options: str, **kwargs: bool) -> Sink:
        sink = Sink(*options, **kwargs)
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        sink.stop()


@pytest.fixture(scope="session")
def postfix() -> Iterator[Postfix]:
    require()
    instance = Postfix()
    yield instance
    instance.stop()
