"""Task definition and split invariants on real bundled records (no features needed)."""

from __future__ import annotations

import pandas as pd
import pytest

from metalearn import schema as S
from metalearn.chemistry import chemistry_group, parse_formula
from metalearn.ingest import bundled
from metalearn.shards.define import ShardConfig, define_tasks
from metalearn.shards.split import check_no_leakage


@pytest.fixture(scope="module")
def bundled_small():
    records, properties = bundled.load_bundled(max_rows_per_dataset=700, seed=1)
    return records, properties


@pytest.fixture(scope="module")
def defined(bundled_small):
    records, properties = bundled_small
    cfg = ShardConfig(min_task_rows=30, whole_property_below=200, max_task_rows=300)
    return (*define_tasks(records, properties, cfg), cfg, records)


def test_chemistry_rule():
    assert chemistry_group(parse_formula("NaCl")[1]) == "halide"
    assert chemistry_group(parse_formula("Fe2O3")[1]) == "oxide"
    assert chemistry_group(parse_formula("CdTe")[1]) == "chalcogenide"
    assert chemistry_group(parse_formula("GaN")[1]) == "pnictide"
    assert chemistry_group(parse_formula("SiC")[1]) == "carbide_boride_hydride"
    assert chemistry_group(parse_formula("Ni3Al")[1]) == "intermetallic"
    assert chemistry_group(parse_formula("SiGe")[1]) == "other"
    assert parse_formula("Zr3(Cu2Ge)2")[0] == parse_formula("Zr3Cu4Ge2")[0]


def test_tasks_meet_minimum_size_and_have_metadata(defined):
    rows, index, _excluded, cfg, _ = defined
    assert len(index) > 60
    assert (index["n_rows"] >= cfg.min_task_rows).all()
    assert (index["n_rows"] <= cfg.max_task_rows).all()
    counts = rows.groupby("task_id").size()
    assert counts.reindex(index["task_id"]).tolist() == index["n_rows"].tolist()
    for column in (S.FAMILY, S.UNIT, S.TASK_TYPE, S.TRANSFORM, S.SOURCE_DB, "group", "split"):
        assert index[column].notna().all(), column
    assert set(index["split"]) == set(S.SPLITS)


def test_no_material_twice_in_a_task(defined):
    rows = defined[0]
    dup = rows[rows["family"] != "adsorption_energy"] if "family" in rows else rows
    assert not dup.duplicated(["task_id", "reduced_formula"]).any()


def test_families_whole_and_no_formula_property_across_splits(defined):
    rows, index, _, cfg, _ = defined
    check_no_leakage(rows, index)
    test_fams = set(index.loc[index["split"] == "meta-test-property", S.FAMILY])
    assert test_fams == set(cfg.test_families) & set(index[S.FAMILY])
    for family in test_fams:
        assert set(index.loc[index[S.FAMILY] == family, "split"]) == {"meta-test-property"}
    chem = index[index["split"] == "meta-test-chemistry"]
    assert set(chem["group"]) == {cfg.test_chemistry}
    train_rows = rows[rows["task_id"].isin(index.loc[index["split"] == "meta-train", "task_id"])]
    assert not (train_rows["group"] == cfg.test_chemistry).any()


def test_check_no_leakage_detects_a_crossing(defined):
    rows, index, *_ = defined
    train_task = index.loc[index["split"] == "meta-train"].iloc[0]
    val_task = index.loc[index["split"] == "meta-val"].iloc[0]
    forged = index.copy()
    forged.loc[forged["task_id"] == val_task["task_id"], S.FAMILY] = train_task[S.FAMILY]
    with pytest.raises(AssertionError):
        check_no_leakage(rows, forged)


def test_every_record_is_in_a_task_or_excluded_with_reason(defined):
    rows, _index, excluded, _, records = defined
    accounted = set(rows[S.RECORD_ID]) | set(excluded[S.RECORD_ID])
    assert accounted == set(records[S.RECORD_ID])
    assert set(excluded["reason"]) <= set(S.EXCLUDED_REASONS) - {"featurization_failed"}


def test_log10_transform_and_splits_are_seeded(bundled_small):
    records, properties = bundled_small
    cfg = ShardConfig(min_task_rows=30, whole_property_below=200, max_task_rows=300)
    rows_a, index_a, _ = define_tasks(records, properties, cfg)
    _rows_b, index_b, _ = define_tasks(records, properties, cfg)
    pd.testing.assert_frame_equal(index_a, index_b)
    log_tasks = index_a.loc[index_a[S.TRANSFORM] == "log10", "task_id"]
    part = rows_a[rows_a["task_id"].isin(log_tasks)]
    assert ((10 ** part["y"] - part["y_raw"]).abs() < 1e-6 * part["y_raw"].abs().clip(lower=1)).all()


def test_overlapping_test_and_val_families_are_rejected(bundled_small):
    records, properties = bundled_small
    with pytest.raises(ValueError, match="both"):
        define_tasks(records, properties, ShardConfig(test_families=("volume",), val_families=("volume",)))
