"""Configuration a sendmail can trust, and a settings cache safe to share, tried
as a user sharing the host would attack them: real users and groups (useradd),
real processes running as them (setpriv), a real FIFO, symlink and rm."""

from __future__ import annotations

import marshal
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailmand.config import SYSTEM_CONFIG, find_config_path
from mailmand.errors import ConfigError
from mailmand.queues.spool import SpoolQueue
from tests.conftest import ROOT
from tests.realusers import Users

MESSAGE = "From: alice@example.com\nTo: root\nSubject: payroll\n\nsecret payroll\n"
PRODUCER = "from mailmand.config.cache import load_producer\nc = load_producer()\n" \
           "print(c.source, c.queue.path, dict(c.sendmail.aliases))\n"


def attacker_config(path: Path, spool: Path) -> Path:
    path.write_text("email:\n"
                    f"  queue:\n    default:\n      path: {spool}\n"
                    "  server:\n    smtp:\n      host: 127.0.0.1\n"
                    "  sendmail:\n    domain: example.org\n    aliases: {root: evil@attacker.test}\n")
    return path


def queued(spool: Path) -> list[dict]:
    q = SpoolQueue(spool, daemon=True)
    try:
        return [item.data for item in q.take(100)]
    finally:
        q.close()


# -- where the file comes from ------------------------------------------------------------


@pytest.mark.skipif(SYSTEM_CONFIG.exists(), reason="this machine has /etc/mailmand/mailmand.yaml")
def test_a_mailmand_yaml_in_the_working_directory_is_never_read(users: Users):
    alice, bob = users.user("alice"), users.user("bob")
    shared = users.base / "shared"  # a shared directory, /tmp-like: anyone may leave files there
    shared.mkdir()
    shared.chmod(0o1777)
    bobs_spool = users.base / "bob-spool"
    bobs_spool.mkdir()
    os.chown(bobs_spool, bob.uid, bob.gid)
    planted = attacker_config(shared / "mailmand.yaml", bobs_spool)
    os.chown(planted, bob.uid, bob.gid)

    sent = alice.mailmand("sendmail", "root", cwd=shared, input=MESSAGE)
    assert sent.returncode == 0, sent.stderr
    assert not (bobs_spool / "data.db").exists(), "alice's mail went to bob's spool"
    [record] = queued(alice.home / "data" / "mailmand" / "spool")  # the embedded defaults
    assert record["rcpt_to"] and not any("attacker" in r for r in record["rcpt_to"])

    client = alice.python("from mailmand import Client\nc = Client()\nprint(c.config.source, c.config.queue.path)",
                          cwd=shared)
    assert client.returncode == 0, client.stderr
    assert client.stdout.split() == ["None", str(alice.home / "data" / "mailmand" / "spool")]

    # The daemon's commands too: check-config (as `run` loads it) from that directory, as root.
    check = subprocess.run([sys.executable, "-m", "mailmand", "check-config"], cwd=shared, text=True,
                           capture_output=True, env={**os.environ, "MAILMAND_CONFIG": ""}, timeout=60)
    assert check.returncode == 0, check.stderr
    assert "configuration OK (embedded defaults)" in check.stdout


def test_a_file_of_another_user_is_refused_with_78(users: Users):
    alice, bob = users.user("alice"), users.user("bob")
    shared = users.base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    bobs = attacker_config(shared / "bob.yaml", users.base / "bob-spool")
    os.chown(bobs, bob.uid, bob.gid)
    bobs.chmod(0o644)
    reason = f"refusing {bobs}: the configuration file {bobs} belongs to uid {bob.uid}"

    sent = alice.mailmand("sendmail", "root", env=alice.env(MAILMAND_CONFIG=str(bobs)), input=MESSAGE)
    assert sent.returncode == os.EX_CONFIG, (sent.returncode, sent.stderr)
    assert reason in sent.stderr and "Traceback" not in sent.stderr
    check = alice.mailmand("check-config", "-c", str(bobs))
    assert check.returncode == os.EX_CONFIG and reason in check.stderr, check.stderr
    client = alice.python(f"from mailmand import Client\nClient({str(bobs)!r})")
    assert client.returncode != 0 and "ConfigError" in client.stderr and reason in client.stderr
    with pytest.raises(ConfigError, match=re.escape(reason)):  # root too
        find_config_path(bobs)

    # root's file in root's directory, named with -c: read by anyone who may read it.
    roots = attacker_config(users.base / "root.yaml", users.base / "spool")
    roots.chmod(0o644)
    check = alice.mailmand("check-config", "-c", str(roots))
    assert check.returncode == 0, check.stderr
    assert f"configuration OK ({roots})" in check.stdout


def test_a_file_others_could_swap_is_refused_with_78(users: Users):
    team = users.group("team")
    alice, bob = users.user("alice", groups=(team,)), users.user("bob", groups=(team,))
    room = users.base / "team"  # alice's directory, which her group may write
    room.mkdir()
    os.chown(room, alice.uid, users.gid_of(team))
    room.chmod(0o2775)
    conf = attacker_config(room / "mailmand.yaml", alice.home / "spool")
    os.chown(conf, alice.uid, alice.gid)
    conf.chmod(0o644)
    env = alice.env(MAILMAND_CONFIG=str(conf))

    sent = alice.mailmand("sendmail", "root", env=env, input=MESSAGE)
    assert sent.returncode == os.EX_CONFIG, (sent.returncode, sent.stderr)
    assert f"the directory above the configuration file {room} can be written by its group (mode 2775)" \
        in sent.stderr
    # It matters: bob can put his own file in its place.
    swapped = bob.run(["mv", conf, room / "moved.yaml"])
    assert swapped.returncode == 0, swapped.stderr
    (room / "moved.yaml").rename(conf)

    room.chmod(0o755)
    conf.chmod(0o664)  # the file itself, writable by alice's own group
    sent = alice.mailmand("sendmail", "root", env=env, input=MESSAGE)
    assert sent.returncode == os.EX_CONFIG and f"the configuration file {conf} can be written by its group" \
        in sent.stderr, sent.stderr
    conf.chmod(0o644)
    sent = alice.mailmand("sendmail", "root", env=env, input=MESSAGE)
    assert sent.returncode == 0, sent.stderr


def test_a_symlink_is_judged_by_where_it_leads(users: Users, tmp_path: Path):
    bob = users.user("bob")
    theirs = attacker_config(users.base / "bob.yaml", users.base / "spool")
    os.chown(theirs, bob.uid, bob.gid)
    link = tmp_path / "mailmand.yaml"  # in root's own directory, pointing at bob's file
    link.symlink_to(theirs)
    with pytest.raises(ConfigError, match=f"the configuration file {re.escape(str(theirs))} belongs to uid"):
        find_config_path(link)


# -- the settings cache, shared by a group -----------------------------------------------------


def cache_mode() -> int:
    """The mode the package gives /var/cache/mailmand (packaging/systemd/mailmand.tmpfiles)."""
    rules = (ROOT / "packaging" / "systemd" / "mailmand.tmpfiles").read_text()
    return int(re.search(r"^d /var/cache/mailmand (\d+) ", rules, re.M).group(1), 8)  # type: ignore[union-attr]


@pytest.fixture
def shared_cache(users: Users):
    """alice and bob in one group, a cache directory as the package makes it, a configuration of root's."""
    group = users.group("mm")
    alice, bob = users.user("alice", groups=(group,)), users.user("bob", groups=(group,))
    cache = users.base / "cache"
    cache.mkdir()
    os.chown(cache, 0, users.gid_of(group))
    cache.chmod(cache_mode())
    spool = users.base / "spool"
    spool.mkdir()
    os.chown(spool, 0, users.gid_of(group))
    spool.chmod(0o2770)
    conf = users.base / "mailmand.yaml"
    conf.write_text("email:\n"
                    f"  queue:\n    default:\n      path: {spool}\n"
                    "  server:\n    smtp:\n      host: 127.0.0.1\n"
                    "  sendmail:\n    domain: example.org\n    aliases: {root: ops@example.org}\n")
    conf.chmod(0o644)
    past = time.time() - 60
    os.utime(conf, (past, past))
    time.sleep(1.1)  # the cache takes only a file changed (ctime) more than a second ago

    def env(user):
        return user.env(MAILMAND_CONFIG=str(conf), MAILMAND_CACHE_DIR=str(cache))

    entry = alice.python("from pathlib import Path\nfrom mailmand.config import cache\n"
                         f"print(cache.cache_file(Path({str(conf)!r})))", env=env(alice))
    assert entry.returncode == 0, entry.stderr
    return alice, bob, env, Path(entry.stdout.strip()), spool


def test_a_fifo_planted_at_an_entry_does_not_hang_sendmail(shared_cache):
    alice, bob, env, entry, spool = shared_cache
    planted = bob.run(["mkfifo", entry])
    assert planted.returncode == 0, planted.stderr
    try:
        read = alice.python(PRODUCER, env=env(alice), timeout=20)  # it hung forever, root's included
    except subprocess.TimeoutExpired:
        pytest.fail("load_producer hung on a FIFO planted in the cache")
    assert read.returncode == 0, read.stderr
    assert "{'root': ('ops@example.org',)}" in read.stdout
    sent = alice.mailmand("sendmail", "root", env=env(alice), input=MESSAGE, timeout=20)
    assert sent.returncode == 0, sent.stderr
    assert stat.S_ISFIFO(os.lstat(entry).st_mode), "alice could not remove it, nor replace it: only slower"


def test_members_cannot_remove_or_replace_each_others_entries(shared_cache):
    alice, bob, env, entry, _ = shared_cache
    for _ in range(2):  # the first writes the entry, the second reads it
        assert alice.python(PRODUCER, env=env(alice)).returncode == 0
    assert os.stat(entry).st_uid == alice.uid
    for cmd in (["rm", "-f", entry], ["mv", entry, f"{entry}.gone"], ["ln", "-sf", "/dev/null", entry]):
        tried = bob.run(cmd)
        assert tried.returncode != 0, f"bob could {cmd[0]} alice's entry"
        assert "Operation not permitted" in tried.stderr, tried.stderr
    assert os.stat(entry).st_uid == alice.uid


def test_an_entry_planted_under_anothers_name_is_ignored(shared_cache):
    alice, bob, env, entry, _ = shared_cache
    assert alice.python(PRODUCER, env=env(alice)).returncode == 0
    assert alice.python(PRODUCER, env=env(alice)).returncode == 0
    poisoned = marshal.loads(entry.read_bytes())
    poisoned["config"]["sendmail"]["aliases"] = {"root": ("thief@attacker.test",)}
    bobs = entry.with_name("bob-made")
    bobs.write_bytes(marshal.dumps(poisoned))
    os.chown(bobs, bob.uid, bob.gid)
    bobs.chmod(0o600)
    entry.unlink()  # as if bob had squatted the name before alice's first write

    for plant in (["ln", "-s", bobs, entry], ["cp", "-p", bobs, entry]):  # a symlink, then a file of his
        tried = bob.run(plant)
        assert tried.returncode == 0, tried.stderr
        read = alice.python(PRODUCER, env=env(alice))
        assert read.returncode == 0, read.stderr
        assert "ops@example.org" in read.stdout and "thief" not in read.stdout, (plant, read.stdout)
        entry.unlink()

    # root reads any file: only the owner check keeps bob's entry out of root's sendmail.
    as_root = {**os.environ, **env(alice)}  # alice's HOME and XDG_DATA_HOME: the poisoned key matches
    root_entry = subprocess.run([sys.executable, "-c", "from pathlib import Path\nfrom mailmand.config import cache\n"
                                 f"print(cache.cache_file(Path({str(as_root['MAILMAND_CONFIG'])!r})))"],
                                env=as_root, capture_output=True, text=True, check=True).stdout.strip()
    assert bob.run(["cp", "-p", bobs, root_entry]).returncode == 0
    read = subprocess.run([sys.executable, "-c", PRODUCER], env=as_root, capture_output=True, text=True)
    assert read.returncode == 0, read.stderr
    assert "ops@example.org" in read.stdout and "thief" not in read.stdout, read.stdout
