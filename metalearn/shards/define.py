"""Task definition: few-shot tasks (one property on one chemistry group), split and standardised.

A task is ``<dataset_id>|<group>``: the records of one dataset (a property from one source) on
one chemistry group (:func:`metalearn.chemistry.chemistry_group`), or ``<dataset_id>|all`` for
datasets too small to cut. Splits are by task (:mod:`metalearn.shards.split`), stored once in the
index:

* ``meta-test-property``: whole property families never seen in training (setting a);
* ``meta-test-chemistry``: training families on a held-out chemistry group (setting b); rows of
  that group are removed from every training task, so formula+property never crosses the split;
* ``meta-val``: whole families used only for early stopping and hyperparameter choice.

Every record that does not end up in a task is returned in an excluded table with its reason
(``schema.EXCLUDED_REASONS``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from metalearn import io
from metalearn import schema as S
from metalearn.chemistry import chemistry_group, parse_formula
from metalearn.shards.split import assign_splits


@dataclass(frozen=True)
class ShardConfig:
    """How tasks are cut and split. Defaults are documented in README (glossary: task)."""

    min_task_rows: int = 40  # a chemistry group needs this many rows to become its own task
    whole_property_below: int = 300  # datasets smaller than this are one task ("<dataset>|all")
    max_task_rows: int = 600  # seeded cap per task: few-shot episodes never need more
    test_families: tuple[str, ...] = ("shear_modulus", "thermal_conductivity", "refractive_index", "glass_forming")
    val_families: tuple[str, ...] = ("volume", "dielectric_constant", "piezoelectric")
    test_chemistry: str = "pnictide"
    seed: int = 0


def config_key(cfg: ShardConfig) -> str:
    """The config's part of the shards directory name (``WorkDir.shards(..., config_key)``)."""
    return io.hash_json(asdict(cfg))[:12]


def _materials_table(records: pd.DataFrame) -> pd.DataFrame:
    """Reduced formula and chemistry group per record (parsing each distinct formula once)."""
    parsed = {f: parse_formula(f) for f in records[S.FORMULA].unique()}
    reduced = records[S.FORMULA].map(lambda f: parsed[f][0])
    groups = records[S.FORMULA].map(lambda f: chemistry_group(parsed[f][1]))
    return records.assign(**{S.REDUCED_FORMULA: reduced, S.GROUP: groups})


def _dedupe(rows: pd.DataFrame, task_type: str, family: str) -> pd.DataFrame:
    """One row per material within a dataset: median target (regression) or majority label.

    The material is the reduced formula (polymorphs collapse: composition features cannot tell them
    apart), except for adsorption energies, where it is the adsorbate+surface system id.
    """
    key = S.MATERIAL_ID if family == "adsorption_energy" else S.REDUCED_FORMULA
    agg = (lambda s: float(s.mean() >= 0.5)) if task_type == "classification" else "median"
    first = rows.drop_duplicates(key).set_index(key)
    first[S.Y_RAW] = rows.groupby(key)[S.TARGET].agg(agg)
    return first.reset_index()


def _transform(rows: pd.DataFrame, transform: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the target transform; rows it cannot take (log10 of <= 0) are returned as excluded."""
    if transform == "log10":
        ok = rows[S.Y_RAW] > 0
        kept = rows[ok].assign(**{S.Y: np.log10(rows.loc[ok, S.Y_RAW])})
        return kept, rows[~ok]
    return rows.assign(**{S.Y: rows[S.Y_RAW]}), rows.iloc[0:0]


def define_tasks(records: pd.DataFrame, properties: pd.DataFrame, cfg: ShardConfig
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Cut records into tasks and split them.

    Returns:
        (rows, index, excluded): rows carry task_id/task_key/y/y_raw and the record columns;
        index has one row per task; excluded has record_id, dataset_id, reason for every record
        left out.

    Raises:
        ValueError: a family is both a test and a validation family.
    """
    records = _materials_table(records)
    meta = properties.set_index(S.DATASET_ID)
    excluded, tasks_rows, index_rows = [], [], []

    def exclude(frame: pd.DataFrame, reason: str) -> None:
        assert reason in S.EXCLUDED_REASONS, reason  # the documented codes, nothing ad hoc
        if len(frame):
            excluded.append(frame[[S.RECORD_ID, S.DATASET_ID]].assign(**{S.REASON: reason}))

    for dataset_id, rows in records.groupby(S.DATASET_ID, sort=True):
        prop = meta.loc[dataset_id]
        deduped = _dedupe(rows, prop[S.TASK_TYPE], prop[S.FAMILY])
        exclude(rows[~rows[S.RECORD_ID].isin(deduped[S.RECORD_ID])], "duplicate_material_merged")
        deduped, bad = _transform(deduped, prop[S.TRANSFORM])
        exclude(bad, "nonpositive_for_log10")
        if len(deduped) < cfg.whole_property_below:
            parts = [("all", deduped)]
        else:
            parts = list(deduped.groupby(S.GROUP, sort=True))
        for group, part in parts:
            if len(part) < cfg.min_task_rows:
                exclude(part, "task_too_small")
                continue
            if len(part) > cfg.max_task_rows:
                keep = part.sample(n=cfg.max_task_rows, random_state=cfg.seed)
                exclude(part.drop(keep.index), "over_task_row_cap")
                part = keep
            task_id = f"{dataset_id}|{group}"
            tasks_rows.append(part.assign(**{S.TASK_ID: task_id}))
            index_rows.append({S.TASK_ID: task_id, S.DATASET_ID: dataset_id, S.GROUP: group, S.N_ROWS: len(part),
                               **{c: prop[c] for c in (S.PROPERTY, S.PROPERTY_KEY, S.UNIT, S.TASK_TYPE,
                                                       S.SOURCE_DB, S.FAMILY, S.TRANSFORM)}})
    rows = pd.concat(tasks_rows, ignore_index=True)
    index = pd.DataFrame(index_rows)
    rows, index, leaked = assign_splits(rows, index, test_families=cfg.test_families,
                                        val_families=cfg.val_families, test_chemistry=cfg.test_chemistry,
                                        min_task_rows=cfg.min_task_rows)
    exclude(leaked, "held_out_chemistry")
    index[S.TASK_KEY] = [f"t{i:04d}" for i in range(len(index))]
    rows = rows.merge(index[[S.TASK_ID, S.TASK_KEY]], on=S.TASK_ID)
    excluded_frame = pd.concat(excluded, ignore_index=True) if excluded else \
        pd.DataFrame(columns=[S.RECORD_ID, S.DATASET_ID, S.REASON])
    return rows, index, excluded_frame


def feature_stats(rows: pd.DataFrame, index: pd.DataFrame, feature_names: list[str]) -> pd.DataFrame:
    """Per-feature mean/std from meta-train tasks only (no val/test statistics leak into inputs)."""
    train_ids = index.loc[index[S.SPLIT] == S.META_TRAIN, S.TASK_ID]
    train = rows.loc[rows[S.TASK_ID].isin(train_ids), feature_names].to_numpy(dtype=np.float64)
    mean = np.nanmean(train, axis=0)
    std = np.nanstd(train, axis=0)
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    return pd.DataFrame({S.FEATURE: feature_names, S.MEAN: mean, S.STD: std})
