"""Several relays: which one takes each message, failover, quotas.

`Fleet.send_grouped` has `Relay.send_grouped`'s contract, for every relay of
`email.server.relays` (or the one `smtp:`). A message goes to:

1. the relays whose `senders` name its sender's domain (or a parent of it);
   when none can take it, or none names it, the relays with no `senders`
   (and when every relay has `senders` and none names it, any relay);
2. among those, the lowest `priority` with a relay that is up (or whose
   cool-off is over) and whose quota is not spent; within a priority, shared
   by `weight` (smooth weighted round robin: exact shares, no streaks);
3. when every relay it may use is down, the one whose cool-off ends first
   (mail is never deferred untried while a relay might take it).

With one relay and no quota, the relay's own `send_grouped` runs with
nothing between (the dispatch path measured in docs/performance.md).
Otherwise a router thread reads the dispatcher's feed and hands each message
to its relay's lane, which that relay's sessions read as their feed; each
relay's results come back through one queue to the caller. A message whose
attempt failed for its relay's sake (down, refused the session, pushed back)
goes to the next relay it may use in the same run, and is answered only when
none is left: those deferrals never count toward max-fails.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailmand.config import RelayConfig, ServerConfig

from .outcomes import SendResult
from .protocol import Envelope, Kind, RecipientResult, Window
from .quotas import Quotas, QuotaStore
from .relays import Relay

log = logging.getLogger(__name__)

LANE_WAIT = 0.05  # seconds a relay's session waits on an empty lane before it says "nothing now"


@dataclass
class Member:
    """One relay of the fleet and its place in it."""

    cfg: RelayConfig
    relay: Relay
    current: int = 0  # smooth weighted round robin's running score

    @property
    def name(self) -> str:
        return self.relay.name

    @property
    def priority(self) -> int:
        return self.cfg.priority or 0

    @property
    def quota(self) -> int | None:
        return self.cfg.quota.per_day if self.cfg.quota is not None else None

    def names(self, domain: str) -> bool:
        return any(domain == d or domain.endswith("." + d) for d in self.cfg.senders)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "relay": self.cfg.relay, "priority": self.priority, "weight": self.cfg.weight,
                "senders": list(self.cfg.senders), "quota_per_day": self.quota,
                **self.relay.health.to_json(), **self.relay.throttle.to_json()}


class Fleet:
    """Every relay, with its state. Thread-safe."""

    def __init__(self, cfg: ServerConfig, store: QuotaStore | None = None, previous: Fleet | None = None,
                 window: Window | None = None) -> None:
        kept = {m.name: m for m in previous.members} if previous is not None else {}
        self.members: list[Member] = []
        for rc in cfg.relay_configs():
            old = kept.get(rc.label)
            # A reload keeps a relay's health (down, since when) when it is the same relay.
            health = old.relay.health if old is not None and old.cfg.relay == rc.relay else None
            self.members.append(Member(rc, Relay(rc, window, name=rc.label, health=health)))
        self.quotas = Quotas(store)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Fleet {', '.join(m.name for m in self.members)}>"

    @property
    def direct(self) -> Relay | None:
        """The one relay, when there is nothing to route (one relay, no quota)."""
        if len(self.members) == 1 and self.members[0].quota is None:
            return self.members[0].relay
        return None

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    def states(self) -> list[dict[str, Any]]:
        """Each relay's state, as `status`, /healthz and the heartbeat show it."""
        return [m.to_json() for m in self.members]

    def close(self) -> None:
        self.quotas.release()
        for m in self.members:
            m.relay.close()

    # -- routing

    def choose(self, env: Envelope, exclude: set[str] | frozenset[str] = frozenset(),
               now: float | None = None) -> Member | None:
        """The relay for `env` now, its quota counted; None: none it may use is left."""
        domain = env.mail_from.rpartition("@")[2].lower()
        named = [m for m in self.members if m.cfg.senders and m.names(domain)]
        generic = [m for m in self.members if not m.cfg.senders]
        tiers = [named, generic] if named else [generic or self.members]
        t = time.time() if now is None else now
        refused: set[str] = set()  # quota not granted this call
        with self._lock:
            # Up (or cool-off over) relays first, tier by tier; then, all of them down, the one back soonest.
            for usable_only in (True, False):
                for tier in tiers:
                    while True:
                        candidates = [m for m in tier if m.name not in exclude and m.name not in refused
                                      and not self.quotas.spent(m.name)
                                      and (not usable_only or m.relay.health.usable(t))]
                        if not candidates:
                            break
                        if usable_only:
                            best = min(m.priority for m in candidates)
                            member = _weighted([m for m in candidates if m.priority == best])
                        else:
                            member = min(candidates, key=lambda m: (m.relay.health.down_until or 0.0, m.priority))
                        if member.quota is None or self.quotas.take(member.name, member.quota):
                            return member
                        refused.add(member.name)
        return None

    def send_grouped(self, envelopes: Iterable[Envelope | None], stop: threading.Event | None = None,
                     linger: float = 0.0, gather: int = 0, most: int = 0) -> Generator[list[SendResult], None, None]:
        """`Relay.send_grouped` over the fleet: the same contract."""
        relay = self.direct
        if relay is not None:
            yield from relay.send_grouped(envelopes, stop, linger, gather, most)
            return
        run = _Run(self, envelopes, stop, linger, gather, most)
        try:
            yield from run.results()
        finally:
            self.quotas.release()


def _weighted(members: Sequence[Member]) -> Member:
    """Smooth weighted round robin (nginx's): each gets its weight's share, interleaved."""
    if len(members) == 1:
        return members[0]
    total = 0
    for m in members:
        m.current += m.cfg.weight
        total += m.cfg.weight
    chosen = max(members, key=lambda m: m.current)
    chosen.current -= total
    return chosen


@dataclass
class _Lane:
    member: Member
    inbox: deque[Envelope] = field(default_factory=deque)
    running: bool = False
    thread: threading.Thread | None = None


@dataclass(frozen=True)
class _Ended:
    lane: _Lane
    left: list[Envelope]  # in its inbox, never taken by a session


_ROUTED_ALL = object()


class _LaneFeed:
    """A relay's feed: its lane's messages, as the relay's sessions ask for them."""

    def __init__(self, run: _Run, lane: _Lane) -> None:
        self.run, self.lane = run, lane

    def __iter__(self) -> _LaneFeed:
        return self

    def __next__(self) -> Envelope | None:
        run, lane = self.run, self.lane
        with run.cond:
            while True:
                if lane.inbox:
                    return lane.inbox.popleft()
                if run.closed or run.routed_all or not lane.member.relay.health.usable():
                    raise StopIteration
                if not run.cond.wait(LANE_WAIT):
                    return None  # nothing now: a session with messages in flight goes on with them


class _Run:
    """One call to `Fleet.send_grouped` over several relays."""

    def __init__(self, fleet: Fleet, feed: Iterable[Envelope | None], stop: threading.Event | None,
                 linger: float, gather: int, most: int) -> None:
        self.fleet = fleet
        self.feed = feed
        self.stop = stop
        self.linger, self.gather, self.most = linger, gather, most
        self.cond = threading.Condition()
        self.lanes = {m.name: _Lane(m) for m in fleet.members}
        self.merged: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.envs: dict[str, Envelope] = {}  # routed, no result yielded yet
        self.tried: dict[str, set[str]] = {}  # relays that failed a message for their own sake, this run
        self.failed: set[str] = set()  # relays found down this run: not probed again before the next
        self.closed = False
        self.routed_all = False
        self.pumps = 0  # relays' sessions started and whose end the caller has not yet dealt with

    def stopped(self) -> bool:
        return self.closed or (self.stop is not None and self.stop.is_set())

    def results(self) -> Generator[list[SendResult], None, None]:
        router = threading.Thread(target=self._route_all, name="mailmand-route", daemon=True)
        router.start()
        done_routing = False
        try:
            while True:
                # Over when nothing more can come: every relay's sessions have ended and been dealt
                # with, and the queue is empty (only they and this thread put anything there after
                # the router's end). A message still in `envs` then was never attempted (stopping):
                # the dispatcher hands it back.
                with self.cond:
                    if done_routing and not self.pumps and self.merged.empty():
                        break
                item = self.merged.get()
                if item is _ROUTED_ALL:
                    done_routing = True
                    continue
                if isinstance(item, _Ended):
                    with self.cond:
                        self.pumps -= 1
                    self._ended(item)
                    continue
                group = self._settle(item)
                if group:
                    yield group
                    with self.cond:
                        for r in group:
                            self.envs.pop(r.id, None)
                        self.cond.notify_all()
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()
            router.join()
            for lane in self.lanes.values():
                if lane.thread is not None:
                    lane.thread.join()

    # -- the router thread

    def _route_all(self) -> None:
        try:
            for env in self.feed:
                if self.stopped():
                    break
                if env is None:
                    continue  # nothing now (the feed waited for room)
                member = self.fleet.choose(env, self.failed)
                if member is None:
                    with self.cond:
                        self.envs[env.id] = env
                    self.merged.put([self._unroutable(env)])
                    break  # no relay can take mail now: the dispatcher hands the rest back
                self._send_to(member, env)
                with self.cond:
                    while self.most and len(self.envs) >= self.most and not self.stopped():
                        self.cond.wait(0.1)
        except Exception:  # the feed failed (store trouble): messages in flight still finish
            log.exception("the dispatch feed failed; this run takes no more messages")
        finally:
            with self.cond:
                self.routed_all = True
                self.cond.notify_all()
            self.merged.put(_ROUTED_ALL)

    def _send_to(self, member: Member, env: Envelope) -> None:
        with self.cond:
            self.envs[env.id] = env
            lane = self.lanes[member.name]
            lane.inbox.append(env)
            if not lane.running:
                lane.running = True
                self.pumps += 1
                lane.thread = threading.Thread(target=self._pump, args=(lane,), daemon=True,
                                               name=f"mailmand-relay-{member.name}")
                lane.thread.start()
            self.cond.notify_all()

    def _pump(self, lane: _Lane) -> None:
        """Run one relay's sessions over its lane, its results to the merged queue."""
        try:
            for group in lane.member.relay.send_grouped(_LaneFeed(self, lane), self.stop, self.linger, self.gather):
                self.merged.put(group)
        except Exception:  # a bug must not hang the caller waiting for this lane
            log.exception("relay %s failed", lane.member.name)
        finally:
            with self.cond:
                lane.running = False
                left, lane.inbox = list(lane.inbox), deque()
            self.merged.put(_Ended(lane, left))

    # -- the caller's thread

    def _ended(self, item: _Ended) -> None:
        """A relay's sessions stopped with messages still in its lane: elsewhere, or answered."""
        for env in item.left:
            if self.stopped():
                with self.cond:
                    self.envs.pop(env.id, None)  # never attempted: the dispatcher hands it back
                    self.cond.notify_all()
                continue
            member = self.fleet.choose(env, self.tried.get(env.id, set()) | self.failed | {item.lane.member.name})
            if member is not None:
                self._send_to(member, env)
            else:
                self.merged.put([self._unroutable(env)])

    def _settle(self, group: list[SendResult]) -> list[SendResult]:
        """The results to yield; those failed for their relay's sake go to another relay when one is left."""
        kept = []
        for r in group:
            env = self.envs.get(r.id)
            by = self.fleet.member(r.relay)  # None: answered here, no relay could take it
            if r.relay_fault and env is not None and by is not None:
                tried = self.tried.setdefault(r.id, set())
                tried.add(r.relay)
                if r.code is None and not by.relay.health.up:
                    self.failed.add(r.relay)
                self.fleet.quotas.give_back(r.relay)
                member = None if self.stopped() else self.fleet.choose(env, tried | self.failed)
                if member is not None:
                    log.debug("%s: relay %s could not take it (%s); trying relay %s", r.id, r.relay, r.reply,
                              member.name)
                    self._send_to(member, env)
                    continue
            self.tried.pop(r.id, None)
            kept.append(r)
        return kept

    def _unroutable(self, env: Envelope) -> SendResult:
        down = [m for m in self.fleet.members if not m.relay.health.up]
        spent = [m.name for m in self.fleet.members if self.fleet.quotas.spent(m.name)]
        why = []
        if down:
            why.append("down: " + ", ".join(f"{m.name} ({m.relay.health.last_reply})" for m in down))
        if spent:
            why.append("quota for today spent: " + ", ".join(spent))
        tried = self.tried.pop(env.id, set())
        if tried and not down:
            why.append("tried: " + ", ".join(sorted(tried)))
        reply = "no relay can take it now" + (f" ({'; '.join(why)})" if why else "")
        now = time.time()
        return SendResult(env.id, Kind.TEMPORARY, None, reply,
                          tuple(RecipientResult(a, None, reply, Kind.TEMPORARY) for a in env.rcpt_to),
                          now, 0.0, ",".join(sorted(tried)) or "-", relay_fault=True)
