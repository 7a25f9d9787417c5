"""`mailmand quarantine list | show ID | release ID | delete ID`: queue items
that could not be ingested, kept in the store with why and where they came
from (on every queue engine).

`release` validates the entry again, as ingest does (after an upgrade, or a
configuration that now allows it: `max-recipients`), and stores the message
it now reads as; the entry is deleted in the same transaction. What still
does not pass stays, with the reason printed.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import RecordRejected
from . import format as fmt
from .common import now, store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import Config


def cmd_quarantine(cfg: Config, args: argparse.Namespace) -> int:
    return {"list": _list, "show": _show, "release": _release, "delete": _delete}[args.action](cfg, args)


def _list(cfg: Config, args: argparse.Namespace) -> int:
    from ..errors import UsageError

    if args.limit < 1:
        raise UsageError(f"--limit: expected a number above 0, got {args.limit}")
    with store(cfg) as s:
        entries = s.quarantined(args.limit)
        total = s.quarantine_count()
    if args.json:
        fmt.print_json([q.to_json() for q in entries])
        return 0
    if not entries:
        print("the quarantine is empty")
        return 0
    fmt.table(("ID", "AT", "SIZE", "SOURCE", "REASON"),
              [(str(q.id), fmt.when(q.at), str(len(q.data)), q.source or "-", fmt.clip(q.reason, 100))
               for q in entries], right=frozenset({0, 2}))
    if total > len(entries):
        print(f"… {total - len(entries)} more (use --limit)")
    return 0


def _show(cfg: Config, args: argparse.Namespace) -> int:
    with store(cfg) as s:
        q = s.quarantined_entry(args.entry)
    if args.raw:
        sys.stdout.flush()
        sys.stdout.buffer.write(q.data)
        sys.stdout.buffer.flush()
        return 0
    if args.json:
        fmt.print_json(q.to_json(data=True))
        return 0
    print(f"entry:     {q.id}\nat:        {fmt.when(q.at)}\nsource:    {q.source or '-'}\nreason:    {q.reason}")
    print(f"size:      {len(q.data)} bytes\n")
    print(q.data.decode("utf-8", errors="backslashreplace"))
    return 0


def _release(cfg: Config, args: argparse.Namespace) -> int:
    from ..ingest import decode_bytes

    t = now()
    with store(cfg) as s:
        q = s.quarantined_entry(args.entry)
        got = decode_bytes(q.data, cfg.server.max_recipients, t)
        if isinstance(got, str):
            print(f"mailmand: quarantine entry {q.id} still does not pass, kept: {got}", file=sys.stderr)
            return 1
        try:
            new = s.unquarantine(q.id, [got])
        except RecordRejected as exc:
            print(f"mailmand: quarantine entry {q.id}: the store refuses it, kept: {exc}", file=sys.stderr)
            return 1
    state = "stored" if new else "already stored (the entry was a copy)"
    when = f", to be sent at {fmt.when(got.send_after)}" if new and got.send_after > t else ""
    print(f"released quarantine entry {q.id}: message {got.id} {state}{when}")
    if new and got.send_after <= t:
        from ..control import wake
        from ..stores import shared

        if not shared(cfg.server.database):
            print(wake(cfg))
    return 0


def _delete(cfg: Config, args: argparse.Namespace) -> int:
    with store(cfg) as s:
        s.unquarantine(args.entry)
    print(f"deleted quarantine entry {args.entry}")
    return 0
