"""Nothing above the engine tables names an engine: the CLI, the daemon and
dispatch ask `mailmand.queues.engine(cfg)` and `mailmand.stores.engine(cfg)`
what they need (a directory, a lock, whether the store is shared, what to call
it), so a new engine is one entry in a table. Read from the code itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mailmand.config import DatabaseConfig, QueueConfig
from mailmand.queues import LOCK_FILE, lock_path
from mailmand.queues import engine as queue_engine
from mailmand.stores import ENGINES as STORE_ENGINES
from mailmand.stores import engine as store_engine
from mailmand.stores import shared

PACKAGE = Path(__file__).resolve().parent.parent / "mailmand"
ABOVE = sorted([*(PACKAGE / "cli").glob("*.py"), PACKAGE / "control.py", PACKAGE / "daemon.py",
                PACKAGE / "dispatcher.py", PACKAGE / "scheduler.py", PACKAGE / "ingest.py",
                PACKAGE / "stores" / "migrate.py"])
NAMES = {"spool", "redis", "sqlite", "sqlite3", "postgres", "postgresql"}


def engine_tests(path: Path) -> list[str]:
    """Each comparison in the module that holds an engine's name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                for const in ast.walk(side):
                    if isinstance(const, ast.Constant) and const.value in NAMES:
                        found.append(f"{path.name}:{node.lineno}: compares with {const.value!r}")
    return found


@pytest.mark.parametrize("path", ABOVE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nothing_above_the_engine_tables_names_an_engine(path):
    assert engine_tests(path) == []


def test_what_the_tables_say(tmp_path):
    spool = QueueConfig(engine="spool", path=tmp_path / "spool")
    stream = QueueConfig(engine="redis", url="redis://127.0.0.1:6379/0")
    outbox = QueueConfig(engine="postgres", dsn="postgresql://app@db.example/app")
    assert lock_path(spool) == tmp_path / "spool" / LOCK_FILE and lock_path(stream) is None
    assert lock_path(outbox) is None  # a table many daemons share
    assert (queue_engine(spool).noun, queue_engine(stream).noun, queue_engine(outbox).noun) == (
        "spool", "queue", "outbox")
    sqlite = DatabaseConfig(path=tmp_path / "store" / "mailmand.db")
    postgres = DatabaseConfig(engine="postgres", dsn="postgresql://mailmand:secret@db.example/mailmand")
    assert store_engine(sqlite).lock(sqlite) == tmp_path / "store" / "mailmand.db.lock"
    assert store_engine(sqlite).directory(sqlite) == tmp_path / "store"
    assert STORE_ENGINES["postgres"].lock(postgres) is None and STORE_ENGINES["postgres"].directory(postgres) is None
    assert (shared(sqlite), shared(postgres)) == (False, True)
    # A producer's view of a shared store has no dsn (a daemon-side secret): still known to be shared.
    assert shared(DatabaseConfig(engine="postgres"))
