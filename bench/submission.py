"""Scenario: SMTP submission against Postfix's smtpd, in the same run.

Postfix's own load generator, `smtp-source`, sends 2 KB messages over 10
sessions (one message after another on each, no pipelining: smtp-source has
none) to two listeners, round after round, in turn (ABBA):

- mailmand's listener, in a real `mailmand run` (spool queue, SQLite store),
  which meanwhile ingests and delivers what it takes to Postfix's C
  smtp-sink: its normal life. A fresh daemon each round;
- Postfix's smtpd (a private instance, tests/postfix.py) taking every message
  into its hold queue: cleanup writes a queue file and fsyncs it before the
  250, and nothing is delivered.

A 250 means durable on both sides; each round checks that every message got
there (mailmand's store holds them all sent; Postfix's hold queue holds them
all). Before each timed round, 100 messages warm each side up (a fresh
spool's table, Postfix's smtpd and cleanup processes).

Reported: each side's msg/s (median of rounds, min–max), mailmand / Postfix
(target >= 0.5), the 1-minute load average around each round (the machine
is shared: rerun on a quiet one), and CPU µs per message of mailmand's daemon
(listener, ingest and delivery, up to the last message sent) and of Postfix's
processes (smtpd, cleanup; a floor: processes that exit are not counted).

    python -m bench.submission [--quick] [--rounds N] [--messages N] [--sessions N]
    python -m bench --only submission [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .chunking import Meter, Relay, cpu_of
from .common import Series, config, environment, free_port, have_smtp_sink, sink, workdir, write_yaml

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SESSIONS = 10
SIZE = 2048  # smtp-source's -l: body bytes, headers aside
WARM_UP = 100
TARGET = 0.5  # mailmand's listener at least this x Postfix's smtpd
ROOT = Path(__file__).resolve().parent.parent


def smtp_source(port: int, n: int, sessions: int) -> float:
    """Send `n` messages with Postfix's smtp-source; msg/s over its whole run. It stops
    at the first reply that is not the expected 2xx/3xx, and so fails the round."""
    t0 = time.perf_counter()
    done = subprocess.run([SMTP_SOURCE, "-s", str(sessions), "-m", str(n), "-l", str(SIZE), "-d",
                           "-f", "bench@example.com", "-t", "sink@example.com", "-M", "bench.example",
                           f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source exited {done.returncode}: {done.stderr[-2000:]}")
    return n / dt


class Daemon:
    """`mailmand run` with the submission listener on, delivering to `relay`."""

    def __init__(self, root: Path, relay: int, sessions: int) -> None:
        self.cfg = config(root, port=relay)
        self.port = free_port()
        conf = write_yaml(self.cfg, root / "mailmand.yaml")
        with conf.open("a") as f:  # the smtp section is the file's last: this goes back to `server`
            f.write(f"    submission:\n      listen: 127.0.0.1:{self.port}\n"
                    f"      max-connections-per-client: {max(10, sessions)}\n")
        self.log = (root / "daemon.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "mailmand", "run", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=self.log, cwd=ROOT)
        deadline = time.monotonic() + 30
        while True:  # ready when the listener answers
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=2) as s:
                    s.noop()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the daemon's listener never answered") from None
                time.sleep(0.05)

    def sent(self) -> int:
        from mailmand.stores import Status, open_store

        try:
            store = open_store(self.cfg.server.database)
        except Exception:  # not made yet
            return 0
        try:
            counts = store.counts()
        finally:
            store.close()
        return counts[Status.SENT] + counts[Status.FAILED]

    def drained(self, total: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.sent() < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon delivered {self.sent()} of {total} in {timeout:g}s")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


def mailmand_round(base: Path, relay: int, n: int, sessions: int) -> dict[str, float]:
    with workdir(base) as root:
        daemon = Daemon(root, relay, sessions)
        try:
            smtp_source(daemon.port, WARM_UP, sessions)
            daemon.drained(WARM_UP)
            load0, cpu0 = os.getloadavg()[0], cpu_of(daemon.proc.pid)
            rate = smtp_source(daemon.port, n, sessions)
            daemon.drained(WARM_UP + n)  # every message taken was delivered: 250 meant queued
            cpu = cpu_of(daemon.proc.pid) - cpu0
            return {"msg_s": rate, "cpu_us": cpu / n * 1e6, "load": (load0 + os.getloadavg()[0]) / 2}
        finally:
            daemon.stop()


def held(relay: Relay) -> int:
    hold = relay.pf.root / "queue" / "hold"
    return sum(1 for _, _, files in os.walk(hold) for _ in files)


def postfix_round(relay: Relay, n: int, sessions: int) -> dict[str, float]:
    relay.clear()
    smtp_source(relay.port, WARM_UP, sessions)
    relay.clear()
    meter = Meter(relay.pids)
    load0 = os.getloadavg()[0]
    meter.start()
    rate = smtp_source(relay.port, n, sessions)
    cpu = meter.stop()
    if held(relay) != n:
        raise RuntimeError(f"Postfix's hold queue has {held(relay)} of {n} messages")
    relay.clear()
    return {"msg_s": rate, "cpu_us": cpu / n * 1e6, "load": (load0 + os.getloadavg()[0]) / 2}


def _side(runs: list[dict[str, float]]) -> dict[str, Any]:
    series = Series([r["msg_s"] for r in runs])
    return {**series.summary(), "cpu_us": Series([r["cpu_us"] for r in runs]).median,
            "load": [round(r["load"], 2) for r in runs], "rates": [round(r["msg_s"]) for r in runs]}


def run(base: Path, quick: bool, rounds: int | None = None, messages: int | None = None,
        sessions: int = SESSIONS) -> dict[str, Any]:
    from tests.postfix import missing

    if not have_smtp_sink() or not os.access(SMTP_SOURCE, os.X_OK) or missing():
        return {"skipped": missing() or "no smtp-sink or smtp-source (Debian package postfix)"}
    rounds = rounds or (2 if quick else 5)
    n = messages or (1000 if quick else 2000)
    got: dict[str, list[dict[str, float]]] = {"mailmand": [], "postfix": []}
    relay = Relay("hold")
    try:
        with sink("smtp-sink") as delivery:
            sides: dict[str, Callable[[], dict[str, float]]] = {
                "mailmand": lambda: mailmand_round(base, delivery, n, sessions),
                "postfix": lambda: postfix_round(relay, n, sessions),
            }
            for r in range(rounds):
                order = ["mailmand", "postfix"] if r % 2 == 0 else ["postfix", "mailmand"]
                for name in order:
                    got[name].append(sides[name]())
                    last = got[name][-1]
                    print(f"  round {r + 1} {name}: {last['msg_s']:.0f} msg/s, {last['cpu_us']:.0f} µs CPU/msg, "
                          f"load {last['load']:.1f}", file=sys.stderr, flush=True)
    finally:
        relay.close()
    m, p = _side(got["mailmand"]), _side(got["postfix"])
    ratios = [a["msg_s"] / b["msg_s"] for a, b in zip(got["mailmand"], got["postfix"], strict=True)]
    loads = [r["load"] for side in got.values() for r in side]
    return {"messages": n, "sessions": sessions, "body_bytes": SIZE, "rounds": rounds,
            "mailmand": m, "postfix": p, "ratio": m["median"] / p["median"],
            "ratio_by_round": [round(x, 3) for x in ratios], "target": TARGET,
            "load_average": {"median": Series(loads).median, "min": min(loads), "max": max(loads)}}


def report(results: dict[str, Any]) -> str:
    if "skipped" in results:
        return f"## submission: skipped ({results['skipped']})"
    m, p, la = results["mailmand"], results["postfix"], results["load_average"]
    return "\n".join([
        f"## submission (smtp-source, {results['sessions']} sessions, {results['messages']} messages of "
        f"{results['body_bytes']} B, {results['rounds']} rounds each, interleaved; load average median "
        f"{la['median']:.1f}, {la['min']:.1f}–{la['max']:.1f})",
        "| listener | msg/s median (min–max) | CPU µs/message | ratio (target) |", "|---|---|---|---|",
        f"| mailmand run (delivering meanwhile) | {m['median']:.0f} ({m['min']:.0f}–{m['max']:.0f}) "
        f"| {m['cpu_us']:.0f} | **{results['ratio']:.2f}** (≥ {results['target']}) |",
        f"| Postfix smtpd → hold queue | {p['median']:.0f} ({p['min']:.0f}–{p['max']:.0f}) | {p['cpu_us']:.0f} | |",
        f"\nratio round by round: {', '.join(f'{x:.2f}' for x in results['ratio_by_round'])}"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.submission", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 rounds of 1,000 messages (about a minute)")
    p.add_argument("--rounds", type=int, help="rounds for each side (default 5; quick 2)")
    p.add_argument("--messages", type=int, help="messages per round (default 2,000; quick 1,000)")
    p.add_argument("--sessions", type=int, default=SESSIONS, help=f"smtp-source sessions (default {SESSIONS})")
    p.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="scratch directory on a real disk")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "submission.json")
    args = p.parse_args(argv)
    results = {"env": environment(), **run(args.dir, args.quick, args.rounds, args.messages, args.sessions)}
    print(report(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
