"""One call to `Relay.send_grouped`: the shared source of work, the results, the workers.

The source is a sequence, or any iterable read lazily (the dispatcher's feed).
Workers (one per session) pull from it one message at a time; how many there
are at once is the relay's throttle's to say, read afresh: a worker told it is
one too many finishes what it holds and goes (`shed`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence

from .outcomes import SendResult
from .protocol import Envelope

log = logging.getLogger("mailmand.smtp.relays")


_END = Envelope("", "", (), b"")  # the source is over (next() default: a feed may yield None)


class Batch:
    """One call to `send_grouped`: the shared source of work, the results, and the workers.

    The source is a sequence, or any iterable read lazily (the dispatcher's
    feed, which claims the next batch from the store only when a session is
    free for it, so sessions never idle at batch boundaries).

    Workers start one at a time, each new one when the one before found
    work: an idle tick with `connections: 100` starts one thread, not 100,
    and a busy one reaches 100 within a few messages."""

    def __init__(self, envelopes: Iterable[Envelope | None], stop: threading.Event | None, limit: Callable[[], int],
                 target: Callable[[Batch], None], gather: int = 0, most: int = 0):
        self._source: Iterator[Envelope | None] = iter(envelopes)
        self._most = most  # messages out at once (taken, their results not yet settled by the caller); 0: any
        self._out = 0
        self._settled = threading.Condition()
        self.finite = isinstance(envelopes, Sequence)
        self.results: queue.SimpleQueue[SendResult | None] = queue.SimpleQueue()  # None: a worker is done
        self.stop = stop
        self.abandoned = threading.Event()  # the caller closed the generator early
        self.given_up = False  # no session could be opened: take nothing more from a feed
        self.broken = False  # the source raised: take nothing more
        self.threads: list[threading.Thread] = []  # only ever appended to
        self.over = threading.Event()  # every worker started so far is done
        self.wake = threading.Event()  # for a lingering caller: `gather` results are in, or `over`
        self._gather = gather
        self._unread = 0  # results put and not yet taken by the caller
        self._count_lock = threading.Lock()
        self._done = 0
        self._limit = limit  # sessions at most, read afresh (the throttle moves it)
        self._target = target
        self._active = 0
        self._shedding = 0  # workers told to stop, not yet gone
        self._returned: deque[Envelope] = deque()  # handed back untried by a session refused for load
        self._lock = threading.Lock()

    def stopped(self) -> bool:
        return self.abandoned.is_set() or (self.stop is not None and self.stop.is_set())

    def spawn(self) -> None:
        """Start one more worker, unless there are enough or the batch is over."""
        with self._lock:
            if self._active - self._shedding >= self._limit() or self.stopped() or self.given_up:
                return
            thread = threading.Thread(target=self._target, args=(self,), daemon=True,
                                      name=f"mailmand-smtp-{len(self.threads)}")
            self.threads.append(thread)  # before its None can be counted: the caller waits for it
            self._active += 1
        thread.start()

    @property
    def started(self) -> int:
        with self._lock:
            return len(self.threads)

    def take(self, block: bool = True) -> Envelope | None:
        """The next message, or None when there is none. A lazy source may answer
        None for "nothing now" (the dispatcher's feed, with no room for a claim
        until outcomes in flight are recorded): a blocking take asks again, a
        non-blocking one returns None, so its session goes on with what it holds.
        With `most` messages out, the same: None at once, or (blocking) once the
        caller has settled one."""
        while True:
            if self._returned and not self.stopped():
                try:
                    return self._returned.popleft()  # already counted out
                except IndexError:
                    pass
            if not self._room(block):
                return None
            with self._lock:  # one reader at a time: a feed is a generator
                if self.stopped() or self.broken or (self.given_up and not self.finite):
                    return None
                try:
                    env = next(self._source, _END)
                except Exception:  # the feed failed (store trouble): messages in flight still finish
                    log.exception("the dispatch feed failed; this run takes no more messages")
                    self.broken = True
                    return None
            if env is _END:
                return None
            if env is not None:
                if self._most:
                    with self._settled:
                        self._out += 1
                return env
            if not block:
                return None

    def _room(self, block: bool) -> bool:
        if not self._most:
            return True
        with self._settled:
            while self._out >= self._most:
                if not block or self.stopped():
                    return False
                self._settled.wait(0.1)
            return True

    def settle(self, n: int) -> None:
        """The caller has dealt with `n` results (recorded them): as many more may go out."""
        if self._most:
            with self._settled:
                self._out -= n
                self._settled.notify_all()

    def put(self, result: SendResult) -> None:
        with self._count_lock:
            self._unread += 1
            if self._gather and self._unread >= self._gather:
                self.wake.set()
        self.results.put(result)

    def read(self, n: int) -> None:
        """The caller has taken `n` results."""
        with self._count_lock:
            self._unread -= n

    def done(self) -> None:
        """A worker has put its last result."""
        with self._lock:
            self._done += 1
            if self._done == len(self.threads):
                self.over.set()
                self.wake.set()

    def shed(self) -> bool:
        """Should one worker stop, there being more than the limit? True once per
        worker too many (that worker then takes nothing more and leaves)."""
        if self._active - self._shedding <= self._limit():  # unlocked: the common case costs nothing
            return False
        with self._lock:
            if self._active - self._shedding > self._limit():
                self._shedding += 1
                return True
            return False

    def hand_back(self, env: Envelope) -> None:
        """An untried message, for another session of this batch."""
        self._returned.append(env)

    def leave(self, shed: bool = False) -> bool:
        """A worker stops; True when it was the last one."""
        with self._lock:
            self._active -= 1
            if shed:
                self._shedding -= 1
            return self._active == 0
