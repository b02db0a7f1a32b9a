"""metalearn.registry against real MLflow: a SQLite store in tmp, a fresh consumer process, a loopback server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from score_tables import SETTING, scores_table
from servers import FORMULAS, make_shards, mlflow_server, tiny_learners

from metalearn import registry
from metalearn.evaluate.gate import RegistryConfig
from metalearn.learn.train import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "mpkey-" + "q7" * 13  # 32 characters, like a real MP key
KS = (1, 5, 10)  # the gate compares at RegistryConfig's support size, whichever of these it is


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store per module (creating its tables takes seconds), shards and tiny learners."""
    root = tmp_path_factory.mktemp("mlflow-store")
    shards = make_shards(root / "shards")
    n_features = len(pd.read_parquet(shards / "feature_stats.parquet"))
    reg, cls = tiny_learners(n_features)
    return {"root": root, "uri": f"sqlite:///{root / 'mlflow.db'}", "shards": shards, "reg": reg, "cls": cls}


def log(store, name: str, metric_values: list[float], mean_values: list[float], seed: int = 0, **kwargs) -> dict:
    cfg = RegistryConfig(tracking_uri=store["uri"], model_name=name)
    scores = scores_table({"metric": metric_values, "mean": mean_values}, ks=KS)
    return registry.log_training_run(store["reg"], store["shards"], classifier=store["cls"], scores=scores,
                                     configs={"eval": {"seed": seed, "n_query": 16}}, cfg=cfg, **kwargs)


def test_run_records_params_curves_artifacts_lineage_and_no_secret(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MP_API_KEY", SECRET)
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "manifest.json").write_text(json.dumps({"stage": "raw", "query": {"api_key": SECRET, "fields": ["x"]}}))
    summary = tmp_path / "summary.md"
    summary.write_text(f"# report\nkey was {SECRET}\n")
    cfg = RegistryConfig(tracking_uri=store["uri"], model_name="records")
    result = registry.log_training_run(
        store["reg"], store["shards"], classifier=store["cls"], cfg=cfg,
        configs={"ingest": {"api_key": SECRET, "max_rows_per_dataset": 10}, "train": TrainConfig(max_steps=3),
                 "eval": {"seed": 0, "n_query": 16}},
        history=[{"step": 1, "train_loss": 1.0, "val_loss": 2.0}, {"step": 2, "train_loss": 0.5, "val_loss": 1.5}],
        metrics={"best_val_loss": 1.5}, scores=scores_table({"metric": [0.5] * 4, "mean": [1.0] * 4}, ks=KS),
        report_files=[summary], manifests={"snapshot": snapshot})

    client = MlflowClient(store["uri"])
    run = client.get_run(result["run_id"])
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["train.max_steps"] == "3" and params["ingest.max_rows_per_dataset"] == "10"
    assert params["learner.embed_dim"] == "8" and params["classifier.name"] == "protonet"
    assert params["ingest.api_key"] == "***"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/val_loss")] == [(1, 2.0), (2, 1.5)]
    assert metrics["train/best_val_loss"] == 1.5
    assert metrics[f"eval/{SETTING}/mae_mad/k5/metric.median"] == pytest.approx(0.50005)
    assert metrics[f"eval/{SETTING}/mae_mad/k5/metric.win_rate_vs_mean"] == 1.0
    assert tags["lineage.snapshot_hash"] == "snap" + "1" * 60 and tags["lineage.database_version"] == "2025.09.25"
    assert tags["lineage.shards_hash"].startswith("shards") and tags["git.commit"]
    assert tags["metalearn.learner"] == "metric" and tags["metalearn.classifier"] == "protonet"

    experiment = client.get_experiment(result["experiment_id"])
    assert experiment.artifact_location.startswith((store["root"] / "mlartifacts").as_uri())  # not ./mlruns
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} == {
        "evaluation/scores.csv", "evaluation/summary.md"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "manifests")} == {
        "manifests/shards.json", "manifests/snapshot.json"}

    version = client.get_model_version_by_alias("records", registry.CHALLENGER)
    assert str(version.version) == result["version"] and version.tags["metalearn.learner"] == "metric"

    # The key appears in no param, tag or artifact (run artifacts and the model's files).
    texts = [*params.values(), *tags.values(), *version.tags.values()]
    assert not any(SECRET in str(t) for t in texts)
    for path in Path(store["root"] / "mlartifacts").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_promotion_gate_against_baseline_then_champion(store):
    name = "gate"
    client = MlflowClient(store["uri"])
    cfg = RegistryConfig(tracking_uri=store["uri"], model_name=name)

    def champion() -> str | None:
        try:
            return str(client.get_model_version_by_alias(name, registry.CHAMPION).version)
        except MlflowException:
            return None

    # First model: must beat the support-mean baseline on the same draws.
    v1 = log(store, name, [1.10] * 6, [1.0] * 6)["version"]
    decision = registry.promote(v1, cfg)
    assert decision["decision"] == "rejected" and decision["compared_to"] == "baseline mean"
    assert champion() is None
    assert client.get_model_version(name, v1).tags["promotion.decision"] == "rejected"
    with pytest.raises(LookupError, match="no 'champion'"):
        registry.load_champion(name, store["uri"])
    with pytest.raises(LookupError, match=f"cannot load model 'models:/{name}@champion'"):
        registry.load_model(f"models:/{name}@champion", store["uri"])

    v2 = log(store, name, [0.2, 0.4, 0.6, 0.8, 1.0, 1.2], [1.3] * 6)["version"]
    decision = registry.promote(None, cfg)  # the challenger
    assert decision["decision"] == "promoted" and decision["version"] == v2 and champion() == v2
    assert json.loads(json.dumps(decision)) == decision  # JSON-able

    # Worse than the champion on the same tasks and draws: champion stays.
    v3 = log(store, name, [0.21, 0.41, 0.61, 0.81, 1.01, 1.21], [1.3] * 6)["version"]
    decision = registry.promote(v3, cfg)
    assert decision["decision"] == "rejected" and decision["compared_to"] == f"version {v2}"
    assert decision["win_rate"] == 0.0 and champion() == v2
    tags = client.get_model_version(name, v3).tags
    assert tags["promotion.decision"] == "rejected" and float(tags["promotion.win_rate"]) == 0.0
    assert "promotion.reason" in tags and "promotion.relative_improvement" in tags

    # Better median but fewer than half the tasks won: champion stays.
    v4 = log(store, name, [0.25, 0.45, 0.5, 0.7, 1.05, 1.25], [1.3] * 6)["version"]
    decision = registry.promote(v4, cfg)
    assert decision["relative_improvement"] > 0.01 and decision["win_rate"] < 0.5
    assert decision["decision"] == "rejected" and champion() == v2

    # Evaluated with other draws (another eval seed): not a paired comparison, champion stays.
    v5 = log(store, name, [0.1] * 6, [1.3] * 6, seed=7)["version"]
    decision = registry.promote(v5, cfg)
    assert decision["decision"] == "rejected" and "protocols differ" in decision["reason"]

    # Better on every task by more than the margin: takes champion.
    v6 = log(store, name, [0.1, 0.3, 0.5, 0.7, 0.9, 1.1], [1.3] * 6)["version"]
    decision = registry.promote(v6, cfg)
    assert decision["decision"] == "promoted" and champion() == v6 and decision["previous_champion"] == v2
    assert client.get_model_version(name, v2).tags["promotion.replaced_by"] == v6
    assert registry.promote(v6, cfg)["decision"] == "already_champion"


def in_process(store, formulas: list[str], targets: np.ndarray, n_support: int, task_type: str) -> pd.DataFrame:
    """The learner's adapt+predict on features computed here as the shards and the sampler do."""
    from metalearn.features.plan import featurize_compositions
    from metalearn.learn.sampling import support_stats

    stats = pd.read_parquet(store["shards"] / "feature_stats.parquet")
    feats, _ = featurize_compositions(formulas)
    raw = feats[stats["feature"]].to_numpy(np.float32).astype(np.float64)
    x = torch.as_tensor(np.nan_to_num((raw - stats["mean"].to_numpy()) / stats["std"].to_numpy()), dtype=torch.float32)
    y = torch.as_tensor(targets, dtype=torch.float32)
    if task_type == "classification":
        pred = store["cls"].predict(store["cls"].adapt(x[:n_support], y), x[n_support:])
        return pd.DataFrame({"prediction": pred.mean.double().numpy()})
    mean, std = support_stats(y)
    pred = store["reg"].predict(store["reg"].adapt(x[:n_support], (y - mean) / std), x[n_support:])
    return pd.DataFrame({"prediction": (pred.mean.double() * std.double() + mean.double()).numpy(),
                         "uncertainty": (pred.std.double() * std.double()).numpy()})


def test_champion_in_a_fresh_process_predicts_like_the_learner_in_process(store, tmp_path):
    name = "fresh"
    log(store, name, [0.5] * 4, [1.0] * 4)
    assert registry.promote(None, RegistryConfig(tracking_uri=store["uri"], model_name=name))["decision"] == "promoted"
    support, query = FORMULAS[:8], FORMULAS[8:13]
    y_reg = np.linspace(0.5, 4.0, len(support))
    y_cls = np.array([0, 1, 1, 0, 1, 0, 0, 1], dtype=float)
    pd.DataFrame({"formula": support, "target": y_reg}).to_csv(tmp_path / "support.csv", index=False)
    pd.DataFrame({"formula": support, "target": y_cls.astype(int)}).to_csv(tmp_path / "labels.csv", index=False)
    pd.DataFrame({"formula": query}).to_csv(tmp_path / "query.csv", index=False)
    code = (
        "import sys\n"
        "from metalearn.predict.consumer import predict_csv\n"
        "from metalearn.registry import load_model\n"
        f"model = load_model('models:/{name}@champion')\n"
        "predict_csv(model, 'support.csv', 'query.csv', 'regression.csv')\n"
        "predict_csv(model, 'labels.csv', 'query.csv', 'classification.csv')\n"
        "assert 'mlflow' in sys.modules and 'prefect' not in sys.modules\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"]}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]

    regression = pd.read_csv(tmp_path / "regression.csv")
    assert list(regression.columns) == ["formula", "prediction", "uncertainty"] and list(regression["formula"]) == query
    assert (tmp_path / "classification.csv").exists()
    expected = in_process(store, support + query, y_reg, len(support), "regression")
    np.testing.assert_allclose(regression[["prediction", "uncertainty"]].to_numpy(), expected.to_numpy(),
                               rtol=1e-5, atol=1e-6)
    classification = pd.read_csv(tmp_path / "classification.csv")
    expected = in_process(store, support + query, y_cls, len(support), "classification")
    np.testing.assert_allclose(classification["prediction"].to_numpy(), expected["prediction"].to_numpy(),
                               rtol=1e-5, atol=1e-6)
    assert ((classification["prediction"] >= 0) & (classification["prediction"] <= 1)).all()
    assert not any(Path(tmp_path).glob("mlruns"))  # nothing written to the working directory


@pytest.mark.slow
def test_log_register_promote_and_load_through_a_tracking_server(store, tmp_path):
    with mlflow_server(tmp_path / "server") as url:
        cfg = RegistryConfig(tracking_uri=url, model_name="served")
        scores = scores_table({"metric": [0.5] * 4, "mean": [1.0] * 4}, ks=KS)
        first = registry.log_training_run(store["reg"], store["shards"], classifier=store["cls"], scores=scores,
                                          configs={"eval": {"seed": 0, "n_query": 16}}, cfg=cfg)
        assert registry.promote(None, cfg)["decision"] == "promoted"  # beats the mean baseline

        client = MlflowClient(url)
        for alias in (registry.CHAMPION, registry.CHALLENGER):
            assert str(client.get_model_version_by_alias("served", alias).version) == first["version"]
        tags = client.get_model_version("served", first["version"]).tags
        assert tags["promotion.decision"] == "promoted" and tags["promotion.compared_to"] == "baseline mean"
        assert client.get_experiment(first["experiment_id"]).artifact_location.startswith("mlflow-artifacts:")
        assert {a.path for a in client.list_artifacts(first["run_id"], "evaluation")} == {"evaluation/scores.csv"}

        model = registry.load_champion("served", tracking_uri=url)
        formulas = FORMULAS[:6]
        y = np.array([1.0, 2.0, 1.5, 3.0])
        table = pd.DataFrame({"role": ["support"] * 4 + ["query"] * 2, "formula": formulas,
                              "target": [*y, np.nan, np.nan]})
        got = model.predict(table)
        assert list(got["formula"]) == formulas[4:]
        np.testing.assert_allclose(got[["prediction", "uncertainty"]].to_numpy(),
                                   in_process(store, formulas, y, 4, "regression").to_numpy(), rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "mlruns").exists()


def test_tracking_block_leaves_the_environment_as_it_was(monkeypatch, tmp_path):
    import mlflow

    from metalearn.registry import _tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with _tracking(f"sqlite:///{tmp_path / 'a.db'}"):
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'c.db'}")
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'c.db'}"  # nothing left pinned (not ./mlflow.db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'b.db'}")
    with _tracking(f"sqlite:///{tmp_path / 'a.db'}"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'b.db'}"
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'b.db'}"


@pytest.fixture(scope="module")
def champion(store) -> dict:
    name = "served-local"
    log(store, name, [0.5] * 4, [1.0] * 4)
    assert registry.promote(None, RegistryConfig(tracking_uri=store["uri"], model_name=name))["decision"] == "promoted"
    return {"name": name, "uri": f"models:/{name}@champion", "tracking_uri": store["uri"]}


def test_the_model_carries_its_code_featurizer_and_only_published_requirements(champion, tmp_path):
    from metalearn.features.composition import composition_feature_names

    path = registry.download_model(champion["uri"], champion["tracking_uri"], tmp_path / "model")
    requirements = (path / "requirements.txt").read_text().split()
    assert requirements and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", r) for r in requirements)
    names = {r.split("==")[0].lower() for r in requirements}
    assert "metalearn" not in names and {"torch", "mlflow", "pandas", "numpy", "pymatgen"} <= names
    assert "matminer" not in names  # composition features only: the tables travel with the model
    assert (path / "code" / "metalearn" / "predict" / "local_model.py").is_file()
    assert not list((path / "code").rglob("__pycache__"))
    assert {p.name for p in (path / "artifacts").iterdir()} >= {"featurizer.json", "featurizer_tables.npz"}
    # The loaded model's feature names are the featurizer's (stored with the model, not recomputed).
    with registry._tracking(champion["tracking_uri"]):
        import mlflow

        model = mlflow.pyfunc.load_model(str(path)).unwrap_python_model().model
    assert model.predictor.feature_names == model.predictor.featurizer.feature_names == composition_feature_names()


def test_bad_input_through_the_pyfunc_is_invalid_parameter_value(champion):
    model = registry.load_model(champion["uri"], champion["tracking_uri"])
    table = pd.DataFrame({"role": ["support"] * 3 + ["query"], "formula": ["Fe2O3", "NaCl", "MgO", "ZnO"],
                          "target": [1.0, 2.0, np.nan, np.nan]})
    with pytest.raises(MlflowException) as err:
        model.predict(table)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert str(err.value.message) == "support row 3 (1-based): the target is missing; every support row needs one"
    with pytest.raises(MlflowException, match=r"query row 1 \(1-based\): formula 'Og' cannot be used: missing_element"):
        model.predict(table.assign(target=[1.0, 2.0, 3.0, np.nan], formula=["Fe2O3", "NaCl", "MgO", "Og"]))
    with pytest.raises(MlflowException, match=r"task_type 'ranking' is not one of"):
        model.predict(table.assign(target=[1.0, 2.0, 3.0, np.nan]), params={"task_type": "ranking"})


def test_the_scoring_server_answers_400_with_the_reason_and_no_traceback(champion, tmp_path):
    from registry_serving import invoke, model_server, table_payload

    env = {**os.environ, "MLFLOW_TRACKING_URI": champion["tracking_uri"]}
    with model_server(champion["uri"], Path(sys.executable).parent, env, tmp_path, tmp_path / "serve.log") as url:
        support = [("Fe2O3", 1.5), ("NaCl", 0.2), ("MgO", 3.0), ("ZnO", 2.5)]
        status, body = invoke(url, table_payload(support, ["GaAs", "LiF"]))
        assert status == 200, body
        rows = json.loads(body)["predictions"]
        assert [r["formula"] for r in rows] == ["GaAs", "LiF"] and all(np.isfinite(r["prediction"]) for r in rows)
        for bad, reason in ((table_payload(support, ["GaAs", "Og"]), "query row 2 (1-based): formula 'Og'"),
                            (table_payload(support[:1] + [("NaCl0", 1.0)], ["GaAs"]),
                             "support row 2 (1-based): formula 'NaCl0' cannot be used: unparseable_formula (zero amount of Cl"),
                            (table_payload(support, ["=cmd()"]), "starts with '='"),
                            (table_payload(support + [("NaCl", 9.0)], ["GaAs"]), "different target")):
            status, body = invoke(url, bad)
            assert status == 400, body
            error = json.loads(body)
            assert error["error_code"] == "INVALID_PARAMETER_VALUE" and reason in error["message"], error
            assert "Traceback" not in body and "stack_trace" not in error and str(REPO_ROOT) not in body
            assert "/tmp" not in error["message"].split("Error:")[-1]


def test_unchanged_inputs_reuse_the_run_and_version_changed_ones_add_exactly_one(store):
    """The register step is keyed by what it records: a rerun adds no run and no version."""
    name = "idempotent"
    client = MlflowClient(store["uri"])
    first = log(store, name, [0.4] * 4, [1.0] * 4)
    experiment = first["experiment_id"]
    runs_before = len(client.search_runs([experiment]))
    versions_before = len(client.search_model_versions(f"name = '{name}'"))
    again = log(store, name, [0.4] * 4, [1.0] * 4, run_name="a-different-name", tags={"prefect.flow_run_id": "x"})
    assert again["reused"] and not first["reused"]
    assert (again["run_id"], again["version"], again["model_uri"]) == (first["run_id"], first["version"],
                                                                       first["model_uri"])
    assert len(client.search_runs([experiment])) == runs_before
    assert len(client.search_model_versions(f"name = '{name}'")) == versions_before
    changed = log(store, name, [0.3] * 4, [1.0] * 4)  # new scores: a new run and exactly one new version
    assert not changed["reused"] and changed["version"] == str(int(first["version"]) + 1)
    assert len(client.search_runs([experiment])) == runs_before + 1
    assert len(client.search_model_versions(f"name = '{name}'")) == versions_before + 1
