"""Redis for tests: the machine's server (MAILMAND_TEST_REDIS_URL), a key of
each test's own, and private redis-server processes for fault tests.

A test skips with the reason when Redis cannot be reached, unless
MAILMAND_TEST_REQUIRE_SERVICES=1 (CI), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def redis_url() -> str:
    return os.environ.get("MAILMAND_TEST_REDIS_URL", DEFAULT_URL)


def require_redis() -> object:
    """A redis-py client on the test server, or skip (fail under CI) with the reason."""
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        _missing(f"redis-py is not installed ({exc}): pip install 'mailmand[redis]'")
    client = redis.Redis.from_url(redis_url(), socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        _missing(f"Redis is not reachable at {redis_url()}: {exc}")
    return client


def _missing(reason: str) -> None:
    if os.environ.get("MAILMAND_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (MAILMAND_TEST_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@pytest.fixture
def redis_key() -> Iterator[str]:
    """A stream key of this test's own, deleted afterwards."""
    client = require_redis()
    key = f"mailmand-test-{uuid.uuid4().hex[:12]}"
    yield key
    client.delete(key)  # type: ignore[attr-defined]
    client.close()  # type: ignore[attr-defined]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server on a free loopback port, that a test may stop and start."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = free_port()
        self.directory = directory
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """A factory of private redis-server processes, all stopped at teardown."""
    if not (shutil.which("redis-server") or os.path.exists("/usr/bin/redis-server")):
        _missing("redis-server is not installed")
    servers: list[RedisServer] = []

    def make(*args: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", *args)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()
