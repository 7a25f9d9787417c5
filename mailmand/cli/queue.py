"""Queue control: `list`, `show`, `cancel`, `retry`, `flush`, `purge`.

`cancel` and `retry` take ids or selectors (Postfix's `postsuper -d` /
`-r`); `flush` makes deferred mail due now (`postqueue -f`) and wakes the
daemon at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ..control import flush
from ..errors import InvalidState, NoStore, NotFound, UsageError
from ..queues import engine, open_queue
from ..stores.base import MessageInfo, Status, Store
from . import format as fmt
from .common import duration, now, store, tags

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import Config

EVERY = sys.maxsize  # "no limit" for a listing


def cmd_list(cfg: Config, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit: expected a number above 0, got {args.limit}")
    status = Status(args.status) if args.status else None
    tagged = tags(args.tag)
    with store(cfg) as s:
        if tagged:  # no count per tag: one row more than shown says whether there are more
            rows = s.list_messages(status, args.limit + 1, tags=tagged)
            more = "more" if len(rows) > args.limit else ""
            rows = rows[:args.limit]
        else:
            rows = s.list_messages(status, args.limit)
            counts = s.counts()
            total = counts[status] if status else sum(counts.values())
            more = f"{total - len(rows)} more" if total > len(rows) else ""
    if args.json:
        fmt.print_json([m.to_json() for m in rows])
        return 0
    tagging = any(m.tags for m in rows)  # a TAGS column only when some message has tags
    fmt.table(("ID", "STATUS", "SEND TIME", "TRIES", "RECIPIENTS", "SUBJECT", *(("TAGS",) if tagging else ())),
              [(m.id, m.status.value, fmt.when(m.send_after), str(m.attempts),
                fmt.clip(fmt.recipients(m.rcpt_to), 40), fmt.clip(m.subject, 50),
                *((fmt.clip(_tags(m), 40),) if tagging else ())) for m in rows],
              right=frozenset({3}))
    if more:
        print(f"… {more} (use --limit)")
    return 0


def _show_queued(cfg: Config, args: argparse.Namespace) -> int | None:
    """A message not yet ingested: still in the queue (the spool, a Redis stream), or None."""
    queue = open_queue(cfg.queue, readonly=True)
    try:
        found = queue.find(args.id)
    finally:
        queue.close()
    if found is None:
        return None
    state = "taken by a daemon, not yet stored" if found.taken else "waiting to be ingested"
    kind = engine(cfg.queue).noun
    note = (f"taken from the {kind} by a daemon, not stored yet" if found.taken
            else f"queued in the {kind}, not ingested yet (is the daemon running?)")
    if args.json:
        fmt.print_json({"id": found.id, "status": "in-queue", "queue": found.where, "entry": found.entry,
                        "taken": found.taken, "note": note})
    else:
        print(f"id:        {found.id}\nstatus:    in the queue ({state})\nqueue:     {found.where}, "
              f"entry {found.entry}\nnote:      {note}")
    return 0


def cmd_show(cfg: Config, args: argparse.Namespace) -> int:
    try:
        with store(cfg) as s:
            info = s.get(args.id)
            raw = s.raw(args.id) if args.raw else b""
            attempts = s.attempts(args.id)
            recipients = s.recipients(args.id)
    except (NotFound, NoStore):  # not stored (or no store yet): it may still wait in the queue
        shown = _show_queued(cfg, args)
        if shown is None:
            raise
        return shown
    if args.raw:  # the stored message as it goes out, like `postcat -q`
        sys.stdout.flush()
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        return 0
    data = {**info.to_json(),
            "attempts": [a.__dict__ for a in attempts],
            "recipients": [r.__dict__ for r in recipients]}
    if args.json:
        fmt.print_json(data)
        return 0
    print(f"id:        {info.id}\nstatus:    {info.status.value}\nfrom:      {info.mail_from or '<>'}")
    print(f"to:        {', '.join(info.rcpt_to)}\nsubject:   {info.subject}\npriority:  {info.priority}")
    print(f"size:      {info.size} bytes")
    if info.tags:
        print(f"tags:      {_tags(info)}")
    print(f"created:   {fmt.when(info.created_at)}\nsend at:   {fmt.when(info.send_after)}")
    if info.status in (Status.QUEUED, Status.DEFERRED):
        print(f"next try:  {fmt.when(info.due_at)}")
    print(f"last error: {info.last_error or '-'}")
    print(f"attempts ({len(attempts)}):")
    for a in attempts:
        print(f"  {fmt.when(a.at)}  {a.outcome:<9} {a.duration * 1000:7.1f} ms  {a.relay}  {a.reply}")
    if recipients:
        print("recipients:")
        for r in recipients:
            print(f"  {r.address:<30} {r.status:<9} {r.reply}")
    return 0


def _tags(m: MessageInfo) -> str:
    return ", ".join(f"{k}={v}" for k, v in m.tags.items())


# -- ids or selectors ------------------------------------------------------------------


def _selected(s: Store, args: argparse.Namespace, allowed: Sequence[Status]) -> list[str] | None:
    """The ids the selectors pick among `allowed` statuses, or None when no selector was given."""
    if not _any_selector(args):
        return None
    if args.status:
        wanted = [Status(x) for x in args.status]
        bad = [st.value for st in wanted if st not in allowed]
        if bad:
            raise UsageError(f"--status {', '.join(bad)}: only {', '.join(a.value for a in allowed)} apply here")
    else:
        wanted = list(allowed)
    before = now() - duration("--older-than", args.older_than) if args.older_than else None
    to = {a.lower() for a in args.to}
    sender = {a.lower() for a in args.sender}
    tagged = tags(args.tag)

    def match(m: MessageInfo) -> bool:
        return ((not to or any(r.lower() in to for r in m.rcpt_to))
                and (not sender or m.mail_from.lower() in sender)
                and (before is None or m.created_at < before))

    return [m.id for st in wanted for m in s.list_messages(st, EVERY, tags=tagged) if match(m)]


def _each(cfg: Config, args: argparse.Namespace, allowed: Sequence[Status], verb: str,
          act: Callable[[Store, str], object]) -> int:
    if args.ids and _any_selector(args):
        raise UsageError(f"{args.command} takes message ids or selectors, not both")
    with store(cfg) as s:
        ids = args.ids or _selected(s, args, allowed)
        if ids is None:
            raise UsageError(f"{args.command} needs message ids or a selector "
                             "(--status, --to, --from, --older-than, --tag, --all)")
        done, refused = 0, 0
        for message_id in ids:
            try:
                act(s, message_id)
                done += 1
            except (NotFound, InvalidState) as exc:
                print(f"mailmand: {exc}", file=sys.stderr)
                refused += 1
    print(f"{verb} {done} message(s)")
    return 1 if refused else 0


def _any_selector(args: argparse.Namespace) -> bool:
    return bool(args.status or args.to or args.sender or args.older_than or args.tag or args.all)


def cmd_cancel(cfg: Config, args: argparse.Namespace) -> int:
    t = now()
    return _each(cfg, args, (Status.QUEUED, Status.DEFERRED), "cancelled", lambda s, i: s.cancel(i, t))


def cmd_retry(cfg: Config, args: argparse.Namespace) -> int:
    if args.failed:  # the older spelling of `--all`
        args.all = True
    t = now()
    return _each(cfg, args, (Status.FAILED, Status.EXPIRED), "re-queued", lambda s, i: s.requeue(i, t))


def cmd_flush(cfg: Config, args: argparse.Namespace) -> int:
    n, woke = flush(cfg, args.ids)
    print(f"flushed {n} deferred message(s)")
    if n:
        print(woke)
    return 0


def cmd_purge(cfg: Config, args: argparse.Namespace) -> int:
    older = duration("--older-than", args.older_than) if args.older_than else cfg.server.retention
    with store(cfg) as s:
        n = s.purge(now() - older)
    print(f"purged {n} finished message(s)")
    return 0
