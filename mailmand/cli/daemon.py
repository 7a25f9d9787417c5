"""`mailmand run`, `mailmand --once` and `mailmand demo`: the daemon's side."""

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
