"""The champion works where this repository is absent: a fresh venv with only the model's requirements.

Slow (it installs the model's requirements.txt into a new ``python -m venv``: torch from the
machine's local wheel, the rest from the package index or pip's cache; ~1-3 min), still run in CI.
The venv is made from the base interpreter without system site-packages, so ``metalearn`` is not
importable there; the model's own copy (MLflow ``code_paths``) is what runs. Then:

* a Python consumer: ``mlflow.pyfunc.load_model("models:/...@champion")`` + ``predict``;
* ``mlflow models serve --env-manager local`` from that venv on 127.0.0.1: 200 with predictions,
  400 with the reason (and no traceback, no server path) for bad input; stopped by PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from registry_serving import invoke, model_server, table_payload
from score_tables import scores_table
from servers import FORMULAS, make_shards, tiny_learners

from metalearn import registry
from metalearn.evaluate.gate import RegistryConfig

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("self-contained")
    shards = make_shards(root / "shards")
    reg, cls = tiny_learners(len(pd.read_parquet(shards / "feature_stats.parquet")))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = RegistryConfig(tracking_uri=uri, model_name="metalearn")
    registry.log_training_run(reg, shards, classifier=cls, configs={"eval": {"seed": 0, "n_query": 16}}, cfg=cfg,
                              scores=scores_table({"metric": [0.5] * 4, "mean": [1.0] * 4}, ks=(1, 5, 10)))
    assert registry.promote(None, cfg)["decision"] == "promoted"
    model = registry.download_model("models:/metalearn@champion", uri, root / "model")
    return {"root": root, "uri": uri, "requirements": model / "requirements.txt"}


def clean_env(tracking_uri: str, venv: Path) -> dict[str, str]:
    """No trace of this repository or its venv: not on PATH, no PYTHONPATH, no VIRTUAL_ENV."""
    ours = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != ours)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{path}", "MLFLOW_TRACKING_URI": tracking_uri,
            "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def fresh_venv(champion, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    env = clean_env(champion["uri"], venv)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile",
                           "-r", str(champion["requirements"])], env=env, cwd=venv.parent,
                          capture_output=True, text=True, timeout=1500, check=False)
    if proc.returncode != 0:
        pytest.fail(f"installing the model's requirements failed:\n{proc.stderr[-4000:]}")
    return venv


def run_python(venv: Path, env: dict, cwd: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)


def test_the_repository_is_absent_from_the_fresh_venv(champion, fresh_venv, tmp_path):
    proc = run_python(fresh_venv, clean_env(champion["uri"], fresh_venv), tmp_path, "import metalearn")
    assert proc.returncode != 0 and "No module named 'metalearn'" in proc.stderr
    assert "metalearn" not in champion["requirements"].read_text()


def test_a_python_consumer_loads_and_predicts_with_the_code_the_model_carries(champion, fresh_venv, tmp_path):
    support, query = FORMULAS[:6], FORMULAS[6:9]
    table = pd.DataFrame({"role": ["support"] * 6 + ["query"] * 3, "formula": support + query,
                          "target": [1.0, 2.0, 1.5, 3.0, 2.5, 0.5] + [np.nan] * 3})
    table.to_csv(tmp_path / "table.csv", index=False)
    code = ("import json, sys\n"
            "import mlflow, pandas as pd\n"
            "model = mlflow.pyfunc.load_model('models:/metalearn@champion')\n"
            "out = model.predict(pd.read_csv('table.csv'))\n"
            "import metalearn\n"
            "print(json.dumps({'rows': out.to_dict('list'), 'metalearn': metalearn.__file__}))\n")
    proc = run_python(fresh_venv, clean_env(champion["uri"], fresh_venv), tmp_path, code)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["metalearn"].startswith(str(REPO)) and "/code/metalearn/" in result["metalearn"]
    assert result["rows"]["formula"] == query and np.isfinite(result["rows"]["prediction"]).all()
    # The same numbers as this repository's own load of the champion.
    here = registry.load_model("models:/metalearn@champion", champion["uri"]).predict(table)
    np.testing.assert_allclose(result["rows"]["prediction"], here["prediction"], rtol=1e-6)


def test_mlflow_models_serve_from_the_fresh_venv(champion, fresh_venv, tmp_path):
    env = clean_env(champion["uri"], fresh_venv)
    support = [("Fe2O3", 1.5), ("NaCl", 0.2), ("MgO", 3.0), ("ZnO", 2.5)]
    with model_server("models:/metalearn@champion", fresh_venv / "bin", env, tmp_path, tmp_path / "serve.log") as url:
        status, body = invoke(url, table_payload(support, ["GaAs", "LiF"]))
        assert status == 200, body
        rows = json.loads(body)["predictions"]
        assert [r["formula"] for r in rows] == ["GaAs", "LiF"] and all(np.isfinite(r["prediction"]) for r in rows)
        status, body = invoke(url, table_payload(support[:1] + [("NaCl", None)], ["GaAs"]))
        assert status == 400, body
        error = json.loads(body)
        assert error["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "support row 2 (1-based): the target is missing" in error["message"]
        assert "Traceback" not in body and str(REPO) not in body and str(fresh_venv) not in body
