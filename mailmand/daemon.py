"""Process life: the single-instance lock, signals, hot reload, systemd notify."""

from __future__ import annotations

import errno
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

from . import config as configmod
from .config import Config
from .errors import AlreadyRunning, ConfigError
from .ingest import Ingester, IngestLoop, IngestResult
from .queues import Queue, lock_path, open_queue
from .scheduler import Dispatcher, DispatchScheduler, RunResult, owner_id
from .stores import Store, open_store

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
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as exc:  # a full disk: the flock is what counts, the pid is a courtesy
            if exc.errno != errno.ENOSPC:
                os.close(fd)
                raise
            log.warning("%s: no space to record the pid; the lock holds all the same", self.path)
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
        queue_lock = lock_path(cfg.queue, LOCK_FILE)  # None: a queue many daemons share (Redis)
        self.lock = InstanceLock(queue_lock, f"the spool {cfg.queue.path}") if queue_lock else None
        if self.lock:
            self.lock.acquire()
        self.store_lock = InstanceLock(db.with_name(f"{db.name}.lock"), f"the store {db}")
        try:
            self.store_lock.acquire()
        except BaseException:
            if self.lock:
                self.lock.release()
            raise
        self.owner = owner_id()  # this daemon's id: its leases in the store, its consumer name on a shared queue
        try:
            # exclusive: the store lock makes this the only daemon on the queue too.
            self.queue: Queue = open_queue(cfg.queue, daemon=True, consumer=self.owner, lease=cfg.server.lease,
                                           exclusive=True)
            self.queue.check()
            self.store: Store = open_store(cfg.server.database)
        except BaseException:
            self.store_lock.release()
            if self.lock:
                self.lock.release()
            raise
        # We hold the lock, so nobody else is sending: take back at once
        # everything a dead predecessor held, without waiting for leases.
        resumed = self.queue.resume()
        released = self.store.release(None)
        if resumed or released:
            log.info("took back %d queue item(s) and %d claimed message(s) from a previous run",
                     resumed, released)
        self.dispatcher = Dispatcher(self.store, cfg.server, owner=self.owner)
        self.ingester = Ingester(self.queue, self.store, max_recipients=cfg.server.max_recipients)
        self._stop = False
        self._reload = False

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
        sched = DispatchScheduler(self.dispatcher, self.cfg.server.retention)
        self.ingester.on_stored = sched.wake_at
        loop = IngestLoop(self.ingester)
        watcher = None
        if self.cfg.source is not None:
            watcher = configmod.ConfigWatcher(self.cfg.source, self._request_reload)
            watcher.start()
        loop.start()
        sched.start()
        log.info("mailmand running: queue %s, store %s, relay %s", self.queue,
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
            sched.shutdown()  # sets the stop flag; the batch in flight finishes, the rest is released
            loop.stop()
            self.close()
        log.info("stopped")
        return 0

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
        logging.getLogger("mailmand").setLevel(server.log_level.upper())
        log.info("configuration reloaded from %s", self.cfg.source)
        return True

    def close(self) -> None:
        self.dispatcher.close()
        self.queue.close()
        self.store.close()
        self.store_lock.release()
        if self.lock:
            self.lock.release()


def _watchdog_interval() -> float:
    usec = os.environ.get("WATCHDOG_USEC")
    # In the one-file binary, systemd's main PID is PyInstaller's bootloader, our parent.
    ours = {str(os.getpid())} | ({str(os.getppid())} if getattr(sys, "frozen", False) else set())
    if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) not in ours:
        return 0.0
    return int(usec) / 2e6  # ping at half the timeout, as sd_watchdog_enabled(3) advises
