"""A sendmail(8)-compatible entry point, so cron, PHP's mail(), git and
logwatch can hand mail to mailmand. Exit codes follow sysexits.h."""

from __future__ import annotations

import getpass
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .client import Client
from .config import Config
from .errors import ConfigError, InvalidMessage, MailmandError, QueueError, SpoolPermissionError
from .message import Email

# Options sendmail accepts that mean nothing for a queue: taken and ignored.
IGNORED_FLAGS = {"-bm", "-v", "-U", "-m", "-n", "-Am", "-Ac"}


class SendmailUsage(Exception):
    pass


@dataclass
class Options:
    t: bool = False  # recipients from the headers
    i: bool = False  # a lone dot does not end the message
    f: str | None = None  # envelope sender
    F: str | None = None  # the sender's full name  # noqa: N815


def parse_args(argv: Sequence[str]) -> tuple[Options, list[str]]:
    opts = Options()
    recipients: list[str] = []
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--":
            recipients.extend(args)
            break
        if a == "-t":
            opts.t = True
        elif a in ("-i", "-oi"):
            opts.i = True
        elif a[:2] in ("-f", "-F", "-r"):
            value = a[2:] or (args.pop(0) if args else None)
            if value is None:
                raise SendmailUsage(f"option {a} needs a value")
            if a[:2] == "-F":
                opts.F = value
            else:
                opts.f = value
        elif a in ("-B", "-N", "-R", "-V", "-X"):
            args = args[1:]  # ignored options that take a separate value
        elif a[:2] in ("-o", "-B", "-N", "-R", "-V", "-X") or a in IGNORED_FLAGS:
            pass
        elif a.startswith("-"):
            raise SendmailUsage(f"unsupported option {a}")
        else:
            recipients.append(a)
    return opts, recipients


def _read_message(dot_ends: bool) -> bytes:
    data = sys.stdin.buffer.read()
    if not dot_ends:
        return data
    # Without -i, a line holding a single dot ends the message.
    lines = data.splitlines(keepends=True)
    for n, line in enumerate(lines):
        if line.rstrip(b"\r\n") == b".":
            return b"".join(lines[:n])
    return data


def sendmail(cfg: Config, argv: Sequence[str]) -> int:
    try:
        opts, recipients = parse_args(argv)
    except SendmailUsage as exc:
        print(f"sendmail: {exc}", file=sys.stderr)
        return os.EX_USAGE
    if not opts.t and not recipients:
        print("sendmail: no recipients given (use -t to take them from the headers)", file=sys.stderr)
        return os.EX_USAGE
    raw = _read_message(not opts.i)
    try:
        email = Email.from_bytes(
            raw, sender=opts.f, recipients=None if opts.t else recipients,
            extra_recipients=recipients if opts.t else (), from_name=opts.F,
            default_sender=f"{getpass.getuser()}@{socket.getfqdn()}", local_domain=socket.getfqdn())
        client = Client(cfg)
        try:
            client.enqueue(email)
        finally:
            client.close()
    except MailmandError as exc:
        print(f"sendmail: {exc}", file=sys.stderr)
        return _sysexit(exc)
    return os.EX_OK


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
    return os.EX_SOFTWARE


__all__ = ["sendmail", "parse_args"]
