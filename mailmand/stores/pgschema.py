"""PostgreSQL's part of the schema (stores/schema.py has what both engines
share, and the numbering): how it spells the shared words, and its own
counters. Daemons finishing together must not queue on one hot row, so the
status counts and hourly roll-ups are appended as deltas (statement triggers
with transition tables) and folded by housekeeping."""

from __future__ import annotations

from .model import Status

WORDS = {"real": "DOUBLE PRECISION", "bigint": "BIGINT", "blob": "BYTEA", "serial_key": "BIGSERIAL PRIMARY KEY",
         "random_id": "replace(gen_random_uuid()::text, '-', '')",
         "hour_of_finished": "floor(finished_at / 3600)::bigint",
         "event_key": "BIGSERIAL PRIMARY KEY", "txid": "(pg_current_xact_id()::text::bigint)"}

_COUNT = """CREATE FUNCTION mailmand_count_{op}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_deltas (status, n) SELECT status, sum(n) FROM ({rows}) d GROUP BY status HAVING sum(n) <> 0;
    RETURN NULL;
END $$"""

OWN = {1: [
    # Appended by every finish, folded by housekeeping.
    "CREATE TABLE stats_hourly (hour BIGINT NOT NULL, kind TEXT NOT NULL, bucket INTEGER NOT NULL, n BIGINT NOT NULL)",
    "CREATE INDEX ix_stats_hour ON stats_hourly (hour)",
    "CREATE TABLE reasons_hourly (hour BIGINT NOT NULL, reason TEXT NOT NULL, n BIGINT NOT NULL)",
    "CREATE INDEX ix_reasons_hour ON reasons_hourly (hour)",
    "CREATE TABLE status_deltas (status TEXT NOT NULL, n BIGINT NOT NULL)",
    # Status counts: one delta row per statement and status (transition tables), never a hot row.
    _COUNT.format(op="ins", rows="SELECT status, 1 AS n FROM new_rows"),
    _COUNT.format(op="upd", rows="SELECT status, -1 AS n FROM old_rows UNION ALL SELECT status, 1 FROM new_rows"),
    _COUNT.format(op="del", rows="SELECT status, -1 AS n FROM old_rows"),
    """CREATE TRIGGER count_ins AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION mailmand_count_ins()""",
    """CREATE TRIGGER count_upd AFTER UPDATE ON messages REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION mailmand_count_upd()""",
    """CREATE TRIGGER count_del AFTER DELETE ON messages REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION mailmand_count_del()""",
    *(f"INSERT INTO status_deltas VALUES ('{s.value}', 0)" for s in Status),
]}
# Before both engines counted versions alike, a PostgreSQL store began at what
# SQLite calls version 2 (its first version had the lease token and the daemons):
# a store at 1 to 3 is one of those (this mailmand takes a new store to the
# latest version in one transaction, so it never leaves one there).
RENUMBERED = 3
