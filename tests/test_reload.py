"""Hot reload on a running daemon: watchdog (atomic editor saves included) and SIGHUP."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from mailmand import Client, Email
from mailmand.config import load
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
