"""Shared fixtures. The quiet/offline environment is set before prefect or mlflow can be imported."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
os.environ.pop("MP_API_KEY", None)
# Tiny models on 2 cores: intra-op threads only oversubscribe (measured 4-10x slower tests).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import importlib.abc
import importlib.util
import sys
from pathlib import Path

import pytest

from metalearn.features.plan import FeaturizeConfig
from metalearn.features.stage import build_features
from metalearn.ingest.stage import IngestConfig, ingest
from metalearn.layout import WorkDir
from metalearn.shards.define import ShardConfig
from metalearn.shards.stage import build_shards

REPO = Path(__file__).resolve().parent.parent

# tests/ is not a package: helper modules the sub-conftests and tests import by these top-level names,
# found by path (lazily, on first import) so any rootdir/import mode works.
HELPERS = {
    "flow_support": REPO / "tests" / "flows" / "support.py",
    "learner_support": REPO / "tests" / "learn" / "learners" / "support.py",
    "mp_server": REPO / "tests" / "mp_server.py",
    "score_tables": REPO / "tests" / "score_tables.py",
}


class _HelperFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if path is None and name in HELPERS:
            return importlib.util.spec_from_file_location(name, HELPERS[name])
        return None


sys.meta_path.insert(0, _HelperFinder())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


SMALL_DATASETS = ("aflow__Egap", "OQMD_Bandgap", "mp_bulk_modulus", "aflow__ael_shear_modulus_vrh",
                  "OQMD_Volume_per_atom", "matbench_glass", "matbench_expt_is_metal")


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory) -> Path:
    """Real task shards from a small slice of the bundled data (ingest -> features -> shards)."""
    work = WorkDir.resolve(tmp_path_factory.mktemp("small-work"))
    snap = ingest(work, IngestConfig(max_rows_per_dataset=400, datasets=SMALL_DATASETS)).path
    features = build_features(snap, work, FeaturizeConfig(structure_features=False))
    cfg = ShardConfig(min_task_rows=30, whole_property_below=150, max_task_rows=200)
    result = build_shards(snap, features, work, cfg)
    again = build_shards(snap, features, work, cfg)
    assert result.created and not again.created and again.path == result.path
    return result.path
