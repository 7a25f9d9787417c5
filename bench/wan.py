"""Scenario: a relay a round trip away. Three senders, the same connection count,
the same C sink (Postfix's smtp-sink) behind a userspace delay proxy:

- bare smtplib: N threads, each one reused connection, `sendmail` in a loop;
- `mailmand --once`: spool → store → relay, timed whole (process start,
  ingest and dispatch), the spool filled beforehand;
- Postfix as a satellite (Debian's package, a private instance): `relayhost`
  is the proxy; the mail is injected on hold beforehand, and the clock runs
  from `postsuper -H ALL` (+ a queue flush) until its queue is empty.

The proxy (`python -m bench.wan proxy LISTEN UPSTREAM DELAY`) holds every
chunk DELAY seconds in each direction, chunks overlapping, so a connection
sees RTT = 2 × DELAY whatever it pipelines. This kernel has no netem.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .common import RCPT, SENDER, Series, free_port, have_smtp_sink, once_command, records, sink
from .dispatch import _bare

RTTS_MS = (5, 25, 50, 80)
TARGETS = {"postfix": 2.0, "smtplib": 3.0}  # mailmand at RTT 25 ms, 20 connections, at least this × each


# -- the delay proxy ------------------------------------------------------------------


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    out = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, data))  # each chunk held `delay`, not behind the last
            if not data:
                break
        await out
    except (ConnectionError, OSError):
        out.cancel()
    finally:
        writer.close()


async def _proxy(listen: int, upstream: int, delay: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pump(client_r, server_w, delay), _pump(server_r, client_w, delay),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", listen, backlog=1000)
    async with server:
        await server.serve_forever()


@contextmanager
def delay_proxy(upstream: int, rtt_ms: float) -> Iterator[int]:
    """A delay proxy in its own process (not sharing the senders' GIL); yields its port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.wan", "proxy", str(port), str(upstream),
                             str(rtt_ms / 2000.0)], cwd=Path(__file__).resolve().parent.parent)
    try:
        from tests.postfix import wait_listening

        wait_listening(port, lambda: proc.poll() is None)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


# -- the senders ------------------------------------------------------------------------


def dispatch_only(base: Path, port: int, conns: int, n: int) -> float:
    """mailmand's dispatch alone (`Daemon.once()` on a store already holding `n`
    due messages): what pipelining does, apart from process start and ingest."""
    import shutil

    from mailmand.daemon import Daemon

    from .common import config, workdir
    from .dispatch import make_store

    with workdir(base) as root:
        cfg = config(root, port, conns, batch=100)
        make_store(root / "template.db", n)
        shutil.copy(root / "template.db", cfg.server.database.path)
        daemon = Daemon(cfg)
        try:
            t0 = time.perf_counter()
            result = daemon.once()
            dt = time.perf_counter() - t0
        finally:
            daemon.close()
        if result.dispatched.sent != n:
            raise RuntimeError(f"dispatch sent {result.dispatched.sent} of {n}")
        return n / dt


def smtplib_loop(port: int, conns: int, n: int) -> float:
    return _bare([r.raw for r in records(n)], port, conns)


class Satellite:
    """Postfix relaying everything to `relayhost` with `conns` connections, mail injected on hold."""

    def __init__(self, relayhost_port: int, conns: int) -> None:
        from tests.postfix import Postfix

        self.pf = Postfix({
            "default_transport": "smtp",
            "relayhost": f"[127.0.0.1]:{relayhost_port}",
            # As many parallel deliveries as the others get, from the start (no slow start).
            "default_destination_concurrency_limit": str(conns),
            "smtp_destination_concurrency_limit": str(conns),
            "initial_destination_concurrency": str(conns),
            "default_process_limit": str(max(100, conns * 2)),
            # Reuse connections to the relay always, not only under backlog.
            "smtp_connection_cache_destinations": f"[127.0.0.1]:{relayhost_port}",
            "smtp_tls_security_level": "none",
            "in_flow_delay": "0",
            "smtpd_recipient_restrictions": "check_client_access static:HOLD, permit_mynetworks, reject",
            "smtpd_forbid_unauth_pipelining": "no",
        }, refusals=False)
        self.queue = self.pf.root / "queue"

    def queued(self, *dirs: str) -> int:
        return sum(len(files) for d in dirs for _, _, files in os.walk(self.queue / d))

    def run(self, n: int) -> float:
        import smtplib

        with smtplib.SMTP("127.0.0.1", self.pf.port, local_hostname="bench.local", timeout=30) as s:
            for r in records(n):
                s.sendmail(SENDER, [RCPT], r.raw)
        deadline = time.monotonic() + 120
        while self.queued("hold") < n:  # cleanup files them a moment after the 250
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.queued('hold')} of {n} on hold")
            time.sleep(0.02)
        sent_before = self._sent()
        t0 = time.perf_counter()
        self.pf.postsuper("-H", "ALL")
        subprocess.run(["postqueue", "-c", str(self.pf.conf), "-f"], check=True, timeout=60)
        while self.queued("incoming", "active", "deferred", "hold", "maildrop"):
            if time.monotonic() > deadline + 600:
                raise RuntimeError("Postfix did not empty its queue")
            time.sleep(0.01)
        dt = time.perf_counter() - t0
        if not self.pf.wait_log(lambda _: self._sent() - sent_before >= n, timeout=30):
            raise RuntimeError(f"Postfix logged {self._sent() - sent_before} of {n} sent")
        return n / dt

    def _sent(self) -> int:
        return len(re.findall(r"status=sent", self.pf.log()))

    def close(self) -> None:
        self.pf.stop()


# -- threads or asyncio ---------------------------------------------------------------------


async def _asyncio_send(port: int, conns: int, envs: list[Any]) -> int:
    """The same sans-I/O client (mailmand.smtp.protocol) driven by asyncio streams:
    what an asyncio relay pool would cost, without TLS/AUTH (not needed here)."""
    from mailmand.smtp.protocol import Client, Done, Extensions, ReplyParser

    work = list(reversed(envs))
    sent = 0

    async def session() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def reply() -> Any:
            parser = ReplyParser()
            while (r := parser.feed(await reader.readline())) is None:
                pass
            return r

        await reply()
        writer.write(b"EHLO bench.local\r\n")
        await reply()
        client = Client(Extensions(pipelining=True, eightbitmime=True))
        while True:
            if client.ready_for_next and work:
                client.add(work.pop())
                continue
            if not client.waiting:
                break
            writer.write(client.outgoing())
            for event in client.receive(await reply()):
                sent += isinstance(event, Done) and event.outcome.kind == "sent"
        writer.write(b"QUIT\r\n")
        await reply()
        writer.close()

    await asyncio.gather(*(session() for _ in range(conns)))
    return sent


def threads_or_asyncio(base: Path, quick: bool) -> dict[str, Any]:
    """msg/s and CPU per message of the thread pool (mailmand.smtp.Relay) and of
    an asyncio driver of the same protocol, at 4, 20 and 100 connections, 25 ms away."""
    import resource

    from mailmand.config import SmtpConfig
    from mailmand.smtp import Envelope, Relay

    n = 1000 if quick else 4000
    envs = [Envelope(r.id, r.mail_from, tuple(r.rcpt_to), r.raw) for r in records(n)]

    def cpu() -> float:
        u = resource.getrusage(resource.RUSAGE_SELF)
        return u.ru_utime + u.ru_stime

    def threads(port: int, conns: int) -> int:
        relay = Relay(SmtpConfig(host="127.0.0.1", port=port, connections=conns, helo="bench.local"))
        try:
            return sum(r.kind == "sent" for group in relay.send_grouped(envs) for r in group)
        finally:
            relay.close()

    rows = []
    with sink("smtp-sink") as sink_port, delay_proxy(sink_port, 25) as proxy:
        for conns in (4, 20, 100):
            for name, fn in (("threads", lambda c=conns: threads(proxy, c)),
                             ("asyncio", lambda c=conns: asyncio.run(_asyncio_send(proxy, c, envs)))):
                c0, t0 = cpu(), time.perf_counter()
                sent = fn()
                wall, used = time.perf_counter() - t0, cpu() - c0
                if sent != n:
                    raise RuntimeError(f"{name}: sent {sent} of {n}")
                rows.append({"driver": name, "connections": conns, "msg_s": n / wall, "cpu_us_per_msg": used / n * 1e6})
                print(f"  {name} {conns} conns: {n / wall:.0f} msg/s, {used / n * 1e6:.0f} µs CPU/msg",
                      file=sys.stderr, flush=True)
    return {"messages": n, "rtt_ms": 25, "rows": rows}


# -- the scenario -------------------------------------------------------------------------


def run(base: Path, quick: bool) -> dict[str, Any]:
    from tests.postfix import missing

    if not have_smtp_sink() or missing():
        return {"skipped": missing() or "no smtp-sink"}
    n20, n4, rounds = (400, 200, 1) if quick else (2000, 500, 3)
    rtts = (25, 80) if quick else RTTS_MS
    rows = []
    with sink("smtp-sink") as sink_port:
        for rtt in rtts:
            with delay_proxy(sink_port, rtt) as proxy:
                for conns in (4, 20):
                    # 4 connections: at 25 and 80 ms only, and fewer messages (a bare
                    # smtplib loop 80 ms away moves about 12 a second on 4 connections).
                    if conns == 4 and rtt not in (25, 80):
                        continue
                    n = n4 if conns == 4 else n20
                    sat = Satellite(proxy, conns)
                    series = {"mailmand": Series(), "dispatch": Series(), "smtplib": Series(),
                              "postfix": Series()}
                    try:
                        for _ in range(rounds):
                            series["mailmand"].values.append(once_command(base, proxy, conns, n))
                            series["dispatch"].values.append(dispatch_only(base, proxy, conns, n))
                            series["smtplib"].values.append(smtplib_loop(proxy, conns, n))
                            series["postfix"].values.append(sat.run(n))
                    finally:
                        sat.close()
                    row = {"rtt_ms": rtt, "connections": conns, "messages": n,
                           **{k: s.summary() for k, s in series.items()}}
                    row["mailmand_vs_postfix"] = series["mailmand"].median / series["postfix"].median
                    row["mailmand_vs_smtplib"] = series["mailmand"].median / series["smtplib"].median
                    print(f"  rtt {rtt} ms, {conns} conns: mailmand {series['mailmand'].median:.0f} "
                          f"(dispatch alone {series['dispatch'].median:.0f}), "
                          f"smtplib {series['smtplib'].median:.0f}, postfix {series['postfix'].median:.0f} msg/s",
                          file=sys.stderr, flush=True)
                    rows.append(row)
    return {"rows": rows, "targets_at_25ms_20conns": TARGETS}


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.4))
    for conns, style in ((20, "-"), (4, "--")):
        rows = sorted((r for r in results["rows"] if r["connections"] == conns), key=lambda r: r["rtt_ms"])
        if not rows:
            continue
        for who, marker, name in (("mailmand", "o", "mailmand --once"), ("dispatch", "D", "mailmand dispatch"),
                                  ("postfix", "s", "Postfix"), ("smtplib", "^", "smtplib")):
            ax.plot([r["rtt_ms"] for r in rows], [r[who]["median"] for r in rows], marker + style,
                    label=f"{name}, {conns} connections")
    ax.set_xlabel("round-trip time to the relay (ms)")
    ax.set_ylabel("messages per second")
    ax.set_yscale("log")
    ax.set_title("A relay a round trip away (smtp-sink behind a delay proxy)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__" and sys.argv[1:2] == ["proxy"]:
    listen, upstream, delay = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    try:
        asyncio.run(_proxy(listen, upstream, delay))
    except KeyboardInterrupt:
        pass

if __name__ == "__main__" and sys.argv[1:2] == ["compare"]:
    import json

    print(json.dumps(threads_or_asyncio(Path("/var/tmp"), "--quick" in sys.argv), indent=1))
