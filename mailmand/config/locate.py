"""Where the configuration file is: `-c`, `$MAILMAND_CONFIG`, `./mailmand.yaml`, `/etc/mailmand/`.

Apart from the loader so that a producer finds its file (and the cache of
its settings, `cache.py`) without importing YAML or msgspec."""

from __future__ import annotations

import os
from pathlib import Path

from mailmand.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/mailmand/mailmand.yaml")


def find_config_path(explicit: str | Path | None = None) -> Path | None:
    """`-c PATH`, else $MAILMAND_CONFIG, else ./mailmand.yaml, else /etc/mailmand/, else None."""
    for given, origin in ((explicit, "-c"), (os.environ.get("MAILMAND_CONFIG"), "$MAILMAND_CONFIG")):
        if given:  # named explicitly: it must exist
            path = Path(given).expanduser()
            if not path.is_file():
                raise ConfigError(f"configuration file {path} (from {origin}) does not exist")
            return path.absolute()
    for path in (Path("mailmand.yaml"), SYSTEM_CONFIG):
        if path.is_file():
            return path.absolute()
    return None
