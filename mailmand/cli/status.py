"""`mailmand status` and `mailmand stats`: how the queue is, and how it went."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import Config
from ..queues import open_queue
from . import format as fmt
from .common import DaemonInfo, duration, local_daemon, missing_store, now, store


def _daemons(cfg: Config, s: Any) -> list[DaemonInfo]:
    """Every live daemon the store knows (PostgreSQL: all of them), else the one on this spool's lock."""
    listed = getattr(s, "daemons", None)
    if listed is not None:
        found = [DaemonInfo(pid=d.pid, since=d.started_at, version=d.version, host=d.host) for d in listed()]
        if found:
            return found
    local = local_daemon(cfg)
    return [local] if local else []


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    t = now()
    queue = open_queue(cfg.queue, readonly=True)
    try:
        spool = queue.pending()
    finally:
        queue.close()
    data: dict[str, Any] = {"daemons": [], "store": None, "spool": spool}
    missing = missing_store(cfg)
    if missing is None:
        with store(cfg) as s:
            counts = s.counts()
            oldest = s.oldest_due(t)
            next_due = s.next_due()
            data.update({
                "daemons": [d.__dict__ for d in _daemons(cfg, s)],
                "store": "ok",
                "counts": {st.value: n for st, n in counts.items()},
                "quarantine": s.quarantine_count(),
                "oldest_due_age": None if oldest is None else round(t - oldest, 3),
                "next_scheduled": next_due if next_due is not None and next_due > t else None,
            })
    else:
        local = local_daemon(cfg)
        data["daemons"] = [local.__dict__] if local else []
    if args.json:
        fmt.print_json(data)
        return 0
    if not data["daemons"]:
        print(f"{'daemon':<10} not running (start it: systemctl start mailmand, or mailmand run)")
    for d in data["daemons"]:
        where = f" on {d['host']}" if d.get("host") else ""
        version = f", mailmand {d['version']}" if d.get("version") else ""
        print(f"{'daemon':<10} running{where}, pid {d['pid'] or '?'}{version}, since {fmt.when(d['since'])}")
    if missing is not None:
        print(f"{'store':<10} no store yet at {missing} (the daemon creates it)")
    else:
        for st, n in data["counts"].items():
            print(f"{st:<10} {n}")
    print(f"{'spool':<10} {spool} waiting to be ingested")
    if missing is None:
        print(f"{'quarantine':<10} {data['quarantine']}")
        print(f"oldest due message: {fmt.age(data['oldest_due_age'])} old")
        print(f"next scheduled send: {fmt.when(data['next_scheduled'])}")
    return 0


def cmd_stats(cfg: Config, args: argparse.Namespace) -> int:
    t = now()
    since = t - duration("--since", args.since)
    with store(cfg) as s:
        data = s.stats(since, t)
    if args.json:
        fmt.print_json(data)
        return 0
    print(f"since {fmt.when(data['since'])}:")
    messages = data.get("messages")
    if messages is not None:
        print("  messages: " + ", ".join(f"{k} {v}" for k, v in messages.items()))
    attempts = data.get("attempts")
    if attempts is not None:
        print("  attempts: " + ", ".join(f"{k} {v}" for k, v in attempts.items()))
    if messages is None:
        print(f"  sent {data['sent']}, failed {data['failed']}, expired {data['expired']}")
    lat = data["latency"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f} ms"

    print(f"latency (send time to 250): p50 {ms(lat['p50'])}, p95 {ms(lat['p95'])}, p99 {ms(lat['p99'])}")
    if data["top_failures"]:
        print("top failure reasons (messages):")
        for r in data["top_failures"]:
            print(f"  {r['count']:>6}  {r['reason']}")
    if data["depth_hourly"]:
        print("queue depth per hour (the most waiting at once):")
        for d in data["depth_hourly"]:
            print(f"  {fmt.when(d['hour'])}  {d['depth']}")
    return 0
