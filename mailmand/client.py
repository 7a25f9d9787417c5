"""The producer side: put composed messages on the configured queue.

There is no synchronous send: mail goes out only through the daemon. A
Client keeps one queue handle per process (opening the spool per put is 20x
slower) and reopens it after a fork.
"""

from __future__ import annotations

import os
import threading
import time

from .config.cache import load_producer
from .errors import InvalidMessage
from .message import Email, Record
from .queues import open_queue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import datetime, timedelta
    from pathlib import Path

    from .config import Config
    from .queues import Queue


def _delay_seconds(delay: str | float | int | timedelta) -> float:
    from datetime import timedelta

    if isinstance(delay, timedelta):
        return delay.total_seconds()
    if isinstance(delay, bool):
        raise InvalidMessage("delay", delay, "expected a duration like '5m' or a timedelta")
    if isinstance(delay, int | float):
        return float(delay)
    try:
        from .config.values import parse_duration

        return parse_duration(delay)
    except (ValueError, TypeError) as exc:
        raise InvalidMessage("delay", delay, f"not a duration ({exc})") from None


class Client:
    def __init__(self, config: str | Path | Config | None = None) -> None:
        # A path or None: the producer's settings, from the cache when the file has not changed.
        self.config = load_producer(config) if config is None or isinstance(config, str | os.PathLike) else config
        self._queue: Queue | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _q(self) -> Queue:
        with self._lock:
            if self._queue is None or self._pid != os.getpid():
                self._queue = open_queue(self.config.queue)
                self._pid = os.getpid()
            return self._queue

    def put(self, record: Record) -> str:
        """Queue an already-built record; durable on return."""
        self._q().put(record.to_json())
        return record.id

    def enqueue(self, email: Email, *, send_after: float = 0.0) -> str:
        """Queue `email` to go out now (or at `send_after`, epoch seconds).
        Returns its id once the record is durable on disk."""
        if not isinstance(email, Email):
            raise InvalidMessage("email", type(email).__name__, "expected a mailmand.Email")
        return self.put(email.to_record(self.config.server.max_message_size, send_after,
                                       self.config.server.max_recipients))

    def send_later(self, email: Email, delay: str | float | timedelta) -> str:
        """Queue `email` to go out after `delay` ('90s', '5m', '1h30m', a timedelta)."""
        return self.enqueue(email, send_after=time.time() + max(0.0, _delay_seconds(delay)))

    def send_at(self, email: Email, when: datetime) -> str:
        """Queue `email` to go out at `when` (naive = local time; past = now)."""
        from datetime import datetime

        if not isinstance(when, datetime):
            raise InvalidMessage("when", when, "expected a datetime")
        return self.enqueue(email, send_after=when.timestamp())  # naive → local, per datetime

    def close(self) -> None:
        with self._lock:
            if self._queue is not None:
                self._queue.close()
                self._queue = None


_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The process-wide client on the configuration found as the daemon finds it."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default
