"""MailHandler: log records queued on a real spool and delivered by a real `mailmand run --once`."""

from __future__ import annotations

import logging
import logging.handlers
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from mailmand.logging import MailHandler
from tests.conftest import ROOT, run_cli


@pytest.fixture
def site(smtp_server, write_config):
    relay = smtp_server()
    return relay, write_config(relay.port)


def deliver(conf: Path) -> None:
    out = run_cli("run", "--once", "-c", str(conf))
    assert out.returncode == 0, out.stderr


def bodies(relay) -> list[str]:
    return [message_from_bytes(m.data.replace(b"\r\n", b"\n"), policy=policy.default).get_content()  # type: ignore[attr-defined]
            for m in relay.messages]


def logger_with(handler: logging.Handler, name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.propagate = False
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    return log


def test_an_error_is_mailed_through_the_queue(site):
    relay, conf = site
    # SMTPHandler's positional shape: mailhost, fromaddr, toaddrs, subject, credentials, secure
    handler = MailHandler(("smtp.example.com", 587), "app@example.com", ["ops@example.com", "dev@example.com"],
                          "app error", ("user", "password"), (), config=conf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log = logger_with(handler, "test.mailhandler.basic")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("payment %s failed", "#42")
    handler.close()
    assert relay.messages == [], "logging only enqueues"
    deliver(conf)
    [got] = relay.messages
    assert got.mail_from == "app@example.com"
    assert sorted(got.rcpt_tos) == ["dev@example.com", "ops@example.com"]
    msg = message_from_bytes(got.data, policy=policy.default)
    assert msg["Subject"] == "app error"
    [body] = bodies(relay)
    assert body.startswith("ERROR test.mailhandler.basic: payment #42 failed\nTraceback")
    assert "ZeroDivisionError" in body


def test_rate_limit_one_mail_per_interval_per_logger_with_the_count(site):
    relay, conf = site
    now = [1000.0]
    handler = MailHandler(None, "app@example.com", "ops@example.com", "alert", min_interval=60, config=conf)
    handler.clock = lambda: now[0]
    a = logger_with(handler, "test.mailhandler.a")
    b = logger_with(handler, "test.mailhandler.b")
    for i in range(5):
        a.error("a storm %d", i)
    b.error("b once")  # another logger has its own allowance
    now[0] += 59.9
    a.error("still held")
    now[0] += 0.2  # 60.1 s after the first mail
    a.error("after the interval")
    a.error("held again")
    handler.close()  # mails what is still held back
    deliver(conf)
    got = sorted(bodies(relay))
    assert len(got) == 4, got
    assert got[0].startswith("[1 more record(s) from logger 'test.mailhandler.a' were not mailed")
    assert got[1] == "[5 more record(s) from logger 'test.mailhandler.a' were not mailed in the 60s before " \
                     "this one (min_interval 60s)]\n\nafter the interval\n"
    assert got[2:] == ["a storm 0\n", "b once\n"]


def test_failures_go_to_handle_error_never_to_the_application(tmp_path, capsys):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the spool directory should be")
    conf = tmp_path / "mailmand.yaml"
    conf.write_text(f"email:\n  queue:\n    default:\n      path: {blocked / 'spool'}\n"
                    "  server:\n    smtp:\n      host: 127.0.0.1\n")
    handler = MailHandler(None, "app@example.com", ["ops@example.com"], "x", config=conf)
    log = logger_with(handler, "test.mailhandler.broken")
    log.error("cannot be queued")  # must not raise
    assert "--- Logging error ---" in capsys.readouterr().err
    bad = MailHandler(None, "app@example.com", ["not an address"], "x", config=conf)
    logger_with(bad, "test.mailhandler.bad").error("nor this")
    assert "not a valid email address" in capsys.readouterr().err


def test_a_subject_that_would_inject_a_header_is_folded(site):
    relay, conf = site

    class LevelSubject(MailHandler):
        def getSubject(self, record: logging.LogRecord) -> str:  # noqa: N802
            return f"{record.levelname}: {record.getMessage()}"

    handler = LevelSubject(None, "app@example.com", ["ops@example.com"], config=conf)
    logger_with(handler, "test.mailhandler.subject").error("line one\nBcc: victim@example.com")
    handler.close()
    deliver(conf)
    [got] = relay.messages
    assert got.rcpt_tos == ("ops@example.com",)
    msg = message_from_bytes(got.data, policy=policy.default)
    assert msg["Subject"] == "ERROR: line one Bcc: victim@example.com" and msg["Bcc"] is None


def test_required_arguments_are_checked_at_construction():
    with pytest.raises(ValueError, match="fromaddr"):
        MailHandler("localhost", None, ["ops@example.com"], "x")
    with pytest.raises(ValueError, match="toaddrs"):
        MailHandler("localhost", "app@example.com", [], "x")


def test_the_module_named_logging_shadows_nothing():
    """mailmand/logging.py must not stand in for the standard library's logging anywhere."""
    code = ("import logging, mailmand.logging, mailmand.cli, mailmand.daemon, mailmand.metrics; "
            "import mailmand.submission, mailmand.django; "
            "assert logging.__file__ != mailmand.logging.__file__; "
            "assert mailmand.daemon.logging is logging; "
            # mailmand.cli imports logging where it sets it up (sendmail never does)
            "mailmand.cli.setup_logging(); assert isinstance(logging.getLogger().handlers[0], logging.StreamHandler); "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr
    assert logging.handlers.SMTPHandler.__init__.__code__.co_varnames[1:8] == (
        "mailhost", "fromaddr", "toaddrs", "subject", "credentials", "secure", "timeout")
    assert MailHandler.__init__.__code__.co_varnames[1:8] == (
        "mailhost", "fromaddr", "toaddrs", "subject", "credentials", "secure", "timeout")
