"""The store on a full disk: a real 2 MiB tmpfs under the SQLite store.

Ingest pauses below the free-space floor while dispatch goes on; outcomes
that cannot be committed are kept and committed when space returns; nothing
stays `sending` past its lease; all without a restart and without a log flood.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from email import message_from_bytes
from pathlib import Path

import pytest

from mailmand import Client, Email
from mailmand.config import load
from mailmand.stores import Status, open_store
from tests.conftest import write_store_config
from tests.daemonproc import DaemonProcess, wait_until


@pytest.fixture
def tiny_disk(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "store"
    mnt.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0750", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {got.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path, leave: int = 0) -> None:
    """Write zeros to `path` until the disk has `leave` bytes free (or none)."""
    with path.open("ab") as f:
        while True:
            st = os.statvfs(path.parent)
            free = st.f_bavail * st.f_frsize
            if free <= leave:
                return
            try:
                f.write(b"\0" * min(64 * 1024, max(4096, free - leave)))
                f.flush()
            except OSError:
                return


def subjects(server) -> Counter[str]:
    return Counter(message_from_bytes(m.data)["Subject"] for m in list(server.messages))


def enqueue(conf: Path, prefix: str, n: int) -> set[str]:
    client = Client(load(conf, producer=True))
    try:
        for i in range(n):
            client.enqueue(Email(sender="a@example.com", to="b@example.com", subject=f"{prefix}{i}", text="x" * 800))
    finally:
        client.close()
    return {f"{prefix}{i}" for i in range(n)}


def test_full_store_disk_pauses_ingest_keeps_outcomes_and_recovers(tiny_disk, smtp_server, tmp_path):
    server = smtp_server(stall=0.05)
    conf = write_store_config(tmp_path / "m.yaml", tmp_path / "spool", server.port,
                              f"      engine: sqlite3\n      path: {tiny_disk / 'mailmand.db'}\n",
                              server="    lease: 5s\n    batch: 10\n", smtp="      connections: 1\n")
    filler = tiny_disk / "filler"
    fill(filler, leave=1200 * 1024)
    wanted = enqueue(conf, "a", 200)
    daemon = DaemonProcess(conf).ready()
    try:
        assert wait_until(lambda: len(subjects(server)) >= 10, timeout=60)
        # More than the room left above the floor: ingest waits, dispatch goes on.
        wanted |= enqueue(conf, "b", 300)
        daemon.wait_for("nearly full", timeout=60)
        faulted = time.monotonic()
        delivered = len(subjects(server))
        assert wait_until(lambda: len(subjects(server)) >= delivered + 10, timeout=60)
        fill(filler)  # now not even an outcome fits
        assert wait_until(lambda: "kept to commit later" in daemon.log or "claims paused" in daemon.log,
                          timeout=60), daemon.log[-3000:]
        time.sleep(3)
        filler.unlink()  # space comes back: no restart
        fault_minutes = (time.monotonic() - faulted) / 60
        assert wait_until(lambda: set(subjects(server)) == wanted, timeout=180), len(subjects(server))
        store = open_store(load(conf).server.database)
        try:
            assert wait_until(lambda: store.counts()[Status.SENT] == len(wanted), timeout=60), store.counts()
            assert store.counts()[Status.SENDING] == 0
        finally:
            store.close()
    finally:
        assert daemon.stop() == 0
    assert set(subjects(server).values()) == {1}, "a kept outcome is committed, not sent again"
    assert "cannot rollback" not in daemon.log  # the real cause is named
    assert "database or disk is full" in daemon.log
    lines = len(daemon.lines)
    assert lines < 100 * max(1.0, fault_minutes) + 50, f"{lines} log lines:\n" + "\n".join(daemon.lines[-40:])
