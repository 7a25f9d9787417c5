"""Spool → store: concurrent producers, a SIGKILLed ingest, quarantine, idempotency."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from mailmand import Client, Email
from mailmand import config as configmod
from mailmand.config import Config
from mailmand.errors import InvalidMessage
from mailmand.ingest import Ingester, IngestLoop
from mailmand.queues import open_queue
from mailmand.queues import spool as spoolmod
from mailmand.stores import Status, open_store
from tests.conftest import run_cli
from tests.daemonproc import DaemonProcess, wait_until


def ids_in_store(cfg: Config) -> list[str]:
    with sqlite3.connect(cfg.server.database.path) as db:
        return [r[0] for r in db.execute("SELECT id FROM messages")]


def count_in_store(cfg: Config) -> int:
    """How many messages the store holds, 0 while the daemon has not made it yet."""
    try:
        return len(ids_in_store(cfg))
    except sqlite3.OperationalError:  # no file, or no table yet
        return 0


def _produce(cfg: Config, n: int, tag: str) -> None:
    client = Client(cfg)
    for i in range(n):
        client.enqueue(Email(sender="p@example.com", to="r@example.com", subject=f"{tag}-{i}", text="x"))


def test_concurrent_producers_while_ingesting(make_config):
    cfg = make_config()
    open_queue(cfg.queue).close()  # create the spool before the race
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_produce, args=(cfg, 500, f"p{i}")) for i in range(4)]
    for p in procs:
        p.start()
    queue, store = open_queue(cfg.queue, daemon=True), open_store(cfg.server.database, create=True)
    ingester = Ingester(queue, store)
    total = 0
    while any(p.is_alive() for p in procs):
        total += ingester.drain().ingested
        time.sleep(0.01)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    total += ingester.drain().ingested
    assert total == 2000
    ids = ids_in_store(cfg)
    assert len(ids) == len(set(ids)) == 2000
    subjects = {m.subject for m in store.list_messages(limit=5000)}
    assert subjects == {f"p{i}-{j}" for i in range(4) for j in range(500)}
    assert queue.pending() == 0


def fill_spool(cfg: Config, n: int, send_after: float) -> list[str]:
    """`n` records in the spool, fast: the rows persist-queue's put writes, in one transaction."""
    Client(cfg)._q()._q  # type: ignore[attr-defined]  # noqa: B018 (the spool and table, as a producer makes them)
    record = Email(sender="a@example.com", to="b@example.com", text="x").to_record(10**6, send_after)
    records = [record.replace(id=uuid.uuid4().hex) for _ in range(n)]
    with sqlite3.connect(cfg.queue.path / spoolmod.DB_FILE) as db:
        db.executemany(f"INSERT INTO {spoolmod.TABLE} (data, timestamp, status) VALUES (?, 0, 0)",
                       [(json.dumps(r.to_json()).encode(),) for r in records])
    return [r.id for r in records]


def test_sigkill_of_the_daemon_during_ingest_loses_and_doubles_nothing(write_config, tmp_path: Path):
    conf = write_config(9)  # nothing is due: this is about ingest alone
    cfg = configmod.load(conf)
    sent = fill_spool(cfg, 30_000, time.time() + 3600)
    daemon = DaemonProcess(conf)  # the real daemon and its own drain (IngestLoop)
    try:
        assert wait_until(lambda: count_in_store(cfg) >= 3000, timeout=60), daemon.log
    finally:
        daemon.kill()
    stored_at_kill = len(ids_in_store(cfg))
    assert 0 < stored_at_kill < 30_000, "the kill must land in the middle of the drain"

    daemon = DaemonProcess(conf).ready()
    try:
        assert wait_until(lambda: len(ids_in_store(cfg)) == 30_000, timeout=120), daemon.log
        assert wait_until(lambda: open_queue(cfg.queue, readonly=True).pending() == 0, timeout=30)
    finally:
        assert daemon.stop() == 0
    ids = ids_in_store(cfg)
    assert len(ids) == len(set(ids))  # none doubled
    assert set(ids) == set(sent)  # none lost


PRODUCER = textwrap.dedent("""
    import sys
    from mailmand import Client, Email
    from mailmand.config import load
    client = Client(load(sys.argv[1], producer=True))
    for i in range(100_000):
        print(client.enqueue(Email(sender="a@example.com", to="b@example.com", subject=str(i), text="x")),
              flush=True)
""")


def test_sigkill_of_producers_during_enqueue_loses_nothing(write_config, tmp_path: Path):
    conf = write_config(9)
    cfg = configmod.load(conf)
    acknowledged: list[str] = []
    for round_ in range(5):
        child = subprocess.Popen([sys.executable, "-c", PRODUCER, str(conf)], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        got = [child.stdout.readline().strip() for _ in range(50 + 37 * round_)]  # a different point each round
        child.send_signal(signal.SIGKILL)
        child.wait()
        acknowledged += got + [line.strip() for line in child.stdout if line.strip()]
        child.stdout.close()
    out = run_cli("--once", "-c", str(conf))  # the daemon's own drain
    assert out.returncode == 0, out.stderr
    store = open_store(cfg.server.database, create=True)
    assert set(acknowledged) <= {m.id for m in store.list_messages(limit=100_000)}  # 0 lost
    assert store.quarantine_count() == 0  # no torn record
    assert open_queue(cfg.queue, readonly=True).pending() == 0


def test_the_client_reopens_the_spool_after_a_fork(make_config):
    cfg = make_config()
    client = Client(cfg)
    parent_id = client.enqueue(Email(sender="a@example.com", to="b@example.com", text="parent"))
    parent_queue = client._q()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a worker forked by gunicorn, celery or multiprocessing
        try:
            msg_id = client.enqueue(Email(sender="a@example.com", to="b@example.com", text="child"))
            os.write(write, f"{msg_id} {client._q() is parent_queue}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_id, shared = pipe.read().split()
    os.waitpid(pid, 0)
    assert shared == "False", "the child must open its own handle, not use the parent's SQLite connection"
    client.enqueue(Email(sender="a@example.com", to="b@example.com", text="parent again"))
    queue, store = open_queue(cfg.queue, daemon=True), open_store(cfg.server.database, create=True)
    assert Ingester(queue, store).drain().ingested == 3
    assert {parent_id, child_id} <= {m.id for m in store.list_messages()}


def test_ingest_gives_items_back_when_the_store_fails(make_config):
    cfg = make_config()
    client = Client(cfg)
    ids = {client.enqueue(Email(sender="a@example.com", to="b@example.com", text=str(i))) for i in range(5)}
    queue, store = open_queue(cfg.queue, daemon=True), open_store(cfg.server.database, create=True)
    with sqlite3.connect(cfg.server.database.path) as db:
        db.execute("ALTER TABLE bodies RENAME TO bodies_away")  # the store cannot take anything now
    with pytest.raises(Exception, match="bodies"):
        Ingester(queue, store).drain()
    assert ids_in_store(cfg) == [] and store.quarantine_count() == 0  # nothing half-stored, nothing quarantined
    assert open_queue(cfg.queue, readonly=True).pending() == 5  # nothing acked: still in the spool
    with sqlite3.connect(cfg.server.database.path) as db:
        db.execute("ALTER TABLE bodies_away RENAME TO bodies")  # and now it can again
    result = Ingester(queue, store).drain()
    assert (result.ingested, result.quarantined) == (5, 0)
    assert set(ids_in_store(cfg)) == ids
    assert open_queue(cfg.queue, readonly=True).pending() == 0


def test_records_the_client_would_refuse_are_quarantined_at_ingest(make_config):
    cfg = make_config()
    client = Client(cfg)
    good = client.enqueue(Email(sender="a@example.com", to="b@example.com", text="ok"))
    template = Email(sender="a@example.com", to="b@example.com", text="x").to_record(10**6).to_json()
    planted = {  # written past the client, as a buggy or hostile producer could
        "record.id": {**template, "id": "x" * 100_000},
        "record.id ": {**template, "id": "'; DROP TABLE messages; --"},
        "record.rcpt_to": {**template, "rcpt_to": [f"r{i}@example.com" for i in range(5000)]},
        "record.send_after": {**template, "id": "inf1", "send_after": float("inf")},  # JSON: Infinity (1e309)
        "record.send_after ": {**template, "id": "far1", "send_after": time.time() + 11 * 365 * 86400},
        "record.created_at": {**template, "id": "nan1", "created_at": float("nan")},
    }
    for record in planted.values():
        client._q().put(record)
    queue, store = open_queue(cfg.queue, daemon=True), open_store(cfg.server.database, create=True)
    result = Ingester(queue, store, max_recipients=1000).drain()
    assert (result.ingested, result.quarantined) == (1, len(planted))
    assert [m.id for m in store.list_messages()] == [good]
    reasons = sorted(q.reason for q in store.quarantined())
    for field in planted:
        assert sum(r.startswith(field.strip() + ":") for r in reasons) == sum(
            f.strip() == field.strip() for f in planted), (field, reasons)
    assert any("more than max-recipients (1000)" in r for r in reasons)
    assert any("within 10 years of now" in r for r in reasons)
    assert any("expected 1 to 64 of A-Z a-z 0-9 . _ -" in r for r in reasons)


def test_the_daemon_ingests_under_the_configured_max_recipients(make_config):
    """`max-recipients` reaches the daemon's ingest, not only the client's check."""
    from mailmand.daemon import Daemon
    cfg = make_config(max_recipients=3)
    client = Client(cfg)
    three = client.enqueue(Email(sender="a@example.com", to=[f"r{i}@example.com" for i in range(3)], text="x"))
    record = Email(sender="a@example.com", to="b@example.com", text="x").to_record(10**6).to_json()
    client._q().put({**record, "rcpt_to": [f"r{i}@example.com" for i in range(4)]})  # past the client
    client.close()
    d = Daemon(cfg)
    try:
        result = d.ingester.drain()
        assert (result.ingested, result.quarantined) == (1, 1)
        assert [m.id for m in d.store.list_messages()] == [three]
        [held] = d.store.quarantined()
        assert "more than max-recipients (3)" in held.reason, held.reason
    finally:
        d.close()


def test_the_client_checks_max_recipients_and_send_times(make_config):
    cfg = make_config(max_recipients=5)
    client = Client(cfg)
    five = [f"r{i}@example.com" for i in range(5)]
    client.enqueue(Email(sender="a@example.com", to=five[:2], bcc=five[2:], text="x"))
    with pytest.raises(InvalidMessage, match=r"more than max-recipients \(5\)"):
        client.enqueue(Email(sender="a@example.com", to=five, cc="r6@example.com", text="x"))
    with pytest.raises(InvalidMessage, match="within 10 years of now"):
        client.send_later(Email(sender="a@example.com", to="b@example.com", text="x"), "4000w")
    with pytest.raises(InvalidMessage, match="within 10 years of now"):
        client.enqueue(Email(sender="a@example.com", to="b@example.com", text="x"), send_after=float("inf"))
    assert Client(make_config()).config.server.max_recipients == 1000  # the documented default


def test_corrupt_items_are_quarantined_and_ingest_goes_on(make_config, caplog):
    caplog.set_level(logging.WARNING, logger="mailmand")  # whatever level an earlier test's CLI left
    cfg = make_config()
    client = Client(cfg)
    first = client.enqueue(Email(sender="a@example.com", to="b@example.com", text="1"))
    client.close()
    with sqlite3.connect(cfg.queue.path / "data.db") as db:  # what a buggy or hostile writer leaves
        db.execute("INSERT INTO ack_queue_default (data, timestamp, status) VALUES (?, 0, 0)", (b"{not json",))
        db.execute("INSERT INTO ack_queue_default (data, timestamp, status) VALUES (?, 0, 0)",
                   (json.dumps({"v": 1, "id": "x", "mail_from": "a@b.c", "rcpt_to": [], "raw": ""}).encode(),))
        db.execute("INSERT INTO ack_queue_default (data, timestamp, status) VALUES (?, 0, 0)",
                   (b"\x80\x04\x95pickle",))
    client = Client(cfg)
    last = client.enqueue(Email(sender="a@example.com", to="b@example.com", text="2"))
    queue, store = open_queue(cfg.queue, daemon=True), open_store(cfg.server.database, create=True)
    result = Ingester(queue, store).drain()
    assert (result.ingested, result.quarantined) == (2, 3)
    assert {m.id for m in store.list_messages()} == {first, last}
    kept = store.quarantined()
    assert len(kept) == 3 and store.quarantine_count() == 3
    reasons = " | ".join(q.reason for q in kept)
    assert "not valid JSON" in reasons and "record.rcpt_to" in reasons
    assert any(q.data == b"{not json" for q in kept)
    assert queue.pending() == 0
    # Each entry says where it came from, and the log line names the entry to review.
    [bad] = [q for q in kept if q.data == b"{not json"]
    assert re.fullmatch(rf"spool {re.escape(str(cfg.queue.path))} row \d+", bad.source), bad.source
    assert f"quarantined {bad.source} as quarantine entry {bad.id} (mailmand quarantine show {bad.id}): " \
           "not valid JSON" in caplog.text


def test_same_idempotency_key_yields_one_message(make_config):
    cfg = make_config()
    client = Client(cfg)
    e1 = Email(sender="a@example.com", to="b@example.com", text="1", idempotency_key="order-42")
    e2 = Email(sender="a@example.com", to="b@example.com", text="again", idempotency_key="order-42")
    first, second = client.enqueue(e1), client.enqueue(e2)
    assert first == second
    queue, store = open_queue(cfg.queue, daemon=True), open_store(cfg.server.database, create=True)
    result = Ingester(queue, store).drain()
    assert (result.ingested, result.duplicates) == (1, 1)
    assert len(ids_in_store(cfg)) == 1
    # And again after the first was ingested: still one.
    client.enqueue(Email(sender="a@example.com", to="b@example.com", text="3", idempotency_key="order-42"))
    Ingester(queue, store).drain()
    assert ids_in_store(cfg) == [first]


def test_scheduling_sets_the_due_time(make_config):
    cfg = make_config()
    client = Client(cfg)
    e = Email(sender="a@example.com", to="b@example.com", text="x")
    before = time.time()
    later = client.send_later(e, "5m")
    at = client.send_at(e, datetime.now() + timedelta(hours=2))  # naive: local time
    past = client.send_at(e, datetime(2001, 1, 1))  # the past means now, not an error
    delta = client.send_later(e, timedelta(seconds=90))
    queue, store = open_queue(cfg.queue, daemon=True), open_store(cfg.server.database, create=True)
    Ingester(queue, store).drain()
    assert store.get(later).due_at == pytest.approx(before + 300, abs=5)
    assert store.get(at).due_at == pytest.approx(before + 7200, abs=5)
    assert before - 1 <= store.get(past).due_at <= time.time()
    assert store.get(delta).due_at == pytest.approx(before + 90, abs=5)
    assert all(store.get(i).status is Status.QUEUED for i in (later, at, past, delta))
    with pytest.raises(ValueError, match="delay"):
        client.send_later(e, "soon")


def test_default_client_and_email_shortcuts(make_config, tmp_path: Path, monkeypatch):
    conf = tmp_path / "mailmand.yaml"
    conf.write_text(f"email:\n  queue:\n    default:\n      path: {tmp_path / 'spool'}\n"
                    f"  server:\n    database:\n      path: {tmp_path / 'db.sqlite'}\n"
                    "    smtp:\n      host: 127.0.0.1\n")
    monkeypatch.setenv("MAILMAND_CONFIG", str(conf))
    import mailmand.client as clientmod
    monkeypatch.setattr(clientmod, "_default", None)
    e = Email(sender="a@example.com", to="b@example.com", text="x")
    ids = [e.enqueue(), e.send_later("1h30m"), e.send_at(datetime.now())]
    assert len(set(ids)) == 3
    assert open_queue(clientmod.default_client().config.queue).pending() == 3


def test_spool_files_are_group_writable(make_config):
    cfg = make_config()
    client = Client(cfg)  # kept open, so the WAL file is there to check
    client.enqueue(Email(sender="a@example.com", to="b@example.com", text="x"))
    assert os.stat(cfg.queue.path).st_mode & 0o2070 == 0o2070
    for name in ("data.db", "data.db-wal"):
        mode = os.stat(cfg.queue.path / name).st_mode
        assert mode & 0o060 == 0o060 and mode & 0o007 == 0, f"{name}: {oct(mode)}"


def _spool_made_by_the_daemon(cfg: Config, umask: int) -> dict[str, int]:
    """The modes of the spool and its files when the daemon, started first, makes the spool."""
    from mailmand.daemon import Daemon
    old = os.umask(umask)
    try:
        d = Daemon(cfg)  # before any producer: the daemon makes the spool
        client = Client(cfg)
        client.enqueue(Email(sender="a@example.com", to="b@example.com", text="x"))
        d.ingester.drain()
        modes = {p.name: os.stat(p).st_mode & 0o7777 for p in cfg.queue.path.iterdir()}
        modes["dir"] = os.stat(cfg.queue.path).st_mode & 0o7777
        client.close()
        d.close()
    finally:
        os.umask(old)
    return modes


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000], ids=oct)
def test_spool_files_the_daemon_creates_are_0660_whatever_the_umask(make_config, umask):
    """The spool's files 0660 (the group writes them), its lock not world-readable."""
    modes = _spool_made_by_the_daemon(make_config(), umask)
    del modes["dir"]
    assert modes == {"data.db": 0o660, "data.db-wal": 0o660, "data.db-shm": 0o660, "mailmand.lock": 0o640}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000], ids=oct)
def test_a_spool_the_daemon_creates_is_2770_whatever_the_umask(make_config, umask):
    """Setgid, the group writes it, nobody else reads it."""
    assert oct(_spool_made_by_the_daemon(make_config(), umask)["dir"]) == oct(0o2770)


def test_a_record_the_store_cannot_hold_is_quarantined_not_blocking(make_config):
    cfg = make_config()
    client = Client(cfg)
    good = client.enqueue(Email(sender="a@example.com", to="b@example.com", text="1"))
    record = Email(sender="a@example.com", to="b@example.com", text="2").to_record(10**6).to_json()
    record["priority"] = 2**63  # what a buggy or hostile producer could write
    client._q().put(record)
    last = client.enqueue(Email(sender="a@example.com", to="b@example.com", text="3"))
    queue, store = open_queue(cfg.queue, daemon=True), open_store(cfg.server.database, create=True)
    result = Ingester(queue, store).drain()
    assert (result.ingested, result.quarantined) == (2, 1)
    assert {m.id for m in store.list_messages()} == {good, last}
    assert "record.priority" in store.quarantined()[0].reason
    assert queue.pending() == 0


def test_the_spool_backlog_count_matches_persist_queue(make_config):
    import persistqueue
    from persistqueue.sqlackqueue import AckStatus

    from mailmand.queues import spool
    assert (spool.TABLE, spool.UNACK) == (f"{persistqueue.SQLiteAckQueue._TABLE_NAME}_default", int(AckStatus.unack))
    cfg = make_config()
    assert open_queue(cfg.queue).pending() == 0  # a spool nobody wrote to yet
    client = Client(cfg)
    for _ in range(3):
        client.enqueue(Email(sender="a@example.com", to="b@example.com", text="x"))
    daemon_side = open_queue(cfg.queue, daemon=True)
    taken = daemon_side.take(1)  # in flight: still in the spool until the store has it
    assert open_queue(cfg.queue).pending() == daemon_side.pending() == 3
    daemon_side.ack(taken)
    assert open_queue(cfg.queue).pending() == daemon_side.pending() == 2


class LongPauses(IngestLoop):
    """After a wake-up that found nothing the loop looks again shortly, then
    pauses long: 30 s, and as long between its polls."""

    AFTER_WAKE = (0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.2, 0.5, 30.0)


def test_a_producer_ends_the_pause_after_the_daemons_own_write(make_config):
    """The daemon's own delete of what it ingested wakes its watcher, finds
    nothing, and starts the look-again pauses; a producer's message that comes
    during a pause is taken at once, not when the pause ends (30 s here)."""
    cfg = make_config()
    client = Client(cfg)
    queue, store = open_queue(cfg.queue, daemon=True), open_store(cfg.server.database, create=True)
    loop = LongPauses(Ingester(queue, store), poll=30.0)
    loop.start()
    try:
        first = client.enqueue(Email(sender="a@example.com", to="b@example.com", text="1"))
        assert wait_until(lambda: first in ids_in_store(cfg), timeout=20)
        time.sleep(1.5)  # the short looks are over: the loop is in its 30 s pause
        second = client.enqueue(Email(sender="a@example.com", to="b@example.com", text="2"))
        assert wait_until(lambda: second in ids_in_store(cfg), timeout=10)
    finally:
        loop.stop()
        client.close()
        queue.close()
        store.close()


def test_ingest_does_not_wait_for_a_producer_holding_the_spools_write_lock(make_config):
    """The ack (the delete of what was ingested) waits for no producer: with the spool's
    write lock held, the drain stores the records and returns, and the rows are deleted
    by a later take once the lock is free (else ingest, and the next message, wait)."""
    cfg = make_config()
    ids = [Client(cfg).enqueue(Email(sender="a@example.com", to="b@example.com", text=f"{i}")) for i in range(3)]
    queue, store = open_queue(cfg.queue, daemon=True), open_store(cfg.server.database, create=True)
    producer = sqlite3.connect(cfg.queue.path / spoolmod.DB_FILE, isolation_level=None)
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(Ingester(queue, store).drain()))
    try:
        producer.execute("BEGIN IMMEDIATE")  # a put in progress: holds the write lock
        t.start()
        t.join(20)  # (the lock's busy timeout is 30 s: a drain that waited for it is still here)
        assert not t.is_alive(), "the drain waited for the producer's lock"
        assert result[0].ingested == 3  # type: ignore[attr-defined]
        assert sorted(ids_in_store(cfg)) == sorted(ids)
        assert queue.pending() == 3  # still in the spool, not read again
        producer.execute("COMMIT")
        assert queue.take(10) == [] and queue.pending() == 0  # the next take deletes them
    finally:
        producer.close()  # the lock is free: a drain that waited goes on
        t.join(60)
        queue.close()
        store.close()
