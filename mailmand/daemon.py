"""Process life: the single-instance lock, signals, hot reload, systemd notify."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from . import config as configmod
from .config import Config
from .errors import AlreadyRunning, ConfigError
from .ingest import Ingester, IngestLoop, IngestResult
from .queues import Queue, open_queue
from .scheduler import Dispatcher, DispatchScheduler, RunResult
from .stores import Store, open_store

if TYPE_CHECKING:
    from .metrics import MetricsServer
    from .submission import SubmissionServer

log = logging.getLogger(__name__)

LOCK_FILE = "mailmand.lock"


def notify(state: str) -> bool:
    """sd_notify(3): one datagram to $NOTIFY_SOCKET; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), addr)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
            return False
    return True


class InstanceLock:
    """An flock that makes a daemon the only one on a spool (or a store). The
    kernel drops it when the process dies, so a SIGKILLed daemon never leaves
    a stale lock."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise AlreadyRunning(f"another mailmand daemon (pid {holder}) is already running on {self.what}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class OnceResult:
    ingested: IngestResult
    dispatched: RunResult

    def summary(self) -> str:
        d = self.dispatched
        return (f"ingested {self.ingested.ingested}, sent {d.sent}, deferred {d.deferred}, "
                f"failed {d.failed}, expired {d.expired}")


class Daemon:
    """Opens spool and store under the lock; `once()` or `run()`."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        # One daemon per spool, and per store: the take-over below assumes nobody else sends from either.
        db = cfg.server.database.path
        self.lock = InstanceLock(cfg.queue.path / LOCK_FILE, f"the spool {cfg.queue.path}")
        self.lock.acquire()
        self.store_lock = InstanceLock(db.with_name(f"{db.name}.lock"), f"the store {db}")
        try:
            self.store_lock.acquire()
        except BaseException:
            self.lock.release()
            raise
        try:
            self.queue: Queue = open_queue(cfg.queue, daemon=True)
            self.store: Store = open_store(cfg.server.database)
        except BaseException:
            self.store_lock.release()
            self.lock.release()
            raise
        # We hold the lock, so nobody else is sending: take back at once
        # everything a dead predecessor held, without waiting for leases.
        resumed = self.queue.resume()
        released = self.store.release(None)
        if resumed or released:
            log.info("took back %d spool item(s) and %d claimed message(s) from a previous run",
                     resumed, released)
        self.dispatcher = Dispatcher(self.store, cfg.server)
        self.ingester = Ingester(self.queue, self.store)
        self._stop = False
        self._reload = False
        self.services: list[MetricsServer | SubmissionServer] = []  # what `run` serves besides dispatch

    def once(self, now: float | None = None) -> OnceResult:
        ingested = self.ingester.drain()
        return OnceResult(ingested, self.dispatcher.run_once(now))

    # -- the long-running daemon ----------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Handlers only set flags; the main loop does the work.
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self._start_services()
        sched = DispatchScheduler(self.dispatcher, self.cfg.server.retention)
        self.ingester.on_stored = sched.wake_at
        loop = IngestLoop(self.ingester, self.cfg.queue.path if self.cfg.queue.engine == "spool" else None)
        watcher = None
        if self.cfg.source is not None:
            watcher = configmod.ConfigWatcher(self.cfg.source, self._request_reload)
            watcher.start()
        loop.start()
        sched.start()
        log.info("mailmand running: spool %s, store %s, relay %s", self.cfg.queue.path,
                 self.cfg.server.database.path, self.cfg.server.smtp.relay)
        notify("READY=1")
        watchdog_every = _watchdog_interval()
        last_ping = 0.0
        try:
            while not self._stop:
                time.sleep(0.1)
                if self._reload:
                    self._reload = False
                    notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
                    self.reload(sched)
                    notify("READY=1")
                if watchdog_every and time.monotonic() - last_ping >= watchdog_every:
                    notify("WATCHDOG=1")
                    last_ping = time.monotonic()
        finally:
            notify("STOPPING=1")
            log.info("stopping: finishing messages in flight")
            if watcher is not None:
                watcher.stop()
            self._stop_services()
            sched.shutdown()  # sets the stop flag; the batch in flight finishes, the rest is released
            loop.stop()
            self.close()
        log.info("stopped")
        return 0

    def _start_services(self) -> None:
        """The integration surface, each only when configured: metrics first (it
        installs the observer that dispatch reports to), then the submission listener."""
        server = self.cfg.server
        try:
            if server.metrics is not None:
                from .metrics import MetricsServer

                self.services.append(MetricsServer(server.metrics.listen, self.store, self.queue,
                                                   lambda: self.dispatcher.cfg.interval).start())
            if server.submission is not None:
                from .submission import SubmissionServer

                self.services.append(SubmissionServer(self.cfg).start())
        except BaseException:
            self._stop_services()
            self.close()
            raise

    def _stop_services(self) -> None:
        while self.services:  # the listener first: no new mail while the rest stops
            self.services.pop().stop()

    def stop(self) -> None:
        """Ask `run()` to stop, as SIGTERM does (safe from any thread)."""
        self._stop = True

    def _request_reload(self) -> None:
        self._reload = True

    def reload(self, sched: DispatchScheduler) -> bool:
        """Build, validate, swap; on failure keep the running configuration."""
        try:
            new = configmod.load(self.cfg.source)
        except ConfigError as exc:
            log.error("configuration reload refused, keeping the running one: %s", exc)
            return False
        for key in configmod.restart_required(self.cfg, new):
            log.warning("%s changed: it needs a restart to take effect; keeping the running value", key)
        # Keys that need a restart keep their running values: nothing is half-applied.
        server = configmod.replace(new.server, database=self.cfg.server.database)
        try:
            self.dispatcher.configure(server)
        except Exception as exc:  # e.g. a CA file that is not PEM: the running configuration stays
            log.error("configuration reload refused, keeping the running one: %s", exc)
            return False
        self.cfg = Config(queue=self.cfg.queue, server=server, source=self.cfg.source)
        sched.reschedule(server.interval, server.retention)
        for service in self.services:
            service.configure(self.cfg)
        logging.getLogger("mailmand").setLevel(server.log_level.upper())
        log.info("configuration reloaded from %s", self.cfg.source)
        return True

    def close(self) -> None:
        self.dispatcher.close()
        self.queue.close()
        self.store.close()
        self.store_lock.release()
        self.lock.release()


def _watchdog_interval() -> float:
    usec = os.environ.get("WATCHDOG_USEC")
    # In the one-file binary, systemd's main PID is PyInstaller's bootloader, our parent.
    ours = {str(os.getpid())} | ({str(os.getppid())} if getattr(sys, "frozen", False) else set())
    if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) not in ours:
        return 0.0
    return int(usec) / 2e6  # ping at half the timeout, as sd_watchdog_enabled(3) advises
