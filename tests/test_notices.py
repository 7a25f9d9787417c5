"""Failure notices (email.server.notify): RFC 3464 reports, delivered by the real
daemon path (`mailmand --once`) to a real SMTP server."""

from __future__ import annotations

import time
from email import message_from_bytes, policy

from mailmand.cli import main
from mailmand.config import NotifyConfig, load
from mailmand.notices import notices
from mailmand.stores import Status, open_store
from mailmand.stores.model import Attempt, Finished, MessageInfo, Outcome, RecipientOutcome
from tests.conftest import run_cli

NOTIFY = "    notify:\n      bounce: true\n      copy-to: postmaster@example.com\n"


def send(conf, *args: str) -> None:
    assert main(["send", "-c", str(conf), "--text", "hello", "--subject", "report", *args]) == 0


def notices_in(server):
    return [m for m in server.messages if m.mail_from in ("", "<>")]


def test_a_failed_message_bounces_to_its_sender_with_a_copy(smtp_server, write_config, capsys):
    server = smtp_server(rcpt_replies={"gone@example.com": "550 5.1.1 <gone@example.com>: no such user"})
    conf = write_config(server.port, extra_server=NOTIFY)
    send(conf, "--from", "App <app@example.com>", "--to", "gone@example.com")
    assert main(["--once", "-c", str(conf)]) == 0  # fails, and the notice is queued: sent in this run or the next
    assert main(["--once", "-c", str(conf)]) == 0
    [notice] = notices_in(server)
    assert sorted(notice.rcpt_tos) == ["app@example.com", "postmaster@example.com"]
    msg = message_from_bytes(notice.data, policy=policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"].addresses[0].addr_spec == "app@example.com" and msg["Auto-Submitted"] == "auto-replied"
    human, status, headers = msg.iter_parts()
    assert "gone@example.com" in human.get_content() and "no such user" in human.get_content()
    assert status.get_content_type() == "message/delivery-status"
    report = status.as_string()
    assert "Final-Recipient: rfc822; gone@example.com" in report
    assert "Action: failed" in report and "Status: 5.1.1" in report
    assert "Diagnostic-Code: smtp; 550 5.1.1 <gone@example.com>: no such user" in report
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Subject: report" in headers.as_bytes()


def test_no_notice_for_the_null_sender_nor_for_a_notice(smtp_server, write_config, capsys):
    # The sender's own address refuses mail too: the notice itself fails, and nothing answers it.
    server = smtp_server(rcpt_replies={"gone@example.com": "550 5.1.1 no such user",
                                       "app@example.com": "550 5.1.1 no such user"})
    conf = write_config(server.port, extra_server="    notify:\n      bounce: true\n")
    send(conf, "--from", "app@example.com", "--to", "gone@example.com")
    assert main(["--once", "-c", str(conf)]) == 0
    assert main(["--once", "-c", str(conf)]) == 0
    store = open_store(load(conf).server.database)
    rows = store.list_messages()
    assert sorted((m.mail_from, m.status) for m in rows) == [("", Status.FAILED), ("app@example.com", Status.FAILED)]
    store.close()
    # A bounce handed over with -f '<>' fails without a notice either.
    out = run_cli("sendmail", "-f", "<>", "gone@example.com", input=b"Subject: b\n\nx\n",
                  env={"MAILMAND_CONFIG": str(conf)})
    assert out.returncode == 0, out.stderr
    assert main(["--once", "-c", str(conf)]) == 0
    assert main(["--once", "-c", str(conf)]) == 0
    store = open_store(load(conf).server.database)
    assert [m.status for m in store.list_messages()].count(Status.FAILED) == 3 and len(store.list_messages()) == 3
    store.close()
    assert notices_in(server) == []


def test_expired_mail_gets_a_notice_and_notify_is_off_by_default(smtp_server, write_config, capsys):
    from mailmand.daemon import Daemon

    server = smtp_server(rcpt_replies={"slow@example.com": "451 4.2.1 try later"})
    conf = write_config(server.port, extra_server="    max-time: 1m\n" + NOTIFY)
    send(conf, "--from", "app@example.com", "--to", "slow@example.com")
    daemon = Daemon(load(conf))
    daemon.once()
    daemon.once(now=time.time() + 3600)  # past max-time: expired; the notice goes out in the same run
    daemon.close()
    [notice] = notices_in(server)
    report = message_from_bytes(notice.data, policy=policy.default).get_payload()[1].as_string()
    assert "Status: 4.4.7" in report and "Final-Recipient: rfc822; slow@example.com" in report

    off = write_config(server.port, name="off.yaml")
    assert load(off).server.notify == NotifyConfig(bounce=False, copy_to=None)  # documented default: off


def _info(mail_from: str) -> MessageInfo:
    return MessageInfo(id="m1", status=Status.FAILED, mail_from=mail_from, rcpt_to=("a@example.com", "b@example.com"),
                       subject="s", priority=0, size=10, created_at=1.0, send_after=1.0, due_at=1.0, attempts=1,
                       last_code=550, last_error="550 5.1.1 no", updated_at=2.0, finished_at=2.0,
                       idempotency_key=None)


def test_which_outcomes_owe_a_notice():
    cfg = NotifyConfig(bounce=True)
    attempt = Attempt(2.0, "relay:25", 550, "550 5.1.1 no", 0.1, "permanent")

    def owed(mail_from: str, outcome: Outcome, recipients=(), known=(), notify=cfg) -> list:
        return notices(notify, [Finished("m1", "me", 1, attempt, outcome, recipients)],
                       lambda _id: (_info(mail_from), b"Subject: s\r\n\r\nx\r\n", known), "host.example", now=3.0)

    failed = Outcome(Status.FAILED, reason="550 5.1.1 no", code=550)
    [n] = owed("app@example.com", failed)
    assert n.mail_from == "" and n.rcpt_to == ("app@example.com",)
    assert b"Final-Recipient: rfc822; a@example.com" in n.raw and b"Final-Recipient: rfc822; b@example.com" in n.raw
    assert owed("", failed) == []  # the null sender: never
    assert owed("app@example.com", Outcome(Status.DEFERRED, due_at=9.0)) == []  # not final
    partly = [RecipientOutcome("a@example.com", "sent", 250, "250 ok"),
              RecipientOutcome("b@example.com", "failed", 550, "550 5.1.1 no")]
    [n] = owed("app@example.com", Outcome(Status.SENT), partly)
    assert b"rfc822; b@example.com" in n.raw and b"rfc822; a@example.com" not in n.raw
    assert owed("app@example.com", Outcome(Status.SENT), partly[:1]) == []
    # Expired after a partial delivery: only the recipients not reached, with the expiry status.
    [n] = owed("app@example.com", Outcome(Status.EXPIRED, reason="expired"), known=partly[:1])
    assert b"rfc822; b@example.com" in n.raw and b"rfc822; a@example.com" not in n.raw and b"Status: 4.4.7" in n.raw
    [n] = owed("app@example.com", failed, notify=NotifyConfig(copy_to="ops@example.com"))
    assert n.rcpt_to == ("ops@example.com",)
