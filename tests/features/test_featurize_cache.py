"""The features stage: incremental cache, resume after a kill, no-op on existing output, errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
from feature_support import make_snapshot, records_frame

import metalearn.features.plan as F
from metalearn.features.assemble import assemble_features
from metalearn.features.composition import FEATURE_SET_VERSION, composition_feature_names
from metalearn.features.keys import material_keys
from metalearn.features.plan import FeaturePlan, FeaturizeConfig, featurize_chunk, plan_features
from metalearn.features.stage import build_features
from metalearn.features.structure import structure_feature_names
from metalearn.io import (
    read_manifest,
    read_parquet,
    repo_data_dir,
)
from metalearn.layout import WorkDir
from metalearn.schema import (
    FEATURE_ERRORS_FILE,
    FEATURES_FILE,
    MATERIAL_KEY,
    RECORD_KEYS_FILE,
)

CFG = FeaturizeConfig(chunk_size=40, max_error_rate=0.2, structure_features=False)


@pytest.fixture(scope="module")
def formulas() -> list[str]:
    path = repo_data_dir() / "composition" / "crabnet_matbench" / "matbench_expt_gap.csv.gz"
    return pd.read_csv(path, keep_default_na=False)["formula"].drop_duplicates().head(150).tolist()


@pytest.fixture
def work(tmp_path) -> WorkDir:
    return WorkDir.resolve(tmp_path / "work")


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """Rows passed to the composition featurizer, per call: what a run actually featurized."""
    calls: list[int] = []
    real = F.featurize_compositions

    def counting(values):
        calls.append(len(values))
        return real(values)

    monkeypatch.setattr(F, "featurize_compositions", counting)
    return calls


def test_build_writes_every_material_once_and_reruns_are_noops(tmp_path, work, formulas, counted):
    records = records_frame(formulas + formulas[:10] + ["Xx2O", "He"])  # duplicates, unknown element, no data
    snap = make_snapshot(tmp_path / "snap", records)
    progress: list[tuple[int, int]] = []
    out = build_features(snap, work, CFG, on_progress=lambda d, t: progress.append((d, t)))

    assert out == work.feature_table(FEATURE_SET_VERSION, f"{read_manifest(snap).content_hash[:16]}-nostruct")
    features = read_parquet(out / FEATURES_FILE)
    errors = read_parquet(out / FEATURE_ERRORS_FILE)
    keys = read_parquet(out / RECORD_KEYS_FILE)
    assert list(features.columns) == [MATERIAL_KEY, "formula", *composition_feature_names()]
    assert not features.iloc[:, 2:].isna().any().any()
    assert sorted(errors["reason"]) == ["missing_element_data", "unknown_element"]
    assert set(features[MATERIAL_KEY]).isdisjoint(errors[MATERIAL_KEY])
    assert len(features) + len(errors) == len(set(formulas)) + 2 == sum(counted)
    assert keys["material_key"].tolist() == material_keys(records, structure_features=False).tolist()
    assert set(keys[MATERIAL_KEY]) == set(features[MATERIAL_KEY]) | set(errors[MATERIAL_KEY])
    assert progress[0] == (0, sum(counted)) and progress[-1] == (sum(counted), sum(counted))
    manifest = read_manifest(out)
    assert manifest.stage == "features" and manifest.inputs == {"snapshot": read_manifest(snap).content_hash}
    assert manifest.n_rows == len(features) and manifest.counts["n_errors"] == 2
    assert {"matminer", "pymatgen"} <= set(manifest.versions)

    counted.clear()
    assert build_features(snap, work, CFG) == out
    assert counted == [] and read_manifest(out) == manifest  # untouched
    assert plan_features(snap, work, CFG).done


def test_second_snapshot_featurizes_only_new_materials(tmp_path, work, formulas, counted):
    first = build_features(make_snapshot(tmp_path / "a", records_frame(formulas[:120])), work, CFG)
    before = sum(counted)
    new = ["Fe2O3", "LiFePO4", "Hg0.7Cd0.3Te", "Zr3(Cu2Ge)2", "NaN"]
    new = [f for f in new if f not in formulas[:120]]
    snap_b = make_snapshot(tmp_path / "b", records_frame(formulas[:120] + new, prefix="b"))

    plan = plan_features(snap_b, work, CFG)
    assert (plan.n_materials, plan.n_cached, plan.n_pending) == (120 + len(new), 120, len(new))
    second = build_features(snap_b, work, CFG)
    assert sum(counted) - before == len(new)
    assert second != first
    got = read_parquet(second / FEATURES_FILE)
    assert len(got) == 120 + len(new)
    old = read_parquet(first / FEATURES_FILE).set_index(MATERIAL_KEY)
    pd.testing.assert_frame_equal(got.set_index(MATERIAL_KEY).loc[old.index], old)


def test_killed_run_resumes_from_finished_chunks(tmp_path, work, formulas, counted):
    snap = make_snapshot(tmp_path / "snap", records_frame(formulas))
    plan = plan_features(snap, work, CFG)
    assert len(plan.chunks) == 4 and plan.n_pending == 150
    for chunk in plan.chunks[:2]:  # ... then the process is killed
        featurize_chunk(Path(chunk), Path(plan.cache_dir))
    (Path(plan.cache_dir) / ".tmp-half-written.parquet").write_bytes(b"PAR1 torn")
    with pytest.raises(RuntimeError, match="missing"):
        assemble_features(plan)  # publishes nothing while chunks are missing
    assert not Path(plan.output_dir).exists()

    counted.clear()
    out = build_features(snap, work, CFG)
    assert sum(counted) == 150 - 80
    assert len(read_parquet(out / FEATURES_FILE)) == 150


def test_featurize_chunk_is_idempotent(tmp_path, work, formulas, counted):
    plan = plan_features(make_snapshot(tmp_path / "snap", records_frame(formulas[:30])), work, CFG)
    first = featurize_chunk(Path(plan.chunks[0]), Path(plan.cache_dir))
    stamp = first.stat().st_mtime_ns
    assert featurize_chunk(Path(plan.chunks[0]), Path(plan.cache_dir)) == first
    assert counted == [30] and first.stat().st_mtime_ns == stamp and str(first) in plan.shards


def test_too_many_errors_fail_the_stage_and_publish_nothing(tmp_path, work, formulas):
    bad = ["Xx2O", "Qq", "(Fe", "", "He", "Fe2O3)", "Zz3"]
    snap = make_snapshot(tmp_path / "snap", records_frame(formulas[:20] + bad))
    with pytest.raises(ValueError, match="max_error_rate"):
        build_features(snap, work, CFG)
    assert not Path(plan_features(snap, work, CFG).output_dir).exists()
    lenient = FeaturizeConfig(chunk_size=40, max_error_rate=0.5, structure_features=False)
    out = build_features(snap, work, lenient)
    assert len(read_parquet(out / FEATURE_ERRORS_FILE)) == len(bad)


def test_structure_features_and_plan_json(tmp_path, work, formulas):
    from pymatgen.core import Structure

    cifs = pd.read_csv(
        repo_data_dir() / "structures" / "mp_dielectric_petousis2017.csv.gz",
        keep_default_na=False,
        usecols=["formula", "cif"],
    ).head(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        texts = [Structure.from_str(c, fmt="cif").to_json() for c in cifs["cif"]]
    formulas_ = formulas[:5] + cifs["formula"].tolist() + [cifs["formula"][0]]
    records = records_frame(formulas_, [None] * 5 + texts + [None])
    snap = make_snapshot(tmp_path / "snap", records)
    cfg = FeaturizeConfig(chunk_size=4, structure_features=True)

    plan = plan_features(snap, work, cfg)
    assert FeaturePlan.from_json(plan.to_json()) == plan and json.loads(plan.to_json())["n_pending"] == 9
    out = build_features(snap, work, cfg)
    features = read_parquet(out / FEATURES_FILE).set_index(MATERIAL_KEY)
    assert list(features.columns[1:]) == composition_feature_names() + structure_feature_names()
    keys = material_keys(records, structure_features=True)
    with_structure = features.loc[keys[5:8], structure_feature_names()]
    assert not with_structure.isna().any().any()
    assert features.loc[keys[[0, 8]], structure_feature_names()].isna().all().all()  # no structure: NaN
    # without structure features, a formula with and without structure is one material, and
    # materials without a structure share their cache entries across both modes
    flat_cfg = FeaturizeConfig(chunk_size=4, structure_features=False)
    assert material_keys(records, structure_features=False)[[0, 4, 8]].tolist() == keys[[0, 4, 8]].tolist()
    flat_plan = plan_features(snap, work, flat_cfg)
    assert (flat_plan.n_materials, flat_plan.n_cached, flat_plan.n_pending) == (8, 6, 2)
    flat = build_features(snap, work, flat_cfg)
    assert flat.name.endswith("-nostruct") and len(read_parquet(flat / FEATURES_FILE)) == 8


def test_structure_features_are_off_by_default():
    assert FeaturizeConfig().structure_features is False


def test_fan_out_path_publishes_what_build_features_does(tmp_path, formulas):
    """plan -> featurize_chunk per chunk -> assemble (the Prefect path) == build_features, any chunk size."""
    snap = make_snapshot(tmp_path / "snap", records_frame(formulas + ["Xx2O", "He"]))
    lenient = FeaturizeConfig(chunk_size=40, max_error_rate=0.2)
    work_a, work_b = WorkDir.resolve(tmp_path / "a"), WorkDir.resolve(tmp_path / "b")
    plan = plan_features(snap, work_a, lenient)
    assert len(plan.chunks) == 4 and Path(plan.plan_dir).is_dir()
    for chunk in reversed(plan.chunks):  # order does not matter
        featurize_chunk(Path(chunk), Path(plan.cache_dir))
    fanned = assemble_features(plan)
    assert not Path(plan.plan_dir).exists()  # the run that owned the plan folder removed it
    built = build_features(snap, work_b, FeaturizeConfig(chunk_size=7, max_error_rate=0.2))
    assert read_manifest(fanned).content_hash == read_manifest(built).content_hash
    pd.testing.assert_frame_equal(
        read_parquet(fanned / FEATURES_FILE).sort_values(MATERIAL_KEY, ignore_index=True),
        read_parquet(built / FEATURES_FILE).sort_values(MATERIAL_KEY, ignore_index=True),
    )
    assert read_parquet(fanned / RECORD_KEYS_FILE).equals(read_parquet(built / RECORD_KEYS_FILE))
