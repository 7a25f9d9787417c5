"""Scenario: delivery with one webhook configured, against none, in the same run
(target ≥ 0.9). The same store of due mail both ways (every message's `queued`
event pending for the webhook, as a daemon that just ingested them has it),
`Daemon.once()` to smtp-sink at 4 connections; with the webhook, its sender
runs beside dispatch as under `mailmand run`, POSTing the `queued` and then
the `sent` events to a receiver in a process of its own that answers 204.
Events are written either way: what is measured is the webhook's cost. The
daemon's CPU time per message (every thread) is reported too: on a shared
machine it moves less than the rates do."""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mailmand.config import EventsConfig, WebhookConfig
from mailmand.daemon import Daemon
from mailmand.message import new_id
from mailmand.stores.sqlite import SQLiteStore
from mailmand.webhooks import Webhooks, shown

from .common import ab, config, email, have_smtp_sink, row, sink, workdir
from .enqueue import MAX_SIZE

# A receiver as small as an app's endpoint: reads the body, answers 204, keeps the connection.
RECEIVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _template(path: Path, n: int, url: str) -> None:
    """A store of `n` due messages whose `queued` events the webhook at `url` is still to be sent."""
    store = SQLiteStore(path, create=True)
    store.webhook_register(shown(url))  # before the mail: every event of it is the webhook's
    base = email().to_record(MAX_SIZE, send_after=time.time() - 1)
    records = [base.replace(id=new_id()) for _ in range(n)]
    for i in range(0, n, 500):
        store.insert(records[i:i + 500])
    store.close()


def _deliver(template: Path, base: Path, port: int, n: int, hook: WebhookConfig | None,
             drained: list[float], cpu: list[float]) -> float:
    with workdir(base) as root:
        events = EventsConfig(webhooks=(hook,) if hook else ())
        cfg = config(root, port, 4, events=events)
        shutil.copy(template, cfg.server.database.path)
        daemon = Daemon(cfg)
        hooks = Webhooks(daemon.store, events, daemon.id).start()  # as `run` starts it
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            sent = 0
            for _ in range(10):  # a run ends early when commits stall (a loaded disk): the next one goes on
                result = daemon.once()
                sent += result.dispatched.sent
                if sent >= n:
                    break
            dt = time.perf_counter() - t0
            cpu.append((time.process_time() - c0) / n * 1e6)  # the daemon's threads, all of them
            if hook is not None:  # then how long until the webhook has every event
                key = shown(hook.url)
                while daemon.store.webhook_pending(key):
                    time.sleep(0.05)
                drained.append(time.perf_counter() - t0)
        finally:
            hooks.stop()
            daemon.close()
        if sent != n:
            raise RuntimeError(f"sent {sent} of {n}: {result.summary()}")
        return n / dt


def run(base: Path, quick: bool) -> dict[str, Any]:
    if not have_smtp_sink():
        return {"skipped": "smtp-sink (postfix) is not installed"}
    n, rounds = (1500, 3) if quick else (5000, 5)
    hook_port = _free_port()
    url = f"http://127.0.0.1:{hook_port}/mail-events"
    hook = WebhookConfig(url=url, secret="bench-secret", timeout=10.0)
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(hook_port)])
    drained: list[float] = []
    cpu: dict[bool, list[float]] = {True: [], False: []}
    try:
        with workdir(base) as root, sink("smtp-sink") as port:
            template = root / "template.db"
            _template(template, n, url)
            a, b = ab(rounds, lambda: _deliver(template, base, port, n, hook, drained, cpu[True]),
                      lambda: _deliver(template, base, port, n, None, drained, cpu[False]))
    finally:
        receiver.terminate()
        receiver.wait(10)
    r = row("dispatch smtp-sink, 4 connections: one webhook / none", a, b)
    r.update(sink="smtp-sink", connections=4, messages=n, events_per_message=2)
    return {"rows": [r], "messages": n,
            "cpu_us_per_message": {"webhook": statistics.median(cpu[True]), "none": statistics.median(cpu[False])},
            "webhook_drained_s": sorted(drained)[len(drained) // 2],
            "webhook_events_s": 2 * n / sorted(drained)[len(drained) // 2]}
