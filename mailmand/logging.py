"""`MailHandler`: log records by mail, through mailmand's queue instead of SMTP.

A drop-in for `logging.handlers.SMTPHandler`: the same constructor, but
`emit` enqueues (about a millisecond, an fsync) instead of talking SMTP
inside the application's logging call, and an optional rate limit keeps an
error storm from becoming a mail storm:

    handler = MailHandler(None, "app@example.com", ["ops@example.com"], "app error",
                          min_interval=60)   # at most one mail a minute per logger

With `min_interval`, a logger that mailed less than that many seconds ago has
its records counted, not mailed; the next mail it sends starts with that
count, and `close()` mails a last summary for what was still held back.

Arguments of SMTPHandler that the daemon owns are accepted and ignored:
`mailhost`, `credentials`, `secure` and `timeout` (the relay, its login and
its TLS live in mailmand's configuration). `config` chooses that
configuration, or `client` a `mailmand.Client`; by default, the usual
discovery. The handler never raises into the application: a failure goes to
`handleError`, as for every logging handler.
"""

from __future__ import annotations

import logging as _logging  # the standard library's: this module shadows the name inside the package
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .client import Client
from .message import Email
from .record import check_tags


@dataclass
class _Held:
    """One logger's rate-limit state."""

    last_sent: float
    suppressed: int = 0
    first_suppressed: float = 0.0


class MailHandler(_logging.Handler):
    """Mails each record (formatted by the handler's formatter) to `toaddrs`, via the queue."""

    def __init__(
        self,
        mailhost: str | tuple[str, int] | None = None,
        fromaddr: str | None = None,
        toaddrs: str | Sequence[str] | None = None,
        subject: str = "",
        credentials: tuple[str, str] | None = None,
        secure: tuple[Any, ...] | None = None,
        timeout: float | None = None,
        *,
        min_interval: float | None = None,
        config: str | Path | None = None,
        client: Client | None = None,
        level: int = _logging.NOTSET,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(level)
        if not fromaddr:
            raise ValueError("MailHandler: fromaddr is required")
        if not toaddrs:
            raise ValueError("MailHandler: toaddrs is required")
        if min_interval is not None and min_interval < 0:
            raise ValueError(f"MailHandler: min_interval must be >= 0, got {min_interval!r}")
        # mailhost, credentials, secure, timeout: the daemon's relay settings decide these.
        self.mailhost = mailhost
        self.fromaddr = fromaddr
        self.toaddrs = [toaddrs] if isinstance(toaddrs, str) else list(toaddrs)
        self.subject = subject
        self.tags = check_tags(tags, "tags")  # on every mail it sends: `mailmand list --tag ...` finds them
        self.min_interval = min_interval
        self._config = config
        self._client = client
        self._owns_client = client is None  # a client given by the caller stays open
        self._held: dict[str, _Held] = {}
        self._state_lock = threading.Lock()
        self._local = threading.local()  # re-entry guard: mailmand's own log calls while queueing
        self.clock: Callable[[], float] = time.monotonic

    # -- SMTPHandler's overridable pieces

    def getSubject(self, record: _logging.LogRecord) -> str:  # noqa: N802 (SMTPHandler's name)
        """The subject line; override to put the level or the logger in it."""
        return self.subject

    # -- logging

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self._config)
        return self._client

    def emit(self, record: _logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):
            return  # a record logged by mailmand while this handler queues: never recurse
        self._local.busy = True
        try:
            note = self._admit(record.name)
            if note is None:
                return
            body = self.format(record)
            self._queue(self.getSubject(record), note + body)
        except Exception:
            self.handleError(record)
        finally:
            self._local.busy = False

    def _admit(self, name: str) -> str | None:
        """None when the rate limit holds this record back; else a note (may be "") for the body."""
        if not self.min_interval:
            return ""
        now = self.clock()
        with self._state_lock:
            held = self._held.get(name)
            if held is not None and now - held.last_sent < self.min_interval:
                if not held.suppressed:
                    held.first_suppressed = now
                held.suppressed += 1
                return None
            self._held[name] = _Held(last_sent=now)
        if held is None or not held.suppressed:
            return ""
        return (f"[{held.suppressed} more record(s) from logger {name!r} were not mailed in the "
                f"{now - held.first_suppressed:.0f}s before this one (min_interval {self.min_interval:g}s)]\n\n")

    def _queue(self, subject: str, body: str) -> None:
        # A formatted subject could carry a line break (a record's message in
        # it): fold it to one line rather than lose the mail to HeaderInjection.
        subject = " ".join(subject.split())
        self.client.enqueue(Email(sender=self.fromaddr, to=self.toaddrs, subject=subject, text=body,
                                  tags=self.tags))

    def flush(self) -> None:
        """Mail a summary for each logger whose records are being held back."""
        with self._state_lock:
            pending = [(name, h) for name, h in self._held.items() if h.suppressed]
            for _, held in pending:
                held.last_sent = self.clock()
            counts = [(name, h.suppressed) for name, h in pending]
            for _, held in pending:
                held.suppressed = 0
        for name, count in counts:
            try:
                self._queue(self.subject, f"[{count} more record(s) from logger {name!r} were not mailed "
                                          f"(min_interval {self.min_interval:g}s); see the application's log]\n")
            except Exception:
                self.handleError(_logging.makeLogRecord({"msg": f"MailHandler summary for {name}"}))

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._owns_client and self._client is not None:
                self._client.close()
                self._client = None
            super().close()
