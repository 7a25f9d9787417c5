"""Every subcommand on a real store, including the JSON shapes, and sendmail."""

from __future__ import annotations

import json
import time
from email import message_from_bytes

import pytest

from mailmand.cli import main
from mailmand.config import load
from mailmand.stores import Status, open_store
from tests.conftest import run_cli


@pytest.fixture
def queue_world(smtp_server, write_config, capsys):
    """A store with sent, failed, deferred and scheduled mail, through the real CLI."""
    server = smtp_server(rcpt_replies={"bad@example.com": "550 5.1.1 no such user",
                                       "slow@example.com": "451 4.2.1 try later"})
    conf = write_config(server.port)

    def send(*args: str) -> str:
        assert main(["send", "-c", str(conf), "--from", "app@example.com", *args]) == 0
        return capsys.readouterr().out.strip()

    ids = {
        "sent": send("--to", "ann@example.com", "--subject", "hello", "--text", "hi"),
        "failed": send("--to", "bad@example.com", "--subject", "bounce", "--text", "x"),
        "deferred": send("--to", "slow@example.com", "--subject", "later", "--text", "x"),
        "scheduled": send("--to", "ann@example.com", "--subject", "future", "--text", "x", "--in", "1h"),
    }
    assert main(["--once", "-c", str(conf)]) == 0
    assert capsys.readouterr().out.strip() == "ingested 4, sent 1, deferred 1, failed 1, expired 0"
    return server, conf, ids


def cli_json(capsys, *args: str):
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_status_and_list(queue_world, capsys):
    _, conf, ids = queue_world
    status = cli_json(capsys, "status", "-c", str(conf))
    assert status["counts"] == {"queued": 1, "sending": 0, "deferred": 1, "sent": 1, "failed": 1,
                                "expired": 0, "cancelled": 0}
    assert status["spool"] == 0 and status["quarantine"] == 0
    # The next send is the deferred message's retry (backoff 1-2 s), before the one scheduled in 1 h.
    assert time.time() < status["next_scheduled"] <= time.time() + 2.5
    assert status["oldest_due_age"] is None  # nothing is due now: the deferred one waits for its backoff
    assert main(["status", "-c", str(conf)]) == 0
    text = capsys.readouterr().out
    assert "sent       1" in text and "next scheduled send:" in text

    listed = cli_json(capsys, "list", "-c", str(conf))
    assert {m["id"] for m in listed} == set(ids.values())
    assert {"id", "status", "mail_from", "rcpt_to", "subject", "attempts", "last_error"} <= set(listed[0])
    failed = cli_json(capsys, "list", "-c", str(conf), "--status", "failed")
    assert [m["id"] for m in failed] == [ids["failed"]]
    assert len(cli_json(capsys, "list", "-c", str(conf), "--limit", "2")) == 2


def test_show(queue_world, capsys):
    _, conf, ids = queue_world
    shown = cli_json(capsys, "show", "-c", str(conf), ids["failed"])
    assert shown["id"] == ids["failed"] and shown["status"] == "failed"
    assert "550 5.1.1 no such user" in shown["last_error"]
    [attempt] = shown["attempts"]
    assert attempt["code"] == 550 and attempt["outcome"] == "permanent" and attempt["duration"] >= 0
    assert shown["recipients"] == [{"address": "bad@example.com", "status": "failed", "code": 550,
                                    "reply": "550 5.1.1 no such user"}]
    assert main(["show", "-c", str(conf), ids["sent"]]) == 0
    text = capsys.readouterr().out
    assert "status:    sent" in text and "attempts (1):" in text and "ann@example.com" in text
    assert main(["show", "-c", str(conf), "nope"]) == 1
    assert "no message with id 'nope'" in capsys.readouterr().err


def test_cancel_retry_purge(queue_world, capsys):
    server, conf, ids = queue_world
    assert main(["cancel", "-c", str(conf), ids["scheduled"]]) == 0
    assert main(["cancel", "-c", str(conf), ids["sent"]]) == 1
    err = capsys.readouterr().err
    assert "cannot cancel" in err and "it is sent" in err and "Traceback" not in err

    server.rcpt_replies = {}
    assert main(["retry", "-c", str(conf), ids["failed"]]) == 0
    assert main(["retry", "-c", str(conf), ids["sent"]]) == 1
    assert main(["retry", "-c", str(conf)]) == 2  # neither ID nor --failed
    assert main(["--once", "-c", str(conf)]) == 0
    store = open_store(load(conf).server.database)
    retried = store.get(ids["failed"])
    # One count everywhere: the failed try and the one after `retry`, as `show` lists them.
    assert retried.status is Status.SENT and retried.attempts == len(store.attempts(ids["failed"])) == 2
    assert store.get(ids["scheduled"]).status is Status.CANCELLED
    store.close()

    time.sleep(1.1)
    capsys.readouterr()
    assert main(["purge", "-c", str(conf), "--older-than", "1s"]) == 0
    assert capsys.readouterr().out.strip() == "purged 3 finished message(s)"  # sent ×2, cancelled
    remaining = cli_json(capsys, "list", "-c", str(conf))
    assert [m["id"] for m in remaining] == [ids["deferred"]]


def test_retry_failed_requeues_all_failed(queue_world, capsys):
    server, conf, ids = queue_world
    assert main(["retry", "-c", str(conf), "--failed"]) == 0
    assert "re-queued 1 message(s)" in capsys.readouterr().out
    store = open_store(load(conf).server.database)
    assert store.get(ids["failed"]).status is Status.QUEUED
    store.close()


def test_stats(queue_world, capsys):
    _, conf, _ = queue_world
    stats = cli_json(capsys, "stats", "-c", str(conf), "--since", "1h")
    assert (stats["sent"], stats["failed"], stats["expired"]) == (1, 1, 0)
    assert set(stats["latency"]) == {"p50", "p95", "p99"}
    assert 0 < stats["latency"]["p50"] < 5
    assert stats["top_failures"] == [{"reason": "550 5.1.1 no such user", "count": 1}]
    assert isinstance(stats["depth_hourly"], list)
    assert main(["stats", "-c", str(conf)]) == 0
    assert "latency (send time to 250): p50" in capsys.readouterr().out


def test_send_from_flags_and_from_a_file(smtp_server, write_config, tmp_path, capsys):
    server = smtp_server()
    conf = write_config(server.port)
    attachment = tmp_path / "notes.txt"
    attachment.write_text("attached text")
    html = tmp_path / "body.html"
    html.write_text("<p>rich</p>")
    assert main(["send", "-c", str(conf), "--from", "a@example.com", "--to", "b@example.com",
                 "--to", "c@example.com", "--bcc", "d@example.com", "--subject", "flags",
                 "--text", "plain", "--html-file", str(html), "--attach", str(attachment),
                 "--priority", "5"]) == 0
    capsys.readouterr()
    eml = tmp_path / "m.eml"
    eml.write_bytes(b"From: x@example.com\r\nTo: y@example.com\r\nSubject: file\r\n\r\nfrom a file\r\n")
    assert main(["send", "-c", str(conf), str(eml)]) == 0
    assert main(["--once", "-c", str(conf)]) == 0
    by_subject = {message_from_bytes(m.data)["Subject"]: m for m in server.messages}
    flags = by_subject["flags"]
    assert sorted(flags.rcpt_tos) == ["b@example.com", "c@example.com", "d@example.com"]
    parsed = message_from_bytes(flags.data)
    assert parsed["Bcc"] is None and parsed.get_content_type() == "multipart/mixed"
    assert [p.get_filename() for p in parsed.walk() if p.get_filename()] == ["notes.txt"]
    assert list(by_subject["file"].rcpt_tos) == ["y@example.com"]


def test_send_from_stdin_with_at_and_in(write_config, capsys):
    conf = write_config(9)
    raw = b"From: x@example.com\nTo: y@example.com\nSubject: piped\n\nbody\n"
    out = run_cli("send", "-c", str(conf), "-", "--in", "10m", input=raw)
    assert out.returncode == 0, out.stderr
    msg_id = out.stdout.decode().strip()
    at = run_cli("send", "-c", str(conf), "--from", "a@example.com", "--to", "b@example.com",
                 "--text", "x", "--at", "2030-01-01T09:00:00+00:00")
    assert at.returncode == 0, at.stderr
    both = run_cli("send", "-c", str(conf), "--from", "a@example.com", "--to", "b@example.com",
                   "--at", "2030-01-01T09:00:00", "--in", "5m")
    assert both.returncode == 2 and b"not both" in both.stderr
    bad = run_cli("send", "-c", str(conf), "--from", "a@example.com", "--to", "not-an-address")
    assert bad.returncode == 1 and b"to: not a valid email address" in bad.stderr
    assert b"Traceback" not in bad.stderr
    from mailmand.daemon import Daemon
    d = Daemon(load(conf))
    d.ingester.drain()
    assert d.store.get(msg_id).due_at == pytest.approx(time.time() + 600, abs=30)
    assert d.store.get(at.stdout.decode().strip()).due_at == 1893488400.0
    d.close()


def test_sendmail_t_delivers_to_bcc_without_the_header(smtp_server, write_config):
    server = smtp_server()
    conf = write_config(server.port)
    raw = (b"From: Cron Daemon <root@example.com>\nTo: ops@example.com\nBcc: audit@example.com\n"
           b"Subject: cron output\n\nline one\n.\nafter the dot\n")
    out = run_cli("sendmail", "-t", "-i", env={"MAILMAND_CONFIG": str(conf)}, input=raw)
    assert out.returncode == 0, out.stderr
    assert main(["--once", "-c", str(conf)]) == 0
    [got] = server.messages
    assert sorted(got.rcpt_tos) == ["audit@example.com", "ops@example.com"]
    assert got.mail_from == "root@example.com"
    assert b"Bcc" not in got.data and b"audit@example.com" not in got.data
    assert b"after the dot" in got.data  # -i: a lone dot does not end the message


def test_sendmail_recipients_f_F_and_dot(smtp_server, write_config):
    server = smtp_server()
    conf = write_config(server.port)
    env = {"MAILMAND_CONFIG": str(conf)}
    out = run_cli("sendmail", "-f", "bounce@example.com", "-F", "Git Hook", "dev@example.com",
                  env=env, input=b"Subject: pushed\n\nbody\n.\nnot part of it\n")
    assert out.returncode == 0, out.stderr
    assert main(["--once", "-c", str(conf)]) == 0
    [got] = server.messages
    assert got.mail_from == "bounce@example.com" and list(got.rcpt_tos) == ["dev@example.com"]
    parsed = message_from_bytes(got.data)
    assert parsed["From"] == "Git Hook <bounce@example.com>"
    assert b"not part of it" not in got.data


def test_sendmail_exit_codes(write_config):
    env = {"MAILMAND_CONFIG": str(write_config(9))}
    assert run_cli("sendmail", env=env, input=b"Subject: x\n\nbody\n").returncode == 64  # no recipients
    assert run_cli("sendmail", "-Q", "a@example.com", env=env, input=b"x").returncode == 64
    bad = run_cli("sendmail", "not an address", env=env, input=b"Subject: x\n\nbody\n")
    assert bad.returncode == 65 and b"not a valid email address" in bad.stderr


def test_check_config_and_exit_codes(tmp_path, write_config, capsys):
    good = write_config(2525)
    assert main(["check-config", "-c", str(good)]) == 0
    assert "configuration OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("email:\n  server:\n    smtp:\n      host: relay\n      port: abc\n")
    assert main(["check-config", "-c", str(bad)]) == 78
    err = capsys.readouterr().err.strip()
    assert err.endswith('email.server.smtp.port: expected an integer 1-65535, got "abc"')
    assert len(err.splitlines()) == 1
    daemon = run_cli("run", "-c", str(bad))
    assert daemon.returncode == 78 and b"email.server.smtp.port" in daemon.stderr
    assert main(["no-such-command"]) == 2
    assert main(["check-config", "-c", str(tmp_path / "missing.yaml")]) == 78
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.decode().startswith("mailmand ")


def test_producers_do_not_need_the_relay_secret(write_config, monkeypatch, capsys):
    conf = write_config(9, smtp_extra="      auth:\n        username: app\n        password: ${SMTP_PASSWORD}\n")
    conf.chmod(0o640)
    monkeypatch.delenv("SMTP_PASSWORD", raising=False)
    assert main(["check-config", "-c", str(conf)]) == 78  # the daemon needs it...
    assert "SMTP_PASSWORD" in capsys.readouterr().err
    assert main(["send", "-c", str(conf), "--from", "a@example.com", "--to", "b@example.com",
                 "--text", "x"]) == 0  # ...an application enqueueing does not
    from mailmand import Client, Email
    Client(conf).enqueue(Email(sender="a@example.com", to="b@example.com", text="x"))


def test_a_word_sendmail_inside_send_flags_is_just_a_word(smtp_server, write_config, capsys):
    server = smtp_server()
    conf = write_config(server.port)
    assert main(["send", "-c", str(conf), "--from", "a@example.com", "--to", "b@example.com",
                 "--subject", "sendmail", "--text", "the body"]) == 0
    assert main(["--once", "-c", str(conf)]) == 0
    [got] = server.messages
    assert b"the body" in got.data and message_from_bytes(got.data)["Subject"] == "sendmail"


def test_sendmail_takes_what_cron_sends(smtp_server, write_config):
    import socket
    server = smtp_server()
    conf = write_config(server.port)
    raw = (b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@host> run-parts\n\noutput\n")
    out = run_cli("sendmail", "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "-oi", "-t", "-f", "root",
                  env={"MAILMAND_CONFIG": str(conf)}, input=raw)
    assert out.returncode == 0, out.stderr
    hidden = b"To: undisclosed-recipients:;\nBcc: audit@example.com\nSubject: quiet\n\nx\n"
    out = run_cli("sendmail", "-t", env={"MAILMAND_CONFIG": str(conf)}, input=hidden)
    assert out.returncode == 0, out.stderr
    assert main(["--once", "-c", str(conf)]) == 0
    local = f"root@{socket.getfqdn()}"
    got = {message_from_bytes(m.data)["Subject"]: m for m in server.messages}
    cron = got["Cron <root@host> run-parts"]
    assert cron.mail_from == local and list(cron.rcpt_tos) == [local]
    assert list(got["quiet"].rcpt_tos) == ["audit@example.com"] and b"audit@" not in got["quiet"].data


def test_odd_input_gives_one_line_not_a_traceback(write_config, tmp_path):
    conf = write_config(9)
    binary_text = tmp_path / "latin1.txt"
    binary_text.write_bytes(b"caf\xe9")
    cases = [
        ["send", "-c", str(conf), "--from", "a@example.com", "--to", "a@b..com", "--text", "x"],
        ["send", "-c", str(conf), "--from", "a@example.com", "--to", "b@example.com", "--text-file", str(binary_text)],
        ["send", "-c", str(conf), "--from", "a@example.com", "--to", "b@example.com", "--priority", "99999999999"],
    ]
    for args in cases:
        out = run_cli(*args)
        assert out.returncode == 1, (args, out.stderr)
        assert b"Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    out = run_cli("check-config", "-c", str(conf), env={"MAILMAND_LOG_LEVEL": "loud"})
    assert out.returncode == 0 and b"Traceback" not in out.stderr
    out = run_cli("status", "-c", str(conf))  # before the daemon ever ran: said, not created
    assert out.stderr.strip().endswith(b"(the daemon creates it)") and b"Traceback" not in out.stderr
    assert not (tmp_path / "mailmand.db").exists()
