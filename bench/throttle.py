"""Scenario: the adaptive throttle against a relay with a hidden ceiling (targets:
delivered ≥ 90% of the ceiling, < 5% of attempts refused).

The relay (aiosmtpd, in a process of its own) takes at most `ceiling` messages
in any one second and answers a MAIL past it `421 4.7.0 too many messages`,
closing the session, as SES and Gmail do. mailmand is given no rate, 4
connections, and a queue of mail due at once: it must find the ceiling from
the relay's replies. In the same run, the baseline: a daemon told the ceiling
(`rate` at 98% of it), as an operator who knew it would configure. Both are
read from the relay's own log of what it accepted and refused: the delivered
rate over the whole run (the first burst and the convergence included), over
its second half (the steady state), and the share of attempts refused."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from mailmand.config import replace
from mailmand.daemon import Daemon

from .common import config, free_port, records, workdir

RELAY = r"""
import asyncio, json, signal, sys, time
from collections import deque
from aiosmtpd.controller import Controller

port, ceiling, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
accepted, refused, window = [], [], deque()

class Handler:
    async def handle_MAIL(self, server, session, envelope, address, options):
        now = time.monotonic()
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= ceiling:
            refused.append(now)
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.7.0 too many messages, slow down"
        window.append(now)
        accepted.append(now)
        envelope.mail_from = address
        return "250 2.1.0 OK"

    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 OK queued"

def dump(*_):
    with open(out, "w") as f:
        json.dump({"accepted": accepted, "refused": refused}, f)
    sys.exit(0)

signal.signal(signal.SIGTERM, dump)
c = Controller(Handler(), hostname="127.0.0.1", port=port)
c.start()
print("ready", flush=True)
signal.pause()
"""


def _relay(port: int, ceiling: float, out: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", RELAY, str(port), str(ceiling), str(out)],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError("the ceiling relay did not start")
    return proc


def _round(base: Path, ceiling: float, n: int, rate: float | None) -> dict[str, Any]:
    port = free_port()
    with workdir(base) as root:
        log = root / "relay.json"
        relay = _relay(port, ceiling, log)
        try:
            cfg = config(root, port, 4)
            cfg = replace(cfg, server=replace(cfg.server, smtp=replace(cfg.server.smtp, rate=rate)))
            daemon = Daemon(cfg)
            try:
                due = records(n)
                for i in range(0, n, 500):
                    daemon.store.insert(due[i:i + 500])
                daemon.once()  # one pass: what the relay refused is deferred, not retried in it
                state = daemon.dispatcher.relay_states()[0]
            finally:
                daemon.close()
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.wait(10)
        seen = json.loads(log.read_text())
    accepted, refused = seen["accepted"], seen["refused"]
    span = accepted[-1] - accepted[0]
    half = accepted[len(accepted) // 2:]
    return {"accepted": len(accepted), "refused": len(refused),
            "refused_share": len(refused) / (len(accepted) + len(refused)),
            "msg_s": (len(accepted) - 1) / span if span > 0 else 0.0,
            "steady_msg_s": (len(half) - 1) / (half[-1] - half[0]) if len(half) > 1 else 0.0,
            "final_rate_limit": state["rate"], "final_connections": state["connections"],
            "seconds": span}


def run(base: Path, quick: bool) -> dict[str, Any]:
    ceiling = 50.0
    n, rounds = (750, 1) if quick else (2000, 3)
    adaptive, oracle = [], []
    for _ in range(rounds):  # interleaved: the machine's load falls on both alike
        adaptive.append(_round(base, ceiling, n, None))
        oracle.append(_round(base, ceiling, n, ceiling * 0.98))

    def med(runs: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    return {"ceiling": ceiling, "messages": n, "rounds": rounds, "adaptive": adaptive, "configured": oracle,
            "adaptive_share_of_ceiling": med(adaptive, "msg_s") / ceiling,
            "adaptive_steady_share_of_ceiling": med(adaptive, "steady_msg_s") / ceiling,
            "adaptive_refused_share": med(adaptive, "refused_share"),
            "configured_share_of_ceiling": med(oracle, "msg_s") / ceiling,
            "configured_refused_share": med(oracle, "refused_share"),
            "adaptive_vs_configured": med(adaptive, "msg_s") / med(oracle, "msg_s")}


def report(r: dict[str, Any]) -> str:
    def line(name: str, runs: list[dict[str, Any]]) -> str:
        return (f"| {name} | " + ", ".join(f"{x['msg_s']:.1f}" for x in runs) + " | "
                + ", ".join(f"{x['steady_msg_s']:.1f}" for x in runs) + " | "
                + ", ".join(f"{x['refused']}/{x['accepted'] + x['refused']}" for x in runs) + " |")

    return "\n".join([
        f"## throttle (a relay that refuses past {r['ceiling']:g} msg/s; {r['messages']} messages a round; "
        "targets ≥ 0.90 of the ceiling, < 5% refused)",
        "| daemon | delivered msg/s (whole run) | second half | refused/attempts |", "|---|---|---|---|",
        line("adaptive (no rate given)", r["adaptive"]),
        line(f"told the ceiling (rate {r['ceiling'] * 0.98:g}/s)", r["configured"]),
        f"\nadaptive: **{r['adaptive_share_of_ceiling']:.2f}** of the ceiling over the whole run "
        f"({r['adaptive_steady_share_of_ceiling']:.2f} in its second half), "
        f"**{100 * r['adaptive_refused_share']:.1f}%** of attempts refused; "
        f"{r['adaptive_vs_configured']:.2f} of a daemon told the ceiling "
        f"({r['configured_share_of_ceiling']:.2f} of it, {100 * r['configured_refused_share']:.1f}% refused)"])
