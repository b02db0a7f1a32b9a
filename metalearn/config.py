"""Leaf helpers for frozen config dataclasses: strict construction from JSON-able dicts and back.

Each stage's config lives next to its consumer (``IngestConfig`` in ``ingest/stage.py``, ...);
:mod:`metalearn.pipeline` is the one module that knows them all. This module imports no stage.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise, lists become tuples where typed so."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} parameter(s) {unknown}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if isinstance(value, list) and "tuple" in str(hints.get(key, "")):
            data[key] = tuple(value)
    return cls(**data)


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
