"""Signed webhooks against a real HTTP(S) receiver on loopback (tests/webhookrecv.py):
the sender driven one round at a time on a real store, then real daemons."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailmand.config import BackoffConfig, EventsConfig, WebhookConfig
from mailmand.message import Record
from mailmand.stores import open_store
from mailmand.stores.model import EventType, Status
from mailmand.webhooks import BATCH, HEADER, Sender, Webhooks, shown, sign, verify

pytest_plugins = ("tests.webhookrecv",)

SECRET = "whsec_9f8e7d6c5b4a"


def rec(i: int, created: float | None = None, tags: dict[str, str] | None = None) -> Record:
    raw = f"Subject: s{i}\r\n\r\nbody {i}\r\n".encode()
    return Record(f"m{i:04d}", "a@x.org", ("b@x.org",), raw, 0, 0.0, None,
                  time.time() if created is None else created, tags=tags)


_made: list[Sender] = []


@pytest.fixture
def store(database_config):
    s = open_store(database_config, create=True)
    yield s
    while _made:  # the senders first: each hands its lease back
        _made.pop().stop()
    s.close()


def hook(url: str, **kw) -> WebhookConfig:
    return WebhookConfig(url=url, secret=SECRET, **{"timeout": 2.0, **kw})


def sender(store, h: WebhookConfig, owner: str = "d1", **events) -> Sender:
    """A sender driven by the test, one `step` at a time (its thread is never started)."""
    s = Sender(store, h, EventsConfig(webhooks=(h,), **events), owner)
    _made.append(s)
    s.step(time.time())  # the first round registers it: it is sent what happens from now on
    return s


def drain(s: Sender, rounds: int = 20) -> None:
    """Rounds until nothing is pending (or `rounds` went by)."""
    for _ in range(rounds):
        s.step(time.time())
        if not s.store.webhook_pending(s.key, s.types):
            return


# -- the signature ------------------------------------------------------------------------


def test_the_signature_is_stripes_shape_and_verifies():
    body = b'[{"id":"e1"}]'
    header = sign(SECRET, body, 1_700_000_000)
    t, v1 = header.split(",")
    assert t == "t=1700000000" and len(v1) == len("v1=") + 64
    import hashlib
    import hmac

    assert v1 == "v1=" + hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert verify(SECRET, header, body, now=1_700_000_100)
    assert not verify(SECRET, header, body + b" ", now=1_700_000_100)  # the body, byte for byte
    assert not verify("whsec_other", header, body, now=1_700_000_100)
    assert not verify(SECRET, header, body, now=1_700_000_301)  # too old: a replay
    assert not verify(SECRET, "t=1700000000", body, now=1_700_000_000)
    rotated = f"{header},v1={'0' * 64}"  # several v1 (a secret being rotated): any one will do
    assert verify(SECRET, rotated, body, now=1_700_000_000)


def test_a_password_in_the_url_is_masked_wherever_it_is_shown():
    assert shown("https://u:p4ss@app.example/h?x=1") == "https://u:***@app.example/h?x=1"
    assert shown("https://app.example/h") == "https://app.example/h"


# -- one sender, one round at a time, on every store engine -------------------------------------


def test_a_batch_is_posted_signed_and_acknowledged(store, receiver):
    r = receiver()
    store.insert([rec(0)])  # before the webhook existed: not sent
    s = sender(store, hook(r.url))
    store.insert([rec(i, tags={"order": str(i)}) for i in range(1, BATCH + 20)])
    assert store.webhook_pending(s.key) == BATCH + 19
    assert s.step(time.time()) == 0  # a full batch: the next one at once
    s.step(time.time())
    [first, second] = r.acked()
    assert (len(first.events), len(second.events)) == (BATCH, 19)
    assert first.path == "/hooks/mail?k=1" and first.headers["content-type"] == "application/json"
    assert verify(SECRET, first.headers[HEADER.lower()], first.body)
    e = first.events[0]
    assert set(e) == {"id", "type", "message", "tags", "recipients", "relay", "code", "reply", "attempt", "at"}
    assert (e["type"], e["message"], e["tags"], e["attempt"]) == ("queued", "m0001", {"order": "1"}, 0)
    assert e["recipients"] == [{"address": "b@x.org", "status": "queued", "code": None, "reply": ""}]
    assert "m0000" not in {x["message"] for x in r.events()}
    assert store.webhook_pending(s.key) == 0 and s.counts.failures == 0


def test_an_endpoint_that_fails_gets_the_same_events_again_with_backoff(store, receiver):
    r = receiver()
    r.status = 500
    s = sender(store, hook(r.url), backoff=BackoffConfig(min=60.0, max=600.0))
    store.insert([rec(i) for i in range(3)])
    now = time.time()
    s.step(now)
    assert s.step(now + 1) > 0 and len(r.posts) == 1  # backing off: no second POST before its time
    claim = store.webhook_claim(s.key, "d1", now + 1, 60)
    assert claim is not None and claim.fails == 1 and now + 45 <= claim.retry_at <= now + 75  # 60 s ± 25%
    s.step(claim.retry_at)
    r.status = 204
    later = store.webhook_claim(s.key, "d1", now + 1, 60)
    assert later is not None and later.fails == 2
    s.step(later.retry_at)
    assert [p.status for p in r.posts] == [500, 500, 204]
    assert r.posts[0].ids == r.posts[1].ids == r.posts[2].ids  # the same events, the same ids
    assert r.posts[0].headers[HEADER.lower()] != r.posts[2].headers[HEADER.lower()]  # signed anew each time
    assert all(verify(SECRET, p.headers[HEADER.lower()], p.body, now=later.retry_at) for p in r.posts)
    assert s.counts.failures == 2 and store.webhook_pending(s.key) == 0


def test_only_the_types_asked_for_are_sent(store, receiver):
    r = receiver()
    s = sender(store, hook(r.url, types=("cancelled",)))
    store.insert([rec(i) for i in range(3)])
    drain(s)
    assert r.posts == [] and store.webhook_pending(s.key, s.types) == 0
    store.cancel("m0001", time.time())
    drain(s)
    assert [(e["type"], e["message"]) for e in r.events()] == [("cancelled", "m0001")]


def test_events_older_than_max_time_are_given_up(store, receiver, caplog):
    r = receiver()
    r.status = 503
    s = sender(store, hook(r.url), max_time=3600.0)
    store.insert([rec(1, created=time.time() - 7200), rec(2)])
    with caplog.at_level(logging.WARNING, "mailmand.webhooks"):
        s.step(time.time())
        s.step(time.time() + 60)  # a retry of the same batch: said once
    assert [x["message"] for x in r.posts[0].events] == ["m0002"]  # the old one is not sent
    assert caplog.text.count("gave up on 1 event(s) older than events.max-time (3600s)") == 1


def test_a_hanging_endpoint_costs_one_timeout_per_try(store, receiver):
    r = receiver()
    r.hang.set()
    s = sender(store, hook(r.url, timeout=0.5))
    store.insert([rec(1)])
    t = threading.Thread(target=s.step, args=(time.time(),))
    t.start()
    t.join(30)  # the endpoint never answers: the sender gives up after its timeout
    assert not t.is_alive()
    assert s.counts.failures == 1 and store.webhook_pending(s.key) == 1


def test_tls_is_verified_unless_the_ca_is_given(store, receiver, tls_ca, tmp_path, caplog):
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.cert.configure_cert(context)
    r = receiver(tls=context)
    s = sender(store, hook(r.url))
    store.insert([rec(1)])
    with caplog.at_level(logging.WARNING, "mailmand.webhooks"):
        s.step(time.time())
    assert r.acked() == [] and s.counts.failures == 1
    assert "failed, retrying with backoff: TLS: unable to get local issuer certificate" in caplog.text
    ca = tmp_path / "ca.pem"
    tls_ca.ca.cert_pem.write_to_path(str(ca))
    trusted = sender(store, hook(r.url.replace("/hooks", "/hooks2"), ca_file=ca), owner="d2")
    store.insert([rec(2)])
    drain(trusted)
    assert [e["message"] for e in r.events()] == ["m0002"]


def test_the_secret_is_never_logged(store, receiver, caplog):
    r = receiver()
    r.status = 500
    s = sender(store, hook(r.url.replace("127.0.0.1", f"user:{SECRET}@127.0.0.1")))
    store.insert([rec(1)])
    with caplog.at_level(logging.DEBUG):
        s.step(time.time())
    assert r.posts and "answered 500" in caplog.text
    assert SECRET not in caplog.text and SECRET not in repr(s.hook) and SECRET not in s.key
    assert r.posts[0].headers["authorization"].startswith("Basic ")  # credentials in the URL: HTTP Basic


def test_two_daemons_share_a_webhook_one_at_a_time(store, receiver, database_config):
    if database_config.engine != "postgres":
        pytest.skip("one daemon per SQLite store")
    r = receiver()
    other = open_store(database_config, create=True)
    try:
        a, b = sender(store, hook(r.url), "d1"), sender(other, hook(r.url), "d2")
        for i in range(5):
            store.insert([rec(10 * i + j) for j in range(10)])
            a.step(time.time())
            b.step(time.time())  # d1 holds the lease: d2 sends nothing
        ids = [i for p in r.acked() for i in p.ids]
        assert len(ids) == len(set(ids)) == 50
        a.stop()  # hands the lease back: d2 takes it at once
        b._renew_at = 0.0
        store.insert([rec(99)])
        drain(b)
        assert r.events()[-1]["message"] == "m0099" and len(r.events()) == 51
    finally:
        other.close()


def test_a_reload_starts_and_stops_senders(store, receiver):
    r1, r2 = receiver(), receiver()
    hooks = Webhooks(store, EventsConfig(webhooks=(hook(r1.url),)), "d1").start()
    try:
        assert [s.key for s in hooks.senders.values()] == [r1.url]

        from mailmand.config import Config, ServerConfig

        hooks.configure(Config(server=ServerConfig(events=EventsConfig(webhooks=(hook(r2.url),)))))
        assert [s.key for s in hooks.senders.values()] == [r2.url]
        store.insert([rec(1)])
        deadline = time.monotonic() + 20
        while not r2.events() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [e["message"] for e in r2.events()] == ["m0001"] and r1.posts == []
    finally:
        hooks.stop()


def test_the_status_a_store_reports_matches_the_last_event(store):
    store.insert([rec(1)])
    store.cancel("m0001", time.time())
    last = store.events(message_id="m0001")[0][-1]
    assert last.type.value == store.get("m0001").status.value == Status.CANCELLED.value
    assert EventType(last.type) is EventType.CANCELLED


def test_the_docs_snippets_verify_a_real_signed_post(receiver, tmp_path):
    """docs/events.md's Python and Node.js checks, run on what a sender really POSTed."""
    from mailmand.config import DatabaseConfig
    from tests.test_docs import REPO, blocks

    page = (REPO / "docs" / "events.md").read_text()
    python = next(b for b in blocks(page, "python") if "def verify_mailmand" in b)
    js = next(b for b in blocks(page, "js") if "function verifyMailmand" in b)
    r = receiver()
    db = open_store(DatabaseConfig(path=tmp_path / "store" / "m.db"), create=True)
    try:
        s = sender(db, hook(r.url))
        db.insert([rec(1, tags={"order": "42"})])
        s.step(time.time())
        s.stop()
    finally:
        db.close()
    [post] = r.acked()
    header = post.headers[HEADER.lower()]
    (tmp_path / "body").write_bytes(post.body)
    (tmp_path / "tampered").write_bytes(post.body.replace(b'"42"', b'"43"'))
    old = sign(SECRET, post.body, int(time.time()) - 600)
    run_py = python + "\nimport sys\nprint(verify_mailmand(sys.argv[1], sys.argv[2], open(sys.argv[3], 'rb').read()))\n"
    run_js = js + "\nconsole.log(verifyMailmand(process.argv[1], process.argv[2], " \
                  "require('fs').readFileSync(process.argv[3])) ? 'True' : 'False');\n"
    for command in ([sys.executable, "-c", run_py], ["node", "-e", run_js]):
        def check(secret: str, sig: str, body: str, command=command) -> str:
            done = subprocess.run([*command, secret, sig, str(tmp_path / body)], capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        assert check(SECRET, header, "body") == "True", command[0]
        assert check("whsec_wrong", header, "body") == "False"
        assert check(SECRET, header, "tampered") == "False"
        assert check(SECRET, old, "body") == "False"  # a replay, ten minutes on


# -- real daemons ---------------------------------------------------------------------------------


def events_yaml(url: str, secret_file: Path, extra: str = "") -> str:
    return ("    events:\n      backoff: {min: 200ms, max: 1s}\n      webhooks:\n"
            f"        - url: \"{url}\"\n          secret-file: {secret_file}\n          timeout: 1s\n{extra}")


def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def scrape(port: int) -> dict[str, float]:
    """The webhook series of /metrics, by name and url."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("mailmand_webhook_")}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def enqueue(conf: Path, n: int, to: str = "ann@example.com", prefix: str = "m") -> list[str]:
    from mailmand import Email
    from mailmand.client import Client
    from mailmand.config import load

    client = Client(load(conf))
    try:
        return [client.enqueue(Email(sender="app@example.com", to=to, subject=f"{prefix}{i}", text="x",
                                     tags={"n": str(i)})) for i in range(n)]
    finally:
        client.close()


def test_an_endpoint_that_hangs_then_fails_gets_every_event_and_never_holds_delivery(smtp_server, write_config,
                                                                                       receiver, tmp_path):
    from mailmand.config import load
    from tests.daemonproc import DaemonProcess, wait_until

    server, r, metrics = smtp_server(), receiver(), free_port()
    conf = write_config(server.port, extra_server=events_yaml(r.url, secret_file(tmp_path))
                        + f"    metrics:\n      listen: 127.0.0.1:{metrics}\n")
    r.hang.set()  # first it never answers (each POST waits out the 1 s timeout)...
    daemon = DaemonProcess(conf).ready()
    try:
        ids = enqueue(conf, 150)
        assert wait_until(lambda: len(server.messages) == 150, timeout=60)  # ...and mail goes out meanwhile
        assert wait_until(lambda: len(r.posts) >= 2, timeout=30)
        r.status = 500  # ...then it answers 500...
        r.hang.clear()
        ids += enqueue(conf, 150, prefix="n")
        assert wait_until(lambda: len(server.messages) == 300, timeout=60)
        assert wait_until(lambda: any(p.status == 500 for p in r.posts), timeout=30)
        assert r.acked() == []  # every message delivered, not one event acknowledged yet
        url = f'url="{r.url}"'
        seen = scrape(metrics)
        assert seen[f"mailmand_webhook_failures_total{{{url}}}"] >= 3
        assert seen[f"mailmand_webhook_pending{{{url}}}"] == 600  # each message: queued, then sent
        r.status = 200  # ...and at last it acknowledges
        assert wait_until(lambda: len(r.events()) == 600, timeout=60)
        assert wait_until(lambda: scrape(metrics)[f"mailmand_webhook_pending{{{url}}}"] == 0, timeout=30)
    finally:
        assert daemon.stop() == 0
    events = r.events()
    assert {e["message"] for e in events if e["type"] == "sent"} == set(ids)  # every terminal event
    assert all(verify(SECRET, p.headers[HEADER.lower()], p.body) for p in r.posts)
    acked = {i for p in r.acked() for i in p.ids}
    failed = [p for p in r.posts if p.status != 200]
    assert all(set(p.ids) <= acked for p in failed)  # what failed came again, with the same ids
    first_ok = r.acked()[0].ids
    assert first_ok[:len(failed[-1].ids)] == failed[-1].ids  # the batch retried is the batch that failed
    assert SECRET not in daemon.log
    store = open_store(load(conf).server.database)
    try:
        assert {e.id for e in store.events(limit=10_000)[0]} == {e["id"] for e in events}
    finally:
        store.close()


def test_kill_9_loses_no_event_and_invents_none(smtp_server, write_config, receiver, tmp_path):
    """SIGKILL the daemon while it delivers (and defers) and sends events; restart it.
    Every event of the store reaches the webhook and the webhook gets no other; each
    message's events arrive in the order of its state changes, the last one as `show` says."""
    from mailmand.config import load
    from tests.daemonproc import DaemonProcess, wait_until

    server = smtp_server(rcpt_replies={"slow@example.com": "451 4.7.1 greylisted"})
    r = receiver()
    conf = write_config(server.port, extra_server="    batch: 50\n" + events_yaml(r.url, secret_file(tmp_path)),
                        smtp_extra="      connections: 4\n")
    ids = enqueue(conf, 50, to="slow@example.com", prefix="s") + enqueue(conf, 800)  # the slow ones first
    server.stall = 0.01  # so that the kill lands mid-delivery, with events sent and more to send
    daemon = DaemonProcess(conf).ready()
    try:
        assert wait_until(lambda: len(server.messages) >= 200 and len(r.acked()) >= 2, timeout=60), daemon.log
        daemon.kill()
        assert 0 < len(server.messages) < 800, "the kill must land mid-delivery"
        server.rcpt_replies.clear()  # greylisting ends: the deferred mail goes out on its next try
        server.stall = 0
        daemon = DaemonProcess(conf).ready()
        store = open_store(load(conf).server.database)
        try:
            def done() -> bool:
                return store.counts()[Status.SENT] == len(ids) and \
                    store.webhook_pending(shown(r.url)) == 0
            assert wait_until(done, timeout=90), store.counts()
            mine = {m: store.events(message_id=m, limit=100)[0] for m in ids}
            info = {m: store.get(m) for m in ids}
            attempts = {m: store.attempts(m) for m in ids}
        finally:
            store.close()
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
    got = r.events()
    recorded = {e.id for events in mine.values() for e in events}
    assert {e["id"] for e in got} == recorded  # none lost, none invented
    arrived: dict[str, list[str]] = {}
    for e in got:
        arrived.setdefault(e["message"], []).append(e["id"])
    deferred = 0
    for m in ids:
        kinds = [e.type.value for e in mine[m]]
        n = len(attempts[m])  # every attempt on record applied: its event is there, and no other
        assert kinds == ["queued", *["deferred"] * (n - 1), "sent"], (m, kinds, n)
        assert [e.attempt for e in mine[m]] == list(range(n + 1))
        assert arrived[m] == [e.id for e in mine[m]]  # in the order of its state changes
        assert kinds[-1] == info[m].status.value and mine[m][-1].attempt == info[m].attempts
        deferred += n - 1
    assert deferred >= 50  # the slow ones were deferred, at least once each


def test_daemons_sharing_a_postgres_store_send_each_event_once(smtp_server, receiver, postgres_dsn, tmp_path):
    from mailmand.config import load
    from tests.conftest import postgres_block, write_store_config
    from tests.daemonproc import DaemonProcess, wait_until

    server, r = smtp_server(), receiver()
    secret = secret_file(tmp_path)
    confs = [write_store_config(tmp_path / f"d{k}.yaml", tmp_path / f"spool{k}", server.port,
                                postgres_block(postgres_dsn), server=events_yaml(r.url, secret)) for k in (1, 2)]
    daemons = [DaemonProcess(c).ready() for c in confs]
    try:
        ids = enqueue(confs[0], 150) + enqueue(confs[1], 150, prefix="n")
        assert wait_until(lambda: len(r.events()) == 600, timeout=90)
        time.sleep(1)  # anything sent twice would come now
    finally:
        for d in daemons:
            assert d.stop() == 0
    sent = [i for p in r.acked() for i in p.ids]
    assert len(sent) == len(set(sent)) == 600  # each event once: one daemon at a time holds the webhook
    assert {e["message"] for e in r.events() if e["type"] == "sent"} == set(ids)
    store = open_store(load(confs[0]).server.database)
    try:
        assert store.webhook_pending(shown(r.url)) == 0
    finally:
        store.close()
