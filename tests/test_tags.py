"""Tags through every way in (the API, raw messages, sendmail, `send`, the SMTP
listener, Django, the logging handler), refused where they break the rules, and
`--tag` on each command; `mailmand events` on a real store."""

from __future__ import annotations

import json
import logging
import signal
import smtplib
import socket
import subprocess

import pytest

from mailmand import Email
from mailmand.cli import main
from mailmand.client import Client
from mailmand.config import load, replace
from mailmand.config.schema import SubmissionConfig
from mailmand.errors import InvalidMessage
from mailmand.record import Record, validate
from mailmand.stores import Status, open_store
from mailmand.stores.model import Selection
from tests.conftest import ROOT, mailmand_cmd, run_cli

RELAY = "    max-fails: 1\n"


@pytest.fixture
def world(smtp_server, write_config):
    """A relay (bad@example.com: 550) and a configuration for it."""
    server = smtp_server(rcpt_replies={"bad@example.com": "550 5.1.1 no such user"})
    return server, write_config(server.port, extra_server=RELAY)


def once(conf) -> None:
    assert main(["--once", "-c", str(conf)]) == 0


def stored(conf):
    return open_store(load(conf).server.database)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RAW = (b"From: app@example.com\r\nTo: ann@example.com\r\nX-Mailmand-Tag: order=42\r\nSubject: raw\r\n"
       b"x-mailmand-tag:  tenant = acme \r\n\r\nbody\r\n")


def test_tags_come_in_through_every_way_and_are_stored_with_the_message(world, capsys, tmp_path):
    server, conf = world
    cfg = load(conf)
    client = Client(cfg)
    ids = {}
    try:
        ids["api"] = client.enqueue(Email(sender="app@example.com", to="ann@example.com", subject="api",
                                          text="x", tags={"order": "42", "via": "api"}))
        ids["raw"] = client.enqueue(Email.from_bytes(RAW, tags={"via": "raw"}))
        from mailmand.logging import MailHandler

        handler = MailHandler(fromaddr="app@example.com", toaddrs="ops@example.com", subject="alert",
                              client=client, tags={"source": "billing"}, min_interval=0)
        handler.emit(logging.makeLogRecord({"msg": "disk full", "levelno": logging.ERROR}))
    finally:
        client.close()
    sendmail = run_cli("-c", str(conf), "sendmail", "-t", input=RAW.replace(b"raw", b"sendmail"))
    assert sendmail.returncode == 0, sendmail.stderr
    capsys.readouterr()
    assert main(["send", "-c", str(conf), "--from", "app@example.com", "--to", "ann@example.com",
                 "--subject", "cli", "--text", "x", "--tag", "order=42", "--tag", "via=cli"]) == 0
    ids["cli"] = capsys.readouterr().out.strip()
    # The SMTP listener: the fields become tags and leave the message.
    listen = free_port()
    from mailmand.submission import SubmissionServer

    srv = SubmissionServer(replace(cfg, server=replace(cfg.server, submission=SubmissionConfig(
        listen=(f"127.0.0.1:{listen}",))))).start()
    try:
        with smtplib.SMTP("127.0.0.1", listen, timeout=10) as s:
            s.sendmail("app@example.com", ["ann@example.com"], RAW.replace(b"raw", b"smtp"))
            s.mail("app@example.com")
            s.rcpt("ann@example.com")
            code, reply = s.data(b"From: app@example.com\r\nX-Mailmand-Tag: Order=42\r\n\r\nx\r\n")
    finally:
        srv.stop()
    assert code == 554 and b"X-Mailmand-Tag" in reply and b"a-z 0-9" in reply  # a key with a capital: refused
    once(conf)
    store = stored(conf)
    try:
        by_subject = {m.subject: m for m in store.list_messages(limit=100)}
        assert by_subject["api"].tags == {"order": "42", "via": "api"}
        assert by_subject["raw"].tags == {"order": "42", "tenant": "acme", "via": "raw"}
        assert by_subject["sendmail"].tags == {"order": "42", "tenant": "acme"}
        assert by_subject["smtp"].tags == {"order": "42", "tenant": "acme"}
        assert by_subject["cli"].tags == {"order": "42", "via": "cli"}
        assert by_subject["alert"].tags == {"source": "billing"}
        for m in by_subject.values():  # taken out of the head: the recipients never see them
            assert b"mailmand-tag" not in store.raw(m.id).lower()
        assert {m.id for m in store.select(Selection(tags=(("order", "42"),)), 100).messages} == {
            by_subject[k].id for k in ("api", "raw", "sendmail", "smtp", "cli")}
        events = store.events(tags={"tenant": "acme"}, limit=100)[0]
        assert {(e.type.value, e.tags["tenant"]) for e in events} == {("queued", "acme"), ("sent", "acme")}
    finally:
        store.close()
    assert all(b"mailmand-tag" not in m.data.lower() for m in server.messages)


def test_the_django_backend_reads_message_tags(world):
    pytest.importorskip("django")
    from django.conf import settings
    from django.core.mail import EmailMessage
    from django.test.utils import override_settings

    if not settings.configured:
        settings.configure(EMAIL_BACKEND="mailmand.django.EmailBackend", DEFAULT_FROM_EMAIL="site@example.com",
                           USE_TZ=True)
    _, conf = world
    with override_settings(MAILMAND_CONFIG=str(conf), EMAIL_BACKEND="mailmand.django.EmailBackend"):
        message = EmailMessage("django", "body", "site@example.com", ["ann@example.com"])
        message.tags = {"order": "42", "via": "django"}  # type: ignore[attr-defined]
        assert message.send() == 1
        bad = EmailMessage("django", "body", "site@example.com", ["ann@example.com"])
        bad.tags = {"order": 42}  # type: ignore[attr-defined]
        with pytest.raises(InvalidMessage, match=r"tags\[order\]: expected text"):
            bad.send()
    once(conf)
    store = stored(conf)
    try:
        [m] = store.select(Selection(tags=(("via", "django"),)), 50).messages
        assert m.tags == {"order": "42", "via": "django"} and m.status is Status.SENT
    finally:
        store.close()


@pytest.mark.parametrize(("tags", "match"), [
    ({f"k{i}": "v" for i in range(11)}, "at most 10 tags"),
    ({"Order": "42"}, r"tags key: expected 1 to 32 of a-z 0-9 _ \. -"),
    ({"k" * 33: "v"}, "tags key"),
    ({"": "v"}, "tags key"),
    ({"order": "x" * 129}, "longer than 128 characters"),
    ({"order": "4\r\n2"}, "control characters"),
    ({"order": 42}, "expected text"),
    (["order=42"], "expected a mapping"),
])
def test_tags_that_break_the_rules_are_refused_at_the_call(tags, match):
    with pytest.raises(InvalidMessage, match=match):
        Email(sender="app@example.com", to="ann@example.com", tags=tags)


def test_the_limits_themselves_are_allowed_and_ingest_checks_them_again():
    ten = {f"key.{i}_x-{'y' * 20}"[:32]: "v" * 128 for i in range(10)}
    Email(sender="app@example.com", to="ann@example.com", tags=ten)
    raw = b"From: a@x.org\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <1@x.org>\r\n\r\nx\r\n"
    record = Record("m1", "a@x.org", ("b@x.org",), raw, tags={"Bad": "1"})
    with pytest.raises(InvalidMessage, match="record.tags key"):
        validate(record)  # what ingest runs on every item: a record written by hand is refused too
    data = record.replace(tags={"ok": "1"}).to_json()
    assert data["tags"] == {"ok": "1"} and Record.from_json(data).tags == {"ok": "1"}
    with pytest.raises(InvalidMessage, match="record.tags"):
        Record.from_json({**data, "tags": {"ok": "\x00"}})


# -- the commands ---------------------------------------------------------------------------


@pytest.fixture
def tagged(world, capsys):
    """Four messages: order 42 sent and failed, order 43 scheduled, one untagged scheduled."""
    _, conf = world

    def send(*args: str) -> str:
        capsys.readouterr()
        assert main(["send", "-c", str(conf), "--from", "app@example.com", "--text", "x", *args]) == 0
        return capsys.readouterr().out.strip()

    ids = {
        "sent": send("--to", "ann@example.com", "--subject", "s", "--tag", "order=42", "--tag", "tenant=acme"),
        "failed": send("--to", "bad@example.com", "--subject", "f", "--tag", "order=42"),
        "later": send("--to", "ann@example.com", "--subject", "l", "--tag", "order=43", "--in", "1h"),
        "plain": send("--to", "ann@example.com", "--subject", "p", "--in", "1h"),
    }
    once(conf)
    capsys.readouterr()
    return conf, ids


def out(capsys, *args: str, code: int = 0) -> str:
    capsys.readouterr()
    assert main(list(args)) == code
    return capsys.readouterr().out


def test_list_and_show_print_tags_and_list_selects_by_them(tagged, capsys):
    conf, ids = tagged
    listed = json.loads(out(capsys, "list", "-c", str(conf), "--tag", "order=42", "--json"))
    assert sorted(m["id"] for m in listed) == sorted([ids["sent"], ids["failed"]])
    assert {m["id"]: m["tags"] for m in listed}[ids["sent"]] == {"order": "42", "tenant": "acme"}
    both = json.loads(out(capsys, "list", "-c", str(conf), "--tag", "order=42", "--tag", "tenant=acme", "--json"))
    assert [m["id"] for m in both] == [ids["sent"]]
    text = out(capsys, "list", "-c", str(conf), "--tag", "order=42", "--limit", "1")
    assert text.splitlines()[0].split()[-1] == "TAGS" and "… more: the next page is --after" in text
    assert "order=42" in text
    assert "tags:      order=42, tenant=acme" in out(capsys, "show", "-c", str(conf), ids["sent"])
    assert json.loads(out(capsys, "show", "-c", str(conf), ids["plain"], "--json"))["tags"] == {}
    assert "TAGS" not in out(capsys, "list", "-c", str(conf), "--status", "queued", "--tag", "order=99")
    assert main(["list", "-c", str(conf), "--tag", "order"]) == 2  # not KEY=VALUE: a usage error


def test_cancel_and_retry_select_by_tag(tagged, capsys):
    conf, ids = tagged
    assert "cancelled 1 message(s)" in out(capsys, "cancel", "-c", str(conf), "--tag", "order=43")
    store = stored(conf)
    try:
        assert store.get(ids["later"]).status is Status.CANCELLED
        assert store.get(ids["plain"]).status is Status.QUEUED  # no tag: not selected
        assert "re-queued 1 message(s)" in out(capsys, "retry", "-c", str(conf), "--tag", "order=42")
        assert store.get(ids["failed"]).status is Status.QUEUED
        assert store.get(ids["sent"]).status is Status.SENT
    finally:
        store.close()


def test_hold_and_release_select_by_tag_and_write_events(tagged, capsys):
    conf, ids = tagged
    assert "held 1 message(s)" in out(capsys, "hold", "-c", str(conf), "--tag", "order=43")
    assert "released 1 message(s)" in out(capsys, "release", "-c", str(conf), "--tag", "order=43")
    mine = json.loads(out(capsys, "events", "-c", str(conf), ids["later"], "--json"))
    assert [e["type"] for e in mine] == ["queued", "held", "released"]
    assert json.loads(out(capsys, "show", "-c", str(conf), ids["plain"], "--json"))["status"] == "queued"


def test_events_show_each_state_change_by_message_type_tag_and_time(tagged, capsys):
    conf, ids = tagged
    mine = json.loads(out(capsys, "events", "-c", str(conf), ids["failed"], "--json"))
    assert [e["type"] for e in mine] == ["queued", "failed"]
    failed = mine[1]
    assert (failed["code"], failed["attempt"], failed["tags"], failed["message"]) == (550, 1, {"order": "42"},
                                                                                      ids["failed"])
    assert failed["recipients"][0]["address"] == "bad@example.com" and failed["recipients"][0]["status"] == "failed"
    assert len({e["id"] for e in mine}) == 2
    assert [e["message"] for e in json.loads(out(capsys, "events", "-c", str(conf), "--type", "sent", "--json"))] \
        == [ids["sent"]]
    by_tag = json.loads(out(capsys, "events", "-c", str(conf), "--tag", "order=43", "--json"))
    assert [(e["message"], e["type"]) for e in by_tag] == [(ids["later"], "queued")]
    assert json.loads(out(capsys, "events", "-c", str(conf), "--since", "2099-01-01T00:00", "--json")) == []
    assert len(json.loads(out(capsys, "events", "-c", str(conf), "--since", "1h", "--json"))) == 6
    assert len(json.loads(out(capsys, "events", "-c", str(conf), "--limit", "2", "--json"))) == 2
    text = out(capsys, "events", "-c", str(conf), "--type", "failed,sent")
    header, *rows = text.splitlines()
    assert header.split() == ["TIME", "TYPE", "MESSAGE", "TRY", "CODE", "TAGS", "REPLY"] and len(rows) == 2
    assert main(["events", "-c", str(conf), "--type", "bounced"]) == 2


def test_events_follow_prints_new_events_until_sigint(tagged):
    conf, ids = tagged
    follow = subprocess.Popen(mailmand_cmd("events", "-c", str(conf), "--follow", "--json", "--limit", "1"),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        first = json.loads(follow.stdout.readline())  # the last one so far
        assert main(["cancel", "-c", str(conf), ids["plain"]]) == 0
        new = json.loads(follow.stdout.readline())  # then the new one, as it comes
        assert (new["type"], new["message"]) == ("cancelled", ids["plain"]) and new["id"] != first["id"]
    finally:
        follow.send_signal(signal.SIGINT)
        rest, err = follow.communicate(timeout=30)
    assert follow.returncode == 0, err  # Ctrl-C is how a follow ends: not an error
    assert "Traceback" not in err and rest == ""


def test_events_of_a_message_match_show_to_the_last(tagged, capsys):
    conf, ids = tagged
    for mid in ids.values():
        events = json.loads(out(capsys, "events", "-c", str(conf), mid, "--json"))
        shown = json.loads(out(capsys, "show", "-c", str(conf), mid, "--json"))
        assert events[-1]["type"] == shown["status"] and events[-1]["attempt"] == len(shown["attempts"])
