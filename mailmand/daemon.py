"""Process life: the single-instance locks, identity and heartbeat, signals,
hot reload, systemd notify."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from . import config as configmod
from . import stores, systemd
from .config import Config
from .dispatcher import Dispatcher, RunResult, owner_id
from .errors import ConfigError, StoreUnavailable
from .ingest import BATCH, Ingester, IngestLoop, IngestResult
from .locks import InstanceLock
from .queues import DIR_MODE, Queue, lock_path, open_queue
from .repeats import Repeats
from .stores import DaemonInfo, Store, open_store
from .version import __version__

if TYPE_CHECKING:
    from .metrics import MetricsServer
    from .scheduler import DispatchScheduler
    from .submission import SubmissionServer
    from .web.server import WebServer
    from .webhooks import Webhooks

log = logging.getLogger(__name__)

STORE_DIR_MODE = 0o700  # the lock may be the first thing in a new store directory: the store's own mode
STORE_WAIT_MAX = 30.0  # seconds between tries for a store that cannot be reached at start
STORE_TRY_MARGIN = 60.0  # seconds a try to open the store may take (a connect timeout), at most


@dataclass
class OnceResult:
    ingested: IngestResult
    dispatched: RunResult

    def summary(self) -> str:
        d = self.dispatched
        return (f"ingested {self.ingested.ingested}, sent {d.sent}, deferred {d.deferred}, "
                f"failed {d.failed}, expired {d.expired}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a predecessor with our pid (a container restarted) is not us
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Daemon:
    """Opens the spool under its lock at once, and the store on first use
    (`once()`, or `run()`, which waits for a store it cannot reach yet)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.engine = stores.engine(cfg.server.database)  # refused here, before any file is made
        self.id = owner_id()  # this daemon's id: its leases in the store, its consumer name on a shared queue
        self.started_at = time.time()
        queue_lock = lock_path(cfg.queue)  # None: a queue many daemons share
        # The lock may be the first thing in a new spool: the spool's own mode (setgid, group-writable).
        self.lock = InstanceLock(queue_lock, f"the spool {cfg.queue.path}", dir_mode=DIR_MODE) \
            if queue_lock else None
        if self.lock:
            self.lock.acquire()
        try:
            # exclusive: a single-instance store (its lock file) makes this the only daemon on the queue
            # too, so at start it takes back everything left taken without waiting for the lease.
            self.queue: Queue = open_queue(cfg.queue, daemon=True, consumer=self.id, lease=cfg.server.lease,
                                           exclusive=self.engine.lock(cfg.server.database) is not None)
            self.queue.check()
        except BaseException:
            if self.lock:
                self.lock.discard()
            raise
        self.store_lock: InstanceLock | None = None
        self._store: Store | None = None
        self._dispatcher: Dispatcher | None = None
        self._ingester: Ingester | None = None
        self._watch: stores.model.Watch | None = None
        self._ingest_loop: IngestLoop | None = None
        self._open_lock = threading.Lock()
        self._stop = False
        self._reload = False
        self._poke = False  # SIGUSR1 (`mailmand flush`): dispatch now
        # what `run` serves besides dispatch
        self.services: list[MetricsServer | SubmissionServer | Webhooks | WebServer] = []

    # -- the store, opened on first use ------------------------------------------

    @property
    def store(self) -> Store:
        self._open()
        assert self._store is not None
        return self._store

    @property
    def dispatcher(self) -> Dispatcher:
        self._open()
        assert self._dispatcher is not None
        return self._dispatcher

    @property
    def ingester(self) -> Ingester:
        self._open()
        assert self._ingester is not None
        return self._ingester

    def _open(self) -> None:
        with self._open_lock:  # `run()` and a thread asking for `store` may come together
            if self._store is None:
                self._open_store()

    def _open_store(self) -> None:
        db = self.cfg.server.database
        lock_path = self.engine.lock(db)
        if lock_path is not None and self.store_lock is None:
            # One daemon per SQLite store: the take-over below relies on it.
            self.store_lock = InstanceLock(lock_path, f"the store {lock_path.with_suffix('')}",
                                           dir_mode=STORE_DIR_MODE)
            self.store_lock.acquire()
        try:
            store = open_store(db, create=True)
        except StoreUnavailable:
            raise  # the lock stays: `run()` tries again
        except BaseException:
            if self.store_lock is not None:
                self.store_lock.discard()
                self.store_lock = None
            raise
        self._store = store
        self._take_over(store)
        self._dispatcher = Dispatcher(store, self.cfg.server, owner=self.id)
        self._ingester = Ingester(self.queue, store, max_recipients=self.cfg.server.max_recipients)

    def _take_over(self, store: Store) -> None:
        """Take back at once what a dead predecessor held. With a single-instance
        store, every lease (we hold its lock); with a shared one, only the leases of
        daemons this one provably replaces: same host and spool (whose lock we now
        hold), and a pid no longer running. Others' leases run out and are swept."""
        me = DaemonInfo(self.id, socket.gethostname(), os.getpid(), __version__, self.started_at,
                        time.time(), str(self.cfg.queue.path))
        released = 0
        if store.single_instance:
            released = store.take_over(None)
            dead = [d for d in store.daemons() if d.id != self.id]
        else:
            dead = [d for d in store.daemons() if d.host == me.host and d.spool == me.spool
                    and d.id != self.id and not _pid_alive(d.pid)]
            for d in dead:
                released += store.take_over(d.id)
        for d in dead:
            store.unregister(d.id)
        store.register(me)
        # On a shared queue, the consumers of daemons that stopped (or whose heartbeat is
        # older than the lease) go, so that `status` lists only the live ones; what they
        # left pending is taken over first.
        now = time.time()
        live = {d.id for d in store.daemons() if d.heartbeat_at >= now - self.cfg.server.lease}
        forgotten = self.queue.forget_consumers(live)
        if forgotten:
            log.info("removed %d queue consumer(s) of daemons no longer running: %s", len(forgotten),
                     ", ".join(forgotten))
        resumed = self.queue.resume()
        if resumed or released:
            log.info("took back %d queue item(s) and %d claimed message(s) from a previous run",
                     resumed, released)

    def _wait_for_store(self) -> bool:
        """Open the store, waiting with backoff while it cannot be reached (a
        database not up yet): logged once per outage, not READY to systemd,
        never an exit. False when asked to stop meanwhile."""
        down = Repeats(log, f"store {stores.describe(self.cfg.server.database)}")
        wait = 1.0
        watchdog_every = systemd.watchdog_interval()
        while not self._stop:
            try:
                self._open()
            except StoreUnavailable as exc:
                down.failed("cannot reach the store, waiting for it (not ready): %s", exc)
                # Not ready, and not stuck: systemd extends the start timeout (TimeoutStartSec)
                # past the next try instead of killing a daemon that waits on purpose.
                systemd.notify(f"STATUS=waiting for the store: {exc}\n"
                       f"EXTEND_TIMEOUT_USEC={int((wait + STORE_TRY_MARGIN) * 1_000_000)}")
                deadline = time.monotonic() + wait
                while not self._stop and time.monotonic() < deadline:
                    if watchdog_every:
                        systemd.notify("WATCHDOG=1")
                    time.sleep(0.1)
                wait = min(wait * 2, STORE_WAIT_MAX)
                continue
            down.cleared()
            return True
        return False

    def once(self, now: float | None = None) -> OnceResult:
        """Ingest everything waiting and send everything due, until neither has
        more. Ingest runs beside dispatch, so the first messages go out while
        the rest are still read from the queue (a distant relay's round trips
        then hide the ingest)."""
        ingested = IngestResult()
        failed: list[BaseException] = []
        stored = threading.Event()

        def ingest() -> None:
            try:
                while True:
                    more = self.ingester.drain(limit=BATCH)  # one transaction at a time
                    if not (more.ingested + more.duplicates + more.quarantined):
                        break
                    ingested.add(more)
                    stored.set()
            except BaseException as exc:  # re-raised below, once dispatch has finished
                failed.append(exc)

        reader = threading.Thread(target=ingest, name="mailmand-once-ingest", daemon=True)
        reader.start()
        dispatched = RunResult()
        while True:
            last = not reader.is_alive()  # then everything it stored is visible to this run
            stored.clear()
            run = self.dispatcher.run_once(now)
            dispatched.add(run)
            if last or self.dispatcher.stop.is_set() or run.unreachable:
                break  # (no relay: what is still being ingested waits for the next run, as the rest does)
            if not run.batches:
                stored.wait(0.1)  # nothing due yet: until ingest stores more
        reader.join()
        if failed:
            raise failed[0]
        return OnceResult(ingested, dispatched)

    # -- the long-running daemon ----------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Handlers only set flags; the main loop does the work.
        if signum == signal.SIGHUP:
            self._reload = True
        elif signum == signal.SIGUSR1:  # `mailmand flush`: deferred mail was made due
            self._poke = True
        else:
            self._stop = True

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        if not self._wait_for_store():
            self.close()
            log.info("stopped before the store could be reached")
            return 0
        self._start_services()  # once the store answers: metrics reads it, and both report its state
        from .scheduler import DispatchScheduler  # APScheduler: `run` alone (a third of `--once`'s imports)

        sched = DispatchScheduler(self.dispatcher, self.cfg.server.retention, heartbeat=self._heartbeat)
        self.ingester.on_stored = sched.wake_at
        self._watch = self.store.watch(sched.poke)  # other daemons' NOTIFY (a shared store)
        # The queue's wake-up (inotify, a blocking read, NOTIFY) brings mail in at once;
        # polling, at `interval` at the most, is the floor when one is missed.
        loop = self._ingest_loop = IngestLoop(self.ingester, poll=min(IngestLoop.POLL, self.cfg.server.interval))
        watcher = None
        if self.cfg.source is not None:
            watcher = configmod.ConfigWatcher(self.cfg.source, self._request_reload)
            watcher.start()
        loop.start()
        sched.start()
        log.info("mailmand running: daemon %s, queue %s, store %s, relay %s", self.id, self.queue,
                 self.store.name, self.cfg.server.smtp.relay)
        systemd.notify("READY=1")
        watchdog_every = systemd.watchdog_interval()
        last_ping = 0.0
        try:
            while not self._stop:
                time.sleep(0.1)
                if self._poke:
                    self._poke = False
                    sched.poke()
                if self._reload:
                    self._reload = False
                    systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
                    self.reload(sched)
                    systemd.notify("READY=1")
                if watchdog_every and time.monotonic() - last_ping >= watchdog_every:
                    systemd.notify("WATCHDOG=1")
                    last_ping = time.monotonic()
        finally:
            systemd.notify("STOPPING=1")
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
        """The integration surface: the webhook senders (each in a thread of its own;
        none until one is configured), then, each only when configured, metrics (it
        installs the observer that dispatch reports to), the web server and the submission listener."""
        server = self.cfg.server
        try:
            from .webhooks import Webhooks

            webhooks = Webhooks(self.store, server.events, self.id).start()
            self.services.append(webhooks)
            if server.metrics is not None:
                from .metrics import MetricsServer

                metrics = MetricsServer(server.metrics.listen, self.store, self.queue,
                                        lambda: self.dispatcher.cfg.interval, self.problems,
                                        self.dispatcher.relay_states)
                metrics.registry.register(webhooks.collector())
                self.services.append(metrics.start())
            if server.web is not None:
                from .metrics import Health
                from .web.server import WebServer  # Starlette, uvicorn, Jinja2: only when configured

                health = Health(lambda: self.dispatcher.last_active, self.store,
                                lambda: self.dispatcher.cfg.interval, self.problems, self.dispatcher.relay_states)
                self.services.append(WebServer(self.cfg, health, self.poke, self.id).start())
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

    def problems(self) -> list[str]:
        """The daemon's failing parts besides the store and the dispatcher, for /healthz
        (from memory: the ingest loop's last failure, while it lasts)."""
        failing = self._ingest_loop.failing if self._ingest_loop is not None else None
        return [f"ingest: {failing.last}"] if failing is not None and failing.last else []

    def _heartbeat(self, now: float) -> None:
        # The relays' state rides with it: `status` (another process) and peers read it there.
        self.store.heartbeat(self.id, now, relays=self.dispatcher.relay_states())

    def poke(self) -> None:
        """Mail became due now (an operator's move over the web): dispatch at once (safe from any thread)."""
        self._poke = True

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
            log.error("configuration reload refused, keeping the running one: %s", "; ".join(str(exc).splitlines()))
            return False
        for key in configmod.restart_required(self.cfg, new):
            log.warning("%s changed: it needs a restart to take effect; keeping the running value", key)
        # Keys that need a restart keep their running values: nothing is half-applied, and
        # the next reload compares with what runs.
        running = configmod.keep_running(self.cfg, new)
        server = running.server
        try:
            self.dispatcher.configure(server)
        except Exception as exc:  # e.g. a CA file that is not PEM: the running configuration stays
            log.error("configuration reload refused, keeping the running one: %s", exc)
            return False
        self.cfg = running
        sched.reschedule(server.interval, server.retention)
        for service in self.services:
            service.configure(self.cfg)
        logging.getLogger("mailmand").setLevel(server.log_level.upper())
        log.info("configuration reloaded from %s", self.cfg.source)
        return True

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        if self._dispatcher is not None:
            self._dispatcher.close()
        self.queue.close()
        if self._store is not None:
            try:
                self._store.unregister(self.id)
            except StoreUnavailable:
                pass  # the row ages out; peers read it as not live
            self._store.close()
        if self.store_lock is not None:
            self.store_lock.release()
        if self.lock:
            self.lock.release()
