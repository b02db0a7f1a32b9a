"""Leaf helpers for frozen config dataclasses: strict construction from JSON-able dicts and back.

Each stage's config lives next to its consumer (``IngestConfig`` in ``ingest/stage.py``, ...);
:mod:`metalearn.pipeline` is the one module that knows them all. This module imports no stage.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrongly typed values raise ValueError.

    Lists become tuples where the field is typed as a tuple (JSON has no tuples); an int is
    accepted for a float field. The message names the field, e.g.
    ``IngestConfig.max_rows_per_dataset must be int or None, got str 'many'``.
    """
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} parameters must be a JSON object, got {type(data).__name__}")
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} parameter(s) {unknown}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        hint = hints.get(key, Any)
        if isinstance(value, list) and _is_tuple(hint):
            value = data[key] = tuple(value)
        if not _matches(value, hint):
            raise ValueError(f"{cls.__name__}.{key} must be {_describe(hint)}, got "
                             f"{type(value).__name__} {value!r:.80}")
    return cls(**data)


def _is_tuple(hint: Any) -> bool:
    return hint is tuple or typing.get_origin(hint) is tuple or any(
        _is_tuple(arg) for arg in typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType))


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits ``hint`` (the shapes config dataclasses use: scalars, unions, tuples, dicts)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        item = args[0] if args else Any
        return all(_matches(v, item) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    return isinstance(value, origin or hint) if isinstance(origin or hint, type) else True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "None"
    if origin is tuple:
        return f"a list of {_describe(args[0]) if args else 'values'}"
    return getattr(hint, "__name__", str(hint))


def flatten(prefix: str, cfg: Any) -> dict[str, Any]:
    """Flatten a (nested) dataclass into ``prefix.key`` pairs, e.g. for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in (dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg).items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(name, value))
        else:
            out[name] = value
    return out


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``; nested dicts merge key by key instead of being replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def to_jsonable(cfg: Any) -> dict[str, Any]:
    """asdict with tuples as lists, so the result survives a JSON round trip unchanged."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=list))
