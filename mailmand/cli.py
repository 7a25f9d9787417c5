"""The `mailmand` command: parse, load config, wire objects, call run/once.

`main(argv) -> int`; tests call it directly. Exit codes: 0 ok, 1 error,
2 usage, 78 configuration. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from . import __version__
from . import config as configmod
from .config import Config
from .errors import MailmandError, UsageError
from .queues import open_queue
from .stores import Status, open_store
from .stores.base import MessageInfo, Store

log = logging.getLogger(__name__)

EX_OK, EX_ERROR, EX_USAGE = 0, 1, 2


def _version() -> str:
    try:
        from ._build import COMMIT  # written by the PyInstaller build
    except ImportError:
        COMMIT = "source"
    return f"mailmand {__version__} ({COMMIT})"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (tests swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(level: str = "INFO") -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("mailmand").setLevel(level.upper())
    # APScheduler warns when a poke finds the job running; the job loops again by design.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds") if ts else "-"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


# -- subcommands -----------------------------------------------------------------


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    from .daemon import Daemon

    daemon = Daemon(cfg)
    if args.once:
        try:
            result = daemon.once()
        finally:
            daemon.close()
        print(result.summary())
        return EX_OK
    return daemon.run()


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    store = open_store(cfg.server.database)
    queue = open_queue(cfg.queue)
    now = time.time()
    try:
        counts = store.counts()
        oldest = store.oldest_due(now)
        next_due = store.next_due()
        data: dict[str, Any] = {
            "counts": {s.value: n for s, n in counts.items()},
            "spool": queue.pending(),
            "quarantine": store.quarantine_count(),
            "oldest_due_age": None if oldest is None else round(now - oldest, 3),
            "next_scheduled": next_due if next_due is not None and next_due > now else None,
        }
    finally:
        queue.close()
        store.close()
    if args.json:
        _print_json(data)
        return EX_OK
    for status, n in data["counts"].items():
        print(f"{status:<10} {n}")
    print(f"{'spool':<10} {data['spool']} waiting to be ingested")
    print(f"{'quarantine':<10} {data['quarantine']}")
    print(f"oldest due message: {_age(data['oldest_due_age'])} old")
    print(f"next scheduled send: {_when(data['next_scheduled'])}")
    return EX_OK


def _row(m: MessageInfo) -> str:
    to = ",".join(m.rcpt_to)
    return (f"{m.id}  {m.status.value:<9} {_when(m.created_at)}  {m.attempts:>2}  "
            f"{to[:40]:<40}  {m.subject[:40]}")


def cmd_list(cfg: Config, args: argparse.Namespace) -> int:
    with _store(cfg) as store:
        rows = store.list_messages(Status(args.status) if args.status else None, args.limit)
    if args.json:
        _print_json([m.to_json() for m in rows])
    else:
        for m in rows:
            print(_row(m))
    return EX_OK


def cmd_show(cfg: Config, args: argparse.Namespace) -> int:
    with _store(cfg) as store:
        info = store.get(args.id)
        attempts = store.attempts(args.id)
        recipients = store.recipients(args.id)
    data = {**info.to_json(),
            "attempts": [a.__dict__ for a in attempts],
            "recipients": [r.__dict__ for r in recipients]}
    if args.json:
        _print_json(data)
        return EX_OK
    print(f"id:        {info.id}\nstatus:    {info.status.value}\nfrom:      {info.mail_from}")
    print(f"to:        {', '.join(info.rcpt_to)}\nsubject:   {info.subject}\npriority:  {info.priority}")
    print(f"created:   {_when(info.created_at)}\nsend at:   {_when(info.send_after)}")
    if info.status in (Status.QUEUED, Status.DEFERRED):
        print(f"next try:  {_when(info.due_at)}")
    print(f"last error: {info.last_error or '-'}")
    print(f"attempts ({len(attempts)}):")
    for a in attempts:
        print(f"  {_when(a.at)}  {a.outcome:<9} {a.duration * 1000:7.1f} ms  {a.relay}  {a.reply}")
    if recipients:
        print("recipients:")
        for r in recipients:
            print(f"  {r.address:<30} {r.status:<9} {r.reply}")
    return EX_OK


def cmd_cancel(cfg: Config, args: argparse.Namespace) -> int:
    with _store(cfg) as store:
        store.cancel(args.id, time.time())
    print(f"cancelled {args.id}")
    return EX_OK


def cmd_retry(cfg: Config, args: argparse.Namespace) -> int:
    if bool(args.id) == bool(args.failed):
        raise UsageError("retry takes a message ID or --failed")
    with _store(cfg) as store:
        n = store.requeue(args.id, time.time())
    print(f"re-queued {n} message(s)")
    return EX_OK


def cmd_purge(cfg: Config, args: argparse.Namespace) -> int:
    older = _duration("--older-than", args.older_than) if args.older_than else cfg.server.retention
    with _store(cfg) as store:
        n = store.purge(time.time() - older)
    print(f"purged {n} finished message(s)")
    return EX_OK


def cmd_stats(cfg: Config, args: argparse.Namespace) -> int:
    now = time.time()
    with _store(cfg) as store:
        data = store.stats(now - _duration("--since", args.since), now)
    if args.json:
        _print_json(data)
        return EX_OK
    print(f"since {_when(data['since'])}: sent {data['sent']}, failed {data['failed']}, "
          f"expired {data['expired']}")
    lat = data["latency"]
    fmt = lambda v: "-" if v is None else f"{v * 1000:.0f} ms"  # noqa: E731
    print(f"latency (send time to 250): p50 {fmt(lat['p50'])}, p95 {fmt(lat['p95'])}, p99 {fmt(lat['p99'])}")
    if data["top_failures"]:
        print("top failure reasons:")
        for r in data["top_failures"]:
            print(f"  {r['count']:>6}  {r['reason']}")
    if data["depth_hourly"]:
        print("queue depth per hour:")
        for d in data["depth_hourly"]:
            print(f"  {_when(d['hour'])}  {d['depth']}")
    return EX_OK


def cmd_send(cfg: Config, args: argparse.Namespace) -> int:
    from .client import Client
    from .message import Email

    send_after = _send_after(args)
    if args.file is not None:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        email = Email.from_bytes(raw, sender=args.sender, recipients=args.to or None,
                                 priority=args.priority)
    else:
        if not args.sender:
            raise UsageError("send needs --from (or a message FILE, or - for stdin)")
        text = Path(args.text_file).read_text() if args.text_file else args.text
        html = Path(args.html_file).read_text() if args.html_file else None
        email = Email(sender=args.sender, to=args.to, cc=args.cc, bcc=args.bcc, subject=args.subject,
                      text=text, html=html, priority=args.priority)
        for path in args.attach:
            email.attach_file(path)
    client = Client(cfg)
    try:
        print(client.enqueue(email, send_after=send_after))
    finally:
        client.close()
    return EX_OK


def cmd_check_config(cfg: Config, args: argparse.Namespace) -> int:
    from .stores import describe, engine

    where = cfg.source or "embedded defaults"
    engine(cfg.server.database)  # a missing driver or a dsn that does not parse: 78, as `run` says it
    print(f"configuration OK ({where}): relay {cfg.server.smtp.relay}, spool {cfg.queue.path}, "
          f"store {describe(cfg.server.database)}")
    if args.connect:
        from .stores import check_connect

        print(check_connect(cfg.server.database))
    return EX_OK


def cmd_migrate(cfg: Config, args: argparse.Namespace) -> int:
    from .stores.migrate import run

    print(run(args.source, cfg.server.database))
    return EX_OK


def cmd_demo(cfg: Config, args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo()


def cmd_sendmail(cfg: Config, args: argparse.Namespace) -> int:
    from .sendmail import sendmail

    return sendmail(cfg, args.sendmail_args)


# -- helpers -----------------------------------------------------------------------


class _store:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def __enter__(self) -> Store:
        self.store = open_store(self.cfg.server.database)
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()


def _duration(flag: str, value: str) -> float:
    try:
        return configmod.parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _send_after(args: argparse.Namespace) -> float:
    if args.at and args.delay:
        raise UsageError("give --at or --in, not both")
    if args.delay:
        return time.time() + _duration("--in", args.delay)
    if args.at:
        try:
            return datetime.fromisoformat(args.at).timestamp()
        except ValueError:
            raise UsageError(f"--at: not an ISO 8601 time: {args.at!r}") from None
    return 0.0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="configuration file (default: $MAILMAND_CONFIG, ./mailmand.yaml, "
                             "/etc/mailmand/mailmand.yaml)")
    p = argparse.ArgumentParser(prog="mailmand", parents=[common],
                                description="A mail queue daemon: applications enqueue, mailmand delivers.")
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("--once", action="store_true",
                   help="ingest everything, dispatch everything due, print a summary, exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, fn: Callable[[Config, argparse.Namespace], int], help: str,
            json_flag: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=help, description=help)
        sp.set_defaults(fn=fn)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print JSON")
        return sp

    add("run", cmd_run, "run the daemon in the foreground (the default)").add_argument(
        "--once", action="store_true", help="as mailmand --once")
    add("status", cmd_status, "counts per status, spool backlog, quarantine, oldest due, next send", True)
    sp = add("list", cmd_list, "list messages, newest first", True)
    sp.add_argument("--status", choices=[s.value for s in Status])
    sp.add_argument("--limit", type=int, default=50)
    add("show", cmd_show, "a message's envelope, status, attempts and recipients", True).add_argument("id")
    add("cancel", cmd_cancel, "cancel a queued, deferred or scheduled message").add_argument("id")
    sp = add("retry", cmd_retry, "re-queue a failed or expired message with fresh attempts")
    sp.add_argument("id", nargs="?")
    sp.add_argument("--failed", action="store_true", help="every failed message")
    add("purge", cmd_purge, "delete finished mail (sent, failed, expired, cancelled)").add_argument(
        "--older-than", metavar="DURATION", help="default: the configured retention")
    add("stats", cmd_stats, "delivery counts, latency percentiles, failure reasons, depth", True
        ).add_argument("--since", default="24h", metavar="DURATION")
    sp = add("send", cmd_send, "queue one message from flags, or from an RFC 5322 FILE (- for stdin)")
    sp.add_argument("file", nargs="?", metavar="FILE")
    sp.add_argument("--from", dest="sender")
    sp.add_argument("--to", action="append", default=[])
    sp.add_argument("--cc", action="append", default=[])
    sp.add_argument("--bcc", action="append", default=[])
    sp.add_argument("--subject", default="")
    body = sp.add_mutually_exclusive_group()
    body.add_argument("--text")
    body.add_argument("--text-file", metavar="PATH")
    sp.add_argument("--html-file", metavar="PATH")
    sp.add_argument("--attach", action="append", default=[], metavar="FILE")
    sp.add_argument("--at", metavar="ISO8601")
    sp.add_argument("--in", dest="delay", metavar="DURATION")
    sp.add_argument("--priority", type=int, default=0)
    add("check-config", cmd_check_config, "validate the configuration and exit 0, or 78").add_argument(
        "--connect", action="store_true", help="also open the store (connect to the database)")
    add("migrate", cmd_migrate, "copy an SQLite store into the configured store (stop the daemon first)"
        ).add_argument("--from", dest="source", metavar="PATH", required=True, help="the SQLite database file")
    add("demo", cmd_demo, "show the whole pipeline on a loopback SMTP server")
    add("sendmail", cmd_sendmail, "sendmail-compatible: reads a message on stdin; "
        "-t (recipients from headers), -i, -f SENDER, -F NAME, RECIPIENT...").set_defaults(sendmail_args=[])
    return p


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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    tail: list[str] = []
    at = _command_index(argv)
    if at is not None and argv[at] == "sendmail":  # sendmail's own flags (-t -i -f -F …) pass untouched
        argv, tail = argv[: at + 1], argv[at + 1:]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help/--version exit 0
        return int(exc.code or 0)
    if tail:
        args.sendmail_args = tail
    fn = getattr(args, "fn", cmd_run)
    if fn is cmd_run:
        args.once = getattr(args, "once", False)
    # Only the daemon (and check-config, which vouches for it) needs the relay's secrets, and
    # only they report the file's warnings (ignored keys): producers run too often to repeat them.
    daemon_side = fn in (cmd_run, cmd_check_config, cmd_migrate)
    warnings: list[str] = []
    try:
        cfg = configmod.load(getattr(args, "config", None), producer=not daemon_side, warnings=warnings)
        if not daemon_side and fn not in (cmd_send, cmd_sendmail) and cfg.server.database.engine == "postgres":
            cfg = configmod.load(getattr(args, "config", None))  # a store command on a shared store needs the dsn
    except MailmandError as exc:
        print(f"mailmand: configuration error: {exc}", file=sys.stderr)
        return exc.exit_code
    level = os.environ.get("MAILMAND_LOG_LEVEL", cfg.server.log_level).upper()
    setup_logging(level if level in configmod.LOG_LEVELS else cfg.server.log_level)
    for warning in warnings if daemon_side else ():
        logging.getLogger("mailmand.config").warning("%s", warning)
    try:
        return fn(cfg, args)
    except MailmandError as exc:
        print(f"mailmand: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"mailmand: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EX_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or an input we did not foresee: still one line, not a traceback
        log.debug("unexpected error", exc_info=True)
        print(f"mailmand: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EX_ERROR


def sendmail_main() -> int:
    """The `mailmand-sendmail` console script (link it as /usr/sbin/sendmail)."""
    return main(["sendmail", *sys.argv[1:]])


__all__ = ["main", "sendmail_main"]
