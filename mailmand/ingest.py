"""Queue → store. Commit, then ack: a crash between the two re-delivers an
item, and the store's insert-by-id makes that a no-op."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from .errors import InvalidMessage, RecordRejected, StoreUnavailable
from .logs import Repeats
from .message import Record
from .queues import Item, Queue
from .stores import Store

log = logging.getLogger(__name__)

BATCH = 500  # items per store transaction
# What the store raises for a record it cannot hold (a value out of range),
# as opposed to a store that cannot take anything now (locked, disk full).
RECORD_ERRORS = (RecordRejected,)


@dataclass
class IngestResult:
    ingested: int = 0  # new rows in the store
    duplicates: int = 0  # items whose id was already stored (a re-delivery)
    quarantined: int = 0

    def __iadd__(self, other: IngestResult) -> IngestResult:
        self.ingested += other.ingested
        self.duplicates += other.duplicates
        self.quarantined += other.quarantined
        return self


def _decode(item: Item) -> Record | str:
    """The record, or the reason it cannot be ingested."""
    if item.error:
        return item.error
    try:
        return Record.from_json(item.data)
    except InvalidMessage as exc:
        return str(exc)


class Ingester:
    def __init__(self, queue: Queue, store: Store,
                 on_stored: Callable[[float], None] | None = None) -> None:
        self.queue = queue
        self.store = store
        self.on_stored = on_stored  # called with the earliest send time of what was stored

    def drain(self, limit: int | None = None) -> IngestResult:
        """Ingest everything waiting (or up to `limit` items)."""
        total = IngestResult()
        while limit is None or total.ingested + total.duplicates + total.quarantined < limit:
            items = self.queue.take(BATCH if limit is None else min(BATCH, limit))
            if not items:
                break
            total += self._ingest(items)
        return total

    def _ingest(self, items: list[Item]) -> IngestResult:
        try:
            records, new = self._store(items)
        except Exception:
            self.queue.release(items)  # the store is not taking anything now: keep them for later
            raise
        self.queue.ack(items)
        result = IngestResult(new, len(records) - new, len(items) - len(records))
        if new and self.on_stored:
            self.on_stored(min(r.send_after for r in records))
        return result

    def _store(self, items: list[Item]) -> tuple[list[Record], int]:
        """Insert what decodes, quarantine what does not; returns the records and how many were new."""
        now = time.time()
        decoded = [(item, _decode(item)) for item in items]
        records = [got for _, got in decoded if isinstance(got, Record)]
        try:
            new = self.store.insert(records) if records else 0
        except RECORD_ERRORS:
            # One record the store refuses must not hold up the others: one at a time.
            # (A store that is down or full raises something else, and nothing is quarantined.)
            records, new = [], 0
            for n, (item, got) in enumerate(decoded):
                if isinstance(got, Record):
                    try:
                        new += self.store.insert([got])
                        records.append(got)
                        continue
                    except RECORD_ERRORS as exc:
                        got = f"the store refused it: {type(exc).__name__}: {exc}"
                decoded[n] = (item, got)
        for item, got in decoded:
            if not isinstance(got, Record):
                self.store.quarantine(got, item.raw, now)
                log.warning("quarantined a spool item: %s", got)
        return records, new


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        # A producer's commit writes the WAL: modified (or created/moved for
        # a new file). Opens, reads and attribute changes are not news.
        if not event.is_directory and event.event_type in ("modified", "created", "moved"):
            self.event.set()


class IngestLoop:
    """Runs `drain` in a thread, woken by watchdog within milliseconds of a
    producer's write, with a slow poll in case a notification is missed."""

    def __init__(self, ingester: Ingester, spool_dir: Path | None, poll: float = 2.0) -> None:
        self.ingester = ingester
        self.poll = poll
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._store_down = Repeats(log, "ingest: store")
        self._observer = None
        if spool_dir is not None:
            self._observer = Observer()
            self._observer.schedule(_Wake(self.wake), str(spool_dir), recursive=False)
        self._thread = threading.Thread(target=self._run, name="mailmand-ingest", daemon=True)

    def start(self) -> None:
        if self._observer is not None:
            self._observer.start()
        self._thread.start()

    def _run(self) -> None:
        woken = False
        while not self.stopping.is_set():
            self.wake.clear()
            # inotify reports the WAL write a moment before the commit is
            # visible to readers: after a wake that found nothing, look again
            # shortly rather than at the next poll.
            for delay in (0.0, 0.002, 0.003, 0.005, 0.01, 0.02, 0.04) if woken else (0.0,):
                time.sleep(delay)
                if self._drain():
                    break
            woken = self.wake.wait(self.poll)

    def _drain(self) -> bool:
        try:
            result = self.ingester.drain()
            self._store_down.cleared()
        except StoreUnavailable as exc:  # full or away: said once, then summarised; never a spin
            self._store_down.failed("ingest paused, items stay in the queue: %s", exc)
            self.stopping.wait(self.poll)
            return True
        except Exception:  # the loop must survive a bad moment (disk full, locked store)
            log.exception("ingest failed; retrying in %.1fs", self.poll)
            return True
        if result.ingested or result.quarantined:
            log.debug("ingested %d, quarantined %d", result.ingested, result.quarantined)
        return bool(result.ingested or result.duplicates or result.quarantined)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        self._thread.join(timeout=30)
