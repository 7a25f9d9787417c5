"""A Go original's file: its database keys build the dsn, its mysql engine is
refused with what to use instead, and every problem in a file is reported at
once (one line each), not one per run."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailmand.cli import main
from mailmand.config import load, parse
from mailmand.errors import ConfigError, ConfigErrors
from mailmand.stores import describe, open_store
from mailmand.stores.dsn import check
from tests.conftest import run_cli
from tests.test_config import RELAY, write


def database(tmp_path: Path, block: str, mode: int = 0o600) -> Path:
    return write(tmp_path, RELAY + "    database:\n" + "".join(f"      {line}\n" for line in block.splitlines()),
                 mode)


def test_the_go_keys_build_the_dsn(tmp_path):
    (tmp_path / "db.secret").write_text("it's a \\ secret\n")
    (tmp_path / "db.secret").chmod(0o600)
    cfg = load(database(tmp_path, "engine: postgres\nhost: db.example\nport: 6543\nusername: mail\n"
                                  "password-file: db.secret\nname: mailmand"))
    db = cfg.server.database
    # Each value quoted as libpq reads it: a quote or a backslash in a password stays itself.
    assert check(db.dsn) == {"host": "db.example", "port": "6543", "user": "mail", "password": "it's a \\ secret",
                             "dbname": "mailmand"}
    shown = describe(db) + repr(db)  # neither the password nor its quoted form in the dsn
    assert "it's a" not in shown and "it\\'s a" not in shown and "password=***" in describe(db)
    only_host = load(database(tmp_path, "engine: postgres\nhost: /run/postgresql"))
    assert check(only_host.server.database.dsn) == {"host": "/run/postgresql"}


def test_a_producer_never_reads_the_stores_credentials(tmp_path, monkeypatch):
    path = database(tmp_path, "engine: postgres\nhost: db\nusername: mail\npassword: ${DB_PASSWORD}\nname: m")
    monkeypatch.delenv("DB_PASSWORD", raising=False)
    producer = load(path, producer=True)  # no DB_PASSWORD needed to enqueue
    assert (producer.server.database.dsn, producer.server.database.password) == (None, None)
    with pytest.raises(ConfigError, match="DB_PASSWORD is not set"):
        load(path)


@pytest.mark.parametrize(("block", "message"), [
    ("engine: postgres\ndsn: postgresql://db/m\nhost: db",
     "email.server.database: give dsn, or host, port, username, password, password-file, name; not both "
     "(given: dsn, host)"),
    ("engine: sqlite3\nhost: db\nname: m",
     "email.server.database: host, name: only with engine: postgres (sqlite3 takes path)"),
    ("engine: postgres\npassword: x\npassword-file: y.secret",
     "email.server.database: give password or password-file, not both"),
    ("engine: postgres\nport: 99999\nhost: db", "email.server.database.port: expected an integer 1-65535, got 99999"),
    ("engine: MySQL\nhost: db",
     "email.server.database.engine: mysql (the Go original's) is not supported: mailmand keeps its store in sqlite3 "
     "(one host) or postgres (any number of daemons); set up one of those (`mailmand migrate --from PATH` copies "
     "a mailmand SQLite store into PostgreSQL)"),
])
def test_what_the_go_keys_refuse(tmp_path, block, message):
    (tmp_path / "y.secret").write_text("y\n")
    with pytest.raises(ConfigError) as e:
        load(database(tmp_path, block))
    assert str(e.value) == message


def test_a_literal_database_password_in_a_file_others_read_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="readable by every user and holds a literal password"):
        load(database(tmp_path, "engine: postgres\nhost: db\npassword: s3cret", mode=0o644))


def test_every_problem_in_a_file_is_reported_at_once(tmp_path, capsys):
    path = write(tmp_path, """\
        email:
          queue:
            default: {engine: spool, bogus: 1}
          server:
            batch: 0
            max-time: soon
            database: {engine: mysql, host: db}
            smtp: {port: abc, tls: weird}
        """)
    with pytest.raises(ConfigErrors) as e:
        load(path)
    keys = sorted(x.key_path for x in e.value.errors)
    assert keys == sorted(["email.queue.default.bogus", "email.server.database.engine", "email.server.batch",
                    "email.server.max-time", "email.server.smtp.port", "email.server.smtp.tls",
                    "email.server.smtp.host"])
    assert main(["check-config", "-c", str(path)]) == 78
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 7 and all(line.startswith("mailmand: configuration error: email.") for line in err)
    assert "mailmand: configuration error: email.server.smtp.host: required: the relay to deliver through" in err
    # A rule that spans keys says nothing about a key already refused: one line for the port.
    one = write(tmp_path, RELAY + "      port: abc\n", name="one.yaml")
    with pytest.raises(ConfigError) as single:
        load(one)
    assert type(single.value) is ConfigError
    assert str(single.value) == 'email.server.smtp.port: expected an integer 1-65535, got "abc"'


def test_every_problem_at_once_from_parse(tmp_path):
    with pytest.raises(ConfigErrors) as e:
        parse({"email": {"server": {"smtp": {"host": "h", "port": 0, "verify": "yes"},
                                    "notify": {"bounce": 3}, "interval": "${NOPE_NOT_SET}"}}})
    assert sorted(x.key_path for x in e.value.errors) == ["email.server.interval", "email.server.notify.bounce",
                                                          "email.server.smtp.port", "email.server.smtp.verify"]


def test_a_daemon_reaches_postgres_through_the_go_keys(tmp_path, postgres_dsn):
    """The built dsn opens the store for real (a database of this test's own)."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(postgres_dsn)
    path = write(tmp_path, f"""\
        email:
          queue: {{default: {{path: {tmp_path / 'spool'}}}}}
          server:
            database:
              engine: postgres
              host: {params.get('host', '127.0.0.1')}
              port: {params.get('port', 5432)}
              username: {params.get('user', 'postgres')}
              name: {params['dbname']}
            smtp: {{host: 127.0.0.1, port: 9, timeout: 2s}}
        """)
    store = open_store(load(path).server.database, create=True)  # what the daemon does at its start
    store.close()
    checked = run_cli("check-config", "--connect", "-c", str(path))
    out = checked.stdout.decode()
    assert f"store postgres host='{params.get('host', '127.0.0.1')}'" in out and ": reachable, 0 message(s)" in out
    assert checked.returncode == 69 and checked.stderr.decode() == "mailmand: cannot use: relay\n"  # port 9
