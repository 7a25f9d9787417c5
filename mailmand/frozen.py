"""Small immutable value classes without `dataclasses`.

`import dataclasses` pulls in `inspect` (and with it `ast`, `dis`,
`tokenize`), and each `@dataclass` compiles its methods when the class is
made: together tens of ms at the start of every `mailmand-sendmail`. The
classes a producer loads (the queue record, the queue's items) derive from
`Frozen` instead: fields in `__init__`, then equality, hashing, a repr and
`replace()` from the field names.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar, Self


class Frozen:
    """Subclasses list their fields in `_fields` and set them in `__init__` with `_set(locals())`."""

    _fields: ClassVar[tuple[str, ...]] = ()

    def _set(self, values: dict[str, Any]) -> None:
        self.__dict__.update((name, values[name]) for name in self._fields)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is immutable")

    def _values(self) -> tuple[Any, ...]:
        return tuple(self.__dict__[name] for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={self.__dict__[name]!r}" for name in self._fields)
        return f"{type(self).__name__}({shown})"

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes` (as `dataclasses.replace`)."""
        return type(self)(**{**self.__dict__, **changes})
