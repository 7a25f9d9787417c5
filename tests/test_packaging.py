"""The shipped artefacts, used the way a server uses them: the PyInstaller
binary alone, the systemd unit, the notify protocol on a real socket, the
spool's permissions with real users, and the .deb.

All slow: `pytest -m slow tests/test_packaging.py`. The binary is built once
per run (about 30 s); set MAILMAND_BINARY=/path/to/mailmand to reuse one.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailmand import __version__

from .conftest import ROOT, mailmand_cmd
from .redisutil import redis_url

pytestmark = pytest.mark.slow

# What a server without our virtualenv looks like: system PATH, no VIRTUAL_ENV, no PYTHONPATH.
BARE_PATH = "/usr/bin:/bin"


def bare_env(home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": BARE_PATH, "HOME": str(home), "LANG": "C.UTF-8", **extra}


def run(cmd: list[str | Path], *, env: dict[str, str], cwd: Path | None = None,
        input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, input=input, text=True,
                          capture_output=True, timeout=timeout)


def wait_for(predicate: Callable[[], object], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> tuple[int, str]:
    """SIGTERM, wait, return (exit code, stderr)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err.decode(errors="replace")


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """build.spec's dist directory: `mailmand` (one file) and `mailmand-dir/` (one directory)."""
    given = os.environ.get("MAILMAND_DIST")
    if given:
        path = Path(given).resolve()
        assert (path / "mailmand").is_file() and (path / "mailmand-dir" / "mailmand").is_file(), given
        return path
    out = tmp_path_factory.mktemp("pyinstaller")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--noconfirm", "--distpath", out / "dist",
         "--workpath", out / "work", ROOT / "build.spec"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,  # the 5-minute budget
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"binaries built in {time.monotonic() - started:.0f}s")
    return out / "dist"


@pytest.fixture(scope="module")
def binary(build: Path) -> Path:
    """The one-file binary (or $MAILMAND_BINARY)."""
    given = os.environ.get("MAILMAND_BINARY")
    if given:
        path = Path(given).resolve()
        assert os.access(path, os.X_OK), f"MAILMAND_BINARY={given} is not an executable"
        return path
    return build / "mailmand"


@pytest.fixture(scope="module")
def onedir(build: Path) -> Path:
    """The one-directory build, as the .deb installs it."""
    return build / "mailmand-dir"


class NotifySocket:
    """The receiving end of sd_notify(3), as systemd binds it: AF_UNIX, SOCK_DGRAM."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)  # a daemon running as another user must be able to send
        self.seen: list[str] = []

    def expect(self, state: str, timeout: float = 30) -> str:
        """Wait for a datagram holding the line `state` (e.g. READY=1), or a line
        starting with it when it ends with "=" (STATUS=); returns that line."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                raise AssertionError(f"no {state} within {timeout}s; got {self.seen}") from None
            self.seen.append(data)
            for line in data.splitlines():
                if line == state or (state.endswith("=") and line.startswith(state)):
                    return line

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short directory: a socket path is limited to 107 bytes, pytest's tmp_path can be long.
    directory = Path(tempfile.mkdtemp(prefix="mm-notify-"))
    os.chmod(directory, 0o755)
    sock = NotifySocket(directory / "notify")
    yield sock
    sock.close()
    shutil.rmtree(directory)


# -- 1. the binary alone ---------------------------------------------------------------


def test_binary_runs_without_the_virtualenv(binary, tmp_path, write_config, smtp_server):
    server = smtp_server()
    conf = write_config(server.port)
    env = bare_env(tmp_path)

    version = run([binary, "--version"], env=env, cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    match = re.fullmatch(r"mailmand (\S+) \((\S+)\)\n", version.stdout)
    assert match, version.stdout
    assert match.group(1) == __version__
    assert match.group(2) != "source", "build.spec did not record the commit"

    check = run([binary, "check-config", "-c", conf], env=env, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("configuration OK")

    broken = tmp_path / "broken.yaml"
    broken.write_text("email:\n  server:\n    batch: lots\n")
    refused = run([binary, "check-config", "-c", broken], env=env, cwd=tmp_path)
    assert refused.returncode == 78
    assert "email.server.batch" in refused.stderr

    sent = run([binary, "send", "-c", conf, "--from", "app@example.com", "--to", "rcpt@example.com",
                "--subject", "from the binary", "--text", "hello"], env=env, cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    message_id = sent.stdout.strip()

    once = run([binary, "--once", "-c", conf], env=env, cwd=tmp_path)
    assert once.returncode == 0, once.stderr
    assert "sent 1" in once.stdout
    assert len(server.messages) == 1
    assert server.messages[0].rcpt_tos == ("rcpt@example.com",)
    assert b"Subject: from the binary" in server.messages[0].data

    shown = run([binary, "show", message_id, "--json", "-c", conf], env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert '"status": "sent"' in shown.stdout


def test_binary_carries_redis_py(binary, tmp_path, redis_key):
    conf = tmp_path / "redis.yaml"
    conf.write_text("email:\n  queue:\n    default:\n      engine: redis\n"
                    f"      url: {redis_url()}\n      name: {redis_key}\n"
                    f"  server:\n    database:\n      path: {tmp_path / 'store.db'}\n"
                    "    smtp:\n      host: 127.0.0.1\n      port: 9\n")
    env = bare_env(tmp_path)
    sent = run([binary, "send", "-c", conf, "--from", "app@example.com", "--to", "rcpt@example.com",
                "--text", "hello"], env=env, cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr  # not "pip install 'mailmand[redis]'": redis-py is inside
    once = run([binary, "--once", "-c", conf], env=env, cwd=tmp_path)
    assert once.returncode == 0, once.stderr
    assert "ingested 1" in once.stdout


def test_binary_demo(binary, tmp_path):
    if not (ROOT / "mailmand" / "demo.py").exists():
        pytest.skip("mailmand/demo.py does not exist yet")
    # TMPDIR: the demo keeps its files in a temporary directory; keep them in tmp_path.
    demo = run([binary, "demo"], env=bare_env(tmp_path, TMPDIR=str(tmp_path)), cwd=tmp_path, timeout=45)
    assert demo.returncode == 0, demo.stdout + demo.stderr


def test_binary_serves_the_web_api_and_pages(binary, tmp_path, write_config, smtp_server):
    """uvicorn's modules imported by name, the templates and the assets: all in the build."""
    import httpx

    from .webutil import TOKEN, free_port, web_yaml

    server = smtp_server()
    secret = tmp_path / "web.token"
    secret.write_text(TOKEN)
    secret.chmod(0o600)
    port = free_port()
    conf = write_config(server.port, extra_server=web_yaml(port, token=None, token_file=secret))
    proc = subprocess.Popen([str(binary), "run", "-c", str(conf)], env=bare_env(tmp_path), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            try:
                return httpx.get(base + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None  # exited: fail below, with its stderr
        wait_for(answers, what="the web server")
        assert proc.poll() is None
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            assert "<html" in http.get("/").text
            assert http.get("/static/style.css").status_code == 200
            r = http.post("/api/v1/messages", json={"from": "a@example.com", "to": "b@example.com", "text": "hi"})
            assert r.status_code == 202, r.text
            wait_for(lambda: http.get(f"/api/v1/messages/{r.json()['id']}").json()["status"] == "sent",
                     what="the message sent")
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert len(server.messages) == 1


def test_onedir_build_answers_to_the_name_it_is_called_by(onedir, tmp_path, write_config, smtp_server):
    server = smtp_server()
    conf = write_config(server.port)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("mailmand", "mailmand-sendmail", "sendmail", "mailq"):
        (bindir / name).symlink_to(onedir / "mailmand")  # as /usr/bin links into /usr/lib/mailmand
    env = bare_env(tmp_path, MAILMAND_CONFIG=str(conf))
    for name in ("mailmand-sendmail", "sendmail"):
        sent = run([bindir / name, "-t", "-i"], env=env, input=MESSAGE.format(subject=f"via {name}"))
        assert sent.returncode == 0, sent.stderr
    once = run([bindir / "mailmand", "--once"], env=env)
    assert once.returncode == 0 and "sent 2" in once.stdout, once.stdout + once.stderr
    assert run([bindir / "mailq"], env=env).stdout == "Mail queue is empty\n"
    assert not list(tmp_path.glob("_MEI*")), "the one-directory build unpacked itself"


# -- 2. the unit -----------------------------------------------------------------------

UNIT = ROOT / "packaging" / "systemd" / "mailmand.service"


def test_unit_passes_systemd_analyze_verify(binary, tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: install the Debian package systemd"
    # verify checks that ExecStart's program exists: point it at the binary just built.
    unit = tmp_path / "mailmand.service"
    unit.write_text(UNIT.read_text().replace("ExecStart=/usr/bin/mailmand ", f"ExecStart={binary} "))
    assert str(binary) in unit.read_text()
    result = run([analyze, "verify", unit], env={**os.environ}, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr  # warnings too


def test_every_unit_setting_says_why():
    previous = ""
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            assert previous.startswith("#"), f"no comment above {line!r}"
        previous = line
    text = UNIT.read_text()
    for setting in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "User=mailmand",
                    "ProtectSystem=strict", "ReadWritePaths=/var/spool/mailmand /var/lib/mailmand",
                    "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes", "UMask=0007",
                    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "Restart=on-failure",
                    "LimitNOFILE=65536"):
        assert f"\n{setting}\n" in text, setting


# -- 3. sd_notify ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["python", "binary"])
def test_notify_protocol(how, request, tmp_path, write_config, smtp_server, notify_socket):
    server = smtp_server()
    conf = write_config(server.port)
    if how == "python":  # from ROOT, as run_cli does: this tree's mailmand, not an installed one
        cmd, env, cwd = mailmand_cmd("run", "-c", str(conf)), dict(os.environ), ROOT
    else:  # the binary: its bootloader must forward SIGHUP and SIGTERM to the daemon
        cmd = [str(request.getfixturevalue("binary")), "run", "-c", str(conf)]
        env, cwd = bare_env(tmp_path), tmp_path
    env["NOTIFY_SOCKET"] = str(notify_socket.path)
    env["WATCHDOG_USEC"] = "1000000"  # as WatchdogSec=1s sets it (without WATCHDOG_PID: see the unit)
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        notify_socket.expect("READY=1")
        notify_socket.expect("WATCHDOG=1", timeout=5)

        # Ready means ready: a message queued now goes out without a restart.
        sent = subprocess.run([*cmd[:-3], "send", "-c", str(conf), "--from", "a@example.com",
                               "--to", "b@example.com", "--text", "hi"], env=env, cwd=cwd,
                              capture_output=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: server.messages, what="delivery by the running daemon")

        proc.send_signal(signal.SIGHUP)
        notify_socket.expect("RELOADING=1")
        notify_socket.expect("READY=1")

        proc.send_signal(signal.SIGTERM)
        notify_socket.expect("STOPPING=1")
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in err, err


def test_waiting_for_the_store_is_not_ready_and_extends_the_start_timeout(tmp_path, smtp_server, notify_socket):
    """A database not up yet: the daemon says why in STATUS, asks systemd for more
    start time before each try (or TimeoutStartSec would kill it), and is not READY."""
    with socket.socket() as s:  # a loopback port with nobody listening: PostgreSQL not up yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = smtp_server()
    conf = tmp_path / "m.yaml"
    conf.write_text(f"email:\n  queue:\n    default:\n      path: {tmp_path / 'spool'}\n"
                    f"  server:\n    database:\n      engine: postgres\n"
                    f"      dsn: 'host=127.0.0.1 port={port} dbname=mailmand user=postgres connect_timeout=2'\n"
                    f"    smtp:\n      host: 127.0.0.1\n      port: {server.port}\n")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_socket.path)}
    proc = subprocess.Popen(mailmand_cmd("run", "-c", str(conf)), env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert "waiting for the store" in notify_socket.expect("STATUS=")
        first = int(notify_socket.expect("EXTEND_TIMEOUT_USEC=").split("=")[1])
        second = int(notify_socket.expect("EXTEND_TIMEOUT_USEC=").split("=")[1])
        assert 60_000_000 < first < second  # beyond the next try, which comes later each time
        assert not any("READY=1" in d.splitlines() for d in notify_socket.seen)
        proc.send_signal(signal.SIGTERM)
    finally:
        code, err = stop(proc)
    assert code == 0, err


# -- 4. permissions, with real users ---------------------------------------------------

USERS = ("mailmand", "appuser", "stranger")


def _exists(kind: str, name: str) -> bool:
    return subprocess.run(["getent", kind, name], capture_output=True).returncode == 0


@pytest.fixture
def users() -> Iterator[dict[str, pwd.struct_passwd]]:
    """mailmand (group mailmand), appuser (a member), stranger (not one); removed afterwards
    unless they were there before."""
    if os.geteuid() != 0:
        pytest.skip("creating users needs root")
    for tool in ("useradd", "userdel", "groupadd", "setpriv"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is missing")
    created_group = not _exists("group", "mailmand")
    if created_group:
        subprocess.run(["groupadd", "--system", "mailmand"], check=True)
    created = []
    for name, options in (("mailmand", ["--system", "-g", "mailmand"]),
                          ("appuser", ["-G", "mailmand"]), ("stranger", [])):
        if not _exists("passwd", name):
            subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", *options, name], check=True)
            created.append(name)
    # Tolerate users left by someone else, but the test needs these memberships.
    subprocess.run(["usermod", "-aG", "mailmand", "appuser"], check=True)
    members = subprocess.run(["id", "-nG", "stranger"], capture_output=True, text=True).stdout.split()
    assert "mailmand" not in members, "a user 'stranger' exists and is in group mailmand"
    try:
        yield {name: pwd.getpwnam(name) for name in USERS}
    finally:
        for name in reversed(created):
            subprocess.run(["userdel", name], check=False)
        if created_group:
            subprocess.run(["groupdel", "mailmand"], check=False)


def as_user(user: str, cmd: list[str | Path]) -> list[str]:
    """cmd as `user` with its groups; unlike runuser/su, setpriv leaves the environment alone."""
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *map(str, cmd)]


def importable_copy(dest: Path) -> Path:
    """Copy mailmand and the top-level packages it imports into `dest`, which
    other users can read (the venv and the checkout may sit in private dirs)."""
    listing = subprocess.run(
        [sys.executable, "-c", "import sys, mailmand.client, mailmand.cli, mailmand.queues.spool, mailmand.daemon\n"
         "print('\\n'.join(m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None)))"],
        capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    roots = [ROOT, Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["platlib"])]
    dest.mkdir(parents=True, exist_ok=True)
    for file in map(Path, listing):
        for root in roots:
            if root in file.parents:
                top = root / file.relative_to(root).parts[0]
                target = dest / top.name
                if not target.exists():
                    if top.is_dir():
                        shutil.copytree(top, target, ignore=shutil.ignore_patterns("__pycache__"))
                    else:
                        shutil.copy2(top, target)
                break
    subprocess.run(["chmod", "-R", "a+rX", dest], check=True)
    return dest


def foreign_python(user: str, env: dict[str, str], base: Path) -> tuple[list[str], dict[str, str]] | None:
    """A Python that `user` can run with mailmand importable, or None.

    The venv's interpreter usually lives under /root (mode 0700); the system
    Python of the same minor version can load the venv's packages instead,
    from the venv if it is readable, else from a copy in `base`.
    """
    site = sysconfig.get_paths()["purelib"]
    system = shutil.which("python3", path=BARE_PATH) or ""
    candidates = (
        lambda: (sys.executable, {}),
        lambda: (system, {"PYTHONPATH": f"{ROOT}:{site}"}),
        lambda: (system, {"PYTHONPATH": str(importable_copy(base / "py"))}),
    )
    for candidate in candidates:
        python, extra = candidate()
        if not python:
            continue
        probe = run(as_user(user, [python, "-c", "import mailmand.client, persistqueue, yaml, watchdog"]),
                    env={**env, **extra}, timeout=60)
        if probe.returncode == 0:
            return [python], {**env, **extra}
    return None


MESSAGE = "From: app@example.com\nTo: rcpt@example.com\nSubject: {subject}\n\nhello\n"


def test_spool_permissions_with_real_users(binary, users, smtp_server, notify_socket):
    server = smtp_server()
    # Everything under a directory every user can traverse (pytest's tmp_path cannot be).
    base = Path(tempfile.mkdtemp(prefix="mailmand-perm-"))
    daemon = None
    try:
        os.chmod(base, 0o755)
        bindir = base / "bin"
        bindir.mkdir()
        shutil.copy2(binary, bindir / "mailmand")
        wrapper = bindir / "mailmand-sendmail"  # what the .deb installs, pointing at this copy
        wrapper.write_text(f'#!/bin/sh\nexec {bindir / "mailmand"} sendmail "$@"\n')
        wrapper.chmod(0o755)

        # The tmpfiles rules themselves, applied under base/root with the host's users.
        root = base / "root"
        apply_tmpfiles(root)
        spool, lib = root / "var/spool/mailmand", root / "var/lib/mailmand"
        mm = users["mailmand"]
        assert (spool.stat().st_uid, spool.stat().st_gid) == (mm.pw_uid, mm.pw_gid)
        assert stat.S_IMODE(spool.stat().st_mode) == 0o2770
        assert stat.S_IMODE(lib.stat().st_mode) == 0o700

        conf = base / "mailmand.yaml"  # no secret in it: every user may read it
        conf.write_text(
            f"email:\n  queue:\n    default:\n      path: {spool}\n"
            f"  server:\n    interval: 1s\n    database:\n      path: {lib / 'mailmand.db'}\n"
            f"    smtp:\n      host: 127.0.0.1\n      port: {server.port}\n      tls: none\n")
        conf.chmod(0o644)

        env = bare_env(base, MAILMAND_CONFIG=str(conf), NOTIFY_SOCKET=str(notify_socket.path))
        daemon = subprocess.Popen(as_user("mailmand", [bindir / "mailmand", "run"]), env=env, cwd=base,
                                  umask=0o007,  # the unit's UMask
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        notify_socket.expect("READY=1")

        def user_env(user: str) -> dict[str, str]:
            return {**bare_env(base, MAILMAND_CONFIG=str(conf)), "USER": user, "LOGNAME": user}

        # appuser, through mailmand-sendmail (the binary's sendmail subcommand).
        sm = run(as_user("appuser", [wrapper, "-t", "-i"]), env=user_env("appuser"),
                 input=MESSAGE.format(subject="via sendmail"))
        assert sm.returncode == 0, sm.stderr

        # stranger: refused, clearly, by both doors.
        sm = run(as_user("stranger", [wrapper, "-t", "-i"]), env=user_env("stranger"),
                 input=MESSAGE.format(subject="from a stranger"))
        assert sm.returncode == os.EX_NOPERM, (sm.returncode, sm.stderr)
        assert f"cannot write the spool at {spool}: permission denied" in sm.stderr
        sent = run(as_user("stranger", [bindir / "mailmand", "send", "--from", "s@example.com",
                                        "--to", "rcpt@example.com", "--text", "x"]),
                   env=user_env("stranger"))
        assert sent.returncode == 1, (sent.returncode, sent.stderr)
        assert "permission denied (is this user in the daemon's group?)" in sent.stderr
        assert "Traceback" not in sent.stderr + sm.stderr

        # appuser again, after the stranger's attempts: the spool still works.
        sent = run(as_user("appuser", [bindir / "mailmand", "send", "--from", "app@example.com",
                                       "--to", "rcpt@example.com", "--subject", "via send",
                                       "--text", "x"]), env=user_env("appuser"))
        assert sent.returncode == 0, sent.stderr
        subjects = {"via sendmail", "via send"}

        # appuser, through the Python client, as an application would.
        python = foreign_python("appuser", user_env("appuser"), base)
        if python is not None:
            cmd, penv = python
            script = ("import sys\nfrom mailmand import Client, Email\n"
                      "c = Client()\n"
                      "print(c.enqueue(Email(sender='app@example.com', to='rcpt@example.com',"
                      " subject='via the client', text='x')))\nc.close()\n")
            client = run(as_user("appuser", [*cmd, "-c", script]), env=penv)
            assert client.returncode == 0, client.stderr
            subjects.add("via the client")

        def delivered() -> set[str]:
            return {re.search(rb"^Subject: (.*?)\r?$", m.data, re.M).group(1).decode()  # type: ignore[union-attr]
                    for m in server.messages}

        wait_for(lambda: delivered() >= subjects, what=f"delivery of {subjects}")
        assert delivered() == subjects  # and nothing from the stranger

        # Nothing in the spool belongs to the stranger, and all of it stays the group's.
        for path in spool.iterdir():
            st = path.stat()
            assert st.st_uid != users["stranger"].pw_uid, path
            assert st.st_gid == mm.pw_gid, path  # setgid directory
            assert st.st_mode & 0o007 == 0, f"{path} is open to other users"
        # The store is the daemon's (0700): an admin asks as mailmand.
        status = run(as_user("mailmand", [bindir / "mailmand", "status", "--json"]),
                     env=user_env("mailmand"))
        assert status.returncode == 0, status.stderr
        assert '"quarantine": 0' in status.stdout and '"spool": 0' in status.stdout

        code, err = stop(daemon)
        daemon = None
        assert code == 0, err
        if python is None:
            pytest.skip("Python client part not run: no interpreter appuser can run "
                        "with mailmand importable (the venv is unreadable to other users)")
    finally:
        if daemon is not None:
            stop(daemon)
        shutil.rmtree(base, ignore_errors=True)


def apply_tmpfiles(root: Path) -> None:
    """packaging/systemd/mailmand.tmpfiles under `root`, resolving names with the host's users."""
    rules = ROOT / "packaging" / "systemd" / "mailmand.tmpfiles"
    tmpfiles = shutil.which("systemd-tmpfiles")
    if tmpfiles is None:  # the equivalent, by hand, from the same rules
        for line in rules.read_text().splitlines():
            if line.startswith("d "):
                _, path, mode, user, group, _age = line.split()
                target = root / path.lstrip("/")
                target.mkdir(parents=True, exist_ok=True)
                shutil.chown(target, user, group)
                target.chmod(int(mode, 8))
        return
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group"):  # --root looks users up in the root's own files
        shutil.copy2(f"/etc/{name}", root / "etc" / name)
    (root / "usr/lib/tmpfiles.d").mkdir(parents=True)
    shutil.copy2(rules, root / "usr/lib/tmpfiles.d/mailmand.conf")
    subprocess.run([tmpfiles, "--create", f"--root={root}", "mailmand.conf"], check=True,
                   capture_output=True)


# -- 5. the .deb -----------------------------------------------------------------------

DEB_FILES = ("./usr/bin/mailmand", "./usr/bin/mailmand-sendmail", "./usr/bin/mailmand-mailq",
             "./usr/lib/mailmand/mailmand", "./lib/systemd/system/mailmand.service",
             "./usr/lib/tmpfiles.d/mailmand.conf", "./usr/lib/sysusers.d/mailmand.conf",
             "./etc/mailmand/mailmand.yaml")


@pytest.fixture(scope="module")
def deb(onedir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    built = run(["sh", ROOT / "packaging/deb/build.sh", onedir, out], env={**os.environ}, timeout=120)
    assert built.returncode == 0, built.stderr
    path = Path(built.stdout.strip().splitlines()[-1])
    arch = run(["dpkg", "--print-architecture"], env={**os.environ}).stdout.strip()
    assert path == out / f"mailmand_{__version__}_{arch}.deb"
    return path


def test_deb_contents(deb):
    info = run(["dpkg-deb", "--info", deb], env={**os.environ})
    assert info.returncode == 0, info.stderr
    for field in ("Package: mailmand", f"Version: {__version__}", "Depends: passwd"):
        assert field in info.stdout
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert re.search(rf"\b{script}\b", info.stdout), script
    conffiles = run(["dpkg-deb", "--info", deb, "conffiles"], env={**os.environ}).stdout
    assert conffiles.split() == ["/etc/mailmand/mailmand.yaml"]

    contents = run(["dpkg-deb", "--contents", deb], env={**os.environ}).stdout
    listed = {line.split(" -> ")[0].split()[-1]: line.split()[0] for line in contents.splitlines()}
    for path in DEB_FILES:
        assert path in listed, path
    assert listed["./usr/lib/mailmand/mailmand"] == "-rwxr-xr-x"
    links = {line.split()[-3]: line.split()[-1] for line in contents.splitlines() if " -> " in line}
    for name in ("mailmand", "mailmand-sendmail", "mailmand-mailq"):
        assert links[f"./usr/bin/{name}"] == "../lib/mailmand/mailmand", name
    assert listed["./etc/mailmand/mailmand.yaml"] == "-rw-r-----"  # may hold a password


def test_deb_installs(deb, tmp_path):
    """dpkg -i into a directory (--root), maintainer scripts included.

    Not into this machine's root: that would add a system user and claim
    /usr/sbin/sendmail on a shared host (a developer's, CI's). The scripts run
    unchrooted with DPKG_ROOT set (--force-script-chrootless), so they do
    exactly what they do on a server, inside `root`.
    """
    if os.geteuid() != 0:
        pytest.skip("dpkg -i needs root to give files their owners")
    root = tmp_path / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "etc/alternatives", "usr/sbin", "usr/bin"):
        (root / d).mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()
    dpkg = ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", "--log=/dev/null"]
    installed = run([*dpkg, "-i", deb], env={**os.environ})
    assert installed.returncode == 0, installed.stdout + installed.stderr

    for path in DEB_FILES:
        assert (root / path).exists(), path
    users = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    assert "mailmand" in users, "postinst did not create the user"
    uid, gid = int(users["mailmand"][2]), int(users["mailmand"][3])
    spool = (root / "var/spool/mailmand").stat()
    assert (spool.st_uid, spool.st_gid, stat.S_IMODE(spool.st_mode)) == (uid, gid, 0o2770)
    lib = (root / "var/lib/mailmand").stat()
    assert (lib.st_uid, stat.S_IMODE(lib.st_mode)) == (uid, 0o700)
    cache = (root / "var/cache/mailmand").stat()  # the producers' settings cache
    assert (cache.st_uid, cache.st_gid, stat.S_IMODE(cache.st_mode)) == (0, gid, 0o3770)
    conf = (root / "etc/mailmand/mailmand.yaml").stat()
    assert (conf.st_uid, conf.st_gid, stat.S_IMODE(conf.st_mode)) == (0, gid, 0o640)
    assert os.readlink(root / "usr/sbin/sendmail") == "/etc/alternatives/sendmail"
    assert os.readlink(root / "etc/alternatives/sendmail") == "/usr/bin/mailmand-sendmail"
    assert os.readlink(root / "usr/bin/mailq") == "/etc/alternatives/mailq"  # the slave link
    assert os.readlink(root / "etc/alternatives/mailq") == "/usr/bin/mailmand-mailq"
    assert (root / "usr/bin/mailmand-sendmail").resolve() == (root / "usr/lib/mailmand/mailmand").resolve()

    # The installed binary accepts the installed configuration.
    check = run([root / "usr/bin/mailmand", "check-config", "-c", root / "etc/mailmand/mailmand.yaml"],
                env=bare_env(tmp_path, SMTP_PASSWORD="unused"))
    assert check.returncode == 0, check.stderr

    purged = run([*dpkg, "--purge", "mailmand"], env={**os.environ})
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not (root / "usr/bin/mailmand").exists()
    assert not (root / "usr/sbin/sendmail").is_symlink(), "the sendmail alternative is left behind"
    assert not (root / "usr/bin/mailq").is_symlink(), "the mailq slave link is left behind"
    assert not (root / "usr/lib/mailmand").exists()
    assert (root / "var/spool/mailmand").is_dir(), "purge must keep mail not yet sent"
    assert not (root / "var/cache/mailmand").exists(), "purge leaves the settings cache"
