"""The SMTP client transaction as a state machine, without I/O ("sans-I/O").

`Client` is fed the relay's replies one at a time and asked for the bytes to
write; the socket code around it (`session.py`) only moves bytes, and the
bytes themselves are built and parsed in `wire.py`. Every rule about what a
reply means — per-recipient outcomes, what to do when no recipient was
accepted, a 421 in the middle of a group, a connection lost before or after
the body — is decided here, and so is tested without a server
(tests/test_pipelining.py, tests/test_chunking.py).

Three ways to carry messages, the best the relay offers and the
configuration allows:

* **BDAT windows** (CHUNKING, RFC 3030, with PIPELINING, RFC 2920): each
  message is MAIL, its RCPTs and `BDAT <size> LAST` followed by the whole
  body, written without waiting for any reply; the next messages follow
  while earlier ones are unanswered, up to `Window` (messages and body
  octets; on a reused session, once the relay has answered something). A
  session then moves up to a window of messages per round trip.
  Every message after the first in a pipeline opens with RSET, because RFC
  3030 §2 leaves the session "indeterminate" after a failed BDAT and asks
  for an RSET before anything else; the client cannot know, when it writes
  the next message, whether the BDAT before it will fail.
* **DATA, pipelined** (PIPELINING only): MAIL, every RCPT and DATA in one
  write; after the 354 the body and its end of data go out together with
  the next message's MAIL/RCPT/DATA: about one round trip a message. At
  most one message is in its envelope phase and one in its body phase.
* **One command at a time** (neither): the same decisions, taken earlier.

Replies are matched to commands strictly in the order the commands were
written (RFC 2920 §3.1).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum

from .wire import (
    DATA,
    END_OF_DATA,
    MAX_REPLY_LINE,
    RSET,
    ProtocolError,
    Reply,
    ReplyParser,
    bdat_last,
    command,
    encode_body,
)

__all__ = ["MAX_REPLY_LINE", "ProtocolError", "Reply", "ReplyParser", "encode_body"]  # re-exported

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


class Step(Enum):
    """A command whose reply is awaited; the value names it in a failure reason."""

    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"
    END = "end of data"
    BDAT = "BDAT"  # `BDAT <size> LAST` and the body: its reply is the message's final one
    RSET = "RSET"


BODY_STEPS = frozenset({Step.END, Step.BDAT})  # replies the relay may take long over (it reads the body)


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


@dataclass(frozen=True)
class Window:
    """How much of a BDAT pipeline may be unanswered on one session: at most
    `messages` messages and, past the first, at most `octets` of their bodies.

    16 from measurement (docs/performance.md, "BDAT windows"): a relay 25 ms
    away on 4 connections moved 720 msg/s with 8, about 1,050 with 16 and
    1,300 with 32, where this machine's CPU ran out; twice the window also
    doubles what a lost connection leaves undecided (deferred, perhaps
    delivered). Postfix answers a window in more than one write (it flushes
    whenever its 4 KiB input buffer drains) and its later writes wait for our
    acknowledgement, so a window of W answers well under W messages a round trip."""

    messages: int = 16
    octets: int = 1 << 20

    def __post_init__(self) -> None:
        if self.messages < 1 or self.octets < 1:
            raise ValueError(f"a window holds at least one message and one octet, got {self}")


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


# -- the client ------------------------------------------------------------------


class Stage(Enum):
    ENVELOPE = "envelope"  # MAIL/RCPT/DATA written (with BDAT: the body too), replies coming
    BODY = "body"  # DATA: the body and its end of data written, the final reply coming
    CLOSING = "closing"  # decided; an RSET or empty end of data still to be answered


@dataclass(eq=False)
class Transaction:
    env: Envelope
    options: tuple[str, ...]
    stage: Stage = Stage.ENVELOPE
    mail: Reply | None = None
    rcpts: list[Reply] = field(default_factory=list)
    data: Reply | None = None  # DATA's reply, or with BDAT the final one
    rcpt_sent: int = 0
    data_sent: bool = False
    unanswered: int = 0  # commands written for it whose reply has not come
    written: bool = False  # its bytes have been handed to the I/O layer
    octets: int = 0  # BDAT: the size of its body, counted against the window
    reset_failed: bool = False  # BDAT: the RSET that opened it was refused


@dataclass(frozen=True)
class Done:
    """A message's outcome, in the order the relay gave it."""

    env: Envelope
    outcome: Outcome


@dataclass(frozen=True)
class Unanswered:
    """A message the relay never answered (the connection was lost, or 421, before
    its MAIL reply): nothing of it was accepted, so it may be tried on a new session."""

    env: Envelope
    reason: str
    code: int | None = None
    retry: bool = False  # set by the session: safe to try once more on a new connection


Event = Done | Unanswered


class Client:
    """One SMTP session's transactions, fed replies, giving bytes to write.

    Typical use, per connection (see session.py):

        client = Client(ext, pipelining=True, chunking=True)
        client.add(env)                        # or an Outcome at once: cannot go here
        while client.waiting:
            while client.ready_for_next and (env := next_message()):
                client.add(env)                # joins the same write
            sock.sendall(client.outgoing())
            for event in client.receive(read_reply()):
                ...                             # Done / Unanswered

    After a lost connection, `lost(reason)` settles every message in flight.
    """

    def __init__(self, ext: Extensions, pipelining: bool = True, chunking: bool = True,
                 window: Window | None = None, *, reused: bool = False) -> None:
        self.ext = ext
        self.pipelining = pipelining and ext.pipelining
        # BDAT only pipelined: one at a time it would save a round trip of four, not three of four.
        self.chunking = chunking and ext.chunking and self.pipelining
        self.window = window or Window()
        # A pooled session may have been closed by the relay while idle: until it answers,
        # one message at a time, so a dead line leaves one message undecided, not a window.
        self._answered = not reused
        self.closed = False  # the relay closed (421) or a reset failed: no more on this session
        self._out: list[bytes] = []
        self._body_queued = False
        self.body_pending = False  # the bytes last handed out carry a message body
        self._expect: deque[tuple[Transaction, Step]] = deque()
        self._txs: list[Transaction] = []  # in flight, oldest first

    # -- what the I/O layer asks

    @property
    def waiting(self) -> bool:
        """Replies are awaited."""
        return bool(self._expect)

    @property
    def next_step(self) -> Step | None:
        """The command whose reply comes next (its timeout: a body's reply waits longer)."""
        return self._expect[0][1] if self._expect else None

    @property
    def ready_for_next(self) -> bool:
        """A new message may join now: not closed, and room for it. With BDAT, room
        is the window (the first message always fits); with DATA pipelined, no
        message in its envelope phase; one command at a time, every reply in."""
        if self.closed:
            return False
        if not self.pipelining:
            return not self._expect
        open_ = [tx for tx in self._txs if tx.stage is Stage.ENVELOPE]
        if not self.chunking:
            return not open_
        if open_ and not self._answered:
            return False
        return len(open_) < self.window.messages and sum(tx.octets for tx in open_) < self.window.octets

    def outgoing(self) -> bytes:
        out, self._out = b"".join(self._out), []
        self.body_pending, self._body_queued = self._body_queued, False
        for tx in self._txs:
            tx.written = True
        return out

    # -- what the I/O layer tells

    def add(self, env: Envelope) -> Outcome | None:
        """Start a transaction for `env`; an Outcome at once when this relay cannot take it."""
        if not self.ready_for_next:
            raise RuntimeError("a message was added while the session could not take one")
        options, problem = mail_options(env, self.ext)
        if problem:
            return everyone(env, None, problem, Kind.PERMANENT)
        tx = Transaction(env, options)
        if self.chunking and any(t.stage is Stage.ENVELOPE for t in self._txs):
            # A BDAT before this one is unanswered and may fail: RFC 3030 §2 then
            # wants an RSET before the next command. The reset opens this message.
            self._send(tx, Step.RSET, RSET)
        self._txs.append(tx)
        self._send(tx, Step.MAIL, command("MAIL FROM", env.mail_from, options))
        if self.pipelining:
            for address in env.rcpt_to:
                self._send_rcpt(tx, address)
            if self.chunking:
                chunk, tx.octets = bdat_last(env.raw)
                self._send(tx, Step.BDAT, chunk)
                self._body_queued = True
            else:
                self._send(tx, Step.DATA, DATA)
            tx.data_sent = True
        return None

    def receive(self, reply: Reply) -> list[Event]:
        """The next reply, matched to the oldest command still unanswered."""
        if not self._expect:
            raise ProtocolError(f"a reply nobody asked for: {reply.text}")
        tx, step = self._expect.popleft()
        tx.unanswered -= 1
        self._answered = True
        if reply.code == REPLY_CLOSING:
            return self._closing(tx, step, reply)
        events: list[Event] = []
        if step is Step.MAIL:
            tx.mail = reply
        elif step is Step.RCPT:
            tx.rcpts.append(reply)
        elif step in (Step.DATA, Step.BDAT):
            tx.data = reply
        elif step is Step.END:
            if tx.stage is Stage.BODY:
                events.append(Done(tx.env, with_final(tx.env, list(tx.rcpts), reply.code, reply.text)))
            self._txs.remove(tx)
            return events
        elif step is Step.RSET:
            if reply.code != REPLY_OK:
                self.closed = True  # the session's state is unknown: use a new one
                tx.reset_failed = True
            if tx.stage is Stage.CLOSING:
                self._txs.remove(tx)
                return events
        if tx.stage is Stage.ENVELOPE and not tx.unanswered:
            events.extend(self._advance(tx))
        return events

    def lost(self, reason: str, *, closed_by_relay: bool) -> list[Event]:
        """The connection is gone (`reason` names why): settle every message in flight.

        A message whose body went out has an unknown fate: temporary, and if
        the relay closed the connection it counts as an attempt (it may be the
        message that makes the relay hang up). One whose envelope the relay
        had accepted when the connection went, at DATA, the same. One never
        answered is returned Unanswered, to be tried on a new session — but
        not with BDAT once written: its body went with its MAIL, and the relay
        may have taken it before its replies were lost, so it is deferred."""
        self.closed = True
        events: list[Event] = []
        for tx in self._txs:
            step = next((s for t, s in self._expect if t is tx), None)
            if tx.stage is Stage.CLOSING or step is None:
                continue  # decided already
            text = f"{(Step.MAIL if step is Step.RSET else step).value}: {reason}"
            if tx.mail is None and not (self.chunking and tx.written):
                events.append(Unanswered(tx.env, text))
                continue
            envelope_accepted = (tx.mail is not None and classify(tx.mail.code) is Kind.SENT
                                 and any(classify(r.code) is Kind.SENT for r in tx.rcpts))
            in_data = (step is Step.DATA or step in BODY_STEPS) and envelope_accepted
            rcpts: list[Reply | None] = list(tx.rcpts) + [None] * (len(tx.env.rcpt_to) - len(tx.rcpts))
            events.append(Done(tx.env, with_final(tx.env, rcpts, None, text, Kind.TEMPORARY,
                                                  lost_in_data=in_data and closed_by_relay)))
        self._txs.clear()
        self._expect.clear()
        self._out.clear()
        return events

    # -- inside

    def _send(self, tx: Transaction, step: Step, line: bytes) -> None:
        self._out.append(line)
        self._expect.append((tx, step))
        tx.unanswered += 1

    def _send_rcpt(self, tx: Transaction, address: str) -> None:
        self._send(tx, Step.RCPT, command("RCPT TO", address))
        tx.rcpt_sent += 1

    def _advance(self, tx: Transaction) -> list[Event]:
        """Every command written for `tx` is answered: the next command, or the decision."""
        assert tx.mail is not None
        if self.chunking:
            return self._chunk_answered(tx)
        if not self.pipelining and tx.data is None:
            # One at a time: stop at the first refusal that ends the transaction.
            if classify(tx.mail.code) is Kind.SENT:
                if tx.rcpt_sent < len(tx.env.rcpt_to):
                    self._send_rcpt(tx, tx.env.rcpt_to[tx.rcpt_sent])
                    return []
                if not tx.data_sent and any(classify(r.code) is Kind.SENT for r in tx.rcpts):
                    self._send(tx, Step.DATA, DATA)
                    tx.data_sent = True
                    return []
        plan, outcome = decide_envelope(tx.env, tx.mail, tx.rcpts, tx.data)
        if plan is Plan.BODY:
            tx.stage = Stage.BODY
            self._send(tx, Step.END, encode_body(tx.env.raw))
            self._body_queued = True
            return []
        tx.stage = Stage.CLOSING
        self._send(tx, Step.END if plan is Plan.EMPTY else Step.RSET,
                   END_OF_DATA if plan is Plan.EMPTY else RSET)
        assert outcome is not None
        return [Done(tx.env, outcome)]

    def _chunk_answered(self, tx: Transaction) -> list[Event]:
        """A BDAT message's last reply is in: its outcome. A failed BDAT leaves the
        session indeterminate (RFC 3030 §2); the message written after it opens
        with RSET, and when none was, an RSET goes now."""
        assert tx.mail is not None and tx.data is not None
        outcome = decide_chunked(tx.env, tx.mail, tx.rcpts, tx.data)
        if tx.reset_failed:
            outcome = unsettled(outcome)
        if classify(tx.data.code) is not Kind.SENT and tx is self._txs[-1]:
            tx.stage = Stage.CLOSING
            self._send(tx, Step.RSET, RSET)
        else:
            self._txs.remove(tx)
        return [Done(tx.env, outcome)]

    def _closing(self, tx: Transaction, step: Step, reply: Reply) -> list[Event]:
        """421: the relay is closing the session (RFC 5321 §3.8). Whatever it had
        not answered yet is settled now; nothing more is read or written. A
        message whose MAIL it never answered was not taken, even with its BDAT
        written: the relay stops reading at the 421."""
        events: list[Event] = []
        untried = f"not tried: relay closed the session ({reply.text})"
        for t in self._txs:
            if t.stage is Stage.CLOSING:
                continue
            if t is tx and step in BODY_STEPS:
                # The body went out; the relay refused it while closing.
                events.append(Done(t.env, with_final(t.env, list(t.rcpts), reply.code, reply.text)))
            elif t.mail is None:
                # MAIL answered 421, or never answered: nothing of it was accepted.
                events.append(Unanswered(t.env, f"{Step.MAIL.value}: {reply.text}", reply.code))
            else:
                rcpts: list[Reply | None] = list(t.rcpts) + [None] * (len(t.env.rcpt_to) - len(t.rcpts))
                if t is tx and step is Step.RCPT:
                    rcpts[len(t.rcpts)] = reply
                events.append(Done(t.env, with_final(t.env, rcpts, reply.code, reply.text,
                                                     Kind.TEMPORARY, untried=untried)))
        self.closed = True
        self._txs.clear()
        self._expect.clear()
        self._out.clear()
        return events
