"""Scenario: BDAT windows. A relay that offers CHUNKING, a round trip away.

The relay is Postfix's smtpd (a private instance, tests/postfix.py: CHUNKING,
PIPELINING and the strict pipelining rules the tests use) behind the same
userspace delay proxy as bench/wan.py. What it does with a message is the
`--receiver`:

- `sink` (default): smtpd hands every message on through
  `smtpd_proxy_filter` to Postfix's C smtp-sink, which stores nothing. smtpd
  still parses every command and every chunk; no queue file is written. The
  same receiver role smtp-sink alone plays in bench/wan.py (which cannot be
  used here: smtp-sink does not offer CHUNKING), so the senders are measured,
  not the relay's disk.
- `hold`: smtpd takes every message into its queue (cleanup, a queue file
  fsynced) and puts it on hold, never delivered: what a relay that stores
  pays, on the same two cores as the senders.

Same run, same relay, same distance, at 20 and 4 connections:

- `mailmand --once` as a command, whole (process start, ingest, dispatch), with
  `chunking: auto` (BDAT windows) and with `chunking: off` (DATA pipelined,
  one message a round trip: the bound before this);
- mailmand's dispatch alone (`Daemon.once()` on a filled store, BDAT);
- a bare smtplib loop (DATA, one reused connection per thread);
- Postfix as a satellite (its SMTP client has no BDAT; it pipelines DATA).

Where it is bound: CPU seconds per message of mailmand, of the relay (smtpd,
smtp-sink or cleanup) and of the delay proxy, from /proc, next to the
ceiling the window sets (connections × window ÷ RTT). The SMTP layer alone
(`Relay.send_grouped`, no store) is also swept over window sizes, to choose
the default.

    python -m bench.chunking [--quick] [--receiver sink|hold] [--connections 20,4]
    python -m bench --only chunking [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mailmand.smtp.protocol import Window

from .common import Series, config, environment, free_port, have_smtp_sink, records, workdir, write_yaml
from .wan import Satellite, smtplib_loop

RTT_MS = 25
TARGETS = {20: 4.0, 4: 3.0}  # mailmand --once at least this × the Postfix satellite, by connections
WINDOWS = (1, 2, 4, 8, 16, 32)
CLK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


# -- CPU from /proc ----------------------------------------------------------------------


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a live process has used; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK


def children(ppid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return out


class Meter:
    """CPU seconds of a set of processes over a stretch of time. Processes that
    start during it count from zero; ones that exit during it are lost (Postfix
    recycles an smtpd after 100 sessions: the relay's figure is a floor)."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self._pids = pids
        self._start: dict[int, float] = {}

    def start(self) -> None:
        self._start = {p: cpu_of(p) for p in self._pids()}

    def stop(self) -> float:
        return sum(max(0.0, cpu_of(p) - self._start.get(p, 0.0)) for p in self._pids())


# -- the relay -------------------------------------------------------------------------------


class Relay:
    """Postfix smtpd offering CHUNKING, and (receiver `sink`) a C smtp-sink behind it."""

    def __init__(self, receiver: str) -> None:
        from tests.postfix import SMTP_SINK, Postfix, wait_listening

        self.receiver = receiver
        self.sink: subprocess.Popen[bytes] | None = None
        main: dict[str, str] = {"smtpd_client_connection_count_limit": "0"}
        if receiver == "sink":
            sink_port = free_port()
            self.sink = subprocess.Popen([SMTP_SINK, "-u", "nobody", "-c", f"127.0.0.1:{sink_port}", "1000"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_listening(sink_port, lambda: self.sink is not None and self.sink.poll() is None)
            # speed_adjust: smtpd takes the whole message before it talks to the filter (fewer
            # loopback round trips per message; measured 1,420 against 1,220 msg/s under load).
            main.update(smtpd_proxy_filter=f"127.0.0.1:{sink_port}", smtpd_proxy_options="speed_adjust")
        elif receiver == "hold":
            main["smtpd_recipient_restrictions"] = "check_client_access static:HOLD, permit_mynetworks, reject"
        else:
            raise ValueError(f"receiver must be sink or hold, got {receiver!r}")
        self.pf = Postfix(main, refusals=False)
        self.port = self.pf.port

    def pids(self) -> list[int]:
        try:
            master = int((self.pf.root / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return children(master) + ([self.sink.pid] if self.sink else [])

    def clear(self) -> None:
        if self.receiver == "hold":
            self.pf.postsuper("-d", "ALL", "hold")

    def close(self) -> None:
        self.pf.stop()
        if self.sink is not None:
            self.sink.terminate()
            self.sink.wait(10)


@contextmanager
def delay_proxy(upstream: int, rtt_ms: float) -> Iterator[tuple[int, int]]:
    """bench/wan.py's delay proxy, in its own process; yields its port and pid."""
    from tests.postfix import wait_listening

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.wan", "proxy", str(port), str(upstream),
                             str(rtt_ms / 2000.0)], cwd=ROOT)
    try:
        wait_listening(port, lambda: proc.poll() is None)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


# -- the senders ----------------------------------------------------------------------------


def once(base: Path, port: int, conns: int, n: int, chunking: str) -> tuple[float, float]:
    """`mailmand --once` as a command (see common.once_command); msg/s and its CPU seconds."""
    from mailmand.client import Client

    with workdir(base) as root:
        cfg = config(root, port, conns, batch=100)
        client = Client(cfg)
        for record in records(n):
            client.put(record)
        client.close()
        conf = write_yaml(cfg, root / "mailmand.yaml")
        with conf.open("a") as f:
            f.write(f"      chunking: {chunking}\n")  # the smtp section is the file's last
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mailmand", "--once", "-c", str(conf)],
                              capture_output=True, text=True, timeout=600)
        dt = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"mailmand --once exited {done.returncode}: {done.stderr[-2000:]}")
        import sqlite3

        db = sqlite3.connect(cfg.server.database.path)
        sent = db.execute("SELECT count(*) FROM messages WHERE status = 'sent'").fetchone()[0]
        db.close()
        if sent != n:
            raise RuntimeError(f"mailmand sent {sent} of {n}: {done.stderr[-2000:]}")
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return n / dt, cpu


def dispatch_alone(base: Path, port: int, conns: int, n: int) -> tuple[float, float]:
    """`Daemon.once()` on a store already holding `n` due messages; msg/s and CPU seconds."""
    from mailmand.daemon import Daemon

    from .dispatch import make_store

    with workdir(base) as root:
        cfg = config(root, port, conns, batch=100)
        make_store(cfg.server.database.path, n)
        daemon = Daemon(cfg)
        try:
            c0, t0 = time.process_time(), time.perf_counter()
            result = daemon.once()
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            daemon.close()
        if result.dispatched.sent != n:
            raise RuntimeError(f"dispatch sent {result.dispatched.sent} of {n}")
        return n / dt, cpu


def smtp_layer(port: int, conns: int, n: int, window: int) -> tuple[float, float]:
    """The relay pool alone (no store), BDAT with `window` messages; msg/s and CPU seconds."""
    from mailmand.config import SmtpConfig
    from mailmand.smtp import Envelope, Relay
    from mailmand.smtp.protocol import Window

    envs = [Envelope(r.id, r.mail_from, tuple(r.rcpt_to), r.raw) for r in records(n)]
    relay = Relay(SmtpConfig(host="127.0.0.1", port=port, connections=conns, helo="bench.local"),
                  window=Window(messages=window))
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        sent = sum(r.kind == "sent" for group in relay.send_grouped(envs) for r in group)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        relay.close()
    if sent != n:
        raise RuntimeError(f"window {window}: sent {sent} of {n}")
    return n / dt, cpu


# -- the scenario -------------------------------------------------------------------------------


def measure(fn: Callable[[], tuple[float, float]], relay: Relay, proxy_pid: int, n: int) -> dict[str, float]:
    """One run of a sender: msg/s, and CPU µs per message of it, the relay and the proxy."""
    relay_cpu, proxy_cpu = Meter(relay.pids), Meter(lambda: [proxy_pid])
    relay_cpu.start()
    proxy_cpu.start()
    rate, own = fn()
    out = {"msg_s": rate, "cpu_us": own / n * 1e6, "relay_cpu_us": relay_cpu.stop() / n * 1e6,
           "proxy_cpu_us": proxy_cpu.stop() / n * 1e6}
    relay.clear()
    return out


def run(base: Path, quick: bool, receiver: str = "sink", connections: tuple[int, ...] = (20, 4),
        sweep: bool = True, rounds: int | None = None) -> dict[str, Any]:
    from tests.postfix import missing

    if not have_smtp_sink() or missing():
        return {"skipped": missing() or "no smtp-sink"}
    sizes = {20: 400, 4: 200} if quick else {20: 2000, 4: 500}
    rounds = rounds or (1 if quick else 3)
    relay = Relay(receiver)
    rows, windows = [], []
    load = [os.getloadavg()]
    try:
        with delay_proxy(relay.port, RTT_MS) as (proxy, proxy_pid):
            for conns in connections:
                n = sizes.get(conns, 500)
                senders: dict[str, Callable[[], tuple[float, float]]] = {
                    "mailmand": lambda c=conns, n=n: once(base, proxy, c, n, "auto"),
                    "mailmand_data": lambda c=conns, n=n: once(base, proxy, c, n, "off"),
                    "dispatch": lambda c=conns, n=n: dispatch_alone(base, proxy, c, n),
                    "smtplib": lambda c=conns, n=n: (smtplib_loop(proxy, c, n), 0.0),
                }
                sat = Satellite(proxy, conns)
                senders["postfix"] = lambda n=n, sat=sat: (sat.run(n), 0.0)
                # Warm the relay up first (its smtpd and cleanup processes, its queue
                # directories): a cold first run cost a third of its rate with `hold`.
                smtp_layer(proxy, conns, 10 * conns, Window().messages)
                relay.clear()
                got: dict[str, list[dict[str, float]]] = {k: [] for k in senders}
                try:
                    for _ in range(rounds):
                        for name, fn in senders.items():
                            got[name].append(measure(fn, relay, proxy_pid, n))
                            load.append(os.getloadavg())
                finally:
                    sat.close()
                row: dict[str, Any] = {"rtt_ms": RTT_MS, "connections": conns, "messages": n}
                for name, runs in got.items():
                    series = Series([r["msg_s"] for r in runs])
                    row[name] = {**series.summary(),
                                 **{k: Series([r[k] for r in runs]).median for k in runs[0] if k != "msg_s"}}
                for name in ("mailmand", "mailmand_data", "dispatch"):
                    row[f"{name}_vs_postfix"] = row[name]["median"] / row["postfix"]["median"]
                    row[f"{name}_vs_smtplib"] = row[name]["median"] / row["smtplib"]["median"]
                row["target_vs_postfix"] = TARGETS.get(conns)
                row["window_ceiling_msg_s"] = conns * Window().messages / (RTT_MS / 1000)
                print(f"  {conns} conns: mailmand {row['mailmand']['median']:.0f} "
                      f"(DATA {row['mailmand_data']['median']:.0f}, "
                      f"dispatch alone {row['dispatch']['median']:.0f}), smtplib {row['smtplib']['median']:.0f}, "
                      f"postfix {row['postfix']['median']:.0f} msg/s; --once / Postfix "
                      f"{row['mailmand_vs_postfix']:.2f}", file=sys.stderr, flush=True)
                rows.append(row)
            if sweep:
                for conns in connections:
                    n = 1000 if quick else 2000  # enough round trips per connection for the largest window
                    for window in WINDOWS:
                        r = measure(lambda c=conns, n=n, w=window: smtp_layer(proxy, c, n, w), relay, proxy_pid, n)
                        windows.append({"connections": conns, "window": window, **r})
                        print(f"  SMTP layer alone, {conns} conns, window {window}: {r['msg_s']:.0f} msg/s, "
                              f"{r['cpu_us']:.0f} µs CPU/msg", file=sys.stderr, flush=True)
    finally:
        relay.close()
    return {"receiver": receiver, "rows": rows, "windows": windows,
            "load_average": {"min": min(x[0] for x in load), "max": max(x[0] for x in load)},
            "targets_vs_postfix": TARGETS}


def report(results: dict[str, Any]) -> str:
    if "skipped" in results:
        return f"## chunking: skipped ({results['skipped']})"
    la = results["load_average"]
    out = [f"## chunking (Postfix smtpd offering CHUNKING, receiver `{results['receiver']}`, RTT {RTT_MS} ms; "
           f"msg/s, median of rounds; load average {la['min']:.1f}–{la['max']:.1f})",
           "| connections | --once BDAT | --once DATA | dispatch alone | Postfix satellite | bare smtplib "
           "| --once / Postfix (target) | --once / smtplib | dispatch / Postfix |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        out.append(f"| {r['connections']} | {r['mailmand']['median']:.0f} | {r['mailmand_data']['median']:.0f} "
                   f"| {r['dispatch']['median']:.0f} | {r['postfix']['median']:.0f} | {r['smtplib']['median']:.0f} "
                   f"| **{r['mailmand_vs_postfix']:.2f}** ({r['target_vs_postfix']}) | {r['mailmand_vs_smtplib']:.2f} "
                   f"| {r['dispatch_vs_postfix']:.2f} |")
    out += ["", "CPU µs per message (sender / relay / delay proxy):", ""]
    for r in results["rows"]:
        out.append(f"- {r['connections']} connections: " + "; ".join(
            f"{k} {r[k]['cpu_us']:.0f} / {r[k]['relay_cpu_us']:.0f} / {r[k]['proxy_cpu_us']:.0f}"
            for k in ("mailmand", "mailmand_data", "dispatch", "smtplib", "postfix")))
    if results["windows"]:
        out += ["", "| connections | window | SMTP layer msg/s | CPU µs/msg | relay µs/msg | proxy µs/msg |",
                "|---|---|---|---|---|---|"]
        for w in results["windows"]:
            out.append(f"| {w['connections']} | {w['window']} | {w['msg_s']:.0f} | {w['cpu_us']:.0f} "
                       f"| {w['relay_cpu_us']:.0f} | {w['proxy_cpu_us']:.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chunking", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="400/200 messages, one round")
    p.add_argument("--receiver", choices=("sink", "hold"), default="sink")
    p.add_argument("--connections", default="20,4", help="comma-separated connection counts")
    p.add_argument("--rounds", type=int, help="rounds of each sender (default 3, or 1 with --quick)")
    p.add_argument("--no-sweep", action="store_true", help="skip the window sweep of the SMTP layer")
    p.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="scratch directory on a real disk")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chunking.json")
    args = p.parse_args(argv)
    conns = tuple(int(c) for c in args.connections.split(","))
    results = {"env": environment(), "quick": args.quick,
               **run(args.dir, args.quick, args.receiver, conns, not args.no_sweep, args.rounds)}
    print(report(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
