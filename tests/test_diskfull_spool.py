"""A full disk under the spool: a real 2 MiB tmpfs (root only), a real daemon.

Producers refuse new mail below `min-free` (Postfix's queue_minfree); the
daemon starts on a full disk, drains and delivers what the spool holds,
recovers by itself when space returns, never spins, and logs a bounded
number of lines.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailmand import Client, Email
from mailmand.config import load
from mailmand.errors import QueueUnavailable
from tests.daemonproc import DaemonProcess, wait_until

MAX_SIZE = 64 * 1024  # max-message-size here; the documented min-free default is 4 × that


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A fresh 2 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def write_yaml(tmp_path: Path, spool: Path, relay_port: int) -> Path:
    conf = tmp_path / "mailmand.yaml"
    conf.write_text(
        "email:\n"
        f"  queue:\n    default:\n      path: {spool}\n"
        "  server:\n"
        f"    database:\n      path: {tmp_path / 'store' / 'mailmand.db'}\n"  # the store has room
        "    max-message-size: 64k\n    interval: 1s\n"
        f"    smtp:\n      host: 127.0.0.1\n      port: {relay_port}\n      tls: none\n      timeout: 5s\n")
    return conf


def message(i: int) -> Email:
    return Email(sender="app@example.com", to="user@example.com", subject=f"m{i}", text="x" * 3000)


def fill(path: Path, leave: int = 0, name: str = "filler") -> Path:
    """Take every byte left on the disk but `leave`, as another program's log file would."""
    filler = path / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            st = os.statvfs(path)
            if st.f_bavail * st.f_frsize <= leave:
                break
            os.write(fd, b"\0" * 4096)  # tmpfs allocates whole pages
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    if not leave:
        assert os.statvfs(path).f_bavail == 0
    return filler


def subjects(relay) -> set[str]:
    return {m.data.split(b"Subject: ")[1].split(b"\r\n")[0].decode() for m in relay.messages}


def retries(log: str, what: str) -> int:
    """How many failed tries `Repeats` counted for a condition, from its "cleared" line."""
    found = re.findall(rf"{what}: cleared after \d+s \((\d+) failure", log)
    assert found, f"no '{what}: cleared' line:\n{log}"
    return sum(int(n) for n in found)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def fill_spool_until_refused(cfg, start: int = 0) -> list[str]:
    client = Client(cfg)
    queued: list[str] = []
    with pytest.raises(QueueUnavailable) as refused:
        for i in range(start, start + 10_000):
            client.enqueue(message(i))
            queued.append(f"m{i}")
    client.close()
    text = str(refused.value)
    assert "spool's disk is nearly full" in text and f"free at {cfg.queue.path}" in text
    assert "below the floor of 256.0 KiB (email.queue.default.min-free)" in text
    return queued


def _try_enqueue(client: Client, i: int) -> bool:
    try:
        client.enqueue(message(i))
    except QueueUnavailable:
        return False
    return True


def test_a_spool_filled_before_the_daemon_ran_drains_at_once(tmpfs: Path, tmp_path: Path, smtp_server):
    relay = smtp_server()
    conf = write_yaml(tmp_path, tmpfs / "spool", relay.port)
    cfg = load(conf, producer=True)
    assert cfg.queue.min_free == 4 * MAX_SIZE  # the documented default: 4 × max-message-size
    queued = fill_spool_until_refused(cfg)
    assert len(queued) > 100
    daemon = DaemonProcess(conf).ready()  # the floor left it room for its lock file and the WAL
    try:
        assert wait_until(lambda: subjects(relay) >= set(queued), timeout=120), daemon.log
        late = Client(cfg)  # what the daemon deleted is room for new mail
        assert wait_until(lambda: _try_enqueue(late, 10_000), timeout=60), daemon.log
        assert wait_until(lambda: "m10000" in subjects(relay), timeout=60), daemon.log
        late.close()
    finally:
        assert daemon.stop() == 0
    assert subjects(relay) == {*queued, "m10000"}  # 0 lost
    assert len(relay.messages) == len(queued) + 1  # none twice
    assert len(daemon.lines) < 100 and "Traceback" not in daemon.log


def test_a_disk_that_fills_under_the_daemon_recovers_without_restart(tmpfs: Path, tmp_path: Path, smtp_server):
    relay = smtp_server()
    relay.stall = 0.2  # slow delivery: the fault lasts while the daemon works
    conf = write_yaml(tmp_path, tmpfs / "spool", relay.port)
    cfg = load(conf, producer=True)
    daemon = DaemonProcess(conf).ready()
    try:
        room = fill(tmpfs, leave=600 * 1024, name="other")  # another program's files
        daemon.signal(signal.SIGSTOP)  # so that the spool holds mail the daemon has not read when the disk fills
        client = Client(cfg)
        queued = [f"m{i}" for i in range(100) if _try_enqueue(client, i)]
        client.close()
        assert len(queued) > 20
        filler = fill(tmpfs)  # ...and then the rest: not one byte left
        daemon.signal(signal.SIGCONT)
        before = cpu_seconds(daemon.proc.pid)
        fault_lines = len(daemon.lines)
        # Still up, reading and delivering; new mail is refused; the daemon waits, not spins.
        assert not wait_until(lambda: daemon.proc.poll() is not None, timeout=5)
        assert cpu_seconds(daemon.proc.pid) - before < 2.5, "the daemon must wait, not spin, on a full disk"
        with pytest.raises(QueueUnavailable):
            Client(cfg).enqueue(message(-1))
        relay.stall = None
        assert wait_until(lambda: subjects(relay) >= set(queued), timeout=120), daemon.log
        fault_lines = len(daemon.lines) - fault_lines
        filler.unlink()  # space comes back: no restart
        room.unlink()
        late = Client(cfg)
        assert wait_until(lambda: _try_enqueue(late, 10_000), timeout=60), daemon.log
        assert wait_until(lambda: "m10000" in subjects(relay), timeout=60), daemon.log
        assert wait_until(lambda: late._q().pending() == 0, timeout=60), daemon.log  # the spool emptied
        late.close()
    finally:
        daemon.signal(signal.SIGCONT)  # in case the test failed while it was stopped
        assert daemon.stop() == 0
    assert subjects(relay) == {*queued, "m10000"}  # 0 lost
    assert len(relay.messages) == len(queued) + 1  # none twice
    assert fault_lines < 100, daemon.log  # bounded (the fault lasted under a minute)
    assert "Traceback" not in daemon.log
    assert retries(daemon.log, "spool disk full") < 20, daemon.log  # each failure waited before the next try


def test_the_daemon_starts_on_a_disk_with_no_room_at_all(tmpfs: Path, tmp_path: Path, smtp_server):
    relay = smtp_server()
    conf = write_yaml(tmp_path, tmpfs / "spool", relay.port)
    cfg = load(conf, producer=True)
    client = Client(cfg)
    client.enqueue(message(1))
    client.close()
    filler = fill(tmpfs)
    daemon = DaemonProcess(conf).ready()  # no room for its lock file's pid, nor SQLite's index
    try:
        before = cpu_seconds(daemon.proc.pid)
        assert not wait_until(lambda: daemon.proc.poll() is not None, timeout=5)
        assert cpu_seconds(daemon.proc.pid) - before < 2.5, "the daemon must wait, not spin, on a full disk"
        filler.unlink()
        assert wait_until(lambda: subjects(relay) == {"m1"}, timeout=60), daemon.log
    finally:
        assert daemon.stop() == 0
    assert "no space to record the pid" in daemon.log
    assert len(daemon.lines) < 100 and "Traceback" not in daemon.log
    assert retries(daemon.log, "ingest failing") < 20, daemon.log  # each failure waited before the next try
