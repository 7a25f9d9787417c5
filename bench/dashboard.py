"""The dashboard's pages on a store of 1,000,000 messages (bench/scale.py's: a
month of a busy host, mixed states): the overview, the message list (plain,
by status, by recipient, a later page by cursor) and one message, served by
the real web server, fetched by an HTTP client in another process. Goal:
each under 200 ms. Baseline in the same run: the API's own list call, the
same store read without a page around it (ratio = page / API)."""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from mailmand.config.schema import WebConfig
from mailmand.metrics import Health
from mailmand.stores import open_store
from mailmand.stores.model import DaemonInfo, Selection, Status
from mailmand.web.api import cursor_of
from mailmand.web.server import WebServer

from .common import config, environment, workdir
from .scale import generate

TOKEN = "bench-token-0123456789abcdef"
GOAL_MS = 200.0
EVENTS_FOR = 20_000  # messages given events (queued, then their outcome): the log is not empty
ROUNDS = 30  # timed fetches of each page, after WARM untimed ones
WARM = 3

CLIENT = r"""
import json, sys, time, httpx
base, token, rounds, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
paths = json.loads(sys.stdin.read())
out = {}
with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
    for name, path in paths.items():
        times, first = [], None
        for i in range(warm + rounds):
            t0 = time.perf_counter()
            r = http.get(path)
            took = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                raise SystemExit(f"{path}: {r.status_code} {r.text[:200]}")
            if i == 0:
                first = took
            if i >= warm:
                times.append(took)
        out[name] = {"first_ms": first, "times_ms": times, "bytes": len(r.content)}
print(json.dumps(out))
"""


def _events(path: Path, now: float) -> None:
    """Events for the newest EVENTS_FOR messages, as the store writes them."""
    db = sqlite3.connect(path, isolation_level=None)
    rows = db.execute("SELECT id, status, created_at, finished_at FROM messages ORDER BY created_at DESC, id DESC"
                      " LIMIT ?", (EVENTS_FOR,)).fetchall()
    events = []
    for mid, status, created, finished in reversed(rows):
        events.append((uuid.uuid4().hex, mid, "queued", created, 0, None, None, None, "[]"))
        if finished is not None and status != "cancelled":
            code = 250 if status == "sent" else 550
            events.append((uuid.uuid4().hex, mid, status, finished, 1, "127.0.0.1:25", code,
                           "250 2.0.0 Ok" if code == 250 else "550 5.1.1 no such user", "[]"))
    db.execute("BEGIN")
    db.executemany("INSERT INTO events (id, message_id, type, at, attempt, relay, code, reply, recipients)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", events)
    db.execute("COMMIT")
    db.close()


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 1),
            "max_ms": round(ordered[-1], 1)}


def run(base: Path, quick: bool) -> dict[str, Any]:
    n = 100_000 if quick else 1_000_000
    with workdir(base) as root:
        now = time.time()
        cfg = config(root, web=WebConfig(listen="127.0.0.1:0", token=TOKEN))
        built = generate(cfg.server.database.path, n, now)
        _events(cfg.server.database.path, now)
        store = open_store(cfg.server.database)
        store.register(DaemonInfo("bench:1:x", "bench", 1, "bench", now, now, str(cfg.queue.path)))
        failed = store.select(Selection(statuses=(Status.FAILED,)), 1).messages[0].id
        second = store.select(Selection(), 50).next
        assert second is not None
        server = WebServer(cfg, Health(time.monotonic, store, lambda: 5.0), store=store).start()
        try:
            host, port = server.address
            paths = {
                "overview": "/",
                "list": "/messages",
                "list, failed": "/messages?status=failed",
                "list, a recipient": "/messages?to=sink%40example.com",
                "list, page 2": f"/messages?cursor={cursor_of(second)}",
                "message": f"/messages/{failed}",
                "api list (baseline)": "/api/v1/messages",
                "healthz": "/healthz",
            }
            done = subprocess.run([sys.executable, "-c", CLIENT, f"http://{host}:{port}", TOKEN, str(ROUNDS),
                                   str(WARM)], input=json.dumps(paths), capture_output=True, text=True, check=True)
        finally:
            server.stop()
            store.close()
    got = json.loads(done.stdout)
    baseline = statistics.median(got["api list (baseline)"]["times_ms"])
    rows = []
    for name, r in got.items():
        s = _summary(r["times_ms"])
        rows.append({"page": name, **s, "first_ms": round(r["first_ms"], 1), "kib": round(r["bytes"] / 1024, 1),
                     "vs_api_list": round(s["median_ms"] / baseline, 2),
                     "under_goal": s["p95_ms"] < GOAL_MS})
    return {"messages": n, "build_s": round(built, 1), "rounds": ROUNDS, "goal_ms": GOAL_MS, "rows": rows}


def report(out: dict[str, Any]) -> str:
    lines = [f"## dashboard pages on a store of {out['messages']:,} messages (goal: p95 < {out['goal_ms']:.0f} ms; "
             f"{out['rounds']} fetches each after a warm-up)",
             "| page | median ms | p95 ms | max ms | first ms | KiB | vs API list |", "|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['page']} | {r['median_ms']} | {r['p95_ms']} | {r['max_ms']} | {r['first_ms']} | "
                     f"{r['kib']} | {r['vs_api_list']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.dashboard")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "dashboard.json")
    args = p.parse_args()
    results = run(args.dir, args.quick)
    print(report(results))
    args.out.write_text(json.dumps({"env": environment(), "load": os.getloadavg(), **results}, indent=1) + "\n")
