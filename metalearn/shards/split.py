"""Leakage-free meta-train / meta-val / meta-test splits of tasks (never of rows).

Why families and not datasets: "bulk modulus" from MP, AFLOW and Matbench is one physical
property; if AFLOW's were in training and MP's in test, the test would measure memory, not
adaptation. So a property family lies wholly in one split (setting a, unseen property). Setting b
(unseen chemistry) holds out one chemistry group of the training families: its tasks go to
``meta-test-chemistry`` and its rows are removed from every training task (including the
whole-property "all" tasks), so the same formula+property is never on both sides.

The split names are ``metalearn.schema.SPLITS``. The settings arrive as typed keyword arguments
(``ShardConfig`` fields), so this module needs nothing from :mod:`metalearn.shards.define`.
"""

from __future__ import annotations

import pandas as pd

from metalearn import schema as S


def split_of(family: str, group: str, *, test_families: tuple[str, ...], val_families: tuple[str, ...],
             test_chemistry: str) -> str:
    """The split of one task, from its property family and chemistry group."""
    if family in test_families:
        return S.META_TEST_PROPERTY
    if family in val_families:
        return S.META_VAL
    if group == test_chemistry:
        return S.META_TEST_CHEMISTRY
    return S.META_TRAIN


def assign_splits(rows: pd.DataFrame, index: pd.DataFrame, *, test_families: tuple[str, ...],
                  val_families: tuple[str, ...], test_chemistry: str, min_task_rows: int,
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Add a ``split`` column to the index; return (rows, index, rows removed to avoid leakage).

    Args:
        rows: task rows with ``task_id``, ``group``, ``reduced_formula``.
        index: one row per task with ``task_id``, ``family``, ``group``, ``n_rows``.
        test_families / val_families: property families held out whole (setting a) / for validation.
        test_chemistry: the chemistry group held out of the training families (setting b).
        min_task_rows: tasks left smaller than this by the removal are dropped (rows returned).

    Raises:
        ValueError: a family is both a test and a validation family.
    """
    overlap = set(test_families) & set(val_families)
    if overlap:
        raise ValueError(f"families {sorted(overlap)} are in both test_families and val_families")
    splits = [split_of(family, group, test_families=test_families, val_families=val_families,
                       test_chemistry=test_chemistry)
              for family, group in zip(index[S.FAMILY], index[S.GROUP])]
    index = index.assign(**{S.SPLIT: pd.Series(splits, index=index.index, dtype=object)})
    # Whole-property ("all") training tasks still contain held-out-chemistry rows: remove them.
    train_tasks = set(index.loc[index[S.SPLIT] == S.META_TRAIN, S.TASK_ID])
    leak = rows[S.TASK_ID].isin(train_tasks) & (rows[S.GROUP] == test_chemistry)
    removed, rows = rows[leak], rows[~leak]
    sizes = index[S.TASK_ID].map(rows.groupby(S.TASK_ID).size()).fillna(0).astype(int)
    index = index.assign(**{S.N_ROWS: sizes})
    too_small = index[S.N_ROWS] < min_task_rows
    if too_small.any():
        small_ids = set(index.loc[too_small, S.TASK_ID])
        removed = pd.concat([removed, rows[rows[S.TASK_ID].isin(small_ids)]])
        rows = rows[~rows[S.TASK_ID].isin(small_ids)]
        index = index[~too_small]
    return rows.reset_index(drop=True), index.reset_index(drop=True), removed


def check_no_leakage(rows: pd.DataFrame, index: pd.DataFrame) -> None:
    """Raise if a family spans splits (other than train/chemistry-test) or a formula+family crosses splits."""
    fam_splits = index.groupby(S.FAMILY)[S.SPLIT].agg(lambda s: frozenset(s))
    for family, splits in fam_splits.items():
        if len(splits - {S.META_TRAIN, S.META_TEST_CHEMISTRY}) and len(splits) > 1:
            raise AssertionError(f"family {family!r} spans splits {sorted(splits)}")
    merged = rows.merge(index[[S.TASK_ID, S.FAMILY, S.SPLIT]], on=S.TASK_ID)
    crossing = merged.groupby([S.FAMILY, S.REDUCED_FORMULA])[S.SPLIT].nunique()
    if (crossing > 1).any():
        example = crossing[crossing > 1].index[0]
        raise AssertionError(f"formula+family {example} appears in more than one split")
