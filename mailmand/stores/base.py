"""The store contract: the one truth about every message.

`Store` is the whole contract; each engine is a module (`sqlite.py`,
`postgres.py`) and one test suite (tests/test_store.py) runs against every
engine. Engines raise `RecordRejected` for a record they cannot hold and
`StoreUnavailable` when they cannot be reached or written now; nothing above
this module names an engine's own exceptions.

A claim is a lease: status `sending`, an owner, a lease end and a token (the
message's claim counter). An outcome is recorded only while the token is
still the message's latest (a fenced finish), so a daemon whose lease ran out
and was taken by another cannot overwrite the newer claim's result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

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
# A daemon whose heartbeat is older than this is not listed as live.
DAEMON_TTL = 30.0


@dataclass(frozen=True)
class Claimed:
    """A message handed to a sender under a lease."""

    id: str
    mail_from: str
    rcpt_to: tuple[str, ...]  # the recipients still to deliver to
    raw: bytes
    attempts: int  # every attempt made before this one (what `list` and `show` count)
    send_after: float
    priority: int
    fails: int = 0  # the attempts that count toward max-fails (the relay answered)
    token: int = 0  # the lease token: this claim's number, for the fenced finish


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt, as recorded."""

    at: float
    relay: str
    code: int | None
    reply: str
    duration: float
    outcome: str  # sent | temporary | permanent | expired
    daemon: str | None = None  # the daemon that made it (filled in by `finish`)


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


@dataclass(frozen=True)
class Finished:
    """One outcome to record: the claim it answers (owner and token), the attempt,
    the new status and each recipient's outcome."""

    id: str
    owner: str
    token: int
    attempt: Attempt
    outcome: Outcome
    recipients: Sequence[RecipientOutcome] = ()


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
    attempts: int  # every attempt on record, as `show` lists them
    last_code: int | None
    last_error: str | None
    updated_at: float
    finished_at: float | None
    idempotency_key: str | None
    fails: int = 0  # the attempts that count toward max-fails (reset by `retry`)

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


@dataclass(frozen=True)
class DaemonInfo:
    """A daemon sharing the store: who it is and when it last said so."""

    id: str  # host:pid:random
    host: str
    pid: int
    version: str
    started_at: float
    heartbeat_at: float
    spool: str = ""  # its spool directory (one daemon per spool: a same-host, same-spool row is a predecessor)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Watch(Protocol):
    def close(self) -> None: ...


@dataclass
class Exported:
    """One message with everything recorded about it, as `migrate` copies it."""

    row: dict[str, Any]  # the messages row, by column name
    raw: bytes
    attempts: list[dict[str, Any]] = field(default_factory=list)
    recipients: list[dict[str, Any]] = field(default_factory=list)


class Store:
    """Base class; its methods are the whole contract of a store engine.
    Every method is one transaction unless it says otherwise. Writes raise
    `StoreUnavailable` when the store cannot take them now (nothing changed)."""

    # True when only one daemon can ever use the store (SQLite, under its file
    # lock): then a starting daemon may take back every lease at once.
    single_instance = False
    name = "store"  # what log lines call it: its path, or its dsn with the password masked

    # -- ingest ----------------------------------------------------------------

    def insert(self, records: Sequence[Record]) -> int:
        """Insert records keyed by id; an id already present is a no-op.
        Returns how many were new. Durable on return. Raises RecordRejected
        when a record cannot be held (the whole call changes nothing)."""
        raise NotImplementedError

    # -- dispatch --------------------------------------------------------------

    def claim(self, now: float, limit: int, owner: str, lease: float) -> list[Claimed]:
        """Atomically move up to `limit` due messages (queued or deferred,
        due_at <= now) to `sending` under `owner`'s lease until now+lease,
        highest priority first, then the longest due; each gets a new token.
        Never takes a message another claim holds."""
        raise NotImplementedError

    def finish(self, outcomes: Sequence[Finished]) -> list[bool]:
        """Record each attempt, each recipient's outcome and the new status, in
        one transaction; durable on return. An outcome applies only while its
        token is the message's latest claim (the lease may have run out, but
        nobody claimed the message since); otherwise the attempt is kept as
        history, the status is left to the newer claim, and False is returned
        for it. A message that ends failed, expired or cancelled leaves no
        recipient reading `deferred`."""
        raise NotImplementedError

    def renew(self, owner: str, ids: Sequence[str], until: float) -> int:
        """Extend `owner`'s leases on `ids` (still in flight) to `until`."""
        raise NotImplementedError

    def release_own(self, owner: str, ids: Sequence[str]) -> int:
        """Hand back `owner`'s leases on `ids`, never tried (stopping)."""
        raise NotImplementedError

    def sweep_expired(self, now: float, spare: Sequence[str] = ()) -> int:
        """Hand back every lease that ran out before `now`, whoever holds it,
        except the messages in `spare` (the caller's own, still in flight)."""
        raise NotImplementedError

    def take_over(self, predecessor: str | None) -> int:
        """Hand back at once every lease `predecessor` held (a daemon known to
        be dead). None: every lease, which only a `single_instance` store's
        lock holder may ask."""
        raise NotImplementedError

    def next_due(self) -> float | None:
        """The earliest due_at of a waiting message, or None."""
        raise NotImplementedError

    def problem(self) -> str | None:
        """What is wrong with the store now, as this process last saw it: its last
        call's failure, or a call waiting too long for an answer; None when fine.
        From memory only, never blocking (`/healthz` asks it)."""
        return None

    def watch(self, on_due: Callable[[], None]) -> Watch | None:
        """Call `on_due` whenever another daemon stores something due now.
        None: the engine has no such signal (one daemon: it knows itself)."""
        return None

    # -- daemons -----------------------------------------------------------------

    def register(self, daemon: DaemonInfo) -> None:
        """Add (or refresh) a daemon's row."""
        raise NotImplementedError

    def heartbeat(self, daemon_id: str, now: float) -> None:
        raise NotImplementedError

    def unregister(self, daemon_id: str) -> None:
        raise NotImplementedError

    def daemons(self, now: float | None = None) -> list[DaemonInfo]:
        """Daemons whose heartbeat is younger than DAEMON_TTL at `now`; every
        row, live or not, when `now` is None."""
        raise NotImplementedError

    # -- reading ---------------------------------------------------------------

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

    def oldest_due(self, now: float) -> float | None:
        """due_at of the oldest message that is due now, or None."""
        due = self.next_due()
        return due if due is not None and due <= now else None

    # -- operator actions --------------------------------------------------------

    def cancel(self, message_id: str, now: float) -> None:
        """queued/deferred → cancelled; anything else raises InvalidState."""
        raise NotImplementedError

    def requeue(self, message_id: str | None, now: float) -> int:
        """failed/expired → queued, due now, with a fresh max-fails budget, to
        the recipients not yet delivered to. None: every failed or expired
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

    # -- quarantine --------------------------------------------------------------

    def quarantine(self, reason: str, data: bytes, now: float) -> int:
        """Keep a spool item that could not be ingested, with its reason."""
        raise NotImplementedError

    def quarantined(self, limit: int = 50) -> list[Quarantined]:
        raise NotImplementedError

    def quarantine_count(self) -> int:
        raise NotImplementedError

    # -- statistics and upkeep -----------------------------------------------------

    def stats(self, since: float, now: float) -> dict[str, Any]:
        """Sent/failed/expired counts, latency percentiles, top failure
        reasons and hourly queue depth since `since`."""
        raise NotImplementedError

    def record_depth(self, now: float) -> None:
        """Sample the waiting queue's depth for the hourly series."""
        raise NotImplementedError

    def housekeeping(self, now: float) -> None:
        """The engine's own upkeep (folding counters, forgetting dead daemons)."""

    # -- migrate -----------------------------------------------------------------

    def export(self, batch: int = 500) -> Any:
        """Yield lists of `Exported`, every message with its body, attempts and
        recipients (not one transaction: for a stopped store)."""
        raise NotImplementedError

    def import_messages(self, messages: Sequence[Exported]) -> list[str]:
        """Insert exported messages with their states and times kept; an id
        already present is left alone (with its attempts). Returns the ids that were new."""
        raise NotImplementedError

    def close(self) -> None:
        pass
