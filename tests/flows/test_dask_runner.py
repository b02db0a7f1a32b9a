"""``--task-runner dask``: the featurize fan-out on a local Dask cluster gives the default runner's features."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from flow_support import TINY_DATASETS

from metalearn import io
from metalearn.ingest.stage import IngestConfig, ingest
from metalearn.layout import WorkDir

pytestmark = pytest.mark.slow


def test_dask_runner_gives_the_same_features_as_the_default_runner(prefect_harness, tmp_path):
    from distributed import LocalCluster

    from flows.nightly import features_flow, task_runner, with_runner

    cfg = IngestConfig(max_rows_per_dataset=40, datasets=tuple(TINY_DATASETS[:6]))
    settings = {"chunk_size": 60}  # several chunks, so there is something to fan out
    results = {}
    snapshot = ingest(WorkDir.resolve(tmp_path / "default"), cfg).path
    results["default"] = with_runner("default", flow_obj=features_flow)(str(snapshot), str(tmp_path / "default"),
                                                                       settings)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dask_snapshot = ingest(WorkDir.resolve(tmp_path / "dask"), cfg).path
        flow_obj = with_runner("dask", cluster.scheduler_address, flow_obj=features_flow)
        assert type(flow_obj.task_runner).__name__ == "DaskTaskRunner"
        results["dask"] = flow_obj(str(dask_snapshot), str(tmp_path / "dask"), settings)
    manifests = {name: io.read_manifest(Path(r["path"])) for name, r in results.items()}
    assert manifests["default"].counts["n_materials"] > settings["chunk_size"]
    assert manifests["dask"].content_hash == manifests["default"].content_hash
    frames = {name: pd.read_parquet(f"{r['path']}/features.parquet").sort_values("material_key")
              .reset_index(drop=True) for name, r in results.items()}
    pd.testing.assert_frame_equal(frames["dask"], frames["default"])
    with pytest.raises(ValueError, match="needs --task-runner dask"):
        task_runner("default", "tcp://127.0.0.1:1")
