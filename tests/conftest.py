"""Shared fixtures: real SQLite files under tmp_path, real SMTP servers (tests/smtpd.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailmand.config import Config, DatabaseConfig, QueueConfig, ServerConfig, SmtpConfig

pytest_plugins = ("tests.smtpd", "tests.postfix")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def make_config(tmp_path: Path):
    """Build a Config rooted in tmp_path: make_config(smtp=SmtpConfig(...), batch=10, ...)."""

    def make(smtp: SmtpConfig | None = None, **server: object) -> Config:
        return Config(
            queue=QueueConfig(path=tmp_path / "spool"),
            server=ServerConfig(database=DatabaseConfig(path=tmp_path / "mailmand.db"),
                                smtp=smtp or SmtpConfig(host="127.0.0.1", port=9), **server),
        )

    return make


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a YAML config for a relay; returns its path (for subprocess daemons)."""

    def write(port: int, name: str = "mailmand.yaml", extra_server: str = "", smtp_extra: str = "",
              interval: str = "1s") -> Path:
        path = tmp_path / name
        path.write_text(
            "email:\n"
            "  queue:\n    default:\n      engine: spool\n"
            f"      path: {tmp_path / 'spool'}\n"
            "  server:\n"
            f"    database:\n      engine: sqlite3\n      path: {tmp_path / 'mailmand.db'}\n"
            f"    interval: {interval}\n"
            "    backoff: {min: 1s, max: 2s}\n"
            f"{extra_server}"
            f"    smtp:\n      host: 127.0.0.1\n      port: {port}\n      tls: none\n      timeout: 5s\n"
            f"{smtp_extra}"
        )
        return path

    return write


def mailmand_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mailmand", *args]


def run_cli(*args: str, input: bytes | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run the real command line in a child process."""
    return subprocess.run(mailmand_cmd(*args), input=input, capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)
