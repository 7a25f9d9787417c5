"""How fast one relay is sent to: the token bucket, and the adaptive throttle.

A relay may push back: `421 4.7.0 Try again later`, `451 4.7.28 too many
messages`, `421 too many connections`. `Throttle` then halves that relay's
connections and rate (multiplicative decrease), and lets them grow back as
deliveries succeed (additive increase), never above what is configured.

The rate grows back in three steps, so that halving does not cost a quarter
of the relay's capacity: quickly to AIM of the rate at which the relay pushed
back (a quarter of the gap per delivery: a few deliveries), then slowly to
that rate (NEAR of it a second), then a little faster past it (PROBE), until
the relay pushes back again or, with no configured rate, the limit is lifted
at LIFT times it. After the first pushback (no limit yet, and the first burst
still counted in a relay's window) nothing is sent for HOLD.
Measured in bench/throttle.py against a relay with a hidden ceiling.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# RFC 5321 §4.2.3: 421 closing, 451 local error, 454 TLS/AUTH temporarily unavailable;
# the codes relays use for "slow down" (Gmail 421 4.7.0, SES 454 Throttling, Postfix 421 4.7.0).
PUSHBACK_CODES = frozenset({421, 451, 454})
# What the reply's text must say to be about rate or connections, not about the message
# (RFC 3463 4.7.0 "other security", 4.7.28 "mail flood detected" (RFC 7372)).
PUSHBACK_WORDS = re.compile(r"too many|\brate\b|rate[- ]?limit|throttl|\b4\.7\.0\b|\b4\.7\.28\b", re.IGNORECASE)
AIM = 0.95  # the rate grows back quickly to this share of the rate it was pushed back at...
FAST = 0.25  # ...closing this share of the gap with each delivery...
NEAR = 0.01  # ...then by this share of it per second of deliveries, up to it...
PROBE = 0.03  # ...and past it by this share a second (the relay may take more now)
LIFT = 2.0  # no configured rate: the limit is lifted once it reaches this many times that rate
CONNECTION_STEP = 20  # deliveries in a row that earn one more connection
# Seconds after a decrease during which pushbacks are the same episode (replies in flight), and
# during which nothing is sent: a relay that counts per second has the excess still in its window.
HOLD = 1.0
METER = 2.0  # seconds of deliveries over which the delivered rate is measured
MIN_RATE = 0.1  # messages a second: the lowest a pushback takes the rate to


def is_pushback(code: int | None, text: str) -> bool:
    """A reply that asks this client to slow down, as opposed to one about a message."""
    return code in PUSHBACK_CODES and bool(PUSHBACK_WORDS.search(text))


def reply_code(text: str) -> int | None:
    """The SMTP code inside a session failure's reason ("relay refused the session: 421 ...")."""
    m = re.search(r"\b([245]\d\d)\b", text)
    return int(m.group(1)) if m else None


class TokenBucket:
    """A thread-safe token bucket: `rate` tokens a second, at most `capacity` saved up."""

    def __init__(self, rate: float, capacity: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)
        self._clock = clock
        self._tokens = self.capacity  # start full: the first burst goes at once
        self._last = clock()
        self._lock = threading.Lock()

    def set_rate(self, rate: float, capacity: float) -> None:
        """Change the rate from now on; tokens saved up stay, within the new capacity."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self.rate, self.capacity = rate, capacity
            self._tokens = min(self._tokens, capacity)

    def try_take(self) -> float:
        """Take a token: 0.0 when taken, else the seconds until one is due."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate

    def pause(self, seconds: float) -> None:
        """Give no token for `seconds` (then at the rate, from nothing saved up)."""
        with self._lock:
            self._last = self._clock()
            self._tokens = -seconds * self.rate

    def give_back(self) -> None:
        """Return a token taken for a message that did not come."""
        with self._lock:
            self._tokens = min(self.capacity, self._tokens + 1.0)

    def take(self, stop: threading.Event | None = None) -> bool:
        """Block until a token is taken (True), or `stop` is set while waiting (False)."""
        while (wait := self.try_take()) > 0:
            if stop is None:
                time.sleep(wait)
            elif stop.wait(wait):
                return False
        return True


class Throttle:
    """One relay's connections and rate now: the configured values, or less while
    the relay pushes back. Thread-safe; read by the relay's sessions for each message."""

    def __init__(self, name: str, connections: int, rate: float | None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.max_connections = connections
        self.max_rate = rate
        self.connections = connections
        self.rate = rate  # None: no limit
        self.bucket: TokenBucket | None = TokenBucket(rate, clock=clock) if rate else None
        self.decreases = 0  # pushback episodes so far
        self.last_pushback = ""
        self._clock = clock
        self._lock = threading.Lock()
        self._ceiling: float | None = None  # the delivered rate when the relay last pushed back
        self._held_until = 0.0
        self._since = 0.0  # when sending resumed after the last decrease (the meter reads from there)
        self._streak = 0  # deliveries since the connections last changed
        self._meter: deque[float] = deque()

    @property
    def throttled(self) -> bool:
        return self.connections < self.max_connections or self.rate != self.max_rate

    def pushback(self, reply: str) -> bool:
        """The relay asked to slow down: halve connections and rate, once per
        episode. True when this call changed them."""
        with self._lock:
            now = self._clock()
            self.last_pushback = reply
            if now < self._held_until:
                return False
            # The rate it was sent at: what was delivered since the last decrease (a limit
            # the relay did not let it reach says nothing), and never above the limit.
            first = self.rate is None
            measured = self._measured(now) or None
            base = min(self.rate, measured) if self.rate is not None and measured else (self.rate or measured)
            self.connections = max(1, self.connections // 2)
            if base is not None:
                self._ceiling = base
                self._set_rate(max(MIN_RATE, base / 2.0))
                if self.bucket is not None:
                    self.bucket.pause(HOLD if first else 0.0)  # no burst from tokens saved up
            self._held_until = now + HOLD
            self._since = now + (HOLD if first else 0.0)
            self._streak = 0
            self.decreases += 1
            rate = f"{self.rate:.3g}/s" if self.rate else "no rate limit"
        log.warning("relay %s pushed back (%s): now %d connection(s), %s", self.name, reply, self.connections, rate)
        return True

    def delivered(self) -> None:
        """A message went through: grow back a step."""
        with self._lock:
            now = self._clock()
            self._meter.append(now)  # the delivered rate, for the first pushback
            while self._meter[0] < now - METER:
                self._meter.popleft()
            if not self.throttled:
                return
            self._streak += 1
            if self.connections < self.max_connections and self._streak >= CONNECTION_STEP:
                self.connections += 1
                self._streak = 0
            if self.rate is not None and self._ceiling is not None and self.rate != self.max_rate:
                ceiling = self._ceiling
                if self.rate < AIM * ceiling:
                    step = (AIM * ceiling - self.rate) * FAST
                else:  # per delivery, so that a second of deliveries adds this share of the ceiling
                    step = (NEAR if self.rate < ceiling else PROBE) * ceiling / self.rate
                new: float | None = self.rate + max(step, 1e-6)
                if self.max_rate is not None:
                    new = min(new, self.max_rate)  # type: ignore[type-var]
                elif new is not None and new >= LIFT * ceiling:
                    new = None
                self._set_rate(new)
            recovered = not self.throttled  # it was, before this delivery
            if recovered:
                self._ceiling = None
        if recovered:
            log.info("relay %s: back to its configured %d connection(s), %s", self.name, self.connections,
                     f"{self.rate:g}/s" if self.rate else "no rate limit")

    def _measured(self, now: float) -> float:
        """Deliveries a second over the last METER seconds, since sending resumed
        after the last decrease (0.0 when too few to tell)."""
        start = max(now - METER, self._since)
        while self._meter and self._meter[0] < start:
            self._meter.popleft()
        if len(self._meter) < 2:
            return 0.0
        # Over a second at least: a relay counts per second, and a burst is no rate.
        return len(self._meter) / max(now - self._meter[0], 1.0)

    def _set_rate(self, rate: float | None) -> None:
        self.rate = rate
        if rate is None:
            self.bucket = None
            return
        # Hardly a burst (a relay that counts per second sees at most 5% more than the rate),
        # but a session woken a little late may catch up.
        capacity = max(1.0, rate * 0.05)
        if self.bucket is None:
            self.bucket = TokenBucket(rate, capacity, clock=self._clock)
        else:
            self.bucket.set_rate(rate, capacity)

    def to_json(self) -> dict[str, Any]:
        return {"connections": self.connections, "connections_max": self.max_connections,
                "rate": None if self.rate is None else round(self.rate, 3), "rate_max": self.max_rate,
                "throttled": self.throttled, "last_pushback": self.last_pushback or None}
