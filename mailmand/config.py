"""Configuration: YAML under `email:`, parsed into frozen dataclasses.

The defaults live here and only here (the dataclass field defaults). The
loader, validation, `${ENV}` interpolation, secrets, the reload diff and the
file watcher are below the dataclasses.
"""

from __future__ import annotations

import logging
import math
import os
import re
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from watchdog.events import FileSystemEvent

import yaml

from mailmand.errors import ConfigError

log = logging.getLogger(__name__)

MiB = 1024 * 1024


def data_dir() -> Path:
    """The user's data directory, where the embedded defaults keep spool and store."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "mailmand"


@dataclass(frozen=True)
class QueueConfig:
    """`email.queue.default`: where producers put messages."""

    engine: str = "spool"  # spool | redis
    path: Path = field(default_factory=lambda: data_dir() / "spool")
    # redis engine (the Go original's keys, or a url)
    url: str | None = field(default=None, repr=False)  # may hold a password
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    name: str = "mailmand"  # the stream's key
    password: str | None = field(default=None, repr=False)  # `password` or `password-file`
    # Producers refuse to enqueue while the spool's disk has less free (Postfix's
    # queue_minfree), so the daemon always has room to drain. Parsed default:
    # 4 × max-message-size.
    min_free: int = 4 * 25 * MiB


@dataclass(frozen=True)
class BackoffConfig:
    min: float = 30.0  # seconds
    max: float = 900.0


@dataclass(frozen=True)
class AuthConfig:
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr
    identity: str | None = None  # Go original; accepted, unused by smtplib


@dataclass(frozen=True)
class SmtpConfig:
    """`email.server.smtp`: the relay and how to talk to it."""

    host: str = "localhost"
    port: int = 25
    tls: str = "none"  # starttls | ssl | none
    verify: bool = True
    ca_file: Path | None = None
    connections: int = 4
    rate: float | None = None  # messages per second; None = no ceiling
    timeout: float = 30.0  # connect and each command
    data_timeout: float = 120.0  # the DATA phase, which carries the body
    helo: str | None = None  # name sent in EHLO; None = hostname.mail_domain()
    auth: AuthConfig | None = None
    pipelining: str = "auto"  # auto (RFC 2920 when the relay offers it) | off

    @property
    def relay(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class DatabaseConfig:
    engine: str = "sqlite3"  # sqlite3 | postgres
    path: Path = field(default_factory=lambda: data_dir() / "mailmand.db")
    dsn: str | None = field(default=None, repr=False)  # postgres; may hold a password
    pool_size: int | None = None  # postgres connections; None = enough for every part of the daemon


@dataclass(frozen=True)
class TlsFilesConfig:
    """A certificate and its key, for a listener's STARTTLS."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class SubmissionConfig:
    """`email.server.submission`: the SMTP listener apps submit to (off when absent)."""

    listen: tuple[str, ...] = ("127.0.0.1:2525",)  # host:port, [v6]:port
    auth: AuthConfig | None = None  # when set, AUTH PLAIN/LOGIN is required
    tls: TlsFilesConfig | None = None  # when set, STARTTLS is offered


@dataclass(frozen=True)
class MetricsConfig:
    """`email.server.metrics`: Prometheus /metrics and /healthz (off when absent)."""

    listen: str = "127.0.0.1:9464"


@dataclass(frozen=True)
class NotifyConfig:
    """`email.server.notify`: failure notices (RFC 3464), off by default."""

    bounce: bool = False  # a DSN to the envelope sender when a message fails or expires
    copy_to: str | None = None  # an operator address that gets a copy of each notice


@dataclass(frozen=True)
class SendmailConfig:
    """`email.sendmail`: how the sendmail shim qualifies bare names."""

    domain: str | None = None  # for bare local parts; None = hostname.mail_domain()
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # msmtp-style; `default` catches all


@dataclass(frozen=True)
class ServerConfig:
    """`email.server`: the daemon's dispatch settings."""

    max_fails: int = 3  # attempts before a message fails
    max_time: float = 3600.0  # seconds past its send time before it expires
    batch: int = 50  # messages claimed per dispatch run
    interval: float = 5.0  # dispatch tick when idle
    lease: float = 300.0  # how long a claim is held before a sweep takes it back
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    retention: float = 30 * 86400.0  # finished mail older than this is purged
    max_message_size: int = 25 * MiB
    max_recipients: int = 1000  # per message; the client, ingest and the listener all check it
    log_level: str = "INFO"
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    submission: SubmissionConfig | None = None
    metrics: MetricsConfig | None = None
    notify: NotifyConfig = field(default_factory=NotifyConfig)


@dataclass(frozen=True)
class Config:
    queue: QueueConfig = field(default_factory=QueueConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    sendmail: SendmailConfig = field(default_factory=SendmailConfig)
    source: Path | None = None  # the file it came from; None = embedded defaults


# --- values: durations, rates, sizes --------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
_DURATION_HINT = "a duration such as 90s, 5m, 1h30m or 2d"


def _show(value: object) -> str:
    """A value as an error message shows it: strings quoted, containers by kind."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return type(value).__name__


def _kind(value: object) -> str:
    """A value's type only, for secrets whose text must not be shown."""
    if isinstance(value, (dict, list)):
        return _show(value)
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    return names.get(type(value), type(value).__name__)


def parse_duration(value: object) -> float:
    """Seconds from `90s`, `5m`, `1h30m`, `2d`, `1w`, `250ms`, or a plain number of seconds."""
    seconds: float
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected {_DURATION_HINT}, got {_show(value)}")  # noqa: TRY004
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            body = text[1:] if text[:1] in "+-" else text
            parts = list(_DURATION_PART.finditer(body))
            if not body or "".join(p.group(0) for p in parts) != body:
                raise ValueError(f"expected {_DURATION_HINT}, got {_show(value)}")
            seconds = sum(float(p.group(1)) * _DURATION_UNITS[p.group(2)] for p in parts)
            if text.startswith("-"):
                seconds = -seconds
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"expected {_DURATION_HINT}, got {_show(value)}")
    if seconds < 0:
        raise ValueError(f"expected a duration that is not negative, got {_show(value)}")
    return seconds


_RATE_HINT = "a rate such as 10/s, 30/m, 500/h or 1000/d"


def parse_rate(value: object) -> float:
    """Messages per second from `10/s`, `30/m`, `500/h`, `1000/d`, `100/5m`, or a plain number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected {_RATE_HINT}, got {_show(value)}")  # noqa: TRY004
    count_text, _, per_text = str(value).replace(" ", "").partition("/")
    if not _NUMBER.fullmatch(count_text):
        raise ValueError(f"expected {_RATE_HINT}, got {_show(value)}")
    try:  # `/s` means one second; `/5m` five minutes
        per = parse_duration(
            ("1" + per_text if per_text[:1].isalpha() else per_text) if per_text else 1
        )
    except ValueError:
        raise ValueError(f"expected {_RATE_HINT}, got {_show(value)}") from None
    count = float(count_text)
    if count <= 0 or per <= 0:
        raise ValueError(
            f"expected a rate above zero (omit the key for no limit), got {_show(value)}"
        )
    return count / per


_SIZE_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgt", start=1):
    # KB, MB are decimal; KiB, MiB binary; a bare K, M binary as in nginx and systemd
    _SIZE_UNITS |= {f"{_p}b": 1000**_i, f"{_p}ib": 1024**_i, f"{_p}i": 1024**_i, _p: 1024**_i}
_SIZE = re.compile(r"([+-]?\d+(?:\.\d+)?)\s*([a-z]*)", re.IGNORECASE)


def parse_size(value: object) -> int:
    """Bytes from an integer, `25MiB`, `10MB`, `512KiB`, `1G`."""
    hint = f"a size such as 25MiB, 10MB or 512KiB, got {_show(value)}"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected {hint}")  # noqa: TRY004
    m = _SIZE.fullmatch(str(value).strip())
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected {hint}")
    size = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if size < 0:
        raise ValueError(f"expected a size that is not negative, got {_show(value)}")
    return round(size)


# --- ${ENV} interpolation ----------------------------------------------------

# `$${` is a literal `${`; inside the braces: NAME, NAME:-default (unset or
# empty), NAME-default (unset), as in the shell.
_REF = re.compile(r"\$\$(?=\{)|\$\{([^}]*)\}")
_REF_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)(.*))?", re.DOTALL)
_SECRET_KEYS = {"password", "dsn", "url"}  # their text is never shown


def _interpolate(text: str, key: str) -> str:
    secret = key.rpartition(".")[2] in _SECRET_KEYS

    def sub(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return "$"
        ref = _REF_BODY.fullmatch(m.group(1))
        if not ref:
            shown = "${...}" if secret else f"${{{m.group(1)}}}"
            raise ConfigError(
                f"bad variable reference {shown}: expected ${{NAME}} or ${{NAME:-default}}", key
            )
        name, op, default = ref.groups()
        value = os.environ.get(name)
        if op is not None and (value is None or (op == ":-" and value == "")):
            return str(default)
        if value is None:
            raise ConfigError(
                f"environment variable {name} is not set (write ${{{name}:-default}} for a default)",
                key,
            )
        return value

    return _REF.sub(sub, text)


def _is_literal(text: str) -> bool:
    """True if the text holds anything but ${VAR} references with no default."""
    return bool(re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-)?\}", "", text))


# --- the schema ---------------------------------------------------------------

_Conv = Callable[[Any, str], Any]

# Keys of the Go original that do nothing in mailmand: accepted, logged as ignored.
_IGNORED = {
    "email.buffer": "it sized the Go original's in-process channel; mailmand has none",
    "email.server.smtp.auth.host": "the relay's name is checked by TLS (verify, ca-file)",
    "email.server.smtp.auth.identity": "smtplib sends no separate authorization identity",
}
_PORT_FOR_TLS = {
    "ssl": 465,
    "starttls": 587,
    "none": 25,
}  # RFC 8314 §7.3, RFC 6409 §3.1, RFC 5321 §4.5.4
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _int(lo: int, hi: int | None = None) -> _Conv:
    want = f"an integer {lo}-{hi}" if hi is not None else f"an integer >= {lo}"

    def conv(value: Any, key: str) -> int:
        n = (
            int(value)
            if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip())
            else value
        )
        if isinstance(n, bool) or not isinstance(n, int) or n < lo or (hi is not None and n > hi):
            raise ConfigError(f"expected {want}, got {_show(value)}", key)
        return n

    return conv


def _duration(allow_zero: bool = False) -> _Conv:
    def conv(value: Any, key: str) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise ConfigError(str(e), key) from None
        if seconds == 0 and not allow_zero:
            raise ConfigError(f"expected a duration above zero, got {_show(value)}", key)
        return seconds

    return conv


def _via(parser: Callable[[object], Any]) -> _Conv:
    def conv(value: Any, key: str) -> Any:
        try:
            return parser(value)
        except ValueError as e:
            raise ConfigError(str(e), key) from None

    return conv


def _choice(*options: str, upper: bool = False) -> _Conv:
    def conv(value: Any, key: str) -> str:
        text = value.upper() if upper and isinstance(value, str) else value
        if text not in options:
            raise ConfigError(f"expected one of {', '.join(options)}, got {_show(value)}", key)
        return str(text)

    return conv


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {_show(value)}", key)
    return value


def _secret(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {_kind(value)}", key)
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, got {_show(value)}", key)
    return value


def _listen(value: Any, key: str) -> str:
    """`host:port`, `[v6]:port`, or a bare port (then on loopback)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"127.0.0.1:{value}"
    text = _str(value, key).strip()
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})", text)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise ConfigError(f"expected host:port (e.g. 127.0.0.1:2525 or [::1]:2525), got {_show(value)}", key)
    return text


def _listen_list(value: Any, key: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError("expected at least one host:port", key)
    return tuple(_listen(v, f"{key}[{i}]" if isinstance(value, list) else key) for i, v in enumerate(items))


def _address(value: Any, key: str) -> str:
    text = _str(value, key).strip()
    if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", text):
        raise ConfigError(f"expected an address such as ops@example.com, got {_show(value)}", key)
    return text


def _domain(value: Any, key: str) -> str:
    text = _str(value, key).strip().rstrip(".").lower()
    label = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
    if not re.fullmatch(rf"{label}(\.{label})*", text) or text == "localhost":
        raise ConfigError(f"expected a domain such as example.com (not localhost), got {_show(value)}", key)
    return text


def _aliases(value: Any, key: str) -> dict[str, tuple[str, ...]]:
    """`{root: ops@example.com, default: [a@x, b@x]}`: a local name to one or more addresses."""
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping such as {{root: ops@example.com}}, got {_show(value)}", key)
    out: dict[str, tuple[str, ...]] = {}
    for name, target in value.items():
        sub = f"{key}.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
            raise ConfigError("expected a local name (letters, digits, . _ + -)", sub)
        targets = target if isinstance(target, list) else [target]
        if not targets:
            raise ConfigError("expected at least one address", sub)
        out[name.lower()] = tuple(_address(_interpolate(t, sub) if isinstance(t, str) else t, sub) for t in targets)
    return out


class _Parser:
    """One parse: knows the file, for relative paths and its permissions."""

    def __init__(self, source: Path | None, producer: bool = False) -> None:
        self.source = source
        self.producer = producer  # the daemon's secrets were dropped: do not require them
        self.base = source.parent if source else Path.cwd()
        self._min_free_given = False

    def section(self, value: Any, path: str, spec: Mapping[str, _Conv]) -> dict[str, Any]:
        """Check a mapping's keys and convert its values; returns field name -> value.

        A null or empty value (`${VAR:-}` included) means "not given": the default applies.
        """
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {_show(value)}", path)
        out: dict[str, Any] = {}
        for name, raw in value.items():
            key = f"{path}.{name}"
            if key in _IGNORED:
                log.warning("%s is ignored: %s", key, _IGNORED[key])
                if name not in spec:
                    continue
            if name not in spec:
                raise ConfigError(f"unknown key (known here: {', '.join(spec)})", key)
            if isinstance(raw, str):
                raw = _interpolate(raw, key)
            if raw is not None and raw != "":
                out[name.replace("-", "_")] = spec[name](raw, key)
        return out

    def path(self, value: Any, key: str) -> Path:
        p = Path(_str(value, key)).expanduser()
        return p if p.is_absolute() else self.base / p

    def file(self, value: Any, key: str) -> Path:
        p = self.path(value, key)
        if not p.is_file():
            raise ConfigError(f"no such file: {p}", key)
        return p

    def ca_file(self, value: Any, key: str) -> Path:
        p = self.file(value, key)
        try:  # load it now, so that a bad bundle is refused here and not when the daemon connects
            ssl.create_default_context(cafile=str(p))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"not a usable CA bundle (PEM): {p}: {exc}", key) from None
        return p

    def email(self, value: Any, path: str) -> Config:
        d = self.section(value, path, {"queue": self.queue, "server": self.server, "sendmail": self.sendmail})
        server = d.get("server") or self.server(
            None, f"{path}.server"
        )  # the relay host is required
        queue = d.get("queue", QueueConfig())
        if not self._min_free_given:
            queue = replace(queue, min_free=4 * server.max_message_size)
        return Config(queue=queue, server=server, sendmail=d.get("sendmail", SendmailConfig()),
                      source=self.source)

    def queue(self, value: Any, path: str) -> QueueConfig:
        queue: QueueConfig = self.section(value, path, {"default": self.queue_default}).get(
            "default", QueueConfig()
        )
        return queue

    def queue_default(self, value: Any, path: str) -> QueueConfig:
        spec = {
            "engine": _choice("spool", "redis"),
            "path": self.path,
            "url": _secret,
            "host": _str,
            "port": _int(1, 65535),
            "db": _int(0),
            "name": _str,
            "password": _secret,
            "password-file": self.path,
            "min-free": _via(parse_size),
        }
        d = self.section(value, path, spec)
        secret_file = d.pop("password_file", None)
        if secret_file and "password" in d:
            raise ConfigError("give password or password-file, not both", path)
        if secret_file:
            d["password"] = self.read_secret(secret_file, f"{path}.password-file")
        elif "password" in d and _is_literal(value["password"]):
            self.check_private(f"{path}.password")
        self._min_free_given = "min_free" in d
        return QueueConfig(**d)

    def server(self, value: Any, path: str) -> ServerConfig:
        spec = {
            "max-fails": _int(1),
            "max-time": _duration(),
            "batch": _int(1),
            "interval": _duration(),
            "lease": _duration(),
            "backoff": self.backoff,
            "retention": _duration(),
            "max-message-size": _via(parse_size),
            "max-recipients": _int(1),
            "log-level": _choice(*LOG_LEVELS, upper=True),
            "database": self.database,
            "smtp": self.smtp,
            "submission": self.submission,
            "metrics": self.metrics,
            "notify": self.notify,
        }
        d = self.section(value, path, spec)
        if "smtp" not in d:
            d["smtp"] = self.smtp(None, f"{path}.smtp")
        return ServerConfig(**d)

    def backoff(self, value: Any, path: str) -> BackoffConfig:
        b = BackoffConfig(
            **self.section(value, path, {"min": _duration(allow_zero=True), "max": _duration()})
        )
        if b.min > b.max:
            raise ConfigError(f"min ({b.min:g}s) is more than max ({b.max:g}s)", path)
        return b

    def database(self, value: Any, path: str) -> DatabaseConfig:
        spec = {"engine": _choice("sqlite3", "postgres"), "path": self.path, "dsn": _secret,
                "pool-size": _int(1)}
        db = DatabaseConfig(**self.section(value, path, spec))
        if db.engine == "postgres" and not db.dsn and not self.producer:
            raise ConfigError("required when engine is postgres", f"{path}.dsn")
        return db

    def smtp(self, value: Any, path: str) -> SmtpConfig:
        spec = {
            "host": _str,
            "port": _int(1, 65535),
            "tls": _choice("starttls", "ssl", "none"),
            "verify": _bool,
            "ca-file": self.ca_file,
            "connections": _int(1),
            "rate": _via(parse_rate),
            "timeout": _duration(),
            "data-timeout": _duration(),
            "helo": _str,
            "auth": self.auth,
            "pipelining": _choice("auto", "off"),
        }
        d = self.section(value, path, spec)
        if "host" not in d:
            raise ConfigError("required: the relay to deliver through", f"{path}.host")
        d.setdefault("port", _PORT_FOR_TLS[d.get("tls", SmtpConfig.tls)])
        return SmtpConfig(**d)

    def submission(self, value: Any, path: str) -> SubmissionConfig | None:
        spec = {"listen": _listen_list, "auth": self.auth, "tls": self.tls_files}
        d = self.section(value, path, spec)
        if "listen" not in d:  # the section alone does not open a port
            return None
        return SubmissionConfig(**d)

    def metrics(self, value: Any, path: str) -> MetricsConfig | None:
        d = self.section(value, path, {"listen": _listen})
        return MetricsConfig(**d) if "listen" in d else None

    def notify(self, value: Any, path: str) -> NotifyConfig:
        return NotifyConfig(**self.section(value, path, {"bounce": _bool, "copy-to": _address}))

    def sendmail(self, value: Any, path: str) -> SendmailConfig:
        return SendmailConfig(**self.section(value, path, {"domain": _domain, "aliases": _aliases}))

    def tls_files(self, value: Any, path: str) -> TlsFilesConfig:
        d = self.section(value, path, {"cert-file": self.file, "key-file": self.file})
        for name in ("cert_file", "key_file"):
            if name not in d:
                raise ConfigError("required: give cert-file and key-file", f"{path}.{name.replace('_', '-')}")
        return TlsFilesConfig(**d)

    def auth(self, value: Any, path: str) -> AuthConfig | None:
        spec = {"username": _str, "password": _secret, "password-file": self.path, "identity": _str}
        d = self.section(value, path, spec)
        secret_file = d.pop("password_file", None)
        if secret_file and "password" in d:
            raise ConfigError("give password or password-file, not both", path)
        if secret_file:
            d["password"] = self.read_secret(secret_file, f"{path}.password-file")
        elif "password" in d and _is_literal(value["password"]):
            self.check_private(f"{path}.password")
        if "username" not in d:
            if "password" in d:
                raise ConfigError("required when a password is given", f"{path}.username")
            return None
        if "password" not in d:
            raise ConfigError(
                "required with a username: give password or password-file", f"{path}.password"
            )
        return AuthConfig(**d)

    def check_private(self, key: str) -> None:
        """Refuse a literal password in a file every user can read."""
        try:
            shared = self.source is not None and self.source.stat().st_mode & 0o004
        except OSError:  # parse() given a source that is not (or no longer) a file
            shared = False
        if shared:
            raise ConfigError(
                f"{self.source} is readable by every user and holds a literal password: "
                f"run `chmod o-r {self.source}`, or use password-file or ${{ENV_VAR}} instead",
                key,
            )

    def read_secret(self, path: Path, key: str) -> str:
        try:
            secret = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror or e}", key) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not UTF-8 text", key) from None
        if not secret:
            raise ConfigError(f"{path} is empty", key)
        if path.stat().st_mode & 0o004:
            log.warning("%s: %s is readable by every user; run `chmod o-r %s`", key, path, path)
        return secret


# --- loading ------------------------------------------------------------------

SYSTEM_CONFIG = Path("/etc/mailmand/mailmand.yaml")


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (PyYAML keeps the last silently)."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse(data: object, source: Path | None = None, *, producer: bool = False) -> Config:
    """Validate YAML-loaded data rooted at `email:`; relative paths resolve next to `source`."""
    if data is None:
        raise ConfigError(
            "missing: the file is empty; it must start with the root key email:", "email"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"missing: expected a mapping with the root key email:, got {_show(data)}", "email"
        )
    if "email" not in data:
        raise ConfigError("missing: the file must start with the root key email:", "email")
    for key in data:
        if key != "email":
            # the Go original shared one file with the rest of the application
            log.warning("%s is ignored: mailmand reads only the email: section", key)
    return _Parser(source, producer).email(data["email"], "email")


def find_config_path(explicit: str | Path | None = None) -> Path | None:
    """`-c PATH`, else $MAILMAND_CONFIG, else ./mailmand.yaml, else /etc/mailmand/, else None."""
    for given, origin in (
        (explicit, "-c"),
        (os.environ.get("MAILMAND_CONFIG"), "$MAILMAND_CONFIG"),
    ):
        if given:  # named explicitly: it must exist
            path = Path(given).expanduser()
            if not path.is_file():
                raise ConfigError(f"configuration file {path} (from {origin}) does not exist")
            return path.absolute()
    for path in (Path("mailmand.yaml"), SYSTEM_CONFIG):
        if path.is_file():
            return path.absolute()
    return None


def _drop_daemon_secrets(data: object) -> None:
    """Producers need the queue, not the relay's credentials: an application
    user who cannot read the SMTP secret must still be able to enqueue."""
    server = data.get("email", {}).get("server") if isinstance(data, dict) else None
    if not isinstance(server, dict):
        return
    if isinstance(server.get("smtp"), dict):
        server["smtp"].pop("auth", None)
    if isinstance(server.get("database"), dict):
        server["database"].pop("dsn", None)
    if isinstance(server.get("submission"), dict):
        server["submission"].pop("auth", None)


def load(path: str | Path | None = None, *, producer: bool = False) -> Config:
    """Find, read and parse the configuration; with no file, the embedded
    defaults. `producer=True` (clients, `send`, `sendmail`) skips the daemon's
    secrets: the AUTH password and the database DSN."""
    found = find_config_path(path)
    if found is None:
        return Config()
    try:
        text = found.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {found}: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        # problem/context only: str(e) quotes the source line, which may hold a password
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        reason = "; ".join(filter(None, (e.context, e.problem)))
        raise ConfigError(f"{found}: YAML syntax error at {where}: {reason}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{found}: YAML syntax error: {type(e).__name__}") from None
    if producer:
        _drop_daemon_secrets(data)
    return parse(data, found, producer=producer)


# --- reloading ----------------------------------------------------------------


def restart_required(old: Config, new: Config) -> list[str]:
    """Key paths that changed but cannot apply to a running daemon (queue, database)."""
    changed = []
    for key, x, y in (
        ("email.server.submission", old.server.submission, new.server.submission),
        ("email.server.metrics.listen", old.server.metrics, new.server.metrics),
    ):
        # listeners bind at start; auth and TLS of the listener apply on reload
        if (x and x.listen) != (y and y.listen):
            changed.append(key + (".listen" if key.endswith("submission") else ""))
    for prefix, a, b in (
        ("email.queue.default", old.queue, new.queue),
        ("email.server.database", old.server.database, new.server.database),
    ):
        for f in fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                changed.append(f"{prefix}.{f.name.replace('_', '-')}")
    return changed


class ConfigWatcher:
    """Calls `callback()`, from its own thread, after the file at `path` changes.

    Watches the parent directory, not the file: editors save by writing a
    temporary file and renaming it over the original, or by deleting and
    recreating it, and a watch on the file itself dies with the old inode.
    Events within `delay` seconds of each other make one call.
    """

    def __init__(
        self, path: str | Path, callback: Callable[[], object], delay: float = 0.1
    ) -> None:
        self.path = Path(path).absolute()
        self.callback = callback
        self.delay = delay
        self._changed = threading.Event()
        self._stopping = False
        from watchdog.observers import Observer  # here: commands that never watch skip its import

        self._observer = Observer()
        self._thread = threading.Thread(
            target=self._run, name="mailmand-config-watcher", daemon=True
        )

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler

        handler = FileSystemEventHandler()
        handler.on_any_event = self._on_event  # type: ignore[method-assign]
        self._observer.schedule(handler, str(self.path.parent), recursive=False)
        self._observer.start()
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._changed.set()
        self._observer.stop()
        self._observer.join()
        self._thread.join()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_event(self, event: FileSystemEvent) -> None:
        # a delete alone is not a change to act on: the recreate that follows is
        if event.is_directory or event.event_type not in ("modified", "created", "moved", "closed"):
            return
        target = event.dest_path if event.event_type == "moved" else event.src_path
        if os.path.abspath(os.fsdecode(target)) == str(self.path):
            self._changed.set()

    def _run(self) -> None:
        while True:
            self._changed.wait()
            while not self._stopping:  # quiet for `delay` before calling
                self._changed.clear()
                if not self._changed.wait(self.delay):
                    break
            if self._stopping:
                return
            try:
                self.callback()
            except Exception:  # the watcher must outlive a failing callback
                log.exception("configuration reload callback failed")
