"""Training rows of the transfer representation: one row per (dataset, material), target transformed.

A *material* here is the reduced formula: the representation sees composition only, so polymorphs
collapse into one row (median target; majority label for classification), as in
:mod:`metalearn.shards.define`. The dataset's own ``transform`` ("log10") is applied first and
rows it cannot take (log10 of <= 0) are dropped and counted.

Which datasets a representation may learn from is the caller's decision (leakage control):
``exclude_families`` removes every dataset of those property families; ``datasets`` is an
explicit allow-list.

Example:
    >>> rows, dropped = training_rows(records, properties, exclude_families=("band_gap",))
    >>> sorted(rows.columns)
    ['dataset_id', 'family', 'material_key', 'task_type', 'y', 'y_raw']
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from metalearn import schema as S
from metalearn.chemistry import parse_formula

MATERIAL_KEY = "material_key"  # reduced formula
Y = "y"  # target after the dataset's transform (what a member model learns)
Y_RAW = "y_raw"  # target in the property's unit
ROW_COLUMNS = [S.DATASET_ID, S.FAMILY, S.TASK_TYPE, MATERIAL_KEY, Y, Y_RAW]


def material_keys(formulas: Iterable[str]) -> pd.Series:
    """Reduced formula per input formula (None where pymatgen cannot parse it); each distinct formula parsed once."""
    formulas = pd.Series(list(formulas), dtype=object)
    parsed = {}
    for f in formulas.unique():
        try:
            parsed[f] = parse_formula(f)[0]
        except (ValueError, TypeError, KeyError):
            parsed[f] = None
    return formulas.map(parsed)


def select_datasets(properties: pd.DataFrame, *, exclude_families: Iterable[str] = (),
                    datasets: Iterable[str] | None = None) -> pd.DataFrame:
    """The property rows a representation may learn from (``exclude_families`` wins over ``datasets``)."""
    excluded = set(exclude_families)
    keep = ~properties[S.FAMILY].isin(excluded)
    if datasets is not None:
        wanted = set(datasets)
        unknown = wanted - set(properties[S.DATASET_ID])
        if unknown:
            raise ValueError(f"datasets {sorted(unknown)} are not in the properties table")
        keep &= properties[S.DATASET_ID].isin(wanted)
    return properties[keep].reset_index(drop=True)


def training_rows(records: pd.DataFrame, properties: pd.DataFrame, *, exclude_families: Iterable[str] = (),
                  datasets: Iterable[str] | None = None, min_rows: int = 300
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deduplicated, transformed rows per allowed dataset.

    Args:
        records: raw records (``metalearn.schema`` columns).
        properties: the properties table (dataset_id, family, task_type, transform, ...).
        exclude_families: families whose datasets must not be learned from.
        datasets: explicit allow-list of dataset ids (None: all).
        min_rows: datasets with fewer deduplicated rows are dropped (too small to transfer from).

    Returns:
        (rows, dropped): rows with :data:`ROW_COLUMNS`, sorted by (dataset_id, material_key);
        dropped has dataset_id, reason, n_rows for everything left out.
    """
    allowed = select_datasets(properties, exclude_families=exclude_families, datasets=datasets)
    meta = allowed.set_index(S.DATASET_ID)
    recs = records[records[S.DATASET_ID].isin(meta.index)]
    keys = material_keys(recs[S.FORMULA]).to_numpy()
    recs = recs.assign(**{MATERIAL_KEY: keys})
    frames, dropped = [], []
    bad = recs[MATERIAL_KEY].isna()
    for dataset_id, n in recs[bad].groupby(S.DATASET_ID).size().items():
        dropped.append((dataset_id, "unparseable_formula", int(n)))
    recs = recs[~bad & np.isfinite(recs[S.TARGET])]
    for dataset_id, part in recs.groupby(S.DATASET_ID, sort=True):
        prop = meta.loc[dataset_id]
        agg = (lambda s: float(s.mean() >= 0.5)) if prop[S.TASK_TYPE] == "classification" else "median"
        y_raw = part.groupby(MATERIAL_KEY)[S.TARGET].agg(agg)
        frame = pd.DataFrame({MATERIAL_KEY: y_raw.index.astype(str), Y_RAW: y_raw.to_numpy(dtype=float)})
        if prop[S.TRANSFORM] == "log10":
            ok = frame[Y_RAW] > 0
            if (~ok).any():
                dropped.append((dataset_id, "nonpositive_for_log10", int((~ok).sum())))
            frame = frame[ok].assign(**{Y: np.log10(frame.loc[ok, Y_RAW])})
        else:
            frame = frame.assign(**{Y: frame[Y_RAW]})
        if len(frame) < min_rows:
            dropped.append((dataset_id, "too_few_rows", len(frame)))
            continue
        frames.append(frame.assign(**{S.DATASET_ID: dataset_id, S.FAMILY: prop[S.FAMILY],
                                      S.TASK_TYPE: prop[S.TASK_TYPE]}))
    if not frames:
        raise ValueError(f"no dataset with >= {min_rows} rows left after exclude_families={sorted(exclude_families)}"
                         f" and datasets={datasets}")
    rows = pd.concat(frames, ignore_index=True)[ROW_COLUMNS]
    rows = rows.sort_values([S.DATASET_ID, MATERIAL_KEY], kind="stable").reset_index(drop=True)
    return rows, pd.DataFrame(dropped, columns=[S.DATASET_ID, "reason", "n_rows"])


def member_target_rule(y: np.ndarray, task_type: str, skew_threshold: float = 1.0) -> str:
    """How a member model sees its target: "log1p" for skewed non-negative regression targets, else "none".

    The rule: regression, every value >= 0, and sample skewness > ``skew_threshold``. A log1p keeps a
    few huge values (thermal conductivity, e_hull) from dominating the squared loss, and its output
    is a better-behaved feature for the linear heads downstream.
    """
    if task_type != "regression":
        return "none"
    y = np.asarray(y, dtype=float)
    if len(y) < 3 or np.min(y) < 0:
        return "none"
    sd = np.std(y)
    if sd <= 0:
        return "none"
    skew = float(np.mean(((y - y.mean()) / sd) ** 3))
    return "log1p" if skew > skew_threshold else "none"
