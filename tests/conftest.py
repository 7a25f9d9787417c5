"""Shared fixtures: real SQLite files under tmp_path, real SMTP servers (tests/smtpd.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailmand.config import Config, DatabaseConfig, QueueConfig, ServerConfig, SmtpConfig

pytest_plugins = ("tests.smtpd", "tests.postfix", "tests.redisutil", "tests.realusers", "tests.webutil")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _producer_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test has a producer cache of its own (mailmand/config/cache.py), in a
    fresh directory: no test reads another's entries or the user's ~/.cache."""
    where = tmp_path_factory.mktemp("producer-cache")
    monkeypatch.setenv("MAILMAND_CACHE_DIR", str(where))
    return where


@pytest.fixture
def make_config(tmp_path: Path):
    """Build a Config rooted in tmp_path: make_config(smtp=SmtpConfig(...), batch=10, ...)."""

    def make(smtp: SmtpConfig | None = None, **server: object) -> Config:
        return Config(
            queue=QueueConfig(path=tmp_path / "spool"),
            server=ServerConfig(database=DatabaseConfig(path=tmp_path / "mailmand.db"),
                                smtp=smtp or SmtpConfig(host="127.0.0.1", port=9), **server),
        )

    return make


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a YAML config for a relay; returns its path (for subprocess daemons)."""

    def write(port: int, name: str = "mailmand.yaml", extra_server: str = "", smtp_extra: str = "",
              interval: str = "1s") -> Path:
        path = tmp_path / name
        path.write_text(
            "email:\n"
            "  queue:\n    default:\n      engine: spool\n"
            f"      path: {tmp_path / 'spool'}\n"
            "  server:\n"
            f"    database:\n      engine: sqlite3\n      path: {tmp_path / 'mailmand.db'}\n"
            f"    interval: {interval}\n"
            "    backoff: {min: 1s, max: 2s}\n"
            f"{extra_server}"
            f"    smtp:\n      host: 127.0.0.1\n      port: {port}\n      tls: none\n      timeout: 5s\n"
            f"{smtp_extra}"
        )
        return path

    return write


def mailmand_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mailmand", *args]


def run_cli(*args: str, input: bytes | None = b"", env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run the real command line in a child process (stdin: `input`, empty by
    default, so that commands that read a body from stdin never wait on ours)."""
    return subprocess.run(mailmand_cmd(*args), input=input, capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


# -- PostgreSQL: each test gets a database of its own ---------------------------------

POSTGRES_DSN = os.environ.get("MAILMAND_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def require_services() -> bool:
    return os.environ.get("MAILMAND_TEST_REQUIRE_SERVICES") == "1"


def _postgres_admin():
    """A connection to the server's maintenance database, or a skip (a failure in CI)."""
    try:
        import psycopg

        return psycopg.connect(POSTGRES_DSN, autocommit=True, connect_timeout=5)
    except Exception as exc:  # ImportError (no driver) or the server is not there
        reason = f"PostgreSQL not reachable at {POSTGRES_DSN} ({type(exc).__name__}: {exc})"
        if require_services():
            pytest.fail(f"{reason}; MAILMAND_TEST_REQUIRE_SERVICES=1")
        pytest.skip(reason)


def postgres_database_dsn(name: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    return make_conninfo(**{**conninfo_to_dict(POSTGRES_DSN), "dbname": name})


@pytest.fixture
def postgres_dsn():
    """The dsn of a fresh database, dropped after the test."""
    import uuid

    name = f"mailmand_test_{uuid.uuid4().hex[:12]}"
    with _postgres_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_database_dsn(name)
    finally:
        with _postgres_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


STORE_ENGINES = ["sqlite3", "postgres"]


@pytest.fixture(params=STORE_ENGINES)
def database_config(request, tmp_path: Path) -> DatabaseConfig:
    """The store configuration, once per engine: the one fixture the store suites share."""
    if request.param == "postgres":
        return DatabaseConfig(engine="postgres", dsn=request.getfixturevalue("postgres_dsn"))
    return DatabaseConfig(engine=request.param, path=tmp_path / "store" / "mailmand.db")


def write_store_config(path: Path, spool: Path, port: int, database: str, server: str = "",
                       smtp: str = "", interval: str = "1s") -> Path:
    """A daemon's YAML with a given `database:` block (indented under server), for store tests."""
    path.write_text(
        "email:\n"
        f"  queue:\n    default:\n      engine: spool\n      path: {spool}\n"
        "  server:\n"
        f"    database:\n{database}"
        f"    interval: {interval}\n"
        "    backoff: {min: 1s, max: 2s}\n"
        f"{server}"
        f"    smtp:\n      host: 127.0.0.1\n      port: {port}\n      tls: none\n      timeout: 5s\n{smtp}"
    )
    return path


def postgres_block(dsn: str) -> str:
    return f"      engine: postgres\n      dsn: \"{dsn}\"\n"
