"""`mailmand send`: queue one message from flags, a file, or stdin."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from ..errors import InvalidMessage, UsageError
from .common import duration, tags

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import Config


def _send_after(args: argparse.Namespace) -> float:
    if args.at and args.delay:
        raise UsageError("give --at or --in, not both")
    if args.delay:
        return time.time() + duration("--in", args.delay)
    if args.at:
        try:
            return datetime.fromisoformat(args.at).timestamp()
        except ValueError:
            raise UsageError(f"--at: not an ISO 8601 time: {args.at!r}") from None
    return 0.0


def _text(field: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(field, data[max(0, exc.start - 10):exc.start + 10],
                             f"not UTF-8 text (byte {exc.start})") from None


def _body(args: argparse.Namespace) -> str | None:
    """--text, --text-file (`-` = stdin), or stdin when it is not a terminal
    and no body was given at all (`echo hi | mailmand send ...`)."""
    if args.text is not None:
        return str(args.text)
    if args.text_file == "-":
        return _text("--text-file -", sys.stdin.buffer.read())
    if args.text_file:
        return _text(f"--text-file {args.text_file}", Path(args.text_file).read_bytes())
    if args.html_file is None and sys.stdin is not None and not sys.stdin.isatty():
        return _text("stdin", sys.stdin.buffer.read())
    return None


def cmd_send(cfg: Config, args: argparse.Namespace) -> int:
    from ..client import Client
    from ..message import Email
    from ..raw import RawMessage

    send_after = _send_after(args)
    tagged = tags(args.tag)
    client = Client(cfg)
    email: Email | RawMessage
    if args.file is not None:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        email = RawMessage.parse(raw, sender=args.sender, recipients=args.to or None, priority=args.priority,
                                 local_domain=client.local_domain, tags=tagged)
    else:
        if not args.sender:
            raise UsageError("send needs --from (or a message FILE, or - for stdin)")
        if not (args.to or args.cc or args.bcc):
            raise UsageError("send needs --to, --cc or --bcc (or a message FILE whose headers name them)")
        html = _text(f"--html-file {args.html_file}", Path(args.html_file).read_bytes()) if args.html_file else None
        email = Email(sender=args.sender, to=args.to, cc=args.cc, bcc=args.bcc, subject=args.subject,
                      text=_body(args), html=html, priority=args.priority, tags=tagged)
        for path in args.attach:
            email.attach_file(path)
    try:
        print(client.enqueue(email, send_after=send_after))
    finally:
        client.close()
    return 0
