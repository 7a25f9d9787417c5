"""`mailmand check-config [--connect]`: vouch for what `run` would do.

Without `--connect` it loads the file as the daemon does (secrets included),
checks the engines as the daemon would open them, and warns about directories
the daemon could not create or write as this user. It creates nothing. With
`--connect` it also reaches each part the configuration uses, for real: the
queue (`Queue.probe`: a spool written to, Redis's PING, AUTH, stream and
group), the store, and the relay in a session as the daemon opens it (TLS,
AUTH), saying what each offers; a part that cannot be used is named, and the
exit code is then 69 (EX_UNAVAILABLE).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..config import Config, SmtpConfig
from ..stores import describe

EX_UNAVAILABLE = 69  # sysexits.h: a part the configuration uses cannot be reached or used
# RFC 8314 §7.3, RFC 6409 §3.1, RFC 5321 §4.5.4: the port says what TLS the relay expects.
TLS_FOR_PORT = {465: "ssl", 587: "starttls"}


def _nearest(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def directory_warnings(cfg: Config) -> list[str]:
    """Directories the daemon needs that this user could not create or write."""
    from .. import queues, stores

    queue = queues.engine(cfg.queue)
    wanted = [(queue.noun, queue.directory(cfg.queue)),
              ("store", stores.engine(cfg.server.database).directory(cfg.server.database))]
    warnings = []
    for what, path in wanted:
        if path is None:  # a server's: nothing to make on this host
            continue
        if path.exists():
            if not os.access(path, os.W_OK | os.X_OK):
                warnings.append(f"warning: the {what} directory {path} is not writable by this user "
                                f"(run the daemon as its owner, or fix its permissions)")
        else:
            parent = _nearest(path.parent)
            if not parent.is_dir():
                warnings.append(f"warning: the {what} directory {path} cannot be created: {parent} is not a directory")
            elif not os.access(parent, os.W_OK | os.X_OK):
                warnings.append(f"warning: the {what} directory {path} does not exist and this user "
                                f"cannot create it in {parent}")
    return warnings


def check_engines(cfg: Config) -> str:
    """Refuse the engines `run` refuses, with its messages, opening nothing.
    Returns the queue as logs name it (never a password)."""
    from ..queues import open_queue
    from ..stores import engine

    engine(cfg.server.database)  # a missing driver or a dsn that does not parse, as Daemon() says it
    queue = open_queue(cfg.queue, readonly=True)  # an unknown engine or a missing driver, as open_queue says it
    queue.close()
    return repr(queue)


def cmd_check_config(cfg: Config, args: argparse.Namespace) -> int:
    queue = check_engines(cfg)  # what `run` refuses, refused with the same message (78)
    where = cfg.source or "embedded defaults"
    relays = ", ".join(_relay_names(cfg))
    print(f"configuration OK ({where}): relay{'s' if cfg.server.relays else ''} {relays}, queue {queue}, "
          f"store {describe(cfg.server.database)}")
    for warning in directory_warnings(cfg):
        print(warning, file=sys.stderr)
    if not args.connect:
        return 0
    failed = [part for part, reach in (("queue", _queue), ("store", _store), ("relay", _relay)) if not reach(cfg)]
    if failed:
        print(f"mailmand: cannot use: {', '.join(failed)}", file=sys.stderr)
        return EX_UNAVAILABLE
    return 0


def _queue(cfg: Config) -> bool:
    """The queue, reached as producers and the daemon reach it (`Queue.probe`)."""
    from ..errors import MailmandError
    from ..queues import open_queue

    q = open_queue(cfg.queue, readonly=True)  # opens nothing yet: check_engines did the same
    try:
        found = q.probe()
    except MailmandError as exc:
        print(f"queue {q!r}: cannot be used: {exc}")
        return False
    finally:
        q.close()
    print(f"queue {q!r}: {found}")
    return True


def _store(cfg: Config) -> bool:
    from ..errors import MailmandError, NoStore
    from ..stores import check_connect

    try:
        print(check_connect(cfg.server.database))
    except NoStore as exc:  # the daemon makes it at its first start
        print(f"store: {exc}")
    except MailmandError as exc:
        print(f"store {describe(cfg.server.database)}: cannot be used: {exc}")
        return False
    return True


def _relay_names(cfg: Config) -> list[str]:
    """Each relay as `name (host:port)`, or the one `smtp` relay as `host:port`."""
    if not cfg.server.relays:
        return [cfg.server.smtp.relay]
    return [f"{r.name} ({r.relay})" if r.name else r.relay for r in cfg.server.relays]


def _relay(cfg: Config) -> bool:
    """Every relay: each one a daemon may send through must answer."""
    ok = True
    for name, relay in zip(_relay_names(cfg), cfg.server.relays or (cfg.server.smtp,), strict=True):
        print(f"relay {name}:")
        reached, lines = connect(relay)
        for line in lines:
            print(f"  {line}")
        ok = ok and reached
    return ok


def _hint(cfg: SmtpConfig) -> str:
    expected = TLS_FOR_PORT.get(cfg.port)
    if expected and expected != cfg.tls:
        return f" (port {cfg.port} expects tls: {expected})"
    if cfg.tls == "ssl" and cfg.port not in TLS_FOR_PORT:
        return f" (port {cfg.port} usually expects tls: starttls or none; tls: ssl is for port 465)"
    return ""


def connect(cfg: SmtpConfig) -> tuple[bool, list[str]]:
    """One session to the relay as the daemon opens it; (could send, what to print)."""
    import smtplib
    import ssl

    from ..hostname import mail_domain
    from ..smtp.relays import tls_context  # the daemon's own: same CA file, same verification

    out: list[str] = []
    context = tls_context(cfg)
    step = "connect"
    smtp: smtplib.SMTP
    smtp = (smtplib.SMTP_SSL(context=context, timeout=cfg.timeout) if cfg.tls == "ssl"
            else smtplib.SMTP(timeout=cfg.timeout))
    try:
        smtp._host = cfg.host  # type: ignore[attr-defined]  # the name STARTTLS verifies (smtplib sets it only in __init__)
        code, greeting = smtp.connect(cfg.host, cfg.port)
        out.append(f"connected to {cfg.relay} (tls: {cfg.tls})")
        out.append(f"greeting: {code} {greeting.decode(errors='replace')}")
        if code != 220:
            return False, [*out, f"cannot send: the relay did not greet with 220{_hint(cfg)}"]
        step = "EHLO"
        smtp.ehlo(cfg.helo or mail_domain())
        if cfg.tls == "starttls":
            if not smtp.has_extn("starttls"):
                return False, [*out, f"cannot send: the relay does not offer STARTTLS{_hint(cfg)}"]
            step = "STARTTLS"
            smtp.starttls(context=context)
            smtp.ehlo(cfg.helo or mail_domain())
            out.append("STARTTLS: OK, certificate " + ("verified" if cfg.verify else "not verified (verify: false)"))
        elif cfg.tls == "ssl":
            out.append("TLS: OK, certificate " + ("verified" if cfg.verify else "not verified (verify: false)"))
        out.append("offers: " + _offers(smtp))
        if cfg.tls == "none" and smtp.has_extn("starttls"):
            out.append("note: the relay offers STARTTLS; tls: starttls would encrypt the session")
        if cfg.auth is None:
            out.append("login: none configured")
        else:
            step = "AUTH"
            if not smtp.has_extn("auth"):
                return False, [*out, "cannot send: a login is configured but the relay offers no AUTH"
                               + (" (before TLS: set tls: starttls)" if cfg.tls == "none" else "")]
            try:
                smtp.login(cfg.auth.username or "", cfg.auth.password or "")
            except smtplib.SMTPAuthenticationError as exc:
                error = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
                if cfg.auth.password:  # in case the relay echoes what it was sent
                    error = error.replace(cfg.auth.password, "***")
                return False, [*out, f"login: refused: {exc.smtp_code} {error}"]
            out.append(f"login: OK as {cfg.auth.username}")
        out.append("a message could be sent")
        return True, out
    except ssl.SSLCertVerificationError as exc:
        return False, [*out, f"cannot send: {step}: certificate not trusted: {exc.verify_message} "
                             "(set ca-file, or verify: false for a test relay)"]
    except ssl.SSLError as exc:
        return False, [*out, f"cannot send: {step}: TLS failed: {exc.reason or exc}{_hint(cfg)}"]
    except (smtplib.SMTPException, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError | smtplib.SMTPServerDisconnected) or "timed out" in reason:
            reason = f"no answer ({reason})"
        return False, [*out, f"cannot send: {step}: {reason}{_hint(cfg)}"]
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


def _offers(smtp: object) -> str:
    features: dict[str, str] = getattr(smtp, "esmtp_features", {})
    shown = []
    for name in ("size", "pipelining", "chunking", "starttls", "auth", "smtputf8", "8bitmime"):
        if name in features:
            value = features[name].strip()
            if name == "size" and value:
                shown.append(f"SIZE {value}")
            elif name == "auth":
                shown.append(f"AUTH {value or '(no mechanisms)'}")
            else:
                shown.append(name.upper())
    missing = [n.upper() for n in ("size", "pipelining", "chunking", "starttls", "auth", "smtputf8")
               if n not in features]
    return (", ".join(shown) or "nothing beyond plain SMTP") + (f" (not: {', '.join(missing)})" if missing else "")
