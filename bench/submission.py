"""Scenario: SMTP submission. 4 clients submit 2 KB messages over SMTP to the
listener of a real `mailmand run`, against 4 processes calling `Client.enqueue`
directly, with the same daemon running (ingesting and delivering to a sink) on
both sides. Target: the listener at least 0.5 x direct enqueue."""

from __future__ import annotations

import multiprocessing
import os
import smtplib
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mailmand.client import Client

from .common import RCPT, SENDER, ab, config, email, free_port, have_smtp_sink, row, sink, workdir, write_yaml

CLIENTS = 4


class _Daemon:
    """`mailmand run` with the submission listener on, for one round."""

    def __init__(self, root: Path, relay: int) -> None:
        self.cfg = config(root, port=relay)
        self.port = free_port()
        conf = write_yaml(self.cfg, root / "mailmand.yaml")
        with conf.open("a") as f:
            f.write(f"    submission:\n      listen: 127.0.0.1:{self.port}\n")
        self.proc = subprocess.Popen([sys.executable, "-m", "mailmand", "run", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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

    def cpu(self) -> float:
        """Seconds of CPU the daemon used so far (/proc: utime + stime)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def _smtp_child(port: int, raws: list[bytes], start: Any, out: Any) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo()
        start.wait()
        t0 = time.time()
        for raw in raws:
            s.sendmail(SENDER, [RCPT], raw)  # raises unless every reply was 2xx
        out.put((t0, time.time(), len(raws)))


def _enqueue_child(root: Path, n: int, start: Any, out: Any) -> None:
    client = Client(config(root))
    client.put(email().to_record(25 * 2**20))  # open the handle, as a long-lived app has it open
    emails = [email(i) for i in range(n)]
    start.wait()
    t0 = time.time()
    for e in emails:
        client.enqueue(e)  # composes and puts: what an application calls
    out.put((t0, time.time(), n))
    client.close()


# The daemon's CPU per message in each round: the difference between the two kinds
# is what the listener costs, a figure that a loaded machine disturbs less than a rate.
DAEMON_CPU: dict[str, list[float]] = {"smtp": [], "enqueue": []}


def _round(kind: str, base: Path, relay: int, n: int) -> float:
    ctx = multiprocessing.get_context("fork")
    share = n // CLIENTS
    with workdir(base) as root:
        daemon = _Daemon(root, relay)
        try:
            start, out = ctx.Event(), ctx.Queue()
            if kind == "smtp":
                raws = [email(i).build().as_bytes() for i in range(share)]
                children = [ctx.Process(target=_smtp_child, args=(daemon.port, raws, start, out))
                            for _ in range(CLIENTS)]
            else:
                children = [ctx.Process(target=_enqueue_child, args=(root, share, start, out))
                            for _ in range(CLIENTS)]
            for c in children:
                c.start()
            time.sleep(0.5)  # every child is connected or has its queue open
            cpu0 = daemon.cpu()
            start.set()
            got = [out.get(timeout=600) for _ in children]
            for c in children:
                c.join()
            _drained(daemon.cfg, n + CLIENTS * (kind == "enqueue"))  # ingested and sent: the same work on both sides
            DAEMON_CPU[kind].append((daemon.cpu() - cpu0) / n * 1e6)
        finally:
            daemon.stop()
    return sum(k for _, _, k in got) / (max(e for _, e, _ in got) - min(s for s, _, _ in got))


def _drained(cfg: Any, total: int, timeout: float = 300) -> None:
    """Wait until the store holds `total` messages and none is waiting or in flight."""
    from mailmand.stores import Status, open_store

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            store = open_store(cfg.server.database)
        except Exception:
            time.sleep(0.2)
            continue
        try:
            counts = store.counts()
        finally:
            store.close()
        if counts[Status.SENT] + counts[Status.FAILED] >= total:
            return
        time.sleep(0.2)
    raise RuntimeError("the daemon did not deliver everything in time")


def run(base: Path, quick: bool) -> dict[str, Any]:
    n, rounds = (800, 2) if quick else (4000, 5)
    kind = "smtp-sink" if have_smtp_sink() else "aiosmtpd"
    with sink(kind) as relay:
        a, b = ab(rounds, lambda: _round("smtp", base, relay, n), lambda: _round("enqueue", base, relay, n))
    size = len(email().build().as_bytes())
    cpu = {k: statistics.median(v) for k, v in DAEMON_CPU.items()}
    return {"rows": [row(f"submission {CLIENTS} SMTP clients / {CLIENTS} processes Client.enqueue "
                         f"({size} B, target >= 0.5)", a, b)],
            "messages": n, "size_bytes": size, "relay": kind,
            "daemon_cpu_us_per_message": {k: round(v) for k, v in cpu.items()},
            "listener_cpu_us_per_message": round(cpu["smtp"] - cpu["enqueue"])}


__all__ = ["run"]
