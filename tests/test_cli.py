"""Every subcommand on a real store, including the JSON shapes, and sendmail."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from email import message_from_bytes

import pytest

from mailmand.cli import main
from mailmand.config import load
from mailmand.errors import NotFound
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
    store = open_store(load(conf).server.database)
    deferred_due = store.get(ids["deferred"]).due_at
    status = cli_json(capsys, "status", "-c", str(conf))
    assert status["counts"] == {"queued": 1, "sending": 0, "deferred": 1, "sent": 1, "failed": 1,
                                "expired": 0, "cancelled": 0, "held": 0}
    assert status["spool"] == 0 and status["quarantine"] == 0 and status["daemons"] == []
    # The next send is the deferred message's retry, before the one scheduled in 1 h.
    assert status["next_scheduled"] == deferred_due
    assert status["oldest_due_age"] is None  # nothing is due now: the deferred one waits for its backoff
    assert main(["status", "-c", str(conf)]) == 0
    text = capsys.readouterr().out
    assert "sent       1" in text and "next scheduled send:" in text
    assert "daemon     not running" in text

    # Flushed, the deferred message is due: its age is how long since it became due.
    assert main(["flush", "-c", str(conf)]) == 0
    due = store.get(ids["deferred"]).due_at
    before = time.time()
    status = cli_json(capsys, "status", "-c", str(conf))
    after = time.time()
    assert before - due <= status["oldest_due_age"] <= after - due
    store.close()

    listed = cli_json(capsys, "list", "-c", str(conf))
    # Newest first: the reverse of the order they were sent in.
    assert [m["id"] for m in listed] == [ids[k] for k in ("scheduled", "deferred", "failed", "sent")]
    assert {"id", "status", "mail_from", "rcpt_to", "subject", "attempts", "last_error"} <= set(listed[0])
    assert isinstance(listed[0]["send_after"], float)  # JSON keeps epoch seconds
    failed = cli_json(capsys, "list", "-c", str(conf), "--status", "failed")
    assert [m["id"] for m in failed] == [ids["failed"]]
    assert len(cli_json(capsys, "list", "-c", str(conf), "--limit", "2")) == 2


def test_list_text_columns(queue_world, capsys):
    _, conf, ids = queue_world
    capsys.readouterr()
    assert main(["list", "-c", str(conf), "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "SEND", "TIME", "NEXT", "TRY", "TRIES", "RECIPIENTS", "SUBJECT"]
    scheduled = lines[1]
    assert scheduled.startswith(ids["scheduled"]) and " queued " in scheduled and scheduled.endswith("future")
    store = open_store(load(conf).server.database)
    send_at = store.get(ids["scheduled"]).send_after
    store.close()
    # The send time, in local time with the zone offset: the scheduled one stands out an hour ahead.
    assert datetime.fromtimestamp(send_at).astimezone().isoformat(sep=" ", timespec="seconds") in scheduled
    assert re.search(r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d ", scheduled)
    assert lines[-1] == f"… more: the next page is --after {lines[-2].split()[0]}"
    assert len(lines) == 5


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
    assert main(["retry", "-c", str(conf)]) == 2  # neither ids nor a selector
    assert main(["--once", "-c", str(conf)]) == 0
    store = open_store(load(conf).server.database)
    retried = store.get(ids["failed"])
    # One count everywhere: the failed try and the one after `retry`, as `show` lists them.
    assert retried.status is Status.SENT and retried.attempts == len(store.attempts(ids["failed"])) == 2
    assert store.get(ids["scheduled"]).status is Status.CANCELLED
    store.close()

    capsys.readouterr()
    assert main(["purge", "-c", str(conf), "--older-than", "0s"]) == 0
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
    _, conf, ids = queue_world
    store = open_store(load(conf).server.database)
    now = time.time()
    store.record_depth(now)  # as the daemon's housekeeping does
    store.close()
    stats = cli_json(capsys, "stats", "-c", str(conf), "--since", "1h")
    assert (stats["sent"], stats["failed"], stats["expired"]) == (1, 1, 0)
    assert stats["messages"] == {"sent": 1, "failed": 1, "expired": 0}
    assert stats["attempts"] == {"sent": 1, "temporary": 1, "permanent": 1, "expired": 0}
    assert set(stats["latency"]) == {"p50", "p95", "p99"}
    assert 0 < stats["latency"]["p50"] < 5
    assert stats["top_failures"] == [{"reason": "550 5.1.1 no such user", "count": 1}]
    # Queued (the scheduled one) and deferred: two waiting in this hour.
    assert stats["depth_hourly"] == [{"hour": int(now // 3600) * 3600, "depth": 2}]
    assert main(["stats", "-c", str(conf)]) == 0
    text = capsys.readouterr().out
    assert "messages: sent 1, failed 1, expired 0" in text
    assert "attempts: sent 1, temporary 1, permanent 1, expired 0" in text
    assert "latency (send time to 250): p50" in text


def test_stats_count_messages_and_attempts_apart(smtp_server, write_config, capsys):
    """One message refused twice, after a retry, is one failed message and two failed attempts."""
    server = smtp_server(rcpt_replies={"bad@example.com": "550 5.1.1 no such user"})
    conf = write_config(server.port)
    assert main(["send", "-c", str(conf), "--from", "a@example.com", "--to", "bad@example.com", "--text", "x"]) == 0
    assert main(["--once", "-c", str(conf)]) == 0
    assert main(["retry", "-c", str(conf), "--all"]) == 0
    assert main(["--once", "-c", str(conf)]) == 0
    stats = cli_json(capsys, "stats", "-c", str(conf))
    assert stats["messages"]["failed"] == 1 and stats["attempts"]["permanent"] == 2


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
    bad = run_cli("send", "-c", str(conf), "--from", "a@example.com", "--to", "ann@exa mple.com")
    assert bad.returncode == 65 and b"to: not a valid email address" in bad.stderr  # EX_DATAERR, as sendmail
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
    client = Client(conf)
    msg_id = client.enqueue(Email(sender="a@example.com", to="b@example.com", text="x"))
    client.close()
    assert re.fullmatch(r"[0-9a-f]{32}", msg_id)
    assert main(["show", "-c", str(conf), msg_id]) == 0  # both are in the spool, waiting for the daemon
    assert "queued in the spool, not ingested yet (is the daemon running?)" in capsys.readouterr().out
    assert main(["status", "--json", "-c", str(conf)]) == 0
    assert json.loads(capsys.readouterr().out)["spool"] == 2


def test_a_word_sendmail_inside_send_flags_is_just_a_word(smtp_server, write_config, capsys):
    server = smtp_server()
    conf = write_config(server.port)
    assert main(["send", "-c", str(conf), "--from", "a@example.com", "--to", "b@example.com",
                 "--subject", "sendmail", "--text", "the body"]) == 0
    assert main(["--once", "-c", str(conf)]) == 0
    [got] = server.messages
    assert b"the body" in got.data and message_from_bytes(got.data)["Subject"] == "sendmail"


def test_sendmail_takes_what_cron_sends(smtp_server, write_config):
    from mailmand.hostname import mail_domain

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
    local = f"root@{mail_domain()}"
    assert not local.endswith("@localhost")
    got = {message_from_bytes(m.data)["Subject"]: m for m in server.messages}
    cron = got["Cron <root@host> run-parts"]
    assert cron.mail_from == local and list(cron.rcpt_tos) == [local]
    headers = message_from_bytes(cron.data)
    assert headers["To"] == local and headers["From"] == local  # qualified like the envelope
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
        assert out.returncode == 65, (args, out.stderr)  # a message refused: EX_DATAERR
        assert b"Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    out = run_cli("check-config", "-c", str(conf), env={"MAILMAND_LOG_LEVEL": "loud"})
    assert out.returncode == 0 and b"Traceback" not in out.stderr
    out = run_cli("status", "-c", str(conf))  # before the daemon ever ran: said, not created
    assert out.returncode == 0 and b"(the daemon creates it)" in out.stdout and b"Traceback" not in out.stderr
    assert not (tmp_path / "mailmand.db").exists()


# -- queue control -------------------------------------------------------------


def test_show_raw_prints_the_stored_message(queue_world):
    _, conf, ids = queue_world
    out = run_cli("show", "-c", str(conf), ids["sent"], "--raw")
    assert out.returncode == 0, out.stderr
    store = open_store(load(conf).server.database)
    assert out.stdout == store.raw(ids["sent"])
    store.close()


def test_show_text_gives_local_times_with_the_offset(queue_world, capsys):
    _, conf, ids = queue_world
    capsys.readouterr()
    assert main(["show", "-c", str(conf), ids["sent"]]) == 0
    created = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("created:"))
    assert re.fullmatch(r"created: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d", created)


def test_cancel_and_retry_selectors(smtp_server, write_config, capsys):
    server = smtp_server(rcpt_replies={"bad@example.com": "550 5.1.1 no such user"})
    conf = write_config(server.port)

    def send(*args: str) -> str:
        assert main(["send", "-c", str(conf), "--text", "x", *args]) == 0
        return capsys.readouterr().out.strip()

    later = [send("--from", "a@example.com", "--to", f"r{i}@example.com", "--in", "1h") for i in range(3)]
    other = send("--from", "b@example.com", "--to", "r0@example.com", "--in", "1h")
    bad = [send("--from", "a@example.com", "--to", "bad@example.com") for _ in range(2)]
    assert main(["--once", "-c", str(conf)]) == 0
    capsys.readouterr()

    assert main(["cancel", "-c", str(conf)]) == 2  # no id, no selector: a usage error
    assert "needs message ids or a selector" in capsys.readouterr().err
    assert main(["cancel", "-c", str(conf), later[0], "--all"]) == 2  # not both
    assert main(["cancel", "-c", str(conf), "--status", "failed"]) == 2  # failed mail cannot be cancelled
    capsys.readouterr()
    assert main(["cancel", "-c", str(conf), "--to", "R0@example.com", "--from", "a@example.com"]) == 0
    assert capsys.readouterr().out.strip() == "cancelled 1 message(s)"
    assert main(["cancel", "-c", str(conf), "--older-than", "1h"]) == 0  # all are younger
    assert capsys.readouterr().out.strip() == "cancelled 0 message(s)"
    assert main(["cancel", "-c", str(conf), "--all"]) == 0
    assert capsys.readouterr().out.strip() == "cancelled 3 message(s)"  # later[1:], other
    assert main(["retry", "-c", str(conf), "--status", "failed", "--from", "a@example.com"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "re-queued 2 message(s)", "no daemon is running on this spool: they go out when it starts"]
    store = open_store(load(conf).server.database)
    assert {store.get(i).status for i in [*later, other]} == {Status.CANCELLED}
    assert {store.get(i).status for i in bad} == {Status.QUEUED}
    store.close()


def test_retrying_expired_mail(smtp_server, write_config, capsys):
    from mailmand.daemon import Daemon

    server = smtp_server(rcpt_replies={"slow@example.com": "451 4.2.1 try later"})
    conf = write_config(server.port, extra_server="    max-time: 1m\n")
    assert main(["send", "-c", str(conf), "--from", "a@example.com", "--to", "slow@example.com", "--text", "x"]) == 0
    msg_id = capsys.readouterr().out.strip()
    daemon = Daemon(load(conf))
    daemon.once()
    daemon.once(now=time.time() + 3600)  # an hour later: past max-time
    daemon.close()
    store = open_store(load(conf).server.database)
    assert store.get(msg_id).status is Status.EXPIRED
    server.rcpt_replies = {}
    assert main(["retry", "-c", str(conf), msg_id]) == 0
    assert store.get(msg_id).status is Status.QUEUED and store.get(msg_id).fails == 0  # a fresh max-fails budget
    assert main(["--once", "-c", str(conf)]) == 0
    assert store.get(msg_id).status is Status.SENT
    store.close()
    assert [m.rcpt_tos for m in server.messages] == [("slow@example.com",)]


def test_flush_wakes_a_running_daemon_and_leaves_scheduled_mail(smtp_server, write_config, capsys):
    from tests.daemonproc import DaemonProcess, wait_until

    server = smtp_server(rcpt_replies={"slow@example.com": "451 4.2.1 try later"})
    conf = write_config(server.port, interval="1h")  # no tick will come: only the wake can explain a delivery
    conf.write_text(conf.read_text().replace("backoff: {min: 1s, max: 2s}", "backoff: {min: 1h, max: 2h}"))
    daemon = DaemonProcess(conf).ready()
    try:
        assert main(["status", "-c", str(conf)]) == 0
        text = capsys.readouterr().out
        import socket

        from mailmand import __version__
        assert f"daemon     running on {socket.gethostname()}, pid {daemon.proc.pid}, mailmand {__version__}, since " \
            in text
        status = cli_json(capsys, "status", "-c", str(conf))
        assert [d["pid"] for d in status["daemons"]] == [daemon.proc.pid]

        for to, extra in (("slow@example.com", ()), ("ann@example.com", ("--in", "1h"))):
            assert main(["send", "-c", str(conf), "--from", "a@example.com", "--to", to, "--text", "x", *extra]) == 0
        slow, scheduled = capsys.readouterr().out.split()
        store = open_store(load(conf).server.database)

        def deferred() -> bool:
            try:
                return store.get(slow).status is Status.DEFERRED
            except NotFound:  # not ingested yet
                return False

        assert wait_until(deferred)
        server.rcpt_replies = {}
        capsys.readouterr()
        assert main(["flush", "-c", str(conf)]) == 0
        assert capsys.readouterr().out.splitlines() == ["flushed 1 deferred message(s)",
                                                        f"woke the daemon (pid {daemon.proc.pid})"]
        assert wait_until(lambda: store.get(slow).status is Status.SENT, timeout=20)
        assert store.get(scheduled).status is Status.QUEUED  # scheduled mail keeps its time
        assert main(["flush", "-c", str(conf), scheduled]) == 0
        assert "is queued, not deferred: left as it is" in capsys.readouterr().err
        assert store.get(scheduled).status is Status.QUEUED
        store.close()
    finally:
        assert daemon.stop() == 0


def test_bare_mailmand_prints_help_and_starts_nothing(tmp_path, write_config):
    conf = write_config(9)
    out = run_cli("-c", str(conf))
    assert out.returncode == 0
    assert out.stdout.startswith(b"usage: mailmand") and b"mailmand run" in out.stdout
    assert not (tmp_path / "spool").exists() and not (tmp_path / "mailmand.db").exists()


def test_usage_errors_exit_2(write_config, capsys):
    conf = str(write_config(9))
    assert main(["send", "-c", conf, "--from", "a@example.com", "--text", "x"]) == 2  # no --to
    assert "send needs --to" in capsys.readouterr().err
    assert main(["list", "-c", conf, "--limit", "0"]) == 2
    assert main(["stats", "-c", conf, "--since", "soon"]) == 2
    assert main(["list", "--bogus"]) == 2


def test_send_reads_the_body_from_stdin(smtp_server, write_config):
    server = smtp_server()
    conf = write_config(server.port)
    piped = run_cli("send", "-c", str(conf), "--from", "a@example.com", "--to", "b@example.com",
                    "--subject", "piped", input="disk is full: ü\n".encode())
    assert piped.returncode == 0, piped.stderr
    dash = run_cli("send", "-c", str(conf), "--from", "a@example.com", "--to", "b@example.com",
                   "--subject", "dash", "--text-file", "-", input=b"from --text-file -\n")
    assert dash.returncode == 0, dash.stderr
    assert main(["--once", "-c", str(conf)]) == 0
    from email import policy

    bodies = {m["Subject"]: m.get_content().replace("\r\n", "\n") for m in
              (message_from_bytes(r.data, policy=policy.default) for r in server.messages)}
    assert bodies == {"piped": "disk is full: ü\n", "dash": "from --text-file -\n"}


def test_list_into_head_has_no_broken_pipe(write_config, tmp_path):
    import subprocess
    import sys

    from mailmand.message import Record

    conf = write_config(9)
    store = open_store(load(conf).server.database, create=True)
    store.insert([Record(id=f"m{i:05d}", mail_from="a@example.com", rcpt_to=("b@example.com",),
                         raw=b"Subject: s\r\n\r\nx\r\n", created_at=1_700_000_000 + i) for i in range(3000)])
    store.close()
    out = subprocess.run(["bash", "-c", f'"{sys.executable}" -m mailmand list --limit 3000 -c "{conf}" | head -2;'
                          ' exit "${PIPESTATUS[0]}"'], capture_output=True, timeout=60)
    assert out.stderr == b"", out.stderr
    assert out.returncode == 0
    assert out.stdout.decode().splitlines()[1].startswith("m02999 ")


# -- read-only commands and check-config ----------------------------------


def test_read_only_commands_create_nothing(tmp_path, capsys):
    base = tmp_path / "fresh"
    conf = tmp_path / "fresh.yaml"
    conf.write_text(f"email:\n  queue:\n    default:\n      path: {base / 'spool'}\n"
                    f"  server:\n    database:\n      path: {base / 'lib' / 'mailmand.db'}\n"
                    "    smtp:\n      host: 127.0.0.1\n")
    note = f"no store yet at {base / 'lib' / 'mailmand.db'} (the daemon creates it)"
    for args in (["list"], ["show", "abc"], ["stats"], ["flush"], ["cancel", "--all"]):
        assert main([*args, "-c", str(conf)]) == 1, args
        assert capsys.readouterr().err.strip() == f"mailmand: {note}", args
    assert main(["status", "-c", str(conf)]) == 0
    assert note in capsys.readouterr().out
    assert main(["check-config", "-c", str(conf)]) == 0
    assert not base.exists(), sorted(base.rglob("*"))


def test_check_config_refuses_what_run_refuses(tmp_path, capsys):
    conf = tmp_path / "engine.yaml"
    conf.write_text(f"email:\n  queue:\n    default:\n      path: {tmp_path / 'spool'}\n"
                    "  server:\n    database:\n      engine: postgres\n      dsn: host=db password=s3cret dbname\n"
                    "    smtp:\n      host: 127.0.0.1\n")
    assert main(["check-config", "-c", str(conf)]) == 78
    check = capsys.readouterr().err.strip()
    run = run_cli("--once", "-c", str(conf))
    assert run.returncode == 78
    assert run.stderr.decode().strip() == check and "s3cret" not in check
    assert not (tmp_path / "spool").exists()  # a refused start leaves nothing behind


def test_a_submission_certificate_run_refuses_is_refused_by_check_config_first(tmp_path, capsys):
    import socket
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "submission.yaml"
    conf.write_text(f"email:\n  queue:\n    default:\n      path: {tmp_path / 'spool'}\n"
                    f"  server:\n    database:\n      path: {tmp_path / 'lib' / 'mailmand.db'}\n"
                    f"    submission:\n      listen: ['127.0.0.1:{port}']\n"
                    f"      tls: {{cert-file: {tmp_path / 'cert.pem'}, key-file: {tmp_path / 'key.pem'}}}\n"
                    "    smtp:\n      host: 127.0.0.1\n")
    run = run_cli("run", "-c", str(conf), timeout=30)
    assert run.returncode == 78 and b"email.server.submission.tls" in run.stderr, run.stderr
    made = sorted(p.name for p in tmp_path.iterdir())
    assert main(["check-config", "-c", str(conf)]) == 78
    assert capsys.readouterr().err.strip() == run.stderr.decode().strip()
    assert made == ["cert.pem", "key.pem", "submission.yaml"]  # a refused start leaves nothing behind


def test_check_config_warns_about_directories_the_daemon_cannot_make(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    conf = tmp_path / "dirs.yaml"
    conf.write_text(f"email:\n  queue:\n    default:\n      path: {blocker / 'spool'}\n"
                    f"  server:\n    database:\n      path: {tmp_path / 'db' / 'mailmand.db'}\n"
                    "    smtp:\n      host: 127.0.0.1\n")
    assert main(["check-config", "-c", str(conf)]) == 0
    err = capsys.readouterr().err
    assert f"the spool directory {blocker / 'spool'} cannot be created: {blocker} is not a directory" in err
    assert "store directory" not in err  # tmp_path/db can be made


def test_check_config_connect(smtp_server, write_config, capsys):
    server = smtp_server(tls="starttls", auth=("app", "secret"))
    conf = write_config(server.port, smtp_extra=(
        f"      ca-file: {server.tls_ca.ca_file}\n      auth:\n        username: app\n"
        "        password: ${SMTP_PASSWORD}\n"))
    conf.write_text(conf.read_text().replace("tls: none", "tls: starttls"))
    import os

    os.environ["SMTP_PASSWORD"] = "secret"
    try:
        assert main(["check-config", "--connect", "-c", str(conf)]) == 0
        out = capsys.readouterr().out
        assert "greeting: 220 " in out
        assert "STARTTLS: OK, certificate verified" in out
        offers = next(line for line in out.splitlines() if line.startswith("  offers: "))
        assert "SIZE" in offers and "SMTPUTF8" in offers and "AUTH" in offers and "PLAIN" in offers
        assert "CHUNKING" in offers.partition("(not: ")[2]  # aiosmtpd offers no BDAT: said, not hidden
        assert "login: OK as app" in out and out.rstrip().endswith("a message could be sent")
        os.environ["SMTP_PASSWORD"] = "wrong"
        assert main(["check-config", "--connect", "-c", str(conf)]) == 69
        captured = capsys.readouterr()
        assert "login: refused: 535" in captured.out and captured.err == "mailmand: cannot use: relay\n"
    finally:
        del os.environ["SMTP_PASSWORD"]


def test_check_config_connect_says_which_tls_the_port_wants(write_config, capsys):
    import socket
    import threading

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", 465))  # an implicit-TLS relay: it waits for a ClientHello, says nothing
    except OSError as exc:
        listener.close()
        pytest.skip(f"cannot listen on port 465 here: {exc}")
    listener.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    conf = write_config(465)
    conf.write_text(conf.read_text().replace("tls: none", "tls: starttls").replace("timeout: 5s", "timeout: 1s"))
    try:
        assert main(["check-config", "--connect", "-c", str(conf)]) == 69
        out = capsys.readouterr().out
        assert "cannot send: connect: no answer" in out and out.rstrip().endswith("(port 465 expects tls: ssl)")
    finally:
        listener.close()
        for conn in held:
            conn.close()


def test_demo_shows_every_outcome(tmp_path, monkeypatch, capsys):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    rows = {line[:40].strip(): line[40:].split() for line in out.splitlines()
            if line.startswith(("now, ", "send_later", "to nobody"))}
    assert rows["now, text+html, report.csv attached"][:1] == ["sent"]
    assert rows["send_later('3s')"][0] == "sent"
    assert float(rows["send_later('3s')"][1].rstrip("s")) >= 3.0  # it waited for its time
    assert rows["to nobody@refused.example"][0] == "failed"
    assert "550 5.1.1 <nobody@refused.example>: no such user" in out
    assert "The relay received 2 message(s)" in out
