"""The Django email backend with real Django: messages go through the spool and a real
`mailmand run --once` to a real aiosmtpd relay, and arrive with HTML and attachments intact."""

from __future__ import annotations

from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage as StdMessage
from email.mime.image import MIMEImage
from pathlib import Path

import pytest

django = pytest.importorskip("django", reason="Django is in the test extra: pip install -e '.[test]'")

from django.conf import settings  # noqa: E402
from django.core import mail  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from mailmand.config import load  # noqa: E402
from mailmand.errors import InvalidMessage  # noqa: E402
from mailmand.stores import Status, open_store  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

if not settings.configured:
    settings.configure(EMAIL_BACKEND="mailmand.django.EmailBackend", DEFAULT_FROM_EMAIL="site@example.com",
                       USE_TZ=True)

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"


@pytest.fixture
def site(smtp_server, write_config):
    """A relay and a mailmand configuration; Django points at it through MAILMAND_CONFIG."""
    relay = smtp_server()
    conf = write_config(relay.port)
    with override_settings(MAILMAND_CONFIG=str(conf)):
        yield relay, conf


def deliver(conf: Path) -> str:
    out = run_cli("run", "--once", "-c", str(conf))
    assert out.returncode == 0, out.stderr
    return out.stdout.decode()


def parse(data: bytes) -> StdMessage:
    # as the relay got it, in CRLF; text parts compare in Python's \n
    return message_from_bytes(data.replace(b"\r\n", b"\n"), policy=policy.default)  # type: ignore[return-value]


def received(relay) -> list[StdMessage]:
    return [parse(m.data) for m in relay.messages]


def test_send_mail_is_delivered_through_the_daemon(site):
    relay, conf = site
    assert mail.send_mail("Hello", "Body text\n", None, ["ann@example.com"]) == 1
    assert relay.messages == [], "enqueued, not sent: only the daemon talks SMTP"
    assert "ingested 1, sent 1" in deliver(conf)
    [msg] = received(relay)
    assert relay.messages[0].mail_from == "site@example.com"
    assert msg["Subject"] == "Hello" and msg["To"] == "ann@example.com"
    assert msg.get_content() == "Body text\n"


def test_multi_alternatives_with_attachments_arrive_intact(site):
    relay, conf = site
    html = "<p>Hello <b>Ann</b> — ünïcode</p>"
    message = mail.EmailMultiAlternatives(
        subject="Report ✓", body="Plain text version", from_email="Reports <reports@example.com>",
        to=["ann@example.com"], cc=["cc@example.com"], bcc=["audit@example.com"],
        reply_to=["help@example.com"], headers={"X-Campaign": "weekly"})
    message.attach_alternative(html, "text/html")
    message.attach("report.pdf", PDF, "application/pdf")
    image = MIMEImage(PNG, "png")
    image.add_header("Content-Disposition", "attachment", filename="dot.png")
    message.attach(image)  # a MIMEBase part, as is
    assert message.send() == 1
    deliver(conf)
    [got] = relay.messages
    assert got.mail_from == "reports@example.com"
    assert sorted(got.rcpt_tos) == ["ann@example.com", "audit@example.com", "cc@example.com"]
    msg = parse(got.data)
    assert msg["Bcc"] is None and b"audit@example.com" not in got.data
    assert msg["Subject"] == "Report ✓" and msg["Reply-To"] == "help@example.com"
    assert msg["Cc"] == "cc@example.com" and msg["X-Campaign"] == "weekly"
    assert msg.get_body(("html",)).get_content() == html  # type: ignore[union-attr]
    assert msg.get_body(("plain",)).get_content() == "Plain text version"  # type: ignore[union-attr]
    parts = {p.get_filename(): p for p in msg.iter_attachments()}
    assert parts["report.pdf"].get_content_type() == "application/pdf"
    assert parts["report.pdf"].get_payload(decode=True) == PDF
    assert parts["dot.png"].get_content_type() == "image/png"
    assert parts["dot.png"].get_payload(decode=True) == PNG


def test_anymail_style_extras_send_at_priority_idempotency_key(site):
    relay, conf = site
    later = mail.EmailMessage("Later", "x", to=["ann@example.com"])
    later.send_at = datetime.now().astimezone() + timedelta(hours=1)  # type: ignore[attr-defined]
    first = mail.EmailMessage("Once", "x", to=["ann@example.com"])
    first.idempotency_key = "order-42-receipt"  # type: ignore[attr-defined]
    first.priority = 7  # type: ignore[attr-defined]
    again = mail.EmailMessage("Once", "x", to=["ann@example.com"])
    again.idempotency_key = "order-42-receipt"  # type: ignore[attr-defined]
    with mail.get_connection() as connection:
        assert connection.send_messages([later, first, again]) == 3
    assert first.mailmand_id == again.mailmand_id  # type: ignore[attr-defined]
    deliver(conf)
    assert [m["Subject"] for m in received(relay)] == ["Once"], "the key made one message; `later` waits"
    store = open_store(load(conf).server.database)
    try:
        waiting = store.get(later.mailmand_id)  # type: ignore[attr-defined]
        assert waiting.status is Status.QUEUED
        assert abs(waiting.send_after - later.send_at.timestamp()) < 1  # type: ignore[attr-defined]
        once = store.get(first.mailmand_id)  # type: ignore[attr-defined]
        assert once.priority == 7 and once.idempotency_key == "order-42-receipt"
    finally:
        store.close()


def test_fail_silently_and_the_count_of_what_was_queued(site):
    relay, conf = site
    good = mail.EmailMessage("ok", "x", to=["ann@example.com"])
    bad = mail.EmailMessage("bad", "x", from_email="not an address", to=["ann@example.com"])
    nobody = mail.EmailMessage("nobody", "x", to=[])
    with pytest.raises(InvalidMessage, match="not a valid email address"):
        mail.get_connection().send_messages([bad])
    assert mail.get_connection(fail_silently=True).send_messages([good, bad, nobody]) == 1
    wrong = mail.EmailMessage("x", "x", to=["ann@example.com"])
    wrong.priority = "high"  # type: ignore[attr-defined]
    with pytest.raises(InvalidMessage, match="priority"):
        wrong.send()
    deliver(conf)
    assert [m["Subject"] for m in received(relay)] == ["ok"]


def test_a_missing_configuration_raises_unless_fail_silently(tmp_path):
    missing = tmp_path / "nope.yaml"
    with override_settings(MAILMAND_CONFIG=str(missing)):
        message = mail.EmailMessage("x", "x", to=["ann@example.com"])
        with pytest.raises(Exception, match="does not exist"):
            message.send()
        # (a new message: Django keeps the first one's connection on it)
        assert mail.EmailMessage("x", "x", to=["ann@example.com"]).send(fail_silently=True) == 0


# -- Django's own backend cases (Django's BaseEmailBackendTests), on mailmand's door ----------

SENDMAIL_DOMAIN = "  sendmail:\n    domain: host.example\n"


@pytest.fixture
def named_site(site):
    """`site`, with email.sendmail.domain set: what a bare name gets."""
    relay, conf = site
    conf.write_text(conf.read_text() + SENDMAIL_DOMAIN)
    from mailmand import django as backend

    backend._clients.clear()  # the configuration changed under the shared client
    return relay, conf


def fields_of(data: bytes) -> list[bytes]:
    """The head's lines, Date and Message-ID values aside (Django makes them anew per call)."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    return [line.split(b":")[0] + b": -" if line.split(b":")[0] in (b"Date", b"Message-ID") else line
            for line in head]


def test_the_message_goes_out_as_django_composed_it(site):
    """A non-ASCII display name stays the encoded word Django wrote, where Django wrote it
    (Django's test_send_verbose_name); so do To, Cc and Reply-To."""
    relay, conf = site
    message = mail.EmailMessage("Subject", "Content", '"Firstname Sürname" <from@example.com>',
                                ['"Ünï Cödé" <to@example.com>'], cc=['"Çç" <cc@example.com>'],
                                reply_to=['"Rëply" <reply@example.com>'], headers={"X-Order": "after"})
    assert message.send() == 1
    deliver(conf)
    [got] = relay.messages
    assert fields_of(got.data) == fields_of(message.message().as_bytes(linesep="\r\n"))
    body = message.message().as_bytes(linesep="\r\n").split(b"\r\n\r\n", 1)[1]
    assert got.data.split(b"\r\n\r\n", 1)[1] == body + b"\r\n"  # the CRLF that ends DATA (RFC 5321 §4.1.1.4)
    assert parse(got.data)["From"] == "Firstname Sürname <from@example.com>"
    assert b"From: =?utf-8?q?Firstname_S=C3=BCrname?= <from@example.com>\r\n" in got.data


def test_a_bare_name_gets_the_configured_domain(named_site):
    """Django's test_recipient_without_domain: queued, not refused; the name gets
    email.sendmail.domain in the envelope and the fields, as the sendmail shim gives it."""
    relay, conf = named_site
    assert mail.send_mail("Subject", "Content", "tester", ["django"]) == 1
    deliver(conf)
    [got] = relay.messages
    assert (got.mail_from, got.rcpt_tos) == ("tester@host.example", ("django@host.example",))
    msg = parse(got.data)
    assert (msg["From"], msg["To"], msg["Subject"]) == ("tester@host.example", "django@host.example", "Subject")


def test_lazy_addresses_are_taken(named_site):
    """Django's test_lazy_addresses: gettext_lazy strings wherever strings go, even with
    fail_silently (which hid a TypeError from deep in the email package)."""
    from django.utils.translation import gettext_lazy as _

    relay, conf = named_site
    with override_settings(USE_I18N=False):
        assert mail.send_mail(_("Subject"), "Content", _("tester"), [_("django")]) == 1
        message = mail.EmailMessage(_("Lazy"), "x", _("App <app@example.com>"), [_("to1@example.com"), _("to2")],
                                    cc=[_("cc1")], bcc=[_("bcc@example.com")], reply_to=[_("reply")])
        assert mail.get_connection(fail_silently=True).send_messages([message]) == 1
    deliver(conf)
    first, second = sorted(relay.messages, key=lambda m: len(m.rcpt_tos))
    assert (first.mail_from, first.rcpt_tos) == ("tester@host.example", ("django@host.example",))
    assert second.mail_from == "app@example.com"
    assert sorted(second.rcpt_tos) == ["bcc@example.com", "cc1@host.example", "to1@example.com",
                                       "to2@host.example"]
    msg = parse(second.data)
    assert msg["Reply-To"] == "reply@host.example" and msg["Bcc"] is None


def test_an_unquoted_display_name_holding_an_at_is_refused(site):
    """`to@other.com <to@example.com>`: Django's SMTP backend raises ValueError; two
    envelope recipients, as the stdlib's getaddresses() makes of it, would be wrong."""
    relay, conf = site
    def message() -> mail.EmailMessage:  # a new one each time: Django keeps a message's first connection
        return mail.EmailMessage("x", "x", to=["ann@example.com"], bcc=["to@other.com <to@example.com>"])

    with pytest.raises(ValueError, match="recipient: not a valid email address"):
        message().send()
    assert message().send(fail_silently=True) == 0
    deliver(conf)
    assert relay.messages == []


def test_an_encoded_word_hiding_a_line_break_is_refused(site):
    """Django refuses a written line break in a header (BadHeaderError); an encoded word that
    decodes to one passes Django, and mailmand's door refuses it."""
    from mailmand.errors import HeaderInjection

    relay, conf = site
    message = mail.EmailMessage("x", "x", to=["ann@example.com"],
                                headers={"X-A": "=?utf-8?q?a=0D=0ABcc:_x@evil.example?="})
    with pytest.raises(HeaderInjection, match="header X-A: an encoded word"):
        message.send()
    deliver(conf)
    assert relay.messages == []
