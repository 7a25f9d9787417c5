"""A Django email backend that queues with mailmand: `EMAIL_BACKEND = "mailmand.django.EmailBackend"`.

Django composes the message exactly as its SMTP backend would
(`EmailMessage.message()`: from, to, cc, reply-to, subject, body, HTML
alternatives, attachments including MIMEBase parts, extra headers), and the
envelope is `from_email` and `recipients()` (to + cc + bcc; Bcc is never a
header). mailmand takes Django's bytes as they are (`RawMessage.parse`: the
same checks as every other way in; a bare name such as `tester` gets
`email.sendmail.domain`, as the sendmail shim gives it) and enqueues them:
`send_messages` returns once each message is durable in the queue, never
waiting on SMTP. Lazy strings (`gettext_lazy`) are taken wherever strings
are. The messages of one `send_messages` call may go out in another order:
the daemon sends over parallel connections.

Extras, named as django-anymail names them, read from the message when set:
`send_at` (a datetime, or epoch seconds), `priority` (an int, higher first),
`idempotency_key` (a str: the same key gives the same message id, and
a second enqueue of it is a no-op) and `tags` (a dict such as `{"order": "42"}`,
keyed, as anymail's `metadata`: `mailmand list --tag order=42` finds the message,
its events carry them). After a send, `message.mailmand_id` holds the id that
`mailmand show` knows.

Settings: `MAILMAND_CONFIG` (a path) chooses the configuration; without it,
the usual discovery ($MAILMAND_CONFIG, /etc/mailmand/; never the working directory).
`MAILMAND_DATABASE` (a `DATABASES` alias), with the postgres queue engine:
each message is queued through that Django connection, inside whatever
transaction is open on it, so `send_mail()` within `transaction.atomic()` is
queued if and only if the block commits (docs/outbox.md).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage

from .client import Client
from .errors import InvalidMessage, MailmandError
from .headers import as_text
from .raw import RawMessage

# Django builds a backend per send_mail() call; a queue handle opened per
# call is ~20x slower than one kept open, so clients are shared per process.
_clients: dict[str | None, Client] = {}
_clients_lock = threading.Lock()


def _client(config: str | None) -> Client:
    with _clients_lock:
        client = _clients.get(config)
        if client is None:
            client = _clients[config] = Client(config)
        return client


class EmailBackend(BaseEmailBackend):
    """Queues each message on mailmand's queue; the daemon delivers it."""

    def __init__(self, fail_silently: bool = False, config: str | None = None, **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.config = config or getattr(settings, "MAILMAND_CONFIG", None)
        self.database: str | None = getattr(settings, "MAILMAND_DATABASE", None)
        self.client: Client | None = None

    def open(self) -> bool:
        """Open the queue (shared by every backend of this process on the same configuration).
        True when this call opened it, as Django's SMTP backend answers."""
        if self.client is not None:
            return False
        try:
            self.client = _client(str(self.config) if self.config else None)
        except MailmandError:
            if not self.fail_silently:
                raise
            return False
        return True

    def close(self) -> None:
        # The shared client stays open for the next backend: nothing is buffered in it.
        self.client = None

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        """Enqueue each message; returns how many were queued."""
        if not email_messages:
            return 0
        opened = self.open()
        if self.client is None:  # could not open, and fail_silently
            return 0
        queued = 0
        try:
            for message in email_messages:
                try:
                    if self._enqueue(self.client, message):
                        queued += 1
                except (MailmandError, ValueError):
                    if not self.fail_silently:
                        raise
        finally:
            if opened:
                self.close()
        return queued

    def _enqueue(self, client: Client, message: EmailMessage) -> bool:
        recipients = message.recipients()
        if not recipients:  # as Django's SMTP backend: nothing to send, not an error
            return False
        email = to_email(message, client)
        connection = self._connection()
        try:
            msg_id = client.enqueue(email, send_after=_send_at(message), connection=connection)
        except TypeError as exc:
            if connection is None:
                raise
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(f"MAILMAND_DATABASE = {self.database!r}: {exc}") from None
        message.mailmand_id = msg_id  # type: ignore[attr-defined]
        return True

    def _connection(self) -> Any:
        """The psycopg connection under MAILMAND_DATABASE (in Django's transaction when one
        is open: `atomic()` turned its autocommit off), or None without the setting."""
        if not self.database:
            return None
        from django.core.exceptions import ImproperlyConfigured
        from django.db import connections
        from django.db.utils import ConnectionDoesNotExist

        try:
            wrapper = connections[self.database]
        except ConnectionDoesNotExist:
            raise ImproperlyConfigured(f"MAILMAND_DATABASE = {self.database!r} is not in DATABASES") from None
        if wrapper.vendor != "postgresql":
            raise ImproperlyConfigured(f"MAILMAND_DATABASE = {self.database!r} is a {wrapper.vendor} database: "
                                       "the outbox is a table in a PostgreSQL one") from None
        wrapper.ensure_connection()
        raw = wrapper.connection
        if type(raw).__module__.split(".")[0] != "psycopg":  # Django's backend on psycopg2
            raise ImproperlyConfigured(f"MAILMAND_DATABASE = {self.database!r} runs on {type(raw).__module__}; the "
                                       "outbox needs psycopg 3 (pip install 'mailmand[postgres]': Django uses it "
                                       "when it is installed)")
        return raw


def to_email(message: EmailMessage, client: Client | None = None) -> RawMessage:
    """The message to queue for a Django message: Django's own bytes, our envelope and extras.
    A bare name gets `client`'s email.sendmail.domain (refused without a client)."""
    raw = message.message().as_bytes(linesep="\r\n")
    return RawMessage.parse(
        raw,
        sender=as_text(message.from_email),
        recipients=[as_text(r) or r for r in message.recipients()],
        local_domain=client.local_domain if client is not None else None,
        priority=_extra(message, "priority", int, 0),
        idempotency_key=_extra(message, "idempotency_key", str, None),
        tags=_extra(message, "tags", dict, None),
    )


def _extra(message: EmailMessage, name: str, kind: type, default: Any) -> Any:
    value = getattr(message, name, None)
    if value is None:
        return default
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidMessage(name, value, f"expected {kind.__name__}")
    return value


def _send_at(message: EmailMessage) -> float:
    when = getattr(message, "send_at", None)
    if when is None:
        return 0.0
    if isinstance(when, datetime):
        return when.timestamp()  # naive = local time, as Client.send_at
    if isinstance(when, int | float) and not isinstance(when, bool):
        return float(when)
    raise InvalidMessage("send_at", when, "expected a datetime or epoch seconds")
