"""`mailmand explain ID`: where a message is, why, and when it will move (mailmand/explain.py
builds the paragraph; this prints it, or its facts as JSON)."""

from __future__ import annotations

import argparse
import textwrap

from ..errors import NoStore, NotFound
from ..explain import Explanation, explain
from ..queues import engine, open_queue
from . import format as fmt
from .common import now, store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import Config


def cmd_explain(cfg: Config, args: argparse.Namespace) -> int:
    from ..config import load

    t = now()
    # The whole configuration (a producer's cached settings keep only what producers read).
    settings = load(getattr(args, "config", None), producer=True)
    try:
        with store(cfg) as s:
            found = explain(s, settings, args.id, t)
    except (NotFound, NoStore):  # not stored (or no store yet): it may still wait in the queue
        queued = _in_queue(cfg, args.id)
        if queued is None:
            raise
        found = queued
    if args.json:
        fmt.print_json(found.as_dict())
    else:
        print(textwrap.fill(found.text, width=100, break_long_words=False, break_on_hyphens=False))
    return 0


def _in_queue(cfg: Config, message_id: str) -> Explanation | None:
    queue = open_queue(cfg.queue, readonly=True)
    try:
        item = queue.find(message_id)
    finally:
        queue.close()
    if item is None:
        return None
    kind = engine(cfg.queue).noun
    text = (f"taken from the {kind} by a daemon, and not stored yet: it is being ingested" if item.taken
            else f"in the {kind} ({item.where}), not ingested yet: a running daemon takes it within a second "
                 "(is one running? `mailmand status`)")
    return Explanation(message_id, "in-queue", text, {"status": "in-queue", "queue": item.where,
                                                       "entry": item.entry, "taken": item.taken})
