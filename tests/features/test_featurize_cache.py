"""The features stage: incremental cache, resume after a kill, no-op on existing output, errors."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

import metalearn.features.plan as F
from metalearn.features.plan import (
    FeaturePlan,
    FeaturizeConfig,
    assemble_features,
    build_features,
    composition_feature_names,
    featurize_chunk,
    material_keys,
    plan_features,
    structure_feature_names,
)
from metalearn.io import (
    hash_frame,
    read_manifest,
    read_parquet,
    repo_data_dir,
    write_manifest,
    write_parquet_atomic,
)
from metalearn.schema import MATERIAL_KEY, RECORDS_SCHEMA, Manifest

CFG = FeaturizeConfig(chunk_size=40, max_error_rate=0.2, structure_features=False)


def _records(
    formulas: list[str], structures: list[str | None] | None = None, prefix: str = "r"
) -> pd.DataFrame:
    n = len(formulas)
    return pd.DataFrame(
        {
            "record_id": [f"{prefix}{i}" for i in range(n)],
            "dataset_id": "matbench_expt_gap",
            "material_id": None,
            "formula": formulas,
            "structure_json": structures if structures is not None else [None] * n,
            "target": [float(i) for i in range(n)],
            "orig_split": "all",
        }
    )


def make_snapshot(directory: Path, records: pd.DataFrame) -> Path:
    """A minimal snapshot: records.parquet (RECORDS_SCHEMA) + manifest.json with a content hash."""
    directory.mkdir(parents=True)
    write_parquet_atomic(directory / "records.parquet", records, schema=RECORDS_SCHEMA)
    write_manifest(
        directory,
        Manifest(
            stage="raw",
            source="test",
            content_hash=hash_frame(records),
            n_rows=len(records),
            created=datetime.now(UTC).isoformat(),
        ),
    )
    return directory


@pytest.fixture(scope="module")
def formulas() -> list[str]:
    path = repo_data_dir() / "composition" / "crabnet_matbench" / "matbench_expt_gap.csv.gz"
    return pd.read_csv(path, keep_default_na=False)["formula"].drop_duplicates().head(150).tolist()


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


def test_build_writes_every_material_once_and_reruns_are_noops(tmp_path, formulas, counted):
    records = _records(formulas + formulas[:10] + ["Xx2O", "He"])  # duplicates, unknown element, no data
    snap = make_snapshot(tmp_path / "snap", records)
    progress: list[tuple[int, int]] = []
    out = build_features(snap, tmp_path / "work", CFG, on_progress=lambda d, t: progress.append((d, t)))

    assert (
        out
        == tmp_path
        / "work"
        / "features"
        / F.FEATURE_SET_VERSION
        / f"{read_manifest(snap).content_hash[:16]}-nostruct"
    )
    features = read_parquet(out / "features.parquet")
    errors = read_parquet(out / "errors.parquet")
    keys = read_parquet(out / "record_keys.parquet")
    assert list(features.columns) == [MATERIAL_KEY, "formula", *composition_feature_names()]
    assert not features.iloc[:, 2:].isna().any().any()
    assert sorted(errors["reason"]) == ["missing_element_data", "unknown_element"]
    assert set(features[MATERIAL_KEY]).isdisjoint(errors[MATERIAL_KEY])
    assert len(features) + len(errors) == len(set(formulas)) + 2 == sum(counted)
    assert keys["material_key"].tolist() == material_keys(records, CFG).tolist()
    assert set(keys[MATERIAL_KEY]) == set(features[MATERIAL_KEY]) | set(errors[MATERIAL_KEY])
    assert progress[0] == (0, sum(counted)) and progress[-1] == (sum(counted), sum(counted))
    manifest = read_manifest(out)
    assert manifest.stage == "features" and manifest.inputs == {"snapshot": read_manifest(snap).content_hash}
    assert manifest.n_rows == len(features) and manifest.counts["n_errors"] == 2
    assert {"matminer", "pymatgen"} <= set(manifest.versions)

    counted.clear()
    assert build_features(snap, tmp_path / "work", CFG) == out
    assert counted == [] and read_manifest(out) == manifest  # untouched
    assert plan_features(snap, tmp_path / "work", CFG).done


def test_second_snapshot_featurizes_only_new_materials(tmp_path, formulas, counted):
    work = tmp_path / "work"
    first = build_features(make_snapshot(tmp_path / "a", _records(formulas[:120])), work, CFG)
    before = sum(counted)
    new = ["Fe2O3", "LiFePO4", "Hg0.7Cd0.3Te", "Zr3(Cu2Ge)2", "NaN"]
    new = [f for f in new if f not in formulas[:120]]
    snap_b = make_snapshot(tmp_path / "b", _records(formulas[:120] + new, prefix="b"))

    plan = plan_features(snap_b, work, CFG)
    assert (plan.n_materials, plan.n_cached, plan.n_pending) == (120 + len(new), 120, len(new))
    second = build_features(snap_b, work, CFG)
    assert sum(counted) - before == len(new)
    assert second != first
    got = read_parquet(second / "features.parquet")
    assert len(got) == 120 + len(new)
    old = read_parquet(first / "features.parquet").set_index(MATERIAL_KEY)
    pd.testing.assert_frame_equal(got.set_index(MATERIAL_KEY).loc[old.index], old)


def test_killed_run_resumes_from_finished_chunks(tmp_path, formulas, counted):
    snap = make_snapshot(tmp_path / "snap", _records(formulas))
    work = tmp_path / "work"
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
    assert len(read_parquet(out / "features.parquet")) == 150


def test_featurize_chunk_is_idempotent(tmp_path, formulas, counted):
    plan = plan_features(make_snapshot(tmp_path / "snap", _records(formulas[:30])), tmp_path / "w", CFG)
    first = featurize_chunk(Path(plan.chunks[0]), Path(plan.cache_dir))
    stamp = first.stat().st_mtime_ns
    assert featurize_chunk(Path(plan.chunks[0]), Path(plan.cache_dir)) == first
    assert counted == [30] and first.stat().st_mtime_ns == stamp and str(first) in plan.shards


def test_too_many_errors_fail_the_stage_and_publish_nothing(tmp_path, formulas):
    bad = ["Xx2O", "Qq", "(Fe", "", "He", "Fe2O3)", "Zz3"]
    snap = make_snapshot(tmp_path / "snap", _records(formulas[:20] + bad))
    with pytest.raises(ValueError, match="max_error_rate"):
        build_features(snap, tmp_path / "work", CFG)
    assert not Path(plan_features(snap, tmp_path / "work", CFG).output_dir).exists()
    lenient = FeaturizeConfig(chunk_size=40, max_error_rate=0.5, structure_features=False)
    out = build_features(snap, tmp_path / "work", lenient)
    assert len(read_parquet(out / "errors.parquet")) == len(bad)


def test_structure_features_and_plan_json(tmp_path, formulas):
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
    records = _records(formulas_, [None] * 5 + texts + [None])
    snap = make_snapshot(tmp_path / "snap", records)
    cfg = FeaturizeConfig(chunk_size=4, structure_features=True)

    plan = plan_features(snap, tmp_path / "work", cfg)
    assert FeaturePlan.from_json(plan.to_json()) == plan and json.loads(plan.to_json())["n_pending"] == 9
    out = build_features(snap, tmp_path / "work", cfg)
    features = read_parquet(out / "features.parquet").set_index(MATERIAL_KEY)
    assert list(features.columns[1:]) == composition_feature_names() + structure_feature_names()
    keys = material_keys(records, cfg)
    with_structure = features.loc[keys[5:8], structure_feature_names()]
    assert not with_structure.isna().any().any()
    assert features.loc[keys[[0, 8]], structure_feature_names()].isna().all().all()  # no structure: NaN
    # without structure features, a formula with and without structure is one material, and
    # materials without a structure share their cache entries across both modes
    flat_cfg = FeaturizeConfig(chunk_size=4, structure_features=False)
    assert material_keys(records, flat_cfg)[[0, 4, 8]].tolist() == keys[[0, 4, 8]].tolist()
    flat_plan = plan_features(snap, tmp_path / "work", flat_cfg)
    assert (flat_plan.n_materials, flat_plan.n_cached, flat_plan.n_pending) == (8, 6, 2)
    flat = build_features(snap, tmp_path / "work", flat_cfg)
    assert flat.name.endswith("-nostruct") and len(read_parquet(flat / "features.parquet")) == 8
