"""The shards stage end to end on real bundled records: no-op reruns, corruption repair, latest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from metalearn import schema as S
from metalearn.features.plan import FeaturizeConfig
from metalearn.features.stage import build_features
from metalearn.ingest.snapshot import FILE_DIGESTS, RECORDS, read_table
from metalearn.ingest.stage import IngestConfig, ingest
from metalearn.io import CORRUPT_MARK, read_manifest, read_parquet
from metalearn.layout import WorkDir
from metalearn.shards.define import ShardConfig
from metalearn.shards.stage import build_shards
from metalearn.shards.store import latest_shards, read_index, read_task_rows, verify_shards

DATASETS = ("aflow__Egap", "OQMD_Bandgap", "mp_bulk_modulus", "aflow__ael_shear_modulus_vrh",
            "OQMD_Volume_per_atom", "matbench_glass", "matbench_expt_is_metal")
CFG = ShardConfig(min_task_rows=30, whole_property_below=150, max_task_rows=200)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[WorkDir, Path, Path]:
    work = WorkDir.resolve(tmp_path_factory.mktemp("shards-work"))
    snap = ingest(work, IngestConfig(max_rows_per_dataset=200, datasets=DATASETS)).path
    return work, snap, build_features(snap, work, FeaturizeConfig())


@pytest.fixture
def built(inputs, tmp_path):
    """A private copy of the work directory (tests corrupt it), with shards built."""
    work, snap, features = inputs
    root = tmp_path / "work"
    shutil.copytree(work.root, root)
    work = WorkDir.resolve(root)
    snap, features = root / snap.relative_to(inputs[0].root), root / features.relative_to(inputs[0].root)
    return work, snap, features, build_shards(snap, features, work, CFG)


def test_build_is_complete_and_a_rerun_is_a_noop(built):
    work, snap, features, result = built
    assert result.created and result.path == work.shards(snap.name, "v1", result.path.name)
    again = build_shards(snap, features, work, CFG)
    assert not again.created and again.path == result.path and again.manifest.to_json() == result.manifest.to_json()
    assert verify_shards(result.path) == [] and set(result.manifest.extra[FILE_DIGESTS]) >= {
        S.TASKS_FILE, S.FEATURE_STATS_FILE, S.EXCLUDED_FILE}
    index = read_index(result.path)
    assert set(index[S.SPLIT]) <= set(S.SPLITS) and len(index) == result.manifest.counts["tasks"]
    rows = read_task_rows(result.path, index[S.TASK_KEY].tolist())
    excluded = read_parquet(result.path / S.EXCLUDED_FILE)
    records = read_table(snap, RECORDS)
    assert set(rows[S.RECORD_ID]) | set(excluded[S.RECORD_ID]) == set(records[S.RECORD_ID])
    assert set(excluded[S.REASON]) <= set(S.EXCLUDED_REASONS)
    assert latest_shards(work) == result.path


def test_a_truncated_partition_is_set_aside_and_rebuilt(built):
    work, snap, features, result = built
    part = min((result.path / S.TASK_DATA_DIR).rglob("*.parquet"))
    part.write_bytes(part.read_bytes()[:100])
    assert verify_shards(result.path) == [f"{part}: sha256 does not match the manifest"]
    rebuilt = build_shards(snap, features, work, CFG)
    assert rebuilt.created and rebuilt.set_aside.name.startswith(f"{result.path.name}{CORRUPT_MARK}")
    assert rebuilt.manifest.content_hash == result.manifest.content_hash and verify_shards(rebuilt.path) == []
    assert latest_shards(work) == rebuilt.path  # never the copy set aside, though its manifest is newer
    (rebuilt.set_aside / "manifest.json").touch()
    assert latest_shards(work) == rebuilt.path


def test_corrupt_features_are_refused_until_featurize_repairs_them(built):
    work, snap, features, _result = built
    (features / S.FEATURES_FILE).write_bytes(b"PAR1")
    other = ShardConfig(min_task_rows=30, whole_property_below=150, max_task_rows=200, seed=1)
    with pytest.raises(ValueError, match="rerun featurize"):
        build_shards(snap, features, work, other)
    assert build_features(snap, work, FeaturizeConfig()) == features
    assert build_shards(snap, features, work, other).manifest.inputs["features"] == read_manifest(features).content_hash
