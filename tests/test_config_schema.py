"""The schema against its documentation, the wave's new keys, choices in any case,
secrets kept out of reprs and errors, and warnings reported once."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailmand.config import Config, load, parse, parse_size, replace
from mailmand.config.schema import EmailSection
from mailmand.errors import ConfigError, ConfigErrors
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "docs" / "configuration.md"
RELAY = {"email": {"server": {"smtp": {"host": "relay.test"}}}}
_ROW = re.compile(r"^\| `(email\.[a-z0-9.-]+)` \| ([^|]+) \|", re.MULTILINE)
# The Go original's keys: accepted and ignored, so no field holds them.
NOT_A_FIELD = {"email.buffer", "email.server.smtp.auth.host"}


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`~` and the default data directory inside tmp_path, as the docs' `~/.local/share` says."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    return home


def with_key(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of `data` with `key` (a dotted path) set to `value`."""
    out: dict[str, Any] = yaml.safe_load(yaml.safe_dump(data))
    *sections, last = key.split(".")
    at = out
    for name in sections:
        at = at.setdefault(name, {})
    at[last] = value
    return out


def write(tmp_path: Path, data: object, name: str = "mailmand.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else textwrap.dedent(data))
    path.chmod(0o600)
    return path


def error(tmp_path: Path, data: object) -> str:
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, data))
    return str(e.value)


def attribute(config: Config, key: str) -> Any:
    """`email.queue.default.min-free` -> config.queue.min_free; None past a section that is None."""
    parts = key.split(".")[1:]
    if parts[:2] == ["queue", "default"]:
        parts = ["queue", *parts[2:]]
    value: Any = config
    for part in parts:
        if value is None:
            return None
        value = getattr(value, part.replace("-", "_"))
    return value


# --- every default as documented -----------------------------------------------------


def documented(doc: Path) -> list[Any]:
    return [pytest.param(key, default.strip(), id=f"{doc.name}:{key}")
            for key, default in _ROW.findall(doc.read_text()) if key not in NOT_A_FIELD]


def _port_follows_tls(config: Config) -> bool:
    ports = {tls: parse(with_key(RELAY, "email.server.smtp.tls", tls)).server.smtp.port
             for tls in ("ssl", "starttls", "none")}
    return ports == {"ssl": 465, "starttls": 587, "none": 25}


# Defaults that are not one literal value, each with the check of what the docs say.
def _webhook(**given: Any) -> Any:
    """The one webhook of a configuration that gives these keys, or the ConfigError it raises."""
    try:
        return parse(with_key(RELAY, "email.server.events.webhooks", [given])).server.events.webhooks[0]
    except ConfigError as exc:
        return exc


def _dkim(**given: Any) -> Any:
    """The one DKIM entry of a configuration that gives these keys, or the ConfigError it raises."""
    try:
        return parse(with_key(RELAY, "email.server.dkim", [given])).server.dkim[0]
    except ConfigError as exc:
        return exc


HOOK = {"url": "https://app.example/mail", "secret": "s"}


def _relay(**given: Any) -> Any:
    """The one relay of a configuration with `relays: [given]`."""
    return parse(with_key(with_key(RELAY, "email.server.smtp", None), "email.server.relays",
                          [{"host": "relay.example", **given}])).server.relay_configs()[0]


def _as_smtp(field: str) -> Callable[[Config], bool]:
    """A relay's key whose default is the `smtp` key's."""
    return lambda c: getattr(_relay(), field) == getattr(parse(with_key(RELAY, "email.server.smtp.host",
                                                                        "relay.example")).server.smtp, field)


def _backoff(given: dict[str, str], field: str, value: float) -> bool:
    backoff = parse(with_key(RELAY, "email.server.backoff", given)).server.backoff
    return not isinstance(backoff, str) and getattr(backoff, field) == value


ED25519_SEED = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="  # 32 bytes, base64: an ed25519 private key
SIGNER = {"domain": "example.com", "selector": "s1"}
SPECIAL = {
    "email.server.backoff.min": lambda c: _backoff({"max": "1h"}, "min", 30.0),
    "email.server.backoff.max": lambda c: _backoff({"min": "1s"}, "max", 900.0),
    "email.server.relays.host": lambda c: "relays[0].host: required" in str(_raises(lambda: parse(with_key(
        with_key(RELAY, "email.server.smtp", None), "email.server.relays", [{"port": 25}])))),
    "email.server.relays.port": lambda c: (_relay(tls="ssl").port, _relay(tls="starttls").port, _relay().port)
    == (465, 587, 25),
    "email.server.relays.name": lambda c: _relay().label == "relay.example:25" and _relay().name is None,
    "email.server.relays.priority": lambda c: _relay().priority == 1,
    "email.server.relays.quota.per-day": lambda c: _relay().quota is None,
    "email.server.relays.senders": lambda c: _relay().senders == (),
    **{f"email.server.relays.{k}": _as_smtp(k.replace("-", "_")) for k in (
        "tls", "verify", "ca-file", "connections", "rate", "timeout", "data-timeout", "helo", "pipelining",
        "chunking")},
    **{f"email.server.relays.auth.{k}": (lambda c: _relay().auth is None) for k in (
        "username", "password", "password-file", "identity")},
    "email.server.relays.weight": lambda c: _relay().weight == 1,
    "email.server.dkim.domain": lambda c: "dkim[0].domain: required" in str(
        _dkim(selector="s1", key=ED25519_SEED, algorithm="ed25519-sha256")),
    "email.server.dkim.selector": lambda c: "dkim[0].selector: required" in str(
        _dkim(domain="example.com", key=ED25519_SEED, algorithm="ed25519-sha256")),
    "email.server.dkim.key-file": lambda c: "dkim[0].key-file: required" in str(_dkim(**SIGNER)),
    "email.server.dkim.key": lambda c: _dkim(**SIGNER, key=ED25519_SEED, algorithm="ed25519-sha256").key_file is None,
    # Not given, the algorithm is RSA's: an ed25519 key is then refused as no RSA key.
    "email.server.dkim.algorithm": lambda c: "not a usable rsa-sha256 private key" in str(
        _dkim(**SIGNER, key=ED25519_SEED)),
    "email.server.events.webhooks.url": lambda c: "webhooks[0].url: required" in str(_webhook(secret="s")),
    "email.server.events.webhooks.secret": lambda c: "webhooks[0].secret: required" in str(
        _webhook(url=HOOK["url"])),
    "email.server.events.webhooks.secret-file": lambda c: _webhook(**HOOK).secret_file is None,
    "email.server.events.webhooks.types": lambda c: _webhook(**HOOK).types == (),  # () is every type
    "email.server.events.webhooks.timeout": lambda c: _webhook(**HOOK).timeout == 10.0,
    "email.server.events.webhooks.ca-file": lambda c: _webhook(**HOOK).ca_file is None,
    "email.server.smtp.host": lambda c: Config().server.smtp.host == "localhost",
    "email.server.smtp.port": _port_follows_tls,
    "email.queue.default.min-free": lambda c: c.queue.min_free == 4 * c.server.max_message_size
    == parse_size("100MiB"),
}


def _raises(fn: Callable[[], object]) -> Exception | None:
    try:
        fn()
    except Exception as exc:
        return exc
    return None


@pytest.mark.parametrize(("key", "default"), documented(REFERENCE))
def test_documented_default(key: str, default: str) -> None:
    config = parse(RELAY)
    literal = re.fullmatch(r"`([^`]*)`", default)
    if key in SPECIAL:
        assert SPECIAL[key](config), f"{key}: the default is not what the docs say: {default}"
    elif literal:
        # Setting a key to its documented default changes nothing.
        given = parse(with_key(RELAY, key, yaml.safe_load(literal.group(1))))
        assert given == config, f"{key}: the default is not {literal.group(1)}"
    elif default.startswith("none"):
        assert attribute(config, key) in (None, {}), f"{key}: documented as none"
    else:
        pytest.fail(f"{key}: document the default as one `value`, or as none, or check it in SPECIAL")


def _schema_keys(t: Any, prefix: str) -> set[str]:
    keys = set()
    for f in msgspec.structs.fields(t):
        args = [a for a in typing.get_args(f.type) if a is not type(None)] or [f.type]
        structs = [a for a in args if isinstance(a, type) and issubclass(a, msgspec.Struct)]
        for inner in structs:
            keys |= _schema_keys(inner, f"{prefix}.{f.encode_name}")
        if not structs or len(structs) < len(args) and typing.get_origin(f.type) is not tuple:
            keys.add(f"{prefix}.{f.encode_name}")  # a value of its own (`backoff: auto`), or a section
    return keys


def test_every_key_is_documented() -> None:
    documented_keys = {key for key, _ in _ROW.findall(REFERENCE.read_text())}
    schema_keys = _schema_keys(EmailSection, "email")
    assert sorted(schema_keys - documented_keys) == [], "keys of the schema with no row in docs/configuration.md"
    assert sorted(documented_keys - NOT_A_FIELD - schema_keys) == [], "rows in docs/configuration.md for no key"


# --- the wave's new keys: a valid value, and each invalid one ------------------------------


def test_new_keys_valid(tmp_path: Path) -> None:
    import trustme

    cert = trustme.CA().issue_cert("localhost")  # loaded when the configuration is: a real pair
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "redis.secret").write_text("r-pw\n")
    (tmp_path / "redis.secret").chmod(0o600)
    config = load(write(tmp_path, """\
        email:
          queue:
            default: {engine: Redis, password-file: redis.secret, min-free: 1GiB}
          server:
            max-recipients: 10
            database: {engine: SQLite3, pool-size: "5"}
            smtp: {host: h, pipelining: OFF}  # YAML 1.1 reads OFF as false
            submission:
              listen: ["127.0.0.1:2525", 2526, "[::1]:2525"]
              auth: {username: app, password: s3cret}
              tls: {cert-file: cert.pem, key-file: key.pem}
            metrics: {listen: "0.0.0.0:9464"}
            notify: {bounce: true, copy-to: ops@example.com}
          sendmail:
            domain: Example.COM.
            aliases: {Root: ops@example.com, default: [a@example.com, b@example.com]}
        """))
    q, s = config.queue, config.server
    assert (q.engine, q.password, q.min_free) == ("redis", "r-pw", 2**30)
    assert (s.max_recipients, s.database.engine, s.database.pool_size, s.smtp.pipelining) == (10, "sqlite3", 5, "off")
    assert s.submission is not None and s.submission.auth is not None and s.submission.tls is not None
    assert s.submission.listen == ("127.0.0.1:2525", "127.0.0.1:2526", "[::1]:2525")
    assert (s.submission.auth.username, s.submission.auth.password) == ("app", "s3cret")
    assert (s.submission.tls.cert_file, s.submission.tls.key_file) == (tmp_path / "cert.pem", tmp_path / "key.pem")
    assert s.metrics is not None and s.metrics.listen == "0.0.0.0:9464"
    assert (s.notify.bounce, s.notify.copy_to) == (True, "ops@example.com")
    assert config.sendmail.domain == "example.com"
    assert config.sendmail.aliases == {"root": ("ops@example.com",), "default": ("a@example.com", "b@example.com")}


def test_new_keys_single_values(tmp_path: Path) -> None:
    config = parse(with_key(with_key(RELAY, "email.server.submission.listen", 2525),
                            "email.server.metrics.listen", "[::1]:9464"))
    assert config.server.submission is not None and config.server.metrics is not None
    assert (config.server.submission.listen, config.server.metrics.listen) == (("127.0.0.1:2525",), "[::1]:9464")


def test_sections_without_listen_open_nothing() -> None:
    config = parse(with_key(with_key(RELAY, "email.server.submission", {"auth": None}),
                            "email.server.metrics", {}))
    assert (config.server.submission, config.server.metrics) == (None, None)


LISTEN_HINT = "expected host:port (e.g. 127.0.0.1:2525 or [::1]:2525)"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("email.queue.default.min-free", "lots",
         'email.queue.default.min-free: expected a size such as 25MiB, 10MB or 512KiB, got "lots"'),
        ("email.queue.default.min-free", -1,
         "email.queue.default.min-free: expected a size that is not negative, got -1"),
        ("email.queue.default.password", 1234, "email.queue.default.password: expected a string, got an integer"),
        ("email.server.max-recipients", 0, "email.server.max-recipients: expected an integer >= 1, got 0"),
        ("email.server.max-recipients", "many", 'email.server.max-recipients: expected an integer >= 1, got "many"'),
        ("email.server.database.pool-size", 0, "email.server.database.pool-size: expected an integer >= 1, got 0"),
        ("email.server.smtp.pipelining", "yes", 'email.server.smtp.pipelining: expected one of auto, off, got "yes"'),
        ("email.server.smtp.pipelining", True, "email.server.smtp.pipelining: expected one of auto, off, got true"),
        ("email.server.submission.listen", "localhost",
         f'email.server.submission.listen: {LISTEN_HINT}, got "localhost"'),
        ("email.server.submission.listen", ["127.0.0.1:25", "h:99999"],
         f'email.server.submission.listen[1]: {LISTEN_HINT}, got "h:99999"'),
        ("email.server.submission.listen", [],
         "email.server.submission.listen: expected at least one host:port, got a list"),
        ("email.server.submission.listen", True,
         "email.server.submission.listen: expected at least one host:port, got true"),
        ("email.server.submission.listen", {"a": 1},
         "email.server.submission.listen: expected at least one host:port, got a mapping"),
        ("email.server.submission", {"listen": 2525, "tls": {"cert-file": str(REPO / "README.md")}},
         "email.server.submission.tls.key-file: required: give cert-file and key-file"),
        ("email.server.submission", {"listen": 2525, "auth": {"username": "u"}},
         "email.server.submission.auth.password: required with a username: give password or password-file"),
        ("email.server.submission.bind", "x",
         "email.server.submission.bind: unknown key (known here: listen, auth, tls, clients, max-connections, "
         "max-connections-per-client, auth-failures, greeting-timeout, timeout)"),
        ("email.server.metrics.listen", "9464:metrics",
         f'email.server.metrics.listen: {LISTEN_HINT}, got "9464:metrics"'),
        ("email.server.metrics.listen", True, f"email.server.metrics.listen: {LISTEN_HINT}, got true"),
        ("email.server.notify.bounce", "yes", 'email.server.notify.bounce: expected true or false, got "yes"'),
        ("email.server.notify.copy-to", "ops",
         'email.server.notify.copy-to: expected an address such as ops@example.com, got "ops"'),
        ("email.sendmail.domain", "localhost",
         'email.sendmail.domain: expected a domain such as example.com (not localhost), got "localhost"'),
        ("email.sendmail.domain", "a b.com",
         'email.sendmail.domain: expected a domain such as example.com (not localhost), got "a b.com"'),
        ("email.sendmail.aliases", "root",
         'email.sendmail.aliases: expected a mapping such as {root: ops@example.com}, got "root"'),
        ("email.sendmail.aliases", {"root": "ops"},
         'email.sendmail.aliases.root: expected an address such as ops@example.com, got "ops"'),
        ("email.sendmail.aliases", {"root": []}, "email.sendmail.aliases.root: expected at least one address"),
        ("email.sendmail.aliases", {"a b": "x@y"},
         "email.sendmail.aliases.a b: expected a local name (letters, digits, . _ + -)"),
        ("email.sendmail.relay", "x", "email.sendmail.relay: unknown key (known here: domain, aliases)"),
    ],
)
def test_new_key_invalid(tmp_path: Path, key: str, value: Any, message: str) -> None:
    assert error(tmp_path, with_key(RELAY, key, value)) == message


def test_tls_files_must_exist(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("cert")
    data = with_key(RELAY, "email.server.submission", {"listen": 2525, "tls": {"cert-file": "cert.pem",
                                                                               "key-file": "nope.pem"}})
    assert error(tmp_path, data) == f"email.server.submission.tls.key-file: no such file: {tmp_path / 'nope.pem'}"


def test_queue_password_and_password_file(tmp_path: Path) -> None:
    (tmp_path / "redis.secret").write_text("pw")
    data = with_key(RELAY, "email.queue.default", {"password": "x", "password-file": "redis.secret"})
    assert error(tmp_path, data) == "email.queue.default: give password or password-file, not both"


def test_queue_literal_password_in_a_world_readable_file(tmp_path: Path) -> None:
    path = write(tmp_path, with_key(RELAY, "email.queue.default.password", "hunter2"))
    path.chmod(0o644)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value).startswith("email.queue.default.password: ")
    assert "holds a literal password" in str(e.value) and "hunter2" not in str(e.value)


def test_min_free_given_is_kept() -> None:
    data = with_key(with_key(RELAY, "email.queue.default.min-free", "1MiB"), "email.server.max-message-size", "10MiB")
    assert parse(data).queue.min_free == 2**20
    assert parse(with_key(RELAY, "email.server.max-message-size", "10MiB")).queue.min_free == 40 * 2**20


# --- choices take any case ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "given", "stored"),
    [
        ("email.server.smtp.tls", "STARTTLS", "starttls"),
        ("email.server.smtp.tls", "Ssl", "ssl"),
        ("email.queue.default.engine", "Redis", "redis"),
        ("email.server.database.engine", "POSTGRES", "postgres"),
        ("email.server.smtp.pipelining", "AUTO", "auto"),
        ("email.server.log-level", "debug", "DEBUG"),
        ("email.server.log-level", " Warning ", "WARNING"),
    ],
)
def test_choices_take_any_case(key: str, given: str, stored: str) -> None:
    data = with_key(with_key(RELAY, key, given), "email.server.database.dsn", "postgresql://h/db")
    assert attribute(parse(data), key) == stored


def test_off_unquoted_is_off(tmp_path: Path) -> None:
    # YAML 1.1 reads `off` as false; the key means the word
    path = write(tmp_path, "email:\n  server:\n    smtp: {host: h, pipelining: off}\n")
    assert load(path).server.smtp.pipelining == "off"


def test_a_port_follows_tls_given_in_capitals() -> None:
    assert parse(with_key(RELAY, "email.server.smtp.tls", "STARTTLS")).server.smtp.port == 587


# --- YAML traps ----------------------------------------------------------------------------


def test_unquoted_variable_in_a_flow_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "email:\n  server:\n    smtp: {host: h, auth: {username: u, password: ${SMTP_PASSWORD}}}\n")
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value) == (f'{path}: YAML syntax error at line 3, column 51: ${{SMTP_PASSWORD}} inside {{ }} '
                            f'or [ ] must be quoted: write "${{SMTP_PASSWORD}}"')


def test_unquoted_variable_in_a_flow_list(tmp_path: Path) -> None:
    path = write(tmp_path, "email:\n  server:\n    smtp: {host: h}\n    submission: {listen: [${LISTEN}]}\n")
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value).endswith(': ${LISTEN} inside { } or [ ] must be quoted: write "${LISTEN}"')


def test_quoted_variable_in_a_flow_mapping_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2")
    line = 'smtp: {host: h, auth: {username: u, password: "${SMTP_PASSWORD}"}}'
    path = write(tmp_path, f"email:\n  server:\n    {line}\n")
    auth = load(path).server.smtp.auth
    assert auth is not None and auth.password == "hunter2"


# --- secrets stay out of reprs and errors -------------------------------------------------


def test_secrets_are_not_in_a_repr(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("hunter5")
    (tmp_path / "pw").chmod(0o600)
    data = with_key(RELAY, "email.queue.default", {"url": "redis://:hunter1@r:6379/0", "password": "hunter2"})
    data = with_key(data, "email.server.database", {"engine": "postgres", "dsn": "postgresql://u:hunter3@h/db"})
    data = with_key(data, "email.server.smtp.auth", {"username": "u", "password": "hunter4"})
    data = with_key(data, "email.server.submission", {"listen": 2525, "auth": {"username": "a", "password-file": "pw"}})
    config = load(write(tmp_path, data))
    assert config.server.database.dsn == "postgresql://u:hunter3@h/db"  # read, and kept
    for shown in (repr(config), str(config), repr(config.queue), repr(config.server.database),
                  repr(config.server.smtp), repr(config.server.submission)):
        assert not re.search(r"hunter\d", shown), shown
    assert "engine='postgres'" in repr(config.server.database)  # the rest is shown


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("email.server.database.dsn", ["postgresql://u:hunter2@h/db"],
         "email.server.database.dsn: expected a string, got a list"),
        ("email.server.database.dsn", "postgresql://u:${hunter2 x}@h",
         "email.server.database.dsn: bad variable reference "
         "${...}: expected ${NAME} or ${NAME:-default}"),
        ("email.queue.default.url", 6379, "email.queue.default.url: expected a string, got an integer"),
    ],
)
def test_secrets_are_not_in_an_error(tmp_path: Path, key: str, value: Any, message: str) -> None:
    assert error(tmp_path, with_key(RELAY, key, value)) == message


def test_a_dsn_is_not_in_a_yaml_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'email:\n  server:\n    database: {dsn: "postgresql://u:hunter2@h/db}\n')
    with pytest.raises(ConfigError) as e:
        load(path)
    assert "YAML syntax error" in str(e.value) and "hunter2" not in str(e.value)


def test_replace_checks_nothing_but_keeps_the_value_frozen() -> None:
    config = parse(RELAY)
    changed = replace(config.server, batch=7)
    assert (changed.batch, config.server.batch) == (7, 50)
    with pytest.raises(AttributeError):
        changed.batch = 8  # type: ignore[misc]


# --- warnings: once, where an operator reads them ------------------------------------------------


@pytest.fixture
def go_original(tmp_path: Path) -> Iterator[Path]:
    """The Go original's example with only its Redis host changed (and a stream key of this test's own)."""
    import uuid

    from tests.redisutil import require_redis

    redis = require_redis()
    key = f"mailmand-test-{uuid.uuid4().hex[:12]}"
    path = tmp_path / "go-original.yaml"
    shutil.copy(REPO / "config" / "go-original.yaml", path)
    path.write_text(path.read_text().replace("dockerhost", "127.0.0.1").replace("myqueue", key))
    path.chmod(0o600)
    yield path
    redis.delete(key)  # type: ignore[attr-defined]


IGNORED = ("email.buffer is ignored", "email.server.smtp.auth.identity is ignored",
           "email.server.smtp.auth.host is ignored")


def test_check_config_reports_ignored_keys_once(go_original: Path) -> None:
    done = run_cli("check-config", "-c", str(go_original))
    assert done.returncode == 0, done.stderr
    stderr = done.stderr.decode()
    assert [stderr.count(w) for w in IGNORED] == [1, 1, 1], stderr


def test_producers_do_not_report_ignored_keys(go_original: Path) -> None:
    done = run_cli("send", "-c", str(go_original), "--from", "a@example.com", "--to", "b@example.com",
                   "--subject", "s", "--text", "t")
    assert done.returncode == 0, done.stderr
    assert "ignored" not in done.stderr.decode()
    done = run_cli("sendmail", "-t", input=b"To: b@example.com\nSubject: s\n\nbody\n",
                   env={"MAILMAND_CONFIG": str(go_original)})
    assert done.returncode == 0, done.stderr
    assert "ignored" not in done.stderr.decode()


def test_load_without_a_list_keeps_warnings_at_debug(go_original: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG", logger="mailmand.config"):
        load(go_original)
    assert {r.levelname for r in caplog.records if "is ignored" in r.getMessage()} == {"DEBUG"}


# --- anything YAML can give is a Config or one ConfigError --------------------------------------

_NAMES = sorted({part for key in _ROW.findall(REFERENCE.read_text()) for part in key[0].split(".")} | {"x", "a\nb"})
_LEAVES = st.none() | st.booleans() | st.integers(-2, 70000) | st.floats(allow_nan=True) | st.sampled_from(
    ["", "5m", "10/s", "25MiB", "127.0.0.1:2525", "a@b.c", "STARTTLS", "off", "${NOPE}", "${HOME}", "0", "-1", "x",
     "a\nb"])


def _nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return inner | st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(_NAMES) | st.integers(0, 2), inner, max_size=4)


_DATA = _nest(_nest(_LEAVES))  # two levels below each root the test gives


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(email=_DATA, server=_DATA, smtp=_DATA)
def test_any_data_gives_a_config_or_config_errors_one_a_line(email: Any, server: Any, smtp: Any) -> None:
    for data in ({"email": email}, {"email": {"server": server}}, {"email": {"server": {"smtp": smtp}}},
                 {"email": {"server": {"smtp": {"host": "h", **(smtp if isinstance(smtp, dict) else {})}}}}):
        try:
            config = parse(data, producer=True)
        except ConfigError as e:  # one problem a line, each naming its key
            errors = e.errors if isinstance(e, ConfigErrors) else [e]
            assert all("\n" not in str(x) and str(x).startswith("email") for x in errors), str(e)
            assert str(e).splitlines() == [str(x) for x in errors]
        else:
            assert isinstance(config, Config)


def test_importing_the_configuration_is_cheap() -> None:
    """No PyYAML until a file is read, no ssl until a CA file is checked, no watchdog until a watcher."""
    code = ("import sys, mailmand.config as c; c.Config(); c.parse_duration('5m'); "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(done.stdout.split())
    assert loaded & {"yaml", "ssl", "_ssl", "watchdog", "dataclasses", "pydantic"} == set(), loaded
    assert "msgspec" in loaded


def test_the_c_loader_reads_the_file_when_built(tmp_path: Path) -> None:
    from mailmand.config.loader import _loader

    if not yaml.__with_libyaml__:
        pytest.skip("this PyYAML was built without libyaml")
    assert issubclass(_loader(), yaml.CSafeLoader)


def test_a_value_or_key_with_a_newline_gives_one_line(tmp_path: Path) -> None:
    assert error(tmp_path, with_key(RELAY, "email.server.smtp.port", "25\nx")) == (
        'email.server.smtp.port: expected an integer 1-65535, got "25\\nx"')
    assert error(tmp_path, with_key(RELAY, "email.server.smtp.p\nrt", 1)).startswith(
        "email.server.smtp.p\\nrt: unknown key (known here: host, ")


def test_producers_do_not_load_the_relays_ca_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    path = write(tmp_path, with_key(RELAY, "email.server.smtp.ca-file", "ca.pem"))
    code = (f"import sys, mailmand.config as c; c.load({str(path)!r}, producer=True); "
            "print('ssl' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr
    with pytest.raises(ConfigError, match="^email.server.smtp.ca-file: not a usable CA bundle"):
        load(path)  # the daemon's view: refused
