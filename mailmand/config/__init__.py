"""Configuration: YAML under `email:`, read into immutable, validated values.

- `schema.py`: the sections as typed frozen structures, with their defaults;
- `values.py`: durations, rates, sizes and other values written as text;
- `loader.py`: reading the file, `${ENV}`, secrets, the reload diff;
- `explain.py`: msgspec's errors as one-line messages with the key path;
- `watch.py`: the file watcher behind hot reload;
- `cache.py`: the producers' settings, cached, so that `sendmail` and the
  client start without YAML or msgspec (`load_producer`).

A section is a msgspec `Struct`: build one with keywords, change one with
`replace(section, key=value)` (msgspec's, re-exported here; `dataclasses.replace`
does not take a Struct).

The names below are imported when first used (PEP 562): `import
mailmand.config` costs nothing, and a producer that never parses a file never
imports YAML or msgspec.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from msgspec.structs import replace

    from .cache import load_producer
    from .loader import IGNORED, PORT_FOR_TLS, keep_running, load, parse, restart_required
    from .locate import SYSTEM_CONFIG, find_config_path
    from .schema import (
        LOG_LEVELS,
        AuthConfig,
        BackoffConfig,
        Config,
        DatabaseConfig,
        EventsConfig,
        MetricsConfig,
        MiB,
        NotifyConfig,
        QueueConfig,
        QuotaConfig,
        RelayConfig,
        SendmailConfig,
        ServerConfig,
        SmtpConfig,
        SubmissionConfig,
        TlsFilesConfig,
        WebhookConfig,
        data_dir,
    )
    from .values import parse_duration, parse_rate, parse_size
    from .watch import ConfigWatcher

# name -> the module that defines it
_WHERE = {
    "replace": "msgspec.structs",
    "load_producer": ".cache",
    **dict.fromkeys(("IGNORED", "PORT_FOR_TLS", "keep_running", "load", "parse", "restart_required"), ".loader"),
    **dict.fromkeys(("SYSTEM_CONFIG", "find_config_path"), ".locate"),
    **dict.fromkeys(("LOG_LEVELS", "AuthConfig", "BackoffConfig", "Config", "DatabaseConfig", "EventsConfig",
                     "MetricsConfig", "MiB", "NotifyConfig", "QueueConfig", "QuotaConfig", "RelayConfig",
                     "SendmailConfig", "ServerConfig",
                     "SmtpConfig", "SubmissionConfig", "TlsFilesConfig", "WebhookConfig", "data_dir"), ".schema"),
    **dict.fromkeys(("parse_duration", "parse_rate", "parse_size"), ".values"),
    "ConfigWatcher": ".watch",
}


def __getattr__(name: str) -> object:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    "IGNORED",
    "LOG_LEVELS",
    "PORT_FOR_TLS",
    "SYSTEM_CONFIG",
    "AuthConfig",
    "BackoffConfig",
    "Config",
    "ConfigWatcher",
    "DatabaseConfig",
    "EventsConfig",
    "MetricsConfig",
    "MiB",
    "NotifyConfig",
    "QueueConfig",
    "QuotaConfig",
    "RelayConfig",
    "SendmailConfig",
    "ServerConfig",
    "SmtpConfig",
    "SubmissionConfig",
    "TlsFilesConfig",
    "WebhookConfig",
    "data_dir",
    "find_config_path",
    "keep_running",
    "load",
    "load_producer",
    "parse",
    "parse_duration",
    "parse_rate",
    "parse_size",
    "replace",
    "restart_required",
]
