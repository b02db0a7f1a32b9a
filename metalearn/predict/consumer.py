"""Predicting from plain formulas in CSV files: read, check, adapt once, predict in chunks, write.

:func:`predict_csv` is the CLI's ``metalearn predict``. It reads ``support.csv`` (``formula,target``,
optional ``cif``) whole and ``query.csv`` (``formula``, optional ``cif``) in chunks, so a query of
any length runs in bounded memory; the support rows and the first query chunk are checked before
the model is loaded, so a bad input fails fast. Every refusal is an :class:`InputError` naming the
file, line and reason (see :mod:`metalearn.predict.table` for the rules and
:mod:`metalearn.predict.csv_io` for the file checks). The output (``formula, prediction`` and
``uncertainty`` where the learner has one) is written atomically and is never one of the inputs.
No mlflow here.

Example:
    >>> summary = predict_csv(load_local_model("models:/metalearn@champion"), "support.csv", "query.csv", "out.csv")
    >>> summary.n_predictions, summary.columns
    (3, ['formula', 'prediction', 'uncertainty'])
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metalearn.predict.csv_io import Row, atomic_text, check_output_path, chunks, count_lines, iter_rows
from metalearn.predict.predictor import CHUNK_ROWS, Predictor, aligned_chunk
from metalearn.predict.table import (
    CIF,
    FORMULA,
    QUERY,
    ROLE,
    SUPPORT,
    TARGET,
    InputError,
    Task,
    build_task,
    cell_text,
    choose_task_type,
    parse_targets,
    resolve_formulas,
)

Progress = Callable[[int, int], None]


@dataclass
class PredictionSummary:
    """What :func:`predict_csv` wrote: row count, columns, the output path and any warnings."""

    n_predictions: int
    columns: list[str]
    output: Path
    warnings: list[str] = field(default_factory=list)


def _cells(rows: list[Row], has_cif: bool) -> tuple[list[str], list[str | None] | None]:
    formulas = [r.cells.get(FORMULA, "") for r in rows]
    return formulas, ([r.cells.get(CIF, "") for r in rows] if has_cif else None)


def _clean(cifs: list[str | None] | None) -> list[str | None] | None:
    return None if cifs is None else [cell_text(c) or None for c in cifs]


def read_support(support_csv: Path) -> tuple[Task, Callable[[int], str]]:
    """The support rows as a Task without query rows, and the namer of a support row (file and line).

    InputError names the file, line and reason of the first bad row.
    """
    header, rows = iter_rows(support_csv, (FORMULA, TARGET), "--support")
    support = list(rows)
    has_cif = CIF in header

    def where(i: int) -> str:
        return f"--support {support_csv} line {support[i].line}"

    if not support:
        raise InputError(f"--support {support_csv}: no support rows; adapting needs at least 2")
    raw, cifs = _cells(support, has_cif)
    formulas = resolve_formulas(raw, cifs, where)
    y = parse_targets([r.cells[TARGET] for r in support], where)
    return build_task(formulas, _clean(cifs), y, [], None, where), where


def read_inputs(support_csv: str | Path, query_csv: str | Path) -> pd.DataFrame:
    """Both CSVs as one support/query table (the pyfunc's input), checked; for small queries."""
    task, _ = read_support(Path(support_csv))
    header, rows = iter_rows(Path(query_csv), (FORMULA,), "--query")
    query = list(rows)
    raw, cifs = _cells(query, CIF in header)
    formulas = resolve_formulas(raw, cifs, lambda i: f"--query {query_csv} line {query[i].line}", query=True)
    table = pd.DataFrame({ROLE: [SUPPORT] * len(task.support_formulas) + [QUERY] * len(formulas),
                          FORMULA: task.support_formulas + formulas,
                          TARGET: np.concatenate([task.y_support, np.full(len(formulas), np.nan)])})
    if task.support_cifs is not None or cifs is not None:
        table[CIF] = (task.support_cifs or [None] * len(task.support_formulas)) + (_clean(cifs) or [None] * len(formulas))
    return table


def _predictor_of(model: Any) -> Predictor | None:
    if isinstance(model, Predictor):
        return model
    return getattr(model, "predictor", None) if isinstance(getattr(model, "predictor", None), Predictor) else None


class _PyfuncChunks:
    """Any ``predict(table, params=...)`` model, fed support + one query chunk per call (re-adapts each time)."""

    def __init__(self, model: Any, task: Task, params: dict[str, str]) -> None:
        self.model, self.task, self.params = model, task, params

    def __call__(self, formulas: list[str], cifs: list[str | None] | None, where: Callable[[int], str]
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        t = self.task
        table = pd.DataFrame({ROLE: [SUPPORT] * len(t.support_formulas) + [QUERY] * len(formulas),
                              FORMULA: t.support_formulas + formulas,
                              TARGET: np.concatenate([t.y_support, np.full(len(formulas), np.nan)])})
        if t.support_cifs is not None or cifs is not None:
            table[CIF] = (t.support_cifs or [None] * len(t.support_formulas)) + (cifs or [None] * len(formulas))
        pred = pd.DataFrame(self.model.predict(table, params=self.params))
        if len(pred) != len(formulas):
            raise RuntimeError(f"the model returned {len(pred)} predictions for {len(formulas)} query rows")
        sd = pred["uncertainty"].to_numpy(float) if "uncertainty" in pred.columns else None
        return pred["prediction"].to_numpy(float), sd


def predict_csv(model: Any, support_csv: str | Path, query_csv: str | Path, output_csv: str | Path,
                task_type: str | None = None, transform: str = "none", chunk_rows: int = CHUNK_ROWS,
                on_progress: Progress | None = None) -> PredictionSummary:
    """Adapt ``model`` on support.csv once and write predictions for query.csv to output_csv.

    Args:
        model: a :class:`Predictor`, an object with one as ``.predictor`` (``MetalearnModel``), any
            object with ``predict(table, params=...)`` (an MLflow pyfunc: it re-adapts per chunk),
            or a zero-argument callable returning one, called only after the support rows and the
            first query chunk are checked.
        task_type: "regression" | "classification" | None (None: classification for 0/1 targets).
        transform: "none" | "log10": the property's target transform (regression only).
        chunk_rows: query rows per step (memory bound), rounded up to a multiple of PREDICT_BATCH
            (256); the output does not depend on it, bit for bit.
        on_progress: called as ``(query rows done, estimated total)`` after each chunk.

    Returns:
        A :class:`PredictionSummary`; the rows are in ``output_csv`` (one per query row, in order).
    """
    support_csv, query_csv, output_csv = Path(support_csv), Path(query_csv), Path(output_csv)
    if chunk_rows < 1:
        raise InputError(f"--chunk-rows {chunk_rows}: must be at least 1")
    chunk_rows = aligned_chunk(chunk_rows)
    check_output_path(output_csv, {"--support": support_csv, "--query": query_csv})
    task, where_support = read_support(support_csv)
    if task_type is not None:
        choose_task_type(task.y_support, task_type)
    if transform not in ("none", "log10"):
        raise InputError(f"--transform {transform!r} is not one of ('none', 'log10')")
    header, rows = iter_rows(query_csv, (FORMULA,), "--query")
    has_cif = CIF in header
    batches = chunks(rows, chunk_rows)
    first = next(batches, None)
    if first is None:
        raise InputError(f"--query {query_csv}: no query rows to predict")
    checked = _check_chunk(first, has_cif, query_csv)  # before the (possibly slow) model load
    if callable(model) and not hasattr(model, "predict") and not isinstance(model, Predictor):
        model = model()
    predictor = _predictor_of(model)
    if predictor is not None:
        adapted = predictor.adapt(task, task_type, transform, where_support)

        def predict(formulas, cifs, where):
            return predictor.predict_rows(adapted, formulas, cifs, where)
    else:
        predict = _PyfuncChunks(model, task, {"task_type": task_type or "auto", "transform": transform})
    total = max(count_lines(query_csv) - 1, 1)
    done, columns = 0, None
    with atomic_text(output_csv) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        batch = first
        while batch is not None:
            formulas, cifs = checked if batch is first else _check_chunk(batch, has_cif, query_csv)

            def where(i: int, batch: list[Row] = batch) -> str:
                return f"--query {query_csv} line {batch[i].line}"

            mu, sd = predict(formulas, cifs, where)
            bad = ~np.isfinite(mu) if sd is None else ~(np.isfinite(mu) & np.isfinite(sd))
            if bad.any():  # the Predictor checks this itself; a foreign pyfunc may not
                i = int(np.flatnonzero(bad)[0])
                raise InputError(f"{where(i)}: the model gave a non-finite prediction for {formulas[i]!r}")
            if columns is None:
                columns = [FORMULA, "prediction"] + (["uncertainty"] if sd is not None else [])
                writer.writerow(columns)
            for j, formula in enumerate(formulas):
                writer.writerow([formula, repr(float(mu[j]))] + ([repr(float(sd[j]))] if sd is not None else []))
            done += len(batch)
            if on_progress is not None:
                on_progress(done, max(total, done))
            batch = next(batches, None)
    return PredictionSummary(done, columns or [], output_csv, list(task.warnings))


def _check_chunk(batch: list[Row], has_cif: bool, query_csv: Path) -> tuple[list[str], list[str | None] | None]:
    raw, cifs = _cells(batch, has_cif)
    formulas = resolve_formulas(raw, cifs, lambda i: f"--query {query_csv} line {batch[i].line}", query=True)
    return formulas, _clean(cifs)


__all__ = ["PredictionSummary", "predict_csv", "read_inputs", "read_support"]
