"""What the daemon reports as it works, for whoever watches: the metrics hook.

The dispatcher and the SMTP sessions tell `observer` what happened; by
default nobody listens and each call does nothing. `mailmand.metrics`
installs an observer that feeds Prometheus when `email.server.metrics` is
on. One observer per process (one daemon per process), read at each call,
so installing one takes effect at once. No imports at run time: the
dispatcher and the relay stay free of any metrics library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .smtp import SendResult
    from .stores.model import Status


class Observer:
    """The hook's contract, and its do-nothing default. Calls come from the
    dispatcher's and the sessions' threads: an observer must be thread-safe
    and quick, and must not raise."""

    def dispatching(self) -> None:
        """The dispatcher is alive: it just looked for due mail or committed outcomes."""

    def outcome(self, status: Status, result: SendResult | None, send_time: float) -> None:
        """A message's outcome was recorded. `result` is the attempt that
        decided it (None when nothing was sent, e.g. expired); `send_time` is
        the time the message was due (epoch seconds)."""

    def session_opened(self) -> None:
        """An SMTP session to the relay is open (after EHLO, TLS and AUTH)."""

    def session_closed(self) -> None:
        """A session counted by `session_opened` is gone."""


observer: Observer = Observer()


def install(new: Observer | None) -> Observer:
    """Make `new` the process's observer (None: the do-nothing default); returns the previous one."""
    global observer
    previous, observer = observer, new or Observer()
    return previous
