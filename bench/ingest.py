"""Scenario 2: spool → store. Messages per second as the drain goes, to show
the rate stays flat while the spool's history grows (acked rows are cleared)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import persistqueue.serializers.json as pq_json
from persistqueue.exceptions import Empty

from mailmand.client import Client
from mailmand.ingest import Ingester
from mailmand.queues.spool import DB_FILE, TABLE, SpoolQueue
from mailmand.stores.model import Status
from mailmand.stores.sqlite import SQLiteStore

from .common import Series, config, email, have_smtp_sink, pg_database, records, sink, workdir
from .enqueue import MAX_SIZE, _bare


def fill_spool(spool: Path, n: int) -> None:
    """Put `n` records in the spool fast: the rows persist-queue's put writes
    (status 0 = inited), in one transaction instead of n."""
    producer = SpoolQueue(spool)  # the directory, file and table, as a producer makes them
    producer._q  # noqa: B018
    producer.close()
    e = email()
    now = time.time()
    rows = ((pq_json.dumps(e.to_record(MAX_SIZE).to_json()), now) for _ in range(n))
    db = sqlite3.connect(spool / DB_FILE)
    with db:
        db.executemany(f"INSERT INTO {TABLE} (data, timestamp, status) VALUES (?, ?, 0)", rows)
    db.close()


def _spool_rows(spool: Path) -> int:
    db = sqlite3.connect(spool / DB_FILE)
    try:
        return int(db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])
    finally:
        db.close()


def drain_curve(base: Path, n: int, step: int) -> dict[str, Any]:
    """Ingest `n` waiting records, `step` at a time; the rate of each step."""
    with workdir(base) as root:
        cfg = config(root)
        fill_spool(cfg.queue.path, n)
        queue = SpoolQueue(cfg.queue.path, daemon=True)
        store = SQLiteStore(cfg.server.database.path, create=True)
        ingester = Ingester(queue, store)
        curve = []
        t_all = time.perf_counter()
        done = 0
        while done < n:
            t0 = time.perf_counter()
            got = ingester.drain(limit=step)
            k = got.ingested + got.duplicates
            if not k:
                break
            done += k
            curve.append({"done": done, "msg_s": k / (time.perf_counter() - t0),
                          "spool_rows": _spool_rows(cfg.queue.path)})
        total = done / (time.perf_counter() - t_all)
        queued = store.counts()[Status.QUEUED]
        queue.close()
        store.close()
    rates = [c["msg_s"] for c in curve]
    half = len(rates) // 2
    return {"waiting": n, "ingested": done, "stored": queued,
            "msg_s": total, "curve": curve,
            "flatness": (sum(rates[half:]) / max(1, len(rates) - half)) / (sum(rates[:half]) / max(1, half))
            if half else 1.0}


def bare_drain(base: Path, n: int) -> float:
    """The queue side alone, for scale: get + ack + clear, no store."""
    with workdir(base) as root:
        spool = root / "spool"
        fill_spool(spool, n)
        q = _bare(spool)
        t0 = time.perf_counter()
        taken = []
        while True:
            try:
                item = q.get(block=False, raw=True)
            except Empty:
                break
            taken.append(item["pqid"])
            if len(taken) == 500:
                for i in taken:
                    q.ack(id=i)
                q.clear_acked_data(max_delete=0, keep_latest=0)
                taken = []
        for i in taken:
            q.ack(id=i)
        q.clear_acked_data(max_delete=0, keep_latest=0)
        dt = time.perf_counter() - t0
        q.close()
        return n / dt


def once_phases(base: Path, n: int, profile: bool = False) -> dict[str, Any]:
    """`--once` of `n` waiting messages to a local sink at 4 connections, in
    process, split into its phases (ingest, dispatch); with `profile`, the
    top of a cProfile of both (cumulative), to show where the time goes."""
    import cProfile
    import io
    import pstats

    from mailmand.daemon import Daemon

    with workdir(base) as root, sink("smtp-sink" if have_smtp_sink() else "aiosmtpd") as port:
        cfg = config(root, port=port, connections=4)
        client = Client(cfg)
        for i in range(n):
            client.enqueue(email(i))  # through the client: records as apps write them
        client.close()
        daemon = Daemon(cfg)
        prof = cProfile.Profile() if profile else None
        try:
            if prof:
                prof.enable()
            t0 = time.perf_counter()
            got = daemon.ingester.drain()
            t1 = time.perf_counter()
            res = daemon.dispatcher.run_once()
            t2 = time.perf_counter()
            if prof:
                prof.disable()
        finally:
            daemon.close()
    out: dict[str, Any] = {"messages": n, "ingested": got.ingested, "sent": res.sent,
                           "ingest_s": t1 - t0, "dispatch_s": t2 - t1, "ingest_share": (t1 - t0) / (t2 - t0)}
    if prof:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(20)
        out["profile"] = text.getvalue()
    return out


def run(base: Path, quick: bool) -> dict[str, Any]:
    sizes = [10_000] if quick else [10_000, 100_000]
    out: dict[str, Any] = {"runs": []}
    for n in sizes:
        out["runs"].append(drain_curve(base, n, max(1000, n // 20)))
    out["bare_queue_drain_msg_s"] = bare_drain(base, 10_000)
    out["once_5000"] = once_phases(base, 1000 if quick else 5000)
    return out


# -- Redis → PostgreSQL → relay, 1, 2 and 3 daemons ---------------------------------

REDIS_URL = os.environ.get("MAILMAND_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
def _daemon_yaml(path: Path, key: str, dsn: str, port: int, conns: int) -> Path:
    path.write_text(
        "email:\n"
        f"  queue:\n    default:\n      engine: redis\n      url: {REDIS_URL}\n      name: {key}\n"
        "  server:\n"
        f"    database:\n      engine: postgres\n      dsn: \"{dsn}\"\n"
        "    batch: 100\n    interval: 1s\n    log-level: WARNING\n"
        f"    smtp:\n      host: 127.0.0.1\n      port: {port}\n      tls: none\n      connections: {conns}\n")
    return path


def _sent(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        try:
            row = conn.execute("SELECT count(*) FROM messages WHERE status = 'sent'").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0  # the first daemon has not made the schema yet
        return int(row[0]) if row else 0


def redis_daemons_rate(base: Path, daemons: int, n: int, port: int, conns: int) -> float:
    """msg/s from the moment `daemons` daemons are started on a Redis stream
    holding `n` records until the PostgreSQL store has them all sent."""
    import redis

    key = f"mailmand-bench-{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(REDIS_URL)
    pipe = r.pipeline(transaction=False)
    for record in records(n):
        pipe.xadd(key, {b"record": json.dumps(record.to_json(), separators=(",", ":")).encode()})
    pipe.execute()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with workdir(base) as root, pg_database() as dsn:
            confs = [_daemon_yaml(root / f"d{i}.yaml", key, dsn, port, conns) for i in range(daemons)]
            t0 = time.perf_counter()
            procs = [subprocess.Popen([sys.executable, "-m", "mailmand", "run", "-c", str(c)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in confs]
            deadline = time.monotonic() + 900
            while _sent(dsn) < n:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"{daemons} daemon(s) did not deliver {n} messages")
                time.sleep(0.05)
            dt = time.perf_counter() - t0
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(60)
            return n / dt
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        r.delete(key)


def redis_daemons(base: Path, quick: bool, rtt_ms: float = 25.0) -> dict[str, Any]:
    """Redis → store → relay with 1, 2 and 3 daemons, the relay `rtt_ms` away
    (bench.wan's delay proxy in front of smtp-sink)."""
    from .wan import delay_proxy

    n, conns = (600, 10) if quick else (3000, 10)
    out: dict[str, Any] = {"rtt_ms": rtt_ms, "messages": n, "connections_per_daemon": conns, "rows": []}
    with sink("smtp-sink") as upstream, delay_proxy(upstream, rtt_ms) as port:
        for k in (1, 2, 3):
            rates = Series([redis_daemons_rate(base, k, n, port, conns) for _ in range(1 if quick else 3)])
            out["rows"].append({"daemons": k, "msg_s": rates.summary()})
    return out


def plot_daemons(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["daemons"] for r in result["rows"]]
    ys = [r["msg_s"]["median"] for r in result["rows"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(xs, ys, marker="o")
    ax.set_xticks(xs)
    ax.set_xlabel("daemons on one Redis stream and one PostgreSQL store")
    ax.set_ylabel("msg/s delivered")
    ax.set_title(f"relay {result['rtt_ms']:.0f} ms away, {result['connections_per_daemon']} connections each")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    # python -m bench.ingest [N]                 the --once phases of N messages and their profile
    # python -m bench.ingest daemons [--quick]   Redis → PostgreSQL → relay 25 ms away, 1-3 daemons
    args = sys.argv[1:]
    if args[:1] == ["daemons"]:
        result = redis_daemons(Path("/var/tmp"), "--quick" in args)
        print(json.dumps(result, indent=1))
        plot_daemons(result, Path(__file__).resolve().parent.parent / "docs" / "redis-daemons.png")
    else:
        result = once_phases(Path("/var/tmp"), int(args[0]) if args else 5000, profile=True)
        print(result.pop("profile"))
        print(result)
