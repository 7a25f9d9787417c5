"""The PostgreSQL store from the outside: every command, `migrate`, a dsn
that does not parse, `check-config --connect`, and a database that is away
at start and lost while running (a real server behind a proxy we cut)."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from email import message_from_bytes

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mailmand import Client, Email
from mailmand.cli import main
from mailmand.config import load
from mailmand.stores import Status, open_store
from tests.conftest import postgres_block, run_cli, write_store_config
from tests.daemonproc import DaemonProcess, wait_until
from tests.tcpproxy import TcpProxy


def cli_json(capsys, *args: str):
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def send(conf, to: str, subject: str, *extra: str) -> str:
    out = run_cli("send", "-c", str(conf), "--from", "app@example.com", "--to", to, "--subject", subject,
                  "--text", "hello", *extra)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode().strip()


@pytest.fixture
def sqlite_world(smtp_server, tmp_path):
    """A real SQLite store after a run: sent, failed, deferred and scheduled mail."""
    server = smtp_server(rcpt_replies={"bad@example.com": "550 5.1.1 no such user",
                                       "later@example.com": "451 4.2.1 mailbox busy"})
    db = tmp_path / "one-host" / "mailmand.db"
    conf = write_store_config(tmp_path / "sqlite.yaml", tmp_path / "spool", server.port,
                              f"      engine: sqlite3\n      path: {db}\n")
    ids = {"sent": send(conf, "ann@example.com", "hello ann"),
           "failed": send(conf, "bad@example.com", "to nobody"),
           "deferred": send(conf, "later@example.com", "busy box"),
           "scheduled": send(conf, "ann@example.com", "tomorrow", "--in", "1d")}
    assert main(["--once", "-c", str(conf)]) == 0
    return server, conf, db, ids


def test_migrate_copies_everything_once_and_every_command_reads_the_same(sqlite_world, postgres_dsn,
                                                                          tmp_path, capsys):
    server, sqlite_conf, db, ids = sqlite_world
    pg_conf = write_store_config(tmp_path / "pg.yaml", tmp_path / "pg-spool", server.port,
                                 postgres_block(postgres_dsn))
    capsys.readouterr()
    assert main(["migrate", "-c", str(pg_conf), "--from", str(db)]) == 0
    out = capsys.readouterr().out
    assert "4 message(s), 4 copied (0 already there), 3 attempt(s), 3 recipient outcome(s)" in out
    for mid in ids.values():  # `show` identical afterwards, attempts and recipients included
        assert cli_json(capsys, "show", "-c", str(pg_conf), mid) == cli_json(capsys, "show", "-c", str(sqlite_conf),
                                                                            mid)
    shown = cli_json(capsys, "show", "-c", str(pg_conf), ids["deferred"])
    assert shown["status"] == "deferred" and shown["recipients"][0]["status"] == "deferred"
    host, pid, _ = shown["attempts"][0]["daemon"].split(":")  # which daemon made the attempt
    assert host and pid.isdigit()
    assert cli_json(capsys, "list", "-c", str(pg_conf)) == cli_json(capsys, "list", "-c", str(sqlite_conf))
    drop = ("since", "until")
    pg_stats, lite_stats = (cli_json(capsys, "stats", "-c", str(c)) for c in (pg_conf, sqlite_conf))
    assert {k: v for k, v in pg_stats.items() if k not in drop} == {k: v for k, v in lite_stats.items()
                                                                    if k not in drop}
    assert pg_stats["sent"] == 1 and pg_stats["failed"] == 1
    assert (cli_json(capsys, "status", "-c", str(pg_conf))["counts"]
            == cli_json(capsys, "status", "-c", str(sqlite_conf))["counts"])
    suppressed = cli_json(capsys, "suppress", "list", "-c", str(pg_conf))
    assert [x["address"] for x in suppressed] == ["bad@example.com"]  # refused 550 5.1.1 on the one host
    assert suppressed == cli_json(capsys, "suppress", "list", "-c", str(sqlite_conf))

    assert main(["migrate", "-c", str(pg_conf), "--from", str(db)]) == 0  # twice: nothing twice
    assert "4 message(s), 0 copied (4 already there)" in capsys.readouterr().out
    assert cli_json(capsys, "stats", "-c", str(pg_conf))["sent"] == 1

    # The operator commands act on the shared store.
    assert main(["cancel", "-c", str(pg_conf), ids["scheduled"]]) == 0
    server.rcpt_replies = {"later@example.com": "451 4.2.1 mailbox busy"}  # still busy, if it comes due
    assert main(["retry", "-c", str(pg_conf), ids["failed"]]) == 0
    assert main(["--once", "-c", str(pg_conf)]) == 0
    assert "ingested 0, sent 1, deferred " in capsys.readouterr().out
    counts = cli_json(capsys, "status", "-c", str(pg_conf))["counts"]
    assert (counts["sent"], counts["cancelled"], counts["deferred"]) == (2, 1, 1)
    time.sleep(1.1)
    assert main(["purge", "-c", str(pg_conf), "--older-than", "1s"]) == 0
    assert "purged 3 finished message(s)" in capsys.readouterr().out


def test_migrate_refuses_while_a_daemon_holds_the_sqlite_store(sqlite_world, postgres_dsn, tmp_path):
    server, sqlite_conf, db, _ = sqlite_world
    pg_conf = write_store_config(tmp_path / "pg.yaml", tmp_path / "pg-spool", server.port,
                                 postgres_block(postgres_dsn))
    daemon = DaemonProcess(sqlite_conf).ready()
    try:
        out = run_cli("migrate", "-c", str(pg_conf), "--from", str(db))
    finally:
        assert daemon.stop() == 0
    assert out.returncode == 1 and b"already running on the store" in out.stderr, out.stderr
    assert b"Traceback" not in out.stderr


def test_a_dsn_that_does_not_parse_is_refused_with_78_and_leaves_nothing(tmp_path):
    conf = write_store_config(tmp_path / "m.yaml", tmp_path / "spool", 9,
                              postgres_block("host=db.internal password=s3cret dbname"))
    for args in (("run",), ("check-config",)):
        out = run_cli(*args, "-c", str(conf))
        assert out.returncode == 78, out.stderr
        err = out.stderr.decode()
        assert "email.server.database.dsn" in err and "s3cret" not in err and "Traceback" not in err
    assert not (tmp_path / "spool").exists()


def test_check_config_connect(postgres_dsn, tmp_path, smtp_server):
    # --connect opens the store and a session to the relay (a real one here, so that only the store decides).
    conf = write_store_config(tmp_path / "m.yaml", tmp_path / "spool", smtp_server().port,
                              postgres_block(postgres_dsn))
    out = run_cli("check-config", "--connect", "-c", str(conf))
    assert b"store: no store yet at postgres" in out.stdout, out.stderr  # nothing created by a check
    closed = TcpProxy(("127.0.0.1", 1))  # a port nobody listens on
    dsn = make_conninfo(**{**conninfo_to_dict(postgres_dsn), "host": "127.0.0.1", "port": str(closed.port),
                           "password": "s3cret"})
    bad = write_store_config(tmp_path / "bad.yaml", tmp_path / "spool", 9, postgres_block(dsn))
    out = run_cli("check-config", "--connect", "-c", str(bad))
    # Exit 69 naming the part (the relay at port 9 too); the line says why, the password masked.
    assert out.returncode == 69 and out.stderr.endswith(b"mailmand: cannot use: store, relay\n"), out.stderr
    assert b": cannot be used: cannot reach postgres" in out.stdout, out.stdout
    assert b"s3cret" not in out.stderr + out.stdout and b"***" in out.stdout
    store = open_store(load(conf).server.database, create=True)
    store.close()
    out = run_cli("check-config", "--connect", "-c", str(conf))
    assert out.returncode == 0 and b"reachable, 0 message(s)" in out.stdout, out.stderr


def subjects(server) -> Counter[str]:
    return Counter(message_from_bytes(m.data)["Subject"] for m in server.messages)


def test_postgres_away_at_start_and_lost_while_running(postgres_dsn, smtp_server, tmp_path):
    target = conninfo_to_dict(postgres_dsn)
    proxy = TcpProxy((str(target.get("host", "127.0.0.1")), int(target.get("port", 5432))))
    dsn = make_conninfo(**{**target, "host": "127.0.0.1", "port": str(proxy.port)})
    server = smtp_server(stall=0.1)
    conf = write_store_config(tmp_path / "m.yaml", tmp_path / "spool", server.port, postgres_block(dsn),
                              server="    lease: 60s\n    batch: 10\n", smtp="      connections: 2\n")
    client = Client(load(conf, producer=True))
    wanted = {f"m{i}" for i in range(60)}
    for s in sorted(wanted):
        client.enqueue(Email(sender="a@example.com", to="b@example.com", subject=s, text="x"))
    client.close()
    daemon = DaemonProcess(conf)
    try:
        daemon.wait_for("cannot reach the store, waiting for it")
        time.sleep(3.5)  # several tries (1 s, 2 s apart): one line for the outage, and no start
        assert daemon.log.count("cannot reach the store") == 1
        assert "mailmand running" not in daemon.log and daemon.proc.poll() is None
        proxy.up()
        daemon.wait_for("mailmand running", timeout=30)
        assert "cleared after" in daemon.log
        assert wait_until(lambda: len(server.messages) >= 8, timeout=30)
        proxy.down()  # lost mid-batch: the relay goes on, the outcomes wait
        # The first failure is a claim or a commit, whichever came first; the outcomes are kept either way.
        assert wait_until(lambda: "kept to commit later" in daemon.log or "still wait for the store" in daemon.log,
                          timeout=30), daemon.log
        assert "psycopg" not in daemon.log  # the store says it, once; not the driver, each time
        proxy.up()
        assert wait_until(lambda: set(subjects(server)) == wanted, timeout=90), daemon.log
        store = open_store(load(conf).server.database)
        try:
            assert wait_until(lambda: store.counts()[Status.SENT] == len(wanted), timeout=30), store.counts()
            assert store.counts()[Status.SENDING] == 0
        finally:
            store.close()
        assert "recorded" in daemon.log and "kept while the store could not be written" in daemon.log
        assert set(subjects(server).values()) == {1}, "an outcome kept through the outage is not sent again"
    finally:
        proxy.down()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0


def test_without_the_driver_the_daemon_says_what_to_install(tmp_path):
    conf = write_store_config(tmp_path / "m.yaml", tmp_path / "spool", 9,
                              postgres_block("postgresql://mailmand@db.example.com/mailmand"))
    script = ("import sys; sys.modules['psycopg'] = None  # as if the extra were not installed\n"
              "from mailmand.cli import main; sys.exit(main(['run', '-c', sys.argv[1]]))")
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", script, str(conf)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 78, out.stderr
    assert "pip install 'mailmand[postgres]'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "spool").exists()  # refused before anything was made


def test_a_restart_on_the_same_host_and_spool_takes_back_its_dead_predecessors_leases(postgres_dsn, smtp_server,
                                                                                      tmp_path):
    server = smtp_server(stall=0.01)
    conf = write_store_config(tmp_path / "m.yaml", tmp_path / "spool", server.port, postgres_block(postgres_dsn),
                              server="    batch: 50\n", smtp="      connections: 2\n")  # lease: 5 minutes
    client = Client(load(conf, producer=True))
    wanted = {f"m{i}" for i in range(400)}
    for s in sorted(wanted):
        client.enqueue(Email(sender="a@example.com", to="b@example.com", subject=s, text="x"))
    client.close()
    first = DaemonProcess(conf).ready()
    assert wait_until(lambda: len(server.messages) >= 60, timeout=60)
    first.kill()
    store = open_store(load(conf).server.database)
    held = store.counts()[Status.SENDING]
    store.close()
    assert held > 0, "the kill must land with leases held"
    second = DaemonProcess(conf).ready()
    try:
        # Taken back at once: waiting out the 5-minute lease would fail this wait.
        assert wait_until(lambda: set(subjects(server)) == wanted, timeout=60)
    finally:
        assert second.stop() == 0
    assert f"and {held} claimed message(s) from a previous run" in second.log
    assert sum(n - 1 for n in subjects(server).values()) <= held
