"""Group commit: messages that arrive together are made durable by one queue write.

The submission listener answers 250 only once a message is durable. Written one
by one, each message waits for its own sync of the queue, and concurrent sessions
queue up behind each other's syncs. Here, while one write is in flight, the
messages that arrive wait together, and the next write takes them all: one sync
for the lot (as PostgreSQL flushes its log once for the commits that waited on
one flush). A waiter hears its own write's outcome only, and
only once that write returned: a 250 still means durable.

The bookkeeping lives on the event loop (no lock); one thread does the writes,
one at a time, so that the queue sees a single writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .errors import QueueError
from .record import Record

MAX_RECORDS = 256  # in one write: a bound on how long the first of them waits for the last
MAX_BYTES = 8 * 2**20  # of messages in one write (a single larger one goes alone)


class GroupCommit:
    """`await put(record)` returns once `record` is durable, or raises what its write raised."""

    def __init__(self, write: Callable[[list[Record]], object], name: str = "mailmand-commit") -> None:
        self._write = write
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._waiting: list[tuple[Record, asyncio.Future[None]]] = []
        self._busy = False
        self.writes = 0  # how many writes were made (for tests and the bench: records / writes is the grouping)

    @property
    def waiting(self) -> int:
        """Records waiting for the next write (the one in flight not counted)."""
        return len(self._waiting)

    async def put(self, record: Record) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.append((record, done))
        if not self._busy:
            self._next(loop)
        # A cancelled wait (the client hung up) leaves the record in its write: it is
        # queued all the same, and the client, which heard no 250, may send it again.
        await done

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        batch: list[tuple[Record, asyncio.Future[None]]] = []
        size = 0
        for record, done in self._waiting:
            if batch and (len(batch) == MAX_RECORDS or size + len(record.raw) > MAX_BYTES):
                break
            batch.append((record, done))
            size += len(record.raw)
        del self._waiting[:len(batch)]
        self._busy = True
        self.writes += 1
        work = loop.run_in_executor(self._executor, self._write, [record for record, _ in batch])
        work.add_done_callback(lambda w: self._finished(loop, batch, w))

    def _finished(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Record, asyncio.Future[None]]],
                  work: asyncio.Future[object]) -> None:
        self._busy = False
        error = QueueError("the listener stopped during the write") if work.cancelled() else work.exception()
        for _, done in batch:
            if done.done():  # its session is gone
                continue
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)
        if self._waiting and not loop.is_closed():
            self._next(loop)

    def close(self) -> None:
        """Wait for the write in flight (its records are queued whatever happens to their sessions)."""
        self._executor.shutdown(wait=True)
