"""Reading the file: YAML, `${ENV}`, secrets, the schema's errors in one line, the reload diff.

A parse runs in four steps:
1. YAML to plain data (PyYAML's C loader where built, a duplicate key refused);
2. `prepare`: `${ENV}` filled in, null and empty values dropped ("not given"),
   the Go original's ignored keys noted, literal passwords noted;
3. msgspec converts the data into `schema.EmailSection`: types, ranges, unknown
   keys, key paths; `explain.py` turns its errors into `key.path: expected ..., got ...`;
4. `finish`: the rules that span keys (AUTH needs both halves, the port follows
   `tls`, a world-readable file must not hold a literal password, ...).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import msgspec
from msgspec.structs import replace

from mailmand.errors import ConfigError, ConfigErrors

from .explain import drop, explain, make_canonical
from .locate import find_config_path
from .schema import (
    Address,
    Aliases,
    AuthConfig,
    Config,
    DatabaseConfig,
    Domain,
    Duration,
    DurationOrZero,
    EmailSection,
    File,
    Listen,
    Network,
    Rate,
    RelayConfig,
    Size,
    SmtpConfig,
    SqlTable,
    Url,
    as_relay,
)
from .values import (
    SECRET_KEYS,
    parse_address,
    parse_aliases,
    parse_domain,
    parse_duration,
    parse_listen,
    parse_network,
    parse_rate,
    parse_size,
    parse_sql_table,
    parse_url,
    printable,
    show,
)

if TYPE_CHECKING:
    import ssl

    import yaml

    from .schema import DkimConfig, SubmissionConfig, WebConfig, WebhookConfig

log = logging.getLogger(__name__)

SmtpT = TypeVar("SmtpT", bound=SmtpConfig)

# Keys of the Go original that do nothing in mailmand: accepted, reported as ignored.
IGNORED = {
    "email.buffer": "it sized the Go original's in-process channel; mailmand has none",
    "email.server.smtp.auth.host": "the relay's name is checked by TLS (verify, ca-file)",
    "email.server.smtp.auth.identity": "smtplib sends no separate authorization identity",
}
# Values of the Go original that mailmand refuses, with what to use instead (one
# message, whatever else the file holds).
REFUSED = {
    ("email.server.database.engine", "mysql"): (
        "mysql (the Go original's) is not supported: mailmand keeps its store in sqlite3 (one host) or postgres "
        "(any number of daemons); set up one of those (`mailmand migrate --from PATH` copies a mailmand "
        "SQLite store into PostgreSQL)"),
}
# The Go original's database keys, from which the postgres dsn is built.
GO_DATABASE_KEYS = ("host", "port", "username", "password", "password-file", "name")
MIN_TOKEN = 16  # characters of the web token: a short one could be guessed over the network
# RFC 8314 §7.3, RFC 6409 §3.1, RFC 5321 §4.5.4
PORT_FOR_TLS = {"ssl": 465, "starttls": 587, "none": 25}


# --- ${ENV} interpolation ----------------------------------------------------

# `$${` is a literal `${`; inside the braces: NAME, NAME:-default (unset or
# empty), NAME-default (unset), as in the shell.
_REF = re.compile(r"\$\$(?=\{)|\$\{([^}]*)\}")
_REF_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)(.*))?", re.DOTALL)


def _is_secret(key: str) -> bool:
    return key.rpartition(".")[2] in SECRET_KEYS


def interpolate(text: str, key: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return "$"
        ref = _REF_BODY.fullmatch(m.group(1))
        if not ref:
            shown = "${...}" if _is_secret(key) else f"${{{m.group(1)}}}"
            raise ConfigError(f"bad variable reference {shown}: expected ${{NAME}} or ${{NAME:-default}}", key)
        name, op, default = ref.groups()
        value = os.environ.get(name)
        if op is not None and (value is None or (op == ":-" and value == "")):
            return str(default)
        if value is None:
            raise ConfigError(
                f"environment variable {name} is not set (write ${{{name}:-default}} for a default)", key
            )
        return value

    return _REF.sub(sub, text)


def _is_literal(text: str) -> bool:
    """True if the text holds anything but ${VAR} references with no default."""
    return bool(re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-)?\}", "", text))


# --- one parse -------------------------------------------------------------------


class Parse:
    """One parse: knows the file (for relative paths and its permissions) and
    collects the warnings (`warnings` given: appended there; else logged at DEBUG)."""

    def __init__(self, source: Path | None, producer: bool, warnings: list[str] | None) -> None:
        self.source = source
        self.base = source.parent if source else Path.cwd()
        self.producer = producer  # the daemon's secrets were dropped: do not require them
        self.warnings = warnings
        self.literal: set[str] = set()  # key paths of passwords written in the file itself
        self.errors: list[ConfigError] = []  # every problem found so far: reported together

    def failed(self) -> None:
        """Raise what was found: one error as it is, several as one ConfigErrors. A rule
        that spans keys says nothing about a key already refused (or one inside it)."""
        kept: list[ConfigError] = []
        for exc in self.errors:
            key = exc.key_path or ""
            if not any(key == (k := other.key_path or "") or key.startswith(k + ".") or k.startswith(key + ".")
                       for other in kept):
                kept.append(exc)
        if len(kept) == 1:
            raise kept[0]
        if kept:
            raise ConfigErrors(kept)

    def attempt(self, fn: Any, fallback: Any) -> Any:
        """fn(), or `fallback` with its ConfigError kept for the report."""
        try:
            return fn()
        except ConfigError as exc:
            self.errors.append(exc)
            return fallback

    def warn(self, message: str) -> None:
        if self.warnings is None:
            log.debug("%s", message)
        else:
            self.warnings.append(message)

    # step 2
    def prepare(self, value: Any, key: str) -> Any:
        """`${ENV}` filled in, null and empty values dropped: a copy of `value`."""
        if isinstance(value, str):
            if key.rpartition(".")[2] in ("password", "secret", "key", "token") and _is_literal(value):
                self.literal.add(key)
            return interpolate(value, key)
        if isinstance(value, list):
            return [self.prepare(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, dict):
            return value
        out = {}
        for name, raw in value.items():
            sub = f"{key}.{printable(str(name))}"
            if sub in IGNORED:
                self.warn(f"{sub} is ignored: {IGNORED[sub]}")
                if not sub.endswith(".identity"):  # a field of AuthConfig; the others are not
                    continue
            try:
                given = self.prepare(raw, sub)
            except ConfigError as exc:  # reported with the others; the key is left out meanwhile
                self.errors.append(exc)
                continue
            refused = REFUSED.get((sub, given.lower())) if isinstance(given, str) else None
            if refused:  # reported with the others; the key is left out meanwhile
                self.errors.append(ConfigError(refused, sub))
            elif given is not None and given != "":
                out[name] = given
        return out

    # step 3
    def read(self, t: type, value: Any) -> Any:
        """msgspec's dec_hook: the schema's own value types, from the file's text."""
        if t is Duration or t is DurationOrZero:
            seconds = parse_duration(value)
            if seconds == 0 and t is Duration:
                raise ValueError(f"expected a duration above zero, got {show(value)}")
            return t(seconds)
        if t is Path or t is File:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {show(value)}")  # noqa: TRY004
            path = Path(value).expanduser()
            path = path if path.is_absolute() else self.base / path
            if t is File:
                if not path.is_file():
                    raise ValueError(f"no such file: {path}")
                return File(path)
            return path
        readers = {Rate: parse_rate, Size: parse_size, Listen: parse_listen, Address: parse_address,
                   Domain: parse_domain, Aliases: parse_aliases, Network: parse_network,
                   SqlTable: parse_sql_table, Url: parse_url}
        if t in readers:
            return t(readers[t](value))
        raise NotImplementedError(t)  # msgspec reports a type it cannot decode

    def decode(self, data: dict[str, Any]) -> EmailSection:
        """The file's data as the schema's structures. Each round makes one lenient
        value canonical, or notes what is wrong and takes it out, so that one
        reading reports every key that is wrong (and what it reports stands alone:
        nothing is guessed from a value already refused)."""
        wrapped: list[list[str | int]] = []
        for _ in range(1000):
            try:
                return msgspec.convert(data, EmailSection, dec_hook=self.read)  # finish() raises what was found
            except msgspec.ValidationError as exc:
                if make_canonical(exc, data, wrapped):
                    continue
                self.errors.append(explain(exc, data, wrapped))
                if not drop(exc, data):
                    self.failed()
        raise ConfigError("too many values to read", "email")

    # step 4
    def finish(self, email: EmailSection, data: dict[str, Any]) -> Config:
        """The rules that span keys; each rule's error is kept and the next rule
        checked, so that the file's problems are reported together."""
        queue = self.attempt(lambda: self.secret_of(email.queue.default, "email.queue.default"),
                             email.queue.default)
        server = email.server
        given = data.get("server", {})
        smtp_given = given.get("smtp", {})
        relays_given = given.get("relays") or []
        if relays_given and "smtp" in given:
            self.errors.append(ConfigError("give smtp (one relay) or relays, not both", "email.server.relays"))
        elif not relays_given and "host" not in smtp_given:
            self.errors.append(ConfigError("required: the relay to deliver through", "email.server.smtp.host"))
        smtp = self.attempt(lambda: self.relay(server.smtp, smtp_given, "email.server.smtp"), server.smtp)
        relays = tuple(self.attempt(lambda i=i, r=r: self.relay(r, relays_given[i], f"email.server.relays[{i}]"), r)
                       for i, r in enumerate(server.relays))
        self.attempt(lambda: check_relays(relays), None)
        if relays:
            smtp = as_relay(relays[0])  # what names "the relay" where one is meant (check-config, EHLO)
        database = self.attempt(lambda: self.database(server.database, given.get("database", {})), server.database)
        if queue.engine == "postgres" and not queue.dsn:  # producers too: they insert into it
            self.errors.append(ConfigError("required when engine is postgres (the database that holds the outbox "
                                           "table)", "email.queue.default.dsn"))
        submission = server.submission
        if submission is not None:  # the section alone does not open a port
            submission = None if "listen" not in given.get("submission", {}) else replace(
                submission, auth=self.attempt(lambda: self.auth(submission.auth, "email.server.submission.auth"),
                                              None))
        if submission is not None and not self.producer:  # refused here, before the daemon makes anything
            self.attempt(lambda: submission_tls(submission), None)
            self.attempt(lambda: open_relay(submission), None)
        # The keys are read at every load and reload (a key rotated on disk takes effect with the
        # reload), by the daemon only: a producer never needs them, nor may it read them.
        dkim = () if self.producer else tuple(
            self.attempt(lambda e=entry, k=f"email.server.dkim[{i}]": self.dkim(e, k), entry)
            for i, entry in enumerate(server.dkim))
        self.failed()
        metrics = server.metrics if "listen" in given.get("metrics", {}) else None
        web = self.web(server.web, given.get("web", {}))
        events = replace(server.events, webhooks=tuple(
            self.webhook(hook, f"email.server.events.webhooks[{i}]") for i, hook in enumerate(server.events.webhooks)))
        seen: set[str] = set()
        for i, hook in enumerate(events.webhooks):
            if hook.url in seen:
                raise ConfigError("the same URL twice: give each webhook once, with every type it takes",
                                  f"email.server.events.webhooks[{i}].url")
            seen.add(hook.url)
        server = replace(server, smtp=smtp, relays=relays, submission=submission, metrics=metrics,
                         database=database, events=events, dkim=dkim, web=web)
        if "min-free" not in data.get("queue", {}).get("default", {}):
            queue = replace(queue, min_free=4 * server.max_message_size)
        return Config(queue=queue, server=server, sendmail=email.sendmail, source=self.source)

    def relay(self, smtp: SmtpT, given: dict[str, Any], key: str) -> SmtpT:
        """A relay's keys: the port that goes with `tls`, AUTH, the CA file."""
        if "host" not in given and key != "email.server.smtp":
            raise ConfigError("required: the relay's host", f"{key}.host")
        if "port" not in given:
            smtp = replace(smtp, port=PORT_FOR_TLS[smtp.tls])
        smtp = replace(smtp, auth=self.attempt(lambda: self.auth(smtp.auth, f"{key}.auth"), None))
        if smtp.ca_file is not None and not self.producer:  # the daemon connects to the relay; producers never
            self.attempt(lambda: self.check_ca_file(smtp.ca_file, f"{key}.ca-file"), None)
        return smtp

    def database(self, db: DatabaseConfig, given: dict[str, Any]) -> DatabaseConfig:
        """The store's keys: a dsn, or the Go original's host, port, username,
        password (or password-file) and name, from which the dsn is built."""
        key = "email.server.database"
        parts = [k for k in GO_DATABASE_KEYS if k in given]
        if parts and db.engine != "postgres":
            raise ConfigError(f"{', '.join(parts)}: only with engine: postgres (sqlite3 takes path)", key)
        if parts:
            if db.dsn:
                raise ConfigError(f"give dsn, or {', '.join(GO_DATABASE_KEYS)}; not both (given: dsn, "
                                  f"{', '.join(parts)})", key)
            db = self.secret_of(db, key)
            if not self.producer:  # producers never see the store's credentials, nor need them
                from ..stores.dsn import build

                db = replace(db, dsn=build(db.host, db.port, db.username, db.password, db.name))
        if db.engine == "postgres" and not db.dsn and not self.producer:
            raise ConfigError(f"required when engine is postgres (or {', '.join(GO_DATABASE_KEYS)})", f"{key}.dsn")
        return db

    def secret_of(self, section: Any, key: str) -> Any:
        """`password` or `password-file`, not both; the file read into `password`."""
        if section.password_file is not None and section.password is not None:
            raise ConfigError("give password or password-file, not both", key)
        if section.password_file is not None:
            return replace(section, password=self.read_secret(section.password_file, f"{key}.password-file"))
        if f"{key}.password" in self.literal and section.password is not None:
            self.check_private(f"{key}.password")
        return section

    def webhook(self, hook: WebhookConfig, key: str) -> WebhookConfig:
        """`secret` or `secret-file`, one of them; the file read into `secret`."""
        if hook.secret_file is not None and hook.secret is not None:
            raise ConfigError("give secret or secret-file, not both", key)
        if hook.secret_file is not None:
            return replace(hook, secret=self.read_secret(hook.secret_file, f"{key}.secret-file"))
        if hook.secret is None:
            raise ConfigError("required: the key that signs each POST (secret or secret-file)", f"{key}.secret")
        if f"{key}.secret" in self.literal:
            self.check_private(f"{key}.secret")
        return hook

    def dkim(self, entry: DkimConfig, key: str) -> DkimConfig:
        """`key` or `key-file`, one of them; the file read into `key`, and the key checked
        for its algorithm, so that a key that cannot sign is refused here and not at dispatch."""
        from ..dkim import check_key  # here: producers never load dkimpy

        if entry.key_file is not None and entry.key is not None:
            raise ConfigError("give key or key-file, not both", key)
        if entry.key_file is not None:
            where = f"{key}.key-file"
            entry = replace(entry, key=self.read_secret(entry.key_file, where))
        elif entry.key is None:
            raise ConfigError("required: the private key that signs (key-file or key)", f"{key}.key-file")
        else:
            where = f"{key}.key"
            if where in self.literal:
                self.check_private(where)
        problem = check_key(entry.key or "", entry.algorithm)
        if problem:
            shown = entry.key_file if entry.key_file is not None else "the key"
            raise ConfigError(f"{shown} is not a usable {entry.algorithm} private key: {problem}", where)
        return entry

    def web(self, web: WebConfig | None, given: dict[str, Any]) -> WebConfig | None:
        """On when `listen` is given; `token` or `token-file`, the file read into `token`;
        no token only on loopback. Producers never serve it: None for them."""
        key = "email.server.web"
        if web is None or self.producer:
            return None
        if "listen" not in given:  # as the other listeners: the section alone opens no port
            self.warn(f"{key}: no listen given: the web server is off")
            return None
        if web.token_file is not None and web.token is not None:
            raise ConfigError("give token or token-file, not both", key)
        if web.token_file is not None:
            web = replace(web, token=self.read_secret(web.token_file, f"{key}.token-file"))
        elif web.token is not None and f"{key}.token" in self.literal:
            self.check_private(f"{key}.token")
        if web.token is not None and len(web.token) < MIN_TOKEN:
            raise ConfigError(f"too short: at least {MIN_TOKEN} characters (e.g. `openssl rand -hex 32`)",
                              f"{key}.token")
        if web.token is None:
            from .values import is_loopback, split_listen

            if not is_loopback(split_listen(web.listen)[0]):
                raise ConfigError(f"{web.listen} is not on loopback and there is no token: anyone who can reach "
                                  "it could read and send mail; set token or token-file, or listen on "
                                  "127.0.0.1", f"{key}.token")
        return web

    def auth(self, auth: AuthConfig | None, key: str) -> AuthConfig | None:
        """Both halves or none: no username and no password is no AUTH."""
        if auth is None:
            return None
        auth = self.secret_of(auth, key)
        if auth.username is None:
            if auth.password is not None:
                raise ConfigError("required when a password is given", f"{key}.username")
            return None
        if auth.password is None:
            raise ConfigError("required with a username: give password or password-file", f"{key}.password")
        return auth

    def check_ca_file(self, path: Path, key: str = "email.server.smtp.ca-file") -> None:
        import ssl  # here: producers never import it

        try:  # load it now, so that a bad bundle is refused here and not when the daemon connects
            ssl.create_default_context(cafile=str(path))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"not a usable CA bundle (PEM): {path}: {exc}", key) from None

    def check_private(self, key: str) -> None:
        """Refuse a literal password in a file every user can read."""
        try:
            shared = self.source is not None and self.source.stat().st_mode & 0o004
        except OSError:  # parse() given a source that is not (or no longer) a file
            shared = False
        if shared:
            kind = key.rpartition(".")[2]  # password, or a webhook's secret
            raise ConfigError(
                f"{self.source} is readable by every user and holds a literal {kind}: "
                f"run `chmod o-r {self.source}`, or use {kind}-file or ${{ENV_VAR}} instead",
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
            self.warn(f"{key}: {path} is readable by every user; run `chmod o-r {path}`")
        return secret


def check_relays(relays: tuple[RelayConfig, ...]) -> None:
    """Each relay's name once."""
    seen: set[str] = set()
    for i, relay in enumerate(relays):
        if relay.label in seen:
            key = f"email.server.relays[{i}]" + (".name" if relay.name else "")
            raise ConfigError(f"{relay.label!r} twice: give each relay a name of its own", key)
        seen.add(relay.label)


def parse(data: object, source: Path | None = None, *, producer: bool = False,
          warnings: list[str] | None = None) -> Config:
    """Validate YAML-loaded data rooted at `email:`; relative paths resolve next to `source`.

    Warnings (ignored keys, a world-readable password file) go to `warnings`
    when given, for the caller to report once; else they are logged at DEBUG."""
    if data is None:
        raise ConfigError("missing: the file is empty; it must start with the root key email:", "email")
    if not isinstance(data, dict):
        raise ConfigError(f"missing: expected a mapping with the root key email:, got {show(data)}", "email")
    if "email" not in data:
        raise ConfigError("missing: the file must start with the root key email:", "email")
    p = Parse(source, producer, warnings)
    for key in data:
        if key != "email":
            # the Go original shared one file with the rest of the application
            p.warn(f"{key} is ignored: mailmand reads only the email: section")
    given = p.prepare(data["email"], "email")
    if given is None or given == "":
        given = {}
    if not isinstance(given, dict):
        raise ConfigError(f"expected a mapping, got {show(given)}", "email")
    return p.finish(p.decode(given), given)  # each raises every problem it found, together


# --- the file --------------------------------------------------------------------


@functools.cache
def _loader() -> type[yaml.SafeLoader]:
    """PyYAML's C loader where it is built (about 10x faster), the Python one
    elsewhere; either refuses a key given twice (PyYAML keeps the last silently)."""
    import yaml  # here: `import mailmand.config` stays cheap for a caller that never reads a file

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return loader.construct_mapping(node)

    loader = cast("type[yaml.SafeLoader]", type("MailmandLoader", (base,), {}))
    loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return loader


def _unquoted_reference(text: str, line: int, column: int) -> str | None:
    """The `${NAME}` that broke a flow mapping (`{password: ${X}}`), if that is what happened."""
    lines = text.splitlines()
    here = lines[line] if line < len(lines) else ""
    if column < 1 or here[column - 1 : column + 1] != "${":
        return None
    m = re.match(r"\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}", here[column - 1 :])
    return f"${{{m.group(1)}}}" if m else "${...}"


def read_yaml(text: str, found: Path) -> object:
    import yaml

    try:
        return yaml.load(text, Loader=_loader())  # a SafeLoader: plain data only
    except yaml.MarkedYAMLError as e:
        # problem/context only: str(e) quotes the source line, which may hold a password
        mark = e.problem_mark or e.context_mark
        ref = _unquoted_reference(text, mark.line, mark.column) if mark else None
        if mark and ref:  # YAML stopped at the `{` after the `$`: point at the `$`
            where = f"line {mark.line + 1}, column {mark.column}"
            reason = f"{ref} inside {{ }} or [ ] must be quoted: write \"{ref}\""
        else:
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
            reason = "; ".join(filter(None, (e.context, e.problem)))
        raise ConfigError(f"{found}: YAML syntax error at {where}: {reason}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{found}: YAML syntax error: {type(e).__name__}") from None


def drop_daemon_secrets(data: object) -> None:
    """Producers need the queue, not the relay's credentials: an application
    user who cannot read the SMTP secret must still be able to enqueue."""
    email = data.get("email") if isinstance(data, dict) else None
    server = email.get("server") if isinstance(email, dict) else None
    if not isinstance(server, dict):
        return
    for section, secrets in (("smtp", ("auth",)), ("database", ("dsn", "password", "password-file")),
                             ("submission", ("auth",)), ("events", ("webhooks",)), ("web", ("token",))):
        if isinstance(server.get(section), dict):
            for secret in secrets:
                server[section].pop(secret, None)


def load(path: str | Path | None = None, *, producer: bool = False,
         warnings: list[str] | None = None) -> Config:
    """Find, read and parse the configuration; with no file, the embedded
    defaults. `producer=True` (clients, `send`, `sendmail`) skips the daemon's
    secrets: the AUTH passwords and the database DSN. `warnings`: see `parse`."""
    found = find_config_path(path)
    if found is None:
        return Config()
    try:
        text = found.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {found}: {getattr(e, 'strerror', None) or e}") from None
    data = read_yaml(text, found)
    if producer:
        drop_daemon_secrets(data)
    return parse(data, found, producer=producer, warnings=warnings)


# --- reloading ----------------------------------------------------------------


def restart_required(old: Config, new: Config) -> list[str]:
    """Key paths that changed but cannot apply to a running daemon (queue, database, listeners)."""
    changed = []
    for key, x, y in (
        ("email.server.submission.listen", old.server.submission, new.server.submission),
        ("email.server.metrics.listen", old.server.metrics, new.server.metrics),
        ("email.server.web.listen", old.server.web, new.server.web),
    ):
        # listeners bind at start; auth and TLS of the listener apply on reload
        if (x and x.listen) != (y and y.listen):
            changed.append(key)
    for prefix, a, b in (
        ("email.queue.default", old.queue, new.queue),
        ("email.server.database", old.server.database, new.server.database),
    ):
        for f in msgspec.structs.fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                changed.append(f"{prefix}.{f.encode_name}")
    return changed


def open_relay(cfg: SubmissionConfig) -> None:
    """Refuse a listener anyone on the network could send mail through: off
    loopback, with no auth and no `clients` naming who may submit."""
    from .values import is_loopback, split_listen

    if cfg.auth is not None or cfg.clients is not None:
        return
    for listen in cfg.listen:
        if not is_loopback(split_listen(listen)[0]):
            raise ConfigError(f"{listen} is not on loopback and has no auth: anyone who can reach it could "
                              "send mail through your relay; set auth, or name who may submit in "
                              "clients: [CIDR, ...]", "email.server.submission.listen")


def keep_running(old: Config, new: Config) -> Config:
    """`new` with the running values of what needs a restart (the queue, the database,
    the listeners' addresses): what a daemon runs on after a reload, and what the next
    reload is compared with (so setting a key back to its running value is no change)."""
    server = new.server
    sub, old_sub = server.submission, old.server.submission
    # A listener turned on waits for a restart (none runs); one turned off runs on as it was.
    sub = old_sub if sub is None or old_sub is None else replace(sub, listen=old_sub.listen)
    web, old_web = server.web, old.server.web
    web = old_web if web is None or old_web is None else replace(web, listen=old_web.listen)
    server = replace(server, database=old.server.database, submission=sub, metrics=old.server.metrics, web=web)
    return replace(new, queue=old.queue, server=server)


def submission_tls(cfg: SubmissionConfig) -> ssl.SSLContext | None:
    """The submission listener's TLS context; a ConfigError when its certificate
    and key cannot be loaded (checked when the configuration loads, so `run`
    refuses it before it creates anything, and `check-config` with it)."""
    if cfg.tls is None:
        return None
    import ssl  # here: producers never import it

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the certificate and key: {' '.join(str(exc).split())}",
                          "email.server.submission.tls") from None
    return context
