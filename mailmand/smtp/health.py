"""Whether a relay is up: what its sessions found, and how long it is left alone.

A relay that cannot be reached, or that refuses the session (421 at the
greeting, TLS or AUTH trouble), is marked down for a cool-off that starts at
COOL_OFF_FIRST and doubles while it stays down, up to COOL_OFF_MAX. Mail goes
to the next relay meanwhile; once the cool-off has passed, the next message
routed to it tries it again (a probe), and a session that opens marks it up.
The pool logs an outage (`repeats.Repeats`): once, a summary a minute, and its end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

COOL_OFF_FIRST = 10.0  # seconds a relay is left alone after it is found down
COOL_OFF_MAX = 600.0  # the cool-off doubles while it stays down, up to this


class RelayHealth:
    """One relay's state: up or down, since when, until when it is left alone, its
    last reply. Thread-safe: every session of the relay reports to it."""

    def __init__(self, name: str, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.up = True
        self.since = clock()
        self.down_until: float | None = None
        self.cool_off = 0.0
        self.last_reply = ""
        self.last_reply_at: float | None = None
        self._clock = clock
        self._lock = threading.Lock()

    def usable(self, now: float | None = None) -> bool:
        """Up, or down with its cool-off over (the next message probes it)."""
        if self.up:
            return True
        t = self._clock() if now is None else now
        return self.down_until is None or t >= self.down_until

    def failed(self, reason: str) -> None:
        """No session could be opened, or the relay refused it: down for a cool-off, longer each time."""
        with self._lock:
            now = self._clock()
            if self.up:
                self.up, self.since, self.cool_off = False, now, COOL_OFF_FIRST
                first = True
            else:
                if self.down_until is not None and now < self.down_until:
                    self.last_reply, self.last_reply_at = reason, now  # the same outage, seen by another session
                    return
                self.cool_off = min(COOL_OFF_MAX, self.cool_off * 2.0)
                first = False
            self.down_until = now + self.cool_off
            self.last_reply, self.last_reply_at = reason, now
        # The pool's Repeats logs the outage at WARNING (once, then a summary a minute): DEBUG here.
        if first:
            log.debug("relay %s is down (%s): mail goes to the next relay; trying it again in %gs",
                        self.name, reason, self.cool_off)
        else:
            log.debug("relay %s still down (%s): trying it again in %gs", self.name, reason, self.cool_off)

    def replied(self, reply: str) -> None:
        """The relay's latest reply to a message (no lock: a torn pair is harmless, and this is per message)."""
        self.last_reply, self.last_reply_at = reply, self._clock()

    def reached(self, reply: str | None = None) -> None:
        """A session opened (or the relay answered): up."""
        if self.up and reply is None:
            return
        back = None
        with self._lock:
            now = self._clock()
            if reply is not None:
                self.last_reply, self.last_reply_at = reply, now
            if not self.up:
                back = now - self.since
                self.up, self.since, self.down_until, self.cool_off = True, now, None, 0.0
        if back is not None:
            log.debug("relay %s is up again after %.0fs", self.name, back)

    def to_json(self) -> dict[str, Any]:
        return {"state": "up" if self.up else "down", "since": round(self.since, 3),
                "down_until": None if self.down_until is None else round(self.down_until, 3),
                "last_reply": self.last_reply or None,
                "last_reply_at": None if self.last_reply_at is None else round(self.last_reply_at, 3)}
