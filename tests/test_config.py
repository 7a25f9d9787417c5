"""Configuration: parsing, every error with its message, secrets, lookup, reload, watcher."""

from __future__ import annotations

import os
import shutil
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from watchdog.events import (
    DirModifiedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
)

from mailmand.config import (
    SYSTEM_CONFIG,
    ConfigWatcher,
    find_config_path,
    load,
    parse,
    parse_duration,
    parse_rate,
    parse_size,
    restart_required,
)
from mailmand.errors import ConfigError
from tests.daemonproc import wait_until

REPO = Path(__file__).resolve().parent.parent
RELAY = "email:\n  server:\n    smtp:\n      host: relay.test\n"


def write(tmp_path: Path, body: str, mode: int = 0o600, name: str = "mailmand.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    path.chmod(mode)
    return path


def smtp(tmp_path: Path, lines: str, mode: int = 0o600) -> Path:
    """A file whose email.server.smtp holds `lines` (already at smtp's indentation)."""
    body = "email:\n  server:\n    smtp:\n" + textwrap.indent(textwrap.dedent(lines), " " * 6)
    return write(tmp_path, body, mode)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private home directory: `~` and the default data directory point into it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    return home


def error(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load(path)
    return str(e.value)


# --- values -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1w", 604800),
        ("250ms", 0.25),
        ("1h 30m", 5400),
        (90, 90),
        (1.5, 1.5),
        ("90", 90),
        ("0", 0),
    ],
)
def test_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1 hour", 'expected a duration such as 90s, 5m, 1h30m or 2d, got "1 hour"'),
        ("5y", 'expected a duration such as 90s, 5m, 1h30m or 2d, got "5y"'),
        ("", 'expected a duration such as 90s, 5m, 1h30m or 2d, got ""'),
        ("nan", 'expected a duration such as 90s, 5m, 1h30m or 2d, got "nan"'),
        (True, "expected a duration such as 90s, 5m, 1h30m or 2d, got true"),
        ([1], "expected a duration such as 90s, 5m, 1h30m or 2d, got a list"),
        ("-5m", 'expected a duration that is not negative, got "-5m"'),
        (-3, "expected a duration that is not negative, got -3"),
    ],
)
def test_bad_duration(text: object, reason: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_duration(text)
    assert str(e.value) == reason


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("10/s", 10),
        ("30/m", 0.5),
        ("500/h", 500 / 3600),
        ("1000/d", 1000 / 86400),
        ("100/5m", 100 / 300),
        (4, 4),
    ],
)
def test_rate(text: object, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("fast", 'expected a rate such as 10/s, 30/m, 500/h or 1000/d, got "fast"'),
        ("10/y", 'expected a rate such as 10/s, 30/m, 500/h or 1000/d, got "10/y"'),
        ("0/s", 'expected a rate above zero (omit the key for no limit), got "0/s"'),
        ("-1/s", 'expected a rate above zero (omit the key for no limit), got "-1/s"'),
    ],
)
def test_bad_rate(text: object, reason: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_rate(text)
    assert str(e.value) == reason


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (1000, 1000),
        ("100", 100),
        ("25MiB", 25 * 2**20),
        ("10MB", 10_000_000),
        ("512KiB", 512 * 1024),
        ("1G", 2**30),
    ],
)
def test_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("lots", 'expected a size such as 25MiB, 10MB or 512KiB, got "lots"'),
        ("10XB", 'expected a size such as 25MiB, 10MB or 512KiB, got "10XB"'),
        (-1, "expected a size that is not negative, got -1"),
    ],
)
def test_bad_size(text: object, reason: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_size(text)
    assert str(e.value) == reason


# --- parsing --------------------------------------------------------------------


def test_minimal_file_takes_the_documented_defaults(tmp_path: Path, home: Path) -> None:
    config = load(write(tmp_path, RELAY))
    data = home / ".local" / "share" / "mailmand"
    q = config.queue
    assert (q.engine, q.path, q.url, q.host, q.port, q.db, q.name) == (
        "spool", data / "spool", None, "127.0.0.1", 6379, 0, "mailmand")
    assert (q.password, q.min_free) == (None, 100 * 2**20)  # 4 x max-message-size
    s = config.server
    assert (s.max_fails, s.max_time, s.batch, s.interval, s.lease) == (3, 3600, 50, 5, 300)
    assert (s.backoff, s.retention) == ("auto", 30 * 86400)
    assert (s.max_message_size, s.max_recipients, s.log_level) == (25 * 2**20, 1000, "INFO")
    db = s.database
    assert (db.engine, db.path, db.dsn, db.pool_size) == ("sqlite3", data / "mailmand.db", None, None)
    smtp = s.smtp
    assert (smtp.host, smtp.port, smtp.tls, smtp.verify, smtp.ca_file) == ("relay.test", 25, "none", True, None)
    assert (smtp.connections, smtp.rate, smtp.timeout, smtp.data_timeout) == (4, None, 30, 120)
    assert (smtp.helo, smtp.auth, smtp.pipelining) == (None, None, "auto")
    assert (s.submission, s.metrics, s.notify.bounce, s.notify.copy_to) == (None, None, False, None)
    assert (config.sendmail.domain, config.sendmail.aliases) == (None, {})
    assert config.source == tmp_path / "mailmand.yaml"


def test_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PW_FOR_TEST", "hunter2")
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))  # a real CA: the bundle is loaded
    config = load(
        write(
            tmp_path,
            """\
            email:
              queue:
                default: {engine: redis, path: q, url: "redis://r:6379/1", host: r, port: 6380, db: 2, name: mq}
              server:
                max-fails: 5
                max-time: 2h
                batch: "20"
                interval: 1s
                lease: 90
                backoff: {min: 0, max: 1h}
                retention: 1w
                max-message-size: 10MB
                log-level: debug
                database: {engine: postgres, path: db.sqlite, dsn: "postgresql://u@h/db"}
                smtp:
                  host: relay.test
                  tls: ssl
                  verify: false
                  ca-file: ca.pem
                  connections: 2
                  rate: 500/h
                  timeout: 10s
                  data-timeout: 5m
                  helo: me.test
                  auth: {username: u, password: "${PW_FOR_TEST}"}
            """,
        )
    )
    assert config.queue.engine == "redis"
    assert (config.queue.path, config.queue.url) == (tmp_path / "q", "redis://r:6379/1")
    assert (config.queue.host, config.queue.port, config.queue.db, config.queue.name) == (
        "r",
        6380,
        2,
        "mq",
    )
    server = config.server
    assert (server.max_fails, server.max_time, server.batch, server.interval, server.lease) == (
        5,
        7200,
        20,
        1,
        90,
    )
    assert (server.backoff.min, server.backoff.max, server.retention) == (0, 3600, 604800)
    assert (server.max_message_size, server.log_level) == (10_000_000, "DEBUG")
    assert server.database.engine == "postgres"
    assert server.database.dsn == "postgresql://u@h/db"
    smtp = server.smtp
    assert (smtp.port, smtp.tls, smtp.verify, smtp.ca_file) == (
        465,
        "ssl",
        False,
        tmp_path / "ca.pem",
    )
    assert (smtp.connections, smtp.timeout, smtp.data_timeout, smtp.helo) == (2, 10, 300, "me.test")
    assert smtp.rate == pytest.approx(500 / 3600)
    assert smtp.auth is not None
    assert (smtp.auth.username, smtp.auth.password) == ("u", "hunter2")


def test_port_follows_tls_when_omitted(tmp_path: Path) -> None:
    assert load(smtp(tmp_path, "host: h\ntls: starttls\n")).server.smtp.port == 587
    assert load(smtp(tmp_path, "host: h\ntls: starttls\nport: 25\n")).server.smtp.port == 25


def test_relative_paths_resolve_against_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "secret").write_text("pw\n")
    (tmp_path / "etc" / "secret").chmod(0o600)
    config = load(
        write(
            tmp_path / "etc",
            """\
            email:
              queue: {default: {path: ./var/spool}}
              server:
                database: {path: ../db/mailmand.db}
                smtp: {host: h, auth: {username: u, password-file: secret}}
            """,
        )
    )
    assert config.queue.path == tmp_path / "etc" / "var" / "spool"
    assert config.server.database.path == tmp_path / "etc" / ".." / "db" / "mailmand.db"
    assert config.server.smtp.auth is not None
    assert config.server.smtp.auth.password == "pw"


def test_null_and_empty_values_mean_not_given(tmp_path: Path) -> None:
    config = load(smtp(tmp_path, "host: h\nport:\nhelo: ''\nauth:\n  identity:\n"))
    assert (config.server.smtp.port, config.server.smtp.helo, config.server.smtp.auth) == (
        25,
        None,
        None,
    )


# --- errors, each with its message -------------------------------------------------


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "email:\n  server:\n    smtp: {host: h\n    batch: 3\n")
    message = error(path)
    assert message.startswith(f"{path}: YAML syntax error at line 4, column 10: ")
    assert "flow mapping" in message


def test_yaml_duplicate_key(tmp_path: Path) -> None:
    path = write(tmp_path, RELAY + "      host: other\n")
    assert error(path) == f"{path}: YAML syntax error at line 5, column 7: duplicate key 'host'"


def test_unknown_key(tmp_path: Path) -> None:
    assert error(smtp(tmp_path, "host: h\nprot: 25\n")) == (
        "email.server.smtp.prot: unknown key (known here: host, port, tls, verify, ca-file, "
        "connections, rate, timeout, data-timeout, helo, auth, pipelining, chunking)"
    )


def test_unknown_key_in_the_queue(tmp_path: Path) -> None:
    path = write(tmp_path, RELAY + "  queue:\n    bulk: {engine: spool}\n")
    assert error(path) == "email.queue.bulk: unknown key (known here: default)"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("port: abc", 'email.server.smtp.port: expected an integer 1-65535, got "abc"'),
        ("port: 70000", "email.server.smtp.port: expected an integer 1-65535, got 70000"),
        ("port: 25.5", "email.server.smtp.port: expected an integer 1-65535, got 25.5"),
        ("port: true", "email.server.smtp.port: expected an integer 1-65535, got true"),
        ("verify: 'yes'", 'email.server.smtp.verify: expected true or false, got "yes"'),
        ("verify: 1", "email.server.smtp.verify: expected true or false, got 1"),
        ("helo: [a, b]", "email.server.smtp.helo: expected a string, got a list"),
        ("auth: plain", 'email.server.smtp.auth: expected a mapping, got "plain"'),
    ],
)
def test_wrong_type(tmp_path: Path, lines: str, message: str) -> None:
    assert error(smtp(tmp_path, f"host: h\n{lines}\n")) == message


def test_host_of_wrong_type(tmp_path: Path) -> None:
    assert (
        error(smtp(tmp_path, "host: 25\n")) == "email.server.smtp.host: expected a string, got 25"
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max-fails", "-1", "email.server.max-fails: expected an integer >= 1, got -1"),
        ("batch", "0", "email.server.batch: expected an integer >= 1, got 0"),
        (
            "max-time",
            "-5m",
            'email.server.max-time: expected a duration that is not negative, got "-5m"',
        ),
        (
            "interval",
            "-1",
            "email.server.interval: expected a duration that is not negative, got -1",
        ),
        (
            "max-message-size",
            "-1",
            "email.server.max-message-size: expected a size that is not negative, got -1",
        ),
    ],
)
def test_negative_number(tmp_path: Path, key: str, value: str, message: str) -> None:
    assert error(write(tmp_path, RELAY + f"    {key}: {value}\n")) == message


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "max-time",
            "1 hour",
            'email.server.max-time: expected a duration such as 90s, 5m, 1h30m or 2d, got "1 hour"',
        ),
        ("interval", "0s", 'email.server.interval: expected a duration above zero, got "0s"'),
        (
            "retention",
            "30days",
            'email.server.retention: expected a duration such as 90s, 5m, 1h30m or 2d, got "30days"',
        ),
    ],
)
def test_bad_duration_in_the_file(tmp_path: Path, key: str, value: str, message: str) -> None:
    assert error(write(tmp_path, RELAY + f"    {key}: {value}\n")) == message


def test_bad_rate_in_the_file(tmp_path: Path) -> None:
    assert error(smtp(tmp_path, "host: h\nrate: fast\n")) == (
        'email.server.smtp.rate: expected a rate such as 10/s, 30/m, 500/h or 1000/d, got "fast"'
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            RELAY + "      tls: tls\n",
            'email.server.smtp.tls: expected one of starttls, ssl, none, got "tls"',
        ),
        (
            RELAY + "  queue: {default: {engine: kafka}}\n",
            'email.queue.default.engine: expected one of spool, redis, postgres, got "kafka"',
        ),
        (
            RELAY + "    database: {engine: oracle}\n",
            'email.server.database.engine: expected one of sqlite3, postgres, got "oracle"',
        ),
        (
            RELAY + "    log-level: loud\n",
            'email.server.log-level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got "loud"',
        ),
    ],
)
def test_bad_enum_value(tmp_path: Path, body: str, message: str) -> None:
    assert error(write(tmp_path, body)) == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "email: missing: the file is empty; it must start with the root key email:"),
        (
            "server:\n  smtp: {host: h}\n",
            "email: missing: the file must start with the root key email:",
        ),
        ("- email\n", "email: missing: expected a mapping with the root key email:, got a list"),
    ],
)
def test_missing_email_root(tmp_path: Path, body: str, message: str) -> None:
    assert error(write(tmp_path, body)) == message


@pytest.mark.parametrize(
    "body",
    ["email:\n", "email:\n  server:\n    batch: 5\n", "email:\n  server:\n    smtp: {port: 25}\n"],
)
def test_missing_relay_host(tmp_path: Path, body: str) -> None:
    assert (
        error(write(tmp_path, body))
        == "email.server.smtp.host: required: the relay to deliver through"
    )


def test_backoff_min_above_max(tmp_path: Path) -> None:
    path = write(tmp_path, RELAY + "    backoff: {min: 20m, max: 10m}\n")
    assert error(path) == "email.server.backoff: min (1200s) is more than max (600s)"
    path = write(tmp_path, RELAY + "    backoff: {min: 1h}\n")  # against the default max, 15m
    assert error(path) == "email.server.backoff: min (3600s) is more than max (900s)"


def test_postgres_needs_a_dsn(tmp_path: Path) -> None:
    path = write(tmp_path, RELAY + "    database: {engine: postgres}\n")
    assert error(path) == ("email.server.database.dsn: required when engine is postgres "
                           "(or host, port, username, password, password-file, name)")


def test_ca_file_must_exist(tmp_path: Path) -> None:
    assert error(smtp(tmp_path, "host: h\nca-file: nope.pem\n")) == (
        f"email.server.smtp.ca-file: no such file: {tmp_path / 'nope.pem'}"
    )


def test_top_level_keys_besides_email_are_ignored(tmp_path: Path) -> None:
    warnings: list[str] = []
    load(write(tmp_path, RELAY + "database:\n  host: app-db\n"), warnings=warnings)
    assert warnings == ["database is ignored: mailmand reads only the email: section"]


def test_parse_without_a_file() -> None:
    config = parse({"email": {"server": {"smtp": {"host": "h", "port": "2525"}}}})
    assert (config.server.smtp.relay, config.source) == ("h:2525", None)


# --- ${ENV} interpolation --------------------------------------------------------------


def test_env_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_HOST", "relay.test")
    monkeypatch.setenv("RELAY_PORT", "2525")
    monkeypatch.setenv("EMPTY", "")
    monkeypatch.delenv("UNSET_FOR_TEST", raising=False)
    config = load(
        smtp(
            tmp_path,
            """\
            host: ${RELAY_HOST}
            port: ${RELAY_PORT}
            tls: ${UNSET_FOR_TEST:-starttls}
            helo: mx-${EMPTY:-1}.${EMPTY-x}.$${LITERAL}
            timeout: ${UNSET_FOR_TEST-45s}
            """,
        )
    )
    assert config.server.smtp.relay == "relay.test:2525"
    assert config.server.smtp.tls == "starttls"
    assert config.server.smtp.helo == "mx-1..${LITERAL}"
    assert config.server.smtp.timeout == 45


def test_env_unset_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNSET_FOR_TEST", raising=False)
    assert error(smtp(tmp_path, "host: ${UNSET_FOR_TEST}\n")) == (
        "email.server.smtp.host: environment variable UNSET_FOR_TEST is not set "
        "(write ${UNSET_FOR_TEST:-default} for a default)"
    )


def test_env_bad_reference(tmp_path: Path) -> None:
    assert error(smtp(tmp_path, "host: ${1BAD}\n")) == (
        "email.server.smtp.host: bad variable reference ${1BAD}: expected ${NAME} or ${NAME:-default}"
    )


def test_env_value_is_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_PORT", "smtp")
    assert error(smtp(tmp_path, "host: h\nport: ${RELAY_PORT}\n")) == (
        'email.server.smtp.port: expected an integer 1-65535, got "smtp"'
    )


# --- secrets ----------------------------------------------------------------------------


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "smtp.secret"
    secret.write_text("hunter2 with spaces\n")
    secret.chmod(0o600)
    config = load(smtp(tmp_path, f"host: h\nauth: {{username: u, password-file: {secret}}}\n"))
    assert config.server.smtp.auth is not None
    assert config.server.smtp.auth.password == "hunter2 with spaces"
    assert "hunter2" not in repr(config)


def test_password_file_missing(tmp_path: Path) -> None:
    path = smtp(tmp_path, "host: h\nauth: {username: u, password-file: nope.secret}\n")
    assert error(path) == (
        f"email.server.smtp.auth.password-file: cannot read {tmp_path / 'nope.secret'}: No such file or directory"
    )


def test_password_file_unreadable(tmp_path: Path) -> None:
    (tmp_path / "secret.d").mkdir()
    path = smtp(tmp_path, "host: h\nauth: {username: u, password-file: secret.d}\n")
    assert (
        error(path)
        == f"email.server.smtp.auth.password-file: cannot read {tmp_path / 'secret.d'}: Is a directory"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_password_file_without_permission(tmp_path: Path) -> None:
    (tmp_path / "smtp.secret").write_text("pw")
    (tmp_path / "smtp.secret").chmod(0)
    path = smtp(tmp_path, "host: h\nauth: {username: u, password-file: smtp.secret}\n")
    assert error(path) == (
        f"email.server.smtp.auth.password-file: cannot read {tmp_path / 'smtp.secret'}: Permission denied"
    )


def test_password_file_empty(tmp_path: Path) -> None:
    (tmp_path / "smtp.secret").write_text("\n")
    path = smtp(tmp_path, "host: h\nauth: {username: u, password-file: smtp.secret}\n")
    assert (
        error(path) == f"email.server.smtp.auth.password-file: {tmp_path / 'smtp.secret'} is empty"
    )


def test_password_and_password_file(tmp_path: Path) -> None:
    (tmp_path / "smtp.secret").write_text("pw")
    path = smtp(tmp_path, "host: h\nauth: {username: u, password: x, password-file: smtp.secret}\n")
    assert error(path) == "email.server.smtp.auth: give password or password-file, not both"


def test_password_without_username(tmp_path: Path) -> None:
    path = smtp(tmp_path, "host: h\nauth: {password: hunter2}\n")
    assert error(path) == "email.server.smtp.auth.username: required when a password is given"


def test_username_without_password(tmp_path: Path) -> None:
    path = smtp(tmp_path, "host: h\nauth: {username: u}\n")
    assert (
        error(path)
        == "email.server.smtp.auth.password: required with a username: give password or password-file"
    )


def test_world_readable_file_with_a_literal_password_is_refused(tmp_path: Path) -> None:
    path = smtp(tmp_path, "host: h\nauth: {username: u, password: hunter2}\n", mode=0o644)
    message = error(path)
    assert message == (
        f"email.server.smtp.auth.password: {path} is readable by every user and holds a literal password: "
        f"run `chmod o-r {path}`, or use password-file or ${{ENV_VAR}} instead"
    )
    assert "hunter2" not in message


def test_private_file_with_a_literal_password_loads(tmp_path: Path) -> None:
    config = load(smtp(tmp_path, "host: h\nauth: {username: u, password: hunter2}\n", mode=0o640))
    assert config.server.smtp.auth is not None
    assert config.server.smtp.auth.password == "hunter2"
    assert "hunter2" not in repr(config)


def test_world_readable_file_with_an_env_password_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PW_FOR_TEST", "hunter2")
    config = load(
        smtp(tmp_path, "host: h\nauth: {username: u, password: '${PW_FOR_TEST}'}\n", mode=0o644)
    )
    assert config.server.smtp.auth is not None
    assert config.server.smtp.auth.password == "hunter2"
    # a default written in the file is a literal password all the same
    path = smtp(
        tmp_path,
        "host: h\nauth: {username: u, password: '${NOPE_FOR_TEST:-hunter2}'}\n",
        mode=0o644,
    )
    assert "holds a literal password" in error(path)


def test_secrets_never_shown_in_errors(tmp_path: Path) -> None:
    path = smtp(tmp_path, "host: h\nauth: {username: u, password: 123456}\n")
    assert error(path) == "email.server.smtp.auth.password: expected a string, got an integer"
    path = write(tmp_path, RELAY + "    database: {dsn: [postgresql://u:hunter2@h/db]}\n")
    assert error(path) == "email.server.database.dsn: expected a string, got a list"


def test_bad_reference_in_a_password_is_not_shown(tmp_path: Path) -> None:
    path = smtp(tmp_path, "host: h\nauth: {username: u, password: 'a${hunter 2}'}\n")
    assert error(path) == (
        "email.server.smtp.auth.password: bad variable reference ${...}: expected ${NAME} or ${NAME:-default}"
    )


def test_yaml_error_does_not_quote_the_line(tmp_path: Path) -> None:
    path = smtp(tmp_path, 'host: h\nauth: {username: u, password: "hunter2}\n')
    message = error(path)
    assert "YAML syntax error" in message
    assert "hunter2" not in message


# --- the shipped files ----------------------------------------------------------------------


def test_go_original_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "go-original.yaml"
    shutil.copy(REPO / "config" / "go-original.yaml", path)
    path.chmod(0o600)  # it holds a literal password
    warnings: list[str] = []
    config = load(path, warnings=warnings)
    assert config.queue.engine == "redis"
    assert (config.queue.host, config.queue.port, config.queue.db, config.queue.name) == (
        "dockerhost",
        6379,
        0,
        "myqueue",
    )
    assert (config.server.max_fails, config.server.max_time, config.server.batch) == (3, 3600, 50)
    assert config.server.database.path == Path("/Users/mak/Downloads/sql.db")
    assert config.server.smtp.relay == "smtp.gmail.com:567"
    assert config.server.smtp.auth is not None
    assert (config.server.smtp.auth.username, config.server.smtp.auth.password) == (
        "abc@def.com",
        "ghi",
    )
    assert any(w.startswith("email.buffer is ignored: ") for w in warnings)
    assert any(w.startswith("email.server.smtp.auth.identity is ignored: ") for w in warnings)
    assert any(w.startswith("email.server.smtp.auth.host is ignored: ") for w in warnings)


def test_production_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2")
    config = load(REPO / "config" / "mailmand.yaml")
    assert config.queue.path == Path("/var/spool/mailmand")
    assert config.server.database.path == Path("/var/lib/mailmand/mailmand.db")
    assert config.server.smtp.relay == "smtp.example.com:587"
    assert config.server.smtp.auth is not None
    assert config.server.smtp.auth.password == "hunter2"


def test_development_example_loads() -> None:
    config = load(REPO / "config" / "development.yaml")
    assert config.queue.path == REPO / "config" / "var" / "spool"
    assert config.server.database.path == REPO / "config" / "var" / "mailmand.db"
    assert (config.server.smtp.relay, config.server.smtp.tls) == ("127.0.0.1:2525", "none")


# --- where the file comes from --------------------------------------------------------------


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, no $MAILMAND_CONFIG, a private data directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MAILMAND_CONFIG", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return cwd


def test_lookup_order(tmp_path: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = write(tmp_path, RELAY, name="explicit.yaml")
    from_env = write(tmp_path, RELAY, name="env.yaml")
    write(elsewhere, RELAY)  # ./mailmand.yaml: never read (anyone may have left it there)
    monkeypatch.setenv("MAILMAND_CONFIG", str(from_env))
    assert find_config_path(explicit) == explicit
    assert find_config_path(None) == from_env
    monkeypatch.delenv("MAILMAND_CONFIG")
    if not SYSTEM_CONFIG.exists():
        assert find_config_path(None) is None


def test_named_file_must_exist(
    tmp_path: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as e:
        find_config_path(missing)
    assert str(e.value) == f"configuration file {missing} (from -c) does not exist"
    monkeypatch.setenv("MAILMAND_CONFIG", str(missing))
    with pytest.raises(ConfigError) as e:
        load()
    assert str(e.value) == f"configuration file {missing} (from $MAILMAND_CONFIG) does not exist"


@pytest.mark.skipif(SYSTEM_CONFIG.exists(), reason="this machine has /etc/mailmand/mailmand.yaml")
def test_no_file_gives_the_embedded_defaults(tmp_path: Path, elsewhere: Path) -> None:
    config = load()
    # the same as a file that names only the relay (whose defaults are pinned above and
    # against the documentation below), with the relay on localhost and no source
    assert config == parse({"email": {"server": {"smtp": {"host": "localhost"}}}})
    assert config.source is None
    assert config.server.smtp.relay == "localhost:25"
    assert config.queue.path == tmp_path / "data" / "mailmand" / "spool"
    assert config.server.database.path == tmp_path / "data" / "mailmand" / "mailmand.db"


# --- reload -------------------------------------------------------------------------------


def test_restart_required(tmp_path: Path) -> None:
    old = load(write(tmp_path, RELAY))
    live = load(smtp(tmp_path, "host: other\nport: 2525\nrate: 1/s\n"))
    assert restart_required(old, live) == []
    moved = load(
        write(
            tmp_path,
            RELAY
            + "    database: {path: other.db}\n  queue: {default: {path: other-spool, engine: redis}}\n",
        )
    )
    assert restart_required(old, moved) == [
        "email.queue.default.engine",
        "email.queue.default.path",
        "email.server.database.path",
    ]


# --- the watcher ----------------------------------------------------------------------------


class Calls:
    def __init__(self) -> None:
        self.count = 0
        self.event = threading.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    def wait(self) -> bool:
        seen = self.event.wait(5)
        self.event.clear()
        return seen


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, Calls]]:
    path = write(tmp_path, RELAY)
    calls = Calls()
    watcher = ConfigWatcher(path, calls)
    watcher.start()
    yield path, calls
    watcher.stop()


def test_watcher_sees_a_plain_write(watched: tuple[Path, Calls]) -> None:
    path, calls = watched
    path.write_text(RELAY + "    batch: 5\n")
    assert calls.wait()
    assert load(path).server.batch == 5


def test_watcher_sees_an_atomic_rename(watched: tuple[Path, Calls]) -> None:
    path, calls = watched
    temp = path.with_name(".mailmand.yaml.swp")
    temp.write_text(RELAY + "    batch: 6\n")
    os.replace(temp, path)
    assert calls.wait()
    assert load(path).server.batch == 6


def test_watcher_sees_delete_then_create(watched: tuple[Path, Calls]) -> None:
    path, calls = watched
    path.unlink()
    path.write_text(RELAY + "    batch: 7\n")
    assert calls.wait()
    assert load(path).server.batch == 7


def test_watcher_debounces(tmp_path: Path) -> None:
    """Writes closer together than `delay` make one call, after the last of them."""
    path = write(tmp_path, RELAY)
    seen: list[int] = []
    with ConfigWatcher(path, lambda: seen.append(load(path).server.batch), delay=1.0):
        for batch in range(1, 6):
            path.write_text(RELAY + f"    batch: {batch}\n")
            time.sleep(0.05)  # spaced, so that a call without the quiet period would see 1
        assert wait_until(lambda: 5 in seen)
    # Only a pause of more than `delay` between two writes (a stalled machine) could
    # let a call in early; a watcher that does not wait calls while the file says 1.
    assert 1 not in seen


@pytest.mark.parametrize(
    ("event", "ours"),
    [
        (lambda p: FileModifiedEvent(str(p)), True),
        (lambda p: FileCreatedEvent(str(p)), True),
        (lambda p: FileClosedEvent(str(p)), True),
        (lambda p: FileMovedEvent(str(p.with_name(".mailmand.yaml.swp")), str(p)), True),  # an atomic save
        (lambda p: FileMovedEvent(str(p), str(p.with_name("old.yaml"))), False),  # moved away
        (lambda p: FileDeletedEvent(str(p)), False),  # the recreate that follows counts
        (lambda p: FileModifiedEvent(str(p.with_name("other.yaml"))), False),
        (lambda p: DirModifiedEvent(str(p)), False),  # a directory by that name is not the file
    ],
    ids=["modified", "created", "closed", "moved-here", "moved-away", "deleted", "other-file", "directory"],
)
def test_watcher_acts_on_its_own_file_only(tmp_path: Path, event: Any, ours: bool) -> None:
    path = write(tmp_path, RELAY)
    assert ConfigWatcher(path, lambda: None).concerns(event(path)) is ours


def test_watcher_survives_a_failing_callback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, RELAY)
    calls = Calls()

    def callback() -> None:
        calls()
        raise ConfigError("bad file")

    with ConfigWatcher(path, callback):
        path.write_text("x")
        assert calls.wait()
        path.write_text("y")
        assert calls.wait()
    assert "configuration reload callback failed" in caplog.text


def test_a_ca_file_that_is_not_pem_is_refused(tmp_path):
    from mailmand.config import load
    from mailmand.errors import ConfigError
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    conf = tmp_path / "m.yaml"
    conf.write_text(f"email:\n  server:\n    smtp:\n      host: relay.example.com\n      tls: starttls\n"
                    f"      ca-file: {junk}\n")
    with pytest.raises(ConfigError, match="email.server.smtp.ca-file: not a usable CA bundle"):
        load(conf)


def test_backoff_is_auto_or_min_max(tmp_path: Path) -> None:
    assert load(write(tmp_path, RELAY + "    backoff: auto\n")).server.backoff == "auto"
    b = load(write(tmp_path, RELAY + "    backoff: {min: 1m, max: 10m}\n")).server.backoff
    assert not isinstance(b, str) and (b.min, b.max) == (60, 600)
    assert "email.server.backoff" in error(write(tmp_path, RELAY + "    backoff: sometimes\n"))
