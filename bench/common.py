"""Shared by every scenario: A/B timing, sinks, configurations, test messages."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailmand.client import Client
from mailmand.config import Config, DatabaseConfig, QueueConfig, ServerConfig, SmtpConfig
from mailmand.message import Email, Record, new_id

SENDER = "bench@example.com"
RCPT = "sink@example.com"
BODY = ("The quick brown fox jumps over the lazy dog. " * 40)[:1800]  # ~2 KB on the wire


def email(i: int = 0) -> Email:
    """The benchmark message: one sender, one recipient, ~2 KB of text."""
    return Email(sender=SENDER, to=RCPT, subject=f"bench message {i}", text=BODY)


def records(n: int) -> list[Record]:
    """`n` queued records of the benchmark message (composed once, new ids)."""
    base = email().to_record(ServerConfig().max_message_size)
    return [base.replace(id=new_id()) for _ in range(n)]


def once_command(base: Path, port: int, conns: int, n: int) -> float:
    """Fill a fresh spool with `n` messages, then time `mailmand --once` as a
    command, whole: process start, ingest, dispatch, exit. Checks the store
    holds `n` sent messages afterwards."""
    with workdir(base) as root:
        cfg = config(root, port, conns, batch=100)
        client = Client(cfg)
        for record in records(n):
            client.put(record)
        client.close()
        conf = write_yaml(cfg, root / "mailmand.yaml")
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mailmand", "--once", "-c", str(conf)],
                              capture_output=True, text=True, timeout=600)
        dt = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"mailmand --once exited {done.returncode}: {done.stderr[-2000:]}")
        db = sqlite3.connect(cfg.server.database.path)
        sent = db.execute("SELECT count(*) FROM messages WHERE status = 'sent'").fetchone()[0]
        db.close()
        if sent != n:
            raise RuntimeError(f"mailmand sent {sent} of {n}: {done.stdout} {done.stderr[-2000:]}")
        return n / dt


# -- timing ---------------------------------------------------------------------


@dataclass
class Series:
    """Rates (or times) from several rounds of one contender."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def summary(self) -> dict[str, float]:
        return {"median": self.median, "min": min(self.values), "max": max(self.values),
                "rounds": len(self.values)}


def rate(n: int, fn: Callable[[], Any]) -> float:
    """Run `fn` (which handles `n` messages) once; messages per second."""
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def ab(rounds: int, a: Callable[[], float], b: Callable[[], float]) -> tuple[Series, Series]:
    """Alternate A and B (ABBA…, so neither always goes first), `rounds` each."""
    sa, sb = Series(), Series()
    for r in range(rounds):
        pair = ((a, sa), (b, sb)) if r % 2 == 0 else ((b, sb), (a, sa))
        for fn, series in pair:
            series.values.append(fn())
    return sa, sb


def row(name: str, a: Series, b: Series, unit: str = "msg/s") -> dict[str, Any]:
    """One comparison: mailmand (a) against its baseline (b); ratio of medians."""
    return {"name": name, "unit": unit, "mailmand": a.summary(), "baseline": b.summary(),
            "ratio": a.median / b.median}


# -- places, configurations ----------------------------------------------------


@contextmanager
def workdir(base: Path | None = None) -> Iterator[Path]:
    """A scratch directory on the real disk (so fsync costs what it costs)."""
    path = Path(tempfile.mkdtemp(prefix="mailmand-bench-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def config(root: Path, port: int = 9, connections: int = 4, **server: Any) -> Config:
    return Config(
        queue=QueueConfig(path=root / "spool"),
        server=ServerConfig(database=DatabaseConfig(path=root / "mailmand.db"),
                            smtp=SmtpConfig(host="127.0.0.1", port=port, tls="none",
                                            connections=connections, timeout=10.0),
                            **server),
    )


def write_yaml(cfg: Config, path: Path) -> Path:
    s = cfg.server
    path.write_text(
        "email:\n"
        f"  queue:\n    default:\n      engine: spool\n      path: {cfg.queue.path}\n"
        "  server:\n"
        f"    database:\n      engine: sqlite3\n      path: {s.database.path}\n"
        f"    batch: {s.batch}\n    interval: {s.interval:g}s\n"
        f"    smtp:\n      host: {s.smtp.host}\n      port: {s.smtp.port}\n      tls: none\n"
        f"      connections: {s.smtp.connections}\n"
    )
    return path


# -- SMTP sinks (each in its own process, so it never shares our GIL) -------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sink exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.recv(100)
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sink on port {port} never answered")


SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


@contextmanager
def sink(kind: str) -> Iterator[int]:
    """Start a loopback SMTP sink ("smtp-sink" or "aiosmtpd"); yields its port."""
    port = free_port()
    if kind == "smtp-sink":
        cmd = [SMTP_SINK, "-u", "nobody", "-c", f"127.0.0.1:{port}", "1000"]
    elif kind == "aiosmtpd":
        cmd = [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
               "-c", "aiosmtpd.handlers.Sink"]
    else:
        raise ValueError(kind)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def have_smtp_sink() -> bool:
    return os.access(SMTP_SINK, os.X_OK)


# -- the machine -------------------------------------------------------------------


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    import sqlite3

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or None
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
                    "memory_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20},
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "packages": {p: _version(p) for p in ("mailmand", "persist-queue", "aiosmtpd", "APScheduler",
                                               "watchdog", "matplotlib")},
        "mailmand_commit": commit,
        "smtp_sink": SMTP_SINK if have_smtp_sink() else None,
    }


# -- PostgreSQL (the store of many daemons) ----------------------------------------

POSTGRES_DSN = os.environ.get("MAILMAND_BENCH_POSTGRES_DSN",
                              os.environ.get("MAILMAND_TEST_POSTGRES_DSN",
                                             "postgresql://postgres@127.0.0.1:5432/postgres"))


def have_postgres() -> bool:
    try:
        import psycopg

        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
        return True
    except Exception:  # no driver, or no server: the PostgreSQL rows are left out
        return False


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh database for one measurement; yields its dsn and drops it after."""
    import uuid

    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"mailmand_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(**{**conninfo_to_dict(POSTGRES_DSN), "dbname": name})
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_config(root: Path, dsn: str, port: int = 9, connections: int = 4, **server: Any) -> Config:
    from mailmand.config import replace

    cfg = config(root, port, connections, **server)
    return replace(cfg, server=replace(cfg.server, database=DatabaseConfig(engine="postgres", dsn=dsn)))


def write_pg_yaml(cfg: Config, path: Path) -> Path:
    write_yaml(cfg, path)
    text = path.read_text().replace(
        f"      engine: sqlite3\n      path: {cfg.server.database.path}\n",
        f"      engine: postgres\n      dsn: \"{cfg.server.database.dsn}\"\n")
    path.write_text(text)
    return path
