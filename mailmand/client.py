"""The producer side: put messages on the configured queue.

There is no synchronous send: mail goes out only through the daemon. A
Client keeps one queue handle per process (opening the spool per put is 20x
slower) and reopens it after a fork. It takes anything that makes a record
(`to_record`: an Email, a RawMessage) and imports no message class, so that
message.py and raw.py can import it for `Email.enqueue()`.
"""

from __future__ import annotations

import os
import threading
import time

from .config.cache import load_producer
from .errors import InvalidMessage
from .queues import open_queue
from .record import validate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime, timedelta
    from pathlib import Path
    from typing import Any

    from .config import Config
    from .queues import Queue
    from .record import Enqueueable, Record


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

    def local_domain(self) -> str:
        """The domain a bare local name (`root`) gets on every way in: email.sendmail.domain,
        else the host's mail domain (which resolves the host name: asked only for a bare name)."""
        if self.config.sendmail.domain:
            return self.config.sendmail.domain
        from .hostname import mail_domain

        return mail_domain()

    def _q(self) -> Queue:
        with self._lock:
            if self._queue is None or self._pid != os.getpid():
                self._queue = open_queue(self.config.queue)
                self._pid = os.getpid()
            return self._queue

    def put(self, record: Record, *, connection: Any = None) -> str:
        """Queue an already-built record, validated as every way in validates one
        (record.validate); durable on return. With `connection`, see `enqueue`."""
        validate(record, max_recipients=self.config.server.max_recipients,
                 max_size=self.config.server.max_message_size)
        return self._put(record, connection)

    def put_many(self, records: Sequence[Record]) -> list[str]:
        """Queue records as `put` queues one, in one write of the queue (one sync for them
        all); each validated first. Their ids once every one is durable; when it raises,
        none is known to be queued."""
        for record in records:
            validate(record, max_recipients=self.config.server.max_recipients,
                     max_size=self.config.server.max_message_size)
        self._q().put_many([record.to_json() for record in records])
        return [record.id for record in records]

    def _put(self, record: Record, connection: Any = None) -> str:
        if connection is None:
            self._q().put(record.to_json())
        else:
            self._q().put_in(record.to_json(), connection)  # TypeError from a queue that cannot join
        return record.id

    def record(self, email: Enqueueable, *, send_after: float = 0.0) -> Record:
        """The validated record `enqueue` would queue for `email`, under this client's limits."""
        to_record = getattr(email, "to_record", None)
        if to_record is None:
            raise InvalidMessage("email", type(email).__name__, "expected a mailmand.Email or Email.from_bytes(...)")
        # to_record validates the record it makes (record.validate)
        record: Record = to_record(self.config.server.max_message_size, send_after, self.config.server.max_recipients)
        return record

    def enqueue(self, email: Enqueueable, *, send_after: float = 0.0, connection: Any = None) -> str:
        """Queue `email` (an Email, or a RawMessage from Email.from_bytes) to go out now
        (or at `send_after`, epoch seconds). Returns its id once the record is durable.

        `connection`: a psycopg 3 connection to the outbox's database (the postgres
        queue engine). The record is inserted inside the transaction open on it and
        is queued if and only if that transaction commits; nothing is committed here.
        Other engines cannot join a transaction: TypeError."""
        return self._put(self.record(email, send_after=send_after), connection)

    def send_later(self, email: Enqueueable, delay: str | float | timedelta, *, connection: Any = None) -> str:
        """Queue `email` to go out after `delay` ('90s', '5m', '1h30m', a timedelta)."""
        return self.enqueue(email, send_after=time.time() + max(0.0, _delay_seconds(delay)), connection=connection)

    def send_at(self, email: Enqueueable, when: datetime, *, connection: Any = None) -> str:
        """Queue `email` to go out at `when` (naive = local time; past = now)."""
        from datetime import datetime

        if not isinstance(when, datetime):
            raise InvalidMessage("when", when, "expected a datetime")
        return self.enqueue(email, send_after=when.timestamp(), connection=connection)  # naive → local

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


class Queueable:
    """The queueing methods of a message (`Email`, `RawMessage`): through `client`, or
    the process's default client. `connection`: the app's psycopg connection, to queue
    inside its transaction (see `Client.enqueue`). Subclasses provide `to_record()`."""

    def enqueue(self, client: Client | None = None, *, connection: Any = None) -> str:
        return (client or default_client()).enqueue(self, connection=connection)  # type: ignore[arg-type]

    def send_later(self, delay: str | float | timedelta, client: Client | None = None, *,
                   connection: Any = None) -> str:
        return (client or default_client()).send_later(self, delay, connection=connection)  # type: ignore[arg-type]

    def send_at(self, when: datetime, client: Client | None = None, *, connection: Any = None) -> str:
        return (client or default_client()).send_at(self, when, connection=connection)  # type: ignore[arg-type]
