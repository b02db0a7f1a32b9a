"""Record validation: every bad row goes to a quarantine table with a reason; nothing is dropped silently.

Checks, in order (a row gets the first reason that applies):
unparseable_formula, unknown_element, nonfinite_target, invalid_label (classification target not 0/1),
bad_structure (JSON that pymatgen cannot turn into a Structure), conflicting_duplicate (the same
record_id, or the same material_id within a dataset, with different targets: all copies are
quarantined because we cannot tell which is right; exact duplicates are collapsed to one).
"""

from __future__ import annotations

import json
import math
import warnings
from functools import lru_cache

import numpy as np
import pandas as pd

from metalearn import schema as S


@lru_cache(maxsize=200_000)
def formula_problem(formula: str) -> tuple[str, str] | None:
    """(reason, detail) if pymatgen cannot parse ``formula`` into known elements, else None."""
    from pymatgen.core import Composition

    if not isinstance(formula, str) or not formula.strip():
        return "unparseable_formula", "empty formula"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            comp = Composition(formula)
    except Exception as exc:  # noqa: BLE001 -- pymatgen raises ValueError/KeyError/CompositionError variants
        text = str(exc)
        if "not a valid element" in text.lower() or "unknown element" in text.lower() or isinstance(exc, KeyError):
            return "unknown_element", f"{formula!r}: {text}"
        return "unparseable_formula", f"{formula!r}: {text}"
    if comp.num_atoms <= 0:
        return "unparseable_formula", f"{formula!r} has no atoms"
    for el in comp.elements:
        symbol = getattr(el, "symbol", str(el))
        # DummySpecies (e.g. "Xx") parse but are not chemical elements.
        is_dummy = type(el).__name__ in {"DummySpecies", "DummySpecie"} or symbol.startswith("X")
        if is_dummy and symbol != "Xe":
            return "unknown_element", f"{formula!r} contains {symbol!r}, not a chemical element"
    return None


def structure_problem(structure_json: str) -> str | None:
    """A reason text if ``structure_json`` is not a valid pymatgen Structure dict, else None."""
    from pymatgen.core import Structure

    try:
        Structure.from_dict(json.loads(structure_json))
    except Exception as exc:  # noqa: BLE001 -- any failure is a quarantine reason, kept with its text
        return f"structure does not parse: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def _raw(row: pd.Series) -> str:
    return json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()},
                      default=str)


def validate_records(records: pd.DataFrame, task_types: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``records`` into (clean, quarantine).

    Args:
        records: long records with the RECORDS_SCHEMA columns.
        task_types: dataset_id -> "regression" | "classification".
    Returns:
        clean records (same columns, exact duplicates collapsed) and a QUARANTINE_SCHEMA frame.
    """
    records = records.reset_index(drop=True)
    reasons: list[tuple[int, str, str]] = []
    bad = np.zeros(len(records), dtype=bool)

    def flag(idx: int, reason: str, detail: str) -> None:
        if not bad[idx]:
            bad[idx] = True
            reasons.append((idx, reason, detail))

    targets = pd.to_numeric(records[S.TARGET], errors="coerce").to_numpy(dtype=float)
    for idx, formula in enumerate(records[S.FORMULA].tolist()):
        problem = formula_problem(formula)
        if problem:
            flag(idx, *problem)
    for idx in np.flatnonzero(~np.isfinite(targets)):
        flag(int(idx), "nonfinite_target", f"target is {records.at[int(idx), S.TARGET]!r}")
    for idx, (dataset, value) in enumerate(zip(records[S.DATASET_ID], targets)):
        if task_types.get(dataset) == "classification" and np.isfinite(value) and value not in (0.0, 1.0):
            flag(idx, "invalid_label", f"classification target {value!r} is not 0 or 1")
    if S.STRUCTURE_JSON in records:
        for idx, text in records[S.STRUCTURE_JSON].items():
            if isinstance(text, str) and not bad[idx]:
                problem = structure_problem(text)
                if problem:
                    flag(int(idx), "bad_structure", problem)

    # Duplicates: exact copies collapse; copies that disagree on the target are all quarantined.
    records = records.assign(**{S.TARGET: targets})
    for key in ([S.RECORD_ID], [S.DATASET_ID, S.MATERIAL_ID]):
        sub = records[~bad & records[key].notna().all(axis=1)]
        spread = sub.groupby(key, dropna=True)[S.TARGET].transform(lambda s: s.max() - s.min())
        for idx in spread[spread > 0].index:
            flag(int(idx), "conflicting_duplicate",
                 f"{'/'.join(key)}={'/'.join(str(records.at[idx, k]) for k in key)} has conflicting targets")

    quarantine = pd.DataFrame(
        [
            {S.RECORD_ID: str(records.at[i, S.RECORD_ID]), S.DATASET_ID: str(records.at[i, S.DATASET_ID]),
             S.REASON: reason, S.DETAIL: detail, S.RAW: _raw(records.loc[i])}
            for i, reason, detail in sorted(reasons)
        ],
        columns=[f.name for f in S.QUARANTINE_SCHEMA],
    )
    clean = records[~bad].drop_duplicates(subset=[S.RECORD_ID]).reset_index(drop=True)
    return clean, quarantine
