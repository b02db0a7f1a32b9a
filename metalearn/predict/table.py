"""The model's input table and its checks: every refusal names the row as the user sees it, and why.

The support/query table is the model's one input format (also the MLflow pyfunc signature, see
registry.py):

    role      "support" | "query"
    formula   str, any pymatgen-parseable formula (may be empty where ``cif`` is given)
    cif       str, optional: a CIF; its composition is used when ``formula`` is empty
    target    float, required on support rows, ignored on query rows (property unit; 0/1 labels)
    task_type optional: "regression" | "classification" (one value for the whole table)

Why so strict: a prediction from a misread input is worse than none. A formula is refused for the
reason the features stage would record (the one parser, ``metalearn.chemistry.parse_composition``:
``NaCl0`` is a zero amount, which pymatgen would silently read as Na), a support material listed
twice with different targets is refused,
query cells that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR) are
refused because the output echoes them. Bad input raises :class:`InputError` (a ValueError); the
pyfunc turns it into MLflow's INVALID_PARAMETER_VALUE (HTTP 400 with this message).

Example:
    >>> task = check_table(table)          # Task: support/query formulas, y_support, warnings
    >>> task.query_formulas
    ['ZnO']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from metalearn.chemistry import composition_key, parse_composition
from metalearn.schema import TASK_TYPES

ROLE, FORMULA, CIF, TARGET, TASK_TYPE = "role", "formula", "cif", "target", "task_type"
SUPPORT, QUERY = "support", "query"
MIN_SUPPORT = 2
INJECTION_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

Where = Callable[[int], str]


class InputError(ValueError):
    """Bad user input; the message names the file, row or parameter and the reason, and is shown as is."""


@dataclass
class Task:
    """One checked task: support rows (formulas, optional CIFs, targets) and query rows."""

    support_formulas: list[str]
    support_cifs: list[str | None] | None
    y_support: np.ndarray  # (k,) float64, property unit
    query_formulas: list[str]
    query_cifs: list[str | None] | None
    task_type: str | None = None  # from the table's task_type column, if any
    warnings: list[str] = field(default_factory=list)
    support_rows: list[int] | None = None  # original positions of the support rows kept (repeats removed)


def cell_text(value: Any) -> str:
    """A cell as stripped text; None and NaN -> ""."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()


def refuse_injection(raw: Any, where: str) -> None:
    """Refuse a cell a spreadsheet would evaluate (it is echoed into the output CSV)."""
    if not isinstance(raw, str) or not raw:
        return
    for text in (raw, raw.lstrip(" ")):
        if text and text[0] in INJECTION_PREFIXES:
            raise InputError(f"{where}: cell {raw[:40]!r} starts with {text[0]!r}; refused because a "
                             "spreadsheet would run it as a formula (CSV injection)")


def check_formula(formula: str, where: str) -> None:
    """Refuse what the features stage could not featurize, with the reason it would record."""
    parsed = parse_composition(formula)
    if parsed.reason is not None:
        raise InputError(f"{where}: formula {formula!r} cannot be used: {parsed.reason} ({parsed.detail})")


def resolve_formulas(formulas: Sequence[Any], cifs: Sequence[Any] | None, where: Where,
                     query: bool = False) -> list[str]:
    """One usable formula per row (from the CIF where the formula is empty); InputError names the row.

    ``query``: also refuse cells starting like a spreadsheet formula (query formulas are echoed).
    """
    out = []
    for i, raw in enumerate(formulas):
        raw_cif = cifs[i] if cifs is not None else None
        if query:
            refuse_injection(raw, where(i))
            refuse_injection(raw_cif, where(i))
        formula, cif = cell_text(raw), cell_text(raw_cif)
        if not formula and cif:
            try:
                from pymatgen.core import Structure

                formula = Structure.from_str(cif, fmt="cif").composition.reduced_formula
            except Exception as err:  # noqa: BLE001  pymatgen raises many types on malformed CIFs
                raise InputError(f"{where(i)}: the CIF cannot be parsed ({type(err).__name__}: {err})") from None
        if not formula:
            raise InputError(f"{where(i)}: empty formula (give a formula or a cif)")
        check_formula(formula, where(i))
        out.append(formula)
    return out


def parse_targets(values: Sequence[Any], where: Where) -> np.ndarray:
    """Support targets as float64 (n,); InputError names the row of a missing, non-numeric or infinite one."""
    out = np.empty(len(values))
    for i, value in enumerate(values):
        text = cell_text(value)
        if not text:
            raise InputError(f"{where(i)}: the target is missing; every support row needs one")
        try:
            out[i] = float(text)
        except (TypeError, ValueError):
            raise InputError(f"{where(i)}: target {value!r} is not a number") from None
        if not math.isfinite(out[i]):
            raise InputError(f"{where(i)}: target {value!r} is not finite")
    return out


def material_key(formula: str, cif: str | None) -> tuple:
    """Rows with the same key get the same features: the reduced composition (and the CIF text)."""
    return composition_key(parse_composition(formula)), cif or ""


def dedupe_support(formulas: list[str], cifs: list[str | None] | None, y: np.ndarray, where: Where
                   ) -> tuple[np.ndarray, list[str]]:
    """Keep mask (k,) and warnings: identical repeats are used once; conflicting targets are refused."""
    seen: dict[tuple, int] = {}
    keep = np.ones(len(formulas), dtype=bool)
    warnings = []
    for i, formula in enumerate(formulas):
        key = material_key(formula, cifs[i] if cifs is not None else None)
        j = seen.setdefault(key, i)
        if j == i:
            continue
        if y[i] != y[j]:
            raise InputError(f"{where(i)}: {formula!r} is the same material as {where(j)} ({formulas[j]!r}) "
                             f"with a different target ({y[i]:g} vs {y[j]:g}); keep one of them")
        keep[i] = False
        warnings.append(f"{where(i)} repeats {where(j)} ({formula!r}, target {y[i]:g}); used once")
    return keep, warnings


def choose_task_type(y_support: np.ndarray, task_type: str | None, has_classifier: bool = True) -> str:
    """Explicit ``task_type``, else "classification" when every support target is 0 or 1."""
    if task_type is not None and task_type not in TASK_TYPES:
        raise InputError(f"task_type {task_type!r} is not one of {TASK_TYPES}")
    binary = bool(np.isin(y_support, (0.0, 1.0)).all())
    if task_type == "classification" and not binary:
        raise InputError("task_type 'classification' needs support targets that are all 0 or 1")
    chosen = task_type or ("classification" if binary else "regression")
    if chosen == "classification" and not has_classifier:
        hint = "" if task_type else " (all support targets are 0/1); pass task_type='regression' to treat them as numbers"
        raise InputError(f"this model carries no classification learner{hint}")
    return chosen


def build_task(support_formulas: list[str], support_cifs: list[str | None] | None, y_support: np.ndarray,
               query_formulas: list[str], query_cifs: list[str | None] | None, where_support: Where,
               task_type: str | None = None) -> Task:
    """A Task from checked rows: support repeats removed (with a warning), at least MIN_SUPPORT left."""
    keep, warnings = dedupe_support(support_formulas, support_cifs, y_support, where_support)
    if keep.sum() < MIN_SUPPORT:
        raise InputError(f"{int(keep.sum())} distinct support row(s); adapting needs at least {MIN_SUPPORT}")
    pick = np.flatnonzero(keep)
    return Task([support_formulas[i] for i in pick],
                None if support_cifs is None else [support_cifs[i] for i in pick],
                y_support[keep], query_formulas, query_cifs, task_type, warnings, pick.tolist())


def _table_task_type(table: pd.DataFrame) -> str | None:
    if TASK_TYPE not in table.columns:
        return None
    values = sorted({cell_text(v).lower() for v in table[TASK_TYPE]} - {""})
    if len(values) > 1:
        raise InputError(f"the task_type column holds several values {values}; one table is one task")
    return values[0] if values else None


def check_table(table: pd.DataFrame) -> Task:
    """Validate a support/query table (the pyfunc's input); rows are named like "support row 3 (1-based)"."""
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"the input must be a table with columns role, formula, target; got {type(table).__name__}")
    if ROLE not in table.columns or (FORMULA not in table.columns and CIF not in table.columns):
        raise InputError(f"the input table needs columns 'role' and 'formula' (or 'cif'); it has {list(table.columns)}")
    roles = np.array([cell_text(r).lower() for r in table[ROLE]], dtype=object)
    bad = np.flatnonzero(~np.isin(roles, (SUPPORT, QUERY)))
    if len(bad):
        raise InputError(f"input row {int(bad[0]) + 1} (1-based): role {table[ROLE].iloc[bad[0]]!r} "
                         "is not 'support' or 'query'")
    parts = {}
    for role in (SUPPORT, QUERY):
        pos = np.flatnonzero(roles == role)
        rows = table.iloc[pos]
        formulas = rows[FORMULA].tolist() if FORMULA in rows.columns else [""] * len(rows)
        cifs = rows[CIF].tolist() if CIF in rows.columns else None
        parts[role] = (rows, formulas, cifs)
    n_support, n_query = len(parts[SUPPORT][1]), len(parts[QUERY][1])
    if n_support < MIN_SUPPORT:
        raise InputError(f"the table has {n_support} support row(s); adapting needs at least {MIN_SUPPORT}")
    if n_query == 0:
        raise InputError("the table has no query rows to predict")
    if TARGET not in table.columns:
        raise InputError("the table has no 'target' column; support rows need targets")

    def where(role: str) -> Where:
        return lambda i: f"{role} row {i + 1} (1-based)"

    rows, formulas, cifs = parts[SUPPORT]
    support = resolve_formulas(formulas, cifs, where(SUPPORT))
    y_support = parse_targets(rows[TARGET].tolist(), where(SUPPORT))
    _, q_formulas, q_cifs = parts[QUERY]
    query = resolve_formulas(q_formulas, q_cifs, where(QUERY), query=True)
    clean = (lambda cs: None if cs is None else [cell_text(c) or None for c in cs])
    return build_task(support, clean(cifs), y_support, query, clean(q_cifs), where(SUPPORT),
                      _table_task_type(table))


