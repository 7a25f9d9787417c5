"""The sendmail(8) and mailq(1) interfaces, so cron, PHP's mail(), git and
logwatch can hand mail to mailmand and an admin finds the queue where
Postfix keeps it. Exit codes follow sysexits.h, whatever the input: no
input may make the shim print a traceback or exit outside them.
"""

from __future__ import annotations

import os
import sys

from .errors import (
    ConfigError,
    InvalidMessage,
    MailmandError,
    NoStore,
    QueueError,
    SpoolPermissionError,
    UsageError,
)

# Options sendmail accepts that mean nothing for a queue: taken and ignored.
IGNORED_FLAGS = {"-bm", "-v", "-U", "-m", "-n", "-Am", "-Ac"}
# Ignored options that take a separate value (-B 8BITMIME, -N never, -R hdrs, -V envid, -X logfile).
IGNORED_WITH_VALUE = ("-B", "-N", "-R", "-V", "-X")

USAGE = """\
usage: sendmail [options] [recipient ...]   (mailmand's sendmail interface)
  -t            recipients from the To, Cc and Bcc headers, plus any given (Bcc is removed)
  -i, -oi       a line holding a single dot does not end the message
  -f SENDER     the envelope sender; -f '<>' is the null sender of a bounce (also -r)
  -F NAME       the sender's full name, for the From header when the message has none
  -C FILE       the configuration file (default: $MAILMAND_CONFIG, /etc/mailmand/mailmand.yaml)
  -bp           list the queue, as mailq does
  -q            deliver deferred mail now, as `mailmand flush` does (none yet: exit 0)
  -h, --help    this help
Accepted and ignored: -oX..., -B TYPE, -N DSN, -R RET, -V ENVID, -X FILE, -v, -bm, -U, -m, -n, -Am, -Ac.
A message with no header at all is taken as the body. A bare name (root) goes
through email.sendmail.aliases, else gets email.sendmail.domain.
Exit codes (sysexits.h): 0 queued, 64 usage, 65 bad message, 75 try again
later, 77 no permission, 78 configuration, 70 internal error.
"""


TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .config import Config


class SendmailUsage(Exception):
    pass


class Options:
    """The parsed command line. (A plain class: `dataclasses` costs sendmail
    several ms of imports at every call.)"""

    def __init__(self) -> None:
        self.t = False  # recipients from the headers
        self.i = False  # a lone dot does not end the message
        self.f: str | None = None  # envelope sender
        self.F: str | None = None  # the sender's full name  # noqa: N815
        self.C: str | None = None  # configuration file  # noqa: N815
        self.mode = "send"  # send | list (-bp) | flush (-q) | help
        self.recipients: list[str] = []


def parse_args(argv: Sequence[str]) -> tuple[Options, list[str]]:
    opts = Options()
    recipients: list[str] = []
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--":
            recipients.extend(args)
            break
        if a in ("-h", "--help"):
            opts.mode = "help"
        elif a == "-t":
            opts.t = True
        elif a in ("-i", "-oi"):
            opts.i = True
        elif a == "-bp":
            opts.mode = "list"
        elif a.startswith("-q"):  # -q, or -q15m (a queue-runner interval: one flush here)
            opts.mode = "flush"
        elif a[:2] in ("-f", "-F", "-r", "-C"):
            value = a[2:] or (args.pop(0) if args else None)
            if value is None:
                raise SendmailUsage(f"option {a} needs a value")
            if a[:2] == "-F":
                opts.F = value
            elif a[:2] == "-C":
                opts.C = value
            else:
                opts.f = value
        elif a in IGNORED_WITH_VALUE:
            args = args[1:]
        elif a[:2] in ("-o", *IGNORED_WITH_VALUE) or a in IGNORED_FLAGS:
            pass
        elif a.startswith("-"):
            raise SendmailUsage(f"unsupported option {a}")
        else:
            recipients.append(a)
    opts.recipients = recipients
    return opts, recipients


def _read_message(dot_ends: bool) -> bytes:
    data = sys.stdin.buffer.read() if sys.stdin is not None else b""  # stdin closed: an empty message
    if not dot_ends:
        return data
    # Without -i, a line holding a single dot ends the message.
    lines = data.splitlines(keepends=True)
    for n, line in enumerate(lines):
        if line.rstrip(b"\r\n") == b".":
            return b"".join(lines[:n])
    return data


def main(argv: Sequence[str], config: str | None = None) -> int:
    """`mailmand-sendmail ARGS` / `mailmand sendmail ARGS`: a sysexits code, always."""
    try:
        return _main(argv, config)
    except SendmailUsage as exc:
        print(f"sendmail: {exc}\n{USAGE}", file=sys.stderr, end="")
        return os.EX_USAGE
    except MailmandError as exc:
        print(f"sendmail: {exc}", file=sys.stderr)
        return _sysexit(exc)
    except KeyboardInterrupt:
        return os.EX_TEMPFAIL
    except OSError as exc:  # stdin unreadable, a file system failing under us
        print(f"sendmail: {exc.strerror or exc}", file=sys.stderr)
        return os.EX_IOERR
    except Exception as exc:  # a bug: still one line and a sysexits code, never a traceback
        print(f"sendmail: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return os.EX_SOFTWARE


def _main(argv: Sequence[str], config: str | None) -> int:
    opts, recipients = parse_args(argv)
    if opts.mode == "help":
        print(USAGE, end="")
        return os.EX_OK
    from .config.cache import load_producer

    cfg = load_producer(opts.C or config)
    if opts.mode in ("list", "flush"):
        from .control import load_for_store

        cfg = load_for_store(opts.C or config, cfg)
    if opts.mode == "list":
        return mailq(cfg)
    if opts.mode == "flush":
        from .control import flush

        try:
            n, woke = flush(cfg, None)
        except NoStore as exc:  # no daemon has run here yet: no deferred mail either
            print(f"nothing to deliver: {exc}")
            return os.EX_OK
        print(f"flushed {n} deferred message(s); {woke}")
        return os.EX_OK
    if not opts.t and not recipients:
        raise SendmailUsage("no recipients given (use -t to take them from the headers)")
    raw = _read_message(not opts.i)
    # The common message (ASCII fields, plain addresses, a From field) is parsed and
    # queued without the email package: tens of ms of start-up (docs/internals.md).
    from .client import Client
    from .raw import RawMessage

    client = Client(cfg)
    try:
        message = RawMessage.parse(
            raw, sender=opts.f, recipients=None if opts.t else recipients,
            extra_recipients=recipients if opts.t else (), from_name=opts.F,
            default_sender=_user(), local_domain=client.local_domain, aliases=cfg.sendmail.aliases)
        client.enqueue(message)
    finally:
        client.close()
    return os.EX_OK


def _user() -> str:
    """getpass.getuser(), without the terminal modules getpass imports."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        if os.environ.get(name):
            return os.environ[name]
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid with no passwd entry (containers)
        return f"uid{os.getuid()}"


def _sysexit(exc: MailmandError) -> int:
    """sendmail's exit codes (sysexits.h), which cron, PHP and git read."""
    if isinstance(exc, InvalidMessage):
        return os.EX_DATAERR
    if isinstance(exc, SpoolPermissionError):
        return os.EX_NOPERM
    if isinstance(exc, QueueError):
        return os.EX_TEMPFAIL
    if isinstance(exc, ConfigError):
        return os.EX_CONFIG
    if isinstance(exc, UsageError):
        return os.EX_USAGE
    return os.EX_SOFTWARE


# -- mailq ---------------------------------------------------------------------------


def mailq(cfg: Config) -> int:
    """The waiting mail in Postfix's `mailq` shape: id (`*` while being sent, `!`
    while held, as Postfix marks them), size, arrival time, sender; in parentheses
    the last reason of deferred mail, and the send time of mail scheduled for
    later; then the recipients; a total at the end."""
    import time
    from datetime import datetime

    from .control import store
    from .queues import open_queue
    from .stores.model import Status

    with store(cfg) as s:
        rows = [m for st in (Status.SENDING, Status.QUEUED, Status.DEFERRED, Status.HELD)
                for m in s.list_messages(st, sys.maxsize)]
    now = time.time()
    queue = open_queue(cfg.queue, readonly=True)
    try:
        spooled = queue.pending()
    finally:
        queue.close()
    rows.sort(key=lambda m: m.created_at)
    if not rows:
        print("Mail queue is empty")
    else:
        width = max(10, *(len(m.id) + 1 for m in rows))
        print(f"{'-Queue ID-':<{width}} --Size-- ----Arrival Time---- -Sender/Recipient-------")
        for m in rows:
            mark = {Status.SENDING: "*", Status.HELD: "!"}.get(m.status, "")
            arrived = datetime.fromtimestamp(m.created_at).strftime("%a %b %d %H:%M:%S")
            print(f"{m.id + mark:<{width}} {m.size:>8} {arrived}  {m.mail_from or 'MAILER-DAEMON'}")
            if m.status is Status.DEFERRED and m.last_error:
                print(f"({m.last_error[:200]})")
            elif m.status is Status.QUEUED and m.due_at > now:
                print(f"(scheduled: not before {datetime.fromtimestamp(m.due_at).strftime('%a %b %d %H:%M:%S')})")
            elif m.status is Status.HELD:
                print("(held by the operator: mailmand release ID)")
            for r in m.rcpt_to:
                print(f"{'':<{width}} {'':>8} {'':<20}  {r}")
            print()
        size = sum(m.size for m in rows)
        print(f"-- {(size + 1023) // 1024} Kbytes in {len(rows)} Request{'s' if len(rows) != 1 else ''}.")
    if spooled:
        print(f"-- {spooled} more in the spool, not ingested yet (is the daemon running?)")
    return os.EX_OK


def mailq_main(argv: Sequence[str]) -> int:
    """The `mailq` command: `mailq [-C FILE]`."""
    config = None
    args = list(argv)
    while args:
        a = args.pop(0)
        if a in ("-h", "--help"):
            print("usage: mailq [-C FILE]   the waiting mail, as Postfix's mailq shows it")
            return os.EX_OK
        if a[:2] in ("-C", "-c"):
            config = a[2:] or (args.pop(0) if args else None)
        elif a != "-v":
            print(f"mailq: unsupported option {a}\nusage: mailq [-C FILE]", file=sys.stderr)
            return os.EX_USAGE
    try:
        from .config.cache import load_producer
        from .control import load_for_store

        return mailq(load_for_store(config, load_producer(config)))
    except MailmandError as exc:
        print(f"mailq: {exc}", file=sys.stderr)
        return _sysexit(exc) if isinstance(exc, ConfigError) else 1
    except BrokenPipeError:
        from .control import quiet_broken_pipe

        quiet_broken_pipe()
        return os.EX_OK


__all__ = ["main", "mailq", "mailq_main", "parse_args"]
