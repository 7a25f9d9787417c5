"""`mailmand demo`: the real pipeline on a loopback SMTP server, nothing configured.

A newcomer sees spool → ingest → store → dispatch → relay work, with a
scheduled message, an attachment and a recipient the relay refuses.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import threading
import time
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from .client import Client
from .config import BackoffConfig, Config, DatabaseConfig, QueueConfig, ServerConfig, SmtpConfig
from .daemon import Daemon
from .errors import NotFound
from .message import Email
from .stores import open_store
from .stores.model import FINISHED

REFUSED = "nobody@refused.example"


class DemoRelay:
    """aiosmtpd handler: accepts everything but REFUSED, and remembers what arrived."""

    def __init__(self) -> None:
        self.received: list[tuple[float, list[str], int]] = []

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address == REFUSED:
            return "550 5.1.1 <nobody@refused.example>: no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append((time.time(), list(envelope.rcpt_tos), len(envelope.content or b"")))
        return "250 2.0.0 OK: queued by the demo relay"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _samples(client: Client) -> list[tuple[str, str]]:
    sender = "Demo App <app@demo.example>"
    welcome = Email(sender=sender, to="Ann <ann@demo.example>", subject="Welcome (with attachment)",
                    text="Hello Ann, your report is attached.", html="<p>Hello Ann, your report is attached.</p>")
    welcome.attach(b"day,signups\nmon,12\ntue,17\n", "report.csv")
    later = Email(sender=sender, to="bob@demo.example", subject="Scheduled 3 seconds ahead",
                  text="This one waited for its time.")
    refused = Email(sender=sender, to=REFUSED, subject="To a recipient the relay refuses", text="Bounce me.")
    return [
        (client.enqueue(welcome), "now, text+html, report.csv attached"),
        (client.send_later(later, "3s"), "send_later('3s')"),
        (client.enqueue(refused), f"to {REFUSED}"),
    ]


def run_demo(timeout: float = 30.0) -> int:
    logging.getLogger("mailmand").setLevel(logging.ERROR)  # the table below tells the story
    here = Path(tempfile.mkdtemp(prefix="mailmand-demo-"))
    relay_handler = DemoRelay()
    port = _free_port()
    controller = Controller(relay_handler, hostname="127.0.0.1", port=port)
    controller.start()
    cfg = Config(
        queue=QueueConfig(path=here / "spool"),
        server=ServerConfig(interval=1.0, backoff=BackoffConfig(1.0, 5.0),
                            database=DatabaseConfig(path=here / "mailmand.db"),
                            smtp=SmtpConfig(host="127.0.0.1", port=port)),
    )
    conf = here / "mailmand.yaml"  # so the user can inspect the demo's store afterwards
    conf.write_text(f"email:\n  queue:\n    default:\n      path: {cfg.queue.path}\n"
                    f"  server:\n    database:\n      path: {cfg.server.database.path}\n"
                    f"    smtp:\n      host: 127.0.0.1\n      port: {port}\n")
    print(f"demo relay (aiosmtpd) listening on 127.0.0.1:{port}; spool and store in {here}")
    client = Client(cfg)
    started = time.time()
    samples = _samples(client)
    client.close()
    print(f"queued {len(samples)} messages; starting the daemon\n")

    daemon = Daemon(cfg)

    def settled() -> bool:
        try:
            return all(daemon.store.get(i).status in FINISHED for i, _ in samples)
        except NotFound:  # not ingested yet
            return False

    def settle() -> None:
        while time.time() - started < timeout and not settled():
            time.sleep(0.05)
        daemon.stop()

    threading.Thread(target=settle, daemon=True).start()
    try:
        daemon.run()
        store = open_store(cfg.server.database)
        print(f"{'message':<40} {'status':<8} {'after':>7}  the relay's answer")
        ok = True
        for msg_id, what in samples:
            info = store.get(msg_id)
            attempts = store.attempts(msg_id)
            took = (info.finished_at or time.time()) - info.created_at
            last = attempts[-1] if attempts else None
            reply = last.reply if last else (info.last_error or "-")
            print(f"{what:<40} {info.status.value:<8} {took:6.2f}s  {reply}")
            ok = ok and info.status in FINISHED
        store.close()
    finally:
        controller.stop()
    print(f"\nThe relay received {len(relay_handler.received)} message(s); 'after' is enqueue to outcome.")
    print(f"Look around: mailmand status -c {conf}\n            mailmand show -c {conf} {samples[0][0]}")
    return 0 if ok else 1
