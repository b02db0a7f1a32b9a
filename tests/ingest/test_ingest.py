"""Ingest of the bundled source through the library and the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from metalearn import io
from metalearn.ingest.snapshot import list_snapshots, read_table
from metalearn.ingest.stage import SOURCES, IngestConfig, ingest
from metalearn.layout import WorkDir


def test_bundled_ingest_then_noop_reingest(work):
    cfg = IngestConfig(max_rows_per_dataset=30, datasets=("aflow__Egap", "matbench_glass", "mp_piezo:eij_max"))
    first = ingest(work, cfg)
    assert first.created and first.path.parent == work.raw("bundled")
    records = read_table(first.path, "records")
    assert set(records["dataset_id"]) == set(cfg.datasets)
    assert first.manifest.query["max_rows_per_dataset"] == 30
    again = ingest(work, cfg)
    assert not again.created and again.path == first.path
    assert len(list_snapshots(work, "bundled")) == 1
    other = ingest(work, IngestConfig(max_rows_per_dataset=31, datasets=cfg.datasets))
    assert other.created and len(list_snapshots(work, "bundled")) == 2


def test_cli_ingest_prints_summary(tmp_path):
    out = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", "--source", "bundled", "--workdir",
                          str(tmp_path), "--max-rows-per-dataset", "20"], capture_output=True, text=True, check=False,
                         timeout=240)
    assert out.returncode == 0, out.stderr
    assert "bundled:" in out.stdout and "rows" in out.stdout and "quarantined" in out.stdout
    snapshot = list_snapshots(WorkDir(tmp_path), "bundled")[0]
    assert io.read_manifest(snapshot).n_rows > 500


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match="unknown source"):
        IngestConfig(source="nope")
    assert set(SOURCES) == {"bundled", "mp", "oc"}


def test_ingest_takes_a_workdir_and_dispatches_every_source_through_one_table(work, tmp_path):
    with pytest.raises(TypeError, match=r"WorkDir\.resolve"):
        ingest(tmp_path, IngestConfig())
    result = ingest(work, IngestConfig(source="oc"))
    assert result.created and result.path.parent == work.raw("oc") and result.manifest.source == "oc"
    assert not ingest(work, IngestConfig(source="oc")).created
