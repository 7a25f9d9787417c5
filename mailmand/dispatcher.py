"""Dispatch: claim what is due, send it, commit each outcome as it comes back.

`Dispatcher.run_once(now=None)` is the one function behind the APScheduler
job (scheduler.py), `mailmand --once` and the tests (which inject `now`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Generator
from concurrent import futures
from dataclasses import dataclass
from datetime import datetime

from . import dkim, notices, observe, policy
from .config import ServerConfig
from .config.values import format_duration as fmt_duration
from .errors import StoreUnavailable
from .repeats import Repeats
from .smtp import Envelope, SendResult
from .smtp.fleet import Fleet
from .stores.base import Store
from .stores.model import Attempt, Claimed, Finished, Outcome, Refusal, Status

log = logging.getLogger(__name__)

HEARTBEAT = 5.0  # seconds between heartbeats (and lease renewals), at most
# How long outcomes wait for company before they are committed (or until a
# batch of them is in): one commit, and its fsync, per batch or per 20 ms
# instead of one per handful. The relay already has the mail; this delays
# only the store saying so, and a crash resends at most what was not yet
# recorded, as before: about one batch.
COMMIT_LINGER = 0.02
# A claim that finds no room (every lease this daemon may hold is out) waits
# this long for a commit to free some, then the feed answers "nothing now" (None):
# a session with messages in flight goes on with them (their outcomes are what
# frees room) instead of waiting inside the feed, and an idle one asks again.
ROOM_WAIT = 0.05
# No room for this long in a row: the run ends (a store that records nothing).
ROOM_GIVE_UP = HEARTBEAT
SUMMARY_EVERY = 60.0  # seconds between the INFO lines that say what dispatch did


@dataclass
class RunResult:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    expired: int = 0
    released: int = 0  # claimed but handed back unsent (stopping, or the relay could not be reached)
    batches: int = 0
    unreachable: bool = False  # no session to the relay could be opened: the rest waits for the next tick

    def add(self, other: RunResult) -> None:
        """Fold a later run into this one."""
        for name in ("sent", "deferred", "failed", "expired", "released", "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.unreachable = other.unreachable

    def count(self, status: Status) -> None:
        if status is not Status.CANCELLED and status.value in self.__dataclass_fields__:
            setattr(self, status.value, getattr(self, status.value) + 1)


class Summary:
    """What dispatch did, said once a minute at INFO: a line per run was a flood
    (hundreds a minute when mail trickles in), and each run is logged at DEBUG.
    Nothing is said for a minute in which nothing was sent or tried."""

    def __init__(self, every: float = SUMMARY_EVERY) -> None:
        self.every = every
        self._since: float | None = None
        self._done = RunResult()

    def add(self, run: RunResult, now: float) -> None:
        """Count a run that ended at `now` (the run's own clock); say the minute's
        figures once it is over."""
        if self._since is None:
            self._since = now
        self._done.add(run)
        if now - self._since < self.every:
            return
        d = self._done
        if d.sent or d.deferred or d.failed or d.expired:
            expired = f", expired {d.expired}" if d.expired else ""
            log.info("sent %d, deferred %d, failed %d%s in the last minute", d.sent, d.deferred, d.failed, expired)
        self._since, self._done = now, RunResult()


def owner_id() -> str:
    """A daemon's id: host, pid and a random part (pids are reused; a restart is a new daemon)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _FeedState:
    done: bool = False  # the feed has ended: claim nothing more
    swept: float | None = None  # when expired leases were last swept (monotonic)


class Leases:
    """The leases a dispatcher holds: claimed, and neither recorded nor handed back.
    Never more than 2 × batch (the batch being sent and the one claimed ahead of it):
    a claim asks only for the room left, reserved before it is made, so a daemon
    killed at any moment leaves at most that many messages to be sent again."""

    def __init__(self, held: Callable[[], int]) -> None:
        self._held = held  # the messages the dispatcher holds now (in flight, kept, to hand back)
        self._reserved = 0  # claims under way
        self._changed = threading.Condition()

    def count(self) -> int:
        return self._held() + self._reserved

    def reserve(self, batch: int, wait: float = 0.0, stop: Callable[[], bool] = lambda: False) -> int:
        """Room for a claim: up to `batch`, within 2 × batch held. With `wait`, wait
        that long at most for some room (or until `stop()`). 0: no room. The caller
        gives the reservation back with `settle`, once what it claimed is held."""
        deadline = time.monotonic() + wait
        with self._changed:
            while self.count() >= 2 * batch and not stop() and time.monotonic() < deadline:
                self._changed.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            room = min(batch, 2 * batch - self.count())
            if room <= 0 or stop():
                return 0
            self._reserved += room
            return room

    def settle(self, room: int) -> None:
        with self._changed:
            self._reserved -= room
            self._changed.notify_all()

    def freed(self) -> None:
        """Some leases ended (recorded or handed back): a claim waiting for room may go on."""
        with self._changed:
            self._changed.notify_all()


class Dispatcher:
    def __init__(self, store: Store, cfg: ServerConfig, owner: str | None = None) -> None:
        self.store = store
        self.owner = owner or owner_id()
        self.stop = threading.Event()
        self._cfg = cfg
        self._fleet = Fleet(cfg, store)
        self._pending: tuple[ServerConfig, Fleet] | None = None  # a reload, applied between batches
        self._run_lock = threading.Lock()  # one run at a time
        self._cfg_lock = threading.Lock()
        self._live: dict[str, Claimed] = {}  # claimed, not yet answered by the relay
        # Answered, but the store could not take the outcome: kept, and committed
        # (fenced by each claim's token) as soon as it can.
        self._unsaved: list[Finished] = []
        self._unreleased: list[str] = []  # never tried, but the store could not take them back yet
        self.leases = Leases(lambda: len(self._live) + len(self._unsaved) + len(self._unreleased))
        self._renewed = 0.0
        self.last_active = time.monotonic()  # the last look for due mail (start-up counts as one): for /healthz
        # Claims the next batch ahead (its thread starts with the first claim ahead).
        self._claimer = futures.ThreadPoolExecutor(1, thread_name_prefix="mailmand-claim")
        self._store_down = Repeats(log, f"store {store.name}")
        self.summary = Summary()

    @property
    def cfg(self) -> ServerConfig:
        pending = self._pending
        return pending[0] if pending else self._cfg

    def configure(self, cfg: ServerConfig) -> None:
        """Apply a reloaded configuration: now if idle, else before the next
        batch. A batch in flight finishes on the old settings. Raises (and
        changes nothing) if the relay settings cannot be used, e.g. a bad CA file."""
        fleet = Fleet(cfg, self.store, previous=self._fleet)
        with self._cfg_lock:
            self._pending = (cfg, fleet)
        if self._run_lock.acquire(blocking=False):
            try:
                self._apply_pending()
            finally:
                self._run_lock.release()

    def _apply_pending(self) -> None:
        with self._cfg_lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            old = self._fleet
            self._cfg, self._fleet = pending
            old.close()

    @property
    def fleet(self) -> Fleet:
        """The relays, with their state now."""
        return self._fleet

    def relay_states(self) -> list[dict[str, object]]:
        """Each relay's state, for the heartbeat, `status` and /healthz."""
        return self._fleet.states()

    def held(self) -> list[str]:
        """Messages this dispatcher holds a lease on: in flight, or answered and not yet committed."""
        return [*list(self._live), *(f.id for f in list(self._unsaved))]

    def renew(self, now: float | None = None) -> int:
        """Extend the leases of what is held, so that no sweep (ours or a peer's)
        hands out a message still being worked on. Every HEARTBEAT at most."""
        t = time.time() if now is None else now
        self._renewed = time.monotonic()
        held = self.held()
        return self.store.renew(self.owner, held, t + self.cfg.lease) if held else 0

    def run_once(self, now: float | None = None) -> RunResult:
        """Send everything due at `now` (default: the real clock, read afresh
        for every batch), a batch at a time, until nothing is due. Raises
        StoreUnavailable when the store cannot be reached (nothing is claimed then)."""
        result = RunResult()
        with self._run_lock:
            self._flush()
            while True:
                self._apply_pending()
                self._run(self._cfg, self._fleet, now, result)
                # The feed stops early for a reloaded configuration: go on under it.
                if self._pending is None or self.stop.is_set():
                    break
        if result.batches:
            log.debug("dispatched %d batch(es): sent %d, deferred %d, failed %d, expired %d, released %d",
                      result.batches, result.sent, result.deferred, result.failed, result.expired,
                      result.released)
        self.summary.add(result, time.time() if now is None else now)
        return result

    def _run(self, cfg: ServerConfig, relay: Fleet, now: float | None, result: RunResult) -> None:
        live = self._live
        feed = self._feed(cfg, now, result, live)
        try:
            # The sessions pull from the feed, which claims one batch ahead of
            # them: no session waits at a batch boundary. At most a batch is out
            # (handed to the relay, its outcome not yet recorded): what a crash
            # can send twice, though 2 × batch are held under lease.
            for group in relay.send_grouped(feed, self.stop, COMMIT_LINGER, gather=cfg.batch, most=cfg.batch):
                self._commit([(live[sent.id], sent) for sent in group], cfg, now, result)
                for sent in group:  # recorded, or kept in `_unsaved`: held there until it is
                    del live[sent.id]
                self.leases.freed()
        finally:
            feed.close()
            if live:  # stopping, a failure, or no relay: hand back what was never tried, at once
                result.unreachable = not self.stop.is_set() and self._pending is None
                self._unreleased += list(live)
                live.clear()
                result.released += self._release()

    def _release(self) -> int:
        """Hand back the leases on messages never tried; kept (and counted as held)
        while the store cannot take them: a sweep would hand them back after the lease."""
        ids = self._unreleased
        if not ids:
            return 0
        try:
            n = self.store.release_own(self.owner, ids)
        except StoreUnavailable as exc:
            self._store_down.failed("cannot hand back %d claimed message(s): %s", len(ids), exc)
            return 0
        self._unreleased = []
        self.leases.freed()
        return n

    def _feed(self, cfg: ServerConfig, now: float | None, result: RunResult,
              live: dict[str, Claimed]) -> Generator[Envelope | None, None, None]:
        """Claim up to `batch` due messages at a time, expire those past
        max-time, and hand out the rest. Read by the sessions' threads, one at
        a time; after a full batch the next is claimed in a thread of its own
        while this one is sent, so no session waits for the store. None: no room
        for a claim yet (see ROOM_WAIT). Whatever was claimed and not handed out
        is in `live` when the generator ends (the caller hands it back)."""
        state = _FeedState()
        ahead: futures.Future[tuple[list[Claimed], bool]] | None = None
        no_room: float | None = None  # since when claims have found no room (monotonic)
        try:
            batch, more = self._claim(cfg, now, result, live, state, ROOM_WAIT)
            while batch or more:
                if not batch:
                    # No room: the sessions' messages in flight must be recorded first.
                    no_room = no_room if no_room is not None else time.monotonic()
                    if time.monotonic() - no_room >= ROOM_GIVE_UP:
                        break
                    yield None
                    batch, more = self._claim(cfg, now, result, live, state, ROOM_WAIT)
                    continue
                no_room = None
                # The claim found all it asked for: more is likely due, so claim it while
                # this batch is sent, with the room left (mail that trickles in is claimed
                # when asked for, as it comes).
                if more:
                    ahead = self._claimer.submit(self._claim, cfg, now, result, live, state)
                for msg in batch:
                    if self._unsaved:
                        # The store cannot record outcomes: what is in flight finishes, nothing
                        # more starts (the rest stays claimed and is handed back, as claims stop).
                        return
                    yield Envelope(msg.id, msg.mail_from, msg.rcpt_to, dkim.sign(msg.raw, cfg.dkim))
                if ahead is not None:
                    (batch, more), ahead = ahead.result(), None
                    if batch or not more:
                        continue  # the next batch, or nothing more is due
                # Nothing claimed ahead, or there was no room then: claim now, waiting a little for room.
                batch, more = self._claim(cfg, now, result, live, state, ROOM_WAIT)
        finally:
            state.done = True
            if ahead is not None:  # a claim under way lands in `live` before the caller hands it back
                ahead.cancel()
                futures.wait([ahead])

    def _claim(self, cfg: ServerConfig, now: float | None, result: RunResult, live: dict[str, Claimed],
               state: _FeedState, wait: float = 0.0) -> tuple[list[Claimed], bool]:
        """One batch for the feed: what is due and not expired, now in `live`, and
        whether the claim took all it asked for (more may be due). ([], True): no
        room came within `wait`, ask again; ([], False): nothing is due, the run is
        stopping, or the store cannot be reached."""
        def stopping() -> bool:
            return state.done or self.stop.is_set() or self._pending is not None or bool(self._unsaved)

        while not stopping():
            if self._unreleased and not self._release():
                return [], False
            room = self.leases.reserve(cfg.batch, wait, stopping)
            if not room:
                return [], not stopping()
            try:
                got = self._claim_room(cfg, now, result, live, state, room)
            finally:
                self.leases.settle(room)  # what it claimed is held now: in `live`, recorded or kept
            if got is None:
                return [], False
            sendable, claimed = got
            if sendable:
                return sendable, claimed == room
        return [], False

    def _claim_room(self, cfg: ServerConfig, now: float | None, result: RunResult, live: dict[str, Claimed],
                    state: _FeedState, room: int) -> tuple[list[Claimed], int] | None:
        """Claim up to `room` messages; those past max-time are recorded expired, the
        rest go to `live`. (those, how many were claimed); None: nothing is due, or no store."""
        t = time.time() if now is None else now
        self.last_active = time.monotonic()
        observe.observer.dispatching()
        try:
            if time.monotonic() - self._renewed >= min(HEARTBEAT, cfg.lease / 3):
                self.renew(t)
            # Leases that ran out (a crashed peer, or ours left by a failed write); never what we hold.
            # At the start of each run, then as often as leases are renewed.
            if state.swept is None or time.monotonic() - state.swept >= min(HEARTBEAT, cfg.lease / 3):
                self.store.sweep_expired(t, spare=self.held())
                state.swept = time.monotonic()
            batch = self.store.claim(t, room, self.owner, cfg.lease)
        except StoreUnavailable as exc:  # what is in flight finishes; claims wait for the store
            self._store_down.failed("claims paused: %s", exc)
            return None
        if not batch:
            return None
        result.batches += 1
        expired: list[Finished] = []
        sendable: list[Claimed] = []
        for msg in batch:
            if policy.is_expired(t, msg.clock, cfg):
                outcome = policy.expired_outcome(cfg)
                attempt = Attempt(t, cfg.smtp.relay, None, outcome.reason or "", 0.0, "expired")
                expired.append(Finished(msg.id, self.owner, msg.token, attempt, outcome, rcpt_to=msg.rcpt_to))
            else:
                live[msg.id] = msg
                sendable.append(msg)
        if expired:
            self._save(expired)
            result.expired += len(expired)
            for _ in expired:
                observe.observer.outcome(Status.EXPIRED, None, t)
        return sendable, len(batch)  # none sendable when all had expired: the caller claims again

    def _commit(self, done: list[tuple[Claimed, SendResult]], cfg: ServerConfig, now: float | None,
                result: RunResult) -> None:
        rows: list[Finished] = []
        for msg, sent in done:
            t = time.time() if now is None else now
            outcome, recipients = policy.decide(sent, msg, cfg, t)
            # `at` is when the relay answered, so latency runs to its 250.
            attempt = Attempt(sent.started + sent.duration if now is None else now, sent.relay, sent.code,
                              sent.reply, sent.duration, sent.kind)
            rows.append(Finished(msg.id, self.owner, msg.token, attempt, outcome, recipients, msg.rcpt_to))
        self._save(rows)
        for (msg, sent), row in zip(done, rows, strict=True):
            result.count(row.outcome.status)
            observe.observer.outcome(row.outcome.status, sent, msg.send_after)
            _log_outcome(msg, row.outcome)

    def _save(self, rows: list[Finished]) -> None:
        """Commit outcomes, with any kept from before; keep them all if the store cannot take them."""
        todo = self._unsaved + rows
        try:
            held = self.store.finish(todo)
        except StoreUnavailable as exc:
            self._unsaved = todo
            self._store_down.failed("cannot record %d outcome(s), kept to commit later (no more claims "
                                    "until then): %s", len(todo), exc)
            return
        self._unsaved = []
        self.leases.freed()
        notices.send_notices(self.store, self.cfg.notify, todo, held)  # failure notices (off by default)
        self._count_refusals([Refusal(x.address, x.code, x.reply, row.attempt.at)
                              for row, ok in zip(todo, held, strict=True) if ok
                              for x in row.recipients if policy.suppressible(x)])
        if self._store_down.cleared():
            log.info("recorded %d outcome(s) kept while the store could not be written", len(todo))
        for row, ok in zip(todo, held, strict=True):
            if not ok:  # our lease ran out and another claim took the message: its result stands
                log.warning("outcome of %s (%s) not recorded: its lease was taken over by a newer claim",
                            row.id, row.outcome.status.value)

    def _count_refusals(self, refused: list[Refusal]) -> None:
        """Recipients refused as unknown, toward their suppression (after the outcome is
        recorded: a store that fails here loses a count, never an outcome)."""
        if not refused:
            return
        s = self.cfg.suppression
        try:
            newly = self.store.note_refusals(refused, s.after, s.duration)
        except StoreUnavailable as exc:
            log.warning("%d refusal(s) not counted toward suppression: %s", len(refused), exc)
            return
        for address in newly:  # DEBUG, as each delivery: `suppress list` and the events say it for good
            log.debug("suppressed %s for %s: refused as unknown %d time(s) or more (mailmand suppress remove %s)",
                     address, fmt_duration(s.duration), s.after, address)

    def _flush(self) -> None:
        if self._unsaved:
            self._save([])
            if self._unsaved:
                raise StoreUnavailable(f"{len(self._unsaved)} outcome(s) still wait for the store")
        self._release()

    def close(self) -> None:
        self._fleet.close()
        self._claimer.shutdown()


def _log_outcome(msg: Claimed, outcome: Outcome) -> None:
    # A delivery is DEBUG (the store records every attempt, and `Summary` says
    # the minute's figures); what needs a look, a deferral or a failure, is WARNING.
    if outcome.status is Status.SENT:
        log.debug("sent %s to %d recipient(s)", msg.id, len(msg.rcpt_to))
    elif outcome.status is Status.DEFERRED and not outcome.counted:
        # The relay was not reached: the relay pool logs that once per outage (repeats.Repeats).
        log.debug("deferred %s until %s: %s", msg.id,
                  datetime.fromtimestamp(outcome.due_at or 0).isoformat(timespec="seconds"), outcome.reason)
    elif outcome.status is Status.DEFERRED:
        log.warning("deferred %s until %s: %s", msg.id,
                    datetime.fromtimestamp(outcome.due_at or 0).isoformat(timespec="seconds"),
                    outcome.reason)
    else:
        log.warning("%s %s: %s", outcome.status.value, msg.id, outcome.reason)
