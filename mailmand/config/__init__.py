"""Configuration: YAML under `email:`, read into immutable, validated values.

- `schema.py`: the sections as typed frozen structures, with their defaults;
- `values.py`: durations, rates, sizes and other values written as text;
- `load.py`: finding and reading the file, `${ENV}`, secrets, the reload diff;
- `explain.py`: msgspec's errors as one-line messages with the key path;
- `watch.py`: the file watcher behind hot reload.

A section is a msgspec `Struct`: build one with keywords, change one with
`replace(section, key=value)` (msgspec's, re-exported here; `dataclasses.replace`
does not take a Struct).
"""

from __future__ import annotations

from msgspec.structs import replace

from .load import IGNORED, PORT_FOR_TLS, SYSTEM_CONFIG, find_config_path, load, parse, restart_required
from .schema import (
    LOG_LEVELS,
    AuthConfig,
    BackoffConfig,
    Config,
    DatabaseConfig,
    MetricsConfig,
    MiB,
    NotifyConfig,
    QueueConfig,
    SendmailConfig,
    ServerConfig,
    SmtpConfig,
    SubmissionConfig,
    TlsFilesConfig,
    data_dir,
)
from .values import parse_duration, parse_rate, parse_size
from .watch import ConfigWatcher

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
    "MetricsConfig",
    "MiB",
    "NotifyConfig",
    "QueueConfig",
    "SendmailConfig",
    "ServerConfig",
    "SmtpConfig",
    "SubmissionConfig",
    "TlsFilesConfig",
    "data_dir",
    "find_config_path",
    "load",
    "parse",
    "parse_duration",
    "parse_rate",
    "parse_size",
    "replace",
    "restart_required",
]
