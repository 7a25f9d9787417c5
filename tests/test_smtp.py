"""mailmand.smtp against real aiosmtpd servers on loopback (tests/smtpd.py)."""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import pytest

from mailmand.config import AuthConfig, SmtpConfig, replace
from mailmand.hostname import mail_domain
from mailmand.smtp import Envelope, Relay, SendResult, TokenBucket, classify, session
from mailmand.smtp import relays as relays_module
from tests.smtpd import SmtpServer, TlsCa

Start = Callable[..., SmtpServer]
Relays = Callable[[SmtpConfig], Relay]
PASSWORD = "s3cret-Pa55word"


def config(server: SmtpServer, **changes: object) -> SmtpConfig:
    base = SmtpConfig(
        host=server.host,
        port=server.port,
        connections=1,
        timeout=5.0,
        data_timeout=5.0,
        helo="client.test",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def envelope(n: int, *rcpt: str, body: bytes = b"Hello.\r\n") -> Envelope:
    to = rcpt or ("to@example.com",)
    raw = (
        b"From: app@example.com\r\nTo: " + ", ".join(to).encode() + b"\r\n"
        b"Subject: test " + str(n).encode() + b"\r\n"
        b"Message-ID: <" + str(n).encode() + b"@example.com>\r\n\r\n" + body
    )
    return Envelope(id=f"m{n}", mail_from="app@example.com", rcpt_to=to, raw=raw)


@pytest.fixture
def relays() -> Iterator[Callable[[SmtpConfig], Relay]]:
    made: list[Relay] = []

    def make(cfg: SmtpConfig) -> Relay:
        relay = Relay(cfg)
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.close()


def send(relay: Relay, envelopes: Iterable[Envelope], stop: threading.Event | None = None) -> Iterator[SendResult]:
    """The results of `send_grouped` (the dispatcher's path), one at a time."""
    groups = relay.send_grouped(envelopes, stop)
    try:
        for group in groups:
            yield from group
    finally:
        groups.close()


def send_one(relay: Relay, env: Envelope) -> SendResult:
    [result] = list(send(relay, [env]))
    return result


# -- delivery and sessions


def test_batches_share_one_connection(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server()
    relay = relays(config(server))
    envs = [envelope(i) for i in range(200)]
    results = []
    for start in range(0, 200, 50):
        results += list(send(relay, envs[start : start + 50]))
    assert [r.kind for r in results] == ["sent"] * 200
    assert sorted(r.id for r in results) == sorted(e.id for e in envs)
    assert all(r.code == 250 and r.relay == config(server).relay for r in results)
    assert len(server.messages) == 200
    assert server.connections == 1


def test_raw_bytes_arrive_unchanged(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server()
    env = envelope(1, body=".leading dot\r\n..two\r\nnon-ascii: été\r\n".encode())
    result = send_one(relays(config(server)), env)
    assert result.kind == "sent"
    [received] = server.messages
    assert received.data == env.raw
    assert received.mail_options == ("BODY=8BITMIME",)  # 8-bit body declared (RFC 6152)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll until `condition()` holds; False if it never did within `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_parallel_sessions(smtp_server: Start, relays: Relays) -> None:
    gate = threading.Event()
    server = smtp_server(gate=gate)  # every end of DATA waits at the gate
    relay = relays(config(server, connections=4))
    results: list[SendResult] = []
    sender = threading.Thread(target=lambda: results.extend(send(relay, [envelope(i) for i in range(40)])))
    sender.start()
    try:
        # Four messages held at once can only come from four sessions at once.
        assert wait_for(lambda: server.held == 4), f"held {server.held}"
    finally:
        gate.set()
        sender.join(30)
    assert len(results) == 40 and all(r.kind == "sent" for r in results)
    assert server.connections == 4
    results = list(send(relay, [envelope(i) for i in range(40, 80)]))
    assert len(results) == 40 and all(r.kind == "sent" for r in results)
    assert server.connections == 4  # the pool carried over
    assert len(server.messages) == 80


def test_workers_start_as_work_is_found(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server()
    relay = relays(config(server, connections=100))
    askers: set[str] = set()

    def feed(envs: list[Envelope]) -> Iterator[Envelope]:
        for env in envs:
            askers.add(threading.current_thread().name)
            yield env
        askers.add(threading.current_thread().name)

    assert list(send(relay, feed([]))) == []
    assert askers == {"mailmand-smtp-0"} and server.connections == 0  # an idle tick: one thread
    askers.clear()
    assert len(list(send(relay, feed([envelope(i) for i in range(3)])))) == 3
    assert 1 <= len(askers) <= 4  # one more worker for each that found work, not 100


def test_close_quits_sessions(smtp_server: Start) -> None:
    server = smtp_server()
    relay = Relay(config(server, connections=2))
    list(send(relay, [envelope(i) for i in range(10)]))
    assert server.active >= 1
    relay.close()
    assert wait_for(lambda: server.active == 0)


def test_results_are_yielded_as_they_come(smtp_server: Start, relays: Relays) -> None:
    gate = threading.Event()
    gate.set()
    server = smtp_server(gate=gate)
    relay = relays(config(server))

    def hold_after_first(env: Envelope) -> Envelope:
        if env.id == "m2":
            # Handed out once m1's DATA was answered, after m0's end of data
            # (replies come in order): from here the relay holds what comes.
            gate.clear()
        return env

    it = send(relay, (hold_after_first(e) for e in [envelope(i) for i in range(3)]))
    first: list[SendResult] = []
    reader = threading.Thread(target=lambda: first.append(next(it)))
    reader.start()
    try:
        # The first result arrives while the relay holds the second message
        # (shut gate: it cannot finish), so it was not waiting for the others.
        assert wait_for(lambda: bool(first)), "the first result waited for the others"
        assert wait_for(lambda: server.held == 1) and len(server.messages) < 3
    finally:
        gate.set()
        reader.join(30)
    assert first[0].id == "m0" and first[0].kind == "sent"
    assert [r.id for r in it] == ["m1", "m2"]


def test_linger_gathers_results_but_ends_with_the_last_worker(smtp_server: Start, relays: Relays) -> None:
    """With `linger`, results that come back within it are yielded together (one
    commit for many), and the step does not wait out the linger once every
    worker is done."""
    server = smtp_server()
    relay = relays(config(server, connections=1))
    t0 = time.monotonic()
    groups = list(relay.send_grouped([envelope(i) for i in range(10)], linger=60.0))
    assert [[r.id for r in g] for g in groups] == [[f"m{i}" for i in range(10)]]
    assert all(r.kind == "sent" for r in groups[0])
    assert time.monotonic() - t0 < 30, "waited out the linger after the last worker was done"


def test_linger_ends_once_gather_results_are_in(smtp_server: Start, relays: Relays) -> None:
    """A lingering step does not wait out the linger once `gather` results are in:
    the first two come back while the relay still holds the third."""
    gate = threading.Event()
    gate.set()
    server = smtp_server(gate=gate)
    relay = relays(config(server))

    def hold_from_the_third(env: Envelope) -> Envelope:
        if env.id == "m3":
            # Handed out once m2's DATA was answered, after m1's end of data went
            # out: from here the relay holds what comes (m2's end of data).
            gate.clear()
        return env

    groups = relay.send_grouped((hold_from_the_third(e) for e in [envelope(i) for i in range(4)]),
                                linger=60.0, gather=2)
    first: list[list[SendResult]] = []
    reader = threading.Thread(target=lambda: first.append(next(groups)))
    reader.start()
    try:
        assert wait_for(lambda: bool(first)), "the step waited out its linger with `gather` results in"
        assert wait_for(lambda: server.held == 1)  # m2 comes only once the gate opens
    finally:
        gate.set()
        reader.join(30)
    assert [(r.id, r.kind) for r in first[0]] == [("m0", "sent"), ("m1", "sent")]
    assert [(r.id, r.kind) for g in groups for r in g] == [("m2", "sent"), ("m3", "sent")]


def out_at_most(relay: Relay, most: int, n: int = 60) -> tuple[int, int]:
    """Send `n` from a lazy feed while the caller records each list slowly; the
    most messages ever out at once (handed out, not yet dealt with), and how many came back."""
    lock = threading.Lock()
    taken = dealt = worst = 0

    def feed() -> Iterator[Envelope]:
        nonlocal taken, worst
        for i in range(n):
            with lock:
                worst = max(worst, taken + 1 - dealt)
                taken += 1
            yield envelope(i)

    for group in relay.send_grouped(feed(), linger=0.005, most=most):
        time.sleep(0.02)  # the caller's commit: the sessions must wait for it, not run ahead
        with lock:
            dealt += len(group)
    return worst, dealt


def test_most_bounds_what_is_out_until_the_caller_has_dealt_with_it(smtp_server: Start, relays: Relays) -> None:
    """With `most`, no more than that many messages are handed to sessions and not
    yet dealt with by the caller (recorded): what a daemon killed then could send
    twice. Without it, eight sessions have more out than that."""
    server = smtp_server(stall=0.01)
    relay = relays(config(server, connections=8))
    assert out_at_most(relay, most=0)[0] > 5  # the control: unbounded, the sessions run ahead
    worst, dealt = out_at_most(relay, most=5)
    assert dealt == 60 and worst <= 5, worst


# -- classification


def test_recipient_mix(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(
        rcpt_replies={
            "later@example.com": "451 4.3.0 try later",
            "gone@example.com": "550 5.1.1 no such user",
        }
    )
    env = envelope(1, "ok@example.com", "later@example.com", "gone@example.com")
    result = send_one(relays(config(server)), env)
    assert (result.kind, result.code) == ("sent", 250)
    by = {r.address: r for r in result.recipients}
    assert [r.address for r in result.recipients] == list(env.rcpt_to)
    assert (by["ok@example.com"].kind, by["ok@example.com"].code) == ("sent", 250)
    assert (by["later@example.com"].kind, by["later@example.com"].code) == ("temporary", 451)
    assert by["later@example.com"].reply == "451 4.3.0 try later"
    assert (by["gone@example.com"].kind, by["gone@example.com"].code) == ("permanent", 550)
    assert by["gone@example.com"].reply == "550 5.1.1 no such user"
    assert result.retry_recipients == ("later@example.com",)
    [received] = server.messages
    assert received.rcpt_tos == ("ok@example.com",)


def test_no_recipient_accepted(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(
        rcpt_replies={
            "later@example.com": "451 4.3.0 try later",
            "gone@example.com": "550 5.1.1 no such user",
        }
    )
    relay = relays(config(server))
    mixed = send_one(relay, envelope(1, "gone@example.com", "later@example.com"))
    assert (mixed.kind, mixed.code) == ("temporary", 451)  # still somewhere to go later
    gone = send_one(relay, envelope(2, "gone@example.com"))
    assert (gone.kind, gone.code, gone.reply) == ("permanent", 550, "550 5.1.1 no such user")
    assert send_one(relay, envelope(3)).kind == "sent"  # RSET kept the session usable
    assert server.connections == 1
    assert len(server.messages) == 1


@pytest.mark.parametrize(
    ("reply", "kind"),
    [("554 5.6.0 content rejected", "permanent"), ("451 4.3.0 disk full", "temporary")],
)
def test_refused_at_data(smtp_server: Start, relays: Relays, reply: str, kind: str) -> None:
    server = smtp_server(data_reply=reply)
    relay = relays(config(server))
    result = send_one(relay, envelope(1, "a@example.com", "b@example.com"))
    assert (result.kind, result.code, result.reply) == (kind, int(reply[:3]), reply)
    assert all((r.kind, r.reply) == (kind, reply) for r in result.recipients)
    server.data_reply = None
    assert send_one(relay, envelope(2)).kind == "sent"
    assert server.connections == 1


def test_refused_at_mail_from(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(mail_reply="553 5.7.1 sender not allowed")
    result = send_one(relays(config(server)), envelope(1, "a@example.com", "b@example.com"))
    assert (result.kind, result.code) == ("permanent", 553)
    assert all((r.kind, r.code) == ("permanent", 553) for r in result.recipients)


def test_drop_mid_data_is_temporary(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(drop_in_data=True)
    relay = relays(config(server))
    result = send_one(relay, envelope(1))
    assert (result.kind, result.code) == ("temporary", None)
    assert result.reply == "end of data: connection closed by relay" and result.lost_in_data
    server.drop_in_data = False
    assert send_one(relay, envelope(2)).kind == "sent"
    assert server.connections == 2


def test_stall_past_data_timeout_is_temporary(smtp_server: Start, relays: Relays) -> None:
    gate = threading.Event()
    server = smtp_server(gate=gate)  # the end of data is never answered while the gate is shut
    relay = relays(config(server, data_timeout=0.3))
    try:
        result = send_one(relay, envelope(1))
    finally:
        gate.set()
    assert (result.kind, result.code) == ("temporary", None)
    assert result.reply == "end of data: timed out after 0.3s"
    assert not result.lost_in_data  # a silent relay is not a hang-up: it does not count
    assert result.recipients[0].kind == "temporary"
    assert send_one(relay, envelope(2)).kind == "sent"


def test_421_closes_and_next_message_reconnects(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(rcpt_replies={"busy@example.com": "421 4.3.2 shutting down"})
    relay = relays(config(server))
    results = list(send(relay, [envelope(1, "busy@example.com", "next@example.com"), envelope(2)]))
    assert [(r.id, r.kind, r.code) for r in results] == [
        ("m1", "temporary", 421),
        ("m2", "sent", 250),
    ]
    busy, nxt = results[0].recipients
    assert (busy.kind, busy.code) == ("temporary", 421)
    assert nxt.kind == "temporary" and "not tried" in nxt.reply
    assert server.connections == 2


def test_421_at_mail_on_a_fresh_session_is_not_retried(smtp_server: Start, relays: Relays) -> None:
    # A reused session answering 421 at MAIL had gone stale: its message is tried
    # on a new one (next test). A fresh one means the relay is closing: defer, once.
    server = smtp_server(mail_reply="421 4.3.2 shutting down")
    result = send_one(relays(config(server)), envelope(1, "a@example.com", "b@example.com"))
    assert (result.kind, result.code, result.reply) == ("temporary", 421, "MAIL FROM: 421 4.3.2 shutting down")
    assert server.connections == 1


@pytest.mark.parametrize("probe", [True, False], ids=["noop-when-idle", "retry-at-mail-from"])
def test_stale_session_is_reopened_without_costing_the_message(
    smtp_server: Start, relays: Relays, monkeypatch: pytest.MonkeyPatch, probe: bool
) -> None:
    monkeypatch.setattr(session, "IDLE_PROBE", 0.0 if probe else 3600.0)
    server = smtp_server()
    relay = relays(config(server))
    assert send_one(relay, envelope(1)).kind == "sent"
    server.drop_connections()  # the relay cut the idle session
    results = list(send(relay, [envelope(2)]))
    assert [(r.id, r.kind) for r in results] == [("m2", "sent")]
    assert server.connections == 2
    assert len(server.messages) == 2


def test_relay_idle_timeout(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(idle_timeout=0.2)
    relay = relays(config(server))
    assert send_one(relay, envelope(1)).kind == "sent"
    assert wait_for(lambda: server.active == 0)  # the relay dropped the idle session
    assert send_one(relay, envelope(2)).kind == "sent"
    assert server.connections == 2


def test_unreachable_relay_defers_the_whole_batch(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server()
    cfg = config(server, connections=2)
    server.stop()  # nothing listens there any more
    results = list(send(relays(cfg), [envelope(i) for i in range(5)]))
    assert len(results) == 5
    assert all(r.kind == "temporary" and r.code is None for r in results)
    assert all("connection failed" in r.reply for r in results)


def test_helo_defaults_to_the_mail_domain(smtp_server: Start, relays: Relays,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    server = smtp_server()
    assert send_one(relays(config(server, helo=None)), envelope(1)).kind == "sent"
    assert send_one(relays(config(server, helo="mx-7.example.net")), envelope(2)).kind == "sent"
    # Whatever this host is called: helo None asks hostname.mail_domain() (never localhost).
    monkeypatch.setattr(relays_module, "mail_domain", lambda: "satellite-3.example.org")
    assert send_one(relays(config(server, helo=None)), envelope(3)).kind == "sent"
    assert server.helos == [mail_domain(), "mx-7.example.net", "satellite-3.example.org"]
    assert mail_domain() != "localhost"


# -- what the relay offers: PIPELINING, SMTPUTF8, 8BITMIME


def commands(chunk: bytes) -> list[bytes]:
    return [line.split(b":")[0].split(b" ")[0].upper() for line in chunk.split(b"\r\n") if line]


def test_a_relay_without_pipelining_gets_one_command_at_a_time(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(pipelining=False, rcpt_replies={"gone@example.com": "550 5.1.1 no such user"})
    envs = [envelope(1, "a@example.com", "gone@example.com", "b@example.com"), envelope(2, "gone@example.com"),
            envelope(3)]
    results = list(send(relays(config(server)), envs))
    assert [(r.id, r.kind) for r in results] == [("m1", "sent"), ("m2", "permanent"), ("m3", "sent")]
    envelope_chunks = [c for c in server.chunks if commands(c)[0] in (b"MAIL", b"RCPT", b"DATA", b"RSET")]
    assert len(envelope_chunks) == 5 + 3 + 3  # m1: MAIL 3×RCPT DATA; m2: MAIL RCPT RSET; m3: MAIL RCPT DATA
    assert all(c.count(b"\r\n") == 1 for c in envelope_chunks), envelope_chunks


@pytest.mark.parametrize("setting", ["auto", "off"])
def test_pipelining_when_offered_unless_off(smtp_server: Start, relays: Relays, setting: str) -> None:
    server = smtp_server()
    results = list(send(relays(config(server, pipelining=setting)), [envelope(i, "a@x.test", "b@x.test")
                                                                       for i in range(3)]))
    assert [r.kind for r in results] == ["sent"] * 3 and len(server.messages) == 3
    shapes = [commands(c) for c in server.chunks]
    if setting == "auto":
        assert [b"MAIL", b"RCPT", b"RCPT", b"DATA"] in shapes  # the first envelope in one write
        # the next envelope rides with the body before it
        assert sum(1 for s in shapes if s[-4:] == [b"MAIL", b"RCPT", b"RCPT", b"DATA"]) == 3
    else:
        assert not any(len(s) > 1 and s[0] in (b"MAIL", b"RCPT") for s in shapes)


def test_pipelined_refusals_keep_the_session(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(rcpt_replies={"gone@example.com": "550 5.1.1 no such user",
                                       "later@example.com": "451 4.3.0 try later"})
    envs = [envelope(1, "gone@example.com"), envelope(2, "ok@example.com", "later@example.com"),
            envelope(3, "later@example.com", "gone@example.com"), envelope(4)]
    results = {r.id: r for r in send(relays(config(server)), envs)}
    assert (results["m1"].kind, results["m1"].code) == ("permanent", 550)
    assert (results["m2"].kind, results["m2"].retry_recipients) == ("sent", ("later@example.com",))
    assert (results["m3"].kind, results["m3"].code) == ("temporary", 451)
    assert results["m4"].kind == "sent"
    assert [m.rcpt_tos for m in server.messages] == [("ok@example.com",), ("to@example.com",)]
    assert server.connections == 1


def test_hang_up_at_data_with_a_message_riding_behind(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(drop_in_data="poison@example.com")
    envs = [envelope(1), envelope(2, "poison@example.com"), envelope(3), envelope(4)]
    results = {r.id: r for r in send(relays(config(server)), envs)}
    poison = results.pop("m2")
    assert (poison.kind, poison.code, poison.lost_in_data) == ("temporary", None, True)
    assert poison.reply == "end of data: connection closed by relay"
    assert all(r.kind == "sent" and not r.lost_in_data for r in results.values())
    # m3 rode with m2's body: never answered, so sent again on a new session, once.
    assert sorted(m.data.split(b"Subject: ")[1][:6] for m in server.messages) == [
        b"test 1", b"test 3", b"test 4"]
    assert server.connections == 2


def test_smtputf8_address_goes_with_smtputf8(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server()
    env = Envelope("u1", "app@example.com", ("usér@exämple.com",), "To: usér@exämple.com\r\n\r\nhé\r\n".encode())
    result = send_one(relays(config(server)), env)
    assert result.kind == "sent"
    [received] = server.messages
    assert received.rcpt_tos == ("usér@exämple.com",) and "SMTPUTF8" in received.mail_options


def test_smtputf8_address_to_a_relay_without_it_fails_and_sends_nothing(smtp_server: Start,
                                                                        relays: Relays) -> None:
    server = smtp_server(smtputf8=False)
    env = Envelope("u1", "app@example.com", ("usér@example.com",), b"To: x\r\n\r\nhi\r\n")
    relay = relays(config(server))
    [bad, good] = list(send(relay, [env, envelope(2)]))
    assert (bad.kind, bad.code) == ("permanent", None)
    assert bad.reply == "relay does not support SMTPUTF8, needed for a non-ASCII address"
    assert good.kind == "sent" and len(server.messages) == 1 and server.connections == 1


def test_an_outage_is_logged_once_then_its_end(smtp_server: Start, relays: Relays,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailmand.smtp")
    server = smtp_server()
    relay = relays(config(server, connections=2))
    server.stop()
    for i in range(4):
        assert {r.kind for r in send(relay, [envelope(10 * i + k) for k in range(3)])} == {"temporary"}
    down = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(down) == 1 and "unavailable: connection failed" in down[0].getMessage()
    server.restart()
    assert send_one(relay, envelope(99)).kind == "sent"
    [back] = [r.getMessage() for r in caplog.records if "cleared" in r.getMessage()]
    assert back.startswith(f"relay {server.host}:{server.port} unavailable: cleared after")
    assert "(8 failure(s))" in back  # 4 sends, each with 2 sessions that could not open


# -- AUTH


def test_auth_good(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(auth=("app", PASSWORD))
    cfg = config(server, auth=AuthConfig(username="app", password=PASSWORD))
    assert send_one(relays(cfg), envelope(1)).kind == "sent"


def test_auth_bad_defers_and_never_shows_the_password(
    smtp_server: Start, relays: Relays, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = smtp_server(auth=("app", "the-right-one"))
    cfg = config(server, auth=AuthConfig(username="app", password=PASSWORD))
    relay = relays(cfg)
    result = send_one(relay, envelope(1))
    assert (result.kind, result.code) == ("temporary", None)
    assert result.reply.startswith("authentication failed: 535")
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    shown = [result.reply, repr(result), repr(cfg), repr(cfg.auth), repr(relay)]
    shown += [record.getMessage() for record in caplog.records]
    shown += [str(record.args) for record in caplog.records]
    for text in shown:
        assert PASSWORD not in text
    assert not any(
        encoded in r.getMessage() for r in caplog.records if r.name.startswith("mailmand")
    )
    assert not server.messages


def test_auth_missing_is_temporary(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(auth=("app", PASSWORD))
    result = send_one(relays(config(server)), envelope(1))
    assert (result.kind, result.code) == ("temporary", 530)  # a session problem, not the message's


# -- TLS


def test_starttls_verified(smtp_server: Start, relays: Relays, tls_ca: TlsCa) -> None:
    server = smtp_server(tls="starttls", auth=("app", PASSWORD))
    cfg = config(
        server,
        tls="starttls",
        ca_file=tls_ca.ca_file,
        auth=AuthConfig(username="app", password=PASSWORD),
    )
    assert send_one(relays(cfg), envelope(1)).kind == "sent"
    assert len(server.messages) == 1


def test_implicit_tls_verified(smtp_server: Start, relays: Relays, tls_ca: TlsCa) -> None:
    server = smtp_server(tls="ssl")
    relay = relays(config(server, tls="ssl", ca_file=tls_ca.ca_file))
    results = list(send(relay, [envelope(i) for i in range(3)]))
    assert [r.kind for r in results] == ["sent"] * 3
    assert server.connections == 1


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_untrusted_certificate_refused_unless_verify_false(
    smtp_server: Start, relays: Relays, mode: str
) -> None:
    server = smtp_server(tls=mode)
    refused = send_one(relays(config(server, tls=mode)), envelope(1))  # system CAs only
    assert (refused.kind, refused.code) == ("temporary", None)
    assert "certificate verify failed" in refused.reply
    assert not server.messages
    unverified = send_one(relays(config(server, tls=mode, verify=False)), envelope(2))
    assert unverified.kind == "sent"


def test_starttls_required(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server()  # plain, no STARTTLS offered
    result = send_one(relays(config(server, tls="starttls")), envelope(1))
    assert (result.kind, result.code) == ("temporary", None)
    assert "does not offer STARTTLS" in result.reply
    assert not server.messages


# -- stop and rate


def test_stop_event_honoured(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(stall=0.1)
    relay = relays(config(server))
    stop = threading.Event()
    results = []
    for result in send(relay, [envelope(i) for i in range(20)], stop):
        results.append(result)
        stop.set()
    # The worker finishes the messages it holds and takes no other: with
    # pipelining, the one whose body was out and the one riding with it.
    assert 1 <= len(results) <= 3
    assert all(r.kind == "sent" for r in results)
    assert len(server.messages) == len(results)


def test_stop_set_before_send_attempts_nothing(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server()
    stop = threading.Event()
    stop.set()
    assert list(send(relays(config(server)), [envelope(1)], stop)) == []
    assert server.connections == 0


def test_token_bucket_counts_tokens() -> None:
    now = [100.0]
    bucket = TokenBucket(8.0, clock=lambda: now[0])  # binary fractions: exact clock steps
    assert bucket.capacity == 8.0
    assert sum(bucket.try_take() == 0.0 for _ in range(15)) == 8  # the burst, then dry
    assert bucket.try_take() == pytest.approx(0.125)
    now[0] += 0.5
    assert sum(bucket.try_take() == 0.0 for _ in range(10)) == 4
    now[0] += 3600.0  # a long idle saves up no more than the capacity
    assert sum(bucket.try_take() == 0.0 for _ in range(50)) == 8
    taken = 0
    for _ in range(80):  # 10 s at 8/s, asked five times a tick
        now[0] += 0.125
        taken += sum(bucket.try_take() == 0.0 for _ in range(5))
    assert taken == 80


def test_token_bucket_slow_rate_and_stop() -> None:
    now = [0.0]
    bucket = TokenBucket(500 / 3600, clock=lambda: now[0])  # 500/h
    assert bucket.capacity == 1.0
    assert bucket.try_take() == 0.0
    assert bucket.try_take() == pytest.approx(7.2)
    stop = threading.Event()
    stop.set()
    assert bucket.take(stop) is False  # would wait 7.2 s: stop wins


def test_rate_limit_shared_by_sessions(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server()
    relay = relays(config(server, connections=3, rate=20.0))
    started = time.monotonic()
    results = list(send(relay, [envelope(i) for i in range(30)]))
    # A burst of 20, then 10 more at 20/s: at least 0.5 s whatever the sessions.
    assert time.monotonic() - started >= 0.4
    assert len(results) == 30 and all(r.kind == "sent" for r in results)


def test_classify() -> None:
    assert [classify(c) for c in (250, 251, 421, 451, 550, 554, None, -1)] == [
        "sent",
        "sent",
        "temporary",
        "temporary",
        "permanent",
        "permanent",
        "temporary",
        "temporary",
    ]
