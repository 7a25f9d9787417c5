"""msgspec's errors in mailmand's words, and the spellings a file may use that
msgspec's strict mode refuses.

msgspec reports `Expected `int`, got `str` - at `$.server.smtp.port``: the
path and the kind of problem, not the value nor what mailmand expects. The
value is looked up in the data by that path, and what is expected is read
from the schema's type at that path.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal

import msgspec

from mailmand.errors import ConfigError

from .schema import EmailSection, Listen, Network, Url
from .values import SECRET_KEYS, Invalid, kind, printable, show

AT = re.compile(r"(.*) - at `\$(.*)`", re.DOTALL)
STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
MISSING = object()


def split(exc: msgspec.ValidationError) -> tuple[str, list[str | int]]:
    """msgspec's `Expected ... - at `$.server.smtp.port`` as (message, ["server", "smtp", "port"])."""
    m = AT.fullmatch(str(exc))
    if not m:  # the root itself
        return str(exc), []
    return m.group(1), [int(i) if i else str(k) for k, i in STEP.findall(m.group(2))]


def key_of(where: list[str | int]) -> str:
    return "email" + "".join(f"[{x}]" if isinstance(x, int) else f".{printable(x)}" for x in where)


def unwrap(t: Any) -> tuple[Any, tuple[Any, ...]]:
    """(the type, its Annotated metadata), with `X | None` read as X."""
    meta: tuple[Any, ...] = ()
    while True:
        if typing.get_origin(t) is typing.Annotated:
            meta += t.__metadata__
            t = t.__origin__
        elif typing.get_origin(t) in (typing.Union, types.UnionType):
            t = next(a for a in typing.get_args(t) if a is not type(None))
        else:
            return t, meta


def type_at(where: list[str | int]) -> Any:
    """The schema's type for the key at `where`, or None where the schema has no such key."""
    t: Any = EmailSection
    for step in where:
        t, _ = unwrap(t)
        if isinstance(step, int):
            args = typing.get_args(t)
            t = args[0] if args else None
        elif isinstance(t, type) and issubclass(t, msgspec.Struct):
            t = next((f.type for f in msgspec.structs.fields(t) if f.encode_name == step), None)
        else:
            return None
    return t


def value_at(data: Any, where: list[str | int]) -> Any:
    for step in where:
        try:
            data = data[step]
        except (KeyError, IndexError, TypeError):
            return MISSING
    return data


def describe(t: Any) -> str:
    """What a key of type `t` expects, as the error message says it."""
    t, meta = unwrap(t)
    if t is bool:
        return "true or false"
    if t is int:
        lo = next((m.ge for m in meta if getattr(m, "ge", None) is not None), None)
        hi = next((m.le for m in meta if getattr(m, "le", None) is not None), None)
        if lo is not None and hi is not None:
            return f"an integer {lo}-{hi}"
        return f"an integer >= {lo}" if lo is not None else "an integer"
    if t is float:
        return "a number"
    if t is str:
        return "a string"
    if typing.get_origin(t) is Literal:
        return "one of " + ", ".join(typing.get_args(t))
    if typing.get_origin(t) is tuple:
        if any(getattr(m, "min_length", None) for m in meta):
            return f"at least one {describe(typing.get_args(t)[0])}"
        return "a list"
    if t is Listen:
        return "host:port"
    if t is Url:
        return "an http:// or https:// URL"
    if t is Network:
        return "address or network (such as 10.0.0.0/8)"
    return "a mapping"


YAML_BOOLS = {True: ("on", "yes", "true"), False: ("off", "no", "false")}


def lenient(value: Any, t: Any) -> Any:
    """A spelling that msgspec's strict mode refuses and a file may use, made
    canonical; `MISSING` if there is none. Strict mode stays on so that
    `verify: 1` or `verify: "yes"` is an error, not a guess."""
    t, _ = unwrap(t)
    if isinstance(value, str):
        text = value.strip()
        if t is int and re.fullmatch(r"[+-]?\d+", text):  # `port: ${SMTP_PORT}`, `batch: "20"`
            return int(text)
        if typing.get_origin(t) is Literal:  # `tls: STARTTLS`, `log-level: info`
            return next((o for o in typing.get_args(t) if o.lower() == text.lower() and o != value), MISSING)
    if isinstance(value, bool) and typing.get_origin(t) is Literal:  # YAML 1.1 reads `off` as false
        return next((o for o in typing.get_args(t) if o in YAML_BOOLS[value]), MISSING)
    if typing.get_origin(t) is tuple and isinstance(value, (str, int)) and not isinstance(value, bool):
        # one item for a list
        return [value]
    return MISSING


def make_canonical(exc: msgspec.ValidationError, data: dict[str, Any], wrapped: list[list[str | int]]) -> bool:
    """Replace the value msgspec refused with its canonical spelling, if it has one.
    `wrapped` collects the keys whose single value was made a list of one."""
    if exc.__cause__ is not None:  # our reader refused it: no other spelling helps
        return False
    _, where = split(exc)
    fixed = lenient(value_at(data, where), type_at(where))
    if fixed is MISSING or not where:
        return False
    value_at(data, where[:-1])[where[-1]] = fixed
    if isinstance(fixed, list):
        wrapped.append(where)
    return True


def explain(exc: msgspec.ValidationError, data: dict[str, Any], wrapped: list[list[str | int]]) -> ConfigError:
    """The one-line error: key path, then what was expected and what was given."""
    message, where = split(exc)
    single = where[-1:] == [0] and where[:-1] in wrapped  # the file gave one value, not a list
    key = key_of(where[:-1] if single else where)
    cause = exc.__cause__
    if isinstance(cause, ValueError):  # our reader or a __post_init__ said why
        return ConfigError(str(cause), key + (cause.key if isinstance(cause, Invalid) else ""))
    section, _ = unwrap(type_at(where))
    if m := re.fullmatch(r"Object contains unknown field `(.*)`", message, re.DOTALL):
        known = ", ".join(f.encode_name for f in msgspec.structs.fields(section))
        return ConfigError(f"unknown key (known here: {known})", f"{key}.{printable(m.group(1))}")
    if m := re.fullmatch(r"Object missing required field `(.*)`", message, re.DOTALL):
        needed = " and ".join(f.encode_name for f in msgspec.structs.fields(section) if f.required)
        return ConfigError(f"required: give {needed}", f"{key}.{m.group(1)}")
    value = value_at(data, where)
    got = kind(value) if where and where[-1] in SECRET_KEYS else show(value)
    return ConfigError(f"expected {describe(type_at(where))}, got {got}", key)


def drop(exc: msgspec.ValidationError, data: dict[str, Any]) -> bool:
    """Take out of `data` what msgspec refused (an unknown key; the value of the
    wrong type, a whole list for one bad item; a section missing a key it needs),
    so that the next conversion goes on to the next problem. False when there is
    nothing to take out (the root itself)."""
    message, where = split(exc)
    if m := re.fullmatch(r"Object contains unknown field `(.*)`", message, re.DOTALL):
        where = [*where, m.group(1)]
    while where and isinstance(where[-1], int):
        where = where[:-1]
    parent = value_at(data, where[:-1])
    if not where or not isinstance(parent, dict) or where[-1] not in parent:
        return False
    del parent[where[-1]]
    return True
