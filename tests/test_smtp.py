"""mailmand.smtp against real aiosmtpd servers on loopback (tests/smtpd.py)."""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from mailmand import smtp
from mailmand.config import AuthConfig, SmtpConfig, replace
from mailmand.smtp import Envelope, Relay, SendResult, TokenBucket, classify
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


def send_one(relay: Relay, env: Envelope) -> SendResult:
    [result] = list(relay.send([env]))
    return result


# -- delivery and sessions


def test_batches_share_one_connection(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server()
    relay = relays(config(server))
    envs = [envelope(i) for i in range(200)]
    results = []
    for start in range(0, 200, 50):
        results += list(relay.send(envs[start : start + 50]))
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


def test_parallel_sessions(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(stall=0.05)  # slow enough that every worker gets work
    relay = relays(config(server, connections=4))
    results = list(relay.send([envelope(i) for i in range(40)]))
    assert len(results) == 40 and all(r.kind == "sent" for r in results)
    assert server.connections == 4
    results = list(relay.send([envelope(i) for i in range(40, 80)]))
    assert len(results) == 40 and all(r.kind == "sent" for r in results)
    assert server.connections == 4  # the pool carried over
    assert len(server.messages) == 80


def test_close_quits_sessions(smtp_server: Start) -> None:
    server = smtp_server()
    relay = Relay(config(server, connections=2))
    list(relay.send([envelope(i) for i in range(10)]))
    assert server.active >= 1
    relay.close()
    deadline = time.monotonic() + 5
    while server.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.active == 0


def test_results_are_yielded_as_they_come(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server()
    relay = relays(config(server))
    it = relay.send([envelope(i) for i in range(3)])
    first = next(it)
    assert first.kind == "sent"
    assert len(server.messages) >= 1
    assert len(list(it)) == 2


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
    assert "DATA" in result.reply and "closed" in result.reply
    server.drop_in_data = False
    assert send_one(relay, envelope(2)).kind == "sent"
    assert server.connections == 2


def test_stall_past_data_timeout_is_temporary(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(stall=3.0)
    relay = relays(config(server, data_timeout=0.3))
    result = send_one(relay, envelope(1))
    assert (result.kind, result.code) == ("temporary", None)
    assert "timed out after 0.3s" in result.reply
    assert result.duration < 2.5
    assert result.recipients[0].kind == "temporary"
    server.stall = 0.0
    assert send_one(relay, envelope(2)).kind == "sent"


def test_421_closes_and_next_message_reconnects(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(rcpt_replies={"busy@example.com": "421 4.3.2 shutting down"})
    relay = relays(config(server))
    results = list(relay.send([envelope(1, "busy@example.com", "next@example.com"), envelope(2)]))
    assert [(r.id, r.kind, r.code) for r in results] == [
        ("m1", "temporary", 421),
        ("m2", "sent", 250),
    ]
    busy, nxt = results[0].recipients
    assert (busy.kind, busy.code) == ("temporary", 421)
    assert nxt.kind == "temporary" and "not tried" in nxt.reply
    assert server.connections == 2


@pytest.mark.parametrize("probe", [True, False], ids=["noop-when-idle", "retry-at-mail-from"])
def test_stale_session_is_reopened_without_costing_the_message(
    smtp_server: Start, relays: Relays, monkeypatch: pytest.MonkeyPatch, probe: bool
) -> None:
    monkeypatch.setattr(smtp, "IDLE_PROBE", 0.0 if probe else 3600.0)
    server = smtp_server()
    relay = relays(config(server))
    assert send_one(relay, envelope(1)).kind == "sent"
    server.drop_connections()  # the relay cut the idle session
    results = list(relay.send([envelope(2)]))
    assert [(r.id, r.kind) for r in results] == [("m2", "sent")]
    assert server.connections == 2
    assert len(server.messages) == 2


def test_relay_idle_timeout(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server(idle_timeout=0.2)
    relay = relays(config(server))
    assert send_one(relay, envelope(1)).kind == "sent"
    time.sleep(0.6)
    assert send_one(relay, envelope(2)).kind == "sent"
    assert server.connections == 2


def test_unreachable_relay_defers_the_whole_batch(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server()
    cfg = config(server, connections=2)
    server.stop()  # nothing listens there any more
    results = list(relays(cfg).send([envelope(i) for i in range(5)]))
    assert len(results) == 5
    assert all(r.kind == "temporary" and r.code is None for r in results)
    assert all("connection failed" in r.reply for r in results)


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
    results = list(relay.send([envelope(i) for i in range(3)]))
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
    for result in relay.send([envelope(i) for i in range(20)], stop):
        results.append(result)
        stop.set()
    # The worker finishes the message it holds (at most one more), takes no other.
    assert 1 <= len(results) <= 2
    assert all(r.kind == "sent" for r in results)
    assert len(server.messages) == len(results)


def test_stop_set_before_send_attempts_nothing(smtp_server: Start, relays: Relays) -> None:
    server = smtp_server()
    stop = threading.Event()
    stop.set()
    assert list(relays(config(server)).send([envelope(1)], stop)) == []
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
    results = list(relay.send([envelope(i) for i in range(30)]))
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
