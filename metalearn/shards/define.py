"""Task shards: few-shot tasks (one property on one chemistry group) with leakage-free splits.

Layout: ``<workdir>/shards/<snapshot_id>/<feature_set>/<config_hash>/`` holding
``data/`` (Parquet partitioned by ``task_key``), ``tasks.parquet`` (the tasks index),
``feature_stats.parquet`` (meta-train-only standardisation), ``excluded.parquet`` (every record
that did not make it into a task, with its reason) and ``manifest.json``.

Splits are by task, stored once in the index:
* ``meta-test-property``: whole property families never seen in training (setting a);
* ``meta-test-chemistry``: training families on a held-out chemistry group (setting b); rows of
  that group are removed from every training task, so formula+property never crosses the split;
* ``meta-val``: whole families used only for early stopping and hyperparameter choice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metalearn import io
from metalearn import schema as S
from metalearn.chemistry import chemistry_group, parse_formula
from metalearn.shards.split import SPLITS, assign_splits

TASK_ID = "task_id"
TASK_KEY = "task_key"  # filesystem-safe task id, the partition key
GROUP = "group"
SPLIT = "split"
N_ROWS = "n_rows"
REDUCED_FORMULA = "reduced_formula"
Y = "y"  # transformed target used for learning
Y_RAW = "y_raw"  # target in the property's unit


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


def _materials_table(records: pd.DataFrame) -> pd.DataFrame:
    """Reduced formula and chemistry group per record (parsing each distinct formula once)."""
    parsed = {f: parse_formula(f) for f in records[S.FORMULA].unique()}
    reduced = records[S.FORMULA].map(lambda f: parsed[f][0])
    groups = records[S.FORMULA].map(lambda f: chemistry_group(parsed[f][1]))
    return records.assign(**{REDUCED_FORMULA: reduced, GROUP: groups})


def _dedupe(rows: pd.DataFrame, task_type: str, family: str) -> pd.DataFrame:
    """One row per material within a dataset: median target (regression) or majority label.

    The material is the reduced formula (polymorphs collapse: composition features cannot tell them
    apart), except for adsorption energies, where it is the adsorbate+surface system id.
    """
    key = S.MATERIAL_ID if family == "adsorption_energy" else REDUCED_FORMULA
    agg = (lambda s: float(s.mean() >= 0.5)) if task_type == "classification" else "median"
    first = rows.drop_duplicates(key).set_index(key)
    first[Y_RAW] = rows.groupby(key)[S.TARGET].agg(agg)
    return first.reset_index()


def _transform(rows: pd.DataFrame, transform: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the target transform; rows it cannot take (log10 of <= 0) are returned as excluded."""
    if transform == "log10":
        ok = rows[Y_RAW] > 0
        kept = rows[ok].assign(**{Y: np.log10(rows.loc[ok, Y_RAW])})
        return kept, rows[~ok]
    return rows.assign(**{Y: rows[Y_RAW]}), rows.iloc[0:0]


def define_tasks(records: pd.DataFrame, properties: pd.DataFrame, cfg: ShardConfig
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Cut records into tasks and split them.

    Returns:
        (rows, index, excluded): rows carry task_id/y/y_raw and the record columns; index has one
        row per task; excluded has record_id, dataset_id, reason for every record left out.
    """
    records = _materials_table(records)
    meta = properties.set_index(S.DATASET_ID)
    excluded, tasks_rows, index_rows = [], [], []

    def exclude(frame: pd.DataFrame, reason: str) -> None:
        if len(frame):
            excluded.append(frame[[S.RECORD_ID, S.DATASET_ID]].assign(reason=reason))

    for dataset_id, rows in records.groupby(S.DATASET_ID, sort=True):
        prop = meta.loc[dataset_id]
        deduped = _dedupe(rows, prop[S.TASK_TYPE], prop[S.FAMILY])
        exclude(rows[~rows[S.RECORD_ID].isin(deduped[S.RECORD_ID])], "duplicate_material_merged")
        deduped, bad = _transform(deduped, prop[S.TRANSFORM])
        exclude(bad, "nonpositive_for_log10")
        if len(deduped) < cfg.whole_property_below:
            parts = [("all", deduped)]
        else:
            parts = list(deduped.groupby(GROUP, sort=True))
        for group, part in parts:
            if len(part) < cfg.min_task_rows:
                exclude(part, "task_too_small")
                continue
            if len(part) > cfg.max_task_rows:
                keep = part.sample(n=cfg.max_task_rows, random_state=cfg.seed)
                exclude(part.drop(keep.index), "over_task_row_cap")
                part = keep
            task_id = f"{dataset_id}|{group}"
            tasks_rows.append(part.assign(**{TASK_ID: task_id}))
            index_rows.append({TASK_ID: task_id, S.DATASET_ID: dataset_id, GROUP: group, N_ROWS: len(part),
                               **{c: prop[c] for c in (S.PROPERTY, S.PROPERTY_KEY, S.UNIT, S.TASK_TYPE,
                                                       S.SOURCE_DB, S.FAMILY, S.TRANSFORM)}})
    rows = pd.concat(tasks_rows, ignore_index=True)
    index = pd.DataFrame(index_rows)
    rows, index, leaked = assign_splits(rows, index, cfg)
    exclude(leaked, "held_out_chemistry")
    index[TASK_KEY] = [f"t{i:04d}" for i in range(len(index))]
    rows = rows.merge(index[[TASK_ID, TASK_KEY]], on=TASK_ID)
    excluded_frame = pd.concat(excluded, ignore_index=True) if excluded else \
        pd.DataFrame(columns=[S.RECORD_ID, S.DATASET_ID, "reason"])
    return rows, index, excluded_frame


def feature_stats(rows: pd.DataFrame, index: pd.DataFrame, feature_names: list[str]) -> pd.DataFrame:
    """Per-feature mean/std from meta-train tasks only (no val/test statistics leak into inputs)."""
    train_ids = index.loc[index[SPLIT] == "meta-train", TASK_ID]
    train = rows.loc[rows[TASK_ID].isin(train_ids), feature_names].to_numpy(dtype=np.float64)
    mean = np.nanmean(train, axis=0)
    std = np.nanstd(train, axis=0)
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    return pd.DataFrame({"feature": feature_names, "mean": mean, "std": std})


@dataclass(frozen=True)
class ShardsResult:
    path: Path
    manifest: S.Manifest
    created: bool

    def summary(self) -> str:
        counts = self.manifest.counts
        per_split = ", ".join(f"{k}: {v}" for k, v in counts.get("tasks_per_split", {}).items())
        return (f"{counts.get('tasks', 0)} tasks ({per_split}); {counts.get('rows', 0)} rows, "
                f"{counts.get('families', 0)} families, {counts.get('groups', 0)} groups, "
                f"{counts.get('excluded', 0)} records excluded -> {self.path}"
                + ("" if self.created else " (unchanged)"))


def build_shards(snapshot_dir: Path, features_dir: Path, workdir: Path, cfg: ShardConfig | None = None
                 ) -> ShardsResult:
    """Build (or find) the task shards for one snapshot + feature set + config."""
    from metalearn.shards.store import write_shards

    return write_shards(Path(snapshot_dir), Path(features_dir), Path(workdir), cfg or ShardConfig())


def config_hash(cfg: ShardConfig) -> str:
    return io.hash_json(asdict(cfg))[:12]


__all__ = ["SPLITS", "ShardConfig", "ShardsResult", "build_shards", "define_tasks", "feature_stats"]
