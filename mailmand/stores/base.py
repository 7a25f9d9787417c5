"""The store contract: the one truth about every message.

`Store` is the whole contract; each engine is a module (`sqlite.py`, later
`postgres.py`) and one test suite runs against every engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..message import Record



class Status(StrEnum):
    QUEUED = "queued"  # waiting for its send time (scheduled) or for a sender
    SENDING = "sending"  # claimed under a lease
    DEFERRED = "deferred"  # a temporary failure; tried again at due_at
    SENT = "sent"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


WAITING = (Status.QUEUED, Status.DEFERRED)
FINISHED = (Status.SENT, Status.FAILED, Status.EXPIRED, Status.CANCELLED)


@dataclass(frozen=True)
class Claimed:
    """A message handed to a sender under a lease."""

    id: str
    mail_from: str
    rcpt_to: tuple[str, ...]  # the recipients still to deliver to
    raw: bytes
    attempts: int  # attempts made before this one
    send_after: float
    priority: int


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt, as recorded."""

    at: float
    relay: str
    code: int | None
    reply: str
    duration: float
    outcome: str  # sent | temporary | permanent | expired


@dataclass(frozen=True)
class RecipientOutcome:
    address: str
    status: str  # sent | deferred | failed
    code: int | None
    reply: str


@dataclass(frozen=True)
class Outcome:
    """What the policy decided after an attempt."""

    status: Status
    reason: str | None = None
    code: int | None = None
    due_at: float | None = None  # next attempt, when deferred
    pending: tuple[str, ...] | None = None  # recipients left to try, when deferred
    counted: bool = True  # counts toward max-fails (not when the relay was never reached)


# One finish() call's arguments: (message_id, owner, attempt, outcome, recipients).
Finished = tuple[str, str, Attempt, Outcome, Sequence[RecipientOutcome]]


@dataclass(frozen=True)
class MessageInfo:
    id: str
    status: Status
    mail_from: str
    rcpt_to: tuple[str, ...]
    subject: str
    priority: int
    size: int
    created_at: float
    send_after: float
    due_at: float
    attempts: int
    last_code: int | None
    last_error: str | None
    updated_at: float
    finished_at: float | None
    idempotency_key: str | None

    def to_json(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["status"] = self.status.value
        d["rcpt_to"] = list(self.rcpt_to)
        return d


@dataclass(frozen=True)
class Quarantined:
    id: int
    at: float
    reason: str
    data: bytes


class Store:
    """Base class; its methods are the whole contract of a store engine.
    Every method is one transaction unless it says otherwise."""

    def insert(self, records: Sequence[Record]) -> int:
        """Insert records keyed by id; an id already present is a no-op.
        Returns how many were new. Durable on return."""
        raise NotImplementedError

    def claim(self, now: float, limit: int, owner: str, lease: float) -> list[Claimed]:
        """Atomically move up to `limit` due messages (queued or deferred,
        due_at <= now) to `sending` under `owner`'s lease until now+lease,
        highest priority first, then the longest due."""
        raise NotImplementedError

    def finish(self, message_id: str, owner: str, attempt: Attempt, outcome: Outcome,
               recipients: Sequence[RecipientOutcome] = ()) -> bool:
        """Record an attempt, each recipient's outcome and the new status,
        together. Returns False if `owner` no longer held the lease (the
        attempt is still recorded; the status is left to the new owner)."""
        raise NotImplementedError

    def finish_many(self, outcomes: Sequence[Finished]) -> list[bool]:
        """`finish` for several messages, in one transaction where the engine
        can (one commit for what came back together); durable on return."""
        return [self.finish(*one) for one in outcomes]

    def release(self, owner: str | None, ids: Sequence[str] | None = None, now: float | None = None,
                spare: str | None = None) -> int:
        """Hand leased messages back to the queue, unchanged but for status.
        owner=None: every lease (the single-instance lock holder's take-over);
        `ids` restricts to those; `now` restricts to leases that ran out;
        `spare` leaves that owner's leases alone (a live dispatcher's own)."""
        raise NotImplementedError

    def next_due(self) -> float | None:
        """The earliest due_at of a waiting message, or None."""
        raise NotImplementedError

    def get(self, message_id: str) -> MessageInfo:
        """Raises NotFound."""
        raise NotImplementedError

    def raw(self, message_id: str) -> bytes:
        raise NotImplementedError

    def attempts(self, message_id: str) -> list[Attempt]:
        raise NotImplementedError

    def recipients(self, message_id: str) -> list[RecipientOutcome]:
        raise NotImplementedError

    def list_messages(self, status: Status | None = None, limit: int = 50) -> list[MessageInfo]:
        """Newest first; never reads message bodies."""
        raise NotImplementedError

    def counts(self) -> dict[Status, int]:
        """Messages per status, every status present (0 when none)."""
        raise NotImplementedError

    def cancel(self, message_id: str, now: float) -> None:
        """queued/deferred → cancelled; anything else raises InvalidState."""
        raise NotImplementedError

    def requeue(self, message_id: str | None, now: float) -> int:
        """failed/expired → queued with fresh attempts, due now, to the
        recipients not yet delivered to. None: every failed or expired
        message. Raises InvalidState for one in another status."""
        raise NotImplementedError

    def flush(self, ids: Sequence[str] | None, now: float) -> int:
        """Deferred messages (all, or those of `ids` that are deferred) become
        due at `now`; nothing else changes (scheduled mail keeps its time).
        Returns how many. Engines that can wake running daemons (PostgreSQL:
        NOTIFY) do so; for the others the CLI signals the daemon."""
        raise NotImplementedError

    def purge(self, before: float) -> int:
        """Delete finished messages (and their attempts) finished before `before`."""
        raise NotImplementedError

    def quarantine(self, reason: str, data: bytes, now: float) -> int:
        """Keep a spool item that could not be ingested, with its reason."""
        raise NotImplementedError

    def quarantined(self, limit: int = 50) -> list[Quarantined]:
        raise NotImplementedError

    def quarantine_count(self) -> int:
        raise NotImplementedError

    def oldest_due(self, now: float) -> float | None:
        """due_at of the oldest message that is due now, or None."""
        due = self.next_due()
        return due if due is not None and due <= now else None

    def stats(self, since: float, now: float) -> dict[str, Any]:
        """Sent/failed/expired counts, latency percentiles, top failure
        reasons and hourly queue depth since `since`."""
        raise NotImplementedError

    def record_depth(self, now: float) -> None:
        """Sample the waiting queue's depth for the hourly series."""
        raise NotImplementedError

    def close(self) -> None:
        pass
