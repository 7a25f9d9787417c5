"""The HTTP API v1 against a real daemon and a real relay (aiosmtpd), with a real HTTP client.

What an app checks: a message it POSTed arrives at the relay as it asked; a
retried POST with its idempotency key is one message; a refusal names the field;
a listing pages through everything once; the operator's moves do what they say.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import STORE_ENGINES
from tests.daemonproc import wait_until

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4


def post(http: httpx.Client, **fields: object) -> httpx.Response:
    return http.post("/api/v1/messages", json=fields)


def status_of(http: httpx.Client, message_id: str) -> str:
    r = http.get(f"/api/v1/messages/{message_id}")
    return str(r.json()["status"]) if r.status_code == 200 else f"http {r.status_code}"


def test_a_message_posted_is_delivered_as_asked(web_daemon, smtp_server):
    relay = smtp_server()
    daemon = web_daemon(relay_port=relay.port)
    with daemon.http() as http:
        r = post(http, **{"from": "Shop <shop@example.com>"}, to=["ann@example.com"], cc="cy@example.org",
                 bcc=["hidden@example.net"], reply_to="help@example.com", subject="Your order ✓",
                 text="Thanks.", html="<p>Thanks.</p>", headers={"X-Order": "42"},
                 attachments=[{"filename": "invoice.pdf", "content_type": "application/pdf",
                               "content_base64": base64.b64encode(PDF).decode()}],
                 priority=5, tags={"order": "42"})
        assert r.status_code == 202, r.text
        message_id = r.json()["id"]
        assert re.fullmatch(r"[0-9a-f]{32}", message_id)
        assert wait_until(lambda: status_of(http, message_id) == "sent"), status_of(http, message_id)
        detail = http.get(f"/api/v1/messages/{message_id}").json()
    assert len(relay.messages) == 1
    got = relay.messages[0]
    assert got.mail_from == "shop@example.com"
    assert sorted(got.rcpt_tos) == ["ann@example.com", "cy@example.org", "hidden@example.net"]
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    assert msg["Subject"] == "Your order ✓" and msg["X-Order"] == "42" and msg["Reply-To"] == "help@example.com"
    assert "Bcc" not in msg and b"hidden@example.net" not in got.data
    attachment = next(msg.iter_attachments())
    assert attachment.get_filename() == "invoice.pdf" and attachment.get_content() == PDF
    # `show --json`'s fields, with each attempt, each recipient and the events.
    assert detail["status"] == "sent" and detail["priority"] == 5 and detail["tags"] == {"order": "42"}
    assert detail["attempts"][-1]["code"] == 250 and detail["attempts"][-1]["outcome"] == "sent"
    assert [e["type"] for e in detail["events"]] == ["queued", "sent"]
    # and `mailmand explain --json`'s paragraph
    assert detail["explain"]["state"] == "sent" and detail["explain"]["text"].startswith("sent: ")


def test_send_in_and_send_at_schedule_the_message(web_daemon):
    daemon = web_daemon()
    later = datetime.now(UTC) + timedelta(hours=2)
    with daemon.http() as http:
        a = post(http, **{"from": "a@example.com"}, to="b@example.com", text="x", send_in="5m").json()["id"]
        b = post(http, **{"from": "a@example.com"}, to="b@example.com", text="x",
                 send_at=later.isoformat()).json()["id"]
        assert wait_until(lambda: status_of(http, a) == "queued" and status_of(http, b) == "queued")
        got_a = http.get(f"/api/v1/messages/{a}").json()
        got_b = http.get(f"/api/v1/messages/{b}").json()
    assert got_a["send_after"] - got_a["created_at"] == pytest.approx(300, abs=5)
    assert got_b["send_after"] == pytest.approx(later.timestamp(), abs=0.01)


def test_an_idempotency_key_queues_one_message(web_daemon, smtp_server):
    relay = smtp_server()
    daemon = web_daemon(relay_port=relay.port)
    with daemon.http() as http:
        body = {"from": "a@example.com", "to": "b@example.com", "text": "once", "idempotency_key": "order-42"}
        ids = {http.post("/api/v1/messages", json=body).json()["id"] for _ in range(3)}
        assert len(ids) == 1
        (message_id,) = ids
        assert wait_until(lambda: status_of(http, message_id) == "sent")
        # After delivery too: the same key is the same message, not a second one.
        assert http.post("/api/v1/messages", json=body).json()["id"] == message_id
        assert http.get("/api/v1/messages", params={"to": "b@example.com"}).json()["messages"][0]["id"] == message_id
        assert len(http.get("/api/v1/messages").json()["messages"]) == 1
    time.sleep(2)  # two dispatch intervals: a second message would have gone out
    assert len(relay.messages) == 1


GOOD = {"from": "a@example.com", "to": "b@example.com", "text": "hello"}


REFUSALS = [  # (the change to a good body, status, the field named, words of the reason)
    ({"to": "not an address"}, 422, "to", "not a valid email address"),
    ({"to": None, "cc": None}, 422, "to", "at least one recipient"),
    ({"from": None}, 422, "from", "a sender is required"),
    ({"from": "x@example.com\r\nBcc: victim@example.org"}, 422, "from", ""),
    ({"subject": "hi\r\nBcc: victim@example.org"}, 422, "subject", "line break"),
    ({"headers": {"X-A": "1\nBcc: victim@example.org"}}, 422, "headers[X-A]", "line break"),
    ({"headers": {"Bad Name": "1"}}, 422, "headers", "not a legal header name"),
    ({"headers": ["X-A: 1"]}, 422, "headers", "expected an object"),
    ({"text": 5}, 422, "text", "expected a string, got a number"),
    ({"to": ["a@example.com", 5]}, 422, "to", "array of addresses"),
    ({"colour": "red"}, 422, "colour", "unknown field"),
    ({"send_at": "tomorrow"}, 422, "send_at", "ISO 8601"),
    ({"send_at": "2030-01-01T09:00:00"}, 422, "send_at", "names no zone"),
    ({"send_at": "2300-01-01T09:00:00Z"}, 422, "send_at", "within 10 years"),
    ({"send_in": "soon"}, 422, "send_in", "expected a duration"),
    ({"send_in": "5m", "send_at": "2030-01-01T09:00:00Z"}, 422, "send_at", "not both"),
    ({"priority": 10**9}, 422, "priority", "expected an integer"),
    ({"priority": "high"}, 422, "priority", "expected an integer"),
    ({"tags": {"Bad Key": "1"}}, 422, "tags key", "a-z 0-9"),
    ({"idempotency_key": ""}, 422, "idempotency_key", "non-empty"),
    ({"attachments": [{"filename": "a.txt", "content_base64": "aGk=!"}]}, 422,
     "attachments[0].content_base64", "not base64"),
    ({"attachments": [{"content_base64": "aGk="}]}, 422, "attachments[0].filename", "a filename is required"),
    ({"attachments": [{"filename": "a", "content_type": "nonsense", "content_base64": "aGk="}]}, 422,
     "attachments[0].content_type", "type/subtype"),
    ({"attachments": [{"filename": "a", "size": 1, "content_base64": "aGk="}]}, 422, "attachments[0].size",
     "unknown field"),
]


def test_a_refusal_names_the_field_and_queues_nothing(web_daemon):
    daemon = web_daemon()
    with daemon.http() as http:
        for change, status, field, reason in REFUSALS:
            body = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
            r = http.post("/api/v1/messages", json=body)
            assert r.status_code == status, (change, r.text)
            got = r.json()
            assert got["field"] == field, (change, got)
            assert reason in got["reason"], (change, got)
            assert got["error"].startswith(f"{field}: ")
        # The same body, good, goes through: each refusal was for its one change.
        assert http.post("/api/v1/messages", json=GOOD).status_code == 202
        assert wait_until(lambda: len(http.get("/api/v1/messages").json()["messages"]) == 1)
        time.sleep(1)  # an interval: anything refused but queued would be stored by now
        assert len(http.get("/api/v1/messages").json()["messages"]) == 1


def test_bodies_that_are_not_a_message(web_daemon, write_config):
    daemon = web_daemon(extra_server="    max-message-size: 20KiB\n")
    with daemon.http() as http:
        r = http.post("/api/v1/messages", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["reason"].startswith("not JSON")
        r = http.post("/api/v1/messages", json=[GOOD])
        assert r.status_code == 400 and "expected a JSON object, got an array" in r.json()["reason"]
        r = http.post("/api/v1/messages", data=GOOD)  # a form
        assert r.status_code == 415
        big = base64.b64encode(b"x" * 30_000).decode()
        r = post(http, **GOOD, attachments=[{"filename": "big.bin", "content_base64": big}])
        assert r.status_code == 413 and r.json()["field"] == "message" and "max-message-size" in r.json()["reason"]
        # A body over its bound is refused from its Content-Length, unread.
        r = http.post("/api/v1/messages", content=b"{" + b" " * 400_000 + b"}",
                      headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["field"] is None and "400002 bytes" in r.json()["reason"]
        # Sent in chunks, with no length given: refused once it passes the bound.
        r = http.post("/api/v1/messages", content=iter([b"{"] + [b" " * 10_000] * 40 + [b"}"]),
                      headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "over the limit" in r.json()["reason"]
        assert http.get("/api/v1/messages").json()["messages"] == []


@pytest.mark.parametrize("store", STORE_ENGINES)
def test_the_listing_pages_through_every_message_once(web_daemon, store):
    daemon = web_daemon(store=store)
    with daemon.http() as http:
        ids = [post(http, **{"from": "a@example.com"}, to=f"r{i}@example.com", text="x", send_in="1h",
                    tags={"batch": "b1" if i % 2 else "b2"}).json()["id"] for i in range(7)]
        assert wait_until(lambda: len(http.get("/api/v1/messages").json()["messages"]) == 7)
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            r = http.get("/api/v1/messages", params={"limit": 3, **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200
            page = r.json()
            pages += 1
            seen += [m["id"] for m in page["messages"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert pages == 3 and sorted(seen) == sorted(ids) and len(seen) == 7
        created = [m["created_at"] for m in http.get("/api/v1/messages").json()["messages"]]
        assert created == sorted(created, reverse=True)  # newest first
        b1 = http.get("/api/v1/messages", params={"tag": "batch=b1"}).json()["messages"]
        assert sorted(m["id"] for m in b1) == sorted(ids[1::2])
        one = http.get("/api/v1/messages", params={"to": "r3@example.com"}).json()["messages"]
        assert [m["id"] for m in one] == [ids[3]]
        assert len(http.get("/api/v1/messages", params={"from": "@example.com"}).json()["messages"]) == 7
        assert http.get("/api/v1/messages", params={"from": "z@example.com"}).json()["messages"] == []
        assert len(http.get("/api/v1/messages", params={"status": "queued,held"}).json()["messages"]) == 7
        assert http.get("/api/v1/messages", params={"status": "sent"}).json()["messages"] == []
        future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        assert http.get("/api/v1/messages", params={"since": future}).json()["messages"] == []
        assert len(http.get("/api/v1/messages", params={"since": "1h"}).json()["messages"]) == 7
        for params, field in (({"status": "lost"}, "status"), ({"limit": 0}, "limit"), ({"limit": 501}, "limit"),
                              ({"cursor": "nope"}, "cursor"), ({"tag": "batch"}, "tag"),
                              ({"since": "last week"}, "since"), ({"to": "@"}, "to"), ({"to": "null"}, "to"),
                              ({"from": "ann@"}, "from"), ({"limit": 5, "colour": "red"}, "colour"),
                              ({"since": ""}, "since")):
            r = http.get("/api/v1/messages", params=params)
            assert r.status_code == 400 and r.json()["field"] == field, (params, r.text)


@pytest.mark.parametrize("store", STORE_ENGINES)
def test_the_operators_moves(web_daemon, smtp_server, store):
    relay = smtp_server(rcpt_replies={"gone@example.com": "550 5.1.1 no such user"})
    # Dispatch polls every 30 s: a retried message goes out at once only if the retry wakes it
    # (SQLite: the web server pokes its daemon; PostgreSQL: NOTIFY wakes every daemon).
    daemon = web_daemon(relay_port=relay.port, interval="30s", store=store)
    with daemon.http() as http:
        later = post(http, **GOOD, send_in="1h").json()["id"]
        assert wait_until(lambda: status_of(http, later) == "queued")
        r = http.post(f"/api/v1/messages/{later}/hold")
        assert r.status_code == 200 and r.json() == {"id": later, "status": "held"}
        assert http.post(f"/api/v1/messages/{later}/hold").status_code == 409
        assert http.post(f"/api/v1/messages/{later}/release").json()["status"] == "queued"
        assert http.post(f"/api/v1/messages/{later}/cancel").json()["status"] == "cancelled"
        r = http.post(f"/api/v1/messages/{later}/cancel")
        assert r.status_code == 409 and r.json()["field"] == "status"
        assert "it is cancelled (only queued, deferred, held can be)" in r.json()["reason"]
        assert http.post("/api/v1/messages/no-such-id/retry").status_code == 404
        assert http.get("/api/v1/messages/no-such-id").status_code == 404
        # A failed message, retried once the relay takes it, is delivered.
        failed = post(http, **{**GOOD, "to": "gone@example.com"}).json()["id"]
        assert wait_until(lambda: status_of(http, failed) == "failed")
        relay.rcpt_replies.clear()
        assert http.post(f"/api/v1/messages/{failed}/retry").json()["status"] == "queued"
        assert wait_until(lambda: status_of(http, failed) == "sent", timeout=10)
        events = [e["type"] for e in http.get(f"/api/v1/messages/{failed}").json()["events"]]
        assert events == ["queued", "failed", "queued", "sent"]
        assert http.get(f"/api/v1/messages/{failed}/raw").content == relay.messages[-1].data
        counts = http.get("/api/v1/stats").json()["counts"]
        assert counts["sent"] == 1 and counts["cancelled"] == 1
        assert http.get("/api/v1/stats", params={"since": "forever"}).status_code == 400


def test_a_browser_session_posts_to_the_api_with_its_csrf_token(web_daemon):
    daemon = web_daemon()
    with closing(daemon.anonymous(follow_redirects=False)) as browser:
        assert browser.post("/login", data={"token": daemon.token, "next": "/"}).status_code == 303
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', browser.get("/").text)
        assert csrf
        r = browser.post("/api/v1/messages", json=GOOD)
        assert r.status_code == 403 and "CSRF" in r.json()["reason"]
        r = browser.post("/api/v1/messages", json=GOOD, headers={"X-CSRF-Token": csrf.group(1)})
        assert r.status_code == 202


def test_without_a_token_a_page_on_another_site_cannot_post(web_daemon):
    daemon = web_daemon(token=None)
    with daemon.anonymous() as anon:
        r = anon.post("/api/v1/messages", json=GOOD, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        r = anon.post("/api/v1/messages", content=b'{"from": "a@example.com"}',
                      headers={"Content-Type": "text/plain", "Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        assert anon.get("/api/v1/messages").json()["messages"] == []
        assert anon.post("/api/v1/messages", json=GOOD).status_code == 202  # curl, on this host
