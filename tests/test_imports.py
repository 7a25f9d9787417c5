"""A producer never pays for the daemon: each producer entry point runs in a
fresh interpreter and must not import a daemon-only module.

`mailmand-sendmail` is called once per message by cron and PHP; what it
imports is its start-up time. The daemon's machinery (watchdog, APScheduler,
aiosmtpd, smtplib, ssl, asyncio via persist-queue) belongs to `mailmand run`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Top-level packages and mailmand modules that only the daemon (or check-config --connect) may load.
DAEMON_ONLY = {"watchdog", "apscheduler", "aiosmtpd", "smtplib", "ssl", "_ssl", "asyncio", "persistqueue",
               "mailmand.daemon", "mailmand.scheduler", "mailmand.dispatcher", "mailmand.ingest", "mailmand.smtp",
               "mailmand.demo", "mailmand.notices", "mailmand.policy", "mailmand.systemd",
               "mailmand.web", "starlette", "uvicorn", "jinja2"}

HARNESS = """
import atexit, json, sys
def _dump():
    with open({out!r}, "w") as f:
        json.dump(sorted(sys.modules), f)
atexit.register(_dump)
"""

# `<local@domain>` as smtp-source and many scripts write it: plain too, read without the email package.
MESSAGE = b"From: app@example.com\nTo: <ops@example.com>\nSubject: lean\n\nhello\n"


def run_fresh(tmp_path: Path, code: str, conf: Path, stdin: bytes = b"") -> set[str]:
    out = tmp_path / "modules.json"
    env = {**os.environ, "MAILMAND_CONFIG": str(conf)}
    proc = subprocess.run([sys.executable, "-c", HARNESS.format(out=str(out)) + code], input=stdin,
                          capture_output=True, env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    return set(json.loads(out.read_text()))


def loaded_daemon_modules(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m in DAEMON_ONLY or m.split(".")[0] in DAEMON_ONLY)


@pytest.fixture
def world(tmp_path, write_config):
    """A spool and a store with one message in them, as a running daemon leaves them."""
    from mailmand.cli import main

    conf = write_config(9)
    assert main(["send", "-c", str(conf), "--from", "a@example.com", "--to", "b@example.com", "--text", "x"]) == 0
    from mailmand.config import load
    from mailmand.daemon import Daemon

    d = Daemon(load(conf))
    d.ingester.drain()
    msg_id = d.store.list_messages()[0].id
    d.close()
    return conf, msg_id


ENTRY_POINTS = {
    "mailmand-sendmail -t": ("import sys; sys.argv = ['mailmand-sendmail', '-t', '-i']\n"
                             "from mailmand.cli import sendmail_main; sys.exit(sendmail_main())", MESSAGE),
    "mailmand sendmail -t": ("import sys; from mailmand.cli import main; sys.exit(main(['sendmail', '-t']))", MESSAGE),
    "mailmand send": ("import sys; from mailmand.cli import main\n"
                      "sys.exit(main(['send', '--from', 'a@example.com', '--to', 'b@example.com', '--text', 'x']))",
                      b""),
    "mailq": ("import sys; sys.argv = ['mailq']\nfrom mailmand.cli import mailq_main; sys.exit(mailq_main())", b""),
    "mailmand status": ("import sys; from mailmand.cli import main; sys.exit(main(['status']))", b""),
    "mailmand list": ("import sys; from mailmand.cli import main; sys.exit(main(['list']))", b""),
    "mailmand show": ("import sys; from mailmand.cli import main; sys.exit(main(['show', '{id}']))", b""),
    "Email + Client": ("from mailmand import Email, Client\nc = Client()\n"
                       "c.enqueue(Email(sender='a@example.com', to='b@example.com', text='x')); c.close()", b""),
}


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_producer_entry_points_import_no_daemon_module(name, world, tmp_path):
    conf, msg_id = world
    code, stdin = ENTRY_POINTS[name]
    modules = run_fresh(tmp_path, code.replace("{id}", msg_id), conf, stdin)
    assert "mailmand" in modules  # the harness saw the run
    assert loaded_daemon_modules(modules) == [], f"{name} imported daemon-only modules"


def test_the_daemon_does_import_them(world, tmp_path):
    """The check can fail: `mailmand --once` loads what the producers must not."""
    conf, _ = world
    modules = run_fresh(tmp_path, "import sys; from mailmand.cli import main; sys.exit(main(['--once']))", conf)
    loaded = set(loaded_daemon_modules(modules))
    assert {"smtplib", "mailmand.daemon"} <= loaded | {m.split(".")[0] for m in loaded}
    # ...but not the scheduler: `--once` never schedules (APScheduler was a third of its imports).
    assert not {m for m in modules if m.split(".")[0] == "apscheduler" or m == "mailmand.scheduler"}


def test_a_lean_put_is_what_persist_queue_takes(tmp_path):
    """The producer's put writes persist-queue's own row: the daemon's persist-queue reads it back."""
    from persistqueue.sqlackqueue import AckStatus

    from mailmand.queues import spool

    assert spool.INITED == int(AckStatus.inited)
    first = spool.SpoolQueue(tmp_path / "spool")
    first.put({"id": "first"})  # a fresh spool: persist-queue makes its table
    assert first._opened is not None
    first.close()
    daemon_side = spool.SpoolQueue(tmp_path / "spool", daemon=True)
    producer = spool.SpoolQueue(tmp_path / "spool")
    producer.put({"id": "lean", "n": [1, "é"]})
    assert producer._opened is None and producer._direct is not None  # persist-queue was not opened
    producer.close()
    items = daemon_side.take(10)
    assert [i.data for i in items] == [{"id": "first"}, {"id": "lean", "n": [1, "é"]}]
    assert all(i.error is None for i in items)
    daemon_side.ack(items)
    daemon_side.close()


# What a producer must not pay for at start once its settings are cached:
# the configuration's parser and schema, and the modules that only a daemon or
# a composed listing needs. `dataclasses` pulls in inspect, ast, dis and tokenize.
# A plain message (quick.py, Email._plain) is written without the email package (and its socket).
PLAIN = {"yaml", "msgspec", "dataclasses", "inspect", "logging", "typing", "argparse", "email", "socket"}
LEAN = {
    "mailmand-sendmail -t": PLAIN,
    "Email + Client": PLAIN,
    **dict.fromkeys(("mailmand sendmail -t", "mailmand send"), {"yaml", "msgspec"}),
    # Reading the store: no message is composed or parsed.
    **dict.fromkeys(("mailq", "mailmand status", "mailmand list", "mailmand show"), {"yaml", "msgspec", "email"}),
}


@pytest.mark.parametrize("name", list(LEAN))
def test_a_cached_producer_skips_the_config_parser(name, world, tmp_path):
    from mailmand.config import cache

    conf, msg_id = world
    time.sleep(max(0.0, conf.stat().st_ctime + cache.SETTLE + 0.05 - time.time()))  # the file has settled
    code, stdin = ENTRY_POINTS[name]
    code = code.replace("{id}", msg_id)
    first = run_fresh(tmp_path, code, conf, stdin)  # loads the file, fills the cache
    assert "yaml" in first
    modules = run_fresh(tmp_path, code, conf, stdin)
    assert sorted(m for m in modules if m.split(".")[0] in LEAN[name]) == [], f"{name} imported them"
