"""Mail private to the daemon: the store is its user's alone (0600 in 0700), and
what the spool held is gone from its files once ingested (rows deleted,
secure_delete, the WAL emptied). Tried with real users: the daemon's, an
application in its group, and another member reading what the first sent."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

from mailmand import Client, Email
from mailmand.daemon import Daemon
from tests import realusers
from tests.daemonproc import wait_until
from tests.realusers import Users

SECRET = "payroll-7f3a9c@example.com"  # a recipient: plain text in the queued record


def spool_bytes(spool: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(spool.iterdir()) if p.is_file())


def test_an_ingested_message_cannot_be_read_back_from_the_spool(make_config):
    cfg = make_config()
    client = Client(cfg)
    client.enqueue(Email(sender="hr@example.com", to=SECRET, subject="salaries", text="secret"))
    client.close()
    assert SECRET.encode() in spool_bytes(cfg.queue.path), "the test must see the mail before ingest"
    d = Daemon(cfg)
    try:
        assert d.once().ingested.ingested == 1
    finally:
        d.close()
    assert SECRET.encode() not in spool_bytes(cfg.queue.path)


def test_the_store_is_the_daemons_and_the_spool_forgets(users: Users, tmp_path):
    team = users.group("mm")
    daemon_user = users.user("daemon", groups=(team,))
    app, other = users.user("app", groups=(team,)), users.user("other", groups=(team,))
    gid = users.gid_of(team)
    spool, lib = users.base / "spool", users.base / "lib"
    for path, mode, owner in ((spool, 0o2770, daemon_user.uid), (lib, 0o700, daemon_user.uid)):
        path.mkdir()
        os.chown(path, owner, gid)
        path.chmod(mode)  # as packaging/systemd/mailmand.tmpfiles makes them
    conf = users.base / "mailmand.yaml"
    conf.write_text("email:\n"
                    f"  queue:\n    default:\n      path: {spool}\n"
                    f"  server:\n    database:\n      path: {lib / 'mailmand.db'}\n"
                    "    smtp:\n      host: 127.0.0.1\n      port: 9\n      timeout: 1s\n")
    conf.chmod(0o644)

    def env(user):
        return user.env(MAILMAND_CONFIG=str(conf))

    sent = app.mailmand("send", "--from", "hr@example.com", "--to", SECRET, "--subject", "salaries",
                        "--text", "secret", env=env(app))
    assert sent.returncode == 0, sent.stderr
    message_id = sent.stdout.strip().split()[-1]
    # The trust boundary, as documented: another member can read it until it is ingested.
    peek = other.run(["grep", "-a", "-l", SECRET, *sorted(spool.iterdir())], env=env(other))
    assert peek.returncode == 0, peek.stderr

    # A running daemon (its connections keep the spool's WAL, which a last close would remove).
    daemon = daemon_user.popen([realusers.PYTHON, "-m", "mailmand", "run"], env=env(daemon_user), umask=0o007)
    try:
        def forgotten() -> bool:
            peek = other.run(["grep", "-a", "-l", SECRET, *sorted(spool.iterdir())], env=env(other))
            return peek.returncode == 1
        assert wait_until(forgotten, timeout=15), "the ingested mail can still be read from the spool"
        assert daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    db = lib / "mailmand.db"
    for path in lib.iterdir():
        if path.name.startswith("mailmand.db") and not path.name.endswith(".lock"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(lib.stat().st_mode) == 0o700

    for user in (app, other):
        for cmd in (["status"], ["show", message_id], ["list"]):
            read = user.mailmand(*cmd, env=env(user))
            assert read.returncode == 1, (cmd, read.stdout, read.stderr)
            assert (f"cannot read the store at {db}: permission denied (stored mail is private to the "
                    f"daemon's user): run this as {daemon_user.name} or root, e.g. sudo -u {daemon_user.name}"
                    ) in read.stderr, read.stderr
            assert "Traceback" not in read.stderr
        assert user.run(["cat", db]).returncode != 0
    shown = daemon_user.mailmand("show", message_id, env=env(daemon_user))
    assert shown.returncode == 0 and SECRET in shown.stdout, shown.stderr


def test_a_store_made_without_the_daemon_is_private_too(tmp_path):
    from mailmand.config import DatabaseConfig
    from mailmand.stores import open_store

    old = os.umask(0)
    try:
        store = open_store(DatabaseConfig(path=tmp_path / "new" / "mailmand.db"), create=True)
        store.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new" / "mailmand.db").stat().st_mode) == 0o600
