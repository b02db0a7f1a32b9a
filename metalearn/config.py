"""Stage configs gathered in one place, plus strict construction from JSON-able dicts.

Each stage's frozen dataclass lives next to its consumer (``IngestConfig`` in ingest.py, ...);
this module re-exports them, builds them from flow parameters (an unknown key fails at once),
and defines the run profiles behind ``metalearn run --profile quick|default``.
"""

from __future__ import annotations

import dataclasses
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


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


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
