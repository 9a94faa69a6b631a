"""The one strict loader for typed configs saved as JSON/YAML (run.json, manifests, state files).

`from_dict(Cls, d)` builds a (nested) config dataclass from plain data: an unknown key is an error that
names it and lists the known ones; lists become tuples where the field is a tuple; a missing key takes the
field's default (so a config saved before a setting existed still loads). The command line reaches the
same dataclasses through jsonargparse (`agent/cli.py`), which is just as strict.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that does not match its dataclass (unknown key, wrong shape)."""


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """`cls(**data)`, recursively and strictly (see the module docstring)."""
    name = where or cls.__name__
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{name}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(known)})"
        )
    kwargs = {k: _coerce(hints[k], v, f"{name}.{k}") for k, v in data.items()}
    return cls(**kwargs)


class JsonConfig:
    """Mixin of every config dataclass: `to_json()` plain data, `from_json(d)` the strict loader."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Any:
        return from_dict(cls, data)


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain data of a config dataclass (tuples stay tuples; json writes them as lists)."""
    return dataclasses.asdict(obj)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1:
            return _coerce(options[0], value, where)
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_dict(tp, value, where)
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value)) if args else tuple(value)
    return value
