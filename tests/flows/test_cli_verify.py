"""``metalearn verify`` names a corrupted output, and rerunning its stage repairs it (real files, the console script)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flow_support import TINY_DATASETS, cli

from metalearn import schema as S
from metalearn.ingest.stage import IngestConfig, ingest
from metalearn.layout import WorkDir

pytestmark = pytest.mark.slow


def test_verify_finds_a_truncated_feature_table_and_featurize_repairs_it(tmp_path):
    snapshot = ingest(WorkDir.resolve(tmp_path), IngestConfig(max_rows_per_dataset=40,
                                                              datasets=tuple(TINY_DATASETS[:4]))).path
    workdir = ["--workdir", str(tmp_path)]
    assert cli("featurize", *workdir, "--snapshot", snapshot.name, "--profile", "quick").returncode == 0
    clean = cli("verify", *workdir)
    assert clean.returncode == 0 and "0 do not match" in clean.stdout, clean.stdout + clean.stderr

    (table,) = WorkDir.resolve(tmp_path).all_feature_tables()
    features = table / S.FEATURES_FILE
    features.write_bytes(features.read_bytes()[: features.stat().st_size // 2])  # a torn write
    broken = cli("verify", *workdir)
    assert broken.returncode == 1 and "CORRUPT" in broken.stdout and str(table) in broken.stdout
    assert "Traceback" not in broken.stderr

    repaired = cli("featurize", *workdir, "--snapshot", snapshot.name, "--profile", "quick")
    assert repaired.returncode == 0, repaired.stderr[-2000:]
    assert cli("verify", *workdir).returncode == 0
    assert any(Path(p).name.startswith(table.name + ".corrupt-") for p in table.parent.iterdir())  # kept aside
