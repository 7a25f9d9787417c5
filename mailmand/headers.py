"""Addresses and header fields, checked strictly: the bottom of the producer side.

Every way in refuses bad input with the same words because every check is
here: composing (message.py), a raw message (raw.py) and the record's one
validation (record.py, which ingest runs too) call these functions. Plain
input (`local@domain`, `Name <local@domain>`, printable ASCII) is checked
with regular expressions; anything else (encoded words, quoted names,
comments, groups, non-ASCII) with the standard library's `email` package,
imported only then (docs/internals.md: the producer's fast path).

An address is refused, never mended: a space inside it, an unbalanced `<`,
two addresses run together, a character an SMTP envelope cannot carry.
A mailbox is (display name, local part, domain), the domain in its ASCII
(IDNA) form, or "" for a bare local name where the caller allows one.
"""

from __future__ import annotations

import os
import re
import time

from .errors import HeaderInjection, InvalidAddress, InvalidMessage

TYPE_CHECKING = False
if TYPE_CHECKING:
    Mailbox = tuple[str, str, str]  # (display name, local part, domain)
    Field = tuple[str, str, bytes]  # (name, unfolded value, the field's lines as given, CRLF-ended)

MAX_LINE = 78  # policy.SMTP's max_line_length: longer lines are folded or encoded (RFC 5322 §2.1.1)
MAX_LINE_LENGTH = 998  # a line's hard limit, CRLF not counted (RFC 5322 §2.1.1)
MAX_LOCAL = 64  # octets in a local part (RFC 5321 §4.5.3.1.1)
MAX_DOMAIN = 253  # octets in a domain name (RFC 1035 §2.3.4, less the root's dot)
# RFC 5322 §3.6.8: field-name = 1*ftext, printable US-ASCII except ":".
FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
# The boundaries of str.splitlines(): the email package folds a header at
# each of them, so any one inside a value could start a header of its own.
LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
BREAKS_AND_NUL = LINE_BREAKS | {"\0"}
# Header fields that hold address lists: parsed strictly wherever they appear.
ADDRESS_FIELDS = frozenset({"from", "to", "cc", "bcc", "reply-to", "sender"})
# A bare local name that may get a domain: an RFC 5322 dot-atom (or UTF-8 text, RFC 6531).
LOCAL_NAME = re.compile(r"[^\x00-\x20\x7f\"(),:;<>@\[\\\]]+")

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = rf"{_LABEL}(?:\.{_LABEL})*"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
# `local@domain` or `Name Words <local@domain>`: ASCII, a dot-atom local part, a host name, a
# display name of atoms separated by single spaces (what Email(...) writes without the email package).
PLAIN_ADDRESS = re.compile(rf"(?:({_ATEXT}(?: {_ATEXT})*) <)?({_DOT_ATOM})@({_HOSTNAME})(?(1)>)")
# A display name the email package writes as it is (neither quoted nor encoded): atoms, single
# spaces, and nothing a reader would take for an encoded word.
PLAIN_NAME = re.compile(rf"(?!.*=\?)(?:{_ATEXT}(?: {_ATEXT})*)?")
_QUOTED = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*"'
_PHRASE = rf"(?:{_ATEXT}|{_QUOTED})(?:[ \t]+(?:{_ATEXT}|{_QUOTED}))*"
# One address of a header as written: `local@domain`, `Phrase <local@domain>` or `<local@domain>`
# (a name-addr with no display name, as smtp-source and many scripts write; the spec in group 1 or 2).
_SPEC_IN_LIST = re.compile(
    rf"[ \t]*(?:({_DOT_ATOM}@{_HOSTNAME})|(?:{_PHRASE}[ \t]*)?<({_DOT_ATOM}@{_HOSTNAME})>)[ \t]*")
# The address of MAIL FROM:/RCPT TO: as nearly every client writes it, `<local@domain>` in ASCII,
# then the parameters (no comment: RFC 5321 has none, the email package would drop one).
ENVELOPE_PATH = re.compile(rf"[ \t]*<({_DOT_ATOM}@{_HOSTNAME})>[ \t]*([^()]*)")
# A local part an envelope carries: a dot-atom of ASCII atext or UTF-8 (RFC 6531). Quoted
# local parts are refused: relays and mailboxes disagree about them.
_LOCAL_ATOM = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+"
_LOCAL = re.compile(rf"{_LOCAL_ATOM}(?:\.{_LOCAL_ATOM})*")
_DOMAIN = re.compile(rf"{_HOSTNAME}|\[[\x21-\x5a\x5e-\x7e]+\]")  # a host name or an address literal
# What the email package reports about an address list that still means one thing.
_HARMLESS = frozenset({
    "period in 'phrase'",  # J. Smith <j@example.com>
    "empty element in address-list",  # a@example.com,,b@example.com
    "address-list entry with no content",
    "local-part contains non-ASCII characters)",  # a UTF-8 local part: SMTPUTF8 (RFC 6531)
})
_NO_DOMAIN = "addr-spec local part with no domain"
_ENCODED_WORD = "=?"
# A field of printable ASCII in CRLF lines (its name, its unfolded value, its lines), and a head of them.
_PLAIN_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+):[ \t]*([\t\x20-\x7e]*\r\n(?:[ \t][\t\x20-\x7e]*\r\n)*)")
_PLAIN_HEAD = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:[\t\x20-\x7e]*\r\n(?:[ \t][\t\x20-\x7e]*\r\n)*)+")
_WORD = re.compile(r"=\?[^?]*\?[qQbB]\?.*?\?=")  # email.header's own pattern for an encoded word
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def as_text(value: object) -> str | None:
    """`value` as a str when it is one, or a lazy string (Django's gettext_lazy,
    which every Django form and template hands over); else None."""
    if isinstance(value, str):
        return value
    # Django's lazy proxies derive from django.utils.functional.Promise: found by name,
    # so that nothing here imports Django.
    if any(c.__name__ == "Promise" and c.__module__ == "django.utils.functional" for c in type(value).__mro__):
        return str(value)
    return None


# -- header values -------------------------------------------------------------------------


def check_text(field: str, value: str) -> str:
    """`value` when it cannot start a header of its own: no line break or NUL, and no
    RFC 2047 encoded word that decodes to one (the email package and mail readers decode
    them, and "=?utf-8?q?a=0D=0ABcc:_x?=" would become a Bcc line)."""
    if not BREAKS_AND_NUL.isdisjoint(value):
        raise HeaderInjection(field, value, "a line break (CR, LF or another) or NUL is not allowed in a header value")
    if _ENCODED_WORD in value and not BREAKS_AND_NUL.isdisjoint(decoded_words(value)):
        raise HeaderInjection(field, value, "an encoded word (RFC 2047) in it decodes to a line break or NUL")
    return value


def decoded_words(value: str) -> str:
    """Every RFC 2047 encoded word in `value`, wherever it sits, decoded as a lenient mail
    reader decodes it, one by one (a word that does not decode hides none of the others)."""
    from email.errors import HeaderParseError
    from email.header import decode_header

    out = []
    for word in _WORD.findall(value):
        try:
            parts = decode_header(word)
        except (HeaderParseError, ValueError, LookupError):
            continue  # stays as written: a reader shows it encoded
        for part, charset in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            try:
                out.append(part.decode(charset or "ascii", "replace"))
            except LookupError:  # a charset Python does not know: its bytes, as Latin-1
                out.append(part.decode("latin-1"))
    return "".join(out)


# -- addresses -----------------------------------------------------------------------------


def idna_domain(domain: str, field: str, original: object) -> str:
    """A Unicode domain in its ASCII (punycode) form, as SMTP and headers carry it."""
    if domain.isascii():
        return domain
    import idna

    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise InvalidAddress(field, original, f"not a valid internationalized domain name ({exc})") from None


def envelope_problem(address: str) -> str | None:
    """Why `address` cannot go in an SMTP envelope (MAIL FROM, RCPT TO), or None."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "expected local@domain"
    if not _LOCAL.fullmatch(local):
        return "the local part is not a dot-atom (a space, a quote or another character an envelope cannot carry)"
    if len(local.encode("utf-8")) > MAX_LOCAL:
        return f"the local part is longer than {MAX_LOCAL} octets"
    if not _DOMAIN.fullmatch(domain) or len(domain) > MAX_DOMAIN:
        return "the domain is not a host name (letters, digits and hyphens in dot-separated labels)"
    return None


def mailbox(field: str, original: object, display: str, local: str, domain: str, bare: bool = False) -> Mailbox:
    """One parsed address, checked as an envelope will carry it: the domain in ASCII."""
    if not domain:
        if bare and LOCAL_NAME.fullmatch(local):
            return display, local, ""
        raise InvalidAddress(field, original, "not a valid email address (no domain)")
    domain = idna_domain(domain, field, original)
    problem = envelope_problem(f"{local}@{domain}")
    if problem:
        raise InvalidAddress(field, original, f"not a valid email address ({problem})")
    return display, local, domain


def plain_addresses(value: str, single: bool = False) -> list[Mailbox] | None:
    """(display name, local part, domain) of each address in `value` (comma-separated,
    or exactly one when `single`) when every one is plain; else None."""
    if _ENCODED_WORD in value:
        return None
    found = []
    for part in [value] if single else value.split(","):
        m = PLAIN_ADDRESS.fullmatch(part.strip(" "))
        if m is None:
            return None
        found.append((m.group(1) or "", m.group(2), m.group(3)))
    return found


def addresses(field: str, value: str, *, single: bool = False, bare: bool = False) -> list[Mailbox]:
    """The addresses of a header value or an argument, parsed strictly, or InvalidAddress naming
    `field`. `bare` lets a local name with no domain through (with domain "")."""
    check_text(field, value)
    plain = plain_addresses(value, single)
    found = _parsed(field, value, bare) if plain is None else [mailbox(field, value, *a) for a in plain]
    if single and len(found) != 1:
        raise InvalidAddress(field, value, "expected one address" if found else "not a valid email address")
    return found


def _parsed(field: str, value: str, bare: bool) -> list[Mailbox]:
    """The email package's strict reading: any defect but a harmless one refuses the value."""
    from email.errors import HeaderParseError
    from email.policy import SMTP

    try:
        header = SMTP.header_factory("To", value)
        found = list(header.addresses)  # type: ignore[attr-defined]
    except (HeaderParseError, ValueError, IndexError, AttributeError, TypeError):
        raise InvalidAddress(field, value, "not a valid email address") from None
    for defect in header.defects:
        text = str(defect)
        if text not in _HARMLESS and text != _NO_DOMAIN:  # (an address with no domain: below)
            raise InvalidAddress(field, value, f"not a valid email address ({text})")
    out = []
    for a in found:
        local, domain = a.username, a.domain
        if not domain:  # a bare name, taken when allowed and plainly written
            if not (bare and local in value and LOCAL_NAME.fullmatch(local) and _LOCAL.fullmatch(local)):
                raise InvalidAddress(field, value, "not a valid email address (no domain)")
        # The address as written, in one piece: the parser drops a space or a comment
        # inside it ("ann@exa mple.com" would become ann@exa), and so would deliver elsewhere.
        elif f"{local}@{domain}" not in value:
            raise InvalidAddress(field, value, "not a valid email address (a space or a comment inside it)")
        elif not _LOCAL.fullmatch(local):
            raise InvalidAddress(field, value, f"not a valid email address ({envelope_problem(f'{local}@x')})")
        check_text(field, a.display_name)
        out.append(mailbox(field, value, a.display_name, local, domain, bare))
    return out


def header_specs(value: str) -> list[str] | None:
    """The addr-specs of a header's address list when every address is plainly
    written (`local@domain`, `Phrase <local@domain>` or `<local@domain>`, ASCII); else None."""
    specs, pos = [], 0
    while True:
        m = _SPEC_IN_LIST.match(value, pos)
        if m is None:
            return None
        specs.append(m.group(1) or m.group(2))
        pos = m.end()
        if pos == len(value):
            return specs
        if value[pos] != ",":
            return None
        pos += 1


# -- a message's head ----------------------------------------------------------------------


def split_head(data: bytes) -> tuple[list[Field], int]:
    """The header fields at the start of `data` and the offset where its body starts.

    The head ends at the first empty line (the body follows it) or at the first line
    that is neither a field nor a continuation (the body starts there), as the email
    package and Postfix read it. Refuses header bytes that are not UTF-8, a CR that
    does not end a line and a line over 998 characters, naming the line or the field."""
    crlf, lf = data.find(b"\r\n\r\n"), data.find(b"\n\n")
    end = min((i for i in (crlf, lf) if i >= 0), default=len(data))
    if end == crlf and _PLAIN_HEAD.fullmatch(data, 0, end + 2):
        # Printable ASCII in CRLF lines, each a field or a continuation: what every
        # composed message and most others are. The same fields as the loop below finds.
        fields = [(m[1].decode("ascii"), m[2].replace(b"\r\n", b"").decode("ascii"), m[0])
                  for m in _PLAIN_FIELD.finditer(data, 0, end + 2)]
        if all(len(line) <= MAX_LINE_LENGTH for line in data[:end].split(b"\r\n")):
            return fields, end + 4
    fields = []
    pos = 0
    for number, raw_line in enumerate(data[:end].split(b"\n"), start=1):
        line = raw_line[:-1] if raw_line.endswith(b"\r") else raw_line
        if not line:  # an empty line: the body follows it
            return fields, pos + len(raw_line) + 1
        text = _line_text(line, number)
        if line[0] in (0x20, 0x09):  # a continuation of the field before
            if not fields:
                raise InvalidMessage("header line 1", line[:60], "a continuation line with no field before it")
            name, value, lines = fields[-1]
            fields[-1] = (name, value + text, lines + line + b"\r\n")
        else:
            name, colon, value = text.partition(":")
            if not colon or not FIELD_NAME.fullmatch(name):
                return fields, pos  # not a field: the body starts here
            fields.append((name, value.lstrip(" \t"), line + b"\r\n"))
        if len(line) > MAX_LINE_LENGTH:
            raise InvalidMessage(f"header {name}", text[:60],
                                 f"a line longer than {MAX_LINE_LENGTH} characters (RFC 5322 §2.1.1)")
        pos += len(raw_line) + 1
    return fields, min(len(data), end + (4 if end == crlf else 2))


def _line_text(line: bytes, number: int) -> str:
    if b"\r" in line:
        raise HeaderInjection(f"header line {number}", line[:60], "a CR that does not end a line")
    if line.isascii():
        return line.decode("ascii")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidMessage(f"header line {number}", line[:60],
                             "holds bytes that are not UTF-8: write non-ASCII header text "
                             "as UTF-8 or as RFC 2047 encoded words") from None


def check_field(name: str, value: str, *, bare: bool = False) -> list[Mailbox] | None:
    """Refuse a header field that a relay or a mail reader could take for more than it
    says; the addresses of an address field (`bare`: local names allowed), else None."""
    if _ENCODED_WORD in value or not BREAKS_AND_NUL.isdisjoint(value):  # (ingest checks every field: kept cheap)
        check_text(f"header {name}", value)
    if not value.isprintable() and any(c < " " and c != "\t" or c == "\x7f" for c in value):
        raise InvalidMessage(f"header {name}", value, "a control character is not allowed in a header")
    if name.lower() not in ADDRESS_FIELDS:
        return None
    specs = header_specs(value) if value.isascii() else None
    if specs is not None:  # plainly written: each spec is a valid envelope address as it stands
        for spec in specs:
            if len(spec.partition("@")[0]) > MAX_LOCAL or len(spec) - spec.index("@") - 1 > MAX_DOMAIN:
                raise InvalidAddress(f"header {name}", value,
                                     f"not a valid email address ({envelope_problem(spec)})")
        return [("", *spec.rsplit("@", 1)) for spec in specs]  # type: ignore[misc]
    return _parsed(f"header {name}", value, bare) if value.strip(" \t") else []


def check_head(raw: bytes) -> list[Field]:
    """The head of a message as it will go out, refused when it could not: a field or an
    address a relay or a reader would take for something else, a Bcc field (it would show
    its recipients to everyone), no From. Returns the fields."""
    fields, _ = split_head(raw)
    senders = 0
    for name, value, _ in fields:
        found = check_field(name, value)
        low = name.lower()
        if low == "bcc":
            raise InvalidMessage("header Bcc", value[:60], "a Bcc field would show its recipients to everyone "
                                 "(the envelope carries them)")
        if low == "from" and found:
            senders += 1
    if not senders:
        raise InvalidMessage("header From", None, "a message needs a From field with an address (RFC 5322 §3.6)")
    return fields


# -- fields mailmand writes ----------------------------------------------------------------


def msgid(domain: str, now: float) -> str:
    """email.utils.make_msgid(domain=domain), with os.urandom for `random.getrandbits(64)`."""
    return f"<{int(now * 100)}.{os.getpid()}.{int.from_bytes(os.urandom(8), 'big')}@{domain}>"


def formatdate(now: float) -> str:
    """email.utils.formatdate(now, localtime=True): RFC 5322 §3.3, local time and offset."""
    t = time.localtime(now)
    offset = t.tm_gmtoff // 60
    hours, minutes = divmod(abs(offset), 60)
    zone = f"{'-' if offset < 0 else '+'}{hours:02d}{minutes:02d}"
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {zone}")
