"""Composing a message: `Email`, and the record it makes.

Messages are built with the standard library's `email` package (policy
`email.policy.SMTP`, in stdemail.py); the record carries the final bytes, so
the daemon never composes again. The plainest message (ASCII headers, plain
addresses, a short-lined text body) is written here without importing the
package, byte for byte as the package would write it (`Email._plain`;
tests/test_quick.py holds the two to each other): `import mailmand` and one
`Client().enqueue(Email(...))` are a short process's whole life in a cron job.
A message handed over whole is raw.py's (`Email.from_bytes`).
"""

from __future__ import annotations

import re
import time

from .client import Queueable
from .errors import HeaderInjection, InvalidAddress, InvalidMessage, MessageTooLarge
from .headers import (
    FIELD_NAME,
    MAX_LINE,
    PLAIN_NAME,
    addresses,
    as_text,
    check_text,
    formatdate,
    msgid,
    split_head,
)
from .raw import RawMessage
from .record import (
    MAX_RECIPIENTS,
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
    from collections.abc import Mapping, Sequence
    from email.headerregistry import Address
    from email.message import EmailMessage
    from pathlib import Path

    from .headers import Mailbox

# Headers that the keyword arguments own; setting them through `headers=`
# would duplicate or contradict them (and a Bcc header would leak).
OWNED_HEADERS = frozenset(
    h.lower()
    for h in ("From", "To", "Cc", "Bcc", "Reply-To", "Subject", "MIME-Version",
              "Content-Type", "Content-Transfer-Encoding", "Disposition-Notification-To")
)
# The fields the email package writes in a MIME part below the top, each at most once.
PART_FIELDS = frozenset({"content-type", "content-transfer-encoding", "content-disposition", "content-id",
                         "mime-version"})
# Address arguments, and whether each takes exactly one address.
ADDRESS_ARGS = (("sender", True), ("to", False), ("cc", False), ("bcc", False), ("reply_to", False),
                ("read_receipt", True))
_PLAIN_TEXT = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 2045 §5.1: a MIME type's halves


class Part:
    """An attachment or an inline part."""

    def __init__(self, data: bytes, filename: str, maintype: str, subtype: str, cid: str | None = None) -> None:
        self.data = data
        self.filename = filename
        self.maintype = maintype
        self.subtype = subtype
        self.cid = cid


class Email(Queueable):
    """A message to queue. Validates at once: bad input raises before anything is queued."""

    def __init__(
        self,
        sender: str | None = None,
        to: str | list[str] | None = None,
        cc: str | list[str] | None = None,
        bcc: str | list[str] | None = None,
        reply_to: str | list[str] | None = None,
        subject: str = "",
        text: str | None = None,
        html: str | None = None,
        headers: dict[str, str] | None = None,
        priority: int = 0,
        read_receipt: str | None = None,
        idempotency_key: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        if not sender:
            raise InvalidMessage("sender", sender, "a sender is required")
        given = {"sender": sender, "to": to, "cc": cc, "bcc": bcc, "reply_to": reply_to, "read_receipt": read_receipt}
        self._boxes: dict[str, list[Mailbox]] = {name: _address_arg(name, given[name], single)
                                                 for name, single in ADDRESS_ARGS}
        if not (self._boxes["to"] or self._boxes["cc"] or self._boxes["bcc"]):
            raise InvalidMessage("to", to, "at least one recipient (to, cc or bcc) is required")
        self._real: dict[str, list[Address]] | None = None  # the email package's Address objects, made on first use
        texts = {}
        for field_name, value in (("subject", subject), ("text", text), ("html", html)):
            found = as_text(value)
            if value is not None and found is None:
                raise InvalidMessage(field_name, type(value).__name__, "expected a string")
            texts[field_name] = found
        self.subject = check_text("subject", texts["subject"] or "")
        self.text = texts["text"]
        self.html = texts["html"]
        self.headers: dict[str, str] = {}
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        self.priority = check_priority(priority, "priority")
        key = as_text(idempotency_key)
        if idempotency_key is not None and not key:
            raise InvalidMessage("idempotency_key", idempotency_key, "expected a non-empty string")
        self.idempotency_key = key
        # The app's own keys: `mailmand list --tag order=42` finds the message, its events carry them.
        self.tags = check_tags(tags, "tags")
        self.parts: list[Part] = []

    # The addresses, as the email package's Address objects (made on first use).

    def _addresses(self) -> dict[str, list[Address]]:
        if self._real is None:
            from .stdemail import address

            self._real = {name: [address(m) for m in boxes] for name, boxes in self._boxes.items()}
        return self._real

    @property
    def sender(self) -> Address:
        return self._addresses()["sender"][0]

    @property
    def to(self) -> list[Address]:
        return self._addresses()["to"]

    @property
    def cc(self) -> list[Address]:
        return self._addresses()["cc"]

    @property
    def bcc(self) -> list[Address]:
        return self._addresses()["bcc"]

    @property
    def reply_to(self) -> list[Address]:
        return self._addresses()["reply_to"]

    @property
    def read_receipt(self) -> Address | None:
        found = self._addresses()["read_receipt"]
        return found[0] if found else None

    def set_header(self, name: str, value: str) -> None:
        if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
            raise InvalidMessage("headers", name, "not a legal header name (RFC 5322 §3.6.8)")
        if name.lower() in OWNED_HEADERS:
            raise InvalidMessage("headers", name, "set this header through its own argument")
        text = as_text(value)
        if text is None:
            raise InvalidMessage(f"headers[{name}]", value, "expected a string")
        self.headers[name] = check_text(f"headers[{name}]", text)

    # -- parts ---------------------------------------------------------------

    def attach(self, data: bytes | str, filename: str, mimetype: str | None = None) -> None:
        """Add an attachment; the type is guessed from the filename when omitted."""
        name = _filename(filename)
        self.parts.append(Part(_as_bytes(data), name, *_mime(name, mimetype)))

    def attach_file(self, path: str | Path, mimetype: str | None = None, filename: str | None = None) -> None:
        from pathlib import Path

        p = Path(path)
        if not p.is_file():
            raise InvalidMessage("attachment", str(path), "no such file")
        self.attach(p.read_bytes(), filename or p.name, mimetype)

    def embed(self, data: bytes, filename: str, mimetype: str | None = None) -> str:
        """Add an inline part and return its Content-ID, for `<img src="cid:...">`."""
        name = _filename(filename)
        cid = msgid(self._boxes["sender"][0][2], time.time())[1:-1]
        self.parts.append(Part(_as_bytes(data), name, *_mime(name, mimetype), cid=cid))
        return cid

    # -- building ------------------------------------------------------------

    @property
    def envelope_recipients(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f"{local}@{domain}" for name in ("to", "cc", "bcc")
                                   for _, local, domain in self._boxes[name]))

    @property
    def envelope_from(self) -> str:
        _, local, domain = self._boxes["sender"][0]
        return f"{local}@{domain}"

    def build(self) -> EmailMessage:
        """The message as it will be sent (no Bcc header, ever)."""
        from .stdemail import build

        return build(self)

    def to_record(self, max_size: int, send_after: float = 0.0, max_recipients: int = MAX_RECIPIENTS) -> Record:
        """The validated record that carries this message; InvalidMessage names what is wrong."""
        rcpt = self.envelope_recipients
        check_recipients(len(rcpt), max_recipients, "to")
        check_send_after(send_after, time.time(), "send_after")
        plain = self._plain()
        if plain is not None:
            raw, subject = plain, self.subject
        else:
            from .stdemail import SMTP_UTF8_POLICY

            msg = self.build()
            try:
                raw = msg.as_bytes()
            except UnicodeEncodeError:
                if not all(a.isascii() for a in (*rcpt, self.envelope_from)):
                    raw = msg.as_bytes(policy=SMTP_UTF8_POLICY)  # SMTPUTF8 mail: UTF-8 headers (RFC 6532)
                else:
                    raise InvalidMessage("headers", None, "a header holds text that cannot be encoded "
                                         "(non-ASCII where only ASCII may go)") from None
            found = msg.get("Subject")
            subject = "" if found is None else str(found)
        if len(raw) > max_size:
            raise MessageTooLarge(
                "message", f"{len(raw)} bytes",
                f"{len(raw)} bytes as encoded for sending, over max-message-size ({max_size} bytes); "
                "attachments grow by about a third in transfer encoding (base64)")
        self._as_given(raw)
        record = Record(id=new_id(self.idempotency_key), mail_from=self.envelope_from, rcpt_to=rcpt, raw=raw,
                        priority=self.priority, send_after=send_after, idempotency_key=self.idempotency_key,
                        subject=subject, tags=self.tags)
        validate(record, max_recipients=max_recipients, max_size=max_size)
        return record

    def _as_given(self, raw: bytes) -> None:
        """The last line of defence against a line break that slipped past the field checks:
        the composed head has exactly the fields asked for, each as many times as asked
        (the owned ones too), and each MIME part below it only its own few."""
        boxes = self._boxes
        want = {"from": 1, "subject": 1, "date": 1, "message-id": 1, "mime-version": 1, "content-type": 1}
        for name, field in (("to", "to"), ("cc", "cc"), ("reply-to", "reply_to"),
                            ("disposition-notification-to", "read_receipt")):
            if boxes[field]:
                want[name] = 1
        for name in self.headers:
            low = name.lower()
            want[low] = 1 if low in ("message-id", "date") else want.get(low, 0) + 1
        got: dict[str, int] = {}
        for name, _, _ in split_head(raw)[0]:
            got[name.lower()] = got.get(name.lower(), 0) + 1
        want["content-transfer-encoding"] = min(1, got.get("content-transfer-encoding", 0))  # none when multipart
        for name in sorted(want.keys() | got.keys()):
            if got.get(name, 0) != want.get(name, 0):
                raise HeaderInjection("headers", name, f"the composed message has {got.get(name, 0)} "
                                      f"{name!r} field(s) where {want.get(name, 0)} were given"
                                      + ("" if name in want else ": it gained a header nobody gave"))
        if self.parts:
            from .stdemail import part_fields

            for part_names in part_fields(raw):
                lowered = [n.lower() for n in part_names]
                if not PART_FIELDS.issuperset(lowered) or len(set(lowered)) != len(lowered):
                    raise HeaderInjection("headers", part_names, "a MIME part of the composed message gained a header")

    def _plain(self) -> bytes | None:
        """The message as the email package writes it, for the plainest kind:
        plain addresses, a subject and X- headers of printable ASCII that fit on
        a line, a text body whose lines fit (7bit or 8bit), nothing else. None
        for any other: `build()` makes it."""
        boxes = self._boxes
        if (self.parts or self.html is not None or boxes["read_receipt"] or not _plain_text("Subject", self.subject)
                or not all(PLAIN_NAME.fullmatch(d) and local.isascii() for field in boxes.values()
                           for d, local, _ in field)
                or not all(name[:2].lower() == "x-" and _plain_text(name, value)
                           for name, value in self.headers.items())):
            return None
        body = (self.text or "").encode("utf-8").splitlines()  # a lone surrogate raises as set_content does
        if any(len(line) > MAX_LINE for line in body):
            return None  # quoted-printable or base64: the email package's choice
        lines = [_address_line("From", boxes["sender"])]
        for name, field in (("To", "to"), ("Cc", "cc"), ("Reply-To", "reply_to")):
            if boxes[field]:
                lines.append(_address_line(name, boxes[field]))
        if not all(len(line) <= MAX_LINE for line in lines):
            return None  # folded by the email package
        now = time.time()
        lines += [_text_line("Subject", self.subject), f"Date: {formatdate(now)}",
                  f"Message-ID: {msgid(boxes['sender'][0][2], now)}",
                  *(_text_line(name, value) for name, value in self.headers.items()),
                  'Content-Type: text/plain; charset="utf-8"',
                  f"Content-Transfer-Encoding: {'7bit' if all(line.isascii() for line in body) else '8bit'}",
                  "MIME-Version: 1.0", "", ""]
        return "\r\n".join(lines).encode("ascii") + b"\r\n".join(body) + b"\r\n"

    # -- parsing -------------------------------------------------------------

    @classmethod
    def from_bytes(cls, raw: bytes, *, sender: str | None = None, recipients: Sequence[str] | None = None,
                   extra_recipients: Sequence[str] = (), from_name: str | None = None,
                   default_sender: str | None = None, local_domain: str | None = None,
                   aliases: Mapping[str, Sequence[str]] | None = None, priority: int = 0,
                   idempotency_key: str | None = None, tags: dict[str, str] | None = None) -> RawMessage:
        """A message handed over whole, to go out as it came: see `RawMessage.parse`."""
        return RawMessage.parse(raw, sender=sender, recipients=recipients, extra_recipients=extra_recipients,
                                from_name=from_name, default_sender=default_sender, local_domain=local_domain,
                                aliases=aliases, priority=priority, idempotency_key=idempotency_key, tags=tags)

    def __repr__(self) -> str:
        return f"Email(sender={self.envelope_from!r}, to={self.envelope_recipients!r}, subject={self.subject!r})"


def _address_arg(name: str, value: object, single: bool) -> list[Mailbox]:
    """An address argument: a string (which may hold a comma-separated list, unless
    `single`), a lazy string, or a list of them; None or [] for none."""
    if value is None or (not single and value in ([], ())):
        return []
    items = [value] if as_text(value) is not None or single or not isinstance(value, list | tuple) else value
    found: list[Mailbox] = []
    for item in items:
        text = as_text(item)
        if text is None:
            raise InvalidAddress(name, item, "expected a string")
        found += addresses(name, text, single=single)
    return found


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _filename(name: object) -> str:
    text = as_text(name)
    if not text:
        raise InvalidMessage("filename", name, "a filename is required")
    return check_text("filename", text)


def _mime(filename: str, mimetype: str | None) -> tuple[str, str]:
    if not mimetype:
        import mimetypes  # here: it reads the system's type maps, which only attachments need

        mimetype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    maintype, _, subtype = mimetype.partition("/")
    if not _TOKEN.fullmatch(maintype) or not _TOKEN.fullmatch(subtype):
        raise InvalidMessage("mimetype", mimetype, "expected type/subtype")
    return maintype, subtype


# -- plain messages, without the email package ---------------------------------


def _address_line(name: str, boxes: list[Mailbox]) -> str:
    return f"{name}: " + ", ".join(f"{d} <{u}@{h}>" if d else f"{u}@{h}" for d, u, h in boxes)


def _text_line(name: str, value: str) -> str:
    return f"{name}: {value}" if value else f"{name}:"  # as the email package writes an empty value


def _plain_text(name: str, value: str) -> bool:
    return value == "" or (_PLAIN_TEXT.fullmatch(value) is not None and "=?" not in value
                           and len(name) + 2 + len(value) <= MAX_LINE)
