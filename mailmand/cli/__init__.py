"""The `mailmand` command: parse, load config, wire objects, call the subcommand.

`main(argv) -> int`; tests call it directly. Exit codes: 0 ok, 1 error,
2 usage, 78 configuration. Errors are one line on stderr, never a traceback.

Each subcommand lives in the module of its kind (`queue`, `status`, `send`,
`check`) and is imported only when it runs: `mailmand-sendmail` and
`mailmand status` must not pay for the daemon's machinery at start-up.
"""

from __future__ import annotations

import importlib
import os
import sys

from .. import config as configmod
from ..errors import MailmandError, UsageError
from ..version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

EX_OK, EX_ERROR, EX_USAGE = 0, 1, 2
# config.schema.LOG_LEVELS, without importing the schema (and msgspec); tests pin the two together.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# command -> (module in mailmand.cli, function). Imported when the command
# runs; build.spec collects every mailmand.cli module for PyInstaller.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("daemon", "cmd_run"),
    "demo": ("daemon", "cmd_demo"),
    "status": ("status", "cmd_status"),
    "stats": ("status", "cmd_stats"),
    "list": ("queue", "cmd_list"),
    "show": ("queue", "cmd_show"),
    "cancel": ("moves", "cmd_cancel"),
    "retry": ("moves", "cmd_retry"),
    "hold": ("moves", "cmd_hold"),
    "release": ("moves", "cmd_release"),
    "flush": ("queue", "cmd_flush"),
    "purge": ("queue", "cmd_purge"),
    "quarantine": ("quarantine", "cmd_quarantine"),
    "events": ("events", "cmd_events"),
    "explain": ("explain", "cmd_explain"),
    "suppress": ("suppress", "cmd_suppress"),
    "send": ("send", "cmd_send"),
    "check-config": ("check", "cmd_check_config"),
    "migrate": ("daemon", "cmd_migrate"),
    "outbox-sql": ("daemon", "cmd_outbox_sql"),
}
DAEMON_SIDE = frozenset({"run", "check-config", "migrate"})
# Commands that read the store: on a shared store (PostgreSQL) they need its dsn, a daemon-side secret.
STORE_COMMANDS = frozenset({"status", "stats", "list", "show", "cancel", "retry", "hold", "release", "flush",
                            "purge", "quarantine", "events", "explain", "suppress"})


def _version() -> str:
    try:
        from .._build import COMMIT  # written by the PyInstaller build
    except ImportError:
        COMMIT = "source"
    return f"mailmand {__version__} ({COMMIT})"


def setup_logging(level: str = "INFO") -> None:
    import logging  # here: mailmand-sendmail never sets up logging

    class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
        """Writes to whatever sys.stderr is at the time (tests swap it)."""

        @property  # type: ignore[override]
        def stream(self) -> Any:
            return sys.stderr

        @stream.setter
        def stream(self, _value: Any) -> None:
            pass

    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("mailmand").setLevel(level.upper())
    # APScheduler warns when a poke finds the job running; the job loops again by design.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


class _Skipped:
    """Stands in for the parser of a subcommand that is not the one given: it
    takes the calls that would define its arguments, and keeps nothing."""

    def add_argument(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_mutually_exclusive_group(self, *args: Any, **kwargs: Any) -> _Skipped:
        return self

    def add_subparsers(self, *args: Any, **kwargs: Any) -> _Skipped:
        return self

    def add_parser(self, *args: Any, **kwargs: Any) -> _Skipped:
        return self


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only`, the top level and that subcommand
    alone (a command such as `status` need not pay for building the other
    fourteen, about 10 ms). Usage and errors of that command are the same."""
    import argparse  # here: mailmand-sendmail never parses with it

    from ..stores.model import UNFINISHED  # here: mailmand-sendmail never loads the store's contract

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="configuration file (default: $MAILMAND_CONFIG, "
                             "/etc/mailmand/mailmand.yaml)")
    p = argparse.ArgumentParser(
        prog="mailmand", parents=[common],
        description="A mail queue daemon: applications enqueue, mailmand delivers.",
        epilog="`mailmand run` starts the daemon; `mailmand COMMAND -h` tells more about a command. "
               "Text output shows local time; --json shows epoch seconds.")
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("--once", action="store_true",
                   help="ingest everything, dispatch everything due, print a summary, exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help: str, json_flag: bool = False) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return _Skipped()  # type: ignore[return-value]
        sp = sub.add_parser(name, parents=[common], help=help, description=help)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print JSON (times in epoch seconds)")
        return sp

    add("run", "run the daemon in the foreground").add_argument(
        "--once", action="store_true", help="as mailmand --once")
    add("status", "whether a daemon runs; counts per status, spool backlog, quarantine, oldest due, next send",
        True)
    sp = add("list", "list messages, newest first, a page at a time", True)
    _filter_flags(sp)
    sp.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    sp.add_argument("--after", metavar="ID", help="the page after this message (the last id of the page before)")
    _tag_flag(sp, "messages")
    sp = add("show", "a message's envelope, status, attempts and recipients", True)
    sp.add_argument("id")
    sp.add_argument("--raw", action="store_true", help="print the stored message (RFC 5322), like postcat -q")
    _move_flags(add("cancel", "cancel queued, deferred, scheduled or held messages (postsuper -d)"), "cancel")
    sp = add("retry", "re-queue failed or expired messages with fresh attempts (postsuper -r)")
    _move_flags(sp, "retry")
    sp.add_argument("--failed", action="store_true", help=argparse.SUPPRESS)  # before --all existed
    _move_flags(add("hold", "set messages aside: never sent until released (postsuper -h)"), "hold")
    _move_flags(add("release", "send held messages again, due when they were (postsuper -H)"), "release")
    add("flush", "deferred mail becomes due now, and the daemon sends it (postqueue -f)").add_argument(
        "ids", nargs="*", metavar="ID", help="only these (default: every deferred message)")
    add("purge", "delete finished mail (sent, failed, expired, cancelled)").add_argument(
        "--older-than", metavar="DURATION", help="default: the configured retention")
    sp = add("events", "what happened to messages, oldest first: every change of state, as webhooks are sent it",
             True)
    sp.add_argument("id", nargs="?", metavar="ID", help="only this message's events")
    sp.add_argument("-f", "--follow", action="store_true", help="then print new events as they come, until Ctrl-C")
    sp.add_argument("--since", metavar="WHEN", help="at or after: a time (ISO 8601) or a duration ago (2h)")
    sp.add_argument("--type", action="append", default=[], metavar="TYPE",
                    help="only these types (queued, deferred, sent, failed, expired, cancelled, suppressed, held, "
                         "released); may repeat, or a comma-separated list")
    _tag_flag(sp, "events of messages")
    sp.add_argument("--limit", type=int, default=100, help="the last this many (default 100)")
    add("explain", "where a message is, why, and when it will move, in plain words", True).add_argument("id")
    sp = add("suppress", "addresses mail is not sent to for now (refused as unknown): list, add, remove")
    ssub = sp.add_subparsers(dest="action", metavar="ACTION", required=True)
    ssp = ssub.add_parser("list", help="the addresses suppressed now, latest first", parents=[common])
    ssp.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    ssp.add_argument("--json", action="store_true", help="print JSON (times in epoch seconds)")
    ssp = ssub.add_parser("add", help="suppress an address: mail to it fails at ingest", parents=[common])
    ssp.add_argument("address", metavar="ADDR")
    ssp.add_argument("--for", dest="duration", metavar="DURATION",
                     help="how long (default: email.server.suppression.duration)")
    ssp.add_argument("--reason", default="added by the operator", help="what `explain` and the event say")
    ssub.add_parser("remove", help="send to an address again, its refusals forgotten",
                    parents=[common]).add_argument("address", metavar="ADDR")
    sp = add("stats", "messages and attempts by outcome, latency percentiles, failure reasons, depth; "
                      "--by-domain: recipients waiting by domain and age (qshape)", True)
    sp.add_argument("--since", default="24h", metavar="DURATION", help="how far back (default 24h)")
    sp.add_argument("--by-domain", action="store_true",
                    help="recipients not yet delivered to, by domain and by age since their send time")
    sp.add_argument("--status", action="append", default=[], choices=[s.value for s in UNFINISHED],
                    help="with --by-domain: only messages in this status (may repeat; default: all four)")
    sp = add("quarantine", "queue items that could not be ingested: list, show, release, delete")
    qsub = sp.add_subparsers(dest="action", metavar="ACTION", required=True)
    qp = qsub.add_parser("list", help="the entries, newest first", parents=[common])
    qp.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    qp.add_argument("--json", action="store_true", help="print JSON (times in epoch seconds)")
    qp = qsub.add_parser("show", help="an entry's reason, time, source and raw bytes", parents=[common])
    qp.add_argument("entry", type=int, metavar="ID")
    qp.add_argument("--json", action="store_true", help="print JSON (the entry as text, else base64)")
    qp.add_argument("--raw", action="store_true", help="print only the entry's bytes")
    for action, what in (("release", "validate the entry again, and store the message if it now passes"),
                         ("delete", "delete the entry")):
        qsub.add_parser(action, help=what, description=what, parents=[common]).add_argument(
            "entry", type=int, metavar="ID")
    sp = add("send", "queue one message from flags (body from --text, --text-file or stdin), "
                     "or from an RFC 5322 FILE (- for stdin)")
    sp.add_argument("file", nargs="?", metavar="FILE", help="an RFC 5322 message to queue as it is (- for stdin)")
    sp.add_argument("--from", dest="sender", metavar="ADDR", help="the envelope sender and From header")
    sp.add_argument("--to", action="append", default=[], metavar="ADDR", help="a recipient (may repeat)")
    sp.add_argument("--cc", action="append", default=[], metavar="ADDR", help="a copy recipient (may repeat)")
    sp.add_argument("--bcc", action="append", default=[], metavar="ADDR",
                    help="a blind copy recipient, in the envelope only (may repeat)")
    sp.add_argument("--subject", default="", help="the Subject header")
    body = sp.add_mutually_exclusive_group()
    body.add_argument("--text", help="the plain-text body")
    body.add_argument("--text-file", metavar="PATH", help="the plain-text body from a file (- for stdin)")
    sp.add_argument("--html-file", metavar="PATH", help="an HTML body from a file (with or without a text body)")
    sp.add_argument("--attach", action="append", default=[], metavar="FILE", help="attach a file (may repeat)")
    sp.add_argument("--at", nargs="+", metavar="TIME",
                    help="send at this time, ISO 8601: 2026-11-30T09:00, 2026-11-30 09:00+01:00")
    sp.add_argument("--in", dest="delay", nargs="+", metavar="DURATION",
                    help="send after this long: 90s, 5m, 1h30m, 2d, 5 minutes")
    sp.add_argument("--priority", type=int, default=0,
                    help="higher is sent first when mail waits (default 0; may be negative)")
    sp.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                    help="a tag of the app's own (at most 10): find it with --tag, events carry it")
    add("check-config", "validate the configuration as `run` would: exit 0, or 78").add_argument(
        "--connect", action="store_true",
        help="also reach each part it uses: the queue, the store, the relay (TLS, AUTH); "
             "exit 69 naming each part that cannot be used")
    add("migrate", "copy an SQLite store into the configured store (stop the daemon first)").add_argument(
        "--from", dest="source", metavar="PATH", required=True, help="the SQLite database file")
    add("outbox-sql", "print the SQL that creates the postgres queue's outbox table (for an app's migrations)"
        ).add_argument("--table", metavar="NAME", help="this table instead of email.queue.default.table")
    add("demo", "show the whole pipeline on a loopback SMTP server")
    add("sendmail", "sendmail-compatible: reads a message on stdin; "
        "-t (recipients from headers), -i, -f SENDER, -F NAME, RECIPIENT... (see mailmand sendmail -h)")
    return p


def _filter_flags(sp: argparse.ArgumentParser) -> None:
    """What `list` selects by (the store's Selection); each may repeat where it says so."""
    from ..stores.model import Status

    sp.add_argument("--status", action="append", default=[], choices=[s.value for s in Status],
                    help="messages in this status (may repeat)")
    sp.add_argument("--to", action="append", default=[], metavar="ADDR",
                    help="messages to this recipient, or to anyone @domain (may repeat)")
    sp.add_argument("--from", dest="sender", action="append", default=[], metavar="ADDR",
                    help="messages from this envelope sender, or from anyone @domain (may repeat)")
    sp.add_argument("--since", metavar="WHEN", help="created at or after: a time (ISO 8601) or a duration ago (2h)")
    sp.add_argument("--until", metavar="WHEN", help="created before: a time (ISO 8601) or a duration ago (2h)")
    sp.add_argument("--subject", metavar="TEXT", help="the subject holds this text (case ignored)")


def _move_flags(sp: argparse.ArgumentParser, move: str) -> None:
    """Ids or selectors, as `cancel`, `retry`, `hold` and `release` take them."""
    from ..stores.model import OPERATOR_MOVES

    allowed = [s.value for s in OPERATOR_MOVES[move]]
    sp.add_argument("ids", nargs="*", metavar="ID")
    sp.add_argument("--status", action="append", default=[], choices=allowed,
                    help=f"messages in this status ({', '.join(allowed)}); may repeat")
    sp.add_argument("--to", action="append", default=[], metavar="ADDR",
                    help="messages to this recipient, or to anyone @domain (may repeat)")
    sp.add_argument("--from", dest="sender", action="append", default=[], metavar="ADDR",
                    help="messages from this envelope sender, or from anyone @domain (may repeat)")
    sp.add_argument("--older-than", metavar="DURATION", help="created more than this long ago")
    _tag_flag(sp, "messages")
    sp.add_argument("--all", action="store_true", help=f"every {' or '.join(allowed)} message")
    sp.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")


def _tag_flag(sp: argparse.ArgumentParser, what: str) -> None:
    sp.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                    help=f"only {what} tagged so; may repeat (every pair must match)")


def _command_index(argv: list[str]) -> int | None:
    """Where the subcommand is: the first word that is not an option or -c's value."""
    i = 0
    while i < len(argv):
        if argv[i] in ("-c", "--config"):
            i += 2
        elif argv[i].startswith("-"):
            i += 1
        else:
            return i
    return None


def _config_before(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a in ("-c", "--config") and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    at = _command_index(argv)
    if at is not None and argv[at] == "sendmail":  # sendmail's own flags (-t -i -f -F …) pass untouched
        from ..sendmail import main as sendmail

        return sendmail(argv[at + 1:], config=_config_before(argv[:at]))
    # The subcommand's parser alone, unless help (which lists them all) comes
    # before it, or the word is not a command (argparse lists the choices).
    known = at is not None and argv[at] in COMMANDS and not {"-h", "--help"} & set(argv[:at])
    parser = build_parser(argv[at] if known and at is not None else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help/--version exit 0
        return int(exc.code or 0)
    if args.command is None:
        if not args.once:
            parser.print_help()  # a bare `mailmand` starts nothing: `mailmand run` does
            return EX_OK
        args.command = "run"
    if args.command == "run":
        args.once = getattr(args, "once", False)
    # Only the daemon (and check-config, which vouches for it) needs the relay's secrets, and
    # only they report the file's warnings (ignored keys): producers run too often to repeat them.
    daemon_side = args.command in DAEMON_SIDE
    warnings: list[str] = []
    try:
        if daemon_side:
            cfg = configmod.load(getattr(args, "config", None), warnings=warnings)
        else:  # the producer's settings, from the cache when the file has not changed
            cfg = configmod.load_producer(getattr(args, "config", None))
        if args.command in STORE_COMMANDS:
            from ..control import load_for_store

            cfg = load_for_store(getattr(args, "config", None), cfg)
    except MailmandError as exc:
        for line in str(exc).splitlines() or [""]:  # a file's every problem, one line each
            print(f"mailmand: configuration error: {line}", file=sys.stderr)
        return exc.exit_code
    level = os.environ.get("MAILMAND_LOG_LEVEL", cfg.server.log_level).upper()
    setup_logging(level if level in LOG_LEVELS else cfg.server.log_level)
    import logging

    for warning in warnings if daemon_side else ():
        logging.getLogger("mailmand.config").warning("%s", warning)
    module, name = COMMANDS[args.command]
    try:
        fn = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        return int(fn(cfg, args))
    except MailmandError as exc:
        print(f"mailmand: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `mailmand list | head`: the reader has all it wanted
        from ..control import quiet_broken_pipe

        quiet_broken_pipe()
        return EX_OK
    except OSError as exc:
        print(f"mailmand: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EX_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or an input we did not foresee: still one line, not a traceback
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        print(f"mailmand: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EX_ERROR


def sendmail_main() -> int:
    """The `mailmand-sendmail` console script (link it as /usr/sbin/sendmail)."""
    from ..sendmail import main as sendmail

    return sendmail(sys.argv[1:])


def mailq_main() -> int:
    """The `mailq` console script: the queue in Postfix's mailq shape."""
    from ..sendmail import mailq_main as mailq

    return mailq(sys.argv[1:])


__all__ = ["UsageError", "main", "mailq_main", "sendmail_main", "setup_logging"]
