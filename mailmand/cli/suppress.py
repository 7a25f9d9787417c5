"""`mailmand suppress list | add ADDR | remove ADDR`: the addresses mail is not
sent to for now (refused as unknown by a relay, or added by an operator)."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..headers import envelope_problem
from . import format as fmt
from .common import duration, now, store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import Config


def cmd_suppress(cfg: Config, args: argparse.Namespace) -> int:
    t = now()
    if args.action == "list":
        if args.limit < 1:
            raise UsageError(f"--limit: expected a number above 0, got {args.limit}")
        with store(cfg) as s:
            found = s.suppressions(t, limit=args.limit)
        if args.json:
            fmt.print_json([x.to_json() for x in found])
            return 0
        fmt.table(("ADDRESS", "UNTIL", "SINCE", "REFUSALS", "BY", "REPLY"),
                  [(x.address, fmt.when(x.until), fmt.when(x.last_at), str(x.refusals), x.source,
                    fmt.clip(x.reply, 60)) for x in found], right=frozenset({3}))
        return 0
    address = args.address.strip()
    if args.action == "add":
        problem = envelope_problem(address) if "@" in address else "expected local@domain"
        if problem:
            raise UsageError(f"{address!r}: {problem}")
        span = duration("--for", args.duration) if args.duration else cfg.server.suppression.duration
        with store(cfg) as s:
            s.suppress(address, t, t + span, args.reason)
        print(f"suppressed {address.lower()} until {fmt.when(t + span)}: mail to it fails at ingest")
        return 0
    with store(cfg) as s:
        known = s.unsuppress(address)
    if not known:
        print(f"{address.lower()} was not suppressed")
        return 1
    print(f"{address.lower()} is no longer suppressed, and its refusals are forgotten")
    return 0
