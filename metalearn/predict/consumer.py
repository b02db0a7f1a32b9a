"""Predicting with a trained model from plain formulas in CSV files: read, check, adapt, write.

:func:`predict_csv` is the CLI's ``metalearn predict``: it reads ``support.csv`` (``formula,target``)
and ``query.csv`` (``formula``) into the model's support/query table (see :mod:`metalearn.predict.predictor`
for the table, its checks and the :class:`Predictor` behind the pyfunc), validates both files
before the (slow) model load, and writes one prediction per query row. No mlflow here: the model is
any object with ``predict(table, params=...)``, e.g. ``registry.load_champion()``.

The table's names (``Predictor``, ``check_table``, ``choose_task_type``, ``featurizer_config``,
``resolve_formulas``, the column constants) stay importable from here.

Example:
    >>> predict_csv(lambda: registry.load_champion(), "support.csv", "query.csv", "predictions.csv")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metalearn import io
from metalearn.predict.predictor import (
    CIF,
    FEATURIZER_FILE,
    FORMULA,
    MIN_SUPPORT,
    QUERY,
    ROLE,
    SUPPORT,
    TARGET,
    TASK_TYPE,
    TASK_TYPES,
    Predictor,
    cell_text,
    check_table,
    choose_task_type,
    featurizer_config,
    parse_targets,
    resolve_formulas,
)

# --- CSV files -----------------------------------------------------------------------------------

def _read_csv(path: Path, required: tuple[str, ...], kind: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the {kind} file is empty; it needs a header with {list(required)}") from None
    frame.columns = [c.strip().lower() for c in frame.columns]
    lacking = [c for c in required if c not in frame.columns]
    if FORMULA in lacking and CIF in frame.columns:
        lacking.remove(FORMULA)
    if lacking:
        raise ValueError(f"{path}: the {kind} file lacks column(s) {lacking}; it has {list(frame.columns)}")
    return frame


def read_inputs(support_csv: str | Path, query_csv: str | Path) -> pd.DataFrame:
    """Read and validate the two CSVs into one support/query table; ValueError names the file, line and why.

    support.csv: ``formula,target`` (optional ``cif``); query.csv: ``formula`` (optional ``cif``).
    Line numbers count the header as line 1.
    """
    support_csv, query_csv = Path(support_csv), Path(query_csv)
    support = _read_csv(support_csv, (FORMULA, TARGET), "support")
    query = _read_csv(query_csv, (FORMULA,), "query")
    if len(support) < MIN_SUPPORT:
        raise ValueError(f"{support_csv}: {len(support)} support row(s); adapting needs at least {MIN_SUPPORT}")
    if len(query) == 0:
        raise ValueError(f"{query_csv}: no query rows to predict")
    parts = []
    for frame, path, role in ((support, support_csv, SUPPORT), (query, query_csv, QUERY)):
        def where(i: int, path: Path = path) -> str:
            return f"{path} line {i + 2}"

        cifs = frame[CIF].tolist() if CIF in frame.columns else None
        formulas = resolve_formulas(frame[FORMULA].tolist() if FORMULA in frame.columns else [""] * len(frame),
                                    cifs, where)
        part = pd.DataFrame({ROLE: role, FORMULA: formulas})
        if cifs is not None:
            part[CIF] = [cell_text(c) or None for c in cifs]
        part[TARGET] = parse_targets(frame[TARGET].tolist(), where) if role == SUPPORT else np.nan
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    if CIF in table.columns:
        table[CIF] = table[CIF].astype(object).where(table[CIF].notna(), None)
    return table


def predict_csv(model: Any, support_csv: str | Path, query_csv: str | Path, output_csv: str | Path,
                task_type: str | None = None, transform: str = "none") -> pd.DataFrame:
    """Adapt ``model`` on support.csv and write predictions for query.csv to output_csv.

    Args:
        model: an object with ``predict(table, params=...)`` (an MLflow pyfunc, a registry model),
            or a zero-argument callable returning one; the callable is called only after both
            CSVs validate, so a bad input fails before the slow model load.
        task_type: "regression" | "classification" | None (None: classification for 0/1 targets).
        transform: "none" | "log10": the property's target transform (regression only).

    Returns:
        The output table: ``formula, prediction`` (+ ``uncertainty``), one row per query row, in order;
        also written (atomically) to ``output_csv``.
    """
    table = read_inputs(support_csv, query_csv)
    if task_type is not None:
        choose_task_type(table.loc[table[ROLE] == SUPPORT, TARGET].to_numpy(), task_type)
    if callable(model) and not hasattr(model, "predict"):
        model = model()
    pred = pd.DataFrame(model.predict(table, params={"task_type": task_type or "auto", "transform": transform}))
    query = table[table[ROLE] == QUERY].reset_index(drop=True)
    if len(pred) != len(query):
        raise RuntimeError(f"the model returned {len(pred)} predictions for {len(query)} query rows")
    out = pd.DataFrame({FORMULA: query[FORMULA], "prediction": pred["prediction"].to_numpy(float)})
    if "uncertainty" in pred.columns and pred["uncertainty"].notna().any():
        out["uncertainty"] = pred["uncertainty"].to_numpy(float)
    io.write_bytes_atomic(Path(output_csv), out.to_csv(index=False).encode())
    return out


__all__ = ["CIF", "FEATURIZER_FILE", "FORMULA", "MIN_SUPPORT", "QUERY", "ROLE", "SUPPORT", "TARGET",
           "TASK_TYPE", "TASK_TYPES", "Predictor", "check_table", "choose_task_type", "featurizer_config",
           "predict_csv", "read_inputs", "resolve_formulas"]
