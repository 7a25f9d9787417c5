"""What the SQL stores do for an operator beyond the daemon's path: the one
selection every listing pages through, qshape's view by domain, hold and
release. Written once with `?` parameters; `SQLStore` (sql.py) mixes it in
and supplies the transaction, the reads and the dialect words.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from .events import each
from .model import (
    AGE_BOUNDS,
    OPERATOR_MOVES,
    SCHEDULED,
    UNFINISHED,
    DomainShape,
    EventType,
    Key,
    MessageInfo,
    NewEvent,
    Page,
    Selection,
    Status,
)
from .schema import Db

TYPE_CHECKING = False

NEWEST = " ORDER BY created_at DESC, id DESC"  # what an index on (created_at, id) gives, walked down
WINDOW, WINDOWS = 5000, 3  # a text filter reads up to 3 x 5,000 rows by index before it scans (_filtered)
FIRST = 4  # rows its first window reads per row asked (at most WINDOW): a filter most rows match reads few
MAX_LIMIT = 2**62  # "no limit" (sys.maxsize) stays a BIGINT after the one more a page asks for
CHUNK = 500  # ids per statement of a move (SQLite allows 32,766 parameters)
ESCAPE = "ESCAPE '\\'"
# What a move's UPDATE says of each message it changed: for its answer, and its event.
RETURNING = " RETURNING id, due_at, attempts, coalesce(pending_rcpt, rcpt_to)"


def like(text: str) -> str:
    """`text` as a LIKE pattern that matches it literally (with ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def address_patterns(addresses: Sequence[str], json_list: bool) -> list[str]:
    """LIKE patterns for any of `addresses` (an address whole, or `@domain`) in a
    column that holds an address, or a JSON list of them as json.dumps wrote it."""
    patterns = []
    for address in addresses:
        a = address.strip()
        if json_list:  # an element is a JSON string, quoted: the match is whole
            text = "@" + json.dumps(a[1:])[1:] if a.startswith("@") else json.dumps(a)
            patterns.append(f"%{like(text)}%")
        else:
            patterns.append(f"%{like(a)}" if a.startswith("@") else like(a))
    return patterns


def statuses_sql(statuses: Sequence[Status]) -> str:
    """An IN list of statuses, as SQL text (enum values only, never a user's text)."""
    return ",".join(f"'{Status(s).value}'" for s in statuses)


def marks(n: int) -> str:
    return ",".join("?" * n)


def _where_sql(clauses: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


INFO_COLUMNS = ("id, status, mail_from, rcpt_to, subject, priority, size, created_at, send_after, "
                "due_at, attempts, last_code, last_error, updated_at, finished_at, idempotency_key, fails, "
                "held_at, paused, tags")


def info(row: Sequence[Any]) -> MessageInfo:
    """A MessageInfo from a row of INFO_COLUMNS."""
    return MessageInfo(
        id=row[0], status=Status(row[1]), mail_from=row[2], rcpt_to=tuple(json.loads(row[3])),
        subject=row[4], priority=row[5], size=row[6], created_at=row[7], send_after=row[8],
        due_at=row[9], attempts=row[10], last_code=row[11], last_error=row[12],
        updated_at=row[13], finished_at=row[14], idempotency_key=row[15], fails=row[16],
        held_at=row[17], paused=row[18], tags=json.loads(row[19]) if row[19] else {},
    )


class OperatorSQL:
    """Mixed into SQLStore, which supplies the transaction, the reads and the wake-up."""

    GREATEST: str  # the dialect's max() of two values
    ILIKE = "LIKE"  # ASCII case ignored (SQLite's LIKE); PostgreSQL: ILIKE
    # How a text filter's scan past its window reads the table: in the table's order,
    # not the index's (SQLite would walk the index, row by row at random). PostgreSQL
    # chooses by its statistics.
    SCAN_HINT = "NOT INDEXED"
    # A FROM item giving each recipient not yet delivered to of message `m` as `r.value`,
    # and the domain of `r.value`, lower case.
    EACH_RECIPIENT = "json_each(coalesce(m.pending_rcpt, m.rcpt_to)) r"
    # rtrim strips every character but '@' from the end: what is left ends at the last '@'.
    DOMAIN = "lower(substr(r.value, length(rtrim(r.value, replace(r.value, '@', ''))) + 1))"

    def tx(self, durable: bool = True) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def _due_now(self, db: Db) -> None:
        raise NotImplementedError

    if TYPE_CHECKING:  # events.py's, in SQLStore (declared here only: a stub would hide it)
        def record_events(self, db: Db, events: Sequence[NewEvent]) -> None: ...

    # -- the one listing ---------------------------------------------------------

    def _where(self, sel: Selection) -> tuple[list[str], list[Any], list[str], list[Any]]:
        """The selection's criteria but its statuses, as two lists of clauses (each
        joined by AND) with their arguments: those an index walk answers (ids, times),
        and those on text it must read each row for (recipients, sender, subject)."""
        walk: list[str] = []
        walk_args: list[Any] = []
        if sel.ids:
            walk.append(f"id IN ({marks(len(sel.ids))})")
            walk_args += sel.ids
        if sel.since is not None:
            walk.append("created_at >= ?")
            walk_args.append(sel.since)
        if sel.until is not None:
            walk.append("created_at < ?")
            walk_args.append(sel.until)
        for key, value in sel.tags:  # an index lookup each (ix_tags)
            walk.append("id IN (SELECT message_id FROM tags WHERE key = ? AND value = ?)")
            walk_args += (key, value)
        text: list[str] = []
        text_args: list[Any] = []
        for column, given, json_list in (("rcpt_to", sel.to, True), ("mail_from", sel.sender, False)):
            if given:
                patterns = address_patterns(given, json_list)
                text.append("(" + " OR ".join(f"{column} {self.ILIKE} ? {ESCAPE}" for _ in patterns) + ")")
                text_args += patterns
        if sel.subject:
            text.append(f"subject {self.ILIKE} ? {ESCAPE}")
            text_args.append(f"%{like(sel.subject)}%")
        return walk, walk_args, text, text_args

    def select(self, selection: Selection, limit: int, after: Key | None = None) -> Page:
        walk, walk_args, text, text_args = self._where(selection)
        if after is not None:  # a row value: both engines walk the index from there
            walk.append("(created_at, id) < (?, ?)")
            walk_args += (after.created_at, after.id)
        fetch = min(limit, MAX_LIMIT) + 1  # one more than asked: whether there is a next page
        rows: list[Any] = []
        # One walk per status, down (status, created_at, id), merged here: each stops
        # after limit + 1 rows, where one walk over several statuses would sort them all.
        for status in selection.statuses or (None,):
            clauses, values = (walk, walk_args) if status is None else (
                ["status = ?", *walk], [status.value, *walk_args])
            if text:
                rows += self._filtered(clauses, values, " AND ".join(text), text_args, fetch)
            else:
                rows += self._read(f"SELECT {INFO_COLUMNS} FROM messages{_where_sql(clauses)}{NEWEST}"
                                   " LIMIT ?", [*values, fetch])
        rows.sort(key=lambda r: (r[7], r[0]), reverse=True)
        page = [info(r) for r in rows[:limit]]
        return Page(page, Key.of(page[-1]) if len(rows) > limit and page else None)

    def _filtered(self, walk: list[str], walk_args: list[Any], text: str, text_args: list[Any],
                  fetch: int) -> list[Any]:
        """Up to `fetch` rows of a walk that also match `text`, newest first. The walk's
        newest rows come by index, WINDOW at a time, up to WINDOWS of them (a filter that
        many rows match fills its page there, in milliseconds; the first window reads only
        FIRST rows a row asked, so that a page of 50 such rows reads 200, not 5,000); past them, one scan in
        the table's own order and a sort of what matches (SCAN_HINT): a filter that few
        rows match would otherwise read the whole store in index order, row by row at
        random, seconds on a million."""
        hits: list[Any] = []
        edge: list[Any] = []
        for n in range(WINDOWS):
            size = min(WINDOW, FIRST * fetch) if n == 0 else WINDOW
            window = self._read(f"SELECT {INFO_COLUMNS}, CASE WHEN {text} THEN 1 ELSE 0 END FROM messages"
                                f"{_where_sql([*walk, *(['(created_at, id) < (?, ?)'] if edge else [])])}"
                                f"{NEWEST} LIMIT {size}", [*text_args, *walk_args, *edge])
            hits += [r[:-1] for r in window if r[-1]]
            if len(hits) >= fetch or len(window) < size:
                return hits[:fetch]
            edge = [window[-1][7], window[-1][0]]
        return hits + self._read(
            f"SELECT {INFO_COLUMNS} FROM messages {self.SCAN_HINT}"
            f"{_where_sql([*walk, '(created_at, id) < (?, ?)', text])}{NEWEST} LIMIT ?",
            [*walk_args, *edge, *text_args, fetch - len(hits)])

    # -- qshape's view -----------------------------------------------------------

    def by_domain(self, now: float, statuses: Sequence[Status] = UNFINISHED) -> list[DomainShape]:
        age = " ".join(f"WHEN m.send_after > ? - {bound} THEN {i}" for i, bound in enumerate(AGE_BOUNDS))
        rows = self._read(
            f"SELECT {self.DOMAIN} AS domain, CASE WHEN m.send_after > ? THEN {SCHEDULED} {age}"
            f" ELSE {len(AGE_BOUNDS)} END AS bucket, count(*) FROM messages m, {self.EACH_RECIPIENT}"
            f" WHERE m.status IN ({statuses_sql(statuses)}) GROUP BY 1, 2",
            [now, *(now for _ in AGE_BOUNDS)])
        shapes: dict[str, dict[int, int]] = {}
        for domain, bucket, n in rows:
            shapes.setdefault(domain, {})[int(bucket)] = int(n)
        return sorted((DomainShape(d, b) for d, b in shapes.items()), key=lambda s: (-s.total, s.domain))

    # -- hold and release --------------------------------------------------------

    def _move(self, ids: Sequence[str], sql: str, args: Sequence[Any], now: float,
              event: EventType, wake: bool = True) -> list[tuple[str, Any]]:
        """`sql` (an UPDATE whose `{ids}` is the id list, RETURNING id, due_at) over
        `ids` in chunks, in one transaction with each changed message's `event`;
        (id, due_at) of the rows it changed. With `wake`, wakes the daemons when one
        of them is due at `now`."""
        changed: list[tuple[str, Any]] = []
        reply = f"{event.value} by operator"
        with self.tx() as db:
            for i in range(0, len(ids), CHUNK):
                chunk = list(ids[i:i + CHUNK])
                rows = db.execute(sql.format(ids=marks(len(chunk))) + RETURNING, [*args, *chunk]).fetchall()
                self.record_events(db, [NewEvent(m, event, now, n, each(json.loads(rcpt), event, reply=reply),
                                                 reply=reply) for m, _, n, rcpt in rows])
                changed += [(m, due) for m, due, _, _ in rows]
            if wake and any(due is not None and due <= now for _, due in changed):
                self._due_now(db)
        return changed

    def hold(self, ids: Sequence[str], now: float) -> list[str]:
        held = self._move(ids, "UPDATE messages SET status = 'held', held_at = ?, updated_at = ?"
                               f" WHERE status IN ({statuses_sql(OPERATOR_MOVES['hold'])}) AND id IN ({{ids}})",
                          [now, now], now, EventType.HELD, wake=False)
        return [i for i, _ in held]

    def release(self, ids: Sequence[str], now: float) -> list[str]:
        # Back as a hand-back leaves a message (queued if never tried, else deferred), due
        # when it was due; the time it was held moves its max-time deadline on.
        released = self._move(
            ids, "UPDATE messages SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,"
                 f" paused = paused + {self.GREATEST}(0, ? - coalesce(held_at, ?)), held_at = NULL, updated_at = ?"
                 f" WHERE status IN ({statuses_sql(OPERATOR_MOVES['release'])}) AND id IN ({{ids}})",
            [now, now, now], now, EventType.RELEASED)
        return [i for i, _ in released]
