"""Scenario: the HTTP API's enqueue against `Client.enqueue`, in the same run.

One real `mailmand run` with `email.server.web` on (spool queue, SQLite
store), ingesting what arrives: its normal life. The messages are sent an
hour later, so no delivery runs meanwhile; each round waits until the daemon
has stored every message of the one before.

- API: CLIENTS threads, each with one keep-alive connection (http.client:
  the lightest client the standard library has, so that the client's own cost
  stays small beside the server's), POST /api/v1/messages with the benchmark
  message as JSON and the Bearer token; every answer must be 202.
- Baseline: one thread in this process calling `Client.enqueue(Email(...))`
  on the same spool, composing each message as an app does.

Both answer only once the message is durable. Rounds alternate (ABBA).
Reported: msg/s of each (median, min–max), API / Client.enqueue (target >= 0.5),
and the 1-minute load average around the run (the machine is shared).

Then the reads on a big store (1,000,000 messages; --quick 100,000, made as
bench/scale.py makes its store): list pages (the first, one from the middle
by cursor, by status, by a recipient's domain, by time), one message, stats,
and the dashboard's `/`, each timed through a running daemon's web server.

    python -m bench.web [--quick] [--rounds N] [--messages N] [--clients N]
    python -m bench --only web [--quick]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import BODY, RCPT, SENDER, ab, config, email, environment, rate, row, workdir, write_yaml

if TYPE_CHECKING:
    from mailmand.config import Config

CLIENTS = 8
TARGET = 0.5  # the API at least this x Client.enqueue
TOKEN = "bench-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent
LATER = "1h"  # no delivery during the run


class Daemon:
    """`mailmand run` with the web server on a free port."""

    def __init__(self, root: Path, prepare: Callable[[Config], object] | None = None) -> None:
        from .common import free_port

        self.cfg = config(root)
        if prepare is not None:  # e.g. a big store, before the daemon opens it
            prepare(self.cfg)
        self.port = free_port()
        secret = root / "web.token"
        secret.write_text(TOKEN)
        secret.chmod(0o600)
        conf = write_yaml(self.cfg, root / "mailmand.yaml")
        with conf.open("a") as f:  # the smtp section is the file's last: this goes back to `server`
            f.write(f"    web:\n      listen: 127.0.0.1:{self.port}\n      token-file: {secret}\n")
        self.log = (root / "daemon.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "mailmand", "run", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=self.log, cwd=ROOT)
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the daemon's web server never answered")
            time.sleep(0.05)

    def stored(self) -> int:
        from mailmand.stores import open_store

        store = open_store(self.cfg.server.database)
        try:
            return sum(store.counts().values())
        finally:
            store.close()

    def drained(self, total: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.stored() < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon stored {self.stored()} of {total} in {timeout:g}s")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


def post_all(port: int, n: int, clients: int) -> None:
    """`n` POSTs over `clients` keep-alive connections at once; raises unless each is a 202."""
    body = json.dumps({"from": SENDER, "to": RCPT, "subject": "bench message", "text": BODY,
                       "send_in": LATER}).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    counts = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    failures: list[str] = []

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for _ in range(k):
                conn.request("POST", "/api/v1/messages", body, headers)
                r = conn.getresponse()
                answer = r.read()
                if r.status != 202:
                    failures.append(f"{r.status} {answer[:200]!r}")
                    return
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in counts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"the API refused: {failures[0]}")


PAGE_TIMES = 7  # requests per page; the median is reported


def page_ms(port: int, path: str, times: int = PAGE_TIMES) -> dict[str, float]:
    """Milliseconds to answer `path` (median, min, max of `times`) on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    took = []
    try:
        for _ in range(times):
            t0 = time.perf_counter()
            conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
            r = conn.getresponse()
            r.read()
            took.append((time.perf_counter() - t0) * 1000)
            if r.status != 200:
                raise RuntimeError(f"GET {path}: {r.status}")
    finally:
        conn.close()
    return {"median_ms": statistics.median(took), "min_ms": min(took), "max_ms": max(took)}


def pages_on_big_store(base: Path, n: int) -> dict[str, Any]:
    """The API's reads on a store of `n` messages (30 days of them, recipients over 100
    domains; bench/scale.py's store), through a running daemon's web server."""
    from mailmand.stores.model import Key
    from mailmand.web.api import cursor_of

    from .scale import DAY, generate

    now = time.time()
    loaded: dict[str, float] = {}
    with workdir(base) as root:
        daemon = Daemon(root, prepare=lambda cfg: loaded.setdefault(
            "load_s", generate(cfg.server.database.path, n, now, domains=100)))
        try:
            middle = cursor_of(Key(now - 15 * DAY, ""))
            paths = {
                "list, first page (50)": "/api/v1/messages",
                "list, a page from the middle (cursor)": f"/api/v1/messages?cursor={middle}",
                "list, status=failed": "/api/v1/messages?status=failed",
                "list, status=queued,deferred": "/api/v1/messages?status=queued,deferred",
                "list, to=@d7.example": "/api/v1/messages?to=@d7.example",
                "list, since=1h": "/api/v1/messages?since=1h",
                "one message": f"/api/v1/messages/{n // 2:032x}",
                "stats": "/api/v1/stats",
                "dashboard /": "/",
            }
            times = {name: page_ms(daemon.port, path) for name, path in paths.items()}
        finally:
            daemon.stop()
    return {"messages": n, **loaded, "pages": times}


def run(base: Path, quick: bool, rounds: int | None = None, messages: int | None = None,
        clients: int = CLIENTS) -> dict[str, Any]:
    from mailmand.client import Client

    rounds = rounds or (2 if quick else 4)
    n = messages or (1000 if quick else 3000)
    with workdir(base) as root:
        daemon = Daemon(root)
        client = Client(daemon.cfg)
        total = 0
        load0 = os.getloadavg()[0]
        try:
            def api() -> float:
                nonlocal total
                got = rate(n, lambda: post_all(daemon.port, n, clients))
                total += n
                daemon.drained(total)
                return got

            def enqueue() -> float:
                nonlocal total
                got = rate(n, lambda: [client.send_later(email(i), LATER) for i in range(n)])
                total += n
                daemon.drained(total)
                return got

            post_all(daemon.port, 100, clients)  # warm up both: the spool's table, the server's imports
            [client.send_later(email(i), LATER) for i in range(100)]
            total = 200
            daemon.drained(total)
            a, b = ab(rounds, api, enqueue)
        finally:
            client.close()
            daemon.stop()
        load = (load0 + os.getloadavg()[0]) / 2
    result = row(f"POST /api/v1/messages, {clients} clients vs Client.enqueue, 1 thread", a, b)
    return {"rows": [result], "messages": n, "clients": clients, "rounds": rounds, "target": TARGET,
            "ratio": result["ratio"], "load_average": round(load, 2),
            "big_store": pages_on_big_store(base, 100_000 if quick else 1_000_000)}


def report(results: dict[str, Any]) -> str:
    lines = [f"## web (API enqueue against Client.enqueue; target ≥ {results['target']}; {results['messages']} "
             f"messages a round, {results['rounds']} rounds each, interleaved; load average "
             f"{results['load_average']})",
             "| comparison | API msg/s median (min–max) | Client.enqueue msg/s median (min–max) | ratio |",
             "|---|---|---|---|"]
    for r in results["rows"]:
        a, b = r["mailmand"], r["baseline"]
        lines.append(f"| {r['name']} | {a['median']:.0f} ({a['min']:.0f}–{a['max']:.0f}) "
                     f"| {b['median']:.0f} ({b['min']:.0f}–{b['max']:.0f}) | **{r['ratio']:.2f}** |")
    big = results.get("big_store")
    if big:
        lines += [f"\nreads on a store of {big['messages']:,} messages, through the daemon's web server "
                  f"(ms, median of {PAGE_TIMES}; target < 200):", "| request | median ms (min–max) |", "|---|---|"]
        lines += [f"| {name} | {t['median_ms']:.1f} ({t['min_ms']:.1f}–{t['max_ms']:.1f}) |"
                  for name, t in big["pages"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 rounds of 1,000 messages")
    p.add_argument("--rounds", type=int, help="rounds for each side (default 4; quick 2)")
    p.add_argument("--messages", type=int, help="messages per round (default 3,000; quick 1,000)")
    p.add_argument("--clients", type=int, default=CLIENTS, help=f"HTTP clients at once (default {CLIENTS})")
    p.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="scratch directory on a real disk")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "web.json")
    args = p.parse_args(argv)
    results = {"env": environment(), **run(args.dir, args.quick, args.rounds, args.messages, args.clients)}
    print(report(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
