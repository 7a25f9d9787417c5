"""The configuration schema, declared once: typed frozen structures and their defaults.

Each class is one section of the file; its fields are the section's keys
(`max_fails` is read from `max-fails`), in the order error messages list
them. msgspec walks a YAML document into these classes: it checks types,
refuses unknown keys and reports the key path (`loader.py` turns its errors
into mailmand's one-line messages). The defaults live here and only here.

Values written as text in the file (durations, rates, sizes, paths, listen
addresses) have a type of their own below, read by `loader.py`'s `dec_hook`.
To mypy and to the code that reads the configuration they are plain
`float`, `int`, `str` and `Path`; at run time they are subclasses of those,
so that msgspec hands their values to the hook.
"""

import os
from pathlib import Path, PosixPath
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta, field

MiB = 1024 * 1024

Port = Annotated[int, Meta(ge=1, le=65535)]
Positive = Annotated[int, Meta(ge=1)]
NonNegative = Annotated[int, Meta(ge=0)]
TlsMode = Literal["starttls", "ssl", "none"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVELS: tuple[str, ...] = LogLevel.__args__  # type: ignore[attr-defined]

if TYPE_CHECKING:
    Duration = float  # seconds, above zero
    DurationOrZero = float  # seconds, zero allowed
    Rate = float  # messages per second
    Size = int  # bytes
    File = Path  # a path that must name an existing file
    Listen = str  # host:port
    Network = str  # an address or CIDR network, such as 10.0.0.0/8
    Address = str  # local@domain
    Domain = str  # a mail domain, never localhost
    SqlTable = str  # a PostgreSQL table name, optionally schema.table
    Aliases = dict[str, tuple[str, ...]]
    Url = str  # http:// or https://
else:

    class Duration(float):
        """Seconds, from `90s`, `5m`, `1h30m`, `2d` or a number; above zero."""

    class DurationOrZero(float):
        """Seconds, as Duration, where zero is allowed."""

    class Rate(float):
        """Messages per second, from `10/s`, `500/h` or a number."""

    class Size(int):
        """Bytes, from `25MiB`, `10MB` or a number."""

    class File(PosixPath):
        """A path (relative to the configuration file) that must name an existing file."""

    class Listen(str):
        """`host:port`, `[v6]:port`, or a bare port on loopback."""

    class Network(str):
        """An address or a network in CIDR form: `192.0.2.7`, `10.0.0.0/8`, `2001:db8::/32`."""

    class Address(str):
        """An email address such as `ops@example.com`."""

    class Domain(str):
        """A mail domain such as `example.com`, never `localhost`."""

    class SqlTable(str):
        """A PostgreSQL table such as `mailmand_outbox` or `app.mailmand_outbox`."""

    class Aliases(dict):
        """`{root: ops@example.com, default: [a@x, b@x]}`: a local name to its addresses."""

    class Url(str):
        """An `http://` or `https://` URL."""


def data_dir() -> Path:
    """The user's data directory, where the embedded defaults keep spool and store."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "mailmand"


class Section(msgspec.Struct, frozen=True, rename="kebab", forbid_unknown_fields=True):
    """A section of the file: immutable, hyphenated keys, unknown keys refused.

    `secret_fields` are left out of `repr` (and `loader.py` never shows their
    values in an error)."""

    secret_fields: ClassVar[frozenset[str]] = frozenset()

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in self.__struct_fields__
            if name not in self.secret_fields
        )
        return f"{type(self).__name__}({shown})"


class QueueConfig(Section, frozen=True):
    """`email.queue.default`: where producers put messages."""

    secret_fields = frozenset({"url", "password", "dsn"})

    engine: Literal["spool", "redis", "postgres"] = "spool"
    path: Path = field(default_factory=lambda: data_dir() / "spool")
    # redis engine (the Go original's keys, or a url)
    url: str | None = None  # may hold a password
    host: str = "127.0.0.1"
    port: Port = 6379
    db: NonNegative = 0
    name: str = "mailmand"  # the stream's key
    password: str | None = None  # `password` or `password-file` (redis, postgres)
    # postgres engine (the outbox): the app's database, and the table producers insert into
    dsn: str | None = None  # may hold a password
    table: SqlTable = "mailmand_outbox"
    # postgres: connecting, each statement, and each call of the daemon's (as database.timeout)
    timeout: Duration = 30.0
    password_file: Path | None = None
    # Producers refuse to enqueue while the spool's disk has less free (Postfix's
    # queue_minfree), so the daemon always has room to drain. Parsed default:
    # 4 × max-message-size.
    min_free: Size = 4 * 25 * MiB


class Queues(Section, frozen=True):
    """`email.queue`: the Go original's named queues; mailmand has `default`."""

    default: QueueConfig = field(default_factory=QueueConfig)


class BackoffConfig(Section, frozen=True):
    min: DurationOrZero = 30.0  # seconds
    max: Duration = 900.0

    def __post_init__(self) -> None:
        if self.min > self.max:
            raise ValueError(f"min ({self.min:g}s) is more than max ({self.max:g}s)")


class AuthConfig(Section, frozen=True):
    secret_fields = frozenset({"password"})

    username: str | None = None
    password: str | None = None  # never in a repr
    password_file: Path | None = None  # read into `password` by the loader
    identity: str | None = None  # Go original; accepted, unused by smtplib


class SmtpConfig(Section, frozen=True):
    """`email.server.smtp`: the relay and how to talk to it."""

    host: str = "localhost"
    port: Port = 25  # parsed default: 465 with ssl, 587 with starttls, 25 with none
    tls: TlsMode = "none"
    verify: bool = True
    ca_file: File | None = None
    connections: Positive = 4
    rate: Rate | None = None  # messages per second; None = no ceiling
    timeout: Duration = 30.0  # connect and each command
    data_timeout: Duration = 120.0  # the DATA phase, which carries the body
    helo: str | None = None  # name sent in EHLO; None = hostname.mail_domain()
    auth: AuthConfig | None = None
    pipelining: Literal["auto", "off"] = "auto"  # auto: RFC 2920 when the relay offers it
    chunking: Literal["auto", "off"] = "auto"  # auto: RFC 3030 BDAT windows when the relay offers it and pipelining

    @property
    def relay(self) -> str:
        return f"{self.host}:{self.port}"


class QuotaConfig(Section, frozen=True):
    """A relay's `quota`: how much it takes, counted in the store (every daemon, across restarts)."""

    per_day: Positive | None = None  # messages handed to the relay per UTC day


class RelayConfig(SmtpConfig, frozen=True):
    """One of `email.server.relays`: the keys of `smtp`, and where it stands among the others."""

    name: str | None = None  # None: host:port
    priority: NonNegative | None = None  # failover order, lowest first; None: its place in the list
    weight: Positive = 1  # its share among the relays of the same priority
    quota: QuotaConfig | None = None
    senders: tuple[Domain, ...] = ()  # only mail from these domains (and their subdomains); empty: any

    @property
    def label(self) -> str:
        """The relay's name in logs, `status`, metrics and attempts."""
        return self.name or self.relay


def as_relay(smtp: SmtpConfig, **keys: object) -> RelayConfig:
    """The single `smtp:` block as a relay of its own."""
    if isinstance(smtp, RelayConfig):
        return msgspec.structs.replace(smtp, **keys) if keys else smtp
    fields = {name: getattr(smtp, name) for name in SmtpConfig.__struct_fields__}
    return RelayConfig(**{**fields, **keys})  # type: ignore[arg-type]


class DatabaseConfig(Section, frozen=True):
    secret_fields = frozenset({"dsn", "password"})

    engine: Literal["sqlite3", "postgres"] = "sqlite3"  # the Go original's mysql: refused by loader.REFUSED
    path: Path = field(default_factory=lambda: data_dir() / "mailmand.db")
    dsn: str | None = None  # postgres; may hold a password
    pool_size: Positive | None = None  # postgres connections; None = enough for every part of the daemon
    # postgres: connecting, each statement, and each call (a server gone dark behind a proxy too)
    timeout: Duration = 30.0
    # postgres, the Go original's keys: the loader builds `dsn` from them
    host: str | None = None
    port: Port | None = None
    username: str | None = None
    password: str | None = None  # `password` or `password-file`
    password_file: Path | None = None
    name: str | None = None  # the database


class TlsFilesConfig(Section, frozen=True):
    """A certificate and its key, for a listener's STARTTLS."""

    cert_file: File
    key_file: File


class SubmissionConfig(Section, frozen=True):
    """`email.server.submission`: the SMTP listener apps submit to (off when absent)."""

    listen: Annotated[tuple[Listen, ...], Meta(min_length=1)] = ("127.0.0.1:2525",)
    auth: AuthConfig | None = None  # when set, AUTH PLAIN/LOGIN is required
    tls: TlsFilesConfig | None = None  # when set, STARTTLS is offered
    # Who may connect at all (Postfix's mynetworks); others get 554 at connect. None: anyone,
    # and then a listener off loopback must have auth.
    clients: Annotated[tuple[Network, ...], Meta(min_length=1)] | None = None
    max_connections: Positive = 100  # in all; past it, 421 4.7.0 and close
    max_connections_per_client: Positive = 10  # from one address (IPv6: one /64)
    auth_failures: Positive = 3  # on one connection, then it is closed; each also locks the client out, growing
    greeting_timeout: Duration = 30.0  # to send HELO/EHLO after connecting, else 421 and close
    timeout: Duration = 300.0  # idle between commands after that (Postfix's smtpd_timeout)


class MetricsConfig(Section, frozen=True):
    """`email.server.metrics`: Prometheus /metrics and /healthz (off when absent)."""

    listen: Listen = "127.0.0.1:9464"


class WebConfig(Section, frozen=True):
    """`email.server.web`: the HTTP API and the dashboard (off when absent)."""

    secret_fields = frozenset({"token"})

    listen: Listen = "127.0.0.1:8025"
    # `token` or `token-file`: what `Authorization: Bearer` and the dashboard's login take.
    # None: no login, and then only a loopback `listen` is allowed.
    token: str | None = None
    token_file: Path | None = None  # read into `token` by the loader
    max_connections: Positive = 100  # connections and requests at once; past it, 503
    timeout: Duration = 5.0  # an idle keep-alive connection is closed after this


EventTypeName = Literal["queued", "deferred", "sent", "failed", "expired", "cancelled", "suppressed", "held",
                        "released"]


class WebhookConfig(Section, frozen=True):
    """One of `email.server.events.webhooks`: a URL the events are POSTed to, signed."""

    secret_fields = frozenset({"secret"})

    url: Url
    secret: str | None = None  # `secret` or `secret-file`: the HMAC key of Mailmand-Signature
    secret_file: Path | None = None  # read into `secret` by the loader
    types: tuple[EventTypeName, ...] = ()  # empty: every type
    timeout: Duration = 10.0  # connect, and each read or write of a POST
    ca_file: File | None = None  # https: trust this CA bundle instead of the system's

    def __repr__(self) -> str:
        from .values import mask_url  # a password in the URL is as secret as `secret`

        return super().__repr__().replace(repr(self.url), repr(mask_url(self.url)), 1)


class WebhookBackoffConfig(BackoffConfig, frozen=True):
    """`email.server.events.backoff`: as the relay's, with a webhook's own defaults."""

    min: DurationOrZero = 1.0
    max: Duration = 300.0


class EventsConfig(Section, frozen=True):
    """`email.server.events`: the webhooks, and how long an event is retried."""

    max_time: Duration = 86400.0  # an event not acknowledged this long after it happened is given up
    backoff: WebhookBackoffConfig = field(default_factory=WebhookBackoffConfig)
    webhooks: tuple[WebhookConfig, ...] = ()


class NotifyConfig(Section, frozen=True):
    """`email.server.notify`: failure notices (RFC 3464), off by default."""

    bounce: bool = False  # a DSN to the envelope sender when a message fails or expires
    copy_to: Address | None = None  # an operator address that gets a copy of each notice


# A DKIM selector: one or more DNS labels (RFC 6376 §3.1), and never a line break.
Selector = Annotated[str, Meta(pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*"
                                  r"[A-Za-z0-9])?)*$", max_length=253)]


class DkimConfig(Section, frozen=True):
    """One of `email.server.dkim`: a key that signs, at dispatch, mail whose From
    domain is `domain` or under it."""

    secret_fields = frozenset({"key"})

    domain: Domain
    selector: Selector
    key_file: Path | None = None  # read into `key` by the loader, at every load and reload
    key: str | None = None  # the private key itself (`key` or `key-file`); never in a repr
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"


class SuppressionConfig(Section, frozen=True):
    """`email.server.suppression`: recipients the relays say do not exist are not tried again for a while."""

    after: Positive = 1  # permanent "no such user" refusals (5.1.x) before an address is suppressed
    duration: Duration = 30 * 86400.0  # how long it stays suppressed


class SendmailConfig(Section, frozen=True):
    """`email.sendmail`: how the sendmail shim qualifies bare names."""

    domain: Domain | None = None  # for bare local parts; None = hostname.mail_domain()
    aliases: Aliases = field(default_factory=dict)  # msmtp-style; `default` catches all


class ServerConfig(Section, frozen=True):
    """`email.server`: the daemon's dispatch settings."""

    max_fails: Positive = 3  # attempts before a message fails
    max_time: Duration = 3600.0  # seconds past its send time before it expires
    batch: Positive = 50  # messages claimed per dispatch run
    interval: Duration = 5.0  # dispatch tick when idle
    lease: Duration = 300.0  # how long a claim is held before a sweep takes it back
    # `auto`: max-fails attempts spread over max-time, each wait double the one
    # before (policy.auto_offsets); {min, max}: min doubled per attempt, up to max.
    backoff: Literal["auto"] | BackoffConfig = "auto"
    retention: Duration = 30 * 86400.0  # finished mail older than this is purged
    max_message_size: Size = 25 * MiB
    max_recipients: Positive = 1000  # per message; the client, ingest and the listener all check it
    log_level: LogLevel = "INFO"
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)  # with `relays`: the first of them
    relays: tuple[RelayConfig, ...] = ()  # empty: `smtp` alone
    submission: SubmissionConfig | None = None
    metrics: MetricsConfig | None = None
    web: WebConfig | None = None
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    dkim: tuple[DkimConfig, ...] = ()
    suppression: SuppressionConfig = field(default_factory=SuppressionConfig)

    def relay_configs(self) -> tuple[RelayConfig, ...]:
        """Every relay, each with its priority: `relays`, or `smtp` as the one relay."""
        relays = self.relays or (as_relay(self.smtp),)
        return tuple(r if r.priority is not None else as_relay(r, priority=i + 1) for i, r in enumerate(relays))


class EmailSection(Section, frozen=True):
    """`email:`, the file's root key, as the file gives it."""

    queue: Queues = field(default_factory=Queues)
    server: ServerConfig = field(default_factory=ServerConfig)
    sendmail: SendmailConfig = field(default_factory=SendmailConfig)


class Config(msgspec.Struct, frozen=True):
    """The whole configuration: what `load()` returns and every part reads."""

    queue: QueueConfig = field(default_factory=QueueConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    sendmail: SendmailConfig = field(default_factory=SendmailConfig)
    source: Path | None = None  # the file it came from; None = embedded defaults
