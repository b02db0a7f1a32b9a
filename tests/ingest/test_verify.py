"""Snapshot integrity (#11): the manifest's content hash is what the files hold; corruption is repaired.

A snapshot whose files do not match its manifest (or cannot be read) is moved aside as
``<dir>.corrupt-<UTC time>`` and recomputed by the next ingest, instead of being reported as
"unchanged". The content hash itself is unchanged by the file digests (same inputs, same hash).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from metalearn import io
from metalearn import schema as S
from metalearn.ingest import oc
from metalearn.ingest.snapshot import (
    FILE_DIGESTS,
    PROPERTIES,
    QUARANTINE,
    RECORDS,
    combine_snapshots,
    content_hash,
    latest_verified_snapshot,
    list_snapshots,
    read_table,
    verify_snapshot,
    verify_workdir,
    write_snapshot,
)
from metalearn.ingest.stage import IngestConfig, ingest

SLICE = IngestConfig(max_rows_per_dataset=25, datasets=("aflow__Egap", "matbench_glass", "roost_expt_non_metals",
                                                        "mp_piezo:eij_max"))


@pytest.fixture
def bundled_snapshot(work):
    return ingest(work, SLICE)


def _recomputed(path) -> str:
    """The content hash from the files, by the manifest's own definition (tables from its counts)."""
    manifest = io.read_manifest(path)
    names = [k[len("table_"):] for k in manifest.counts if k.startswith("table_")]
    return content_hash(read_table(path, RECORDS), read_table(path, PROPERTIES), read_table(path, QUARANTINE),
                        {n: read_table(path, n) for n in names})


def test_content_hash_of_a_bundled_slice_is_the_hash_of_its_files(bundled_snapshot):
    result = bundled_snapshot
    assert result.created and result.manifest.n_rows > 0
    assert _recomputed(result.path) == result.manifest.content_hash
    assert verify_snapshot(result.path) == [] and verify_snapshot(result.path, deep=True) == []
    digests = result.manifest.extra[FILE_DIGESTS]
    assert sorted(digests) == ["properties.parquet", "quarantine.parquet", "records.parquet"]
    assert all(io.hash_file(result.path / name) == digest for name, digest in digests.items())
    assert result.path.name.endswith(result.manifest.content_hash[:12])


def test_content_hash_of_oc_and_combined_snapshots_is_the_hash_of_their_files(work, bundled_snapshot):
    oc_result = oc.ingest_oc(work)
    combined = combine_snapshots(work, [bundled_snapshot.path, oc_result.path])
    for result in (oc_result, combined):
        assert _recomputed(result.path) == result.manifest.content_hash
        assert verify_snapshot(result.path, deep=True) == []
    assert sorted(result.manifest.extra[FILE_DIGESTS]) == ["properties.parquet", "quarantine.parquet",
                                                           "records.parquet"]
    assert "oc20_trajectories.parquet" in oc_result.manifest.extra[FILE_DIGESTS]


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_truncated_records_are_detected_and_the_reingest_repairs(work, bundled_snapshot):
    first = bundled_snapshot
    _truncate(first.path / "records.parquet")
    problems = verify_snapshot(first.path)
    assert len(problems) == 1 and "records.parquet" in problems[0] and "does not match" in problems[0]

    again = ingest(work, SLICE)  # the input is unchanged; the broken copy must not count as "unchanged"

    assert again.created and again.path != first.path and not first.path.exists()
    assert again.manifest.content_hash == first.manifest.content_hash  # recomputed: the same content
    assert verify_snapshot(again.path) == []
    (moved,) = [p for p in work.raw("bundled").iterdir() if io.CORRUPT_MARK in p.name]
    assert moved.name.startswith(first.path.name + io.CORRUPT_MARK)
    assert json.loads((moved / "verify-problems.json").read_text())["problems"] == problems
    assert list_snapshots(work, "bundled") == [again.path]  # the moved-aside copy is never listed
    assert not ingest(work, SLICE).created  # and now the short cut holds again


@pytest.mark.parametrize("damage", ["missing_file", "bad_manifest", "flipped_byte", "legacy_truncated"])
def test_every_kind_of_damage_is_a_problem(bundled_snapshot, damage):
    path = bundled_snapshot.path
    if damage == "missing_file":
        (path / "quarantine.parquet").unlink()
    elif damage == "bad_manifest":
        (path / io.MANIFEST).write_text("{not json")
    elif damage == "flipped_byte":
        data = bytearray((path / "properties.parquet").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (path / "properties.parquet").write_bytes(bytes(data))
    else:  # a snapshot written before file digests: checked by recomputing its content hash
        manifest = json.loads((path / io.MANIFEST).read_text())
        del manifest["extra"][FILE_DIGESTS]
        (path / io.MANIFEST).write_text(json.dumps(manifest))
        assert verify_snapshot(path) == []
        _truncate(path / "records.parquet")
    problems = verify_snapshot(path)
    assert problems and all(isinstance(p, str) for p in problems)


def test_legacy_snapshot_with_different_content_fails_the_recomputed_hash(bundled_snapshot):
    path = bundled_snapshot.path
    manifest = json.loads((path / io.MANIFEST).read_text())
    del manifest["extra"][FILE_DIGESTS]
    (path / io.MANIFEST).write_text(json.dumps(manifest))
    records = read_table(path, RECORDS)
    io.write_parquet_atomic(path / "records.parquet", records.assign(**{S.TARGET: records[S.TARGET] + 1}),
                            schema=S.RECORDS_SCHEMA)
    (problem,) = verify_snapshot(path)
    assert "content hash" in problem


def test_write_snapshot_does_not_dedupe_against_a_corrupt_latest(work):
    props = pd.DataFrame([{S.DATASET_ID: "gap", S.PROPERTY: "gap", S.PROPERTY_KEY: "gap", S.UNIT: "eV",
                           S.TASK_TYPE: "regression", S.SOURCE_DB: "t", S.FAMILY: "band_gap", S.TRANSFORM: "none"}])
    records = pd.DataFrame({S.RECORD_ID: ["a"], S.DATASET_ID: ["gap"], S.FORMULA: ["GaN"], S.TARGET: [3.0]})
    first = write_snapshot(work, "t", records, props)
    (first.path / io.MANIFEST).write_text("")
    second = write_snapshot(work, "t", records, props)
    assert second.created and second.manifest.content_hash == first.manifest.content_hash
    assert latest_verified_snapshot(work, "t") == second.path


def test_verify_workdir_reports_every_snapshot_without_changing_anything(work, bundled_snapshot):
    oc_result = oc.ingest_oc(work)
    _truncate(oc_result.path / "oc20_dense_systems.parquet")
    report = verify_workdir(work)
    assert set(report) == {bundled_snapshot.path, oc_result.path}
    assert report[bundled_snapshot.path] == [] and "oc20_dense_systems.parquet" in report[oc_result.path][0]
    assert oc_result.path.exists()  # verifying is read-only; only an ingest moves a snapshot aside
