"""python -m bench [--quick] [--only enqueue,ingest,dispatch,latency,scale,wan,chunking,submission,outbox,
webhooks,throttle,web,dashboard]"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from . import (
    chunking,
    dashboard,
    dispatch,
    enqueue,
    ingest,
    latency,
    outbox,
    scale,
    submission,
    throttle,
    wan,
    web,
    webhooks,
)
from .common import environment

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {"enqueue": enqueue.run, "ingest": ingest.run, "dispatch": dispatch.run,
             "latency": latency.run, "scale": scale.run, "wan": wan.run, "chunking": chunking.run,
             "submission": submission.run, "outbox": outbox.run, "webhooks": webhooks.run,
             "throttle": throttle.run, "web": web.run, "dashboard": dashboard.run}


def _table(rows: list[dict[str, Any]]) -> str:
    out = ["| comparison | mailmand median (min–max) | baseline median (min–max) | ratio |",
           "|---|---|---|---|"]
    for r in rows:
        a, b = r["mailmand"], r["baseline"]
        out.append(f"| {r['name']} | {a['median']:.0f} ({a['min']:.0f}–{a['max']:.0f}) {r['unit']} "
                   f"| {b['median']:.0f} ({b['min']:.0f}–{b['max']:.0f}) {r['unit']} | **{r['ratio']:.2f}** |")
    return "\n".join(out)


def report(results: dict[str, Any]) -> str:
    parts = [f"# mailmand bench ({results['mode']}) — {results['env']['when']}"]
    if "enqueue" in results:
        e = results["enqueue"]
        parts += ["\n## enqueue", _table(e["rows"]),
                  f"\ncomposition (Email.to_record, {e['compose']['size_bytes']} bytes): "
                  f"{e['compose']['to_record_us']:.0f} µs/message; Email(...) {e['compose']['email_init_us']:.0f} µs; "
                  f"durability both sides: WAL, synchronous={e['durability']['synchronous']}"]
    if "ingest" in results:
        g = results["ingest"]
        parts += ["\n## ingest (spool → store)", "| waiting | msg/s | late/early rate | spool rows left |",
                  "|---|---|---|---|"]
        for r in g["runs"]:
            parts.append(f"| {r['waiting']} | {r['msg_s']:.0f} | {r['flatness']:.2f} | "
                         f"{r['curve'][-1]['spool_rows']} |")
        parts.append(f"\nbare persist-queue drain, no store (for scale): {g['bare_queue_drain_msg_s']:.0f} msg/s")
    if "dispatch" in results:
        parts += ["\n## dispatch", _table(results["dispatch"]["rows"]),
                  f"\nlogging: {results['dispatch']['logging']}"]
    if "latency" in results:
        lat = results["latency"]
        parts += ["\n## latency (enqueue → relay's 250; targets p50 < 4 ms, p99 < 15 ms in every case)",
                  latency.report(lat)]
    if "submission" in results:
        parts += ["\n" + submission.report(results["submission"])]
    if "scale" in results:
        s, r = results["scale"]["store"], results["scale"]["run"]
        parts += [f"\n## scale ({s['messages']:,} messages)", "| operation | median ms (min–max) |", "|---|---|"]
        for key in ("claim_50", "status_inprocess", "stats_inprocess", "status_subprocess",
                    "stats_subprocess", "python_import_only_subprocess"):
            v = s[key]
            parts.append(f"| {key} | {v['median_ms']:.1f} ({v['min_ms']:.1f}–{v['max_ms']:.1f}) |")
        parts.append(f"\nstore on disk: {s['bytes_per_message']:.0f} bytes/message; daemon idle RSS on it: "
                     f"{s['daemon_idle_rss_mib']:.1f} MiB")
        parts.append(f"daemon run of {r['messages']:,}: RSS {r['rss_at_start_mib']:.1f} MiB at start, "
                     f"max {r['rss_first_quarter_max_mib']:.1f} in the first quarter, "
                     f"{r['rss_last_quarter_max_mib']:.1f} in the last, {r['rss_after_mib']:.1f} after; "
                     f"end to end {r['end_to_end_msg_s']:.0f} msg/s")
        if "postgres" in results["scale"]:
            pg = results["scale"]["postgres"]
            parts.append(f"PostgreSQL store of {pg['messages']:,}: claim 50 "
                         f"{pg['claim_50']['median_ms']:.1f} ms (target < 20), status "
                         f"{pg['status_inprocess']['median_ms']:.1f} ms, "
                         f"stats {pg['stats_inprocess']['median_ms']:.1f} ms")
        if "daemons" in results["scale"]:
            dd = results["scale"]["daemons"]
            parts.append(f"daemons on one PostgreSQL store, relay {dd['rtt_ms']:g} ms away, {dd['messages']} messages: "
                         + ", ".join(f"{r['daemons']} → {r['msg_s']:.0f} msg/s" for r in dd["runs"]))
    if "outbox" in results:
        o = results["outbox"]
        if "skipped" in o:
            parts += [f"\n## outbox: skipped ({o['skipped']})"]
        else:
            parts += ["\n## outbox (inside an app's PostgreSQL transaction, against a plain INSERT of the same bytes)",
                      "| call | median µs | plain INSERT median µs | cost ratio |", "|---|---|---|---|"]
            for name, call in (("put", "Client.put(record, connection=conn)"),
                               ("enqueue", "Client.enqueue(email, connection=conn), composing")):
                st = o["statement"][name]
                parts.append(f"| {call} | {st['outbox_us']:.0f} | {st['plain_insert_us']:.0f} "
                             f"| **{st['cost_ratio']:.2f}** |")
            parts += ["", _table(o["rows"])]
    if "wan" in results:
        w = results["wan"]
        if "skipped" in w:
            parts += [f"\n## wan: skipped ({w['skipped']})"]
        else:
            parts += ["\n## wan (smtp-sink behind a delay proxy; msg/s, median of rounds)",
                      "| RTT | connections | mailmand --once | mailmand dispatch alone | Postfix satellite "
                      "| bare smtplib | --once / Postfix | --once / smtplib |", "|---|---|---|---|---|---|---|---|"]
            for r in w["rows"]:
                parts.append(f"| {r['rtt_ms']} ms | {r['connections']} | {r['mailmand']['median']:.0f} "
                             f"| {r['dispatch']['median']:.0f} "
                             f"| {r['postfix']['median']:.0f} | {r['smtplib']['median']:.0f} "
                             f"| **{r['mailmand_vs_postfix']:.2f}** | **{r['mailmand_vs_smtplib']:.2f}** |")
    if "chunking" in results:
        parts += ["\n" + chunking.report(results["chunking"])]
    if "webhooks" in results:
        h = results["webhooks"]
        if "skipped" in h:
            parts += [f"\n## webhooks: skipped ({h['skipped']})"]
        else:
            parts += ["\n## webhooks (delivery with one webhook configured; target ≥ 0.9)", _table(h["rows"]),
                      f"\nthe webhook had every event ({2 * h['messages']}) {h['webhook_drained_s']:.2f} s after "
                      f"delivery began: {h['webhook_events_s']:.0f} events/s; the daemon's CPU per message "
                      f"{h['cpu_us_per_message']['webhook']:.0f} µs with the webhook, "
                      f"{h['cpu_us_per_message']['none']:.0f} µs without"]
    if "throttle" in results:
        parts += ["\n" + throttle.report(results["throttle"])]
    if "web" in results:
        parts += ["\n" + web.report(results["web"])]
    if "dashboard" in results:
        parts += ["\n" + dashboard.report(results["dashboard"])]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller runs, about 2 minutes")
    p.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    p.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                   help="scratch directory on a real disk (default /var/tmp; not a tmpfs)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench.png")
    p.add_argument("--wan-plot", type=Path, default=ROOT / "docs" / "wan.png")
    args = p.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "env": environment()}
    t0 = time.monotonic()
    for name in wanted:
        print(f"… {name}", file=sys.stderr, flush=True)
        results[name] = SCENARIOS[name](args.dir, args.quick)
    results["duration_s"] = round(time.monotonic() - t0, 1)
    print(report(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    try:
        if "dispatch" in results:
            from .plot import plot

            plot(results["dispatch"], args.plot)
        if "wan" in results and "rows" in results["wan"]:
            wan.plot(results["wan"], args.wan_plot)
    except ImportError:
        print("matplotlib not installed (pip install mailmand[bench]): no plot", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
