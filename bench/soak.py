"""Scenario: two million messages an hour through three daemons, one killed every two minutes.

Three real daemons (`python -m mailmand run`) share a Redis stream and a
PostgreSQL store and deliver to a relay 25 ms away, while producer processes
keep enqueuing at a fixed rate (`mailmand.Client.put`, one record at a time,
durable on return). Every `--kill-every` seconds one daemon, in turn, is
SIGKILLed and started again on the same configuration.

The relay is Postfix's smtpd offering CHUNKING and PIPELINING (a private
instance, tests/postfix.py) behind bench/wan.py's userspace delay proxy; smtpd
hands each message through `smtpd_proxy_filter` to the C smtp-sink, which
appends every message it is given to one dump file (`-D`). That file is the
relay's record: every delivery, duplicates included, counted by the
Message-ID each message carries (`<record id@soak.invalid>`), read as the
run goes. It costs the sink one appending write a message, and it is what
the relay got, not what mailmand says it sent.

What it checks and reports:

- lost: ids a producer got a return for that never reached the relay (must be 0);
- duplicates: ids the relay got more than once, each laid at the door of a
  kill: at each kill, the ids the victim held under lease are read from the
  store before its restart takes them back; a duplicate outside every such set
  is unexplained (must be 0), and a kill's duplicates are at most its claimed
  batch;
- msg/s (and msgs/hour) delivered while the producers ran, and per minute;
- p50/p99 from enqueue (the record's `created_at`) to the relay's 250 (the
  recorded attempt's time), from the store;
- each daemon's share (its recorded deliveries, by slot, restarts summed);
- CPU seconds per message of each part (daemons, producers, PostgreSQL's
  backends for this database, Redis, the relay, the delay proxy), from /proc,
  and the load average.

    python -m bench.soak --minutes 10                # the full run: 600 msg/s offered, 333,600+ messages
    python -m bench.soak --minutes 1 --kill-every 20 # a short form
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailmand.record import Record

from .chunking import CLK, Relay, delay_proxy
from .common import environment, pg_database, workdir

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("MAILMAND_BENCH_REDIS_URL", os.environ.get("MAILMAND_TEST_REDIS_URL",
                                                                      "redis://127.0.0.1:6379/0"))
TARGET_MSG_S = 2_000_000 / 3600  # 555.6: two million an hour
DOMAIN = "soak.invalid"
MESSAGE_ID = re.compile(rb"^Message-ID: <([^@>]+)@" + re.escape(DOMAIN.encode()) + rb">\r?$", re.M | re.I)
SAMPLE_EVERY = 2.0  # seconds between /proc samples and progress lines


@dataclass(frozen=True)
class Settings:
    minutes: float = 10.0
    rate: float = 600.0  # msg/s offered by all producers together
    daemons: int = 3
    producers: int = 2
    kill_every: float = 120.0  # seconds; 0: no kills
    connections: int = 10  # per daemon
    batch: int = 100
    lease: str = "30s"
    rtt_ms: float = 25.0
    drain_timeout: float = 600.0  # seconds to wait, after the producers stop, for every message
    log_statements: bool = False  # have PostgreSQL log the daemons' statements, and count them by kind


# -- the relay's record -------------------------------------------------------------------


class Recording:
    """The relay's dump file, read as it grows: each Message-ID counted once per delivery."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count: Counter[str] = Counter()
        self.records = 0  # messages in the dump, whether or not their Message-ID parsed
        self._offset = 0
        self._rest = b""

    def read(self) -> int:
        """Take in what the sink appended since the last read; the number of deliveries now."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        self._offset += len(data)
        data, cut, rest = (self._rest + data).rpartition(b"\n")
        self._rest = rest
        if cut:
            self.records += data.count(b"\nX-Client-Addr: ") + data.startswith(b"X-Client-Addr: ")
            self.count.update(m.decode() for m in MESSAGE_ID.findall(data + b"\n"))
        return self.deliveries

    @property
    def deliveries(self) -> int:
        return sum(self.count.values())


@contextmanager
def recording_relay(base: Path) -> Iterator[tuple[Relay, Recording]]:
    """Postfix smtpd offering CHUNKING, smtp-sink behind it appending each message to a dump."""
    from tests.postfix import _uid, scratch

    dump_dir = scratch("mailmand-soak-dump-")
    os.chown(dump_dir, _uid("nobody"), -1)
    relay = Relay("sink", sink_options=("-D", str(dump_dir / "dump")))
    try:
        yield relay, Recording(dump_dir / "dump")
    finally:
        relay.close()
        import shutil

        shutil.rmtree(dump_dir, ignore_errors=True)


# -- the producers -------------------------------------------------------------------------


def template() -> Record:
    """The record every producer sends (~2 KB, as `Email.to_record` makes it), its
    Message-ID a placeholder for the record's id."""
    from mailmand.config import ServerConfig

    from .common import email

    record = email().to_record(ServerConfig().max_message_size)
    raw, n = re.subn(rb"(?mi)^Message-ID: <[^>]*>\r\n", b"Message-ID: <{ID}@" + DOMAIN.encode() + b">\r\n",
                     record.raw)
    if n != 1:
        raise RuntimeError("the bench message has no Message-ID header to replace")
    return record.replace(raw=raw)


def produce(conf: str, prefix: str, rate: float, seconds: float, out: str) -> None:
    """One producer process: `rate` records a second for `seconds`, ids `prefix-000001`…,
    each put through mailmand.Client (validated, durable on return). A put that fails
    is tried again with the same id (a store insert by id makes a second one a no-op)."""
    import resource

    from mailmand.client import Client
    from mailmand.config import load
    from mailmand.errors import QueueError

    base = template()
    client = Client(load(conf, producer=True))
    errors = 0
    n = 0
    behind = 0.0
    t0 = time.monotonic()
    while (now := time.monotonic()) < t0 + seconds:
        due = t0 + n / rate
        if due > now:
            time.sleep(due - now)
        else:
            behind = max(behind, now - due)
        mid = f"{prefix}-{n:07d}"
        record = base.replace(id=mid, raw=base.raw.replace(b"{ID}", mid.encode()), created_at=time.time())
        while True:
            try:
                client.put(record)
                break
            except QueueError:
                errors += 1
                time.sleep(0.1)
        n += 1
    client.close()
    use = resource.getrusage(resource.RUSAGE_SELF)
    Path(out).write_text(json.dumps({"prefix": prefix, "sent": n, "errors": errors, "seconds": time.monotonic() - t0,
                                     "max_behind_s": behind, "cpu_s": use.ru_utime + use.ru_stime}))


# -- the daemons ------------------------------------------------------------------------------


def daemon_yaml(path: Path, slot: int, key: str, dsn: str, port: int, s: Settings) -> Path:
    path.write_text(
        "email:\n"
        f"  queue:\n    default:\n      engine: redis\n      url: {REDIS_URL}\n      name: {key}\n"
        # Not used by a Redis queue; it names the daemon's place, so a restart takes its predecessor's leases.
        f"      path: {path.parent / f'spool{slot}'}\n"
        "  server:\n"
        f"    database:\n      engine: postgres\n      dsn: \"{dsn}\"\n"
        f"    batch: {s.batch}\n    lease: {s.lease}\n    interval: 1s\n"
        f"    smtp:\n      host: 127.0.0.1\n      port: {port}\n      tls: none\n"
        f"      connections: {s.connections}\n")
    path.chmod(0o600)
    return path


@dataclass
class Slot:
    """One of the daemons, across its restarts."""

    conf: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)

    def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "mailmand", "run", "-c", str(self.conf)],
                                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        self.pids.append(self.proc.pid)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(30)


def query(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def registered(dsn: str, pid: int, timeout: float = 60.0) -> str:
    """The daemon id of process `pid`, once it has registered in the store."""
    import psycopg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rows = query(dsn, "SELECT id FROM daemons WHERE pid = %s", pid)
        except psycopg.errors.UndefinedTable:
            rows = []
        if rows:
            return str(rows[0][0])
        time.sleep(0.05)
    raise RuntimeError(f"daemon {pid} did not register within {timeout:g}s")


# -- CPU from /proc --------------------------------------------------------------------------


class CpuSampler:
    """CPU seconds by group of processes, sampled every few seconds: a process
    that starts counts from zero, one that exits keeps what it had at the last
    sample (its last seconds are lost; a killed daemon is sampled just before)."""

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.group: dict[int, str] = {}

    def sample(self, groups: dict[str, list[int]], new: bool = True) -> None:
        for name, pids in groups.items():
            for pid in pids:
                cpu = cpu_ticks(pid)
                if cpu is None:
                    continue
                self.first.setdefault(pid, 0.0 if new else cpu)
                self.last[pid] = cpu
                self.group[pid] = name

    def seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, cpu in self.last.items():
            out[self.group[pid]] = out.get(self.group[pid], 0.0) + cpu - self.first[pid]
        return out


def cpu_ticks(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK


def pg_counters(dsn: str) -> dict[str, int]:
    """This database's transactions and rows written so far (pg_stat_database, which lags
    by up to half a second)."""
    [row] = query(dsn, "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted"
                       " FROM pg_stat_database WHERE datname = current_database()")
    return dict(zip(("commits", "rollbacks", "inserted", "updated", "deleted"), map(int, row), strict=True))


PG_LOG = Path("/var/log/postgresql/postgresql-15-main.log")  # Debian's, with log_line_prefix '%m [%p] %q%u@%d '
KINDS = [("claim", "WITH c AS (SELECT id FROM messages"), ("ingest: messages", "INSERT INTO messages"),
         ("ingest: bodies", "INSERT INTO bodies"), ("finish: lock rows", "SELECT id FROM messages WHERE id IN"),
         ("finish: attempts on record", "SELECT message_id, claim FROM attempts"),
         ("finish: update", "UPDATE messages m SET status = v.status"), ("finish: attempts", "INSERT INTO attempts"),
         ("notify", "SELECT pg_notify"), ("next due", "SELECT min(due_at)"), ("commit", "COMMIT"), ("begin", "BEGIN"),
         ("pool check (empty query)", ""), ("set local", "SET LOCAL")]


def statements(offset: int, dsn: str) -> Counter[str]:
    """The daemons' statements in PostgreSQL's log since `offset`, by kind (diagnostic)."""
    from psycopg.conninfo import conninfo_to_dict

    db = str(conninfo_to_dict(dsn)["dbname"])
    out: Counter[str] = Counter()
    with PG_LOG.open("rb") as f:
        f.seek(offset)
        for line in f:
            text = line.decode(errors="replace")
            if f"@{db} " not in text:
                continue
            m = re.search(r"LOG:  (?:statement|execute [^:]*): (.*)", text)
            if not m:
                continue
            sql = m.group(1).strip()
            kind = next((k for k, prefix in KINDS if sql.startswith(prefix) and (prefix or not sql)), None)
            out[kind or sql[:40]] += 1
    return out


def redis_pid() -> int | None:
    import redis

    try:
        return int(redis.Redis.from_url(REDIS_URL).info("server")["process_id"])
    except (redis.RedisError, KeyError, ValueError):
        return None


# -- the run ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run(base: Path, s: Settings, log: Any = sys.stderr) -> dict[str, Any]:
    """The whole scenario; returns its figures (see the module's docstring)."""
    import redis

    from tests.postfix import missing

    if missing():
        return {"skipped": missing()}
    key = f"mailmand-soak-{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:6]
    seconds = s.minutes * 60
    r = redis.Redis.from_url(REDIS_URL)
    load = [os.getloadavg()]
    cpu = CpuSampler()
    kills: list[dict[str, Any]] = []
    slots: list[Slot] = []
    producers: list[subprocess.Popen[bytes]] = []
    with ExitStack() as stack:
        root = stack.enter_context(workdir(base))
        dsn = stack.enter_context(pg_database())
        relay, recording = stack.enter_context(recording_relay(base))
        port, proxy_pid = stack.enter_context(delay_proxy(relay.port, s.rtt_ms))
        stack.callback(r.delete, key)
        try:
            daemon_dsn = dsn
            if s.log_statements:
                from psycopg.conninfo import make_conninfo

                daemon_dsn = make_conninfo(dsn, options="-c log_statement=all")
                log_at = PG_LOG.stat().st_size if PG_LOG.exists() else 0
            slots = [Slot(daemon_yaml(root / f"d{i}.yaml", i, key, daemon_dsn, port, s), root / f"d{i}.log")
                     for i in range(s.daemons)]
            for slot in slots:
                slot.start()
            ids = {registered(dsn, slot.pids[-1]): i for i, slot in enumerate(slots)}
            redis_server = redis_pid()

            def groups() -> dict[str, list[int]]:
                pg = [int(p) for (p,) in query(dsn, "SELECT pid FROM pg_stat_activity"
                                                    " WHERE datname = current_database() AND pid <> pg_backend_pid()")]
                return {"daemons": [sl.proc.pid for sl in slots if sl.proc and sl.proc.poll() is None],
                        "producers": [p.pid for p in producers if p.poll() is None],
                        "postgres": pg, "redis": [redis_server] if redis_server else [],
                        "relay": relay.pids(), "proxy": [proxy_pid]}

            cpu.sample(groups(), new=False)
            pg_before = pg_counters(dsn)
            # The producers write their own figures when they end.
            per = s.rate / s.producers
            t0 = time.time()
            producers = [subprocess.Popen(
                [sys.executable, "-m", "bench.soak", "produce", str(slots[p % len(slots)].conf), f"{tag}-p{p}",
                 str(per), str(seconds), str(root / f"producer{p}.json")], cwd=ROOT) for p in range(s.producers)]
            victim = 0
            next_kill = time.monotonic() + s.kill_every if s.kill_every else float("inf")
            last_print = 0.0
            end = time.monotonic() + seconds
            while any(p.poll() is None for p in producers):
                time.sleep(0.2)
                now = time.monotonic()
                if now >= next_kill and now < end - 1:
                    slot = slots[victim]
                    cpu.sample(groups())
                    old = slot.pids[-1]
                    owner = next(i for i, sl in ids.items() if sl == victim and f":{old}:" in i)
                    slot.kill()
                    held = [h for (h,) in query(dsn, "SELECT id FROM messages WHERE status = 'sending'"
                                                     " AND lease_owner = %s", owner)]
                    slot.start()
                    ids[registered(dsn, slot.pids[-1])] = victim
                    kills.append({"at_s": round(time.time() - t0, 1), "slot": victim, "pid": old,
                                  "held": held, "held_count": len(held)})
                    print(f"  {time.time() - t0:6.1f}s SIGKILL daemon {victim} (pid {old}) holding {len(held)}; "
                          "restarted", file=log, flush=True)
                    victim = (victim + 1) % len(slots)
                    next_kill += s.kill_every
                if now - last_print >= SAMPLE_EVERY:
                    last_print = now
                    cpu.sample(groups())
                    load.append(os.getloadavg())
                    got = recording.read()
                    print(f"  {time.time() - t0:6.1f}s relay {got:,} deliveries, stream backlog {r.xlen(key):,}, "
                          f"load {os.getloadavg()[0]:.1f}", file=log, flush=True)
            t_end = time.time()
            results = [json.loads((root / f"producer{p}.json").read_text()) for p in range(s.producers)]
            if any(p.returncode for p in producers):
                raise RuntimeError(f"a producer failed: {[p.returncode for p in producers]}")
            expected = {f"{res['prefix']}-{i:07d}" for res in results for i in range(res["sent"])}
            cpu.sample(groups())
            cpu_producing = cpu.seconds()
            pg_work = {k: v - pg_before[k] for k, v in pg_counters(dsn).items()}
            # Drain: every message must reach the relay.
            deadline = time.monotonic() + s.drain_timeout
            while time.monotonic() < deadline:
                recording.read()
                if expected <= set(recording.count):
                    break
                time.sleep(0.5)
            t_drained = time.time()
            time.sleep(1.0)  # a delivery in flight after the last one counted would still show
            cpu.sample(groups())
            load.append(os.getloadavg())
        finally:
            for p in producers:
                if p.poll() is None:
                    p.kill()
            codes = [slot.stop() for slot in slots]
        recording.read()
        sent = query(dsn, "SELECT m.id, m.created_at, a.at, a.daemon FROM attempts a JOIN messages m"
                          " ON m.id = a.message_id WHERE a.outcome = 'sent'")
        states = dict(query(dsn, "SELECT status, count(*) FROM messages GROUP BY status"))
    out = summarise(s, t0, t_end, t_drained, expected, recording, kills, sent, states, ids, cpu_producing,
                    results, load, codes)
    out["postgres_per_message"] = {k: v / max(1, out["delivered_in_window"]) for k, v in pg_work.items()}
    if s.log_statements:
        counts = statements(log_at, dsn)
        out["statements_per_message"] = {k: v / max(1, out["enqueued"]) for k, v in counts.most_common()}
    return out


def summarise(s: Settings, t0: float, t_end: float, t_drained: float, expected: set[str], recording: Recording,
              kills: list[dict[str, Any]], sent: list[tuple[Any, ...]], states: dict[str, int],
              ids: dict[str, int], cpu: dict[str, float], producers: list[dict[str, Any]],
              load: list[tuple[float, float, float]], codes: list[int | None]) -> dict[str, Any]:
    got = recording.count
    lost = sorted(expected - set(got))
    unexpected = sorted(set(got) - expected)
    dups = {i: n - 1 for i, n in got.items() if n > 1}
    explained: set[str] = set()
    for k in kills:
        mine = [i for i in k.pop("held") if i in dups]
        k["duplicates"] = sum(dups[i] for i in mine)
        explained.update(mine)
    window = t_end - t0
    in_window = [row for row in sent if t0 <= row[2] <= t_end]
    latency_ms = [(at - created) * 1000 for _, created, at, _ in sent if t0 <= created <= t_end]
    share: Counter[int] = Counter()
    unknown: Counter[str] = Counter()
    for _, _, _, daemon in sent:
        slot = ids.get(daemon)
        if slot is None:
            unknown[daemon] += 1
        else:
            share[slot] += 1
    step = 60 if window >= 120 else 10  # seconds a rate is taken over, to show it held
    per_step = Counter(int((at - t0) // step) for _, _, at, _ in in_window)
    n = len(expected)
    rate = len(in_window) / window
    return {
        "settings": s.__dict__,
        "window_s": round(window, 1),
        "enqueued": n,
        "offered_msg_s": n / window,
        "producers": producers,
        "delivered_in_window": len(in_window),
        "msg_s": rate,
        "msgs_per_hour": rate * 3600,
        "target_msg_s": TARGET_MSG_S,
        "rate_step_s": step,
        "msg_s_by_step": [per_step[m] / step for m in range(int(window // step))],  # whole steps only
        "drain_s": round(t_drained - t_end, 1),
        "relay_deliveries": recording.deliveries,
        "relay_records": recording.records,
        "lost": len(lost),
        "lost_sample": lost[:20],
        "unexpected_at_relay": len(unexpected),
        "duplicates": sum(dups.values()),
        "duplicates_unexplained": sum(n for i, n in dups.items() if i not in explained),
        "kills": kills,
        "latency_ms": {"p50": percentile(latency_ms, 0.50), "p99": percentile(latency_ms, 0.99),
                       "max": max(latency_ms, default=float("nan")), "messages": len(latency_ms)},
        "share": {str(slot): share[slot] for slot in sorted(share)},
        "share_unknown_daemons": dict(unknown),
        "store_states": states,
        "cpu_s": cpu,
        "cpu_us_per_message": {k: v / max(1, len(in_window)) * 1e6 for k, v in cpu.items()},
        "load_average": {"min": min(x[0] for x in load), "max": max(x[0] for x in load),
                         "mean": statistics.fmean(x[0] for x in load)},
        "daemon_exit_codes": codes,
    }


def report(res: dict[str, Any]) -> str:
    if "skipped" in res:
        return f"## soak: skipped ({res['skipped']})"
    s, lat, la = res["settings"], res["latency_ms"], res["load_average"]
    ok = res["lost"] == 0 and res["duplicates_unexplained"] == 0 and all(
        k["duplicates"] <= s["batch"] for k in res["kills"])
    out = [f"## soak: {s['daemons']} daemons, Redis → PostgreSQL → Postfix smtpd (CHUNKING) {s['rtt_ms']:g} ms away; "
           f"{s['minutes']:g} min, {s['rate']:g} msg/s offered by {s['producers']} producers, a SIGKILL every "
           f"{s['kill_every']:g} s (load average {la['min']:.1f}–{la['max']:.1f}, mean {la['mean']:.1f})",
           f"- delivered while producing: **{res['msg_s']:.0f} msg/s** ({res['msgs_per_hour']:,.0f}/hour; "
           f"target {res['target_msg_s']:.0f}): {res['delivered_in_window']:,} of {res['enqueued']:,} enqueued in "
           f"{res['window_s']:g} s ({res['offered_msg_s']:.0f} msg/s offered); the rest drained in "
           f"{res['drain_s']:g} s",
           f"- by {res['rate_step_s']} s: " + ", ".join(f"{x:.0f}" for x in res["msg_s_by_step"]) + " msg/s",
           f"- lost **{res['lost']}**; duplicates **{res['duplicates']}** ({res['duplicates_unexplained']} not "
           f"held by a killed daemon); relay deliveries {res['relay_deliveries']:,} ({res['relay_records']:,} "
           "records in its dump)",
           "- kills (duplicates / leases held / batch): " + "; ".join(
               f"{k['at_s']:g}s daemon {k['slot']}: {k['duplicates']} / {k['held_count']} / {s['batch']}"
               for k in res["kills"]),
           f"- enqueue → relay's 250: p50 **{lat['p50']:.0f} ms**, p99 **{lat['p99']:.0f} ms**, "
           f"max {lat['max']:.0f} ms ({lat['messages']:,} messages enqueued while producing)",
           "- share by daemon (restarts summed): " + ", ".join(
               f"{slot}: {n:,} ({n / max(1, sum(res['share'].values())):.0%})" for slot, n in res["share"].items()),
           "- PostgreSQL per message delivered: " + ", ".join(
               f"{k} {v:.2f}" for k, v in res.get("postgres_per_message", {}).items()),
           *(["- statements per message: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                       res["statements_per_message"].items())]
             if "statements_per_message" in res else []),
           "- CPU µs per message delivered: " + ", ".join(
               f"{k} {v:.0f}" for k, v in sorted(res["cpu_us_per_message"].items(), key=lambda kv: -kv[1])),
           f"- {'PASS' if ok else 'FAIL'}: 0 lost, every duplicate held by a killed daemon, at most a batch a kill"
           + ("" if res["msg_s"] >= res["target_msg_s"] else f"; the rate misses {res['target_msg_s']:.0f} msg/s")]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["produce"]:
        conf, prefix, rate, secs, out = argv[1:6]
        produce(conf, prefix, float(rate), float(secs), out)
        return 0
    d = Settings()
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=d.minutes, help="how long the producers enqueue")
    p.add_argument("--rate", type=float, default=d.rate, help="msg/s offered, all producers together")
    p.add_argument("--daemons", type=int, default=d.daemons)
    p.add_argument("--producers", type=int, default=d.producers, help="producer processes")
    p.add_argument("--kill-every", type=float, default=d.kill_every, help="seconds between SIGKILLs (0: none)")
    p.add_argument("--connections", type=int, default=d.connections, help="SMTP connections per daemon")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lease", default=d.lease)
    p.add_argument("--rtt-ms", type=float, default=d.rtt_ms)
    p.add_argument("--log-statements", action="store_true",
                   help="diagnostic: PostgreSQL logs the daemons' statements; counted by kind per message")
    p.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="scratch directory on a real disk")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    a = p.parse_args(argv)
    s = Settings(a.minutes, a.rate, a.daemons, a.producers, a.kill_every, a.connections, a.batch, a.lease, a.rtt_ms,
                 log_statements=a.log_statements)
    res = {"env": environment(), **run(a.dir, s)}
    print(report(res))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
