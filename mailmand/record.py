"""The record that travels on the queue (JSON, never pickle; `raw` is the final
message) and the one validation every way in and ingest share.

At the bottom of the producer side with headers.py: it imports no message
class, so anything that makes a record (an Email, a raw message, an HTTP
request) and the daemon's ingest check it here, without the `email` package
for a plain message.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import time

from .errors import InvalidAddress, InvalidMessage, MessageTooLarge
from .frozen import Frozen
from .headers import check_head, envelope_problem

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    class Enqueueable(Protocol):
        """What Client.enqueue takes: anything that makes a validated record (an Email,
        a RawMessage from Email.from_bytes). (A protocol for the type checker only:
        `typing` costs a producer's start-up.)"""

        def to_record(self, max_size: int, send_after: float = ..., max_recipients: int = ...) -> Record: ...

RECORD_VERSION = 1
# Tags: the app's own keys on a message (`--tag order=42` finds it; its events carry them).
TAG_FIELD = "x-mailmand-tag"  # `X-Mailmand-Tag: order=42` in a raw message: a tag, taken out of the head
MAX_TAGS = 10
TAG_KEY = re.compile(r"[a-z0-9_.-]{1,32}")
TAG_VALUE_MAX = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PRIORITY_MAX = 1_000_000  # higher goes first; bounded so every store can hold it
MAX_RECIPIENTS = 1000  # email.server.max-recipients' default
# An id is a file-name-safe token (ours are 32 hex digits): it goes into logs, URLs and commands.
RECORD_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
HORIZON = 10 * 365.25 * 86400  # a send time further away than this is a mistake, not a plan
CLOCK_SKEW = 86400  # how far ahead of ours an app server's clock may be for created_at

# uuid5 namespace for idempotency keys (uuid is imported only for them): the same key always gives the same id,
# so a producer learns the first message's id without asking the daemon.
IDEMPOTENCY_NS = "6f1c9d0e-5b7a-4f3e-9a51-3c1f6d2b8e40"


def new_id(idempotency_key: str | None = None) -> str:
    if idempotency_key is not None:
        import uuid

        return uuid.uuid5(uuid.UUID(IDEMPOTENCY_NS), idempotency_key).hex
    # uuid4().hex, without importing uuid (and the platform probing it does) on every sendmail call
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40  # version 4
    b[8] = b[8] & 0x3F | 0x80  # RFC 4122 variant
    return b.hex()


class Record(Frozen):
    """What travels on the queue: JSON, never pickle. `raw` is the final message."""

    _fields = ("id", "mail_from", "rcpt_to", "raw", "priority", "send_after", "idempotency_key", "created_at",
               "subject", "tags")
    id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    raw: bytes
    priority: int
    send_after: float  # epoch seconds; 0 or past = now
    idempotency_key: str | None
    created_at: float
    # The decoded Subject, carried so ingest need not parse headers; None in
    # records written before it was added (ingest then reads it from `raw`).
    subject: str | None
    tags: dict[str, str] | None  # the app's own keys (check_tags); None: no tags

    def __init__(self, id: str, mail_from: str, rcpt_to: tuple[str, ...], raw: bytes, priority: int = 0,
                 send_after: float = 0.0, idempotency_key: str | None = None, created_at: float | None = None,
                 subject: str | None = None, tags: dict[str, str] | None = None) -> None:
        if created_at is None:
            created_at = time.time()
        self._set(locals())

    def to_json(self) -> dict[str, Any]:
        data = {
            "v": RECORD_VERSION,
            "id": self.id,
            "mail_from": self.mail_from,
            "rcpt_to": list(self.rcpt_to),
            "raw": base64.b64encode(self.raw).decode("ascii"),
            "priority": self.priority,
            "send_after": self.send_after,
            "idempotency_key": self.idempotency_key,
            "created_at": self.created_at,
        }
        if self.subject is not None:
            data["subject"] = self.subject  # optional: readers of version 1 without it still work
        if self.tags:
            data["tags"] = dict(self.tags)  # optional too
        return data

    @classmethod
    def from_json(cls, data: object, *, max_recipients: int = MAX_RECIPIENTS, now: float | None = None) -> Record:
        """A decoded queue item as a record, validated as every producer validates what it
        queues (`validate`); InvalidMessage names what is wrong."""
        if not isinstance(data, dict):
            raise InvalidMessage("record", type(data).__name__, "expected a JSON object")
        if data.get("v") != RECORD_VERSION:
            raise InvalidMessage("record.v", data.get("v"), f"unsupported record version (want {RECORD_VERSION})")
        try:
            rcpt = data["rcpt_to"]
            if not isinstance(rcpt, list) or not rcpt or not all(isinstance(r, str) for r in rcpt):
                raise InvalidMessage("record.rcpt_to", rcpt, "expected a non-empty list of addresses")
            for key in ("id", "mail_from", "raw"):
                if not isinstance(data[key], str):
                    raise InvalidMessage(f"record.{key}", data[key], "expected a string")
            now = time.time() if now is None else now
            subject = data.get("subject")
            try:
                raw = base64.b64decode(data["raw"], validate=True)
            except (binascii.Error, ValueError):
                raise InvalidMessage("record.raw", data["raw"][:40], "not valid base64") from None
            record = cls(
                id=data["id"],
                mail_from=data["mail_from"],
                rcpt_to=tuple(rcpt),
                raw=raw,
                priority=0 if data.get("priority") is None else data["priority"],
                send_after=float(data.get("send_after") or 0.0),
                idempotency_key=data.get("idempotency_key"),
                created_at=float(data.get("created_at") or now),
                subject=subject if isinstance(subject, str) else None,
                tags=data.get("tags"),
            )
        except KeyError as exc:
            raise InvalidMessage(f"record.{exc.args[0]}", None, "missing") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidMessage):
                raise
            raise InvalidMessage("record", str(exc), "malformed field") from None
        validate(record, max_recipients=max_recipients, now=now)
        return record


def validate(record: Record, *, max_recipients: int = MAX_RECIPIENTS, max_size: int | None = None,
             now: float | None = None) -> None:
    """The one decision whether a record can be delivered. Every way in calls it before a
    record is queued, and ingest calls it on every item it takes, so what a producer
    queues the daemon takes, and what the daemon would quarantine no producer queues:
    the envelope (addresses an SMTP command line carries), the limits, the tags, and the
    head of `raw` (headers.check_head). InvalidMessage names what is wrong."""
    if not isinstance(record.id, str) or not RECORD_ID.fullmatch(record.id):
        raise InvalidMessage("record.id", str(record.id)[:80], "expected 1 to 64 of A-Z a-z 0-9 . _ -")
    if not isinstance(record.mail_from, str):
        raise InvalidMessage("record.mail_from", record.mail_from, "expected a string")
    if record.mail_from:  # "" is the null sender (a bounce)
        _envelope("record.mail_from", record.mail_from)
    if not isinstance(record.rcpt_to, tuple) or not record.rcpt_to:
        raise InvalidMessage("record.rcpt_to", record.rcpt_to, "expected a non-empty list of addresses")
    for address in record.rcpt_to:
        _envelope("record.rcpt_to", address)
    check_recipients(len(record.rcpt_to), max_recipients, "record.rcpt_to")
    check_priority(record.priority, "record.priority")
    now = time.time() if now is None else now
    check_send_after(record.send_after, now, "record.send_after")
    if not isinstance(record.created_at, float | int) or not math.isfinite(record.created_at) \
            or record.created_at > now + CLOCK_SKEW:
        raise InvalidMessage("record.created_at", record.created_at, "expected a time not after now")
    if record.idempotency_key is not None and (not isinstance(record.idempotency_key, str)
                                               or not record.idempotency_key):
        raise InvalidMessage("record.idempotency_key", record.idempotency_key, "expected a non-empty string")
    if not isinstance(record.raw, bytes):
        raise InvalidMessage("record.raw", type(record.raw).__name__, "expected bytes")
    check_tags(record.tags, "record.tags")
    if max_size is not None and len(record.raw) > max_size:
        raise MessageTooLarge("message", f"{len(record.raw)} bytes",
                              f"{len(record.raw)} bytes, over max-message-size ({max_size} bytes)")
    check_head(record.raw)


def _envelope(field: str, address: object) -> None:
    problem = "expected a string" if not isinstance(address, str) else envelope_problem(address)
    if problem:
        raise InvalidAddress(field, address, f"not an envelope address: {problem}")


def check_tags(tags: object, name: str = "tags") -> dict[str, str] | None:
    """Tags as a message carries them: at most MAX_TAGS pairs, each key of 1 to 32 of
    a-z 0-9 _ . -, each value text of at most TAG_VALUE_MAX characters with no control
    characters. None (or no pairs): no tags. InvalidMessage names the pair at fault."""
    if tags is None:
        return None
    if not isinstance(tags, dict):
        raise InvalidMessage(name, type(tags).__name__, "expected a mapping of key to value")
    if len(tags) > MAX_TAGS:
        raise InvalidMessage(name, f"{len(tags)} pairs", f"at most {MAX_TAGS} tags")
    for key, value in tags.items():
        if not isinstance(key, str) or not TAG_KEY.fullmatch(key):
            raise InvalidMessage(f"{name} key", key, "expected 1 to 32 of a-z 0-9 _ . -")
        if not isinstance(value, str):
            raise InvalidMessage(f"{name}[{key}]", value, "expected text")
        if len(value) > TAG_VALUE_MAX:
            raise InvalidMessage(f"{name}[{key}]", value[:40] + "...", f"longer than {TAG_VALUE_MAX} characters")
        if _CONTROL.search(value):
            raise InvalidMessage(f"{name}[{key}]", value, "control characters are not allowed")
    return dict(tags) or None


def check_recipients(n: int, limit: int, name: str) -> None:
    if n > limit:
        raise InvalidMessage(name, f"{n} recipients", f"more than max-recipients ({limit})")


def check_send_after(when: float, now: float, name: str) -> float:
    """A finite time, at most HORIZON ahead (the past means now)."""
    if not isinstance(when, float | int) or not math.isfinite(when) or when > now + HORIZON:
        raise InvalidMessage(name, when, "expected a finite time within 10 years of now")
    return when


def check_priority(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not -PRIORITY_MAX <= value <= PRIORITY_MAX:
        raise InvalidMessage(name, value, f"expected an integer from -{PRIORITY_MAX} to {PRIORITY_MAX}")
    return value
