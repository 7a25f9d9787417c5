"""`mailmand events`: the event log, read from the store (what webhooks are sent).

Oldest first; the last `--limit` unless `--follow`, which then prints new
events as they are committed until Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import UsageError
from ..stores.model import Event, EventType
from . import format as fmt
from .common import moment, now, store, tags

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import Config

FOLLOW_POLL = 1.0  # seconds between looks at the log while following
FOLLOW_BATCH = 500


def _types(given: list[str]) -> list[EventType]:
    names = [t.strip() for g in given for t in g.split(",") if t.strip()]
    known = {t.value for t in EventType}
    bad = [n for n in names if n not in known]
    if bad:
        raise UsageError(f"--type {', '.join(bad)}: expected one of {', '.join(t.value for t in EventType)}")
    return [EventType(n) for n in names]


def _line(e: Event) -> tuple[str, ...]:
    return (fmt.when(e.at), e.type.value, e.message, str(e.attempt), "-" if e.code is None else str(e.code),
            fmt.clip(",".join(f"{k}={v}" for k, v in e.tags.items()) or "-", 30), fmt.clip(e.reply or "", 60))


HEADER = ("TIME", "TYPE", "MESSAGE", "TRY", "CODE", "TAGS", "REPLY")


def cmd_events(cfg: Config, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit: expected a number above 0, got {args.limit}")
    select = {"message_id": args.id, "types": _types(args.type), "tags": tags(args.tag),
              "since": moment("--since", args.since, now()) if args.since else None}
    with store(cfg) as s:
        found, upto = s.events(limit=args.limit, **select)
        if not args.follow:
            if args.json:
                fmt.print_json([e.to_json() for e in found])
            else:
                fmt.table(HEADER, [_line(e) for e in found], right=frozenset({3, 4}))
            return 0
        # The last ones are every one committed; following goes on from the horizon,
        # so an event shown above it may come again: shown once.
        shown = {e.id for e in found if e.position > upto}
        for e in found:
            _print(e, args.json)
        try:
            while True:
                more, upto = s.events(after=upto, limit=FOLLOW_BATCH, **select)
                for e in more:
                    if e.id not in shown:
                        _print(e, args.json)
                shown -= {e.id for e in more}
                sys.stdout.flush()
                if len(more) < FOLLOW_BATCH:
                    time.sleep(FOLLOW_POLL)
        except KeyboardInterrupt:  # Ctrl-C ends a follow: not an error
            return 0


def _print(e: Event, as_json: bool) -> None:
    if as_json:  # one object a line, for `jq` and friends
        import json

        print(json.dumps(e.to_json(), separators=(",", ":")), flush=True)
    else:
        print("  ".join(_line(e)), flush=True)
