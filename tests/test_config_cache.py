"""The producers' settings cache (mailmand/config/cache.py): used only while
nothing the load read has changed, never trusted from another user, never
holding a secret; a configuration the loader refuses is refused as before."""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailmand.config import cache, load
from mailmand.config.cache import CachedSection, load_producer
from mailmand.errors import ConfigError
from tests.conftest import ROOT

NOBODY = 65534


def write(path: Path, max_size: str = "1MiB", extra: str = "", spool: str | None = None) -> Path:
    path.write_text(
        "email:\n"
        f"  queue:\n    default:\n      path: {spool or path.parent / 'spool'}\n"
        f"  server:\n    max-message-size: {max_size}\n    max-recipients: 7\n"
        f"    database:\n      path: {path.parent / 'mailmand.db'}\n"
        f"    smtp:\n      host: 127.0.0.1\n{extra}"
        "  sendmail:\n    domain: example.org\n    aliases: {root: ops@example.org}\n")
    return path


@pytest.fixture
def settled(monkeypatch):
    """Files count as settled at once (SETTLE is about the file system's clock
    granularity; the tests change sizes, or wait past a tick)."""
    monkeypatch.setattr(cache, "SETTLE", 0.0)


def entry_of(conf: Path) -> Path:
    where = cache.cache_file(conf)
    assert where is not None
    return Path(where)


def test_a_hit_gives_what_the_loader_gives(tmp_path, settled):
    conf = write(tmp_path / "mailmand.yaml")
    full = load(conf, producer=True)
    first = load_producer(conf)
    assert type(first.queue).__name__ == "QueueConfig"  # the first call loads the file
    hit = load_producer(conf)
    assert isinstance(hit.queue, CachedSection)
    for get in (lambda c: c.queue.path, lambda c: c.queue.engine, lambda c: c.queue.min_free,
                lambda c: c.server.max_message_size, lambda c: c.server.max_recipients,
                lambda c: c.server.database.engine, lambda c: c.server.database.path,
                lambda c: c.server.log_level, lambda c: c.server.smtp.relay, lambda c: c.sendmail.domain,
                lambda c: dict(c.sendmail.aliases), lambda c: c.source):
        assert get(hit) == get(full)
    assert isinstance(hit.queue.path, Path) and hit.server.max_message_size == 1024 * 1024
    with pytest.raises(AttributeError):
        hit.queue.path = Path("/elsewhere")  # type: ignore[misc]


def test_editing_the_file_invalidates_it(tmp_path, settled):
    conf = write(tmp_path / "mailmand.yaml", "1MiB")
    load_producer(conf)
    assert load_producer(conf).server.max_message_size == 1024 * 1024  # from the cache
    time.sleep(0.05)  # past a tick of the file system's clock (SETTLE's case)
    write(conf, "2MiB")  # same size, new content
    assert load_producer(conf).server.max_message_size == 2 * 1024 * 1024
    write(conf, "30MiB")  # another size
    assert load_producer(conf).server.max_message_size == 30 * 1024 * 1024
    os.chmod(conf, 0o600)  # ctime moves: loaded again (the mode matters to the loader)
    assert isinstance(load_producer(conf).queue, CachedSection) is False


def test_a_referenced_variable_invalidates_it(tmp_path, settled, monkeypatch):
    conf = write(tmp_path / "mailmand.yaml", spool="${SPOOL_DIR}")
    monkeypatch.setenv("SPOOL_DIR", str(tmp_path / "a"))
    load_producer(conf)
    assert load_producer(conf).queue.path == tmp_path / "a"
    monkeypatch.setenv("SPOOL_DIR", str(tmp_path / "b"))
    assert load_producer(conf).queue.path == tmp_path / "b"
    assert load_producer(conf).queue.path == tmp_path / "b"
    monkeypatch.delenv("SPOOL_DIR")
    with pytest.raises(ConfigError) as cached:
        load_producer(conf)
    with pytest.raises(ConfigError) as loaded:
        load(conf, producer=True)
    assert str(cached.value) == str(loaded.value)
    assert "SPOOL_DIR is not set" in str(cached.value)


def test_home_is_part_of_the_key(tmp_path, settled, monkeypatch):
    conf = write(tmp_path / "mailmand.yaml", spool="~/spool")
    monkeypatch.setenv("HOME", str(tmp_path / "ann"))
    load_producer(conf)
    assert load_producer(conf).queue.path == tmp_path / "ann" / "spool"
    monkeypatch.setenv("HOME", str(tmp_path / "bob"))
    assert load_producer(conf).queue.path == tmp_path / "bob" / "spool"


def test_a_bad_file_is_refused_with_the_loaders_message(tmp_path, settled):
    conf = write(tmp_path / "mailmand.yaml")
    load_producer(conf)
    load_producer(conf)
    conf.write_text(conf.read_text().replace("host: 127.0.0.1", "host: 127.0.0.1\n      port: abc"))
    with pytest.raises(ConfigError) as got:
        load_producer(conf)
    assert str(got.value) == 'email.server.smtp.port: expected an integer 1-65535, got "abc"'


def test_sendmail_refuses_a_bad_file_with_exit_78_after_a_hit(tmp_path):
    """Through the real command, with the real SETTLE: the same message and code as without a cache."""
    conf = write(tmp_path / "mailmand.yaml")
    time.sleep(cache.SETTLE + 0.1)
    env = {**os.environ, "MAILMAND_CONFIG": str(conf)}
    msg = b"From: a@example.com\nTo: b@example.com\nSubject: x\n\nx\n"

    def sendmail() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "mailmand", "sendmail", "-t"], input=msg, env=env,
                              capture_output=True, cwd=ROOT, timeout=60)

    assert sendmail().returncode == 0
    assert entry_of(conf).exists()
    assert sendmail().returncode == 0  # from the cache
    conf.write_text(conf.read_text().replace("max-recipients: 7", "max-recipients: 0"))
    got = sendmail()
    assert got.returncode == 78, got.stderr
    assert got.stderr.decode() == "sendmail: email.server.max-recipients: expected an integer >= 1, got 0\n"


def test_a_named_file_that_is_gone_invalidates_it(tmp_path, settled):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not read by producers\n")
    conf = write(tmp_path / "mailmand.yaml", extra=f"      ca-file: {bundle}\n")
    load_producer(conf)
    assert isinstance(load_producer(conf).queue, CachedSection)
    bundle.unlink()
    with pytest.raises(ConfigError, match="no such file"):
        load_producer(conf)


def poison(conf: Path) -> Path:
    """A valid entry for `conf` whose aliases send root's mail elsewhere."""
    load_producer(conf)
    where = entry_of(conf)
    entry = marshal.loads(where.read_bytes())
    entry["config"]["sendmail"]["aliases"] = {"root": ("thief@example.net",)}
    where.write_bytes(marshal.dumps(entry))
    assert load_producer(conf).sendmail.aliases == {"root": ("thief@example.net",)}  # the check can fail
    return where


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_an_entry_of_another_user_is_ignored(tmp_path, settled):
    conf = write(tmp_path / "mailmand.yaml")
    where = poison(conf)
    os.chown(where, NOBODY, NOBODY)
    assert load_producer(conf).sendmail.aliases == {"root": ("ops@example.org",)}


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_an_entry_others_can_write_is_ignored(tmp_path, settled, mode):
    conf = write(tmp_path / "mailmand.yaml")
    where = poison(conf)
    os.chmod(where, mode)
    assert load_producer(conf).sendmail.aliases == {"root": ("ops@example.org",)}


def test_a_symlinked_entry_is_ignored(tmp_path, settled):
    conf = write(tmp_path / "mailmand.yaml")
    where = poison(conf)
    elsewhere = tmp_path / "planted"
    where.rename(elsewhere)
    where.symlink_to(elsewhere)
    assert load_producer(conf).sendmail.aliases == {"root": ("ops@example.org",)}


def test_a_damaged_entry_is_ignored(tmp_path, settled):
    conf = write(tmp_path / "mailmand.yaml")
    load_producer(conf)
    entry_of(conf).write_bytes(b"\x00garbage")
    assert load_producer(conf).sendmail.domain == "example.org"


def test_entries_are_private_and_hold_no_secret(tmp_path, settled, monkeypatch):
    monkeypatch.setenv("RELAY_PASSWORD", "s3cret-relay")
    conf = write(tmp_path / "mailmand.yaml",
                 extra="      auth: {username: app, password: \"${RELAY_PASSWORD}\"}\n")
    conf.write_text(conf.read_text().replace(
        "    database:\n", "    database:\n      dsn: postgresql://u:s3cret-dsn@db/mail\n"))
    os.chmod(conf, 0o600)
    load_producer(conf)
    where = entry_of(conf)
    data = where.read_bytes()
    assert b"s3cret" not in data and b"RELAY_PASSWORD" not in data
    assert where.stat().st_mode & 0o777 == 0o600
    assert isinstance(load_producer(conf).queue, CachedSection)


def test_a_queue_secret_is_never_cached(tmp_path, settled):
    conf = write(tmp_path / "mailmand.yaml")
    conf.write_text(conf.read_text().replace("    default:\n", "    default:\n      engine: redis\n"
                                             "      url: redis://:s3cret@127.0.0.1:6379/0\n"))
    os.chmod(conf, 0o600)
    load_producer(conf)
    assert not entry_of(conf).exists()
    assert load_producer(conf).queue.url == "redis://:s3cret@127.0.0.1:6379/0"


def test_a_fresh_file_is_not_cached(tmp_path):
    """A file changed less than SETTLE ago: a second change in the same clock tick could go unseen."""
    conf = write(tmp_path / "mailmand.yaml")
    load_producer(conf)
    assert not entry_of(conf).exists()


@pytest.mark.parametrize("value", ["", "none"])
def test_the_cache_can_be_turned_off(tmp_path, settled, monkeypatch, value):
    monkeypatch.setenv("MAILMAND_CACHE_DIR", value)
    assert cache.cache_dir() is None
    conf = write(tmp_path / "mailmand.yaml")
    assert load_producer(conf).sendmail.domain == "example.org"


def test_a_home_that_is_not_ours_gets_no_cache(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    monkeypatch.delenv("MAILMAND_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(cache, "SYSTEM_DIR", str(tmp_path / "no-system-dir"))
    home = tmp_path / "www"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert cache.cache_dir() == str(home / ".cache" / "mailmand")
    os.chown(home, NOBODY, NOBODY)
    assert cache.cache_dir() is None
    (tmp_path / "no-system-dir").mkdir()
    assert cache.cache_dir() == str(tmp_path / "no-system-dir")


def test_the_cli_knows_the_schemas_log_levels():
    """The CLI checks MAILMAND_LOG_LEVEL against its own LOG_LEVELS (no msgspec import)."""
    from mailmand import cli
    from mailmand.config import schema

    assert cli.LOG_LEVELS == schema.LOG_LEVELS


def test_an_entry_is_shared_by_every_name_of_the_interpreter(tmp_path):
    """pip's scripts start the venv's `python3`, an application `python`: both read the
    entry either wrote, in a cache directory that did not exist before the first call."""
    conf = write(tmp_path / "mailmand.yaml")
    time.sleep(cache.SETTLE + 0.1)  # settled (its ctime cannot be set back)
    where = tmp_path / "not" / "yet"
    env = {**os.environ, "MAILMAND_CACHE_DIR": str(where)}
    env.pop("PYTHONPATH", None)
    probe = ("import sys; from mailmand.config.cache import CachedSection, load_producer; "
             f"cfg = load_producer({str(conf)!r}); print(isinstance(cfg.queue, CachedSection))")
    bindir = Path(sys.executable).parent
    names = [n for n in ("python3", "python") if (bindir / n).exists()]
    assert len(names) == 2, f"{bindir} has no python and python3 to compare"
    hits = []
    for name in names:
        done = subprocess.run([str(bindir / name), "-c", probe], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=60)
        assert done.returncode == 0, done.stderr
        hits.append(done.stdout.strip())
    assert hits == ["False", "True"]  # the first call wrote the entry, the second read it
    assert len(list(where.iterdir())) == 1
