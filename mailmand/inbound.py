"""A ready-made message handed over whole (sendmail, `mailmand send FILE`).

What scripts actually write is taken as sendmail, Postfix, msmtp and
nullmailer take it: a message with no header at all is a body; `root` is a
local name that an alias or the default domain turns into an address (in
the envelope and in the From/To/Cc headers alike); `-f '<>'` is the null
sender of a bounce. Header bytes that are not UTF-8 are refused with a
sentence, never with a UnicodeEncodeError at flattening.
"""

from __future__ import annotations

import re
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formatdate, make_msgid

from .errors import InvalidAddress, InvalidMessage
from .message import _idna, _no_crlf
from .stdemail import SMTP_POLICY, parse_address, parse_addresses

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .message import Email

NULL_SENDER = ("", "<>")
# A bare local name that may get a domain: an RFC 5322 dot-atom (or UTF-8 text, RFC 6531).
LOCAL_NAME = re.compile(r"[^\x00-\x20\x7f\"(),:;<>@\[\\\]]+")
ADDRESS_HEADERS = ("From", "To", "Cc", "Bcc", "Reply-To", "Sender")


class _Names:
    """Bare names to addresses: aliases for recipients, the default domain for everyone."""

    def __init__(self, domain: str | None, aliases: Mapping[str, Sequence[str]]) -> None:
        self.domain = domain
        self.aliases = {k.lower(): v for k, v in aliases.items()}

    def resolve(self, a: Address, field: str, alias: bool) -> list[Address]:
        if a.domain:
            return [Address(a.display_name, a.username, _idna(a.domain, field, a.addr_spec))]
        targets = (self.aliases.get(a.username.lower()) or self.aliases.get("default")) if alias else None
        if targets:
            return [Address(a.display_name, t.username, t.domain)
                    for t in (parse_address(f"{field} (alias of {a.username})", x) for x in targets)]
        if not LOCAL_NAME.fullmatch(a.username):
            raise InvalidAddress(field, a.username, "not a valid email address")
        if not self.domain:
            raise InvalidAddress(field, a.addr_spec, "not a valid email address (no domain)")
        return [Address(a.display_name, a.username, self.domain)]

    def header(self, msg: EmailMessage, name: str, alias: bool) -> list[Address]:
        found = []
        for h in _headers(msg, name):
            for a in getattr(h, "addresses", ()):
                if not a.username:  # "undisclosed-recipients:;": a group with no one in it
                    continue
                found.extend(self.resolve(a, name.lower(), alias))
        return found

    def arg(self, value: str, field: str, alias: bool) -> list[Address]:
        """A command-line address: `root`, `ann@example.com`, `Ann <ann@example.com>`, or a list."""
        try:
            parsed = SMTP_POLICY.header_factory("To", _no_crlf(field, value))
            addresses = [a for a in parsed.addresses if a.username]  # type: ignore[attr-defined]
        except (IndexError, ValueError, AttributeError) as exc:  # the stdlib parser on input such as "<"
            if isinstance(exc, InvalidMessage):
                raise
            raise InvalidAddress(field, value, "not a valid email address") from None
        if not addresses:
            raise InvalidAddress(field, value, "not a valid email address")
        if all(a.domain for a in addresses):  # validated as the API validates it
            addresses = parse_addresses(field, value)
        return [r for a in addresses for r in self.resolve(a, field, alias)]


def _check_head(raw: bytes) -> bool:
    """Refuse header bytes that are not UTF-8, naming the line; True when the head is not ASCII."""
    end = min((i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0), default=len(raw))
    head = raw[:end]
    if head.isascii():
        return False
    for number, line in enumerate(head.splitlines(), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidMessage(f"header line {number}", line[:60],
                                 "holds bytes that are not UTF-8: write non-ASCII header text "
                                 "as UTF-8 or as RFC 2047 encoded words") from None
    return True


def _utf8_headers(msg: EmailMessage) -> None:
    """Headers that arrived as raw UTF-8 (RFC 6532), parsed back into text, so
    that they are flattened as encoded words (or as UTF-8 under SMTPUTF8)."""
    items = msg.items()
    if all(str(v).isascii() for _, v in items):
        return
    for name in {n for n, _ in items}:
        del msg[name]
    for name, value in items:
        text = str(value)
        if not text.isascii():  # undecoded bytes come back as surrogates: make them text
            text = text.encode("utf-8", "surrogateescape").decode("utf-8")
        msg[name] = _no_crlf(name, text)


def _body_only(raw: bytes) -> EmailMessage:
    """No header at all (`echo "disk is full" | sendmail root`): the whole input is the body."""
    msg = EmailMessage(policy=SMTP_POLICY)
    try:
        msg.set_content(raw.decode("utf-8"))
    except UnicodeDecodeError:  # keep the bytes as they came; say we do not know the charset
        msg.set_content(raw, "text", "plain", params={"charset": "unknown-8bit"})
    return msg


def parse_message(cls: type[Email], raw: bytes, *, sender: str | None, recipients: Sequence[str] | None,
                  extra_recipients: Sequence[str], from_name: str | None, default_sender: str | None,
                  local_domain: str | None, aliases: Mapping[str, Sequence[str]], priority: int,
                  idempotency_key: str | None) -> Email:
    if not isinstance(raw, bytes | bytearray):
        raise InvalidMessage("raw", type(raw).__name__, "expected bytes")
    raw = bytes(raw)
    msg = BytesParser(policy=SMTP_POLICY).parsebytes(raw)
    headerless = not msg.keys()
    if headerless:
        msg = _body_only(raw)
    elif _check_head(raw):
        _utf8_headers(msg)
    names = _Names(local_domain, aliases)

    null_sender = sender is not None and sender.strip() in NULL_SENDER
    if sender and not null_sender:
        envelope_from = names.arg(sender, "sender", alias=False)[0]
    else:
        header_from = names.header(msg, "From", alias=False)
        if header_from:
            envelope_from = header_from[0]
        elif default_sender:
            envelope_from = names.arg(default_sender, "sender", alias=False)[0]
        else:
            raise InvalidMessage("sender", None, "no sender: give -f or a From header")
    given = [a for r in (recipients or extra_recipients) for a in names.arg(r, "recipient", alias=True)]
    rcpt = given if recipients else [*names.header(msg, "To", True), *names.header(msg, "Cc", True),
                                     *names.header(msg, "Bcc", True), *given]
    e = cls(sender=envelope_from.addr_spec, bcc=[a.addr_spec for a in rcpt], priority=priority,
            idempotency_key=idempotency_key)
    if null_sender:
        e.envelope_from = ""
    del msg["Bcc"]
    # Bare names in the headers get the same addresses as the envelope.
    for name, alias in (("From", False), ("To", True), ("Cc", True), ("Reply-To", False), ("Sender", False)):
        values = [str(v) for v in _headers(msg, name)]
        if values and any(_bare(v) or not v.isascii() for v in values):
            resolved = names.header(msg, name, alias)
            del msg[name]
            if resolved:
                msg[name] = resolved
    if "From" not in msg:
        msg["From"] = Address(_no_crlf("from_name", from_name or ""), envelope_from.username, envelope_from.domain)
    if headerless and rcpt:
        msg["To"] = _unique(rcpt)
    if "Message-ID" not in msg:
        msg["Message-ID"] = make_msgid(domain=e.sender.domain)
    if "Date" not in msg:
        msg["Date"] = formatdate(localtime=True)
    if headerless:  # as a composed message has them: headers first, then the MIME ones
        for mime in ("Content-Type", "Content-Transfer-Encoding", "MIME-Version"):
            value = msg[mime]
            if value is not None:
                del msg[mime]
                msg[mime] = str(value)
    e._parsed = msg
    return e


def _headers(msg: EmailMessage, name: str) -> list[object]:
    """msg.get_all(name), but a header the stdlib's parser chokes on is refused with a sentence."""
    try:
        return list(msg.get_all(name, []))
    except (IndexError, ValueError, AttributeError) as exc:
        if isinstance(exc, InvalidMessage):
            raise
        raise InvalidMessage(f"header {name}", None, "does not parse as a list of addresses") from None


def _bare(value: str) -> bool:
    try:
        h = SMTP_POLICY.header_factory("To", value)
        return any(a.username and not a.domain for a in getattr(h, "addresses", ()))
    except (IndexError, ValueError, AttributeError):
        return False  # refused, if at all, where the addresses are read


def _unique(addresses: list[Address]) -> list[Address]:
    seen: dict[str, Address] = {}
    for a in addresses:
        seen.setdefault(a.addr_spec, a)
    return list(seen.values())
