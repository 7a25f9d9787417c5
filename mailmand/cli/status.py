"""`mailmand status` and `mailmand stats`: how the queue is, and how it went."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import NoStore
from ..queues import open_queue
from ..stores import describe
from . import format as fmt
from .common import daemons, duration, local_pid, now, store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import Config


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    t = now()
    queue = open_queue(cfg.queue, readonly=True)
    try:
        qinfo = queue.info()
    finally:
        queue.close()
    spool = qinfo.waiting
    data: dict[str, Any] = {"daemons": [], "store": None, "spool": spool, "queue": qinfo.to_json()}
    missing = None
    try:
        with store(cfg) as s:
            counts = s.counts()
            oldest = s.oldest_due(t)
            next_due = s.next_due()
            data.update({
                "daemons": [d.to_json() for d in daemons(cfg, s, t)],
                "store": describe(cfg.server.database),
                "counts": {st.value: n for st, n in counts.items()},
                "quarantine": s.quarantine_count(),
                "oldest_due_age": None if oldest is None else round(t - oldest, 3),
                "next_scheduled": next_due if next_due is not None and next_due > t else None,
            })
    except NoStore as exc:  # the daemon never ran here: say so, and still what waits in the spool
        missing = str(exc)
        pid = local_pid(cfg)
        data["daemons"] = [{"pid": pid}] if pid else []
    if args.json:
        fmt.print_json(data)
        return 0
    if not data["daemons"]:
        print(f"{'daemon':<10} not running (start it: systemctl start mailmand, or mailmand run)")
    for d in data["daemons"]:
        where = f" on {d['host']}" if d.get("host") else ""
        version = f", mailmand {d['version']}" if d.get("version") else ""
        since = f", since {fmt.when(d['started_at'])}" if d.get("started_at") else ""
        print(f"{'daemon':<10} running{where}, pid {d['pid']}{version}{since}")
    if missing is not None:
        print(f"{'store':<10} {missing}")
    else:
        for st, n in data["counts"].items():
            print(f"{st:<10} {n}")
    if qinfo.length is None:  # a spool or an outbox: how much waits, and since when where it is known
        since = "" if qinfo.oldest_s is None or not spool else f", the oldest for {fmt.age(qinfo.oldest_s)}"
        print(f"{qinfo.label:<10} {spool} waiting to be ingested in {qinfo.where}{since}")
    else:  # a shared queue: what each daemon holds
        print(f"{'queue':<10} {qinfo.where}: length {qinfo.length} (not yet ingested), "
              f"pending {qinfo.pending}, consumers {len(qinfo.consumers)}")
        for c in qinfo.consumers:
            print(f"  {c['name']:<40} {c['pending']} pending, idle {fmt.age(c['idle_s'])}")
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
