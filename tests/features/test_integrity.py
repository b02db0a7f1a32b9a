"""A published features output that no longer matches its manifest is set aside and rebuilt (#11)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from feature_support import make_snapshot, records_frame

import metalearn.features.plan as F
from metalearn.features.integrity import check_output, file_digests
from metalearn.features.output import verify_features
from metalearn.features.plan import FeaturizeConfig, plan_features
from metalearn.features.stage import build_features
from metalearn.ingest.snapshot import FILE_DIGESTS, PROBLEMS_FILE
from metalearn.io import CORRUPT_MARK, MANIFEST, read_manifest, repo_data_dir
from metalearn.layout import WorkDir
from metalearn.schema import FEATURE_ERRORS_FILE, FEATURES_FILE, RECORD_KEYS_FILE

CFG = FeaturizeConfig(chunk_size=25, max_error_rate=0.2)


@pytest.fixture
def built(tmp_path):
    path = repo_data_dir() / "composition" / "crabnet_matbench" / "matbench_expt_gap.csv.gz"
    formulas = pd.read_csv(path, keep_default_na=False)["formula"].drop_duplicates().head(60).tolist()
    snap = make_snapshot(tmp_path / "snap", records_frame(formulas + ["Xx2O"]))
    work = WorkDir.resolve(tmp_path / "work")
    out = build_features(snap, work, CFG)
    return snap, work, out, read_manifest(out)


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = F.featurize_compositions
    monkeypatch.setattr(F, "featurize_compositions", lambda values: calls.append(len(values)) or real(values))
    return calls


def _set_aside(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f"{out.name}{CORRUPT_MARK}*"))


def test_manifest_records_every_file(built):
    _, _, out, manifest = built
    assert set(manifest.extra[FILE_DIGESTS]) == {FEATURES_FILE, FEATURE_ERRORS_FILE, RECORD_KEYS_FILE}
    assert manifest.extra[FILE_DIGESTS] == file_digests(out)
    assert verify_features(out) == []


def test_truncated_features_are_set_aside_and_rebuilt_from_the_cache(built, counted):
    snap, work, out, manifest = built
    data = (out / FEATURES_FILE).read_bytes()
    (out / FEATURES_FILE).write_bytes(data[: len(data) // 2])
    problems = verify_features(out)
    assert problems == [f"{out / FEATURES_FILE}: sha256 does not match the manifest"]

    plan = plan_features(snap, work, CFG)
    assert not plan.done and Path(plan.set_aside).name.startswith(f"{out.name}{CORRUPT_MARK}")
    assert plan.n_pending == 0  # the cache shards are intact: repairing costs no featurizing
    assert build_features(snap, work, CFG) == out
    assert counted == []
    assert verify_features(out) == [] and read_manifest(out).content_hash == manifest.content_hash
    (corrupt,) = _set_aside(out)
    assert (corrupt / FEATURES_FILE).stat().st_size == len(data) // 2  # kept as evidence, with the findings
    assert json.loads((corrupt / PROBLEMS_FILE).read_text())["problems"] == problems
    assert build_features(snap, work, CFG) == out and len(_set_aside(out)) == 1  # now a no-op


def test_same_size_bit_flip_and_missing_manifest_are_found(built):
    snap, work, out, _ = built
    keys = bytearray((out / RECORD_KEYS_FILE).read_bytes())
    keys[len(keys) // 2] ^= 0x01
    (out / RECORD_KEYS_FILE).write_bytes(bytes(keys))
    assert verify_features(out) == [f"{out / RECORD_KEYS_FILE}: sha256 does not match the manifest"]
    build_features(snap, work, CFG)
    assert verify_features(out) == [] and len(_set_aside(out)) == 1

    (out / MANIFEST).unlink()
    assert verify_features(out) == [f"{out}: no {MANIFEST}"]
    build_features(snap, work, CFG)
    assert verify_features(out) == [] and len(_set_aside(out)) == 2
    (out / MANIFEST).write_text("{torn")
    assert "unreadable" in verify_features(out)[0]


def test_outputs_without_digests_are_checked_by_footer_and_row_count(built):
    _, _, out, _ = built
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["extra"][FILE_DIGESTS]  # as written before digests existed
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert verify_features(out) == []
    manifest["n_rows"] += 1
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert verify_features(out) == [f"{out / FEATURES_FILE}: {manifest['n_rows'] - 1} rows, manifest says {manifest['n_rows']}"]
    manifest["n_rows"] -= 1
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / FEATURE_ERRORS_FILE).write_bytes(b"PAR1 torn")
    assert "unreadable" in check_output(out)[0]


def test_a_torn_cache_shard_is_set_aside_and_refeaturized(built, counted):
    snap, work, out, _ = built
    shards = sorted(work.feature_cache("v1").glob("shard-*.parquet"))
    rows = pq.read_metadata(shards[0]).num_rows
    shards[0].write_bytes(b"PAR1 torn")
    (out / FEATURES_FILE).write_bytes(b"")
    build_features(snap, work, CFG)
    assert counted == [rows] and verify_features(out) == []
    assert len(list(work.feature_cache("v1").glob(f"*{CORRUPT_MARK}*"))) == 1
