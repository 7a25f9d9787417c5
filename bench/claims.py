"""Scenario: the claim path's limit on one PostgreSQL.

One claim of `batch` due messages (`PostgresStore.claim`: FOR UPDATE SKIP
LOCKED, the lease written, the bodies read) and its finish (`finish`: the
fenced UPDATE, the attempt rows, the counters), in a loop, by `workers`
processes at once, each with its own store (its own pool) as a daemon has:
how many such cycles, and so how many messages, one PostgreSQL takes a second.
A fresh database per cell, filled with `messages` due messages of ~2 KB;
the clock runs until they are all claimed and finished (a drain).

Beside the rate, CPU seconds per cycle of the workers (the client side: a
daemon's share of the claim path) and of this database's PostgreSQL backends,
from /proc: with C cores for PostgreSQL alone, its ceiling is about
C ÷ (its CPU per cycle) cycles a second.

    python -m bench.claims [--quick] [--batches 1,10,50,100] [--workers 1,2,4,8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from .common import environment, pg_database

ROOT = Path(__file__).resolve().parent.parent
RELAY = "relay.example.com:25"


def fill(dsn: str, n: int) -> None:
    """The store's schema and `n` messages due now: one through the store's own
    insert, copied in SQL (a million inserts through Python would take minutes)."""
    import psycopg

    from mailmand.config import DatabaseConfig
    from mailmand.stores.postgres import PostgresStore

    from .soak import template

    store = PostgresStore(DatabaseConfig(engine="postgres", dsn=dsn), create=True)
    store.insert([template().replace(id="template", created_at=time.time() - 1, send_after=0.0)])
    store.close()
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO messages (id, status, mail_from, rcpt_to, subject, priority, size, created_at, send_after,"
            " due_at, updated_at) SELECT 'c' || g, 'queued', mail_from, rcpt_to, subject, priority, size, created_at,"
            " send_after, due_at + g * 1e-6, updated_at FROM messages, generate_series(1, %s) g"
            " WHERE id = 'template'", (n - 1,))
        conn.execute("INSERT INTO bodies (id, raw) SELECT 'c' || g, raw FROM bodies, generate_series(1, %s) g"
                     " WHERE id = 'template'", (n - 1,))
        conn.execute("ANALYZE")


def worker(dsn: str, batch: int, start: Any, done: Any, out: Any, name: str) -> None:
    from mailmand.config import DatabaseConfig
    from mailmand.stores.model import Attempt, Finished, Outcome, Status
    from mailmand.stores.postgres import PostgresStore

    store = PostgresStore(DatabaseConfig(engine="postgres", dsn=dsn))
    sent = Outcome(Status.SENT, reason=None, code=250, counted=False)
    claims = messages = 0
    start.wait()
    c0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    while True:
        now = time.time()
        got = store.claim(now, batch, name, 300.0)
        if not got:
            break
        attempt = Attempt(now, RELAY, 250, "250 2.0.0 Ok", 0.01, "sent")
        store.finish([Finished(m.id, name, m.token, attempt, sent) for m in got])
        claims += 1
        messages += len(got)
    t1, c1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    out.put({"claims": claims, "messages": messages, "t0": t0, "t1": t1,
             "cpu_s": c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime})
    done.wait()  # the backends stay up until their CPU is read
    store.close()


def backends_cpu(dsn: str) -> float:
    from .soak import cpu_ticks, query

    pids = [int(p) for (p,) in query(dsn, "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                                          " AND pid <> pg_backend_pid()")]
    return sum(cpu_ticks(p) or 0.0 for p in pids)


def cell(batch: int, workers: int, messages: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with pg_database() as dsn:
        fill(dsn, messages)
        start, done, out = ctx.Barrier(workers + 1), ctx.Barrier(workers + 1), ctx.Queue()
        procs = [ctx.Process(target=worker, args=(dsn, batch, start, done, out, f"bench:{i}"))
                 for i in range(workers)]
        for p in procs:
            p.start()
        try:
            start.wait(timeout=120)
            got = [out.get(timeout=900) for _ in procs]
            pg_cpu = backends_cpu(dsn)
            done.wait(timeout=60)
        finally:
            for p in procs:
                p.join(60)
                if p.is_alive():
                    p.kill()
    wall = max(g["t1"] for g in got) - min(g["t0"] for g in got)
    claims = sum(g["claims"] for g in got)
    moved = sum(g["messages"] for g in got)
    if moved != messages:
        raise RuntimeError(f"batch {batch}, {workers} workers: {moved} of {messages} claimed and finished")
    row = {"batch": batch, "workers": workers, "messages": moved, "claims": claims, "seconds": wall,
           "claims_s": claims / wall, "msg_s": moved / wall,
           "client_cpu_us_per_claim": sum(g["cpu_s"] for g in got) / claims * 1e6,
           "postgres_cpu_us_per_claim": pg_cpu / claims * 1e6, "load": os.getloadavg()[0]}
    print(f"  batch {batch:>3}, {workers} worker(s): {row['claims_s']:,.0f} claims/s, {row['msg_s']:,.0f} msg/s; "
          f"CPU µs a claim: client {row['client_cpu_us_per_claim']:,.0f}, PostgreSQL "
          f"{row['postgres_cpu_us_per_claim']:,.0f} (load {row['load']:.1f})", file=sys.stderr, flush=True)
    return row


def run(quick: bool, batches: tuple[int, ...], workers: tuple[int, ...]) -> dict[str, Any]:
    from .common import have_postgres

    if not have_postgres():
        return {"skipped": "PostgreSQL not reachable"}
    rows = []
    for b in batches:
        for w in workers:
            n = (2_000 if quick else 5_000) * (1 if b == 1 else 5)
            rows.append(cell(b, w, n))
    return {"rows": rows, "load_average": os.getloadavg()}


def report(res: dict[str, Any]) -> str:
    if "skipped" in res:
        return f"## claims: skipped ({res['skipped']})"
    out = ["## claims (claim of `batch` + its finish, on one PostgreSQL; workers are processes)",
           "| batch | workers | claims/s | msg/s | client CPU µs/claim | PostgreSQL CPU µs/claim | load |",
           "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        out.append(f"| {r['batch']} | {r['workers']} | {r['claims_s']:,.0f} | {r['msg_s']:,.0f} "
                   f"| {r['client_cpu_us_per_claim']:,.0f} | {r['postgres_cpu_us_per_claim']:,.0f} | {r['load']:.1f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.claims", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer messages a cell")
    p.add_argument("--batches", default="1,10,50,100")
    p.add_argument("--workers", default="1,2,4,8")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "claims.json")
    a = p.parse_args(argv)
    res = {"env": environment(), **run(a.quick, tuple(int(x) for x in a.batches.split(",")),
                                       tuple(int(x) for x in a.workers.split(",")))}
    print(report(res))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
