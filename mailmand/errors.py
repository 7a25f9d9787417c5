"""The exception tree: one root, and types that carry decisions.

The CLI reads `exit_code`. (Delivery outcomes are not exceptions: the relay
yields a SendResult whose `kind` — sent, temporary, permanent — the retry
policy reads.) Messages name the field or key path and the offending value.
"""

from __future__ import annotations

import os


class MailmandError(Exception):
    """Root of every error mailmand raises on purpose. `exit_code` follows
    the CLI's convention (1 error, 2 usage, 65 a message refused, 78
    configuration); the sendmail entry point maps errors to sendmail's
    sysexits itself."""

    exit_code: int = 1


class InvalidMessage(MailmandError, ValueError):
    """A message that cannot be queued: names the field and the value."""

    exit_code = os.EX_DATAERR  # 65, as sendmail answers a message it refuses

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        # None is "nothing was given": the reason says so, and `: None` would only puzzle.
        super().__init__(f"{field}: {reason}" if value is None else f"{field}: {reason}: {value!r}")


class InvalidAddress(InvalidMessage):
    """An address that does not parse."""


class HeaderInjection(InvalidMessage):
    """A line break or NUL inside a header value (written, or decoded from an
    RFC 2047 encoded word): it could start a header of its own."""


class MessageTooLarge(InvalidMessage):
    """The flattened message is over `max-message-size`."""


class ConfigError(MailmandError):
    """A configuration that does not validate: names the key path."""

    exit_code = os.EX_CONFIG  # 78

    def __init__(self, message: str, path: str | None = None) -> None:
        self.key_path = path
        super().__init__(f"{path}: {message}" if path else message)


class ConfigErrors(ConfigError):
    """Every problem found in one file, each a ConfigError naming its key: one per
    line, so that a file is fixed in one go, not one run per key."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        MailmandError.__init__(self, "\n".join(str(e) for e in errors))
        self.key_path = errors[0].key_path


class QueueError(MailmandError):
    """The spool (or another queue engine) cannot be written or read."""


class SpoolPermissionError(QueueError):
    """This user may not write the spool (not in the daemon's group)."""


class UsageError(MailmandError):
    """A command line that does not make sense (a missing or conflicting flag)."""

    exit_code = 2  # the CLI's usage code (sendmail maps it to EX_USAGE, 64)


class QueueUnavailable(QueueError):
    """The queue cannot be reached or written now (Redis down, spool disk nearly
    full): a temporary condition; the caller may retry (sendmail: EX_TEMPFAIL)."""


class NoOutbox(QueueError):
    """The outbox table does not exist yet: the daemon creates it at start, or
    an app's migrations do, with the SQL `mailmand outbox-sql` prints."""


class StoreError(MailmandError):
    """The store refused an operation."""


class RecordRejected(StoreError):
    """The store cannot hold this record (a value out of its range, a constraint):
    ingest quarantines the record and goes on with the rest."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or written now (disk full, database down):
    ingest hands items back to the queue and dispatch keeps outcomes to commit later."""


class NoStore(StoreError):
    """A command that only reads, on a host where the daemon never made the store."""


class NotFound(StoreError):
    """No message has that id."""


class InvalidState(StoreError):
    """The operation does not apply to a message in its current status."""


class AlreadyRunning(MailmandError):
    """Another daemon holds the spool's single-instance lock."""

