"""A real daemon serving the web API and dashboard, for the web tests (a pytest plugin).

`web_daemon(token=TOKEN, relay_port=None, extra_server="", store="sqlite3")` starts `mailmand run`
in a child process with `email.server.web` on a free loopback port and waits
until it answers; `WebDaemon.http()` is an httpx client with the Bearer token,
`WebDaemon.anonymous()` one without. Every daemon is stopped at teardown.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemonproc import DaemonProcess, wait_until

TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def web_yaml(port: int, token: str | None = TOKEN, token_file: Path | None = None) -> str:
    lines = [f"    web:\n      listen: 127.0.0.1:{port}\n"]
    if token_file is not None:
        lines.append(f"      token-file: {token_file}\n")
    elif token is not None:
        lines.append(f"      token: {token}\n")
    return "".join(lines)


@dataclass
class WebDaemon:
    proc: DaemonProcess
    base: str
    token: str | None
    config: Path

    def http(self, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30, **kwargs)

    def anonymous(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30, **kwargs)


@pytest.fixture
def web_daemon(write_config, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    started: list[WebDaemon] = []

    def start(token: str | None = TOKEN, relay_port: int | None = None, extra_server: str = "",
              interval: str = "1s", store: str = "sqlite3") -> WebDaemon:
        port = free_port()
        secret = tmp_path / f"web-token-{port}"
        if token is not None:  # a token-file: a literal token in a world-readable file is refused
            secret.write_text(token + "\n")
            os.chmod(secret, 0o600)
        web = web_yaml(port, token=None, token_file=secret if token else None)
        if store == "postgres":
            from tests.conftest import postgres_block, write_store_config

            conf = write_store_config(tmp_path / f"mailmand-{port}.yaml", tmp_path / "spool", relay_port or free_port(),
                                      postgres_block(request.getfixturevalue("postgres_dsn")),
                                      server=web + extra_server, interval=interval)
        else:
            conf = write_config(relay_port or free_port(), name=f"mailmand-{port}.yaml", interval=interval,
                                extra_server=web + extra_server)
        proc = DaemonProcess(conf).ready()
        daemon = WebDaemon(proc, f"http://127.0.0.1:{port}", token, conf)
        started.append(daemon)

        def answers() -> bool:
            try:
                return httpx.get(daemon.base + "/healthz", timeout=2).status_code in (200, 503)
            except httpx.HTTPError:
                return False

        assert wait_until(answers), proc.log
        return daemon

    yield start
    for daemon in started:
        daemon.proc.stop()
