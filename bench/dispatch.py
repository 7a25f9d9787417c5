"""Scenario 3: dispatch. `Daemon(cfg).once()` over already-ingested due mail,
against a bare smtplib loop with as many reused connections, same sink; and
`mailmand --once` as a command, end to end (spool filled first, then timed
from process start), against the same bare loop."""

from __future__ import annotations

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
from mailmand.stores.model import Status
from mailmand.stores.sqlite import SQLiteStore

from .common import (
    RCPT,
    SENDER,
    ab,
    config,
    email,
    have_postgres,
    have_smtp_sink,
    once_command,
    pg_config,
    pg_database,
    row,
    sink,
    workdir,
)
from .enqueue import MAX_SIZE


def make_store(path: Path, n: int) -> list[bytes]:
    """A store holding `n` due messages, as ingest leaves them; returns their bodies."""
    base = email().to_record(MAX_SIZE, send_after=time.time() - 1)
    records = [base.replace(id=new_id()) for _ in range(n)]
    store = SQLiteStore(path, create=True)
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


def _mailmand_pg(records: list[Any], base: Path, port: int, connections: int) -> float:
    """As `_mailmand`, with the store in a fresh PostgreSQL database."""
    from mailmand.config import DatabaseConfig
    from mailmand.stores.postgres import PostgresStore

    with workdir(base) as root, pg_database() as dsn:
        store = PostgresStore(DatabaseConfig(engine="postgres", dsn=dsn), create=True)
        for i in range(0, len(records), 500):
            store.insert(records[i:i + 500])
        store.close()
        daemon = Daemon(pg_config(root, dsn, port, connections))
        try:
            t0 = time.perf_counter()
            result = daemon.once()
            dt = time.perf_counter() - t0
            counts = daemon.store.counts()
        finally:
            daemon.close()
        if result.dispatched.sent != len(records) or counts[Status.SENT] != len(records):
            raise RuntimeError(f"sent {result.dispatched.sent} of {len(records)}: {result.summary()}")
        return len(records) / dt


def store_engines(base: Path, quick: bool) -> dict[str, Any] | None:
    """Dispatch to smtp-sink at 4 connections: the PostgreSQL store against the SQLite store
    (target ≥ 0.8)."""
    if not (have_postgres() and have_smtp_sink()):
        return None
    n, rounds = (1500, 3) if quick else (5000, 5)
    with workdir(base) as root, sink("smtp-sink") as port:
        template = root / "template.db"
        make_store(template, n)
        base_record = email().to_record(MAX_SIZE, send_after=time.time() - 1)
        records = [base_record.replace(id=new_id()) for _ in range(n)]
        log = root / "daemon.log"
        saved, sys.stderr = sys.stderr, log.open("a")
        try:
            a, b = ab(rounds, lambda: _mailmand_pg(records, base, port, 4),
                      lambda: _mailmand(template, base, port, 4, n, log))
        finally:
            sys.stderr.close()
            sys.stderr = saved
    r = row("dispatch smtp-sink, 4 connections: PostgreSQL store / SQLite store", a, b)
    r.update(sink="smtp-sink", connections=4, messages=n)
    return r


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
    engines = store_engines(base, quick)
    if engines is not None:
        rows.append(engines)
    logging.getLogger().handlers[:] = []
    return {"messages": n, "rows": rows, "log_lines": log_lines,
            "logging": "mailmand.cli.setup_logging('INFO') as the daemon runs it "
                       "(a summary line a minute; each deferral or failure a WARNING), to a file"}
