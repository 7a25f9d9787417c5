"""Scenario 4: enqueue → the relay's 250, one message at a time, on an idle
real daemon (`python -m mailmand run`), interval left at 5 s so any polling
in the path would show."""

from __future__ import annotations

import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from mailmand.client import Client
from mailmand.config import Config

from .common import config, email, free_port, workdir, write_yaml


class _Clock:
    """aiosmtpd handler: notes when each message's DATA ends (the 250 follows at once)."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.at = 0.0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.at = time.perf_counter()
        self.arrived.set()
        return "250 OK"


@contextmanager
def daemon(cfg: Config, root: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `mailmand run` on `cfg`; yields once it logs that it is running."""
    conf = write_yaml(cfg, root / "mailmand.yaml")
    log = root / "daemon.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mailmand", "run", "-c", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while b"mailmand running" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


def _split(db_path: Path) -> dict[str, float]:
    """Where the time goes, from the store: record created → SMTP attempt
    started (compose, put, wake, ingest, schedule), and the SMTP exchange."""
    db = sqlite3.connect(db_path)
    rows = db.execute("SELECT a.at - m.created_at, a.duration FROM attempts a"
                      " JOIN messages m ON m.id = a.message_id ORDER BY a.at").fetchall()[5:]
    db.close()
    return {"p50_created_to_attempt_ms": statistics.median(r[0] for r in rows) * 1000,
            "p50_smtp_ms": statistics.median(r[1] for r in rows) * 1000}


def run(base: Path, quick: bool) -> dict[str, Any]:
    n = 200
    clock = _Clock()
    port = free_port()
    controller = Controller(clock, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with workdir(base) as root:
            cfg = config(root, port, connections=1, interval=5.0)
            client = Client(cfg)
            emails = [email(i) for i in range(n + 5)]
            samples = []
            with daemon(cfg, root):
                for i, e in enumerate(emails):
                    clock.arrived.clear()
                    t0 = time.perf_counter()
                    client.enqueue(e)
                    if not clock.arrived.wait(10):
                        raise RuntimeError(f"message {i} never reached the relay")
                    if i >= 5:  # the first few open the session and warm the caches
                        samples.append((clock.at - t0) * 1000)
                    time.sleep(0.02)  # idle between messages
            client.close()
            split = _split(cfg.server.database.path)
    finally:
        controller.stop()
    samples.sort()
    return {"messages": n, **split, "p50_ms": statistics.median(samples),
            "p99_ms": samples[int(len(samples) * 0.99) - 1], "max_ms": samples[-1],
            "targets_ms": {"p50": 50, "p99": 200}}
