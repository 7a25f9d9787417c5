"""Throwaway local users and groups for tests that an attacker sharing the host
would play: created with useradd (root only), removed afterwards. Commands run
as them through setpriv, which keeps the environment it is given."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT

BARE_PATH = "/usr/bin:/bin"


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path  # a directory of its own, under the test's shared base

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: this user's HOME, no $MAILMAND_CONFIG, Python able to import mailmand."""
        return {"PATH": BARE_PATH, "HOME": str(self.home), "LANG": "C.UTF-8", "USER": self.name,
                "LOGNAME": self.name, "XDG_DATA_HOME": str(self.home / "data"),
                "MAILMAND_CACHE_DIR": "none", **PYTHON_ENV, **extra}

    def run(self, cmd: list[str | Path], *, env: dict[str, str] | None = None, cwd: Path | None = None,
            input: str | None = None, timeout: float = 60, umask: int = -1) -> subprocess.CompletedProcess[str]:
        return subprocess.run(as_user(self.name, cmd), env=env or self.env(), cwd=cwd, input=input,
                              text=True, capture_output=True, timeout=timeout, umask=umask)

    def popen(self, cmd: list[str | Path], *, env: dict[str, str] | None = None,
              umask: int = -1) -> subprocess.Popen[str]:
        return subprocess.Popen(as_user(self.name, cmd), env=env or self.env(), text=True, umask=umask,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def python(self, code: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run([PYTHON, "-c", code], **kwargs)  # type: ignore[arg-type]

    def mailmand(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run([PYTHON, "-m", "mailmand", *args], **kwargs)  # type: ignore[arg-type]


# The venv's interpreter may sit under /root (0700): the system Python of the same
# minor version loads this tree and the venv's packages, which every user can read.
PYTHON = sys.executable
PYTHON_ENV: dict[str, str] = {}


def _pick_python() -> None:
    global PYTHON
    system = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path=BARE_PATH) \
        or shutil.which("python3", path=BARE_PATH)
    probe = "import mailmand.client, yaml, msgspec, persistqueue"
    for python, env in ((sys.executable, {}),
                        (system, {"PYTHONPATH": f"{ROOT}:{sysconfig.get_paths()['purelib']}"})):
        if not python:
            continue
        ok = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
                             python, "-c", probe], env={"PATH": BARE_PATH, **env}, capture_output=True)
        if ok.returncode == 0:
            PYTHON = python
            PYTHON_ENV.clear()
            PYTHON_ENV.update(env)
            return
    pytest.skip("no Python other users can run with mailmand importable (the venv is unreadable to them)")


def as_user(user: str, cmd: list[str | Path]) -> list[str]:
    """cmd as `user` with its groups; unlike runuser/su, setpriv leaves the environment alone."""
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *map(str, cmd)]


@dataclass
class Users:
    base: Path  # a directory every test user can traverse
    made_users: list[str] = field(default_factory=list)
    made_groups: list[str] = field(default_factory=list)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def group(self, name: str) -> str:
        full = f"mt{self.tag}{name}"[:32]
        subprocess.run(["groupadd", full], check=True, capture_output=True)
        self.made_groups.append(full)
        return full

    @staticmethod
    def gid_of(group: str) -> int:
        return grp.getgrnam(group).gr_gid

    def user(self, name: str, groups: tuple[str, ...] = ()) -> User:
        full = f"mt{self.tag}{name}"[:32]
        options = ["-G", ",".join(groups)] if groups else []
        subprocess.run(["useradd", "-M", "-U", "-s", "/usr/sbin/nologin", *options, full], check=True,
                       capture_output=True)
        self.made_users.append(full)
        entry = pwd.getpwnam(full)
        home = self.base / full
        home.mkdir(mode=0o700)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        return User(full, entry.pw_uid, entry.pw_gid, home)

    def remove(self) -> None:
        for name in reversed(self.made_users):
            subprocess.run(["userdel", name], check=False, capture_output=True)
        for name in reversed(self.made_groups):
            subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture
def users() -> Iterator[Users]:
    """Make users and groups for one test: users.user("alice", groups=(g,)); all removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating users needs root")
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "setpriv"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is missing")
    _pick_python()
    # Not under pytest's tmp_path: its parents are 0700, so other users could not reach it.
    base = Path(tempfile.mkdtemp(prefix="mailmand-users-"))
    os.chmod(base, 0o755)
    made = Users(base)
    try:
        yield made
    finally:
        made.remove()
        shutil.rmtree(base, ignore_errors=True)
