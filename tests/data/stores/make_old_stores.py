"""How tests/data/stores/ was made: run with mailmand 2fe78b4 on the path
(`git archive 2fe78b4 mailmand | tar -x -C OLD; PYTHONPATH=OLD python make_old_stores.py KIND OUT`),
KIND one of sqlite, sqlite-v0, pg-v3, pg-v1. The PostgreSQL dumps then had
pg_dump's `\\restrict` lines removed (psql meta-commands)."""
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg

from mailmand.config import DatabaseConfig
from mailmand.message import Record
from mailmand.stores import open_store
from mailmand.stores.model import Attempt, DaemonInfo, Finished, Outcome, RecipientOutcome, Status

T = 1_790_000_000.0  # a fixed past: 2026-09-21

def rec(i, send_after=0.0, rcpt=("b@x.org",)):
    raw = f"From: a@x.org\r\nTo: {', '.join(rcpt)}\r\nSubject: old {i}\r\n\r\nbody {i}\r\n".encode()
    return Record(f"old{i}", "a@x.org", rcpt, raw, i % 3, send_after, f"key{i}" if i == 1 else None, T + i)

def fill(store):
    store.register(DaemonInfo("host:100:aa", "host", 100, "0.1.0", T, T + 60, "/var/spool/mailmand"))
    store.insert([rec(1), rec(2, rcpt=("b@x.org", "c@x.org")), rec(3), rec(4), rec(5), rec(6, send_after=T + 10**6),
                  rec(7)])
    cl = {c.id: c for c in store.claim(T + 100, 10, "host:100:aa", 300)}
    def fin(cid, at, status, kind, code, reply, recips=(), **kw):
        c = cl[cid]
        store.finish([Finished(cid, "host:100:aa", c.token, Attempt(at, "relay:25", code, reply, 0.05, kind),
                               Outcome(status, None if status is Status.SENT else reply, code, **kw), recips)])
    fin("old1", T + 101, Status.SENT, "sent", 250, "250 ok", [RecipientOutcome("b@x.org", "sent", 250, "250 ok")])
    fin("old2", T + 102, Status.DEFERRED, "temporary", 451, "451 busy",
        [RecipientOutcome("b@x.org", "sent", 250, "250 ok"), RecipientOutcome("c@x.org", "deferred", 451, "451 busy")],
        due_at=T + 400, pending=("c@x.org",))
    fin("old3", T + 103, Status.FAILED, "permanent", 550, "550 no such user",
        [RecipientOutcome("b@x.org", "failed", 550, "550 no such user")])
    fin("old4", T + 104, Status.DEFERRED, "temporary", None, "connection refused", due_at=T + 200, counted=False)
    store.release_own("host:100:aa", ["old5", "old7"])
    again = store.claim(T + 200, 1, "host:100:aa", 300)  # left `sending`: a daemon died holding it
    assert len(again) == 1
    store.cancel("old7", T + 210)
    store.quarantine("not valid JSON: Expecting value", b"{bad", T + 5)
    store.record_depth(T + 100)

which = sys.argv[1]
out = Path(sys.argv[2])
if which == "sqlite":
    path = out.with_suffix(".db")
    path.unlink(missing_ok=True)
    s = open_store(DatabaseConfig(path=path), create=True)
    fill(s)
    s.close()
    db = sqlite3.connect(path)
    out.write_text("\n".join(db.iterdump()) + "\n")
elif which == "sqlite-v0":
    from mailmand.stores.sqlite import V1
    db = sqlite3.connect(":memory:")
    for stmt in V1:
        db.execute(stmt)
    db.execute("INSERT INTO messages (id, status, mail_from, rcpt_to, subject, size, created_at, send_after,"
               " due_at, attempts, updated_at) VALUES ('m1', 'deferred', 'a@x.org', '[\"b@x.org\"]', 's', 10,"
               " 1, 1, 100, 2, 1)")
    db.executemany("INSERT INTO attempts VALUES ('m1', ?, 'r', ?, 'x', 0.1, 'temporary')",
                   [(2.0, 451), (3.0, None), (4.0, 451)])
    db.execute("INSERT INTO messages (id, status, mail_from, rcpt_to, subject, size, created_at, send_after,"
               " due_at, attempts, updated_at, finished_at) VALUES ('m2', 'failed', 'a@x.org', '[\"b@x.org\"]',"
               " 's', 10, 1, 1, 1, 1, 7300, 7300)")
    db.execute("INSERT INTO bodies VALUES ('m1', x'00')")
    db.commit()
    out.write_text("\n".join(db.iterdump()) + "\n")
else:
    admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True)
    name = f"mailmand_make_{which}"
    admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    if which == "pg-v3":
        s = open_store(DatabaseConfig(engine="postgres", dsn=dsn), create=True)
        fill(s)
        s.close()
    elif which == "pg-v1":
        from mailmand.stores.pgschema import V1
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for stmt in V1:
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_version VALUES (1)")
            conn.execute("INSERT INTO messages (id, status, mail_from, rcpt_to, subject, priority, size, created_at,"
                         " send_after, due_at, attempts, fails, claims, last_code, last_error, updated_at)"
                         " VALUES ('m1', 'deferred', 'a@x.org', '[\"b@x.org\"]', 's', 0, 10, %s, %s, %s, 1, 1, 1,"
                         " 451, '451 busy', %s)", (T, T, T + 100, T + 10))
            conn.execute("INSERT INTO bodies VALUES ('m1', '\\x00')")
            conn.execute("INSERT INTO attempts VALUES ('m1', %s, 'r', 451, '451 busy', 0.1, 'temporary', 'h:1:a')",
                         (T + 10,))
            conn.execute("INSERT INTO messages (id, status, mail_from, rcpt_to, subject, priority, size, created_at,"
                         " send_after, due_at, attempts, fails, claims, updated_at, finished_at)"
                         " VALUES ('m2', 'sent', 'a@x.org', '[\"b@x.org\"]', 's', 0, 10, %s, %s, %s, 1, 1, 1, %s, %s)",
                         (T, T, T, T + 20, T + 20))
            conn.execute("INSERT INTO bodies VALUES ('m2', '\\x01')")
            conn.execute("INSERT INTO attempts VALUES ('m2', %s, 'r', 250, '250 ok', 0.1, 'sent', 'h:1:a')", (T + 20,))
    dump = subprocess.run(["pg_dump", "--inserts", "--no-owner", "--no-privileges", "--no-comments", dsn],
                          check=True, capture_output=True, text=True).stdout
    out.write_text(dump)
    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
