"""Scenario 2: spool → store. Messages per second as the drain goes, to show
the rate stays flat while the spool's history grows (acked rows are cleared)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import persistqueue.serializers.json as pq_json
from persistqueue.exceptions import Empty

from mailmand.ingest import Ingester
from mailmand.queues.spool import DB_FILE, TABLE, SpoolQueue
from mailmand.stores.base import Status
from mailmand.stores.sqlite import SQLiteStore

from .common import config, email, workdir
from .enqueue import MAX_SIZE, _bare


def fill_spool(spool: Path, n: int) -> None:
    """Put `n` records in the spool fast: the rows persist-queue's put writes
    (status 0 = inited), in one transaction instead of n."""
    SpoolQueue(spool, daemon=True).close()  # the directory, file and table, as mailmand makes them
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


def run(base: Path, quick: bool) -> dict[str, Any]:
    sizes = [10_000] if quick else [10_000, 100_000]
    out: dict[str, Any] = {"runs": []}
    for n in sizes:
        out["runs"].append(drain_curve(base, n, max(1000, n // 20)))
    out["bare_queue_drain_msg_s"] = bare_drain(base, 10_000)
    return out
