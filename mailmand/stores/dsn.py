"""PostgreSQL connection strings: checked before anything is created, and
never shown with their password."""

from __future__ import annotations

import re
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


def check(dsn: str | None) -> dict[str, str]:
    """The dsn's parameters, parsed by libpq's own parser; ConfigError naming
    the key (exit 78) for one that does not parse. Nothing is connected."""
    if not dsn:
        raise ConfigError("required when engine is postgres", KEY)
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        # libpq quotes the part it choked on, which may be the password: leave quotes out.
        reason = re.sub(r'"[^"]*"', '"…"', str(exc).splitlines()[0] if str(exc) else "")
        raise ConfigError(f"not a PostgreSQL connection string ({reason}); expected "
                          "postgresql://user@host:5432/database or host=… dbname=… pairs", KEY) from None
    port = str(params.get("port", "5432"))
    if not all(p.strip().isdigit() for p in port.split(",")):
        raise ConfigError("the port is not a number: expected postgresql://user@host:5432/database", KEY)
    return {k: str(v) for k, v in params.items()}


def build(host: str | None, port: int | None, user: str | None, password: str | None, dbname: str | None) -> str:
    """A keyword/value connection string from the Go original's keys, each value
    quoted as libpq reads it (single quotes; backslash before ' and \\)."""
    pairs = (("host", host), ("port", port), ("user", user), ("password", password), ("dbname", dbname))

    def quoted(value: object) -> str:
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{key}={quoted(value)}" for key, value in pairs if value is not None)
