"""Scenario 5: a store of 1,000,000 messages in mixed states. Claim, `status`
and `stats` times; bytes on disk per message; the daemon's RSS idle and while
it pushes a large run through."""

from __future__ import annotations

import contextlib
import io
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mailmand import cli
from mailmand.stores.model import Status
from mailmand.stores.rollup import HOUR
from mailmand.stores.rollup import bucket as _bucket
from mailmand.stores.sqlite import SQLiteStore

from .common import (
    config,
    email,
    have_postgres,
    have_smtp_sink,
    pg_config,
    pg_database,
    sink,
    workdir,
    write_pg_yaml,
    write_yaml,
)
from .enqueue import MAX_SIZE
from .ingest import fill_spool
from .latency import daemon

DAY = 86400.0
# (status, share): what a month of a busy host's store looks like.
MIX = [(Status.SENT, 0.90), (Status.FAILED, 0.03), (Status.EXPIRED, 0.01), (Status.CANCELLED, 0.01),
       (Status.DEFERRED, 0.01), (Status.QUEUED, 0.04)]
REASON = {Status.FAILED: "550 5.1.1 no such user", Status.EXPIRED: "expired: max-time passed"}


def _chunks(n: int, now: float, stats: Counter, reasons: Counter, domains: int = 0,
            chunk: int = 50_000) -> Iterator[tuple[list[tuple], list[tuple], list[tuple]]]:
    """The bench store's rows, `chunk` messages at a time: (messages, bodies, attempts).
    The hourly roll-ups are added to `stats` and `reasons` as finish() would have.
    `domains`: recipients spread over that many domains (0: all to sink@example.com)."""
    raw = email().to_record(MAX_SIZE).raw
    rng = random.Random(6)
    statuses = [s for s, _ in MIX]
    weights = [w for _, w in MIX]
    for start in range(0, n, chunk):
        msgs, bodies, attempts = [], [], []
        for i in range(start, min(n, start + chunk)):
            status = rng.choices(statuses, weights)[0]
            created = now - rng.random() * 30 * DAY
            mid = f"{i:032x}"
            finished = created + rng.random() * 5 if status in (Status.SENT, Status.FAILED, Status.EXPIRED,
                                                                 Status.CANCELLED) else None
            if status is Status.QUEUED:  # scheduled for later this month
                due = now + rng.random() * 30 * DAY
            elif status is Status.DEFERRED:
                due = now + rng.random() * 900
            else:
                due = created
            tries = 0 if status in (Status.QUEUED, Status.CANCELLED) else 1
            rcpt = f'["u{i}@d{i % domains}.example"]' if domains else '["sink@example.com"]'
            msgs.append((mid, status.value, "bench@example.com", rcpt, f"bench message {i}",
                         0, len(raw), None, created, created, due, tries, REASON.get(status), created,
                         finished))
            bodies.append((mid, raw))
            if tries:
                at = finished or created
                outcome = {"sent": "sent", "deferred": "temporary", "failed": "permanent"}.get(status.value,
                                                                                                 "expired")
                attempts.append((mid, at, "127.0.0.1:25", 250 if status is Status.SENT else 550,
                                 REASON.get(status, "250 2.0.0 Ok"), 0.01, outcome))
                if status in (Status.SENT, Status.FAILED, Status.EXPIRED):
                    hour = int(at // HOUR)
                    stats[(hour, status.value, 0)] += 1
                    stats[(hour, f"done.{status.value}", 0)] += 1  # as the store's own roll-up counts it
                    if status is Status.SENT:
                        stats[(hour, "latency", _bucket(at - created))] += 1
                    else:
                        reasons[(hour, REASON[status])] += 1
        yield msgs, bodies, attempts


MESSAGE_COLS = ("id, status, mail_from, rcpt_to, subject, priority, size, idempotency_key, created_at, send_after,"
                " due_at, attempts, last_error, updated_at, finished_at")
ATTEMPT_COLS = "message_id, at, relay, code, reply, duration, outcome"


def generate(path: Path, n: int, now: float, domains: int = 0) -> float:
    """Bulk-load `n` messages through the real schema (triggers keep status_counts).
    Returns seconds taken."""
    t0 = time.perf_counter()
    SQLiteStore(path, create=True).close()  # the schema, exactly as the daemon creates it
    stats: Counter = Counter()
    reasons: Counter = Counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for msgs, bodies, attempts in _chunks(n, now, stats, reasons, domains):
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO messages ({MESSAGE_COLS}) VALUES ({','.join('?' * 15)})", msgs)
        db.executemany("INSERT INTO bodies VALUES (?, ?)", bodies)
        db.executemany(f"INSERT INTO attempts ({ATTEMPT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)", attempts)
        db.execute("COMMIT")
    db.execute("BEGIN")
    db.executemany("INSERT INTO stats_hourly VALUES (?, ?, ?, ?)", [(*k, v) for k, v in stats.items()])
    db.executemany("INSERT INTO reasons_hourly VALUES (?, ?, ?)", [(*k, v) for k, v in reasons.items()])
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return time.perf_counter() - t0


def pg_generate(dsn: str, n: int, now: float, domains: int = 0) -> float:
    """The same store in PostgreSQL, loaded with COPY through the daemon's own schema."""
    import psycopg

    from mailmand.config import DatabaseConfig
    from mailmand.stores.postgres import PostgresStore

    t0 = time.perf_counter()
    PostgresStore(DatabaseConfig(engine="postgres", dsn=dsn), create=True).close()
    stats: Counter = Counter()
    reasons: Counter = Counter()
    with psycopg.connect(dsn) as conn:
        for msgs, bodies, attempts in _chunks(n, now, stats, reasons, domains):
            with conn.cursor() as cur:
                for table, cols, rows in (("messages", MESSAGE_COLS, msgs), ("bodies", "id, raw", bodies),
                                          ("attempts", ATTEMPT_COLS, attempts)):
                    with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                        for r in rows:
                            copy.write_row(r)
            conn.commit()
        conn.cursor().executemany("INSERT INTO stats_hourly VALUES (%s, %s, %s, %s)",
                                  [(*k, v) for k, v in stats.items()])
        conn.cursor().executemany("INSERT INTO reasons_hourly VALUES (%s, %s, %s)",
                                  [(*k, v) for k, v in reasons.items()])
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - t0


def _ms(fn: Any, times: int = 7) -> dict[str, float]:
    got = []
    for _ in range(times):
        t0 = time.perf_counter()
        fn()
        got.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": statistics.median(got), "min_ms": min(got), "max_ms": max(got)}


def _cli(conf: Path, *args: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        if cli.main([*args, "--json", "-c", str(conf)]) != 0:
            raise RuntimeError(f"mailmand {args} failed")


def _subprocess(conf: Path | None, *args: str) -> None:
    cmd = [sys.executable, "-m", "mailmand", *args, "--json", "-c", str(conf)] if conf else \
        [sys.executable, "-c", "import mailmand.cli"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _count(path: Path, status: str) -> int:
    db = sqlite3.connect(path, timeout=30)
    try:
        return int(db.execute("SELECT n FROM status_counts WHERE status = ?", (status,)).fetchone()[0])
    finally:
        db.close()


def big_store(base: Path, n: int) -> dict[str, Any]:
    now = time.time()
    with workdir(base) as root:
        cfg = config(root, port=9, connections=4)
        conf = write_yaml(cfg, root / "mailmand.yaml")
        db_path = cfg.server.database.path
        load_s = generate(db_path, n, now)
        size = sum(p.stat().st_size for p in db_path.parent.glob(db_path.name + "*"))
        store = SQLiteStore(db_path)
        later = now + 31 * DAY  # every scheduled message is due: the claim has work to take

        def claim() -> None:
            if len(store.claim(later, 50, "bench", 300.0)) != 50:
                raise RuntimeError("claim took less than a batch")
            store.take_over("bench")

        out = {"messages": n, "load_s": load_s, "bytes_per_message": size / n,
               "counts": {s.value: c for s, c in store.counts().items()},
               "claim_50": _ms(claim)}
        store.close()
        out["status_inprocess"] = _ms(lambda: _cli(conf, "status"))
        out["stats_inprocess"] = _ms(lambda: _cli(conf, "stats"))
        out["status_subprocess"] = _ms(lambda: _subprocess(conf, "status"), 5)
        out["stats_subprocess"] = _ms(lambda: _subprocess(conf, "stats"), 5)
        out["python_import_only_subprocess"] = _ms(lambda: _subprocess(None), 5)
        with daemon(cfg, root) as proc:  # nothing due: an idle daemon on the big store
            time.sleep(3)
            out["daemon_idle_rss_mib"] = rss_mib(proc.pid)
    return out


def rss_run(base: Path, n: int) -> dict[str, Any]:
    """The daemon ingests and sends `n` messages to smtp-sink; its RSS sampled as it goes."""
    with workdir(base) as root, sink("smtp-sink" if have_smtp_sink() else "aiosmtpd") as port:
        cfg = config(root, port, connections=4, batch=50)
        fill_spool(cfg.queue.path, n)
        samples = []
        t0 = time.perf_counter()
        with daemon(cfg, root) as proc:
            idle = rss_mib(proc.pid)
            db = cfg.server.database.path
            while True:
                sent = _count(db, "sent") if db.exists() else 0
                samples.append({"t": round(time.perf_counter() - t0, 2), "sent": sent,
                                "rss_mib": rss_mib(proc.pid)})
                if sent >= n or time.perf_counter() - t0 > 1800:
                    break
                time.sleep(0.5)
            elapsed = time.perf_counter() - t0
            time.sleep(2)
            after = rss_mib(proc.pid)
    rss = [s["rss_mib"] for s in samples]
    return {"messages": n, "sent": samples[-1]["sent"], "end_to_end_msg_s": n / elapsed,
            "rss_at_start_mib": idle, "rss_max_mib": max(rss), "rss_after_mib": after,
            "rss_first_quarter_max_mib": max(rss[:max(1, len(rss) // 4)]),
            "rss_last_quarter_max_mib": max(rss[-max(1, len(rss) // 4):]), "samples": samples}


def pg_big_store(base: Path, n: int) -> dict[str, Any]:
    """Claim, `status` and `stats` on a PostgreSQL store of `n` messages (target: claim < 20 ms)."""
    from mailmand.config import DatabaseConfig
    from mailmand.stores.postgres import PostgresStore

    now = time.time()
    with workdir(base) as root, pg_database() as dsn:
        load_s = pg_generate(dsn, n, now)
        conf = write_pg_yaml(pg_config(root, dsn), root / "mailmand.yaml")
        store = PostgresStore(DatabaseConfig(engine="postgres", dsn=dsn))
        later = now + 31 * DAY

        def claim() -> float:  # the claim alone; the hand-back after it is not timed
            t0 = time.perf_counter()
            if len(store.claim(later, 50, "bench", 300.0)) != 50:
                raise RuntimeError("claim took less than a batch")
            took = (time.perf_counter() - t0) * 1000
            store.take_over("bench")
            return took

        got = [claim() for _ in range(21)]
        claim_ms = {"median_ms": statistics.median(got), "min_ms": min(got), "max_ms": max(got)}
        out = {"messages": n, "load_s": load_s, "claim_50": claim_ms,
               "counts": {s.value: c for s, c in store.counts().items()}}
        store.close()
        out["status_inprocess"] = _ms(lambda: _cli(conf, "status"))
        out["stats_inprocess"] = _ms(lambda: _cli(conf, "stats"))
    return out


def daemons_far_relay(base: Path, quick: bool, rtt_ms: float = 25.0) -> dict[str, Any]:
    """1, 2 and 3 daemons sharing one PostgreSQL store, sending to smtp-sink behind a
    delay proxy (`rtt_ms` away): throughput should grow with the daemons."""
    from mailmand.config import DatabaseConfig
    from mailmand.stores.postgres import PostgresStore

    from .common import records
    from .wan import delay_proxy

    n = 800 if quick else 4000
    out: dict[str, Any] = {"messages": n, "rtt_ms": rtt_ms, "connections_per_daemon": 4, "runs": []}
    with sink("smtp-sink") as port, delay_proxy(port, rtt_ms) as relay:
        for k in (1, 2, 3):
            with workdir(base) as root, pg_database() as dsn:
                store = PostgresStore(DatabaseConfig(engine="postgres", dsn=dsn), create=True)
                batch = records(n)
                for i in range(0, n, 500):
                    store.insert(batch[i:i + 500])
                confs = []
                for d in range(k):
                    (root / f"d{d}").mkdir()
                    confs.append(write_pg_yaml(pg_config(root / f"d{d}", dsn, relay, 4, batch=50),
                                               root / f"d{d}.yaml"))
                t0 = time.perf_counter()
                procs = [subprocess.Popen([sys.executable, "-m", "mailmand", "run", "-c", str(c)],
                                          stderr=subprocess.DEVNULL) for c in confs]
                try:
                    while store.counts()[Status.SENT] < n and time.perf_counter() - t0 < 600:
                        time.sleep(0.1)
                    took = time.perf_counter() - t0
                finally:
                    for p in procs:
                        p.terminate()
                    for p in procs:
                        p.wait(30)
                sent = store.counts()[Status.SENT]
                store.close()
            if sent != n:
                raise RuntimeError(f"{k} daemon(s) sent {sent} of {n}")
            out["runs"].append({"daemons": k, "seconds": took, "msg_s": n / took})
    return out


def operator_views(conf: Path, store: Any, now: float) -> dict[str, Any]:
    """The operator's reads on a big store, in-process through the CLI (`--json`):
    `list` pages (the first, one after a message halfway down, by status, by a
    recipient's domain), the scans a filter with few matches costs, a walk of ten
    pages through the store's selection, and `stats --by-domain`."""
    from mailmand.stores.model import Key, Selection

    [middle] = store.select(Selection(), 1, Key(now - 15 * DAY, "")).messages
    out: dict[str, Any] = {
        "list_first_page": _ms(lambda: _cli(conf, "list")),
        "list_after_a_middle_id": _ms(lambda: _cli(conf, "list", "--after", middle.id)),
        "list_status_deferred": _ms(lambda: _cli(conf, "list", "--status", "deferred")),
        "list_status_queued_and_deferred": _ms(lambda: _cli(conf, "list", "--status", "queued", "--status",
                                                            "deferred")),
        "list_to_a_domain": _ms(lambda: _cli(conf, "list", "--to", "@d7.example")),
        "list_to_a_domain_deferred": _ms(lambda: _cli(conf, "list", "--to", "@d7.example", "--status", "deferred")),
        "list_since_1h": _ms(lambda: _cli(conf, "list", "--since", "1h")),
        "list_to_nobody_full_scan": _ms(lambda: _cli(conf, "list", "--to", "nobody@nowhere.example"), 3),
        "list_subject_full_scan": _ms(lambda: _cli(conf, "list", "--subject", "no such subject"), 3),
    }

    def walk() -> None:
        after = None
        for _ in range(10):
            after = store.select(Selection(), 50, after).next

    out["select_walk_10_pages_of_50"] = _ms(walk)
    out["stats_by_domain"] = _ms(lambda: _cli(conf, "stats", "--by-domain"), 3)
    out["waiting_messages"] = sum(n for s, n in store.counts().items() if s.value in ("queued", "deferred"))
    return out


def operator_big_store(base: Path, n: int) -> dict[str, Any]:
    """`list` and `stats --by-domain` on stores of `n` messages (recipients over 100
    domains), SQLite and, when there is one, PostgreSQL."""
    from mailmand.config import DatabaseConfig
    from mailmand.stores.postgres import PostgresStore

    now = time.time()
    out: dict[str, Any] = {"messages": n}
    with workdir(base) as root:
        cfg = config(root, port=9, connections=4)
        conf = write_yaml(cfg, root / "mailmand.yaml")
        out["sqlite_load_s"] = generate(cfg.server.database.path, n, now, domains=100)
        store = SQLiteStore(cfg.server.database.path)
        try:
            out["sqlite"] = operator_views(conf, store, now)
        finally:
            store.close()
    if have_postgres():
        with workdir(base) as root, pg_database() as dsn:
            out["postgres_load_s"] = pg_generate(dsn, n, now, domains=100)
            conf = write_pg_yaml(pg_config(root, dsn), root / "mailmand.yaml")
            pg = PostgresStore(DatabaseConfig(engine="postgres", dsn=dsn))
            try:
                out["postgres"] = operator_views(conf, pg, now)
            finally:
                pg.close()
    return out


def run(base: Path, quick: bool) -> dict[str, Any]:
    out = {"store": big_store(base, 100_000 if quick else 1_000_000),
           "run": rss_run(base, 10_000 if quick else 100_000),
           "operator": operator_big_store(base, 100_000 if quick else 1_000_000)}
    if have_postgres():
        out["postgres"] = pg_big_store(base, 100_000 if quick else 1_000_000)
        if have_smtp_sink():
            out["daemons"] = daemons_far_relay(base, quick)
    return out
