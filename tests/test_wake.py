"""The spool's wake-up (mailmand/queues/wake.py), each engine on a real
directory: inotify in the waiting thread (Linux), and watchdog's observer,
the fallback elsewhere."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailmand.queues.wake import InotifyWake, Wake, WatchdogWake, watch


@pytest.fixture(params=[InotifyWake, WatchdogWake])
def wake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Wake]:
    w: Wake = request.param(tmp_path)
    yield w
    w.close()


def test_a_write_in_the_directory_ends_a_wait(wake: Wake, tmp_path: Path):
    assert wake.wait(0.05) is False  # nothing happened
    with (tmp_path / "data.db-wal").open("ab") as f:
        f.write(b"frame")
    assert wake.wait(30.0) is True  # at once: the write is news (a quiet 30 s would fail the test's time)


def test_wake_ends_a_wait_from_another_thread(wake: Wake):
    done = threading.Event()
    woken: list[bool] = []
    t = threading.Thread(target=lambda: (woken.append(wake.wait(30.0)), done.set()))
    t.start()
    time.sleep(0.1)
    wake.wake()
    assert done.wait(10), "wait() must return soon after wake(), not at its timeout"
    t.join()
    assert woken == [True]


def test_a_new_subdirectory_is_not_news(wake: Wake, tmp_path: Path):
    (tmp_path / "sub").mkdir()
    assert wake.wait(0.2) is False


def test_linux_waits_on_inotify_in_the_waiting_thread(tmp_path: Path):
    w = watch(tmp_path)
    try:
        assert isinstance(w, InotifyWake)
    finally:
        w.close()
