"""``metalearn featurize | shards | train | evaluate``: the stages one at a time through the console script."""

from __future__ import annotations

import json

import pytest
from flow_support import TINY_DATASETS, cli

from metalearn.ingest.stage import IngestConfig, ingest
from metalearn.layout import WorkDir

pytestmark = pytest.mark.slow


def test_stage_commands_chain_on_a_tiny_snapshot(tmp_path):
    snapshot = ingest(WorkDir.resolve(tmp_path), IngestConfig(max_rows_per_dataset=50, datasets=tuple(TINY_DATASETS))).path
    workdir = ["--workdir", str(tmp_path)]

    featurized = cli("featurize", *workdir, "--snapshot", snapshot.name)
    assert featurized.returncode == 0, featurized.stderr[-3000:]
    assert "features:" in featurized.stdout

    shards = cli("shards", *workdir, "--list")
    assert shards.returncode == 0, shards.stderr[-3000:]
    assert "tasks per split: meta-train" in shards.stdout and "properties:" in shards.stdout
    assert "task_id" in shards.stdout and "aflow__Egap|all" in shards.stdout

    for flag, learner in (("--learner", "fomaml"), ("--algorithm", "metric")):  # --algorithm: the old spelling
        trained = cli("train", *workdir, flag, learner, "--profile", "quick", "--max-steps", "4")
        assert trained.returncode == 0, trained.stderr[-3000:]
        result = json.loads(trained.stdout)
        assert result["learner"] == learner and result["metrics"]["steps"] <= 4

    evaluated = cli("evaluate", *workdir, "--profile", "quick")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "fomaml" in evaluated.stdout and "metric" in evaluated.stdout and "scores:" in evaluated.stderr

    missing = cli("featurize", *workdir, "--snapshot", "no-such-snapshot")
    assert missing.returncode == 2 and "no complete snapshot 'no-such-snapshot'" in missing.stderr
    no_shards = cli("train", "--workdir", str(tmp_path / "empty"), "--learner", "fomaml")
    assert no_shards.returncode == 2 and "run `metalearn shards` first" in no_shards.stderr
