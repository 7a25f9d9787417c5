"""`mailmand send`: queue one message from flags, a file, or stdin."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from ..config.values import parse_duration
from ..errors import InvalidMessage, UsageError
from .common import tags

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import Config


def _split(words: list[str], parse: Callable[[str], float]) -> tuple[float, list[str]]:
    """`--in 5 minutes FILE`: the value is the longest run of words that reads as one
    (`5 minutes`, `1 hour 30 minutes`, `2026-11-30 09:00`); what follows is left over."""
    for n in range(len(words), 0, -1):
        try:
            return parse(" ".join(words[:n])), words[n:]
        except ValueError:
            continue
    raise ValueError(" ".join(words))


def _send_after(args: argparse.Namespace) -> float:
    """The send time from --at or --in; a word after either value that is not part of
    it is the message FILE (argparse gives both flags every word up to the next flag)."""
    if args.at and args.delay:
        raise UsageError("give --at or --in, not both")
    if not (args.at or args.delay):
        return 0.0
    flag, words = ("--in", args.delay) if args.delay else ("--at", args.at)
    expected = ("a duration such as 90s, 5m, 1h30m, 2d or '5 minutes'" if args.delay
                else "an ISO 8601 time such as 2026-11-30T09:00 or '2026-11-30 09:00+01:00'")
    try:
        if args.delay:
            seconds, rest = _split(words, lambda text: parse_duration(text, words=True))
            when = time.time() + seconds
        else:
            when, rest = _split(words, lambda text: datetime.fromisoformat(text).timestamp())
    except ValueError:
        raise UsageError(f"{flag}: expected {expected}, got {' '.join(words)!r}") from None
    # What is left is the message FILE, if it is one; else the value did not read.
    if rest and (len(rest) > 1 or args.file is not None or (rest[0] != "-" and not Path(rest[0]).exists())):
        raise UsageError(f"{flag}: expected {expected}, got {' '.join(words)!r}")
    if rest:
        args.file = rest[0]
    return when


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


def _qualified(names: list[str], domain: Callable[[], str]) -> list[str]:
    """A bare local name (`root`) gets the domain it gets on every other way in."""
    return [f"{name}@{domain()}" if re.fullmatch(r"[A-Za-z0-9._+-]+", name) else name for name in names]


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
        domain = client.local_domain
        email = Email(sender=_qualified([args.sender], domain)[0], to=_qualified(args.to, domain),
                      cc=_qualified(args.cc, domain), bcc=_qualified(args.bcc, domain), subject=args.subject,
                      text=_body(args), html=html, priority=args.priority, tags=tagged)
        for path in args.attach:
            email.attach_file(path)
    try:
        print(client.enqueue(email, send_after=send_after))
    finally:
        client.close()
    return 0
