"""Scenario 3: dispatch. `Daemon(cfg).once()` over already-ingested due mail,
against a bare smtplib loop with as many reused connections, same sink; and
`mailmand --once` as a command, end to end (spool filled first, then timed
from process start), against the same bare loop."""

from __future__ import annotations

import dataclasses
import logging
import queue
import shutil
import smtplib
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mailmand.cli import setup_logging
from mailmand.daemon import Daemon
from mailmand.message import new_id
from mailmand.stores.sqlite import SQLiteStore

from .common import RCPT, SENDER, ab, config, email, have_smtp_sink, once_command, row, sink, workdir
from .enqueue import MAX_SIZE


def make_store(path: Path, n: int) -> list[bytes]:
    """A store holding `n` due messages, as ingest leaves them; returns their bodies."""
    base = email().to_record(MAX_SIZE, send_after=time.time() - 1)
    records = [dataclasses.replace(base, id=new_id()) for _ in range(n)]
    store = SQLiteStore(path)
    for i in range(0, n, 500):
        store.insert(records[i:i + 500])
    store.close()
    return [r.raw for r in records]


def _mailmand(template: Path, base: Path, port: int, connections: int, n: int, log: Path) -> float:
    with workdir(base) as root:
        cfg = config(root, port, connections)
        shutil.copy(template, cfg.server.database.path)
        daemon = Daemon(cfg)
        # The daemon's own logging (one INFO line per message sent), to a file
        # as under systemd it goes to a pipe.
        saved, sys.stderr = sys.stderr, log.open("a")
        try:
            t0 = time.perf_counter()
            result = daemon.once()
            dt = time.perf_counter() - t0
        finally:
            sys.stderr.close()
            sys.stderr = saved
            daemon.close()
        if result.dispatched.sent != n:
            raise RuntimeError(f"sent {result.dispatched.sent} of {n}: {result.summary()}")
        db = sqlite3.connect(cfg.server.database.path)  # every outcome committed?
        sent = db.execute("SELECT n FROM status_counts WHERE status = 'sent'").fetchone()[0]
        tries = db.execute("SELECT count(*) FROM attempts").fetchone()[0]
        db.close()
        if sent != n or tries != n:
            raise RuntimeError(f"store says sent={sent}, attempts={tries}, expected {n}")
        return n / dt


def _bare(bodies: list[bytes], port: int, connections: int) -> float:
    """The baseline: N threads, each one reused smtplib connection, a shared work queue."""
    work: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    for raw in bodies:
        work.put(raw)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.local", timeout=10)
            while True:
                try:
                    raw = work.get_nowait()
                except queue.Empty:
                    break
                smtp.sendmail(SENDER, [RCPT], raw)
            smtp.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return len(bodies) / dt


def run(base: Path, quick: bool, sinks: tuple[str, ...] | None = None) -> dict[str, Any]:
    n, rounds = (1500, 3) if quick else (5000, 5)
    sinks = sinks or (("smtp-sink",) if have_smtp_sink() else ()) + ("aiosmtpd",)
    setup_logging("INFO")
    rows = []
    with workdir(base) as root:
        template = root / "template.db"
        bodies = make_store(template, n)
        log = root / "daemon.log"
        for kind in sinks:
            with sink(kind) as port:
                for conns in (1, 2, 4):
                    a, b = ab(rounds,
                              lambda c=conns: _mailmand(template, base, port, c, n, log),
                              lambda c=conns: _bare(bodies, port, c))
                    r = row(f"dispatch {kind}, {conns} connection(s): once() / smtplib loop", a, b)
                    r.update(sink=kind, connections=conns)
                    rows.append(r)
                if kind == "smtp-sink":
                    a, b = ab(rounds, lambda: once_command(base, port, 4, n), lambda: _bare(bodies, port, 4))
                    r = row(f"end to end {kind}, 4 connections: mailmand --once command / smtplib loop", a, b)
                    r.update(sink=kind, connections=4, end_to_end=True)
                    rows.append(r)
        log_lines = sum(1 for _ in log.open())
    logging.getLogger().handlers[:] = []
    return {"messages": n, "rows": rows, "log_lines": log_lines,
            "logging": "mailmand.cli.setup_logging('INFO') as the daemon runs it "
                       "(a summary line per run; each deferral or failure a WARNING), to a file"}
