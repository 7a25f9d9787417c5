"""SMTP on the wire, without decisions: replies parsed from lines, commands and
message bodies encoded as bytes. What the bytes mean is protocol.py's business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_REPLY_LINE = 8192  # well past RFC 5321 §4.5.3.1.5's 512 octets: be lenient in what we read
MAX_REPLY_LINES = 1000  # a multi-line reply longer than this is a broken peer

END_OF_DATA = b".\r\n"
RSET = b"RSET\r\n"
DATA = b"DATA\r\n"


@dataclass(frozen=True)
class Reply:
    code: int
    text: str  # the whole reply on one line, code included: "550 5.1.1 no such user"


class ProtocolError(Exception):
    """The relay sent something that is not an SMTP reply."""


class ReplyParser:
    """Reply lines in, whole replies out (RFC 5321 §4.2: "250-..." continues, "250 ..." ends)."""

    def __init__(self) -> None:
        self._code: int | None = None
        self._texts: list[str] = []

    def feed(self, line: bytes) -> Reply | None:
        """One line, with or without its CRLF; the Reply once its last line is in."""
        if self._code is None and line[3:4] == b" " and line[:3].isdigit():  # most replies: one line
            code = int(line[:3])
            text = " ".join(line[4:].decode("utf-8", "replace").split())
            return Reply(code, f"{code} {text}" if text else str(code))
        if len(line) < 3 or not line[:3].isdigit():
            raise ProtocolError(f"not an SMTP reply: {line[:80]!r}")
        code = int(line[:3])
        if self._code is not None and code != self._code:
            raise ProtocolError(f"reply code changed within a multi-line reply: {line[:80]!r}")
        self._code = code
        self._texts.append(line[4:].decode("utf-8", "replace").strip())
        if len(self._texts) > MAX_REPLY_LINES:
            raise ProtocolError("multi-line reply too long")
        if line[3:4] == b"-":
            return None
        text = " ".join(" ".join(self._texts).split())
        self._code, self._texts = None, []
        return Reply(code, f"{code} {text}".strip())


_EOL = re.compile(rb"\r\n|\n|\r(?!\n)")  # any line ending: the wire wants CRLF (RFC 5321 §2.3.8)


def canonical(raw: bytes) -> bytes:
    """The message with CRLF line ends, ending in one: what BDAT carries as is
    (RFC 3030 §2: the octets are counted, never dot-stuffed)."""
    # Composed mail is CRLF already: counting is much cheaper than a regex over every body.
    crlf = raw.count(b"\r\n")
    body = raw if raw.count(b"\n") == crlf == raw.count(b"\r") else _EOL.sub(b"\r\n", raw)
    return body if body.endswith(b"\r\n") else body + b"\r\n"


def encode_body(raw: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, dots stuffed, end of data appended."""
    body = canonical(raw)
    # A leading dot is doubled (RFC 5321 §4.5.2); every line now starts at the start or after a CRLF.
    return (b"." if body.startswith(b".") else b"") + body.replace(b"\r\n.", b"\r\n..") + END_OF_DATA


def bdat_last(raw: bytes) -> tuple[bytes, int]:
    """The whole message as one last chunk (RFC 3030 §2: `BDAT <size> LAST`, then
    exactly <size> octets), and its size."""
    body = canonical(raw)
    return b"BDAT %d LAST\r\n" % len(body) + body, len(body)


def command(verb: str, address: str, options: tuple[str, ...] = ()) -> bytes:
    line = f"{verb}:<{address}>"
    if options:
        line += " " + " ".join(options)
    return line.encode("utf-8") + b"\r\n"  # UTF-8 only reaches the wire with SMTPUTF8
