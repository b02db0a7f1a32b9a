"""The whole nightly flow under embedded Prefect on a small slice of the bundled data: it ends with a
registered champion, records its artifacts, and a rerun with unchanged inputs is all cache hits."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from flow_support import REPO, TINY, kept_env
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

pytestmark = pytest.mark.slow

CACHED_STAGES = {"represent", "meta-train-fomaml", "meta-train-metric", "meta-train-meta_transfer",
                 "meta-train-transfer_huber", "evaluate", "register", "promote"}
REPUBLISHED = {"republish-represent", "republish-evaluate", "republish-register", "republish-promote"}


def _task_states(flow_run_id) -> dict[str, str]:
    """Task name -> state name; generated run names ("evaluate-1bd") lose their 3-hex suffix.

    Task-run states reach the API asynchronously (through Prefect's event pipeline), so a run read
    right after the flow returns may not have its state yet, or may still show "Running" for its
    last one: poll briefly until every run has a final state.
    """
    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        if all(run.state is not None and run.state.is_final() for run in runs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return {re.sub(r"-[0-9a-f]{3}$", "", run.name) if not run.name.startswith("meta-train") else run.name:
            run.state.name if run.state else "unknown" for run in runs}


@pytest.fixture(scope="module")
def first_run(prefect_harness, tmp_path_factory):
    from flows.nightly import nightly

    workdir = tmp_path_factory.mktemp("nightly")
    started = time.monotonic()
    with kept_env("MLFLOW_TRACKING_URI"):
        state = nightly(workdir=str(workdir), **TINY, return_state=True)
    return workdir, state, time.monotonic() - started


def test_nightly_ends_with_a_registered_champion(first_run):
    from metalearn.predict.model_cache import resolve_tracking_uri
    from metalearn.registry import load_champion

    workdir, state, seconds = first_run
    assert state.is_completed(), state.message
    out = state.result()
    assert out["source"] == "bundled" and out["decision"] == "promoted" and out["champion"] == out["model_version"]
    assert Path(out["oc_snapshot"]).parent.name == "oc"
    assert out["shards_counts"]["tasks"] > 5
    assert set(out["trained"]) == {"fomaml", "metric", "meta_transfer", "transfer_huber", "protonet",
                                   "pretrained_ridge"}
    assert out["candidate"] in {"fomaml", "metric", "meta_transfer", "transfer_huber"}  # baselines: never registered
    assert set(out["stage_seconds"]) == {"ingest", "features", "shards", "represent", "train", "evaluate", "register"}
    from metalearn.ingest.snapshot import read_table

    combined = read_table(Path(out["combined_snapshot"]), "records")
    assert combined["dataset_id"].str.startswith("oc20_dense").any()  # Open Catalyst reaches the shards
    assert out["tracking_uri"] == resolve_tracking_uri(None, workdir)
    model = load_champion("metalearn", out["tracking_uri"])
    table = pd.DataFrame({"role": ["support"] * 4 + ["query"] * 2,
                          "formula": ["NaCl", "KCl", "MgO", "CaO", "LiF", "NaBr"],
                          "target": [5.0, 5.2, 7.8, 6.9, None, None]})
    pred = model.predict(table)
    assert len(pred) == 2 and pred["prediction"].notna().all()
    labels = table.assign(target=[1.0, 0.0, 1.0, 0.0, None, None])  # 0/1 targets -> the shipped classifier
    proba = model.predict(labels)["prediction"]
    assert ((proba >= 0) & (proba <= 1)).all()
    print(f"first nightly run: {seconds:.1f} s")


def test_nightly_records_artifacts(first_run):
    _, state, _ = first_run
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    by_key = {a.key: a for a in artifacts}
    expected = {"metalearn-ingest-bundled", "metalearn-ingest-oc", "metalearn-features", "metalearn-shards",
                "metalearn-tasks-index", "metalearn-train-fomaml", "metalearn-train-metric",
                "metalearn-evaluation", "metalearn-evaluation-table", "metalearn-promotion", "metalearn-mlflow-run",
                "metalearn-representation", "metalearn-champion", "metalearn-evaluate-progress"}
    assert expected <= set(by_key)
    assert by_key["metalearn-train-fomaml"].type == "progress" and float(by_key["metalearn-train-fomaml"].data) == 100
    assert by_key["metalearn-evaluation-table"].type == "table"
    assert float(by_key["metalearn-evaluate-progress"].data) == 100
    assert by_key["metalearn-evaluation"].data.count("# k-shot evaluation") == 1  # one heading
    assert "Quarantine reasons" in by_key["metalearn-ingest-bundled"].data
    assert "Tasks per split" in by_key["metalearn-shards"].data
    promotion = by_key["metalearn-promotion"].data
    assert "promoted" in promotion and "win_rate" in promotion and "compared_to" in promotion


def test_one_nightly_at_a_time_limit_exists_and_is_free(first_run):
    from flows.slots import NIGHTLY_LIMIT

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(NIGHTLY_LIMIT)
    assert limit.limit == 1 and limit.active_slots == 0


def test_rerun_with_unchanged_inputs_hits_the_caches(first_run):
    from flows.nightly import nightly
    from metalearn.predict.model_cache import resolve_tracking_uri

    workdir, first, _ = first_run
    started = time.monotonic()
    state = nightly(workdir=str(workdir), **TINY, return_state=True)
    seconds = time.monotonic() - started
    assert state.is_completed()
    states = _task_states(state.state_details.flow_run_id)
    assert {name: states.get(name) for name in CACHED_STAGES} == dict.fromkeys(CACHED_STAGES, "Cached")
    assert not any(name.startswith("featurize-chunk") for name in states)  # the plan found the features
    assert REPUBLISHED <= {name for name, s in states.items() if s == "Completed"}
    assert state.result()["model_version"] == first.result()["model_version"]
    import mlflow

    client = mlflow.MlflowClient(resolve_tracking_uri(None, workdir))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 4  # one per registered regression learner, from the first run only
    assert len(client.search_model_versions("name = 'metalearn'")) == 1
    # Tonight's run page (served from the cache) still names tonight's champion.
    with get_client(sync_client=True) as prefect_client:
        artifacts = prefect_client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    by_key = {a.key: a for a in artifacts}
    champion = state.result()["champion"]
    assert f"version **{champion}**" in by_key["metalearn-champion"].data
    assert {"metalearn-evaluation", "metalearn-promotion", "metalearn-representation"} <= set(by_key)
    assert seconds < 60, f"rerun took {seconds:.1f} s"
    print(f"rerun: {seconds:.1f} s")


def test_a_deleted_output_is_rebuilt_not_served_from_cache(first_run):
    import shutil

    from flows.nightly import nightly

    workdir, first, _ = first_run
    evaluation = Path(first.result()["evaluation"])
    shutil.rmtree(evaluation)
    state = nightly(workdir=str(workdir), **TINY, return_state=True)
    assert state.is_completed() and (evaluation / "scores.csv").exists()


# --- metalearn predict against the champion this flow registered ------------------------------------

def _predict(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """``metalearn predict`` with Prefect made unimportable: the command must not need it."""
    code = ("import sys; sys.modules['prefect'] = None; from flows.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, "predict", "--workdir", str(workdir), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO, check=False)


def test_cli_predict_with_the_champion_and_its_errors(first_run, tmp_path):
    workdir, _, _ = first_run
    support, query, output = tmp_path / "s.csv", tmp_path / "q.csv", tmp_path / "p.csv"
    support.write_text("formula,target\nNaCl,5.0\nKCl,5.2\nMgO,7.8\nCaO,6.9\n")
    query.write_text("formula\nLiF\nNaBr\n")
    ok = _predict(workdir, "--support", str(support), "--query", str(query), "--output", str(output))
    assert ok.returncode == 0, ok.stderr[-3000:]
    predictions = pd.read_csv(output)
    assert predictions["formula"].tolist() == ["LiF", "NaBr"] and predictions["prediction"].notna().all()

    missing = _predict(workdir, "--support", str(tmp_path / "nope.csv"), "--query", str(query),
                       "--output", str(output))
    assert missing.returncode == 2 and "nope.csv" in missing.stderr and "Traceback" not in missing.stderr

    bad = tmp_path / "bad.csv"
    bad.write_text("formula,target\nNaCl,abc\nKCl,5.2\n")
    wrong = _predict(workdir, "--support", str(bad), "--query", str(query), "--output", str(output))
    assert wrong.returncode == 2 and "bad.csv" in wrong.stderr and "Traceback" not in wrong.stderr

    unknown = _predict(workdir, "--model", "models:/nosuchmodel@champion", "--support", str(support),
                       "--query", str(query), "--output", str(output))
    assert unknown.returncode == 2 and "nosuchmodel" in unknown.stderr and "Traceback" not in unknown.stderr
    assert json.loads(json.dumps(predictions.to_dict()))  # plain values only
