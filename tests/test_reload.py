"""Hot reload on a running daemon: watchdog (atomic editor saves included) and SIGHUP."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

from mailmand import Client, Email
from mailmand.config import load
from tests.conftest import run_cli
from tests.daemonproc import DaemonProcess, wait_until


def atomic_save(path: Path, text: str) -> None:
    """What editors do: write a temporary file, then rename it over the original."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def start(conf: Path) -> tuple[str, DaemonProcess]:
    """The daemon on `conf`, and producers on a copy of it that the test leaves alone."""
    text = conf.read_text()
    conf.with_name("client.yaml").write_text(text)
    return text, DaemonProcess(conf).ready()


def send_one(conf: Path, subject: str) -> None:
    client = Client(load(conf.with_name("client.yaml")))  # the producers' view: unchanged
    client.enqueue(Email(sender="a@example.com", to="b@example.com", subject=subject, text="x"))
    client.close()


def test_new_port_invalid_edit_restart_keys_and_sighup(smtp_server, write_config):
    first, second = smtp_server(), smtp_server()
    conf = write_config(first.port)
    original, daemon = start(conf)
    try:
        send_one(conf, "one")
        assert wait_until(lambda: len(first.messages) == 1, timeout=5)

        # An editor's atomic save that points the relay at the second server.
        atomic_save(conf, original.replace(f"port: {first.port}", f"port: {second.port}"))
        daemon.wait_for("configuration reloaded", timeout=10)
        send_one(conf, "two")
        assert wait_until(lambda: len(second.messages) == 1, timeout=5)
        assert len(first.messages) == 1

        # An invalid edit is refused with the reason; delivery goes on, on the running settings.
        conf.write_text(original.replace(f"port: {first.port}", "port: abc"))
        daemon.wait_for("reload refused", timeout=10)
        assert 'email.server.smtp.port: expected an integer 1-65535, got "abc"' in daemon.log
        send_one(conf, "three")
        assert wait_until(lambda: len(second.messages) == 2, timeout=5)

        # Keys that cannot change live are reported, not half-applied.
        moved = original.replace(f"port: {first.port}", f"port: {second.port}").replace(
            "mailmand.db", "elsewhere.db")
        atomic_save(conf, moved)
        daemon.wait_for("email.server.database.path changed: it needs a restart", timeout=10)
        send_one(conf, "four")
        assert wait_until(lambda: len(second.messages) == 3, timeout=5)
        assert not (conf.parent / "elsewhere.db").exists()

        # SIGHUP reloads too (systemd's ExecReload).
        reloads = daemon.log.count("configuration reloaded")
        daemon.signal(signal.SIGHUP)
        assert wait_until(lambda: daemon.log.count("configuration reloaded") > reloads, timeout=10)
    finally:
        assert daemon.stop() == 0


def test_delete_then_create_is_seen(smtp_server, write_config):
    first, second = smtp_server(), smtp_server()
    conf = write_config(first.port)
    text, daemon = start(conf)
    try:
        conf.unlink()
        conf.write_text(text.replace(f"port: {first.port}", f"port: {second.port}"))
        daemon.wait_for("configuration reloaded", timeout=10)
        send_one(conf, "x")
        assert wait_until(lambda: len(second.messages) == 1, timeout=5)
        assert first.messages == []
    finally:
        assert daemon.stop() == 0


def test_a_reload_the_relay_cannot_use_keeps_the_daemon_running(smtp_server, write_config, tmp_path):
    server = smtp_server()
    conf = write_config(server.port)
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    text, daemon = start(conf)
    try:
        atomic_save(conf, text.replace("      tls: none\n", f"      tls: starttls\n      ca-file: {junk}\n"))
        daemon.wait_for("reload refused", timeout=10)
        assert "not a usable CA bundle" in daemon.log
        send_one(conf, "still delivering")
        assert wait_until(lambda: len(server.messages) == 1, timeout=5)
    finally:
        assert daemon.stop() == 0


LEVEL = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")


def levels(lines: list[str]) -> set[str]:
    return {m.group(1) for line in lines if (m := LEVEL.search(line))}


def test_log_level_reloads_live(smtp_server, write_config):
    first, second = smtp_server(), smtp_server()
    conf = write_config(first.port, extra_server="    log-level: info\n")
    # a key of the Go original: reported once, at start, and not again on each reload
    conf.write_text(conf.read_text().replace("email:\n", "email:\n  buffer: 250\n", 1))
    original, daemon = start(conf)
    try:
        send_one(conf, "at info")
        assert wait_until(lambda: len(first.messages) == 1, timeout=5)
        assert "DEBUG" not in levels(daemon.lines)

        atomic_save(conf, original.replace("log-level: info", "log-level: debug"))
        daemon.wait_for("configuration reloaded", timeout=10)
        send_one(conf, "at debug")
        assert wait_until(lambda: len(first.messages) == 2, timeout=5)
        assert wait_until(lambda: "DEBUG" in levels(daemon.lines), timeout=5)

        # At warning the reload itself is not logged (info): the move to the second relay shows it.
        atomic_save(conf, original.replace("log-level: info", "log-level: WARNING")
                    .replace(f"port: {first.port}", f"port: {second.port}"))
        deadline = time.monotonic() + 10
        while not second.messages and time.monotonic() < deadline:
            sent = len(first.messages) + len(second.messages)
            send_one(conf, "until the second relay has one")
            assert wait_until(lambda n=sent: len(first.messages) + len(second.messages) > n, timeout=5)
        assert second.messages, "the reload to the second relay never applied"
        mark = len(daemon.lines)
        send_one(conf, "at warning")
        assert wait_until(lambda: len(second.messages) == 2, timeout=5)
        # An invalid edit is logged as an error: once it is read, every line before it is too.
        conf.write_text(original.replace(f"port: {first.port}", "port: abc"))
        daemon.wait_for("reload refused", timeout=10)
        assert levels(daemon.lines[mark:]) == {"ERROR"}, daemon.lines[mark:]
        reported = [line for line in daemon.lines if "email.buffer is ignored" in line]
        assert levels(reported[:1]) == {"WARNING"} and levels(reported[1:]) <= {"DEBUG"}, reported
    finally:
        assert daemon.stop() == 0


def test_interval_reloads_live(smtp_server, write_config):
    server = smtp_server(mail_reply="550 5.7.1 not today")
    conf = write_config(server.port, interval="1h")
    text, daemon = start(conf)
    try:
        send_one(conf, "refused, then retried")
        assert wait_until(lambda: status(conf)["counts"].get("failed") == 1, timeout=20)
        server.mail_reply = None

        atomic_save(conf, text.replace("interval: 1h", "interval: 1s"))
        daemon.wait_for("configuration reloaded", timeout=10)
        # `retry` re-queues in the store, where nothing wakes the daemon but its tick:
        # on the old interval (1h) the message would wait past this test.
        done = run_cli("-c", str(conf), "retry", "--failed")
        assert done.returncode == 0, done.stderr
        assert wait_until(lambda: len(server.messages) == 1, timeout=10)
    finally:
        assert daemon.stop() == 0


def status(conf: Path) -> dict:
    done = run_cli("-c", str(conf.with_name("client.yaml")), "status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_listener_set_back_to_its_running_address_is_no_change(smtp_server, write_config):
    from tests.redisutil import free_port

    running, other = free_port(), free_port()
    conf = write_config(smtp_server().port, extra_server=f"    metrics:\n      listen: 127.0.0.1:{running}\n")
    original, daemon = start(conf)
    try:
        atomic_save(conf, original.replace(f"127.0.0.1:{running}", f"127.0.0.1:{other}"))
        daemon.wait_for("email.server.metrics.listen changed: it needs a restart", timeout=10)
        daemon.wait_for("configuration reloaded", timeout=10)
        # Back to the address it listens on: nothing needs a restart any more, and nothing says so.
        atomic_save(conf, original)
        assert wait_until(lambda: daemon.log.count("configuration reloaded") == 2, timeout=10)
        assert daemon.log.count("needs a restart") == 1, daemon.log
    finally:
        assert daemon.stop() == 0
