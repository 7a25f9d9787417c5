"""What several subcommands share: durations and times from flags, the clock,
the daemons to show, selections from flags. (What sendmail's `-q` and `mailq`
share with them is in mailmand.control.)"""

from __future__ import annotations

import time

from ..config.values import parse_duration
from ..control import load_for_store, local_pid, store
from ..errors import UsageError
from ..stores.base import Store
from ..stores.model import DaemonInfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator, Sequence

    from ..config import Config
    from ..stores.model import MessageInfo, Selection, Status

PAGE = 500  # messages read per page when a command walks a whole selection


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
        return parse_duration(value, words=True)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{flag}: {exc}") from None


def moment(flag: str, value: str, now: float) -> float:
    """A time from a flag: ISO 8601 (local time unless it says its zone), or a duration ago."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        pass
    try:
        return now - parse_duration(value, words=True)
    except ValueError:
        raise UsageError(f"{flag}: expected a time (2026-11-30T09:00, 2026-11-30 09:00+01:00) or a duration "
                         f"ago (90s, 2h, 1d), got {value!r}") from None


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


def selection(args: argparse.Namespace, statuses: Sequence[Status], t: float) -> Selection:
    """The Selection the flags of `list` or of a move ask for (`statuses`: those they allow)."""
    from ..stores.model import Selection, Status

    wanted = tuple(Status(x) for x in dict.fromkeys(args.status)) or tuple(statuses)
    since = moment("--since", args.since, t) if getattr(args, "since", None) else None
    until = moment("--until", args.until, t) if getattr(args, "until", None) else None
    if getattr(args, "older_than", None):
        until = t - duration("--older-than", args.older_than)
    for flag, given in (("--to", args.to), ("--from", args.sender)):
        for address in given:
            if not address.strip() or address.strip() == "@":
                raise UsageError(f"{flag}: expected an address or @domain, got {address!r}")
    return Selection(statuses=wanted, ids=tuple(getattr(args, "ids", None) or ()), to=tuple(args.to),
                     sender=tuple(args.sender), since=since, until=until, subject=getattr(args, "subject", None),
                     tags=tuple((tags(getattr(args, "tag", None) or []) or {}).items()))


def pages(s: Store, sel: Selection, size: int = PAGE) -> Iterator[list[MessageInfo]]:
    """Every message of a selection, a page at a time, newest first. A page may be
    changed before the next is read: each goes on from the last key, whatever its status now."""
    after = None
    while True:
        page = s.select(sel, size, after)
        if page.messages:
            yield page.messages
        if page.next is None:
            return
        after = page.next


__all__ = ["daemons", "duration", "load_for_store", "local_pid", "moment", "now", "pages", "selection", "store",
           "tags"]
