"""Reading and upkeep of the queue: `list`, `show`, `flush`, `purge`.

`list` pages through the store's one selection, newest first; `flush` makes
deferred mail due now (`postqueue -f`) and wakes the daemon at once. The
moves (`cancel`, `retry`, `hold`, `release`) are in moves.py.
"""

from __future__ import annotations

import argparse
import sys

from ..control import flush
from ..errors import NoStore, NotFound, UsageError
from ..queues import engine, open_queue
from ..stores.model import Key, MessageInfo, Status
from . import format as fmt
from .common import duration, now, selection, store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import Config

def cmd_list(cfg: Config, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit: expected a number above 0, got {args.limit}")
    t = now()
    with store(cfg) as s:
        after = None
        if args.after:
            try:
                after = Key.of(s.get(args.after))
            except NotFound:
                raise UsageError(f"--after: no message with id {args.after!r}") from None
        page = s.select(selection(args, (), t), args.limit, after)
    if args.json:
        fmt.print_json([m.to_json() for m in page.messages])
        return 0
    tagging = any(m.tags for m in page.messages)  # a TAGS column only when some message has tags
    fmt.table(("ID", "STATUS", "SEND TIME", "NEXT TRY", "TRIES", "RECIPIENTS", "SUBJECT",
               *(("TAGS",) if tagging else ())),
              [(m.id, m.status.value, fmt.when(m.send_after),
                fmt.when(m.due_at) if m.status is Status.DEFERRED else "-", str(m.attempts),
                fmt.clip(fmt.recipients(m.rcpt_to), 40), fmt.clip(m.subject, 50),
                *((fmt.clip(_tags(m), 40),) if tagging else ())) for m in page.messages],
              right=frozenset({4}))
    if page.next is not None:
        print(f"… more: the next page is --after {page.next.id}")
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
    if info.status is Status.HELD:
        print(f"held:      since {fmt.when(info.held_at)}; `mailmand release {info.id}` sends it again "
              f"(due {fmt.when(info.due_at)})")
    if info.paused:
        print(f"paused:    {fmt.age(info.paused)} held before: its max-time deadline moved on by as much")
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
