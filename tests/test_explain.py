"""`mailmand explain ID`: each state's sentence, from the stored facts.

The sentences of the issue come from `describe` given those facts (pure, with
the times of the example); then every state is reached for real (a relay that
greylists, refuses or accepts; a running daemon; the operator's moves) and
`explain` must say what `show --json` and the configuration say."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from mailmand.cli import main
from mailmand.config import ServerConfig, SmtpConfig, load
from mailmand.explain import Facts, about, clock, describe, explain
from mailmand.message import Record
from mailmand.queues import open_queue
from mailmand.stores import Status, open_store
from mailmand.stores.model import Attempt, MessageInfo, RecipientOutcome
from tests.daemonproc import DaemonProcess, wait_until

TODAY = datetime.now().replace(hour=10, minute=0, second=0, microsecond=0)


def at(hour: int, minute: int, days: int = 0) -> float:
    return (TODAY.replace(hour=hour, minute=minute) + timedelta(days=days)).timestamp()


def info(status: Status, **kw) -> MessageInfo:
    base = dict(id="m1", status=status, mail_from="app@x.org", rcpt_to=("bob@x.org",), subject="s", priority=0,
                size=10, created_at=at(10, 0), send_after=at(10, 0), due_at=at(10, 0), attempts=0, last_code=None,
                last_error=None, updated_at=at(10, 0), finished_at=None, idempotency_key=None)
    return MessageInfo(**{**base, **kw})


def facts(message: MessageInfo, now: float, attempts=(), recipients=(), ahead=None, relay="smtp1",
          rate=None) -> Facts:
    return Facts(now=now, message=message, attempts=list(attempts), recipients=list(recipients), suppressions=[],
                 ahead=ahead, relay=relay, rate=rate, max_fails=3, max_time=3600.0)


# -- the sentences of the issue, from the facts -----------------------------------------------


def test_deferred_says_who_answered_what_when_the_next_try_is_and_when_it_expires():
    m = info(Status.DEFERRED, attempts=1, fails=1, due_at=at(10, 17), last_code=451)
    said = describe(facts(m, at(10, 5), [Attempt(at(10, 2), "smtp1", 451, "451 4.7.1 greylisted", 0.1,
                                                 "temporary")]))
    assert said.text == ("deferred: relay smtp1 answered 451 4.7.1 greylisted at 10:02; next try at about 10:17 "
                         "(attempt 2 of 3); expires at 11:00 (max-time 1h)")
    assert said.state == "deferred"
    d = said.as_dict()
    assert (d["next_try"], d["attempt"], d["expires_at"], d["last_code"]) == (at(10, 17), 2, at(11, 0), 451)


def test_waiting_says_how_many_are_in_front_and_how_long_at_the_relays_rate():
    said = describe(facts(info(Status.QUEUED), at(10, 5), ahead=1240, relay="ses", rate=14.0))
    assert said.text == "waiting behind 1,240 messages at relay ses's 14/s: about 90 s"
    assert describe(facts(info(Status.QUEUED), at(10, 5), ahead=5, rate=1.0)).text.endswith(": about 5 s")
    assert (said.as_dict()["ahead"], said.as_dict()["wait"]) == (1240, pytest.approx(1240 / 14))


def test_scheduled_says_when():
    said = describe(facts(info(Status.QUEUED, send_after=at(9, 0, days=1), due_at=at(9, 0, days=1)), at(10, 5)))
    assert said.text == "scheduled for 09:00 tomorrow"


def test_failed_says_the_reply_and_that_it_is_not_retried():
    m = info(Status.FAILED, attempts=1, fails=1, last_code=550, last_error="550 5.1.1 no such user",
             finished_at=at(10, 3))
    said = describe(facts(m, at(10, 5), [Attempt(at(10, 3), "smtp1", 550, "550 5.1.1 no such user", 0.1,
                                                 "permanent")]))
    assert said.text == "failed: 550 5.1.1 no such user at 10:03; not retried (permanent)"


def test_held_says_since_when():
    said = describe(facts(info(Status.HELD, held_at=at(10, 5)), at(10, 30)))
    assert said.text.startswith("held by the operator since 10:05")


@pytest.mark.parametrize(("seconds", "said"), [(3, "about 3 s"), (88.6, "about 90 s"), (900, "about 15 min"),
                                               (3 * 3600 + 60, "about 3 h")])
def test_about(seconds, said):
    assert about(seconds) == said


def test_clock_names_the_day_only_when_it_is_not_today():
    now = at(10, 0)
    assert [clock(t, now) for t in (at(23, 59), at(9, 0, 1), at(9, 0, -1))] == ["23:59", "09:00 tomorrow",
                                                                                  "09:00 yesterday"]
    assert clock(at(9, 0, 3), now) == datetime.fromtimestamp(at(9, 0, 3)).strftime("%Y-%m-%d 09:00")


def test_a_message_sent_to_some_says_who_it_missed():
    m = info(Status.SENT, rcpt_to=("bob@x.org", "carol@x.org"), attempts=1, finished_at=at(10, 3))
    said = describe(facts(m, at(10, 5), [Attempt(at(10, 3), "smtp1", 250, "250 2.0.0 OK", 0.1, "sent")],
                          [RecipientOutcome("bob@x.org", "failed", 550, "550 5.1.1 no such user"),
                           RecipientOutcome("carol@x.org", "sent", 250, "250 2.0.0 OK")]))
    assert said.text == ("sent: relay smtp1 answered 250 2.0.0 OK at 10:03; not to bob@x.org failed: "
                         "550 5.1.1 no such user (permanent)")


# -- every state, reached for real ------------------------------------------------------------


class Cli:
    def __init__(self, conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.conf, self.capsys = conf, capsys

    def run(self, *args: str) -> str:
        self.capsys.readouterr()
        code = main([*args, "-c", str(self.conf)])
        out = self.capsys.readouterr()
        assert code == 0, out.err
        return out.out

    def send(self, *args: str) -> str:
        return self.run("send", "--from", "app@x.org", "--subject", "s", "--text", "x", *args).strip()

    def explain(self, mid: str) -> str:
        return " ".join(self.run("explain", mid).split())  # unwrapped

    def facts(self, mid: str) -> dict:
        return json.loads(self.run("explain", mid, "--json"))

    def show(self, mid: str) -> dict:
        return json.loads(self.run("show", mid, "--json"))


@pytest.fixture
def relay(smtp_server):
    return smtp_server(rcpt_replies={"grey@x.org": "451 4.7.1 greylisted", "bob@x.org": "550 5.1.1 no such user"})


@pytest.fixture
def cli(relay, write_config, capsys) -> Cli:
    conf = write_config(relay.port, extra_server="    max-fails: 3\n    max-time: 1h\n",
                        smtp_extra="      rate: 14/s\n")
    text = conf.read_text().replace("backoff: {min: 1s, max: 2s}", "backoff: {min: 15m, max: 1h}")
    conf.write_text(text)
    return Cli(conf, capsys)


def test_a_greylisted_message_under_a_running_daemon(cli, relay):
    mid = cli.send("--to", "grey@x.org")
    daemon = DaemonProcess(cli.conf).ready()
    try:
        assert wait_until(lambda: cli.show(mid)["status"] == "deferred")
        shown = cli.show(mid)
        [a] = shown["attempts"]
        relay_name = f"127.0.0.1:{relay.port}"
        now = time.time()
        assert cli.explain(mid) == (
            f"deferred: relay {relay_name} answered 451 4.7.1 greylisted at {clock(a['at'], now)}; next try at "
            f"about {clock(shown['due_at'], now)} (attempt 2 of 3); expires at "
            f"{clock(shown['send_after'] + 3600, now)} (max-time 1h)")
        f = cli.facts(mid)
        assert (f["state"], f["next_try"], f["attempt"], f["max_fails"], f["last_reply"]) == (
            "deferred", shown["due_at"], 2, 3, "451 4.7.1 greylisted")
        assert 15 * 60 * 0.75 <= f["next_try"] - a["at"] <= 15 * 60 * 1.25  # the backoff the config gives
        cli.run("hold", mid)
        held = cli.show(mid)["held_at"]
        assert cli.explain(mid) == (f"held by the operator since {clock(held, time.time())}; "
                                    f"`mailmand release {mid}` sends it again")
        assert cli.facts(mid)["held_since"] == held
        cli.run("cancel", mid)
        assert cli.explain(mid) == f"cancelled by the operator at {clock(cli.show(mid)['finished_at'], time.time())}"
    finally:
        assert daemon.stop() == 0


def test_failed_sent_and_scheduled(cli, relay):
    failed = cli.send("--to", "bob@x.org")
    sent = cli.send("--to", "carol@x.org")
    tomorrow = (datetime.now() + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    later = cli.send("--to", "carol@x.org", "--at", tomorrow.isoformat())
    cli.run("--once")
    [a] = cli.show(failed)["attempts"]
    assert cli.explain(failed) == f"failed: 550 5.1.1 no such user at {clock(a['at'], time.time())}; " \
                                  "not retried (permanent)"
    [s] = cli.show(sent)["attempts"]
    assert cli.explain(sent) == f"sent: relay 127.0.0.1:{relay.port} answered {s['reply']} at " \
                                f"{clock(s['at'], time.time())}"
    assert cli.explain(later) == "scheduled for 09:00 tomorrow"
    assert cli.facts(later)["send_after"] == tomorrow.timestamp()
    # The relay refused bob for good: he is suppressed now, and a message to him alone fails at ingest.
    again = cli.send("--to", "bob@x.org")
    cli.run("--once")
    [bob] = cli.show(again)["recipients"]
    assert bob["status"] == "suppressed" and bob["reply"].endswith("refused as unknown (550 5.1.1 no such user)")
    assert cli.explain(again) == f"failed: every recipient is suppressed, never offered to a relay: bob@x.org " \
                                 f"({bob['reply']})"
    assert [x["address"] for x in cli.facts(again)["suppressed"]] == ["bob@x.org"]


def test_waiting_behind_the_queue_at_the_relays_rate(cli):
    cli.run("--once")  # the store, made as the daemon makes it
    cfg = load(cli.conf)
    store = open_store(cfg.server.database)
    t = time.time() - 60
    raw = b"Subject: s\r\n\r\nx\r\n"
    try:
        store.insert([Record(f"b{i}", "a@x.org", ("c@x.org",), raw, 0, 0.0, None, t) for i in range(1240)])
        store.insert([Record("mine", "a@x.org", ("c@x.org",), raw, 0, 0.0, None, t + 1),
                      Record("urgent", "a@x.org", ("c@x.org",), raw, 5, 0.0, None, t + 2)])
        assert explain(store, cfg, "mine").text == (
            f"waiting behind 1,241 messages at relay 127.0.0.1:{cfg.server.smtp.port}'s 14/s: about 90 s")
        said = explain(store, cfg, "urgent")  # higher priority: first in line
        assert said.state == "waiting" and said.as_dict()["ahead"] == 0 and "first in line" in said.text
    finally:
        store.close()
    # With no rate set, no estimate.
    no_rate = ServerConfig(database=cfg.server.database, smtp=SmtpConfig(host="smtp1"))
    store = open_store(cfg.server.database)
    try:
        assert explain(store, no_rate, "mine").text == ("waiting behind 1,241 messages at relay smtp1:25 "
                                                        "(no rate limit set: as fast as the relay takes them)")
    finally:
        store.close()


def test_expired(cli, relay):
    text = cli.conf.read_text().replace("max-time: 1h", "max-time: 2s").replace(
        "backoff: {min: 15m, max: 1h}", "backoff: {min: 1s, max: 1s}")
    cli.conf.write_text(text)
    mid = cli.send("--to", "grey@x.org")
    cli.run("--once")
    assert wait_until(lambda: (cli.run("--once"), cli.show(mid)["status"])[1] == "expired", timeout=20,
                      interval=0.5)
    shown = cli.show(mid)
    said = cli.explain(mid)
    assert said.startswith(f"expired at {clock(shown['finished_at'], time.time())}: max-time (2s) passed since "
                           f"its send time {clock(shown['send_after'], time.time())}; last: relay ")
    assert said.endswith(f"not retried (`mailmand retry {mid}` tries again)")


def test_quarantined_and_not_yet_ingested(cli):
    cli.run("--once")
    queued = cli.send("--to", "carol@x.org")
    assert cli.explain(queued).startswith("in the spool (")
    assert cli.facts(queued)["state"] == "in-queue"
    cfg = load(cli.conf)
    queue = open_queue(cfg.queue)
    try:
        queue.put({"id": "0123456789abcdef0123456789abcdef", "mail_from": "a@x.org", "rcpt_to": [],
                   "raw": "eA==", "created_at": time.time()})
    finally:
        queue.close()
    cli.run("--once")
    said = cli.facts("0123456789abcdef0123456789abcdef")
    assert said["state"] == "quarantined" and said["text"].startswith("quarantined at ")
    assert f"`mailmand quarantine show {said['entry']}`" in said["text"]


def test_an_unknown_id_is_an_error(cli, capsys):
    cli.run("--once")
    assert main(["explain", "nope", "-c", str(cli.conf)]) == 1
    assert "no message with id 'nope'" in capsys.readouterr().err
