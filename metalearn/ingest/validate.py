"""Record validation: every bad row goes to a quarantine table with a reason; nothing is dropped silently.

Checks, in order (a row gets the first reason that applies):

* ``unparseable_formula`` / ``unknown_element``: :func:`metalearn.chemistry.parse_composition` (the
  project's one formula parser) rejects the formula: empty or garbage text, a zero amount
  (``NaCl0``), a symbol that is no element (``Xq2``).
* ``nonfinite_target``: the target is missing, not a number, or not finite. Sources hand targets over
  as the text they read (e.g. ``"abc"``, ``""``, ``"1e400"``); they are converted here, so the
  detail and the ``raw`` JSON keep that text.
* ``invalid_label``: a classification target that is not 0 or 1.
* ``bad_structure``: structure JSON that pymatgen cannot turn into a Structure.
* ``conflicting_duplicate``: copies of one record or material whose targets disagree, where "one"
  is any of (a) the same ``record_id``; (b) the same ``material_id`` within a dataset; (c) the same
  reduced formula within a dataset, among rows with the same structure (or none), and the same
  material id (or none): a material id, like a structure, tells polymorphs and OC systems apart.
  Every copy is quarantined (we cannot tell which is right), each with all the group's values in
  its detail. Exact copies of a ``record_id`` collapse to one.

Tolerance of "disagree": for (a) and (b), the copies' targets span more than ``REL_TOL *
max|target|`` of the group plus ``SPREAD_TOL`` times the spread (max - min) of the dataset's
targets; that is, only float noise from a unit conversion or a text round trip counts as agreement.
For (c) among rows with neither a structure nor a material id, copies of one reduced formula are
usually real polymorphs or repeated measurements (MgAl2O4: 3.29 and 4.54 eV band gaps), which the
shards merge to their median; they conflict only when they span more than ``POLYMORPH_IQR_TOL``
times the dataset's interquartile range (Ag2BiO3 at 0.0 and 99.0), beyond what polymorphs of one
compound differ by. Rows that share a structure or a material id are one material: strict.
Measured on the full bundled data: the strict tolerance for (c) would quarantine 8.2% of all
records (97% of the Castelli perovskites); this one quarantines only gross disagreements.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd

from metalearn import schema as S
from metalearn.chemistry import composition_key, parse_composition

# Bump when a rule changes what is quarantined: snapshots record it, and an "unchanged input" short
# cut (bundled fingerprint, MP listing) only reuses a snapshot validated by the current rules.
# 2: one formula parser (zero amounts rejected), targets kept as text, duplicates by reduced formula
# (beyond POLYMORPH_IQR_TOL interquartile ranges).
VALIDATION_VERSION = 2
REL_TOL = 1e-6  # relative to the group's largest |target|
SPREAD_TOL = 1e-9  # relative to the dataset's target spread (max - min)
POLYMORPH_IQR_TOL = 3.0  # same reduced formula: conflict beyond this many interquartile ranges of the dataset
_MAX_LISTED = 10  # values named in one conflicting_duplicate detail


def structure_problem(structure_json: str) -> str | None:
    """A reason text if ``structure_json`` is not a valid pymatgen Structure dict, else None."""
    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Structure.from_dict(json.loads(structure_json))
    except Exception as exc:  # noqa: BLE001 -- any failure is a quarantine reason, kept with its text
        return f"structure does not parse: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def target_problem(value: object) -> str:
    """Why ``value``, a target as the source gave it (text or number), is not a finite number."""
    if isinstance(value, str):
        if not value.strip():
            return f"target is empty ({value!r})"
        try:
            number = float(value)  # pandas reads an overflowing "1e400" as NaN; Python says inf
        except ValueError:
            return f"target {value!r} is not a number"
        if math.isnan(number):
            return f"target {value!r} is not a number"
        return f"target {value!r} is not finite (reads as {number!r})"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "target is missing (null/NaN)"
    return f"target {value!r} is not finite"


def _raw(row: dict) -> str:
    """The row as the source gave it, as JSON (targets keep their text; NaN becomes null)."""
    return json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()},
                      default=str)


def validate_records(records: pd.DataFrame, task_types: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``records`` into (clean, quarantine).

    Args:
        records: long records with the RECORDS_SCHEMA columns; ``target`` may be numbers or the
            source's text (converted here).
        task_types: dataset_id -> "regression" | "classification".
    Returns:
        clean records (same columns, float64 targets, exact duplicates collapsed) and a
        QUARANTINE_SCHEMA frame whose ``raw`` holds each rejected row as given.
    """
    records = records.reset_index(drop=True)
    original = records  # kept for details and raw: targets as the source wrote them
    reasons: list[tuple[int, str, str]] = []
    bad = np.zeros(len(records), dtype=bool)

    def flag(idx: int, reason: str, detail: str) -> None:
        if not bad[idx]:
            bad[idx] = True
            reasons.append((idx, reason, detail))

    targets = pd.to_numeric(records[S.TARGET], errors="coerce").to_numpy(dtype=float)
    parsed = {f: parse_composition(f) for f in pd.unique(records[S.FORMULA])}
    for idx, formula in enumerate(records[S.FORMULA].tolist()):
        problem = parsed.get(formula) or parse_composition(formula)  # .get: NaN != NaN as a dict key
        if problem.reason:
            flag(idx, problem.reason, f"{formula!r}: {problem.detail}")
    for idx in np.flatnonzero(~np.isfinite(targets)):
        flag(int(idx), "nonfinite_target", target_problem(original.at[int(idx), S.TARGET]))
    for idx, (dataset, value) in enumerate(zip(records[S.DATASET_ID], targets)):
        if task_types.get(dataset) == "classification" and np.isfinite(value) and value not in (0.0, 1.0):
            flag(idx, "invalid_label", f"classification target {value!r} is not 0 or 1")
    if S.STRUCTURE_JSON in records:
        for idx, text in records[S.STRUCTURE_JSON].items():
            if isinstance(text, str) and not bad[idx]:
                problem = structure_problem(text)
                if problem:
                    flag(int(idx), "bad_structure", problem)

    records = records.assign(**{S.TARGET: targets})
    _flag_conflicts(records, bad, parsed, flag)

    quarantine = pd.DataFrame(
        [
            {S.RECORD_ID: str(original.at[i, S.RECORD_ID]), S.DATASET_ID: str(original.at[i, S.DATASET_ID]),
             S.REASON: reason, S.DETAIL: detail, S.RAW: _raw(original.loc[i].to_dict())}
            for i, reason, detail in sorted(reasons)
        ],
        columns=[f.name for f in S.QUARANTINE_SCHEMA],
    )
    clean = records[~bad].drop_duplicates(subset=[S.RECORD_ID]).reset_index(drop=True)
    return clean, quarantine


def _flag_conflicts(records: pd.DataFrame, bad: np.ndarray, parsed: dict, flag) -> None:
    """Flag every copy in a group (see the module docstring) whose targets disagree beyond the tolerance."""
    live = records[~bad]
    if live.empty:
        return
    by_dataset = live.groupby(S.DATASET_ID)[S.TARGET]
    dataset_spread = (by_dataset.transform("max") - by_dataset.transform("min")).to_numpy()
    dataset_iqr = (by_dataset.transform(lambda v: v.quantile(0.75)) -
                   by_dataset.transform(lambda v: v.quantile(0.25))).to_numpy()
    material_ids: dict = {}  # reduced composition -> small int, one per distinct formula
    by_formula = {f: material_ids.setdefault(composition_key(p), len(material_ids))
                  for f, p in parsed.items() if p.reason is None}
    keys = {
        "record_id": [live[S.RECORD_ID].astype(str)],
        "dataset_id/material_id": [live[S.DATASET_ID], live[S.MATERIAL_ID]],
        "dataset_id/reduced formula": [live[S.DATASET_ID], live[S.FORMULA].map(by_formula),
                                       live[S.STRUCTURE_JSON].fillna(""), live[S.MATERIAL_ID].fillna("")],
    }
    target = live[S.TARGET].to_numpy()
    for name, columns in keys.items():
        frame = pd.DataFrame({f"k{i}": c.to_numpy() for i, c in enumerate(columns)})
        present = np.flatnonzero(frame.notna().all(axis=1).to_numpy())  # positions in live
        if not len(present):
            continue
        group = frame.iloc[present].groupby(list(frame.columns), sort=False).ngroup().to_numpy()
        values = pd.Series(target[present])
        high = values.groupby(group).transform("max").to_numpy()
        low = values.groupby(group).transform("min").to_numpy()
        tol = REL_TOL * np.maximum(np.abs(high), np.abs(low)) + SPREAD_TOL * dataset_spread[present]
        if name == "dataset_id/reduced formula":  # composition-only rows: polymorphs look alike
            anonymous = (live[S.STRUCTURE_JSON].isna() & live[S.MATERIAL_ID].isna()).to_numpy()[present]
            tol = tol + np.where(anonymous, POLYMORPH_IQR_TOL * dataset_iqr[present], 0.0)
        copies: dict[int, list[int]] = {}
        for at in np.flatnonzero((high - low) > tol):
            copies.setdefault(int(group[at]), []).append(int(present[at]))
        for positions in copies.values():
            rows = live.iloc[positions]
            detail = _conflict_detail(name, rows)
            for idx in rows.index:
                flag(int(idx), "conflicting_duplicate", detail)


def _conflict_detail(name: str, rows: pd.DataFrame) -> str:
    first = rows.iloc[0]
    if name == "record_id":
        what = first[S.RECORD_ID]
    elif name == "dataset_id/material_id":
        what = f"{first[S.DATASET_ID]}/{first[S.MATERIAL_ID]}"
    else:
        what = f"{first[S.DATASET_ID]}/{'='.join(sorted(set(map(str, rows[S.FORMULA]))))}"
    pairs = list(zip(rows[S.TARGET], rows[S.RECORD_ID]))
    values = ", ".join(f"{float(t)!r} ({r})" for t, r in pairs[:_MAX_LISTED])
    more = f" and {len(pairs) - _MAX_LISTED} more" if len(pairs) > _MAX_LISTED else ""
    rule = (f"{POLYMORPH_IQR_TOL:g} interquartile ranges of the dataset" if name == "dataset_id/reduced formula"
            else f"{REL_TOL:g} relative + {SPREAD_TOL:g} of the dataset's spread")
    return f"{name} {what!r} has {len(pairs)} copies with conflicting targets: {values}{more} (tolerance: {rule})"
