"""Scenario 1: producers. `Client.put` / `Client.enqueue` against a bare
persist-queue `SQLiteAckQueue.put` of the same JSON record, same durability."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import persistqueue
import persistqueue.serializers.json as pq_json

from mailmand.client import Client
from mailmand.config import Config, QueueConfig, replace
from mailmand.message import Record

from .common import Series, ab, config, email, row, workdir

MAX_SIZE = 25 * 2**20


def _records(n: int) -> list[Record]:
    e = email()
    return [e.to_record(MAX_SIZE) for _ in range(n)]


def _bare(path: Path) -> persistqueue.SQLiteAckQueue:
    # What a careful user of persist-queue writes: one handle kept open, JSON,
    # the library's own durability (WAL; synchronous left at SQLite's FULL).
    return persistqueue.SQLiteAckQueue(str(path), auto_resume=False, multithreading=True,
                                       serializer=pq_json)


def _synchronous(path: Path) -> int:
    q = _bare(path)
    try:
        return int(q._putter.execute("PRAGMA synchronous").fetchone()[0])
    finally:
        q.close()


# -- one producer: each call returns msg/s for one fresh spool ------------------------


def _rate(items: list[Any], put: Callable[[Any], object]) -> float:
    """msg/s of `put` over `items`; the first call (opening the handle, as a
    long-lived app would have) is made outside the clock."""
    put(items[0])
    t0 = time.perf_counter()
    for item in items:
        put(item)
    return len(items) / (time.perf_counter() - t0)


def _client_put(base: Path, records: list[Record]) -> float:
    with workdir(base) as root:
        client = Client(config(root))
        try:
            return _rate(records, client.put)
        finally:
            client.close()


def _client_enqueue(base: Path, n: int) -> float:
    with workdir(base) as root:
        client = Client(config(root))
        try:
            return _rate([email(i) for i in range(n)], client.enqueue)  # built, not yet composed
        finally:
            client.close()


def _bare_put(base: Path, dicts: list[dict[str, Any]]) -> float:
    with workdir(base) as root:
        q = _bare(root / "spool")
        try:
            return _rate(dicts, q.put)
        finally:
            q.close()


# -- N producer processes --------------------------------------------------------


def _child(kind: str, root: Path, items: list[Any], start: Any, out: Any) -> None:
    if kind == "mailmand":
        client = Client(config(root))
        client.put(items[0])
        put = client.put
    else:
        q = _bare(root / "spool")
        q.put(items[0])
        put = q.put
    start.wait()
    t0 = time.time()
    for item in items:
        put(item)
    out.put((t0, time.time(), len(items)))


def _procs(kind: str, base: Path, items: list[Any], procs: int) -> float:
    ctx = multiprocessing.get_context("fork")
    with workdir(base) as root:
        if kind == "mailmand":
            Client(config(root)).close()  # create the spool once, as the daemon would
        else:
            _bare(root / "spool").close()
        start, out = ctx.Event(), ctx.Queue()
        share = len(items) // procs
        children = [ctx.Process(target=_child, args=(kind, root, items[i * share:(i + 1) * share], start, out))
                    for i in range(procs)]
        for c in children:
            c.start()
        time.sleep(0.5)  # every child has opened its handle
        start.set()
        got = [out.get(timeout=300) for _ in children]
        for c in children:
            c.join()
        return sum(n for _, _, n in got) / (max(e for _, e, _ in got) - min(s for s, _, _ in got))


# -- the Redis queue: Client.put against a bare redis-py XADD of the same JSON ---------

REDIS_URL = os.environ.get("MAILMAND_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_config(root: Path, key: str) -> Config:
    cfg = config(root)
    return replace(cfg, queue=QueueConfig(engine="redis", url=REDIS_URL, name=key))


def _bare_xadd(key: str) -> Callable[[Record], object]:
    """What a careful user of redis-py writes: one client kept open, the record's JSON, XADD."""
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    return lambda record: r.xadd(key, {b"record": json.dumps(record.to_json(), separators=(",", ":")).encode()})


def _redis_rate(kind: str, base: Path, records: list[Record]) -> float:
    key = f"mailmand-bench-{uuid.uuid4().hex[:8]}"
    with workdir(base) as root:
        client = Client(_redis_config(root, key)) if kind == "mailmand" else None
        try:
            return _rate(records, client.put if client else _bare_xadd(key))
        finally:
            if client:
                client.close()
            _redis_delete(key)


def _redis_delete(key: str) -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).delete(key)


def _redis_child(kind: str, root: Path, key: str, items: list[Record], start: Any, out: Any) -> None:
    put = Client(_redis_config(root, key)).put if kind == "mailmand" else _bare_xadd(key)
    put(items[0])
    start.wait()
    t0 = time.time()
    for item in items:
        put(item)
    out.put((t0, time.time(), len(items)))


def _redis_procs(kind: str, base: Path, records: list[Record], procs: int) -> float:
    ctx = multiprocessing.get_context("fork")
    key = f"mailmand-bench-{uuid.uuid4().hex[:8]}"
    with workdir(base) as root:
        start, out = ctx.Event(), ctx.Queue()
        share = len(records) // procs
        children = [ctx.Process(target=_redis_child, args=(kind, root, key, records[i * share:(i + 1) * share],
                                                           start, out)) for i in range(procs)]
        for c in children:
            c.start()
        time.sleep(0.5)  # every child has connected
        start.set()
        got = [out.get(timeout=300) for _ in children]
        for c in children:
            c.join()
        _redis_delete(key)
        return sum(n for _, _, n in got) / (max(e for _, e, _ in got) - min(s for s, _, _ in got))


def redis_rows(base: Path, records: list[Record], records4: list[Record], rounds: int) -> list[dict[str, Any]]:
    """Enqueue to Redis, 1 and 4 producer processes, against bare redis-py XADD (skipped without Redis)."""
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:  # no redis-py, or no server: say so in the results
        return [{"name": f"enqueue to Redis: skipped ({exc})", "skipped": True}]
    a, b = ab(rounds, lambda: _redis_rate("mailmand", base, records), lambda: _redis_rate("bare", base, records))
    rows = [row("enqueue to Redis, 1 producer: Client.put(record) / bare redis-py XADD", a, b)]
    a4, b4 = ab(rounds, lambda: _redis_procs("mailmand", base, records4, 4),
                lambda: _redis_procs("bare", base, records4, 4))
    rows.append(row("enqueue to Redis, 4 processes: Client.put(record) / bare redis-py XADD", a4, b4))
    return rows


# -- composition -----------------------------------------------------------------


def compose_cost(n: int) -> dict[str, float]:
    """Microseconds per message: Email(...) and Email.to_record (build + flatten)."""
    t0 = time.perf_counter()
    emails = [email(i) for i in range(n)]
    t1 = time.perf_counter()
    for e in emails:
        e.to_record(MAX_SIZE)
    t2 = time.perf_counter()
    return {"email_init_us": (t1 - t0) / n * 1e6, "to_record_us": (t2 - t1) / n * 1e6,
            "size_bytes": len(emails[0].to_record(MAX_SIZE).raw)}


def run(base: Path, quick: bool) -> dict[str, Any]:
    n, rounds = (1000, 3) if quick else (3000, 5)
    records = _records(n)
    dicts = [r.to_json() for r in records]
    with workdir(base) as root:
        sync = _synchronous(root)
    rows = []
    a, b = ab(rounds, lambda: _client_put(base, records), lambda: _bare_put(base, dicts))
    rows.append(row("enqueue 1 producer: Client.put(record) / bare put", a, b))
    a2, b2 = ab(rounds, lambda: _client_enqueue(base, n), lambda: _bare_put(base, dicts))
    rows.append(row("enqueue 1 producer: Client.enqueue(email), composing / bare put", a2, b2))
    n4 = n * 2
    records4 = _records(n4)
    dicts4 = [r.to_json() for r in records4]
    a4, b4 = ab(rounds, lambda: _procs("mailmand", base, records4, 4),
                lambda: _procs("bare", base, dicts4, 4))
    rows.append(row("enqueue 4 processes: Client.put(record) / bare put", a4, b4))
    rows += [r for r in redis_rows(base, records, records4, rounds) if not r.get("skipped")]
    compose = compose_cost(n)
    return {"rows": rows, "compose": compose,
            "durability": {"journal_mode": "wal", "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL",
                                                                  3: "EXTRA"}.get(sync, sync)},
            "sqlite": sqlite3.sqlite_version}


__all__ = ["run", "compose_cost", "Series"]
