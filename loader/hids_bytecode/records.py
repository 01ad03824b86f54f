"""Record: the base of the loader's small read-only values (host facts, manifest entries, selection
steps, options), in place of @dataclass(frozen=True).

They are on every command's start-up path, where dataclasses cost a cold `select` about a fifth
of its instructions (issue 16): `import dataclasses` pulls inspect, ast and dis, and each decorated
class execs generated code. A record names its fields in __slots__ and sets them in a
plain __init__; Record gives what the frozen dataclass gave: a field set once cannot be set again,
equality and a hash over the fields (less those in `_uncompared`), a repr and replace().
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs a cold start; mypy takes this name as true
if TYPE_CHECKING:
    from typing import Any, ClassVar, Self

__all__ = ["Record"]


class Record:
    __slots__: ClassVar[tuple[str, ...]] = ()
    _uncompared: ClassVar[tuple[str, ...]] = ()  # fields left out of == and hash (dataclass compare=False)

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, name):
            raise AttributeError(f"{type(self).__name__}.{name} is read-only")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__}.{name} is read-only")

    def _compared(self) -> tuple[object, ...]:
        return tuple(getattr(self, n) for n in self.__slots__ if n not in self._uncompared)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__ or not isinstance(other, Record):
            return NotImplemented
        return self._compared() == other._compared()

    def __hash__(self) -> int:
        return hash(self._compared())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.__slots__)})"

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes` (field=value) made, as dataclasses.replace gives."""
        unknown = set(changes) - set(self.__slots__)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(sorted(unknown))}")
        return type(self)(**{n: changes.get(n, getattr(self, n)) for n in self.__slots__})
