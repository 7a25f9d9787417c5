"""One schema numbering for both SQL engines, and stores made by older releases
migrated in place.

tests/data/stores/ holds real old stores, dumped by the engines' own tools
(`sqlite3`'s iterdump, `pg_dump --inserts`) after mailmand 2fe78b4 made and
used them (tests/data/stores/make_old_stores.py says how):
- sqlite-v0: the first release's tables, before there were versions;
- sqlite-v4: the newest SQLite schema of that release;
- postgres-v1 and postgres-v3: PostgreSQL stores numbered the old way, when
  PostgreSQL's version 1 held what SQLite calls versions 1 and 2.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from mailmand.config import DatabaseConfig
from mailmand.stores import Status, open_store
from mailmand.stores.model import Finished, Outcome
from mailmand.stores.schema import LATEST
from tests.conftest import _postgres_admin, postgres_database_dsn
from tests.test_store import attempt

OLD = Path(__file__).parent / "data" / "stores"
T = 1_790_000_000.0  # the fixed past the old stores were made in


@pytest.fixture
def postgres_databases():
    """Fresh PostgreSQL databases on demand (`make() -> dsn`), dropped after the test."""
    names: list[str] = []

    def make() -> str:
        name = f"mailmand_test_{uuid.uuid4().hex[:12]}"
        with _postgres_admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        return postgres_database_dsn(name)

    yield make
    with _postgres_admin() as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def load(dump: str, tmp_path: Path, postgres_databases) -> DatabaseConfig:
    """A store restored from one of the old dumps."""
    text = (OLD / f"{dump}.sql").read_text()
    if dump.startswith("sqlite"):
        path = tmp_path / "old" / "mailmand.db"
        path.parent.mkdir()
        with sqlite3.connect(path) as db:
            db.executescript(text)
        return DatabaseConfig(path=path)
    import psycopg

    dsn = postgres_databases()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(text)  # pg_dump's plain SQL, one simple query
    return DatabaseConfig(engine="postgres", dsn=dsn)


def fresh(engine: str, tmp_path: Path, postgres_databases) -> DatabaseConfig:
    if engine == "postgres":
        return DatabaseConfig(engine="postgres", dsn=postgres_databases())
    return DatabaseConfig(path=tmp_path / "fresh" / "mailmand.db")


def shape(store) -> dict[str, object]:
    """Everything the schema says, in a form both engines give: each table's
    columns (name, type, not null, default), and every index and trigger by name."""
    if store.name.startswith("postgres"):
        columns = store._read(
            "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY 1, 2")
        indexes = store._read("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1")
        triggers = store._read("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1")
    else:
        tables = [t for (t,) in store._read("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")]
        columns = [(t, *c[1:5]) for t in tables
                   for c in sorted(store._read(f"PRAGMA table_info({t})"), key=lambda c: c[1])]
        indexes = [(name, [c[2] for c in store._read(f"PRAGMA index_info({name})")])
                   for (name,) in store._read("SELECT name FROM sqlite_master WHERE type = 'index'"
                                              " AND sql IS NOT NULL ORDER BY 1")]
        triggers = store._read("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY 1")
    return {"columns": [tuple(c) for c in columns], "indexes": [tuple(i) for i in indexes],
            "triggers": [tuple(t) for t in triggers]}


def versions(store) -> list[int]:
    return [v for (v,) in store._read("SELECT version FROM schema_version ORDER BY version")]


@pytest.mark.parametrize("dump", ["sqlite-v4", "postgres-v3", "postgres-v1", "sqlite-v0"])
def test_an_old_store_is_migrated_to_the_schema_a_new_store_has(dump, tmp_path, postgres_databases):
    engine = "postgres" if dump.startswith("postgres") else "sqlite3"
    new = open_store(fresh(engine, tmp_path, postgres_databases), create=True)
    old = open_store(load(dump, tmp_path, postgres_databases), create=True)
    try:
        assert versions(old) == versions(new) == list(range(1, LATEST + 1))
        assert shape(old) == shape(new)
        assert old.store_id() != new.store_id()
    finally:
        new.close()
        old.close()


@pytest.mark.parametrize("dump", ["sqlite-v4", "postgres-v3"])
def test_what_an_old_store_held_is_all_there_and_goes_on(dump, tmp_path, postgres_databases):
    cfg = load(dump, tmp_path, postgres_databases)
    if dump.startswith("postgres"):
        import psycopg

        with psycopg.connect(cfg.dsn) as conn:
            [(store_id,)] = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchall()
    else:
        with sqlite3.connect(cfg.path) as db:
            [(store_id,)] = db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchall()
    store = open_store(cfg, create=True)
    try:
        assert store.store_id() == store_id  # the same store, not a new one
        counts = {s: n for s, n in store.counts().items() if n}
        assert counts == {Status.SENT: 1, Status.FAILED: 1, Status.DEFERRED: 2, Status.QUEUED: 1,
                          Status.SENDING: 1, Status.CANCELLED: 1}
        sent = store.get("old1")
        assert (sent.status, sent.attempts, sent.fails, sent.last_code, sent.idempotency_key) == (
            Status.SENT, 1, 1, 250, "key1")
        assert [(a.code, a.daemon) for a in store.attempts("old1")] == [(250, "host:100:aa")]
        assert {r.address: r.status for r in store.recipients("old2")} == {"b@x.org": "sent", "c@x.org": "deferred"}
        assert store.raw("old3").endswith(b"body 3\r\n")
        assert [q.reason for q in store.quarantined()] == ["not valid JSON: Expecting value"]
        assert [d.id for d in store.daemons()] == ["host:100:aa"]
        assert store.stats(T - 3600, T + 3600)["messages"] == {"sent": 1, "failed": 1, "expired": 0}
        # The message a dead daemon left `sending` is taken back, and sent under a new token.
        assert store.take_over("host:100:aa") == 1
        claimed = {c.id: c for c in store.claim(T + 10_000, 10, "new", 60)}
        assert set(claimed) == {"old2", "old4", "old5"}  # due; old6 is scheduled, old7 cancelled
        assert claimed["old2"].rcpt_to == ("c@x.org",) and claimed["old2"].token == 2
        assert store.finish([Finished(c.id, "new", c.token, attempt(T + 10_001), Outcome(Status.SENT, code=250))
                             for c in claimed.values()]) == [True] * 3
        assert store.get("old2").attempts == 2 and store.counts()[Status.SENT] == 4
        assert store.stats(T - 3600, T + 20_000)["messages"] == {"sent": 4, "failed": 1, "expired": 0}
        # A status this store never knew is counted like the others: held, then released.
        assert store.hold(["old6"], T + 20_001) == ["old6"]
        assert (store.counts()[Status.HELD], store.counts()[Status.QUEUED]) == (1, 0)
        assert store.release(["old6"], T + 20_002) == ["old6"] and store.counts()[Status.HELD] == 0
    finally:
        store.close()


def test_an_old_postgres_store_keeps_its_history_under_the_new_numbers(tmp_path, postgres_databases):
    store = open_store(load("postgres-v1", tmp_path, postgres_databases), create=True)
    try:
        info = store.get("m1")
        assert (info.status, info.attempts, info.fails, info.last_code) == (Status.DEFERRED, 1, 1, 451)
        [c] = store.claim(T + 200, 10, "me", 60)
        assert c.token == 2  # its claims counter went on
        assert store.finish([Finished("m1", "me", c.token, attempt(T + 201), Outcome(Status.SENT, code=250))]) == [True]
        assert [a.daemon for a in store.attempts("m1")] == ["h:1:a", "me"]
        # The roll-up a later version added was filled from the rows the store had.
        assert store.stats(T - 3600, T + 3600)["messages"] == {"sent": 2, "failed": 0, "expired": 0}
    finally:
        store.close()


def test_a_store_from_before_schema_versions_keeps_its_counts(tmp_path, postgres_databases):
    store = open_store(load("sqlite-v0", tmp_path, postgres_databases))
    try:
        info = store.get("m1")
        assert (info.attempts, info.fails) == (3, 2)  # every attempt on record; the fails kept
        [c] = store.claim(100.0, 10, "me", 60)
        assert c.token == 1 and c.fails == 2
        assert [a.daemon for a in store.attempts("m1")] == [None, None, None]
        assert store.finish([Finished("m1", "me", c.token, attempt(101.0), Outcome(Status.SENT, code=250))]) == [True]
        # Finished messages are a roll-up now, filled from the rows the old store had.
        assert store.stats(0.0, 8000.0)["messages"] == {"sent": 1, "failed": 1, "expired": 0}
        assert store.stats(7200.0, 8000.0)["messages"] == {"sent": 0, "failed": 1, "expired": 0}
        assert store.get("m1").attempts == 4 and len(store.attempts("m1")) == 4
    finally:
        store.close()


def test_a_version_names_the_same_tables_and_columns_on_both_engines(tmp_path, postgres_databases):
    stores = [open_store(fresh(e, tmp_path, postgres_databases), create=True) for e in ("sqlite3", "postgres")]
    try:
        tables = []
        for store in stores:
            columns = shape(store)["columns"]
            assert isinstance(columns, list)
            # Each engine's own counters, and SQLite's own table behind AUTOINCREMENT (the events' seq).
            tables.append({(t, c) for t, c, *_ in columns
                           if t not in ("status_counts", "status_deltas", "sqlite_sequence")})
        assert tables[0] == tables[1]
        assert versions(stores[0]) == versions(stores[1]) == list(range(1, LATEST + 1))
    finally:
        for store in stores:
            store.close()


def test_a_store_newer_than_this_mailmand_is_refused(tmp_path, postgres_databases):
    from mailmand.errors import StoreError

    cfg = fresh("postgres", tmp_path, postgres_databases)
    open_store(cfg, create=True).close()
    import psycopg

    with psycopg.connect(cfg.dsn) as conn:
        conn.execute("INSERT INTO schema_version VALUES (%s)", (LATEST + 1,))
    with pytest.raises(StoreError, match=f"schema version {LATEST + 1}; this mailmand knows up to {LATEST}"):
        open_store(cfg, create=True)
