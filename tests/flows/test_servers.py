"""Against real servers on loopback: `prefect server start` and `mlflow server` (started and stopped by
PID here), `metalearn run` talking to both, then `metalearn deploy` + process workers on the `cpu`
and `gpu` pools running the nightly deployment, which hands its training half to `retrain`.
Everything is checked through the servers' own APIs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flow_support import BIN, TINY, cli, free_port, start, stop, wait_http

pytestmark = pytest.mark.slow

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("servers")
    prefect_port, mlflow_port = free_port(), free_port()
    prefect_log, mlflow_log = root / "prefect-server.log", root / "mlflow-server.log"
    prefect = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
                    prefect_log, env={"PREFECT_HOME": str(root / "prefect-server-home"),
                                      "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": ""})
    # Pitfall M7: one uvicorn worker and no job executor, else ~30 s to be ready on 2 cores.
    mlflow = start([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                    "--artifacts-destination", str(root / "mlartifacts"), "--host", "127.0.0.1",
                    "--port", str(mlflow_port), "--workers", "1"],
                   mlflow_log, env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        wait_http(f"http://127.0.0.1:{prefect_port}/api/health", prefect, prefect_log)
        wait_http(f"http://127.0.0.1:{mlflow_port}/health", mlflow, mlflow_log)
        yield {"PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
               "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}", "root": str(root)}
    finally:
        stop(mlflow)
        stop(prefect)


def _env(servers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in servers.items() if k != "root"}


def _api(servers: dict[str, str], method: str, path: str, body: dict | None = None) -> object:
    response = httpx.request(method, servers["PREFECT_API_URL"] + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def _wait_flow_run(servers: dict[str, str], flow_run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = _api(servers, "GET", f"/flow_runs/{flow_run_id}")
        if run["state"]["type"] in TERMINAL:
            return run
        time.sleep(2)
    raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout} s: {run['state']}")


@pytest.fixture(scope="module")
def cli_run(servers, tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("work")
    started = time.monotonic()
    out = cli("run", "--workdir", str(workdir), "--profile", "quick", "--params", json.dumps(TINY),
              env=_env(servers), timeout=900)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return {"workdir": str(workdir), "stdout": out.stdout, "seconds": time.monotonic() - started}


def test_cli_run_is_recorded_by_the_prefect_server(servers, cli_run):
    runs = _api(servers, "POST", "/flow_runs/filter", {"flows": {"name": {"any_": ["metalearn-nightly"]}}})
    assert len(runs) == 1 and runs[0]["state"]["type"] == "COMPLETED"
    artifacts = _api(servers, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}}})
    by_key = {a["key"]: a for a in artifacts}
    assert {"metalearn-ingest-bundled", "metalearn-features", "metalearn-shards", "metalearn-evaluation-table",
            "metalearn-promotion", "metalearn-mlflow-run", "metalearn-train-fomaml"} <= set(by_key)
    link = by_key["metalearn-mlflow-run"]
    # an http tracking server gets a clickable link to the run (Prefect stores link artifacts as Markdown)
    assert f"]({servers['MLFLOW_TRACKING_URI']}/#/experiments/" in link["data"]
    limits = _api(servers, "POST", "/v2/concurrency_limits/filter", {})
    (nightly_limit,) = [limit for limit in limits if limit["name"] == "metalearn-nightly"]
    assert nightly_limit["limit"] == 1 and nightly_limit["active_slots"] == 0
    print(f"metalearn run against the servers: {cli_run['seconds']:.1f} s")


def test_cli_run_registered_a_champion_on_the_mlflow_server(servers, cli_run):
    from mlflow import MlflowClient

    client = MlflowClient(servers["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("metalearn", "champion")
    run = client.get_run(champion.run_id)
    flow_run = _api(servers, "POST", "/flow_runs/filter", {"flows": {"name": {"any_": ["metalearn-nightly"]}}})[0]
    assert run.data.tags["prefect.flow_run_id"] == flow_run["id"]
    assert champion.tags["promotion.decision"] == "promoted"
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    assert len(runs) == 4  # one run per registered regression learner
    assert all(r.info.run_name.startswith("nightly-") for r in runs)  # named for what they are
    # each MLflow run links back to its Prefect flow run's page on the server's UI
    assert flow_run["id"] in run.data.tags["prefect.flow_run_url"]
    assert "champion" in cli_run["stdout"] and "promoted" in cli_run["stdout"]


def test_deployments_run_by_process_workers_on_cpu_and_gpu_pools(servers, cli_run, tmp_path):
    deployed = cli("deploy", env=_env(servers), timeout=300)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    nightly = _api(servers, "GET", "/deployments/name/metalearn-nightly/nightly")
    retrain = _api(servers, "GET", "/deployments/name/metalearn-retrain/retrain")
    (schedule,) = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "UTC"
    assert nightly["work_pool_name"] == "cpu" and retrain["work_pool_name"] == "gpu"
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert retrain["job_variables"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert nightly["parameters"]["train_deployment"] == "metalearn-retrain/retrain"

    env = {**_env(servers), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    workers = [start([str(BIN / "prefect"), "worker", "start", "--pool", pool], tmp_path / f"worker-{pool}.log",
                     env=env) for pool in ("cpu", "gpu")]
    try:
        params = {**TINY, "workdir": cli_run["workdir"]}
        flow_run = _api(servers, "POST", f"/deployments/{nightly['id']}/create_flow_run", {"parameters": params})
        finished = _wait_flow_run(servers, flow_run["id"], timeout=900)
    finally:
        for worker in workers:
            stop(worker)
    logs = "\n".join(Path(tmp_path / f"worker-{p}.log").read_text()[-3000:] for p in ("cpu", "gpu"))
    assert finished["state"]["type"] == "COMPLETED", f"{finished['state']}\n{logs}"
    retrain_runs = _api(servers, "POST", "/flow_runs/filter",
                        {"deployments": {"id": {"any_": [retrain["id"]]}}})
    assert len(retrain_runs) == 1 and retrain_runs[0]["state"]["type"] == "COMPLETED"
    assert retrain_runs[0]["parent_task_run_id"] is not None  # linked to the nightly run as a subflow
