"""What an operator reaches for, through the real command line, on every pair of
engines: SQLite or PostgreSQL store, spool or Redis queue. Quarantine review
and release, hold and release, list filters and pages, qshape's view, dry
runs, mailq's marks, check-config --connect, and a starting daemon that
forgets the queue consumers of daemons gone."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailmand import Email
from mailmand.cli import main
from mailmand.config import load
from mailmand.queues import open_queue
from mailmand.stores import Status, open_store
from tests.redisutil import redis_url

COMBOS = [("sqlite3", "spool"), ("postgres", "redis"), ("sqlite3", "redis"), ("postgres", "spool"),
          ("sqlite3", "outbox"), ("postgres", "outbox")]
QUEUE = {"spool": "spool ", "redis": "redis ", "outbox": "postgres outbox "}  # how each says where an item was


@dataclass
class World:
    conf: Path
    relay: object
    store_engine: str
    queue_engine: str
    capsys: pytest.CaptureFixture[str]

    def run(self, *args: str) -> tuple[int, str, str]:
        """`mailmand ARGS -c CONF`: (exit code, stdout, stderr)."""
        self.capsys.readouterr()
        code = main([*args, "-c", str(self.conf)])
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def json(self, *args: str):
        code, out, err = self.run(*args, "--json")
        assert code == 0, err
        return json.loads(out)

    def send(self, *args: str) -> str:
        code, out, err = self.run("send", "--text", "x", *args)
        assert code == 0, err
        return out.strip()

    def once(self) -> str:
        code, out, err = self.run("--once")
        assert code == 0, err
        return out.strip()

    def store(self):
        return open_store(load(self.conf).server.database)

    def plant(self, record: dict) -> None:
        """An item put past the client's checks, as a buggy or an older producer could."""
        queue = open_queue(load(self.conf).queue)
        try:
            queue.put(record)
        finally:
            queue.close()

    def set_server(self, line: str) -> None:
        text = self.conf.read_text()
        self.conf.write_text(text.replace("  server:\n", f"  server:\n    {line}\n", 1))


@pytest.fixture(params=COMBOS, ids=[f"{s}+{q}" for s, q in COMBOS])
def world(request, tmp_path, smtp_server, capsys) -> World:
    store_engine, queue_engine = request.param
    if store_engine == "postgres":
        database = f"      engine: postgres\n      dsn: \"{request.getfixturevalue('postgres_dsn')}\"\n"
    else:
        database = f"      engine: sqlite3\n      path: {tmp_path / 'store' / 'mailmand.db'}\n"
    queue = f"      path: {tmp_path / 'spool'}\n"
    if queue_engine == "redis":
        queue += f"      engine: redis\n      url: {redis_url()}\n      name: {request.getfixturevalue('redis_key')}\n"
    elif queue_engine == "outbox":  # the app's database: the store's own when that is PostgreSQL
        dsn = request.getfixturevalue("postgres_dsn")
        queue += f"      engine: postgres\n      dsn: \"{dsn}\"\n"
        from tests.test_outbox import make_table

        make_table(dsn)  # as the app's migration makes it
    relay = smtp_server(rcpt_replies={"slow@late.example": "451 4.2.1 try later"})
    conf = tmp_path / "mailmand.yaml"
    conf.write_text(
        f"email:\n  queue:\n    default:\n{queue}"
        f"  server:\n    max-recipients: 2\n    interval: 1s\n    backoff: {{min: 10m, max: 20m}}\n"
        f"    database:\n{database}"
        f"    smtp:\n      host: 127.0.0.1\n      port: {relay.port}\n      tls: none\n      timeout: 5s\n")
    conf.chmod(0o600)
    return World(conf, relay, store_engine, queue_engine, capsys)


def record(*rcpt: str, subject: str = "planted") -> dict:
    email = Email(sender="app@example.com", to=list(rcpt), subject=subject, text="x")
    return email.to_record(10**6, max_recipients=1000).to_json()


def test_quarantine_list_show_release_and_delete(world):
    world.plant(record("a@x.example", "b@x.example", "c@x.example", subject="three"))  # max-recipients is 2
    world.plant({**record("d@x.example"), "priority": "high"})
    assert world.once().startswith("ingested 0,")
    entries = world.json("quarantine", "list")
    assert len(entries) == 2 and {"id", "at", "reason", "source"} <= set(entries[0])
    three, bad = sorted(entries, key=lambda e: e["id"])
    assert "more than max-recipients (2)" in three["reason"] and "record.priority" in bad["reason"]
    assert three["source"].startswith(QUEUE[world.queue_engine])
    assert abs(three["at"] - time.time()) < 600  # JSON keeps epoch seconds
    code, out, _ = world.run("quarantine", "list")
    assert code == 0 and out.splitlines()[0].split() == ["ID", "AT", "SIZE", "SOURCE", "REASON"]
    code, out, _ = world.run("quarantine", "show", str(three["id"]))
    assert code == 0 and f"reason:    {three['reason']}" in out and f"source:    {three['source']}" in out
    assert '"subject": "three"' in out or '"subject":"three"' in out  # the raw entry, as the queue held it
    shown = world.json("quarantine", "show", str(three["id"]))
    assert json.loads(shown["data"])["subject"] == "three"

    # Validated again: still refused, and kept.
    code, _, err = world.run("quarantine", "release", str(three["id"]))
    assert code == 1 and f"quarantine entry {three['id']} still does not pass, kept" in err
    assert "more than max-recipients (2)" in err and len(world.json("quarantine", "list")) == 2
    # A configuration that allows it now: released, stored, and sent.
    world.conf.write_text(world.conf.read_text().replace("max-recipients: 2", "max-recipients: 5"))
    code, out, err = world.run("quarantine", "release", str(three["id"]))
    message_id = json.loads(shown["data"])["id"]
    assert code == 0 and out.startswith(f"released quarantine entry {three['id']}: message {message_id} stored"), err
    assert world.once().startswith("ingested 0, sent 1,")
    assert sorted(world.relay.messages[-1].rcpt_tos) == ["a@x.example", "b@x.example", "c@x.example"]
    code, _, err = world.run("quarantine", "release", str(three["id"]))
    assert code == 1 and f"no quarantine entry {three['id']}" in err

    code, out, _ = world.run("quarantine", "delete", str(bad["id"]))
    assert (code, out.strip()) == (0, f"deleted quarantine entry {bad['id']}")
    assert world.json("quarantine", "list") == [] and world.json("status")["quarantine"] == 0
    code, _, err = world.run("quarantine", "delete", str(bad["id"]))
    assert code == 1 and "no quarantine entry" in err


def test_the_quarantine_log_line_names_the_entry(world):
    world.plant(record("a@x.example", "b@x.example", "c@x.example"))
    code, _, err = world.run("--once")
    [entry] = world.json("quarantine", "list")
    assert code == 0 and f"as quarantine entry {entry['id']} (mailmand quarantine show {entry['id']})" in err
    assert entry["source"] in err


def test_hold_and_release(world):
    a = world.send("--from", "app@example.com", "--to", "ann@gmail.example", "--subject", "one")
    b = world.send("--from", "app@example.com", "--to", "bob@gmail.example", "--subject", "two")
    c = world.send("--from", "app@example.com", "--to", "cy@other.example", "--subject", "three")
    world.once()
    store = world.store()
    try:
        assert store.get(c).status is Status.SENT
        # Mail sent already cannot be held: named, exit 1.
        code, out, err = world.run("hold", a)
        assert code == 1 and f"cannot hold message {a}: it is sent" in err and out.strip() == "held 0 message(s)"
    finally:
        store.close()

    d = world.send("--from", "app@example.com", "--to", "dee@gmail.example", "--in", "5 minutes")
    e = world.send("--from", "app@example.com", "--to", "eve@gmail.example")
    f = world.send("--from", "app@example.com", "--to", "fay@other.example")
    code, _, err = world.run("hold", d)  # still in the queue, not yet in the store
    assert code == 1 and f"no message with id {d!r}" in err
    world.relay.mail_reply = "451 4.3.2 not now"  # stored and deferred: e and f wait for their next try
    world.once()
    world.relay.mail_reply = None
    code, out, _ = world.run("hold", "--to", "@GMAIL.example", "--dry-run")
    lines = out.splitlines()
    assert code == 0 and lines[-1] == "would hold 2 message(s)" and {ln.split()[0] for ln in lines[:-1]} == {d, e}
    assert world.store().get(e).status is Status.DEFERRED  # a dry run changes nothing
    code, out, _ = world.run("hold", "--to", "@gmail.example")
    assert (code, out.strip()) == (0, "held 2 message(s)")
    assert world.json("status")["counts"]["held"] == 2
    assert {m["id"] for m in world.json("list", "--status", "held")} == {d, e}
    code, out, _ = world.run("show", e)
    assert "status:    held" in out and f"`mailmand release {e}` sends it again" in out
    world.run("flush")  # f is due now; e is held, not deferred
    world.once()
    assert {m.rcpt_tos[0] for m in world.relay.messages} == {"ann@gmail.example", "bob@gmail.example",
                                                              "cy@other.example", "fay@other.example"}
    assert world.store().get(e).status is Status.HELD  # held mail is never claimed, flushed or not
    # mailq marks held mail as Postfix does.
    from mailmand.sendmail import mailq

    world.capsys.readouterr()
    mailq(load(world.conf))
    shown = world.capsys.readouterr().out
    assert f"{e}!" in shown and "(held by the operator" in shown

    code, out, _ = world.run("release", "--all", "--dry-run")
    assert out.splitlines()[-1] == "would release 2 message(s)"
    code, out, _ = world.run("release", e)
    assert code == 0 and out.splitlines()[0] == "released 1 message(s)"
    info = world.store().get(e)
    assert info.status is Status.DEFERRED and info.held_at is None and info.paused > 0
    world.run("flush", e)
    world.once()
    assert world.relay.messages[-1].rcpt_tos == ("eve@gmail.example",)
    assert world.store().get(d).status is Status.HELD
    code, out, _ = world.run("cancel", d)  # held mail can be cancelled
    assert (code, out.strip()) == (0, "cancelled 1 message(s)")
    assert world.store().get(b).status is world.store().get(f).status is Status.SENT


def test_list_filters_pages_and_the_next_try(world):
    ids = [world.send("--from", f"s{i % 2}@example.com", "--to", f"r{i}@{'a' if i < 4 else 'b'}.example",
                      "--subject", f"report {i}") for i in range(6)]
    slow = world.send("--from", "s0@example.com", "--to", "slow@late.example", "--subject", "slow one")
    world.once()
    newest_first = [slow, *reversed(ids)]
    assert [m["id"] for m in world.json("list")] == newest_first
    assert [m["id"] for m in world.json("list", "--to", "@a.example")] == list(reversed(ids[:4]))
    assert [m["id"] for m in world.json("list", "--to", "R5@B.example", "--to", "r0@a.example")] == [ids[5], ids[0]]
    assert [m["id"] for m in world.json("list", "--from", "s1@example.com", "--subject", "REPORT")] == [
        ids[5], ids[3], ids[1]]
    assert [m["id"] for m in world.json("list", "--status", "deferred")] == [slow]
    assert world.json("list", "--since", "1h", "--until", "2030-01-01T00:00:00") and \
        world.json("list", "--until", "1h") == []
    # Pages by index: each goes on after the last id of the one before.
    seen, after = [], []
    while True:
        page = world.json("list", "--limit", "3", *after)
        seen += [m["id"] for m in page]
        if len(page) < 3:
            break
        after = ["--after", page[-1]["id"]]
    assert seen == newest_first
    code, out, _ = world.run("list", "--limit", "3")
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["ID", "STATUS", "SEND", "TIME", "NEXT", "TRY"]
    assert lines[-1] == f"… more: the next page is --after {newest_first[2]}"
    # The deferred message's row shows its next try; a sent one, none.
    due = world.store().get(slow).due_at
    from mailmand.cli.format import when

    assert when(due) in lines[1] and lines[1].startswith(slow)
    assert when(due) not in lines[2] and " - " in lines[2]
    code, _, err = world.run("list", "--after", "nope")
    assert code == 2 and "--after: no message with id 'nope'" in err
    code, _, err = world.run("list", "--since", "yesterday-ish")
    assert code == 2 and "--since: expected a time" in err


def test_stats_by_domain(world):
    for rcpt in ("a@gmail.example", "b@gmail.example", "c@yahoo.example"):
        world.send("--from", "app@example.com", "--to", rcpt, "--in", "1h")
    world.send("--from", "app@example.com", "--to", "slow@late.example")
    world.once()
    shape = world.json("stats", "--by-domain")
    assert shape["buckets"][:3] == ["0-5m", "5-10m", "10-20m"] and shape["buckets"][-1] == "1280m+"
    rows = {d["domain"]: d for d in shape["domains"]}
    assert rows["gmail.example"]["later"] == 2 and rows["gmail.example"]["total"] == 2
    assert rows["late.example"]["ages"][0] == 1 and shape["total"]["total"] == 4
    assert [d["domain"] for d in shape["domains"]][0] == "gmail.example"
    assert world.json("stats", "--by-domain", "--status", "deferred")["total"]["total"] == 1
    code, out, _ = world.run("stats", "--by-domain")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["T", "5", "10", "20"] and lines[1].split()[:2] == ["TOTAL", "4"]
    code, _, err = world.run("stats", "--status", "held")
    assert code == 2 and "--status goes with --by-domain" in err


def test_dry_runs_change_nothing(world):
    bad = world.send("--from", "app@example.com", "--to", "x@y.example")
    world.relay.rcpt_replies = {"x@y.example": "550 5.1.1 no such user"}
    later = world.send("--from", "app@example.com", "--to", "z@y.example", "--in", "1h")
    world.once()
    code, out, _ = world.run("retry", "--all", "--dry-run")
    assert code == 0 and len(out.splitlines()) == 2 and out.splitlines()[-1] == "would retry 1 message(s)"
    assert out.startswith(bad) and world.store().get(bad).status is Status.FAILED
    code, out, _ = world.run("cancel", "--all", "--dry-run")
    assert out.splitlines()[-1] == "would cancel 1 message(s)" and out.startswith(later)
    code, out, err = world.run("cancel", bad, later, "--dry-run")
    assert code == 1 and f"cannot cancel message {bad}: it is failed" in err
    assert out.splitlines()[-1] == "would cancel 1 message(s)"
    assert world.store().get(later).status is Status.QUEUED


def test_mailq_says_when_scheduled_mail_goes(world):
    later = world.send("--from", "app@example.com", "--to", "z@y.example", "--at", "2031-01-01", "09:00")
    world.once()
    from mailmand.sendmail import mailq

    world.capsys.readouterr()
    mailq(load(world.conf))
    out = world.capsys.readouterr().out
    assert f"{later} " in out and "(scheduled: not before Wed Jan 01 09:00:00)" in out


def test_check_config_connect_reaches_every_part(world):
    code, out, err = world.run("check-config", "--connect")
    assert code == 0, out + err
    first = out.splitlines()[0]
    if world.queue_engine == "redis":
        assert "queue redis redis://" in first and "spool" not in first  # no spool directory named
        assert "PING answered" in out
    elif world.queue_engine == "outbox":
        assert "queue postgres outbox " in first and "spool" not in first
        assert "reachable, 0 waiting to be ingested" in out
    else:
        assert "queue spool " in first and "not created yet" in out
        world.send("--from", "a@example.com", "--to", "b@example.com")
        assert "writable, 1 waiting" in world.run("check-config", "--connect")[1]
    assert "a message could be sent" in out


def test_the_spool_is_written_for_real(tmp_path, write_config, smtp_server, capsys):
    conf = write_config(smtp_server().port)
    (tmp_path / "spool").write_text("a file where the spool should be")
    assert main(["check-config", "--connect", "-c", str(conf)]) == 69
    out = capsys.readouterr()
    assert f"queue spool {tmp_path / 'spool'}: cannot be used: the spool {tmp_path / 'spool'} is not a directory" \
        in out.out and out.err.endswith("mailmand: cannot use: queue\n")


def test_check_config_connect_names_a_redis_that_is_down(tmp_path, redis_server, smtp_server, capsys):
    redis = redis_server()
    relay = smtp_server()
    conf = tmp_path / "mailmand.yaml"
    conf.write_text(f"email:\n  queue:\n    default:\n      engine: redis\n      url: {redis.url}\n"
                    f"  server:\n    database:\n      path: {tmp_path / 'store' / 'mailmand.db'}\n"
                    f"    smtp:\n      host: 127.0.0.1\n      port: {relay.port}\n")
    assert main(["check-config", "--connect", "-c", str(conf)]) == 0
    redis.stop()
    assert main(["check-config", "--connect", "-c", str(conf)]) == 69
    out = capsys.readouterr()
    assert f"queue redis {redis.url} key mailmand: cannot be used: cannot reach the Redis queue" in out.out
    assert out.err.endswith("mailmand: cannot use: queue\n") and "a message could be sent" in out.out
    redis.start()
    redis_auth = redis_server("--requirepass", "right")
    conf.write_text(conf.read_text().replace(redis.url, redis_auth.url.replace("://", "://:wrong@")))
    assert main(["check-config", "--connect", "-c", str(conf)]) == 69
    out = capsys.readouterr().out
    assert "refused the credentials" in out and "wrong" not in out


def test_a_starting_daemon_forgets_the_consumers_of_daemons_gone(tmp_path, redis_key, smtp_server, capsys):
    from mailmand.daemon import Daemon
    from mailmand.queues.redis import GROUP
    from tests.redisutil import require_redis

    relay = smtp_server()
    conf = tmp_path / "mailmand.yaml"
    conf.write_text(f"email:\n  queue:\n    default:\n      engine: redis\n      url: {redis_url()}\n"
                    f"      name: {redis_key}\n"
                    f"  server:\n    lease: 30s\n    database:\n      path: {tmp_path / 'store' / 'mailmand.db'}\n"
                    f"    smtp:\n      host: 127.0.0.1\n      port: {relay.port}\n      tls: none\n")
    cfg = load(conf)
    r = require_redis()
    queue = open_queue(cfg.queue)
    queue.put(record("a@x.example", subject="left pending by a ghost"))
    queue.close()
    r.xgroup_create(redis_key, GROUP, id="0")  # type: ignore[attr-defined]
    r.xreadgroup(GROUP, "ghost:1:aa", {redis_key: ">"})  # type: ignore[attr-defined]  # pending on it
    r.xgroup_createconsumer(redis_key, GROUP, "ghost:2:bb")  # type: ignore[attr-defined]  # stopped cleanly
    d = Daemon(cfg)
    try:
        store = d.store  # the start: registers, forgets the consumers of daemons not live
        names = {c["name"] for c in r.xinfo_consumers(redis_key, GROUP)}  # type: ignore[attr-defined]
        assert "ghost:1:aa" not in names and "ghost:2:bb" not in names
        result = d.once()
        assert result.ingested.ingested == 1 and result.dispatched.sent == 1  # what the ghost held, delivered
        assert store.counts()[Status.SENT] == 1
        capsys.readouterr()
        assert main(["status", "-c", str(conf)]) == 0
        status = capsys.readouterr().out
        assert "consumers 1" in status and "ghost" not in status  # this daemon, live
    finally:
        d.close()
    # Stopped, its consumer stays in Redis until a daemon starts; status no longer counts it.
    assert main(["status", "-c", str(conf), "--json"]) == 0
    consumers = json.loads(capsys.readouterr().out)["queue"]["consumers"]
    assert [c["live"] for c in consumers] == [False]
    assert main(["status", "-c", str(conf)]) == 0
    assert "consumers 0" in capsys.readouterr().out


def test_status_says_none_when_nothing_is_due(world):
    world.send("--from", "a@example.com", "--to", "b@example.com", "--in", "1h")
    world.once()
    code, out, _ = world.run("status")
    assert code == 0 and "oldest due message: none" in out and "- old" not in out
    assert "held       0" in out


def test_check_config_connect_reaches_the_outbox(tmp_path, postgres_dsn, smtp_server, capsys):
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from tests.redisutil import free_port

    relay = smtp_server()
    conf = tmp_path / "mailmand.yaml"

    def write(dsn: str) -> None:
        conf.write_text(f"email:\n  queue:\n    default:\n      engine: postgres\n      dsn: \"{dsn}\"\n"
                        f"  server:\n    database:\n      path: {tmp_path / 'store' / 'mailmand.db'}\n"
                        f"    smtp:\n      host: 127.0.0.1\n      port: {relay.port}\n")

    write(postgres_dsn)
    assert main(["check-config", "--connect", "-c", str(conf)]) == 0
    assert "reachable; no table 'mailmand_outbox' yet (the daemon creates it" in capsys.readouterr().out
    write(make_conninfo(**{**conninfo_to_dict(postgres_dsn), "port": str(free_port()), "connect_timeout": "2"}))
    assert main(["check-config", "--connect", "-c", str(conf)]) == 69
    out = capsys.readouterr()
    assert "queue postgres outbox " in out.out and ": cannot be used: cannot read the outbox" in out.out
    assert out.err.endswith("mailmand: cannot use: queue\n")
