"""`mailmand run`, `mailmand --once`, `mailmand demo`, and the schemas: `migrate`, `outbox-sql`."""

from __future__ import annotations

import argparse

from ..config import Config


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    from ..daemon import Daemon

    daemon = Daemon(cfg)
    if args.once:
        try:
            result = daemon.once()
        finally:
            daemon.close()
        print(result.summary())
        return 0
    return daemon.run()


def cmd_demo(cfg: Config, args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo()


def cmd_migrate(cfg: Config, args: argparse.Namespace) -> int:
    from ..stores.migrate import run

    print(run(args.source, cfg.server.database))
    return 0


def cmd_outbox_sql(cfg: Config, args: argparse.Namespace) -> int:
    """The outbox table's DDL, for apps whose migrations own their schema (Django, Alembic)."""
    from ..queues import outbox_sql

    table = args.table or cfg.queue.table
    text = outbox_sql(table)
    print(f"-- mailmand's outbox (email.queue.default.table: {table}). Producers need INSERT on it;\n"
          "-- the daemon needs SELECT, UPDATE (for FOR UPDATE) and DELETE, and creates it at start if it may.")
    print(text, end="")
    return 0
