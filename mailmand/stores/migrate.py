"""`mailmand migrate --from PATH`: copy an SQLite store into the configured one.

Moving from one host to many is: stop the daemon, migrate, change the
configuration, start. Every message, body, attempt and recipient outcome is
copied with its states and times; a message already in the target is left
alone, so running it twice copies nothing twice. The roll-ups that `stats`
reads, the quarantine and the suppressions are copied once per source store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DatabaseConfig
from ..errors import StoreError
from ..locks import InstanceLock
from . import SQLITE, describe, engine
from .sql import SQLStore
from .sqlite import SQLiteStore
from .suppression import COLUMNS as SUPPRESSION_COLUMNS


@dataclass
class Migrated:
    messages: int = 0  # in the source
    copied: int = 0  # new in the target
    attempts: int = 0  # copied with them
    recipients: int = 0
    extras: bool = False  # roll-ups and quarantine copied this time

    def summary(self, source: Path, target: str) -> str:
        extras = "copied" if self.extras else "already there"
        return (f"migrated {source} → {target}: {self.messages} message(s), {self.copied} copied "
                f"({self.messages - self.copied} already there), {self.attempts} attempt(s), "
                f"{self.recipients} recipient outcome(s); statistics and quarantine {extras}")


def migrate(source: Path, target: DatabaseConfig) -> Migrated:
    """Copy the SQLite store at `source` into `target`. Refuses while a daemon
    holds the source (its lock is held for the whole copy, so none can start)."""
    source = Path(source)
    if not source.is_file():
        raise StoreError(f"no SQLite store at {source}")
    found = engine(target)
    file = found.file(target)
    if file is not None and file.resolve() == source.resolve():
        raise StoreError(f"{source} is the configured store already: nothing to migrate")
    # The lock a daemon holds beside the store: the same file, the same rule.
    lock_file = SQLITE.lock(DatabaseConfig(path=source))
    assert lock_file is not None  # (a file's store always has one)
    lock = InstanceLock(lock_file, f"the store {source}")
    lock.acquire()  # AlreadyRunning: "another mailmand daemon (pid N) is already running on the store PATH"
    try:
        src = SQLiteStore(source)
        dst = found.open(target, True)
        try:
            assert isinstance(dst, SQLStore)
            done = _copy(src, dst)
        finally:
            dst.close()
            src.close()
    finally:
        lock.discard()
    return done


def _copy(src: SQLiteStore, dst: SQLStore) -> Migrated:
    done = Migrated()
    for chunk in src.export():
        new = set(dst.import_messages(chunk))
        done.messages += len(chunk)
        done.copied += len(new)
        done.attempts += sum(len(m.attempts) for m in chunk if m.row["id"] in new)
        done.recipients += sum(len(m.recipients) for m in chunk if m.row["id"] in new)
    done.extras = import_extras(dst, src.store_id(), export_extras(src), time.time())
    return done


def run(source: str, target: DatabaseConfig) -> str:
    """The command: one summary line."""
    return migrate(Path(source), target).summary(Path(source), describe(target))



# What `stats` reads, the quarantine and the suppressions: copied once per source store (they are sums, not rows).
ROLLUP_TABLES = {"stats_hourly": "hour, kind, bucket, n", "reasons_hourly": "hour, reason, n",
                 "depth_hourly": "hour, depth", "quarantine": "at, reason, data", "suppressions": SUPPRESSION_COLUMNS}


def export_extras(store: SQLStore) -> dict[str, list[Any]]:
    """The roll-ups and quarantine of a store, as `migrate` copies them (once per source store)."""
    return {table: store._read(f"SELECT {cols} FROM {table}") for table, cols in ROLLUP_TABLES.items()}


def import_extras(store: SQLStore, source_id: str, extras: dict[str, list[Any]], now: float) -> bool:
    """Add another store's roll-ups and quarantine, unless this store already has them
    (keyed by the source's store id). Returns False when they were there already."""
    with store.tx() as db:
        got = db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING RETURNING key",
                         (f"imported:{source_id}", repr(now))).fetchall()
        if not got:
            return False
        for table, cols in ROLLUP_TABLES.items():
            rows = extras.get(table, [])
            if table == "suppressions":  # an address the target knows already keeps its own count
                db.executemany(f"INSERT INTO suppressions ({cols}) VALUES ({','.join('?' * 8)})"
                               " ON CONFLICT (address) DO NOTHING", rows)
            elif table == "quarantine":
                db.executemany(f"INSERT INTO quarantine ({cols}) VALUES (?, ?, ?)", rows)
            elif table == "depth_hourly":
                db.executemany(f"INSERT INTO depth_hourly ({cols}) VALUES (?, ?) ON CONFLICT (hour) DO UPDATE"
                               f" SET depth = {store.GREATEST}(depth_hourly.depth, excluded.depth)", rows)
            else:
                store._write_rollup_rows(db, table, rows)
    return True
