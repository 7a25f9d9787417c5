"""Copying a store (`mailmand migrate`): every message with everything recorded
about it, out of one SQL store and into another, states and times kept."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from .events import EXPORT_EVENT, tags_of
from .model import WAITING, Exported, Status
from .schema import ATTEMPT_COLUMNS, MESSAGE_COLUMNS, RECIPIENT_COLUMNS

if TYPE_CHECKING:
    from .sql import SQLStore


def _marks(n: int) -> str:
    return ",".join("?" * n)


def export(store: SQLStore, batch: int = 500) -> Iterator[list[Exported]]:
    """SQLStore.export: every message with its body, attempts, recipients and events, `batch` at a time."""
    after = ""
    while True:
        rows = store._read(f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                          (after, batch))
        if not rows:
            return
        ids = [r[0] for r in rows]
        marks = _marks(len(ids))
        raws = dict(store._read(f"SELECT id, raw FROM bodies WHERE id IN ({marks})", ids))
        out = {i: Exported(dict(zip(MESSAGE_COLUMNS, r, strict=True)), bytes(raws.get(i, b"")))
               for i, r in zip(ids, rows, strict=True)}
        for r in store._read(f"SELECT message_id, {', '.join(ATTEMPT_COLUMNS)} FROM attempts"
                            f" WHERE message_id IN ({marks}) ORDER BY at", ids):
            out[r[0]].attempts.append(dict(zip(ATTEMPT_COLUMNS, r[1:], strict=True)))
        for r in store._read(f"SELECT message_id, {', '.join(RECIPIENT_COLUMNS)} FROM recipients"
                            f" WHERE message_id IN ({marks})", ids):
            out[r[0]].recipients.append(dict(zip(RECIPIENT_COLUMNS, r[1:], strict=True)))
        for r in store._read(f"SELECT message_id, {', '.join(EXPORT_EVENT)} FROM events"
                            f" WHERE message_id IN ({marks}) ORDER BY txid, seq", ids):
            out[r[0]].events.append(dict(zip(EXPORT_EVENT, r[1:], strict=True)))
        yield list(out.values())
        after = ids[-1]

def import_messages(store: SQLStore, messages: Sequence[Exported]) -> list[str]:
    """SQLStore.import_messages: what `export` gave, kept as it was (event ids too)."""
    if not messages:
        return []
    cols = ", ".join(MESSAGE_COLUMNS)
    with store.tx() as db:
        new: set[str] = set()
        for m in messages:
            row = dict(m.row)
            if row["status"] == Status.SENDING:  # the source is stopped: nobody holds that lease
                row["status"] = Status.DEFERRED.value if row["attempts"] else Status.QUEUED.value
            got = db.execute(f"INSERT INTO messages ({cols}) VALUES ({_marks(len(MESSAGE_COLUMNS))})"
                             " ON CONFLICT (id) DO NOTHING RETURNING id",
                             [row[c] for c in MESSAGE_COLUMNS]).fetchall()
            if got:
                new.add(m.row["id"])
        mine = [m for m in messages if m.row["id"] in new]
        db.executemany("INSERT INTO bodies (id, raw) VALUES (?, ?)", [(m.row["id"], m.raw) for m in mine])
        db.executemany(f"INSERT INTO attempts (message_id, {', '.join(ATTEMPT_COLUMNS)}) VALUES"
                       f" ({_marks(len(ATTEMPT_COLUMNS) + 1)})",
                       [(m.row["id"], *(a[c] for c in ATTEMPT_COLUMNS)) for m in mine for a in m.attempts])
        db.executemany(f"INSERT INTO recipients (message_id, {', '.join(RECIPIENT_COLUMNS)}) VALUES"
                       f" ({_marks(len(RECIPIENT_COLUMNS) + 1)})",
                       [(m.row["id"], *(x[c] for c in RECIPIENT_COLUMNS)) for m in mine for x in m.recipients])
        store._tag_rows(db, [(m.row["id"], tags_of(m.row.get("tags"))) for m in mine])
        # Events keep their ids: a copy of the store is the same history, not a new one.
        db.executemany(f"INSERT INTO events (message_id, {', '.join(EXPORT_EVENT)}) VALUES"
                       f" ({_marks(len(EXPORT_EVENT) + 1)})",
                       [(m.row["id"], *(e[c] for c in EXPORT_EVENT)) for m in mine for e in m.events])
        if any(m.row["status"] in WAITING for m in mine):
            store._due_now(db)
    return [m.row["id"] for m in mine]

