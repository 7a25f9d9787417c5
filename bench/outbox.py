"""Scenario: the outbox. Queuing a message inside an app's PostgreSQL
transaction (`Client.put(record, connection=conn)`, and `Client.enqueue(email,
connection=conn)`, which composes it too) against a plain INSERT of the same
JSON bytes into a plain table, in the same transaction, in the same run.

Two views:
- per statement: in each transaction both run, one after the other (which
  one first alternates), each timed alone; the ratio is of their median times
  (1.0: queuing costs what a plain INSERT costs);
- per transaction: an app's transaction (its own INSERT, then the mail, then
  COMMIT with its fsync) with the outbox against one with the plain INSERT,
  as transactions per second (ABBA rounds). This one carries the commit's
  share of `pg_notify` (PostgreSQL queues the notification at commit).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from mailmand.client import Client
from mailmand.config import Config, QueueConfig, ServerConfig

from .common import ab, email, have_postgres, pg_database, records, row

PLAIN = "CREATE TABLE plain (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, data text NOT NULL)"
ORDERS = "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total int NOT NULL)"


def _json(record: Any) -> str:
    return json.dumps(record.to_json(), separators=(",", ":"))  # the bytes the outbox stores


def _statements(conn: Any, client: Client, n: int, compose: bool) -> dict[str, float]:
    """Median µs of the outbox call and of the plain INSERT, side by side in each of n transactions."""
    recs = records(n)
    emails = [email(i) for i in range(n)]
    ours, plain = [], []
    for i in range(n):
        with conn.transaction():
            first_plain = i % 2 == 1
            for step in (("plain", "ours") if first_plain else ("ours", "plain")):
                t0 = time.perf_counter()
                if step == "plain":
                    conn.execute("INSERT INTO plain (data) VALUES (%s)", (_json(recs[i]),))
                    plain.append(time.perf_counter() - t0)
                elif compose:
                    client.enqueue(emails[i], connection=conn)
                    ours.append(time.perf_counter() - t0)
                else:
                    client.put(recs[i], connection=conn)
                    ours.append(time.perf_counter() - t0)
    a, b = statistics.median(ours) * 1e6, statistics.median(plain) * 1e6
    return {"outbox_us": a, "plain_insert_us": b, "cost_ratio": a / b, "n": n}


def _transactions(conn: Any, client: Client, n: int, mail: str) -> float:
    """Transactions per second: the app's INSERT, the mail, COMMIT. `mail`: how
    the mail is written: "outbox" (Client.put), "plain" (a plain INSERT), or
    "plain+notify" (a plain INSERT and a pg_notify: what the wake-up costs)."""
    recs = records(n)
    t0 = time.perf_counter()
    for rec in recs:
        with conn.transaction():
            conn.execute("INSERT INTO orders (total) VALUES (%s)", (42,))
            if mail == "outbox":
                client.put(rec, connection=conn)
            elif mail == "plain+notify":  # one statement, as the outbox's
                conn.execute("WITH m AS (INSERT INTO plain (data) VALUES (%s)) SELECT pg_notify('bench', '')",
                             (_json(rec),))
            else:
                conn.execute("INSERT INTO plain (data) VALUES (%s)", (_json(rec),))
    return n / (time.perf_counter() - t0)


def run(base: Path, quick: bool) -> dict[str, Any]:
    if not have_postgres():
        return {"skipped": "PostgreSQL not reachable (MAILMAND_BENCH_POSTGRES_DSN)"}
    import psycopg

    from mailmand.queues import outbox_sql

    n, rounds = (300, 3) if quick else (2000, 5)
    with pg_database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as setup:
            setup.execute(outbox_sql("mailmand_outbox"))
            setup.execute(PLAIN)
            setup.execute(ORDERS)
        client = Client(Config(queue=QueueConfig(engine="postgres", dsn=dsn), server=ServerConfig()))
        try:
            with psycopg.connect(dsn) as conn:
                _statements(conn, client, 50, compose=False)  # warm: prepared statements, caches
                put = _statements(conn, client, n, compose=False)
                enqueue = _statements(conn, client, n, compose=True)
                a, b = ab(rounds, lambda: _transactions(conn, client, n, "outbox"),
                          lambda: _transactions(conn, client, n, "plain"))
                c, d = ab(rounds, lambda: _transactions(conn, client, n, "plain+notify"),
                          lambda: _transactions(conn, client, n, "plain"))
        finally:
            client.close()
    return {"statement": {"put": put, "enqueue": enqueue},
            "rows": [row("app transaction + mail, committed: Client.put(record, connection=conn) "
                         "/ plain INSERT of the same bytes", a, b, unit="tx/s"),
                     row("the wake-up's share: plain INSERT + pg_notify / plain INSERT", c, d, unit="tx/s")]}


__all__ = ["run"]
