"""The store contract: the one truth about every message.

`Store` is the whole contract (the values it takes and gives are in
`model.py`); each engine is a module (`sqlite.py`,
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
from typing import TYPE_CHECKING, Any

from .model import (
    UNFINISHED,
    Attempt,
    Claimed,
    DaemonInfo,
    DomainShape,
    Event,
    EventType,
    Exported,
    Finished,
    HookClaim,
    Key,
    MessageInfo,
    Page,
    Position,
    Quarantined,
    RecipientOutcome,
    Refusal,
    RelayReply,
    Selection,
    Status,
    Suppression,
    Watch,
)

if TYPE_CHECKING:
    from ..message import Record


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
