"""What a relay's replies mean, as values and pure functions: the outcome of an
attempt for a message and each recipient, and the decisions the SMTP client
(protocol.py) takes on a message's replies. No state, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum, StrEnum

from .wire import Reply

# RFC 5321 §4.2: "Reply codes" — the classes this module reads.
REPLY_CLOSING = 421  # §3.8: the server is closing the channel
REPLY_START_INPUT = 354  # the answer to DATA that asks for the body
REPLY_OK = 250  # the only good answer to RSET
# RFC 4954 §6 / RFC 3207 §4: "authenticate (or STARTTLS) first". It says the
# session lacks something, not that the message is bad: temporary, not 5xx-fatal.
REPLY_SESSION_REQUIRED = 530


class Kind(StrEnum):
    """The outcome of an attempt, for a message or a recipient (what the retry policy reads)."""

    SENT = "sent"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


def classify(code: int | None) -> Kind:
    """2xx sent, 5xx permanent; 4xx, no reply or a nonsense code temporary."""
    if code is not None and 200 <= code < 300:
        return Kind.SENT
    if code is not None and 500 <= code < 600:
        return Kind.PERMANENT
    return Kind.TEMPORARY


@dataclass(frozen=True)
class Envelope:
    """What the dispatcher hands over; `raw` is the final RFC 5322 bytes, sent as is."""

    id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    raw: bytes


@dataclass(frozen=True)
class RecipientResult:
    address: str
    code: int | None  # None: no reply (timeout, dropped connection, session failure)
    reply: str
    kind: Kind


@dataclass(frozen=True)
class Outcome:
    """The decision about one message after one attempt. `code`/`reply` decided `kind`."""

    kind: Kind
    code: int | None
    reply: str
    recipients: tuple[RecipientResult, ...]
    # The connection was lost after the relay had accepted the envelope (at or
    # after DATA): the message itself may be what makes the relay hang up, so
    # the attempt counts toward max-fails though no reply code came.
    lost_in_data: bool = False


@dataclass(frozen=True)
class Extensions:
    """What the relay's EHLO offered, as far as this client cares."""

    pipelining: bool = False
    eightbitmime: bool = False
    smtputf8: bool = False
    chunking: bool = False  # RFC 3030 BDAT


def mail_options(env: Envelope, ext: Extensions) -> tuple[tuple[str, ...], str | None]:
    """MAIL FROM parameters the message needs, or why this relay cannot take it."""
    options: list[str] = []
    # Addresses were validated when the message was composed and again at
    # ingest; a line break here would still split the command: refuse, never send.
    if any(c in a for a in (env.mail_from, *env.rcpt_to) for c in "\r\n"):
        return (), "an address holds a line break"
    if not env.raw.isascii() and ext.eightbitmime:
        options.append("BODY=8BITMIME")  # RFC 6152
    if not (env.mail_from.isascii() and all(a.isascii() for a in env.rcpt_to)):
        if not ext.smtputf8:
            return (), "relay does not support SMTPUTF8, needed for a non-ASCII address"
        options.append("SMTPUTF8")  # RFC 6531
    return tuple(options), None


# -- decisions (pure) -------------------------------------------------------------


def everyone(env: Envelope, code: int | None, reply: str, kind: Kind | None = None) -> Outcome:
    """Every recipient shares one fate (MAIL refused, the session failed)."""
    kind = kind or classify(code)
    return Outcome(kind, code, reply, tuple(RecipientResult(a, code, reply, kind) for a in env.rcpt_to))


def mail_refused(env: Envelope, mail: Reply) -> Outcome:
    # 530 at MAIL: the session is not authenticated; nothing is wrong with the message.
    kind = Kind.TEMPORARY if mail.code == REPLY_SESSION_REQUIRED else None
    return everyone(env, mail.code, mail.text, kind)


def none_accepted(env: Envelope, rcpts: list[Reply]) -> Outcome:
    """No recipient took the message: a temporary refusal outranks a permanent one,
    since the message still has somewhere to go later."""
    results = tuple(RecipientResult(a, r.code, r.text, classify(r.code))
                    for a, r in zip(env.rcpt_to, rcpts, strict=True))
    decider = next((r for r in results if r.kind is Kind.TEMPORARY), results[0])
    return Outcome(decider.kind, decider.code, decider.reply, results)


def with_final(env: Envelope, rcpts: list[Reply | None], code: int | None, reply: str,
               kind: Kind | None = None, *, untried: str | None = None,
               lost_in_data: bool = False) -> Outcome:
    """Every accepted recipient shares the fate of the message body (DATA's or
    end of data's reply); a refused one keeps its own reply; one never asked
    (a 421 cut the group short) is temporary with `untried` as its reason."""
    kind = kind or classify(code)
    results = []
    for address, r in zip(env.rcpt_to, rcpts, strict=True):
        if r is None:
            results.append(RecipientResult(address, None, untried or reply, Kind.TEMPORARY))
        elif classify(r.code) is Kind.SENT:
            results.append(RecipientResult(address, code, reply, kind))
        else:
            results.append(RecipientResult(address, r.code, r.text, classify(r.code)))
    return Outcome(kind, code, reply, tuple(results), lost_in_data)


class Plan(Enum):
    """What a complete envelope exchange (MAIL, RCPT…, DATA) leads to."""

    BODY = "send the body"  # DATA answered 354 for an accepted envelope
    EMPTY = "end the data with nothing"  # 354, but nothing to deliver: RFC 2920 §3.1
    RSET = "reset"  # refused before the body: RSET readies the session for the next message


def decide_envelope(env: Envelope, mail: Reply, rcpts: list[Reply], data: Reply | None) -> tuple[Plan, Outcome | None]:
    """After the envelope's replies: what to send next, and the outcome when it is
    already known (every case but BODY, whose outcome the end of data decides).

    `data` is None when DATA was not sent (one command at a time, and the
    envelope was refused before it). The body goes out only when MAIL was
    accepted, at least one RCPT was, and DATA was answered 354; a 354 in any
    other case is closed with an empty end of data (RFC 2920 §3.1: "if the DATA
    command was accepted the client SMTP should send a single dot")."""
    go_ahead = data is not None and data.code == REPLY_START_INPUT
    if classify(mail.code) is not Kind.SENT:
        outcome = mail_refused(env, mail)
    elif not any(classify(r.code) is Kind.SENT for r in rcpts):
        outcome = none_accepted(env, rcpts)
    elif go_ahead:
        return Plan.BODY, None
    else:
        assert data is not None
        # DATA refused (or answered nonsense): accepted recipients share its reply.
        kind = None if classify(data.code) is not Kind.SENT else Kind.TEMPORARY
        outcome = with_final(env, list(rcpts), data.code, data.text, kind)
    return (Plan.EMPTY if go_ahead else Plan.RSET), outcome


def decide_chunked(env: Envelope, mail: Reply, rcpts: list[Reply], bdat: Reply) -> Outcome:
    """A message sent as `BDAT <size> LAST`, once every reply is in. It was
    delivered only when MAIL, at least one RCPT and the BDAT were accepted: a
    relay that answers 250 to a BDAT after refusing the envelope (it should
    not) delivered nothing, whatever it says."""
    if classify(mail.code) is not Kind.SENT:
        return mail_refused(env, mail)
    if not any(classify(r.code) is Kind.SENT for r in rcpts):
        return none_accepted(env, rcpts)
    return with_final(env, list(rcpts), bdat.code, bdat.text)


def unsettled(outcome: Outcome) -> Outcome:
    """`outcome` after a failed RSET: whatever was refused may have been refused
    for the session's state rather than the message's, so nothing is final."""
    def soften(kind: Kind) -> Kind:
        return Kind.TEMPORARY if kind is Kind.PERMANENT else kind
    return replace(outcome, kind=soften(outcome.kind),
                   recipients=tuple(replace(r, kind=soften(r.kind)) for r in outcome.recipients))


@dataclass(frozen=True)
class SendResult:
    """One attempt at one message. `code`/`reply` are those that decided `kind`."""

    id: str
    kind: Kind
    code: int | None
    reply: str
    recipients: tuple[RecipientResult, ...]
    started: float  # wall clock (time.time()) when the attempt began
    duration: float  # seconds
    relay: str
    lost_in_data: bool = False  # the relay hung up after accepting the envelope (see Outcome)
    # The attempt failed for the relay's sake, not the message's: no session (the relay is
    # down or refused it), or a pushback (too many connections, rate). Never counts toward
    # max-fails; with several relays the message goes to another.
    relay_fault: bool = False

    @property
    def retry_recipients(self) -> tuple[str, ...]:
        """The recipients refused for a reason that may pass: the only ones to retry."""
        return tuple(r.address for r in self.recipients if r.kind is Kind.TEMPORARY)

    @property
    def answered(self) -> bool:
        """The relay said something about this message (a reply code), or hung up on it
        after accepting its envelope: the attempts that count toward max-fails."""
        return self.code is not None or self.lost_in_data or any(r.code is not None for r in self.recipients)
