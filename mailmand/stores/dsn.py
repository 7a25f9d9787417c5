"""PostgreSQL connection strings: checked before anything is created, never
shown with their password; and the parameters that bound a connection's
waits (shared by the store and the outbox queue)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError

KEY = "email.server.database.dsn"
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


def mask(dsn: str) -> str:
    """The dsn with any password replaced by ***, for logs and `check-config`."""
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
        except ValueError:
            return "postgresql://***"
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, sep, _ = userinfo.partition(":")
            netloc = f"{user}{':***' if sep else ''}@{hostport}"
        return _URL_PASSWORD.sub(r"\1***", urlunsplit(parts._replace(netloc=netloc)))
    return _KV_PASSWORD.sub(r"\1***", dsn)


def check(dsn: str | None, key: str = KEY) -> dict[str, str]:
    """The dsn's parameters, parsed by libpq's own parser; ConfigError naming
    `key` (exit 78) for one that does not parse. Nothing is connected."""
    if not dsn:
        raise ConfigError("required when engine is postgres", key)
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        # libpq quotes the part it choked on, which may be the password: leave quotes out.
        reason = re.sub(r'"[^"]*"', '"…"', str(exc).splitlines()[0] if str(exc) else "")
        raise ConfigError(f"not a PostgreSQL connection string ({reason}); expected "
                          "postgresql://user@host:5432/database or host=… dbname=… pairs", key) from None
    port = str(params.get("port", "5432"))
    if not all(p.strip().isdigit() for p in port.split(",")):
        raise ConfigError("the port is not a number: expected postgresql://user@host:5432/database", key)
    return {k: str(v) for k, v in params.items()}


def build(host: str | None, port: int | None, user: str | None, password: str | None, dbname: str | None) -> str:
    """A keyword/value connection string from the Go original's keys, each value
    quoted as libpq reads it (single quotes; backslash before ' and \\)."""
    pairs = (("host", host), ("port", port), ("user", user), ("password", password), ("dbname", dbname))

    def quoted(value: object) -> str:
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{key}={quoted(value)}" for key, value in pairs if value is not None)


def connect_kwargs(timeout: float) -> dict[str, Any]:
    """libpq's parameters that bound a connection's waits, from `timeout` (seconds):
    connect_timeout for the whole connection (startup included); TCP keepalives
    that find a dead peer on an idle connection within about `timeout`; and
    tcp_user_timeout for data sent and never acknowledged."""
    whole = max(2, round(timeout))
    return {"connect_timeout": whole, "keepalives": 1, "keepalives_idle": max(1, whole // 3),
            "keepalives_interval": max(1, whole // 6), "keepalives_count": 4,
            "tcp_user_timeout": whole * 1000}


def with_statement_timeout(dsn: str, timeout: float) -> str:
    """The dsn with the server's statement_timeout set (as `options`, after the dsn's own),
    so that the server stops work no client waits for any more."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    options = str(conninfo_to_dict(dsn).get("options") or "")
    return make_conninfo(dsn, options=f"{options} -c statement_timeout={round(timeout * 1000)}".strip())
