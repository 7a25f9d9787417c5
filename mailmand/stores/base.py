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

from collections.abc import Callable, Mapping, Sequence
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
        """Insert records keyed by id (each new one with its tags and its `queued`
        event); an id already present is a no-op. Returns how many were new. Durable on return. Raises RecordRejected
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
        recipient reading `deferred`. Each outcome that applies writes its event."""
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
        be dead), its webhooks' too. None: every lease, which only a
        `single_instance` store's lock holder may ask. Returns how many messages."""
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

    def heartbeat(self, daemon_id: str, now: float, relays: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Say the daemon is alive at `now`; with `relays`, replace the relay
        state it shows (`DaemonInfo.relays`; JSON-able mappings)."""
        raise NotImplementedError

    def unregister(self, daemon_id: str) -> None:
        raise NotImplementedError

    def daemons(self, now: float | None = None) -> list[DaemonInfo]:
        """Daemons whose heartbeat is younger than DAEMON_TTL at `now`; every
        row, live or not, when `now` is None."""
        raise NotImplementedError

    # -- relay quotas ------------------------------------------------------------

    def quota_reserve(self, relay: str, day: int, want: int, limit: int) -> int:
        """Count up to `want` more messages against `relay`'s quota for `day`
        (UTC days since the epoch) without passing `limit`; returns how many were
        granted (0: the quota is spent). Atomic: daemons sharing the store
        never grant more than `limit` between them."""
        raise NotImplementedError

    def quota_release(self, relay: str, day: int, n: int) -> None:
        """Give back `n` granted and unused (never below 0)."""
        raise NotImplementedError

    def quota_used(self, relay: str, day: int) -> int:
        """What has been granted for `relay` on `day`."""
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

    def select(self, selection: Selection, limit: int, after: Key | None = None) -> Page:
        """The messages `selection` takes, newest first (created_at, then id, both
        descending), at most `limit`, starting after `after`: the one listing
        `list`, the operator's moves and the HTTP API page through. Walks an index
        and stops at `limit` rows; never OFFSET, never reads message bodies."""
        raise NotImplementedError

    def list_messages(self, status: Status | None = None, limit: int = 50) -> list[MessageInfo]:
        """Newest first (one page of `select`)."""
        return self.select(Selection(statuses=(status,) if status else ()), limit).messages

    def by_domain(self, now: float, statuses: Sequence[Status] = UNFINISHED) -> list[DomainShape]:
        """Recipients not yet delivered to of the messages in `statuses`, by domain
        and age bucket at `now` (qshape's view), most recipients first. Reads every
        such message's recipients: seconds on a backlog of a million."""
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
        """queued/deferred/held → cancelled (and its event); anything else raises InvalidState."""
        raise NotImplementedError

    def hold(self, ids: Sequence[str], now: float) -> list[str]:
        """queued/deferred → held, in one transaction: never claimed until released,
        and its max-time clock stands still meanwhile. Returns the ids it held; the
        others (another status, or no such message) are left as they are. Each writes a
        `held` event."""
        raise NotImplementedError

    def release(self, ids: Sequence[str], now: float) -> list[str]:
        """held → queued (never tried) or deferred, due when it was due before (at
        once if that time has passed); the time it was held moves its max-time
        deadline on by as much. Returns the ids it released; others are left alone. Each
        writes a `released` event."""
        raise NotImplementedError

    def requeue(self, message_id: str | None, now: float) -> int:
        """failed/expired → queued, due now, with a fresh max-fails budget, to
        the recipients not yet delivered to. None: every failed or expired
        message. Each writes a `queued` event. Raises InvalidState for one in another status."""
        raise NotImplementedError

    def flush(self, ids: Sequence[str] | None, now: float) -> int:
        """Deferred messages (all, or those of `ids` that are deferred) become
        due at `now`; nothing else changes (scheduled mail keeps its time).
        Returns how many. Engines that can wake running daemons (PostgreSQL:
        NOTIFY) do so; for the others the CLI signals the daemon."""
        raise NotImplementedError

    def purge(self, before: float) -> int:
        """Delete finished messages (their attempts, tags and events with them) finished before `before`."""
        raise NotImplementedError

    # -- events ------------------------------------------------------------------
    # Every state change writes its event in its own transaction (the outbox
    # inside the store): a crash neither loses one nor invents one.

    def events(self, *, after: Position | None = None, message_id: str | None = None,
               types: Sequence[EventType] = (), tags: Mapping[str, str] | None = None, since: float | None = None,
               limit: int = 100) -> tuple[list[Event], Position]:
        """Events in log order, filtered (a message, types, tags, at >= since).
        Without `after`: the last `limit` committed, and the log's horizon (the
        position below which no running transaction can still add one). With
        `after`: the first `limit` past that position, up to the horizon only, and
        where that read ended (the last event's position when `limit` were found,
        else the horizon): a reader that goes on from there never passes over an
        event committed late."""
        raise NotImplementedError

    def events_json(self, after: Position, types: Sequence[EventType] = (),
                    limit: int = 100) -> tuple[list[tuple[float, str]], Position]:
        """As `events(after=...)`, each event as (its `at`, the JSON text of its `to_json`):
        what a webhook POSTs, made without building the events in between."""
        raise NotImplementedError

    # -- webhooks: each one's place in the log, under a lease ---------------------------

    def webhook_register(self, url: str) -> None:
        """Know a webhook (its key: the URL, credentials masked); a new one starts at
        the end of the log (it is sent the events from now on)."""
        raise NotImplementedError

    def webhook_claim(self, url: str, owner: str, now: float, lease: float) -> HookClaim | None:
        """Take or renew the webhook's lease until now+lease; None while another daemon
        holds it. A lease taken anew gets a new token; a renewal keeps it."""
        raise NotImplementedError

    def webhook_done(self, url: str, owner: str, token: int, upto: Position) -> bool:
        """Events up to `upto` are acknowledged: the place moves there and the failures
        are forgotten. Fenced: False (nothing changed) if the lease is no longer `token`."""
        raise NotImplementedError

    def webhook_failed(self, url: str, owner: str, token: int, retry_at: float) -> bool:
        """A POST failed: one more failure in a row, no POST again before `retry_at`. Fenced as `webhook_done`."""
        raise NotImplementedError

    def webhook_release(self, url: str, owner: str) -> None:
        """Hand back the lease (stopping): another daemon may take it at once."""
        raise NotImplementedError

    def webhook_pending(self, url: str, types: Sequence[EventType] = (), limit: int | None = None) -> int:
        """Events of `types` (all when empty) past the webhook's place: not yet
        acknowledged (counted up to `limit`); 0 for a webhook it does not know."""
        raise NotImplementedError

    # -- suppression ---------------------------------------------------------------
    # An address the relays refused as unknown is not offered again for a while:
    # `insert` fails mail to it for that recipient (the others go), with a
    # `suppressed` event, in the insert's own transaction.

    def note_refusals(self, refusals: Sequence[Refusal], after: int, duration: float) -> list[str]:
        """Count each refusal against its address (lowercased); an address refused `after`
        times in all is suppressed until its last refusal + `duration`. Returns the
        addresses suppressed by this call."""
        raise NotImplementedError

    def suppress(self, address: str, now: float, until: float, reason: str) -> None:
        """Suppress `address` until `until` (the operator's), whatever its count."""
        raise NotImplementedError

    def unsuppress(self, address: str) -> bool:
        """Forget `address` and its refusals; False when the store had none."""
        raise NotImplementedError

    def suppressions(self, now: float, addresses: Sequence[str] | None = None,
                     limit: int = 1000) -> list[Suppression]:
        """The addresses suppressed at `now`, latest refusal first (at most `limit`);
        with `addresses`, those of them the store knows, suppressed or only counted."""
        raise NotImplementedError

    def ahead(self, message_id: str, now: float) -> int:
        """How many messages due at `now` a claim takes before this one (higher priority,
        or as high and due longer): the queue in front of it."""
        raise NotImplementedError

    # -- quarantine --------------------------------------------------------------

    def quarantine(self, reason: str, data: bytes, now: float, source: str = "") -> int:
        """Keep a queue item that could not be ingested, with its reason and where it
        came from (`Queue.origin`). Returns the entry's number."""
        raise NotImplementedError

    def quarantined(self, limit: int = 50) -> list[Quarantined]:
        """The newest entries first."""
        raise NotImplementedError

    def quarantined_entry(self, entry: int) -> Quarantined:
        """Raises NotFound."""
        raise NotImplementedError

    def unquarantine(self, entry: int, records: Sequence[Record] = ()) -> int:
        """Delete the entry and insert `records` (what it now reads as) in one
        transaction: the entry is gone exactly when its mail is stored. Returns how
        many records were new. Raises NotFound (nothing changed), RecordRejected."""
        raise NotImplementedError

    def quarantine_count(self) -> int:
        raise NotImplementedError

    # -- statistics and upkeep -----------------------------------------------------

    def activity(self, since: float, until: float, step: float) -> dict[str, list[int]]:
        """Messages per `step` seconds from `since` to `until`, one count per step, oldest
        first: `created` (by creation time) and each final status (by the time they
        finished). Reads an index range: meant for a recent window (the last hour)."""
        raise NotImplementedError

    def finished_hourly(self, since: float, until: float) -> dict[str, list[int]]:
        """Messages that became sent, failed or expired, per hour from the hour of `since`
        to that of `until` (the hourly roll-ups: a few rows whatever the store's size)."""
        raise NotImplementedError

    def last_replies(self, window: int = 1000) -> list[RelayReply]:
        """The newest event carrying each relay's reply, among the last `window` events
        (relays silent for longer are absent), newest first."""
        raise NotImplementedError

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
