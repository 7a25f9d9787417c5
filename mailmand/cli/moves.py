"""The operator's moves: `cancel`, `retry`, `hold` and `release` (Postfix's
`postsuper -d`, `-r`, `-h`, `-H`).

Each takes message ids or selectors (`--status`, `--to`, `--from`,
`--older-than`, `--tag`, `--all`), never both. Selectors walk the store's one
selection a page at a time, among the statuses the move starts from
(`OPERATOR_MOVES`), and change each page before reading the next; `--dry-run`
walks the same pages and prints what it would change. An id that cannot be
moved is named on stderr, and the exit code is then 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ..control import wake
from ..errors import InvalidState, NotFound, UsageError
from ..stores import shared
from ..stores.base import Store
from ..stores.model import OPERATOR_MOVES, MessageInfo
from . import format as fmt
from .common import now, pages, selection, store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import Config

# A move over many messages: `one` changes one and raises when it cannot, or
# `many` changes a batch in one transaction and returns the ids it changed.
One = Callable[[Store, str, float], object]
Many = Callable[[Store, Sequence[str], float], list[str]]
SELECTORS = "--status, --to, --from, --older-than, --tag, --all"


def _any_selector(args: argparse.Namespace) -> bool:
    return bool(args.status or args.to or args.sender or args.older_than or args.tag or args.all)


def _refusal(s: Store, move: str, message_id: str) -> str:
    """Why `move` left a message as it was (a batch move says only which it changed)."""
    try:
        status = s.get(message_id).status
    except NotFound as exc:
        return str(exc)
    allowed = OPERATOR_MOVES[move]
    if status in allowed:  # changed by someone else meanwhile, and back again: rare
        return f"message {message_id} changed meanwhile: try again"
    return (f"cannot {move} message {message_id}: it is {status.value} "
            f"(only {', '.join(a.value for a in allowed)} can be)")


def _row(m: MessageInfo) -> str:
    return f"{m.id}  {m.status.value:<9} {fmt.clip(fmt.recipients(m.rcpt_to), 40)}  {fmt.clip(m.subject, 50)}"


def _apply(s: Store, move: str, ids: Sequence[str], t: float, one: One | None, many: Many | None) -> list[str]:
    """Move `ids`; the refusals, one line each."""
    refused = []
    if many is not None:
        moved = set(many(s, ids, t))
        refused = [_refusal(s, move, i) for i in ids if i not in moved]
    else:
        assert one is not None
        for message_id in ids:
            try:
                one(s, message_id, t)
            except (NotFound, InvalidState) as exc:
                refused.append(str(exc))
    return refused


def run_move(cfg: Config, args: argparse.Namespace, move: str, done: str, one: One | None = None,
             many: Many | None = None) -> tuple[int, int]:
    """`move` over the ids or the selection the flags give; prints `<done> N message(s)`
    (or, with --dry-run, each message and `would <move> N message(s)`). (exit code, N)"""
    if args.ids and _any_selector(args):
        raise UsageError(f"{args.command} takes message ids or selectors, not both")
    if not args.ids and not _any_selector(args):
        raise UsageError(f"{args.command} needs message ids or a selector ({SELECTORS})")
    t = now()
    count, refused = 0, []
    with store(cfg) as s:
        if args.ids:
            ids = list(dict.fromkeys(args.ids))
            if args.dry_run:
                for message_id in ids:
                    try:
                        info = s.get(message_id)
                    except NotFound as exc:
                        refused.append(str(exc))
                        continue
                    if info.status in OPERATOR_MOVES[move]:
                        print(_row(info))
                        count += 1
                    else:
                        refused.append(_refusal(s, move, message_id))
            else:
                refused = _apply(s, move, ids, t, one, many)
                count = len(ids) - len(refused)
        else:
            for page in pages(s, selection(args, OPERATOR_MOVES[move], t)):
                if args.dry_run:
                    for m in page:
                        print(_row(m))
                    count += len(page)
                    continue
                missed = _apply(s, move, [m.id for m in page], t, one, many)
                refused += missed
                count += len(page) - len(missed)
    for line in refused:
        print(f"mailmand: {line}", file=sys.stderr)
    print(f"would {move} {count} message(s)" if args.dry_run else f"{done} {count} message(s)")
    return 1 if refused else 0, count


def _woken(cfg: Config, args: argparse.Namespace, result: tuple[int, int]) -> int:
    """After a move that made mail due: tell the daemon on this host (a shared store's
    NOTIFY has told its daemons already)."""
    code, count = result
    if count and not args.dry_run and not shared(cfg.server.database):
        print(wake(cfg))
    return code


def cmd_cancel(cfg: Config, args: argparse.Namespace) -> int:
    return run_move(cfg, args, "cancel", "cancelled", one=lambda s, i, t: s.cancel(i, t))[0]


def cmd_retry(cfg: Config, args: argparse.Namespace) -> int:
    if args.failed:  # the older spelling of `--all`
        args.all = True
    return _woken(cfg, args, run_move(cfg, args, "retry", "re-queued", one=lambda s, i, t: s.requeue(i, t)))


def cmd_hold(cfg: Config, args: argparse.Namespace) -> int:
    return run_move(cfg, args, "hold", "held", many=lambda s, ids, t: s.hold(ids, t))[0]


def cmd_release(cfg: Config, args: argparse.Namespace) -> int:
    return _woken(cfg, args, run_move(cfg, args, "release", "released", many=lambda s, ids, t: s.release(ids, t)))
