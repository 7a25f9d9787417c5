"""The SMTP client transaction as a state machine, without I/O ("sans-I/O").

`Client` is fed the relay's replies one at a time and asked for the bytes to
write; the socket code around it (`session.py`) only moves bytes, and the
bytes themselves are built and parsed in `wire.py`. Every rule about what a
reply means — per-recipient outcomes, what to do when no recipient was
accepted, a 421 in the middle of a group, a connection lost before or after
the body — is decided here and in `outcomes.py` (the pure decisions), and so
is tested without a server (tests/test_pipelining.py, tests/test_chunking.py).

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
from dataclasses import dataclass, field
from enum import Enum

from .outcomes import (
    REPLY_CLOSING,
    REPLY_OK,
    Envelope,
    Extensions,
    Kind,
    Outcome,
    Plan,
    RecipientResult,
    classify,
    decide_chunked,
    decide_envelope,
    everyone,
    mail_options,
    unsettled,
    with_final,
)
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

# Re-exported: the session, the pool and the tests import these from here.
__all__ = ["MAX_REPLY_LINE", "REPLY_CLOSING", "Envelope", "Extensions", "Kind", "Outcome", "ProtocolError",
           "RecipientResult", "Reply", "ReplyParser", "classify", "encode_body", "everyone"]


class Step(Enum):
    """A command whose reply is awaited; the value names it in a failure reason."""

    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"
    END = "end of data"
    BDAT = "BDAT"  # `BDAT <size> LAST` and the body: its reply is the message's final one
    RSET = "RSET"


BODY_STEPS = frozenset({Step.END, Step.BDAT})  # replies the relay may take long over (it reads the body)


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
            if t.mail is None:
                # MAIL answered 421, or never answered: nothing of it was accepted.
                events.append(Unanswered(t.env, f"{Step.MAIL.value}: {reply.text}", reply.code))
            else:
                # Its envelope was answered (at a body step, every RCPT): the 421 is its reply;
                # a recipient the 421 cut off before its RCPT was answered was never tried.
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
