"""The queue contract, run against every engine (spool, redis, postgres) through one fixture.

A new engine is proven by adding it to `ENGINE_PARAMS` and `QueueFactory`.
"""

from __future__ import annotations

import json
import pickle
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailmand.config import QueueConfig, replace
from mailmand.queues import Queue, open_queue
from mailmand.queues import spool as spoolmod
from tests.redisutil import redis_url, require_redis


class QueueFactory:
    """Opens producer and daemon handles on one queue of the test's own."""

    def __init__(self, engine: str, cfg: QueueConfig) -> None:
        self.engine = engine
        self.cfg = cfg
        self.opened: list[Queue] = []

    def producer(self) -> Queue:
        if self.engine == "postgres":
            self.migrate()
        return self._keep(open_queue(self.cfg))

    def migrate(self) -> None:
        """The outbox's table, as an app's migration makes it (before any daemon ran)."""
        import psycopg

        from mailmand.queues.postgres import ddl

        with psycopg.connect(str(self.cfg.dsn)) as conn:
            for stmt in ddl(self.cfg.table):
                conn.execute(stmt)

    def daemon(self, consumer: str = "d1", lease: float = 300.0, exclusive: bool = True) -> Queue:
        return self._keep(open_queue(self.cfg, daemon=True, consumer=consumer, lease=lease, exclusive=exclusive))

    def reader(self) -> Queue:
        return self._keep(open_queue(self.cfg, readonly=True))

    def put_raw(self, data: bytes) -> None:
        """What a buggy or hostile writer leaves in the queue, past the client."""
        if self.engine == "spool":
            self.producer().put({"warm": "up"})  # the table, as persist-queue makes it
            self.daemon("raw").take(10)  # ...and that item out of the way, unacked
            with sqlite3.connect(self.cfg.path / spoolmod.DB_FILE) as db:
                db.execute(f"INSERT INTO {spoolmod.TABLE} (data, timestamp, status) VALUES (?, 0, 0)", (data,))
        elif self.engine == "postgres":
            import psycopg

            self.migrate()
            with psycopg.connect(str(self.cfg.dsn)) as conn:
                conn.execute("INSERT INTO mailmand_outbox (record) VALUES (%s)", (data.decode(errors="replace"),))
        else:
            client = require_redis()
            client.xadd(self.cfg.name, {b"record": data})  # type: ignore[attr-defined]

    def _keep(self, q: Queue) -> Queue:
        self.opened.append(q)
        return q

    def close(self) -> None:
        for q in self.opened:
            q.close()


@pytest.fixture(params=["spool", "redis", "postgres"])
def queues(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueFactory]:
    if request.param == "spool":
        cfg = QueueConfig(engine="spool", path=tmp_path / "spool", min_free=0)
    elif request.param == "postgres":
        cfg = QueueConfig(engine="postgres", dsn=request.getfixturevalue("postgres_dsn"), table="mailmand_outbox")
    else:
        key = request.getfixturevalue("redis_key")
        cfg = QueueConfig(engine="redis", url=redis_url(), name=key)
    factory = QueueFactory(request.param, cfg)
    yield factory
    factory.close()


def record(i: int) -> dict[str, object]:
    return {"v": 1, "id": f"m{i}", "n": i, "text": "é ✓"}


def test_put_take_ack_keeps_the_json_in_order(queues: QueueFactory):
    p, d = queues.producer(), queues.daemon()
    d.resume()
    for i in range(5):
        p.put(record(i))
    assert p.pending() == 5 and p.info().waiting == 5
    items = d.take(3) + d.take(10)
    assert [i.data for i in items] == [record(i) for i in range(5)]
    assert all(i.error is None for i in items)
    assert json.loads(items[0].raw) == record(0)  # the raw bytes are the JSON itself
    assert p.pending() == 5  # taken, not yet acked: still not ingested
    d.ack(items)
    assert d.take(10) == []
    assert p.pending() == p.info().waiting == 0


def test_put_many_queues_each_record_in_order_between_single_puts(queues: QueueFactory):
    p, d = queues.producer(), queues.daemon()
    d.resume()
    p.put_many([])  # nothing to write: nothing written, no error
    p.put(record(0))
    p.put_many([record(1), record(2), record(3)])
    p.put(record(4))
    assert p.pending() == 5
    items = d.take(10)
    assert [i.data for i in items] == [record(i) for i in range(5)]
    d.ack(items)
    assert p.pending() == 0


def test_put_many_into_a_queue_nobody_wrote_to_makes_it(queues: QueueFactory):
    """The listener's first write may be the queue's first: the spool's table is made then."""
    p, d = queues.producer(), queues.daemon()
    p.put_many([record(1), record(2)])
    d.resume()
    assert [i.data for i in d.take(10)] == [record(1), record(2)]


def test_taken_items_are_not_taken_again_until_released(queues: QueueFactory):
    p, d = queues.producer(), queues.daemon()
    d.resume()
    for i in range(3):
        p.put(record(i))
    taken = d.take(2)
    assert [i.data for i in d.take(10)] == [record(2)]
    d.release(taken)
    again = d.take(10)
    assert sorted(i.data["n"] for i in again) == [0, 1]
    d.ack(again)
    assert d.take(10) == []


def test_a_shared_queue_hides_taken_items_from_other_daemons(queues: QueueFactory):
    if queues.engine == "spool":
        pytest.skip("a spool has one daemon (its lock file): there is no other taker")
    p, d, other = queues.producer(), queues.daemon(), queues.daemon("d2", exclusive=False)
    d.resume()
    other.resume()
    for i in range(3):
        p.put(record(i))
    taken = d.take(2)
    rest = other.take(10)
    assert [i.data for i in rest] == [record(2)]
    d.ack(taken)
    other.ack(rest)


def test_a_daemon_that_died_holding_items_gets_them_back_at_restart(queues: QueueFactory):
    p = queues.producer()
    first = queues.daemon("dead")
    first.resume()
    for i in range(4):
        p.put(record(i))
    taken = first.take(10)
    assert len(taken) == 4
    first.close()  # died without acking
    second = queues.daemon("alive", exclusive=True)
    # Redis knows what was pending on the dead consumer; the spool never marks
    # what its daemon takes (it reads every row not yet deleted again).
    # (The outbox's dead daemon held its rows in a transaction, which ended with its connection.)
    assert second.resume() == (4 if queues.engine == "redis" else 0)
    back = second.take(10)
    assert sorted(i.data["n"] for i in back) == [0, 1, 2, 3]
    second.ack(back)
    assert second.take(10) == [] and p.pending() == 0


def test_daemons_taking_at_once_take_each_item_once(queues: QueueFactory):
    if queues.engine == "spool":
        pytest.skip("a spool has one daemon (its lock file): there is no other taker")
    p = queues.producer()
    for i in range(120):
        p.put(record(i))
    takers = [queues.daemon(f"d{n}", exclusive=False) for n in range(3)]
    got: list[list[int]] = [[] for _ in takers]
    start = threading.Barrier(len(takers))

    def drain(n: int) -> None:
        d = takers[n]
        d.resume()
        start.wait()
        while items := d.take(7):
            got[n].extend(i.data["n"] for i in items)
            d.ack(items)

    threads = [threading.Thread(target=drain, args=(n,)) for n in range(len(takers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = sorted(n for share in got for n in share)
    assert every == list(range(120))  # each once: none lost, none taken twice
    assert p.pending() == 0


def test_wait_wakes_when_a_producer_puts(queues: QueueFactory):
    d = queues.daemon()
    d.resume()
    assert d.take(10) == []
    assert d.wait(0.05) is False  # nothing came
    p = queues.producer()
    p.put(record(0))  # the queue is there now; watch from here
    d.ack(d.take(10))
    woke = threading.Event()
    got: list[object] = []

    def waiter() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not got:
            if d.wait(5.0):
                woke.set()
            # A wake-up is a hint: it may come a moment before the commit is
            # visible (inotify sees the WAL write). Take in any case, as ingest does.
            time.sleep(0.01)
            got.extend(i.data for i in d.take(10))

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)  # the waiter is blocked in wait() (the spool's watcher is started by the first wait)
    queues.producer().put(record(7))
    t.join(30)
    assert woke.is_set() and got == [record(7)]


def test_wake_ends_a_wait_early(queues: QueueFactory):
    """How a stopping daemon gets its ingest thread out of a wait: the wait ends
    after wake(), long before its timeout, and says it was woken."""
    d = queues.daemon()
    d.resume()
    d.take(1)
    done = threading.Event()
    woken: list[bool] = []
    t = threading.Thread(target=lambda: (woken.append(d.wait(30.0)), done.set()))
    t.start()
    time.sleep(0.1)
    d.wake()
    assert done.wait(10), "wait() must return soon after wake(), not at its timeout"
    t.join()
    assert woken == [True]


def test_an_item_that_is_not_json_comes_back_with_the_reason(queues: QueueFactory):
    planted = pickle.dumps({"x": 1})  # a pickle is bytes like any other: never unpickled
    if queues.engine == "postgres":
        import psycopg

        # The outbox's column is json: PostgreSQL refuses anything else at the INSERT.
        for data in (b"{not json", planted):
            with pytest.raises(psycopg.DataError):  # invalid JSON; NUL bytes (refused by psycopg already)
                queues.put_raw(data)
        queues.put_raw(b'["json", "but not a record"]')  # comes back as it is: ingest quarantines it
        d = queues.daemon()
        items = d.take(10)
        assert [(i.data, i.raw, i.error) for i in items] == [
            (["json", "but not a record"], b'["json", "but not a record"]', None)]
        d.ack(items)
        return
    queues.put_raw(b"{not json")
    queues.put_raw(planted)
    d = queues.daemon()
    d.resume()
    items = [i for i in d.take(10) if i.data != {"warm": "up"}]
    assert [i.raw for i in items] == [b"{not json", planted]
    assert all(i.data is None and "not valid JSON" in (i.error or "") for i in items)
    d.ack(items)


def test_find_says_whether_a_message_is_still_in_the_queue(queues: QueueFactory):
    p, d = queues.producer(), queues.daemon()
    d.resume()
    p.put(record(1))
    p.put(record(2))
    found = queues.reader().find("m2")
    assert found is not None and found.id == "m2" and not found.taken
    assert queues.reader().find("m3") is None
    items = d.take(10)
    found = queues.reader().find("m2")
    # Redis knows it was delivered to a daemon; the spool's daemon takes in memory only.
    assert found is not None and found.taken == (queues.engine == "redis")
    d.ack(items)
    assert queues.reader().find("m2") is None


def test_a_reader_on_a_queue_nobody_wrote_to_creates_nothing(queues: QueueFactory):
    info = queues.reader().info()
    assert info.waiting == 0 and info.engine == queues.engine
    if queues.engine == "spool":
        assert not queues.cfg.path.exists()
    elif queues.engine == "postgres":
        import psycopg

        with psycopg.connect(str(queues.cfg.dsn)) as conn:
            assert conn.execute("SELECT to_regclass('mailmand_outbox')").fetchone() == (None,)
    else:
        assert not require_redis().exists(queues.cfg.name)  # type: ignore[attr-defined]


# -- the spool only --------------------------------------------------------------


def test_the_spool_table_is_persist_queues(tmp_path: Path):
    """The daemon reads and deletes rows of persist-queue's table itself: pin
    the names and status values it relies on to persist-queue's own, and
    check both agree on what was done."""
    import persistqueue
    from persistqueue.sqlackqueue import AckStatus

    assert (spoolmod.TABLE, spoolmod.UNACK) == (
        f"{persistqueue.SQLiteAckQueue._TABLE_NAME}_default", int(AckStatus.unack))
    producer = spoolmod.SpoolQueue(tmp_path / "spool")
    for i in range(4):
        producer.put(record(i))
    pq = producer._q
    legacy = pq.get(block=False, raw=True)  # taken by an older daemon (persist-queue's get), never acked
    acked = pq.get(block=False, raw=True)
    pq.ack(id=acked["pqid"])  # acked, and kept by persist-queue (status 5): not to be ingested again
    daemon = spoolmod.SpoolQueue(tmp_path / "spool", daemon=True)
    assert daemon.resume() == 1
    items = daemon.take(10)
    assert [i.data for i in items] == [legacy["data"], record(2), record(3)]
    daemon.ack(items)
    assert pq._count() == 0 and pq.unack_count() == 0  # persist-queue sees nothing left to do
    with sqlite3.connect(tmp_path / "spool" / spoolmod.DB_FILE) as db:
        assert db.execute(f"SELECT count(*) FROM {spoolmod.TABLE} WHERE status < 5").fetchone()[0] == 0
    daemon.close()
    producer.close()


def test_the_spool_refuses_new_mail_below_min_free(tmp_path: Path):
    import os

    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    cfg = QueueConfig(path=tmp_path / "spool", min_free=free * 2)
    from mailmand.errors import QueueUnavailable

    with pytest.raises(QueueUnavailable, match=r"spool's disk is nearly full: .* free at .*below the floor"):
        open_queue(cfg).put(record(0))
    open_queue(replace(cfg, min_free=1)).put(record(0))  # above the floor: taken


PUT_AND_SAY = """
import os, sys
from pathlib import Path
from mailmand.config import QueueConfig
from mailmand.queues import open_queue
queue = open_queue(QueueConfig(engine="spool", path=Path(sys.argv[1]), min_free=0))
many = int(sys.argv[3])
if many:
    queue.put_many([{"id": f"{sys.argv[2]}-{i}", "pad": "x" * 3000} for i in range(many)])
else:
    queue.put({"id": sys.argv[2]})
os.write(1, b"put returned\\n")
queue.close()
"""


def synced_before_return(tmp_path: Path, spool: Path, name: str, many: int = 0) -> tuple[bool, list[str]]:
    """Run one producer's put (or put_many of `many` records) under strace: (the spool's
    write-ahead log was written and then synced to disk before it returned, the calls seen)."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import require_services

    if shutil.which("strace") is None:
        if require_services():
            pytest.fail("strace is not installed (apt-get install strace); MAILMAND_TEST_REQUIRE_SERVICES=1")
        pytest.skip("strace is not installed")
    trace = tmp_path / f"{name}.strace"
    subprocess.run(["strace", "-f", "-qq", "-y", "-e", "trace=write,pwrite64,fsync,fdatasync", "-o", str(trace),
                    sys.executable, "-c", PUT_AND_SAY, str(spool), name, str(many)], check=True,
                   capture_output=True)
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines()
             if "data.db-wal" in line or "put returned" in line]
    returned = next(i for i, c in enumerate(calls) if "put returned" in c)
    before = calls[:returned]
    wrote = max((i for i, c in enumerate(before) if c.startswith(("pwrite64", "write("))), default=None)
    synced = wrote is not None and any(c.startswith(("fsync", "fdatasync")) for c in before[wrote:])
    return synced, before


def test_a_put_returns_only_once_the_spool_has_it_on_disk(tmp_path: Path):
    """`put` is durable when it returns: the commit syncs the spool's write-ahead log
    to disk first (SQLite's synchronous=FULL in WAL mode; NORMAL or OFF would sync it
    only at a checkpoint, or never). Seen as the kernel sees it, with strace, in a
    producer process of its own, on both paths a put takes: persist-queue's (the
    first put into a new spool makes its table) and the lean one (the table is there).
    What this cannot show is a disk that lies about its syncs: no test here can cut power."""
    spool = tmp_path / "spool"
    first, calls = synced_before_return(tmp_path, spool, "first")
    assert first, calls
    lean, calls = synced_before_return(tmp_path, spool, "lean")
    assert lean, calls
    daemon = open_queue(QueueConfig(engine="spool", path=spool), daemon=True)
    try:
        assert [i.data for i in daemon.take(10)] == [{"id": "first"}, {"id": "lean"}]
    finally:
        daemon.close()


def test_put_many_syncs_once_for_all_its_records_before_it_returns(tmp_path: Path):
    """What the listener's group commit relies on: records written together cost one sync
    of the write-ahead log (one transaction), taken after the last of them was written."""
    spool = tmp_path / "spool"

    def syncs(calls: list[str]) -> int:
        return sum(c.startswith(("fsync", "fdatasync")) for c in calls)

    synced, calls = synced_before_return(tmp_path, spool, "first")  # the table, made by persist-queue
    assert synced, calls
    synced, one = synced_before_return(tmp_path, spool, "one")  # one record, on the same path
    assert synced, one
    synced, calls = synced_before_return(tmp_path, spool, "group", many=20)
    assert synced, calls
    # What one record costs (a fresh write-ahead log's header is synced too): not 20 times it.
    assert syncs(calls) == syncs(one), calls
    daemon = open_queue(QueueConfig(engine="spool", path=spool), daemon=True)
    try:
        assert [i.data["id"] for i in daemon.take(30)] == ["first", "one", *(f"group-{i}" for i in range(20))]
    finally:
        daemon.close()


def test_put_many_on_the_spool_is_all_or_none(tmp_path: Path):
    """A write that fails on one record leaves none of its records in the spool (one
    transaction), says why, and the next write goes in. The failure is the database's
    own: a trigger refuses a row, as a constraint or a full disk would mid-write."""
    from mailmand.errors import QueueError

    cfg = QueueConfig(engine="spool", path=tmp_path / "spool", min_free=0)
    producer = open_queue(cfg)
    producer.put(record(0))
    with sqlite3.connect(cfg.path / spoolmod.DB_FILE) as db:
        db.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON {spoolmod.TABLE} "
                   "WHEN instr(NEW.data, 'poison') > 0 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    with pytest.raises(QueueError, match="refused by the test"):
        producer.put_many([record(1), {"id": "poison"}, record(3)])
    producer.put_many([record(4)])
    daemon = open_queue(cfg, daemon=True)
    try:
        assert [i.data for i in daemon.take(10)] == [record(0), record(4)]
    finally:
        daemon.close()
        producer.close()


def test_put_many_refuses_new_mail_below_min_free(tmp_path: Path):
    import os

    from mailmand.errors import QueueUnavailable

    st = os.statvfs(tmp_path)
    cfg = QueueConfig(path=tmp_path / "spool", min_free=st.f_bavail * st.f_frsize * 2)
    open_queue(replace(cfg, min_free=0)).put(record(0))  # the table is there: the lean path
    with pytest.raises(QueueUnavailable, match="nearly full"):
        open_queue(cfg).put_many([record(1)])


# -- Redis only --------------------------------------------------------------------


def test_put_many_on_redis_is_one_multi_exec(redis_key: str):
    """Redis sees the group as the server's MONITOR shows it: MULTI, one XADD per record,
    EXEC, from the producer's one connection (one round trip; every entry or none)."""
    client = require_redis()
    producer = open_queue(QueueConfig(engine="redis", url=redis_url(), name=redis_key))
    producer.put({"warm": "up"})  # connected before watching: the group is all that connection says next
    seen: list[dict[str, object]] = []
    with client.monitor() as monitor:  # type: ignore[attr-defined]
        writer = threading.Thread(target=producer.put_many, args=([record(i) for i in range(5)],))
        writer.start()
        deadline = time.monotonic() + 20
        ours: tuple[object, object] | None = None
        while time.monotonic() < deadline:
            line = monitor.next_command()
            seen.append(line)
            if ours is None and redis_key in str(line["command"]):
                ours = (line["client_address"], line["client_port"])
            if ours and (line["client_address"], line["client_port"]) == ours and line["command"] == "EXEC":
                break
        writer.join(20)
    producer.close()
    assert ours is not None, seen
    commands = [str(line["command"]).split()[0] for line in seen
                if (line["client_address"], line["client_port"]) == ours]
    assert commands == ["MULTI", *["XADD"] * 5, "EXEC"], commands
