"""Queue → store. Commit, then ack: a crash between the two re-delivers an
item, and the store's insert-by-id makes that a no-op."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import InvalidMessage, MailmandError, RecordRejected, StoreUnavailable
from .queues import Item, Queue
from .record import MAX_RECIPIENTS, Record
from .repeats import Repeats
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

    def add(self, other: IngestResult) -> None:
        self.ingested += other.ingested
        self.duplicates += other.duplicates
        self.quarantined += other.quarantined


def decode(data: Any, max_recipients: int, now: float) -> Record | str:
    """A queue item's JSON as a record, or the reason it cannot be one: the one
    check ingest makes, and `mailmand quarantine release` makes again."""
    try:
        return Record.from_json(data, max_recipients=max_recipients, now=now)
    except InvalidMessage as exc:
        return str(exc)


def decode_bytes(raw: bytes, max_recipients: int, now: float) -> Record | str:
    """`decode` of an item's bytes, as a queue reads them (a quarantined entry's)."""
    import json

    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"not valid JSON: {exc}"
    return decode(data, max_recipients, now)


class Ingester:
    def __init__(self, queue: Queue, store: Store, on_stored: Callable[[float], None] | None = None,
                 max_recipients: int = MAX_RECIPIENTS) -> None:
        self.queue = queue
        self.store = store
        self.on_stored = on_stored  # called with the earliest send time of what was stored
        self.max_recipients = max_recipients

    def _decode(self, item: Item, now: float) -> Record | str:
        """The record, or the reason it cannot be ingested."""
        if item.error:
            return item.error
        return decode(item.data, self.max_recipients, now)

    def drain(self, limit: int | None = None) -> IngestResult:
        """Ingest everything waiting (or up to `limit` items)."""
        total = IngestResult()
        while limit is None or total.ingested + total.duplicates + total.quarantined < limit:
            items = self.queue.take(BATCH if limit is None else min(BATCH, limit))
            if not items:
                break
            total.add(self._ingest(items))
        return total

    def _ingest(self, items: list[Item]) -> IngestResult:
        try:
            records, new = self._store(items)
        except Exception:
            self.queue.release(items)  # the store is not taking anything now: keep them for later
            raise
        if new and self.on_stored:
            # Committed: dispatch may start before the queue's ack, which on the spool waits
            # for the write lock behind producers' puts (SQLite's busy sleeps: 1, 2, 5 ms...).
            self.on_stored(min(r.send_after for r in records))
        self.queue.ack(items)
        return IngestResult(new, len(records) - new, len(items) - len(records))

    def _store(self, items: list[Item]) -> tuple[list[Record], int]:
        """Insert what decodes, quarantine what does not; returns the records and how many were new."""
        now = time.time()
        decoded = [(item, self._decode(item, now)) for item in items]
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
                source = self.queue.origin(item)
                entry = self.store.quarantine(got, item.raw, now, source)
                log.warning("quarantined %s as quarantine entry %d (mailmand quarantine show %d): %s",
                            source, entry, entry, got)
        return records, new


class IngestLoop:
    """Runs `drain` in a thread, woken by the queue's own `wait()` (watchdog
    for the spool, a blocking XREADGROUP for Redis) within milliseconds of a
    producer's write, with a poll in case a wake-up is missed.

    A failure (the spool's disk full, Redis down, the store unwritable) waits
    before the next try, growing from RETRY_MIN to RETRY_MAX: a failed write
    wakes the spool's watcher again, and retrying on each wake-up would spin.
    It is logged in full once, then summarised (`Repeats`)."""

    RETRY_MIN = 0.5
    RETRY_MAX = 10.0
    # inotify reports a WAL write a moment before the commit is visible to
    # readers: after a wake-up that found nothing, look again shortly. Each
    # pause is a wait on the queue, so a new wake-up ends it at once: the
    # daemon's own deletes wake it too (after every ingest), and a pause that
    # only a timer ended held a producer's new message up to 40 ms.
    AFTER_WAKE = (0.001, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.04)

    POLL = 2.0  # seconds between looks when no wake-up came

    def __init__(self, ingester: Ingester, poll: float = POLL) -> None:
        self.ingester = ingester
        self.queue = ingester.queue
        self.poll = poll
        self.stopping = threading.Event()
        self.failing = Repeats(log, "ingest failing")
        self._thread = threading.Thread(target=self._run, name="mailmand-ingest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        delay = self.RETRY_MIN
        look_again: Iterator[float] = iter(())
        woken = armed = False
        while not self.stopping.is_set():
            try:
                if not armed:  # the wake-up, before the first read: a write after the read is reported
                    woken, armed = self.queue.wait(0), True
                if not self._drain() and woken:
                    look_again = iter(self.AFTER_WAKE)  # each wake-up that found nothing starts over
                woken = self.queue.wait(next(look_again, self.poll))
            except Exception as exc:  # the loop must survive a bad moment
                if isinstance(exc, StoreUnavailable):  # full or away: the items stay in the queue
                    self.failing.failed("ingest failed, retrying in %.1fs: ingest paused, items stay in the "
                                        "queue: %s", delay, exc)
                else:
                    self.failing.failed("ingest failed, retrying in %.1fs: %s", delay, exc,
                                        exc_info=not isinstance(exc, MailmandError))
                self.stopping.wait(delay)
                delay = min(delay * 2, self.RETRY_MAX)
                woken, look_again = False, iter(())
            else:
                if self.failing.cleared():
                    delay = self.RETRY_MIN

    def _drain(self) -> bool:
        result = self.ingester.drain()
        if result.ingested or result.quarantined:
            log.debug("ingested %d, quarantined %d", result.ingested, result.quarantined)
        return bool(result.ingested or result.duplicates or result.quarantined)

    def stop(self) -> None:
        self.stopping.set()
        self.queue.wake()
        self._thread.join(timeout=30)
