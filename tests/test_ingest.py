"""Spool → store: concurrent producers, a SIGKILLed ingest, quarantine, idempotency."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from mailmand import Client, Email
from mailmand.config import Config
from mailmand.ingest import Ingester
from mailmand.queues import open_queue
from mailmand.stores import Status, open_store


def ids_in_store(cfg: Config) -> list[str]:
    with sqlite3.connect(cfg.server.database.path) as db:
        return [r[0] for r in db.execute("SELECT id FROM messages")]


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


INGEST_CHILD = textwrap.dedent("""
    import sys, time
    from mailmand.config import Config, DatabaseConfig, QueueConfig, ServerConfig
    from mailmand.ingest import Ingester
    from mailmand.queues import open_queue
    from mailmand.stores import open_store
    spool, db = sys.argv[1], sys.argv[2]
    cfg = Config(queue=QueueConfig(path=spool), server=ServerConfig(database=DatabaseConfig(path=db)))
    queue, store = open_queue(cfg.queue, daemon=True), open_store(cfg.server.database, create=True)
    resumed = queue.resume()
    ing = Ingester(queue, store)
    print("ready", resumed, flush=True)
    while True:
        items = queue.take(50)
        if not items:
            break
        ing._ingest(items)
        time.sleep(0.002)
    print("done", flush=True)
""")


def test_sigkill_during_ingest_loses_and_doubles_nothing(make_config, tmp_path: Path):
    cfg = make_config()
    client = Client(cfg)
    sent = [client.enqueue(Email(sender="a@example.com", to="b@example.com", subject=str(i), text="x"))
            for i in range(3000)]
    client.close()
    args = [sys.executable, "-c", INGEST_CHILD, str(cfg.queue.path), str(cfg.server.database.path)]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().startswith("ready")
    deadline = time.monotonic() + 30
    while len(ids_in_store(cfg)) < 500 and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    stored_at_kill = len(ids_in_store(cfg))
    assert 0 < stored_at_kill < 3000, "the kill must land in the middle of the drain"

    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "done" in out
    ids = ids_in_store(cfg)
    assert len(ids) == len(set(ids))  # none doubled
    assert set(ids) == set(sent)  # none lost
    assert open_queue(cfg.queue).pending() == 0


def test_corrupt_items_are_quarantined_and_ingest_goes_on(make_config):
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
    taken = daemon_side.take(1)  # in flight: not waiting any more
    assert open_queue(cfg.queue).pending() == daemon_side.pending() == 2
    daemon_side.ack(taken)
