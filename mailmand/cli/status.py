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
            live = daemons(cfg, s, t)
            data["relays"] = relays(cfg, s, live, t)
            data.update({
                "daemons": [d.to_json() for d in live],
                "store": describe(cfg.server.database),
                "counts": {st.value: n for st, n in counts.items()},
                "quarantine": s.quarantine_count(),
                "oldest_due_age": None if oldest is None else round(t - oldest, 3),
                "next_scheduled": next_due if next_due is not None and next_due > t else None,
            })
        # A consumer of the shared queue is live while its daemon's heartbeat is.
        names = {d.id for d in live}
        for c in data["queue"]["consumers"]:
            c["live"] = c["name"] in names
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
    else:  # a shared queue: what each live daemon holds, and what a gone one left
        consumers = data["queue"]["consumers"]
        live = [c for c in consumers if c.get("live", True)]
        print(f"{'queue':<10} {qinfo.where}: length {qinfo.length} (not yet ingested), "
              f"pending {qinfo.pending}, consumers {len(live)}")
        for c in consumers:
            gone = "" if c.get("live", True) else " (its daemon is gone: another takes these over after the lease)"
            print(f"  {c['name']:<40} {c['pending']} pending, idle {fmt.age(c['idle_s'])}{gone}")
    for r in data.get("relays", []):
        print_relay(r, several=len(data["daemons"]) > 1)
    if missing is None:
        print(f"{'quarantine':<10} {data['quarantine']}")
        oldest = data["oldest_due_age"]
        print(f"oldest due message: {'none' if oldest is None else fmt.age(oldest) + ' old'}")
        print(f"next scheduled send: {fmt.when(data['next_scheduled'])}")
    return 0


def relays(cfg: Config, s: Any, live: list[Any], t: float) -> list[dict[str, Any]]:
    """Each relay as each live daemon last reported it (its heartbeat), or as configured
    when no daemon reports it; with the day's quota count from the store."""
    out: list[dict[str, Any]] = []
    for d in live:
        out += [{**r, "daemon": d.id} for r in d.relays]
    reported = {r["name"] for r in out}
    # Read field by field: the configuration may be the producers' cached copy (plain sections).
    for i, rc in enumerate(cfg.server.relays or (cfg.server.smtp,)):
        relay = f"{rc.host}:{rc.port}"
        name = getattr(rc, "name", None) or relay
        quota = getattr(rc, "quota", None)
        if name not in reported:
            out.append({"name": name, "relay": relay, "priority": getattr(rc, "priority", None) or i + 1,
                        "weight": getattr(rc, "weight", 1), "senders": list(getattr(rc, "senders", ())),
                        "quota_per_day": quota.per_day if quota is not None else None,
                        "state": None})  # no daemon says
    day = int(t // 86400)  # quotas count UTC days
    for r in out:
        if r.get("quota_per_day"):
            r["quota_used_today"] = s.quota_used(r["name"], day)
    return out


def print_relay(r: dict[str, Any], several: bool) -> None:
    where = f" (daemon {r['daemon']})" if several and r.get("daemon") else ""
    head = f"{'relay':<10} {r['name']}" + (f" {r['relay']}" if r.get("relay") and r["relay"] != r["name"] else "")
    if r.get("state") is None:
        print(f"{head}: state unknown (no daemon running reports it)")
    elif r["state"] == "up":
        last = f" (last reply: {r['last_reply']})" if r.get("last_reply") else ""
        print(f"{head}: up since {fmt.when(r['since'])}{last}{where}")
    else:
        print(f"{head}: down since {fmt.when(r['since'])}, tried again from {fmt.when(r.get('down_until'))} "
              f"({r.get('last_reply')}){where}")
    if r.get("throttled"):
        rate = f"{r['rate']:g}/s" if r.get("rate") is not None else "no rate limit"
        most = f"{r['rate_max']:g}/s" if r.get("rate_max") is not None else "no limit"
        print(f"{'':<10}   throttled: {r['connections']} of {r['connections_max']} connection(s), {rate} "
              f"(configured: {most}); it pushed back: {r.get('last_pushback')}")
    if r.get("quota_per_day"):
        print(f"{'':<10}   quota: {r.get('quota_used_today', 0)} of {r['quota_per_day']} today (UTC)")


def cmd_stats(cfg: Config, args: argparse.Namespace) -> int:
    t = now()
    if args.by_domain:
        return by_domain(cfg, args, t)
    if args.status:
        from ..errors import UsageError

        raise UsageError("--status goes with --by-domain")
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


def by_domain(cfg: Config, args: argparse.Namespace, t: float) -> int:
    """qshape's view: recipients not yet delivered to, by domain (rows) and by age
    since their send time (columns: 0-5 min, 5-10, 10-20, ... and later for mail
    whose send time has not come)."""
    from ..stores.model import AGE_BOUNDS, SCHEDULED, UNFINISHED, Status

    statuses = [Status(x) for x in dict.fromkeys(args.status)] or list(UNFINISHED)
    with store(cfg) as s:
        shapes = s.by_domain(t, statuses)
    columns = list(range(len(AGE_BOUNDS) + 1))
    total = {i: sum(sh.buckets.get(i, 0) for sh in shapes) for i in (*columns, SCHEDULED)}
    if args.json:
        labels = [f"{int(lo // 60)}-{int(hi // 60)}m" for lo, hi in zip((0.0, *AGE_BOUNDS), AGE_BOUNDS, strict=False)]
        labels.append(f"{int(AGE_BOUNDS[-1] // 60)}m+")
        fmt.print_json({"statuses": [st.value for st in statuses], "buckets": labels,
                        "total": {"total": sum(total.values()), "ages": [total[i] for i in columns],
                                  "later": total[SCHEDULED]},
                        "domains": [{"domain": sh.domain, "total": sh.total,
                                     "ages": [sh.buckets.get(i, 0) for i in columns],
                                     "later": sh.buckets.get(SCHEDULED, 0)} for sh in shapes]})
        return 0
    header = ("", "T", *(str(int(b // 60)) for b in AGE_BOUNDS), f"{int(AGE_BOUNDS[-1] // 60)}+", "later")
    rows = [("TOTAL", str(sum(total.values())), *(str(total[i]) for i in columns), str(total[SCHEDULED]))]
    rows += [(sh.domain, str(sh.total), *(str(sh.buckets.get(i, 0)) for i in columns),
              str(sh.buckets.get(SCHEDULED, 0))) for sh in shapes]
    fmt.table(header, rows, right=frozenset(range(len(header))))
    print(f"(recipients of {', '.join(st.value for st in statuses)} mail by age in minutes since the send time; "
          "later: not due yet)")
    return 0
