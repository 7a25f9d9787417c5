"""The store contract's data model: statuses, event types, and the values a
store takes and gives back (claims, outcomes, attempts, events, selections,
pages, daemons, suppressions). `base.Store` is the contract that speaks in them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class Status(StrEnum):
    QUEUED = "queued"  # waiting for its send time (scheduled) or for a sender
    SENDING = "sending"  # claimed under a lease
    DEFERRED = "deferred"  # a temporary failure; tried again at due_at
    SENT = "sent"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    HELD = "held"  # set aside by an operator (`mailmand hold`): never claimed until released


class EventType(StrEnum):
    """What an event says happened to a message: the state it entered (a claim,
    `sending`, is not one: a lease handed back leaves the message as it was)."""

    QUEUED = "queued"  # stored, or re-queued by `retry`
    DEFERRED = "deferred"
    SENT = "sent"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    SUPPRESSED = "suppressed"
    HELD = "held"
    RELEASED = "released"


WAITING = (Status.QUEUED, Status.DEFERRED)  # what a claim may take
FINISHED = (Status.SENT, Status.FAILED, Status.EXPIRED, Status.CANCELLED)
UNFINISHED = (Status.QUEUED, Status.SENDING, Status.DEFERRED, Status.HELD)
# The moves an operator makes, and the statuses each may start from: the one
# table the CLI (its choices, its refusals) and the stores (their WHEREs) read.
# (A daemon's own moves, claim, finish and sweep, are the store's SQL: queued or
# deferred -> sending -> sent, deferred, failed or expired.)
OPERATOR_MOVES: dict[str, tuple[Status, ...]] = {
    "cancel": (Status.QUEUED, Status.DEFERRED, Status.HELD),  # -> cancelled
    "retry": (Status.FAILED, Status.EXPIRED),  # -> queued, with a fresh max-fails budget
    "hold": (Status.QUEUED, Status.DEFERRED),  # -> held (a message being sent finishes its attempt first)
    "release": (Status.HELD,),  # -> queued (never tried) or deferred, due when it was
    "flush": (Status.DEFERRED,),  # due now
}
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
    paused: float = 0.0  # seconds it spent held: its max-time clock stood still that long

    @property
    def clock(self) -> float:
        """When its max-time clock started: the send time, moved on by the time it spent held."""
        return self.send_after + self.paused


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
    status: str  # sent | deferred | failed | cancelled | suppressed
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
    # The recipients the attempt was for: its event gives each of them the message's
    # outcome when the relay said nothing per recipient (a lost connection, expiry).
    rcpt_to: Sequence[str] = ()


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
    held_at: float | None = None  # when an operator held it (status held)
    paused: float = 0.0  # seconds spent held before, by which its max-time deadline moved
    tags: Mapping[str, str] = field(default_factory=dict)  # the app's own keys, given at enqueue

    def to_json(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["status"] = self.status.value
        d["rcpt_to"] = list(self.rcpt_to)
        d["tags"] = dict(self.tags)
        return d


# Where an event sits in the log: (the writing transaction's id, its sequence
# number). A reader walks the log in this order; see `Store.events`.
Position = tuple[int, int]
START: Position = (-1, -1)  # before every event


@dataclass(frozen=True)
class NewEvent:
    """An event to record, in the transaction of the state change it describes."""

    message: str  # the message id
    type: EventType
    at: float
    attempt: int = 0  # the message's attempts so far (the one that decided it included)
    recipients: Sequence[RecipientOutcome] = ()
    relay: str | None = None
    code: int | None = None
    reply: str | None = None


@dataclass(frozen=True)
class Event:
    """A recorded event. `id` is given once, when it is recorded, and never changes:
    every delivery of the event (a webhook's retries too) carries the same id."""

    id: str
    type: EventType
    message: str
    tags: Mapping[str, str]
    recipients: tuple[RecipientOutcome, ...]
    relay: str | None
    code: int | None
    reply: str | None
    attempt: int
    at: float
    position: Position = field(default=START, compare=False)  # where it sits in the log (never sent)

    def to_json(self) -> dict[str, Any]:
        """The event as webhooks and `mailmand events --json` give it."""
        return {"id": self.id, "type": self.type.value, "message": self.message, "tags": dict(self.tags),
                "recipients": [r.__dict__ for r in self.recipients], "relay": self.relay, "code": self.code,
                "reply": self.reply, "attempt": self.attempt, "at": round(self.at, 6)}


@dataclass(frozen=True)
class RelayReply:
    """A relay's reply as an event recorded it: its newest, for the dashboard."""

    relay: str
    type: EventType  # what the reply made of the message: sent, deferred, failed, ...
    message: str
    code: int | None
    reply: str | None
    at: float


@dataclass(frozen=True)
class HookClaim:
    """A webhook's lease, held by one daemon at a time: it alone sends the webhook's events."""

    token: int  # the lease's number, for the fenced writes that follow
    after: Position  # every event up to here was acknowledged (or given up on)
    fails: int  # failed POSTs in a row
    retry_at: float  # after a failed POST: no new one before this


@dataclass(frozen=True)
class Key:
    """A message's place in a listing, newest first: (created_at, id), which an
    index orders. A page goes on after the last row's key; the key of a message
    purged meanwhile still says where that was."""

    created_at: float
    id: str

    @classmethod
    def of(cls, info: MessageInfo) -> Key:
        return cls(info.created_at, info.id)


@dataclass(frozen=True)
class Selection:
    """Which messages a listing or an operator's move takes; every criterion given
    must hold (an empty one is no criterion). Addresses match whole and without
    regard to ASCII case; `@example.com` matches every address at that domain."""

    statuses: tuple[Status, ...] = ()  # any of these
    ids: tuple[str, ...] = ()  # any of these
    to: tuple[str, ...] = ()  # a recipient (any envelope recipient) is one of these
    sender: tuple[str, ...] = ()  # the envelope sender is one of these
    since: float | None = None  # created at or after
    until: float | None = None  # created before
    subject: str | None = None  # the subject holds this text (ASCII case ignored)
    tags: tuple[tuple[str, str], ...] = ()  # carries every one of these (key, value) pairs


@dataclass(frozen=True)
class Page:
    """One page of a listing, newest first; `next` is where the next page starts,
    None when this one reached the end."""

    messages: list[MessageInfo]
    next: Key | None


@dataclass(frozen=True)
class Quarantined:
    """A queue item that could not be ingested, kept with why and where it came from."""

    id: int
    at: float
    reason: str
    data: bytes
    source: str = ""  # the queue and its entry (a spool row, a stream entry); "" before it was kept

    def to_json(self, data: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "at": self.at, "reason": self.reason, "source": self.source,
                               "size": len(self.data)}
        if data:
            try:
                out["data"] = self.data.decode("utf-8")
            except UnicodeDecodeError:
                import base64

                out["data_base64"] = base64.b64encode(self.data).decode("ascii")
        return out


# Age buckets of `stats --by-domain`, qshape's: each bound doubles from 5 minutes
# (0-5, 5-10, 10-20, 20-40 ... minutes), then one for what is older still.
AGE_BOUNDS = tuple(300.0 * 2 ** i for i in range(9))  # 5 min .. 1280 min
SCHEDULED = -1  # the bucket of mail whose send time has not come yet


@dataclass(frozen=True)
class DomainShape:
    """Recipients not yet delivered to, by domain and age (seconds since the send
    time: the bucket is the index of the first AGE_BOUNDS bound above it,
    len(AGE_BOUNDS) beyond the last, SCHEDULED before its time)."""

    domain: str
    buckets: dict[int, int]

    @property
    def total(self) -> int:
        return sum(self.buckets.values())


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
    # Its relays as its last heartbeat saw them: one JSON object each (smtp.fleet.RelayState.to_json).
    relays: tuple[Mapping[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["relays"] = [dict(r) for r in self.relays]
        return d


@dataclass(frozen=True)
class Refusal:
    """A recipient a relay refused as unknown (policy.suppressible): one count toward its suppression."""

    address: str
    code: int | None
    reply: str
    at: float


@dataclass(frozen=True)
class Suppression:
    """An address mail is not sent to until `until` (None: refused `refusals` times, not yet suppressed)."""

    address: str  # as stored: lowercased
    refusals: int
    code: int | None
    reply: str  # the refusal that suppressed it, or the operator's reason
    first_at: float
    last_at: float
    until: float | None
    source: str  # relay | operator

    def active(self, now: float) -> bool:
        return self.until is not None and self.until > now

    def reason(self) -> str:
        """Why mail to it fails at ingest, in the recipient's row and its event."""
        from datetime import datetime

        until = datetime.fromtimestamp(self.until or 0).astimezone().isoformat(sep=" ", timespec="minutes")
        if self.source == "operator":
            return f"suppressed by the operator until {until}: {self.reply}"
        return f"suppressed until {until}: refused as unknown ({self.reply})"

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
    events: list[dict[str, Any]] = field(default_factory=list)
