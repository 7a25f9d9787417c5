"""What several subcommands share: durations from flags, the clock, the
daemons to show. (What sendmail's `-q` and `mailq` share with them is in
mailmand.control.)"""

from __future__ import annotations

import time

from ..config.values import parse_duration
from ..control import load_for_store, local_pid, store
from ..errors import UsageError
from ..stores.base import DaemonInfo, Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import Config


def daemons(cfg: Config, s: Store, now: float) -> list[DaemonInfo]:
    """The live daemons the store knows (every one on a shared store), with
    version and start time; the spool lock vouches that a local one is alive."""
    live = s.daemons(now)
    pid = local_pid(cfg)
    if pid is not None and not any(d.pid == pid for d in live):
        import socket

        live.append(DaemonInfo(id="", host=socket.gethostname(), pid=pid, version="", started_at=0.0,
                               heartbeat_at=0.0, spool=str(cfg.queue.path)))
    return live


def duration(flag: str, value: str) -> float:
    try:
        return parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{flag}: {exc}") from None


def now() -> float:
    return time.time()


def tags(pairs: list[str]) -> dict[str, str] | None:
    """`--tag k=v` (repeatable: every pair must match) as a mapping; None when none given."""
    if not pairs:
        return None
    from ..errors import InvalidMessage
    from ..record import check_tags

    found: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise UsageError(f"--tag: expected KEY=VALUE, got {pair!r}")
        found[key] = value
    try:
        return check_tags(found, "--tag")
    except InvalidMessage as exc:
        raise UsageError(str(exc)) from None


def since(value: str) -> float:
    """`--since`: a duration ago (`24h`), or an ISO 8601 time (local time when it has no zone)."""
    try:
        return now() - parse_duration(value)
    except ValueError:
        pass
    from datetime import datetime

    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise UsageError(f"--since: expected a duration such as 24h or a time such as 2026-05-01T09:00, "
                         f"got {value!r}") from None


__all__ = ["daemons", "duration", "load_for_store", "local_pid", "now", "since", "store", "tags"]
