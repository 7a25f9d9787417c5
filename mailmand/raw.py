"""A message handed over whole: sendmail, `mailmand send FILE`, the submission
listener, the Django backend, `Email.from_bytes`. It goes out as it came in.

The header fields keep their bytes and their order (line ends become CRLF, as
SMTP wants). Only what must change changes: a Bcc field is removed (its
addresses stay in the envelope); a missing From, Message-ID or Date is added
at the end of the head; a field naming a bare local name (`root`, as cron
writes) is written anew with the address it stands for; a field of non-ASCII
text is written anew as encoded words, unless the message is SMTPUTF8 mail
(a non-ASCII envelope address), which may carry UTF-8 fields (RFC 6532).

Every field is checked first (headers.check_field: addresses parsed strictly,
encoded words decoded and checked, no control characters), and the record is
validated as every other way in validates it (record.validate). What scripts
write is taken as sendmail, Postfix, msmtp and nullmailer take it: a message
with no header at all is a body; `-f '<>'` is the null sender of a bounce.
The `email` package is imported only for a field that must be written anew,
a field that is not plainly written, or a message with no header at all.
"""

from __future__ import annotations

import re
import time

from .client import Queueable
from .errors import InvalidAddress, InvalidMessage
from .headers import (
    MAX_LINE,
    PLAIN_NAME,
    addresses,
    as_text,
    check_field,
    check_text,
    formatdate,
    mailbox,
    msgid,
    split_head,
)
from .record import (
    MAX_RECIPIENTS,
    TAG_FIELD,
    Record,
    check_priority,
    check_recipients,
    check_send_after,
    check_tags,
    new_id,
    validate,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from email.message import EmailMessage

    from .headers import Field, Mailbox

NULL_SENDER = ("", "<>")
ALIASED = frozenset({"to", "cc", "bcc"})  # fields whose bare names go through the aliases (recipients)
_EOL = re.compile(rb"\r\n|\r|\n")


class RawMessage(Queueable):
    """A complete message and its envelope, ready to queue: `Email.from_bytes` makes one."""

    def __init__(self, raw: bytes, mail_from: str, rcpt_to: tuple[str, ...], subject: str = "",
                 priority: int = 0, idempotency_key: str | None = None, tags: dict[str, str] | None = None) -> None:
        self.raw = raw
        self.envelope_from = mail_from  # "" is the null sender (`<>`) of a bounce
        self.envelope_recipients = rcpt_to
        self.subject = subject
        self.priority = priority
        self.idempotency_key = idempotency_key
        self.tags = tags

    @classmethod
    def parse(cls, data: bytes, *, sender: str | None = None, recipients: Sequence[str] | None = None,
              extra_recipients: Sequence[str] = (), from_name: str | None = None,
              default_sender: str | None = None, local_domain: str | Callable[[], str] | None = None,
              aliases: Mapping[str, Sequence[str]] | None = None, priority: int = 0,
              idempotency_key: str | None = None, tags: Mapping[str, str] | None = None) -> RawMessage:
        """Parse an RFC 5322 message (or, with no header at all, take the whole input as
        the body). The envelope sender is `sender` (`<>`: the null sender), else the From
        field, else `default_sender`; the recipients are `recipients`, else the To, Cc and
        Bcc fields plus `extra_recipients`. A bare name goes through `aliases` (recipients
        only; `default` catches every name), else gets `@local_domain` (a string, or a
        function asked only when a bare name is found), in the envelope and in the fields
        alike. `tags`, and one per `X-Mailmand-Tag: key=value` field (taken out of the
        head: it is for mailmand, not the recipients), are the message's tags.
        Raises InvalidMessage (InvalidAddress, HeaderInjection) naming the field."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidMessage("raw", type(data).__name__, "expected bytes")
        data = bytes(data)
        if data.startswith(b"From "):  # an mbox separator line, as `mail` and some MTAs hand it over
            data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
        fields, body_at = split_head(data)
        names = _Names(local_domain, aliases or {})
        # Each field checked, and a bare name in it resolved, in the order given: the
        # first problem found is the one record.validate would name.
        found = [names.field(name, value, check_field(name, value, bare=True)) for name, value, _ in fields]

        null_sender = sender is not None and sender.strip() in NULL_SENDER
        if sender and not null_sender:
            envelope_from = names.arg("sender", sender, alias=False, single=True)[0]
        else:
            header_from = _all(fields, found, "from")
            if header_from:
                envelope_from = header_from[0]
            elif default_sender:
                envelope_from = names.arg("sender", default_sender, alias=False, single=True)[0]
            else:
                raise InvalidMessage("sender", None, "no sender: give -f or a From header")
        given = [m for r in (recipients or extra_recipients) for m in names.arg("recipient", r, alias=True)]
        rcpt = given if recipients else [*_all(fields, found, "to"), *_all(fields, found, "cc"),
                                         *_all(fields, found, "bcc"), *given]
        rcpt_to = tuple(dict.fromkeys(_spec(m) for m in rcpt))
        if not rcpt_to:
            raise InvalidMessage("to", None, "no recipient: the message has no To, Cc or Bcc header, and none "
                                 "was given" if not recipients else "at least one recipient is required")
        mail_from = "" if null_sender else _spec(envelope_from)
        utf8 = not all(a.isascii() for a in (mail_from, *rcpt_to))

        tagged = _tags(fields, tags)
        head = [_kept(field, boxes, utf8) for field, boxes in zip(fields, found, strict=True)
                if field[0].lower() != TAG_FIELD]
        if fields:
            body = _EOL.sub(b"\r\n", data[body_at:])
            head += _missing(fields, envelope_from, from_name, utf8)
        else:  # no header at all: the input is the body, and every field is ours
            from .stdemail import body_only

            composed = body_only(data)
            mime, body_at = split_head(composed)
            sender_field, *stamps = _missing(fields, envelope_from, from_name, utf8)  # From, Message-ID, Date
            to_field = _address_field("To", list({_spec(m): m for m in rcpt}.values()), utf8)
            head = [sender_field, to_field, *stamps, *(lines for _, _, lines in mime)]
            body = composed[body_at:]
        key = as_text(idempotency_key)
        if idempotency_key is not None and not key:
            raise InvalidMessage("idempotency_key", idempotency_key, "expected a non-empty string")
        return cls(b"".join(head) + b"\r\n" + body, mail_from, rcpt_to, _subject(fields),
                   check_priority(priority, "priority"), key, tagged)

    def to_record(self, max_size: int, send_after: float = 0.0, max_recipients: int = MAX_RECIPIENTS) -> Record:
        """The validated record that carries this message; InvalidMessage names what is wrong."""
        check_recipients(len(self.envelope_recipients), max_recipients, "to")
        check_send_after(send_after, time.time(), "send_after")
        record = Record(id=new_id(self.idempotency_key), mail_from=self.envelope_from,
                        rcpt_to=self.envelope_recipients, raw=self.raw, priority=self.priority,
                        send_after=send_after, idempotency_key=self.idempotency_key, subject=self.subject,
                        tags=self.tags)
        validate(record, max_recipients=max_recipients, max_size=max_size)
        return record

    def build(self) -> EmailMessage:
        """The message as it will be sent, parsed by the email package."""
        from email.parser import BytesParser

        from .stdemail import SMTP_POLICY

        return BytesParser(policy=SMTP_POLICY).parsebytes(self.raw)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (f"RawMessage(sender={self.envelope_from!r}, to={self.envelope_recipients!r}, "
                f"subject={self.subject!r})")


class _Names:
    """Bare names to addresses: aliases for recipients, the default domain for everyone."""

    def __init__(self, domain: str | Callable[[], str] | None, aliases: Mapping[str, Sequence[str]]) -> None:
        self._domain = domain
        self.aliases = {k.lower(): v for k, v in aliases.items()}

    def domain(self) -> str | None:
        if callable(self._domain):
            self._domain = self._domain()  # asked once, and only for a bare name
        return self._domain

    def resolve(self, box: Mailbox, field: str, alias: bool, original: str) -> list[Mailbox]:
        display, local, domain = box
        if domain:
            return [box]
        targets = (self.aliases.get(local.lower()) or self.aliases.get("default")) if alias else None
        if targets:
            return [(display, *target[1:]) for t in targets
                    for target in addresses(f"{field} (alias of {local})", t, single=True)]
        given = self.domain()
        if not given:
            raise InvalidAddress(field, original, "not a valid email address (no domain)")
        return [mailbox(field, original, display, local, given)]

    def arg(self, field: str, value: object, alias: bool, single: bool = False) -> list[Mailbox]:
        """A command-line or envelope address: `root`, `ann@example.com`, `Ann <ann@example.com>`, a list."""
        text = as_text(value)
        if text is None:
            raise InvalidAddress(field, value, "expected a string")
        return [r for m in addresses(field, text, single=single, bare=True)
                for r in self.resolve(m, field, alias, text)]

    def field(self, name: str, value: str, boxes: list[Mailbox] | None) -> tuple[list[Mailbox], bool] | None:
        """An address field's addresses with its bare names resolved, and whether it had one."""
        if boxes is None:
            return None
        alias = name.lower() in ALIASED
        resolved = [r for m in boxes for r in self.resolve(m, f"header {name}", alias, value)]
        return resolved, any(not domain for _, _, domain in boxes)


def _all(fields: list[Field], found: list[tuple[list[Mailbox], bool] | None], low: str) -> list[Mailbox]:
    """The addresses of every `low` field."""
    return [m for (name, _, _), got in zip(fields, found, strict=True) if got and name.lower() == low for m in got[0]]


def _kept(field: Field, found: tuple[list[Mailbox], bool] | None, utf8: bool) -> bytes:
    """A field's bytes as they go out: as given, unless it must change (see the module's doc)."""
    name, value, lines = field
    if name.lower() == "bcc":
        return b""
    bare = found is not None and found[1]
    if not bare and (utf8 or lines.isascii()):
        return lines
    if found is None:
        from .stdemail import fold

        return fold(name, value)
    return _address_field(name, found[0], utf8)


def _missing(fields: list[Field], sender: Mailbox, from_name: str | None, utf8: bool) -> list[bytes]:
    """The From, Message-ID and Date fields a message lacks, in that order, for the end of its head."""
    present = {name.lower() for name, _, _ in fields}
    out = []
    if "from" not in present:
        name = check_text("from_name", as_text(from_name) or "")
        out.append(_address_field("From", [(name, *sender[1:])], utf8))
    now = time.time()
    if "message-id" not in present:
        out.append(b"Message-ID: %s\r\n" % msgid(sender[2], now).encode())
    if "date" not in present:
        out.append(b"Date: %s\r\n" % formatdate(now).encode())
    return out


def _tags(fields: list[Field], given: Mapping[str, str] | None) -> dict[str, str] | None:
    """The tags given, and one per X-Mailmand-Tag field (`key=value`); checked (record.check_tags)."""
    found = dict(given or {})
    for name, value, _ in fields:
        if name.lower() == TAG_FIELD:
            key, eq, text = value.partition("=")
            if not eq:
                raise InvalidMessage(f"header {name}", value, "expected key=value")
            found.update(check_tags({key.strip(): text.strip()}, f"header {name}") or {})  # named by its field
    return check_tags(found or None, "tags")


def _subject(fields: list[Field]) -> str:
    """The first Subject field's text, as a reader sees it ("" without one)."""
    subject = next((value for name, value, _ in fields if name.lower() == "subject"), "")
    if "=?" in subject or not subject.isascii():
        from .stdemail import subject_text

        return subject_text(subject)
    return subject


def _address_field(name: str, boxes: list[Mailbox], utf8: bool) -> bytes:
    """An address field mailmand writes: by hand when plain and short, else by the email package."""
    if all(PLAIN_NAME.fullmatch(d) and u.isascii() for d, u, _ in boxes):
        line = f"{name}: " + ", ".join(f"{d} <{u}@{h}>" if d else f"{u}@{h}" for d, u, h in boxes)
        if len(line) <= MAX_LINE:
            return line.encode("ascii") + b"\r\n"
    from .stdemail import fold

    return fold(name, boxes, utf8)


def _spec(box: Mailbox) -> str:
    return f"{box[1]}@{box[2]}"
