"""The sendmail(8) shim and mailq, run as cron, PHP and an admin run them:
the real entry points in child processes, a real spool, store and SMTP server."""

from __future__ import annotations

import getpass
import io
import os
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailmand import sendmail as shim
from mailmand.cli import main
from mailmand.config import load
from mailmand.stores import Status, open_store
from tests.conftest import ROOT

SYSEXITS = {0, *range(64, 79)}
SENDMAIL = "import sys; from mailmand.cli import sendmail_main; sys.exit(sendmail_main())"
MAILQ = "import sys; from mailmand.cli import mailq_main; sys.exit(mailq_main())"
SENDMAIL_SECTION = ("  sendmail:\n    domain: host.example\n"
                    "    aliases: {root: ops@example.com, default: catchall@example.com}\n")


def entry(code: str, *args: str, input: bytes = b"", conf: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """A console-script entry point (mailmand-sendmail, mailq) in a child process."""
    full = {**os.environ, **(env or {})}
    full.pop("MAILMAND_CONFIG", None)
    if conf is not None:
        full["MAILMAND_CONFIG"] = str(conf)
    return subprocess.run([sys.executable, "-c", code, *args], input=input, capture_output=True,
                          timeout=60, env=full, cwd=ROOT)


def sendmail(*args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return entry(SENDMAIL, *args, **kw)  # type: ignore[arg-type]


@pytest.fixture
def relay(smtp_server, write_config, tmp_path):
    """A server, and a config with a sendmail section (domain and aliases)."""
    server = smtp_server()
    conf = write_config(server.port)
    conf.write_text(conf.read_text() + SENDMAIL_SECTION)
    return server, conf


def deliver(conf: Path) -> None:
    assert main(["--once", "-c", str(conf)]) == 0


def test_a_message_with_no_headers_is_the_body(relay):
    server, conf = relay
    out = sendmail("admin@example.com", input=b"disk is full\n", conf=conf)
    assert out.returncode == 0, out.stderr
    out = sendmail("-f", "cron@example.com", "-F", "Cron Daemon", "ops@example.com",
                   input=b"second line: is not a header\n", conf=conf)
    assert out.returncode == 0, out.stderr
    deliver(conf)
    first, second = sorted(server.messages, key=lambda m: m.rcpt_tos)
    msg = message_from_bytes(first.data, policy=policy.default)
    assert first.rcpt_tos == ("admin@example.com",)
    assert msg["To"] == "admin@example.com"
    user = getpass.getuser()
    assert first.mail_from == msg["From"] == f"{user}@host.example"
    assert msg["Date"] and msg["Message-ID"]
    assert msg.get_content().splitlines() == ["disk is full"]
    msg = message_from_bytes(second.data, policy=policy.default)
    assert msg["From"] == "Cron Daemon <cron@example.com>" and second.mail_from == "cron@example.com"
    assert msg.get_content().splitlines() == ["second line: is not a header"]


def test_bare_names_get_aliases_or_the_domain_in_envelope_and_headers(relay):
    server, conf = relay
    raw = b"From: root\nTo: root, ann@example.com\nCc: bob\nSubject: names\n\nx\n"
    out = sendmail("-t", input=raw, conf=conf)
    assert out.returncode == 0, out.stderr
    deliver(conf)
    [got] = server.messages
    assert sorted(got.rcpt_tos) == ["ann@example.com", "catchall@example.com", "ops@example.com"]
    assert got.mail_from == "root@host.example"  # senders are qualified, never aliased
    msg = message_from_bytes(got.data, policy=policy.default)
    assert msg["From"] == "root@host.example"
    assert msg["To"] == "ops@example.com, ann@example.com"
    assert msg["Cc"] == "catchall@example.com"


def test_the_default_domain_is_never_localhost(smtp_server, write_config):
    from mailmand.hostname import mail_domain

    server = smtp_server()
    conf = write_config(server.port)
    assert sendmail("root", input=b"x\n", conf=conf).returncode == 0
    deliver(conf)
    [got] = server.messages
    assert got.rcpt_tos == (f"root@{mail_domain()}",)
    assert not got.rcpt_tos[0].endswith("@localhost")


def test_null_sender_is_accepted(relay):
    server, conf = relay
    out = sendmail("-f", "<>", "ops@example.com", input=b"Subject: bounce\n\nreturned\n", conf=conf)
    assert out.returncode == 0, out.stderr
    deliver(conf)
    [got] = server.messages
    assert got.mail_from == "<>"  # MAIL FROM:<>, as aiosmtpd records it
    assert message_from_bytes(got.data)["From"]  # a From header is still there


def test_options_help_ignored_and_unknown(relay):
    _, conf = relay
    helped = sendmail("-h", conf=conf)
    assert helped.returncode == 0 and b"usage: sendmail" in helped.stdout
    assert sendmail("--help", conf=conf).stdout == helped.stdout
    quiet = sendmail("-oem", "-odi", "-odb", "-B8BITMIME", "-v", "-oi", "ops@example.com",
                     input=b"Subject: s\n\nx\n", conf=conf)
    assert quiet.returncode == 0 and quiet.stderr == b"" and quiet.stdout == b""
    unknown = sendmail("-Q", "ops@example.com", input=b"x", conf=conf)
    assert unknown.returncode == 64
    assert b"unsupported option -Q" in unknown.stderr and b"usage: sendmail" in unknown.stderr


def test_C_picks_the_configuration(relay, tmp_path):
    server, conf = relay
    out = sendmail("-C", str(conf), "ops@example.com", input=b"Subject: c\n\nx\n")  # no $MAILMAND_CONFIG
    assert out.returncode == 0, out.stderr
    deliver(conf)
    assert len(server.messages) == 1
    missing = sendmail("-C", str(tmp_path / "nope.yaml"), "ops@example.com", input=b"x")
    assert missing.returncode == 78 and b"does not exist" in missing.stderr


def test_bp_and_mailq_list_the_queue_and_q_flushes(smtp_server, write_config):
    server = smtp_server(rcpt_replies={"slow@example.com": "451 4.2.1 try later"})
    conf = write_config(server.port, interval="1h")
    conf.write_text(conf.read_text().replace("backoff: {min: 1s, max: 2s}", "backoff: {min: 1h, max: 2h}"))
    empty = entry(MAILQ, conf=conf)
    assert empty.returncode == 1 and b"no store yet" in empty.stderr
    assert sendmail("-f", "app@example.com", "slow@example.com", input=b"Subject: s\n\nx\n",
                    conf=conf).returncode == 0
    deliver(conf)
    listed = sendmail("-bp", conf=conf)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.decode().splitlines()
    assert lines[0].split() == ["-Queue", "ID-", "--Size--", "----Arrival", "Time----", "-Sender/Recipient-------"]
    assert lines[1].split()[-1] == "app@example.com" and lines[1].split()[1].isdigit()
    assert lines[2] == "(451 4.2.1 try later)"  # the last reason of deferred mail
    assert lines[3].strip() == "slow@example.com"
    assert lines[-1].startswith("-- 1 Kbytes in 1 Request.")
    assert entry(MAILQ, conf=conf).stdout == listed.stdout

    store = open_store(load(conf).server.database)
    [info] = store.list_messages()
    assert info.status is Status.DEFERRED and info.due_at > info.updated_at + 1000
    flushed = sendmail("-q", conf=conf)
    assert flushed.returncode == 0 and b"flushed 1 deferred message(s)" in flushed.stdout
    assert store.get(info.id).due_at <= store.get(info.id).updated_at + 1
    store.close()
    server.rcpt_replies = {}
    deliver(conf)
    assert [m.rcpt_tos for m in server.messages] == [("slow@example.com",)]
    assert entry(MAILQ, conf=conf).stdout == b"Mail queue is empty\n"


def test_header_bytes_that_are_not_utf8_exit_65_with_a_sentence(relay):
    server, conf = relay
    bad = sendmail("-t", input=b"To: \xe9\xe9@x.test\r\nSubject: s\r\n\r\nhi\r\n", conf=conf)
    assert bad.returncode == 65, bad.stderr
    assert bad.stderr.decode().strip() == (
        "sendmail: header line 1: holds bytes that are not UTF-8: write non-ASCII header text "
        "as UTF-8 or as RFC 2047 encoded words: b'To: \\xe9\\xe9@x.test'")
    good = sendmail("-t", input="To: ops@example.com\nSubject: café\n\nhi\n".encode(), conf=conf)
    assert good.returncode == 0, good.stderr
    deliver(conf)
    [got] = server.messages
    assert got.data.isascii()  # encoded words, as the relay may not take 8-bit headers
    assert message_from_bytes(got.data, policy=policy.default)["Subject"] == "café"


def test_exit_codes_78_config_and_64_usage(write_config, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("email:\n  server:\n    smtp:\n      host: relay\n      port: abc\n")
    out = sendmail("ops@example.com", input=b"x", conf=bad)
    assert out.returncode == 78 and b"email.server.smtp.port" in out.stderr
    conf = write_config(9)
    assert sendmail(input=b"Subject: x\n\nbody\n", conf=conf).returncode == 64  # no recipients
    assert sendmail("-f", conf=conf).returncode == 64  # -f needs a value
    assert sendmail("not an address", input=b"Subject: x\n\nbody\n", conf=conf).returncode == 65


def test_exit_75_when_the_spool_cannot_take_mail_now(write_config):
    conf = write_config(9)
    # More free space than any disk has: the spool refuses new mail (Postfix's queue_minfree).
    conf.write_text(conf.read_text().replace("engine: spool\n", "engine: spool\n      min-free: 1000TiB\n"))
    out = sendmail("ops@example.com", input=b"Subject: x\n\nbody\n", conf=conf)
    assert out.returncode == 75, out.stderr
    assert b"Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1


# -- fuzz: no input makes the shim leave sysexits or print a traceback --------------------

OPTIONS = ["-t", "-i", "-oi", "-f", "-F", "-r", "-C", "-bp", "-q", "-h", "-B", "-o", "-X", "--", "-Q",
           "-f<>", "-oem", "root", "ops@example.com", "a b", "<>", "", "\x00", "é@é", "-"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.one_of(st.sampled_from(OPTIONS), st.text(max_size=12)), max_size=6),
       data=st.one_of(st.binary(max_size=300),
                      st.builds(lambda h, b: h + b"\n\n" + b, st.binary(max_size=120), st.binary(max_size=60))))
@example(argv=["<"], data=b"")  # found by this test: the stdlib's address parser raised IndexError
@example(argv=["-t"], data=b"To: <\n\nx\n")
def test_fuzzed_input_stays_inside_sysexits(argv, data, write_config, monkeypatch, capsys):
    conf = write_config(9)
    argv = [a for a in argv if a not in ("-C", "-bp", "-q") and not a.startswith("-C")]  # no other config
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code = shim.main(argv, config=str(conf))
    out = capsys.readouterr()
    assert code in SYSEXITS, (argv, data, out.err)
    assert "Traceback" not in out.err
    assert code != 70, (argv, data, out.err)  # an internal error is a bug, not an answer
