"""Leakage-free meta-train / meta-val / meta-test splits of tasks (never of rows).

Why families and not datasets: "bulk modulus" from MP, AFLOW and Matbench is one physical
property; if AFLOW's were in training and MP's in test, the test would measure memory, not
adaptation. So a property family lies wholly in one split (setting a, unseen property). Setting b
(unseen chemistry) holds out one chemistry group of the training families: its tasks go to
``meta-test-chemistry`` and its rows are removed from every training task (including the
whole-property "all" tasks), so the same formula+property is never on both sides.
"""

from __future__ import annotations

import pandas as pd

from metalearn import schema as S

SPLITS = ("meta-train", "meta-val", "meta-test-property", "meta-test-chemistry")


def assign_splits(rows: pd.DataFrame, index: pd.DataFrame, cfg) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Add a ``split`` column to the index; return (rows, index, rows removed to avoid leakage).

    Args:
        rows: task rows with ``task_id``, ``group``, ``reduced_formula``.
        index: one row per task with ``task_id``, ``family``, ``group``, ``n_rows``.
        cfg: a ShardConfig (test_families, val_families, test_chemistry, min_task_rows).
    """
    overlap = set(cfg.test_families) & set(cfg.val_families)
    if overlap:
        raise ValueError(f"families {sorted(overlap)} are in both test_families and val_families")

    def split_of(task: pd.Series) -> str:
        if task[S.FAMILY] in cfg.test_families:
            return "meta-test-property"
        if task[S.FAMILY] in cfg.val_families:
            return "meta-val"
        if task["group"] == cfg.test_chemistry:
            return "meta-test-chemistry"
        return "meta-train"

    index = index.assign(split=index.apply(split_of, axis=1))
    # Whole-property ("all") training tasks still contain held-out-chemistry rows: remove them.
    train_tasks = set(index.loc[index["split"] == "meta-train", "task_id"])
    leak = rows["task_id"].isin(train_tasks) & (rows["group"] == cfg.test_chemistry)
    removed, rows = rows[leak], rows[~leak]
    index = index.assign(n_rows=index["task_id"].map(rows.groupby("task_id").size()).fillna(0).astype(int))
    too_small = index["n_rows"] < cfg.min_task_rows
    if too_small.any():
        small_ids = set(index.loc[too_small, "task_id"])
        removed = pd.concat([removed, rows[rows["task_id"].isin(small_ids)]])
        rows = rows[~rows["task_id"].isin(small_ids)]
        index = index[~too_small]
    return rows.reset_index(drop=True), index.reset_index(drop=True), removed


def check_no_leakage(rows: pd.DataFrame, index: pd.DataFrame) -> None:
    """Raise if a family spans splits (other than train/chemistry-test) or a formula+family crosses splits."""
    fam_splits = index.groupby(S.FAMILY)["split"].agg(lambda s: frozenset(s))
    for family, splits in fam_splits.items():
        if len(splits - {"meta-train", "meta-test-chemistry"}) and len(splits) > 1:
            raise AssertionError(f"family {family!r} spans splits {sorted(splits)}")
    merged = rows.merge(index[["task_id", S.FAMILY, "split"]], on="task_id")
    crossing = merged.groupby([S.FAMILY, "reduced_formula"])["split"].nunique()
    if (crossing > 1).any():
        example = crossing[crossing > 1].index[0]
        raise AssertionError(f"formula+family {example} appears in more than one split")
