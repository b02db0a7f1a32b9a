"""MLflow records: one run per trained learner, the adapt-at-predict-time model, champion/challenger.

The only module that imports mlflow (tests/test_layers.py checks). Prefect tasks call these
functions with paths and get small JSON-able dicts back; consumers call :func:`load_champion`
without Prefect.

The logged model is a pyfunc whose input is a table of *support* and *query* rows (columns
``role``, ``formula``, optional ``cif``, ``target``, optional ``task_type``): at predict time it
featurizes the formulas with the feature set it was trained on, adapts its learner on the support
rows and returns ``prediction`` (+ ``uncertainty``) for the query rows. Versions get the alias
``challenger``; :func:`promote` moves ``champion`` only on a paired win on the same meta-test draws.

Example:
    >>> run = log_training_run("fomaml/learner.pt", shards_dir, classifier="protonet/learner.pt",
    ...                        configs={"eval": eval_cfg}, history="fomaml/history.json",
    ...                        scores="eval/scores.csv", report_files=["eval/summary.md"])
    >>> promote(run["version"])["decision"]
    'promoted'
    >>> load_champion().predict(table)          # DataFrame: prediction, uncertainty
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from metalearn import io
from metalearn.config import flatten
from metalearn.consumer import FEATURIZER_FILE, Predictor, featurizer_config
from metalearn.learners.base import Learner, save_learner

CHAMPION, CHALLENGER = "champion", "challenger"
SCORES_ARTIFACT = "evaluation/scores.csv"
MODEL_NAME_IN_RUN = "model"
# Config/JSON keys whose values are never logged, and environment variables whose values are scrubbed
# from everything logged (MP_API_KEY, PMG_MAPI_KEY, MLFLOW_TRACKING_PASSWORD, ...).
_SECRET_KEY = re.compile(r"(^|[._-])(api_?key|mapi_key|token|secret|password|credentials?)$", re.IGNORECASE)
_SECRET_ENV = re.compile(r"(^|_)(API_KEY|MAPI_KEY|KEY|TOKEN|SECRET|PASSWORD)$")
_REDACTED = "***"


@dataclass(frozen=True)
class RegistryConfig:
    """Where runs go and how a new version earns ``champion``.

    Args:
        tracking_uri: None -> ``$MLFLOW_TRACKING_URI``, else SQLite under the work directory.
        experiment: MLflow experiment of the training runs.
        model_name: registered model name.
        metric / k: the paired comparison (``metric`` from evaluate.py, at support size ``k``).
        min_improvement: relative improvement of the median per-task metric the candidate needs.
        min_win_rate: share of tasks (ties count half) the candidate must win.
        baseline: learner in the scores that the first model ever must beat.
    """

    tracking_uri: str | None = None
    experiment: str = "metalearn"
    model_name: str = "metalearn"
    metric: str = "mae_mad"
    k: int = 5
    min_improvement: float = 0.01
    min_win_rate: float = 0.5
    baseline: str = "mean"


# --- tracking store ------------------------------------------------------------------------------

def resolve_tracking_uri(uri: str | None = None, workdir: str | os.PathLike | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<workdir>/mlflow/mlflow.db``."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if chosen:
        return chosen
    store = io.resolve_workdir(workdir) / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def _sqlite_artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live next to its database, never in ./mlruns (pitfall M5)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "artifacts").as_uri()


@contextmanager
def _tracking(uri: str) -> Iterator[MlflowClient]:
    """Point MLflow's fluent API at ``uri`` for the block (log_model and load_model use it)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    finally:
        mlflow.set_tracking_uri(previous)


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_sqlite_artifact_root(uri))
    except MlflowException:  # created concurrently by another run
        return client.get_experiment_by_name(name).experiment_id


# --- secrets and lineage -------------------------------------------------------------------------

def _secret_values() -> list[str]:
    """Values of secret-looking environment variables (MP_API_KEY, ...) that must never be logged."""
    return [v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 16]


def _redact(obj: Any, secrets: list[str]) -> Any:
    """Replace secret-named keys' values and any occurrence of a secret value, recursively."""
    if isinstance(obj, Mapping):
        return {k: _REDACTED if _SECRET_KEY.search(str(k)) and v else _redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        for secret in secrets:
            obj = obj.replace(secret, _REDACTED)
    return obj


def _copy_scrubbed(src: Path, dst: Path, secrets: list[str]) -> None:
    """Copy a file for logging; text files have secret values replaced (binary files are copied)."""
    data = src.read_bytes()
    try:
        text = data.decode()
    except UnicodeDecodeError:
        shutil.copyfile(src, dst)
        return
    dst.write_text(_redact(text, secrets))


def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout holding this package, or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, timeout=10,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _lineage(shards_manifest: Any) -> dict[str, str]:
    extra = shards_manifest.extra or {}
    return {
        "lineage.shards_hash": shards_manifest.content_hash,
        "lineage.snapshot_hash": str(shards_manifest.inputs.get("snapshot", "unknown")),
        "lineage.features_hash": str(shards_manifest.inputs.get("features", "unknown")),
        "lineage.snapshot_id": str(extra.get("snapshot_id", "unknown")),
        "lineage.source": str(shards_manifest.source),
        "lineage.database_version": str(shards_manifest.database_version or "unknown"),
        "git.commit": git_commit(),
    }


def eval_protocol(shards_hash: str, eval_config: Any) -> str:
    """Hash of what fixes the meta-test draws (shards, eval seed and query size): equal -> paired."""
    cfg = flatten("", eval_config) if eval_config is not None else {}
    return io.hash_json({"shards": shards_hash, "seed": cfg.get("seed"), "n_query": cfg.get("n_query")})[:16]


# --- the pyfunc model ----------------------------------------------------------------------------

class MetalearnModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of :class:`metalearn.consumer.Predictor`: adapt on support rows, predict query rows."""

    def load_context(self, context: Any) -> None:
        art = context.artifacts
        self.predictor = Predictor.from_files(art["regressor"], art.get("classifier"), art["feature_stats"],
                                              art["featurizer"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = params or {}
        task_type = params.get("task_type") or None
        return self.predictor.predict_table(model_input, task_type=None if task_type == "auto" else task_type,
                                            transform=params.get("transform") or "none")


SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "role"), ColSpec("string", "formula"), ColSpec("string", "cif", required=False),
                   ColSpec("double", "target", required=False), ColSpec("string", "task_type", required=False)]),
    outputs=Schema([ColSpec("double", "prediction"), ColSpec("double", "uncertainty", required=False)]),
    params=ParamSchema([ParamSpec("task_type", "string", "auto"), ParamSpec("transform", "string", "none")]),
)

# Shown in the UI and stored with the model; MLflow also runs the model on it once at log time.
INPUT_EXAMPLE = pd.DataFrame({"role": ["support", "support", "support", "query"],
                              "formula": ["Fe2O3", "NaCl", "MgO", "ZnO"], "target": [1.0, 2.0, 3.0, float("nan")]})

_MODEL_CODE = "import mlflow\nfrom metalearn.registry import MetalearnModel\n\nmlflow.models.set_model(MetalearnModel())\n"


def pip_requirements() -> list[str]:
    """Exact pins of what the model needs at load time (explicit: inference costs ~8 s, pitfall M4)."""
    def pin(dist: str) -> str:
        return f"{dist}=={importlib_metadata.version(dist).split('+')[0]}"  # torch 2.13.0+cpu -> 2.13.0

    return [pin(d) for d in ("torch", "mlflow", "pymatgen", "matminer", "pandas", "numpy", "pyarrow",
                             "scikit-learn", "metalearn")]


def _learner_file(learner: Learner | str | Path, dst: Path) -> tuple[Path, str]:
    """A save_learner file for ``learner`` (written to ``dst`` if given an object) and its name."""
    if isinstance(learner, (str, Path)):
        blob = torch.load(learner, map_location="cpu", weights_only=False)
        shutil.copyfile(learner, dst)
        return dst, str(blob["name"])
    save_learner(learner, dst)
    return dst, learner.name


# --- logging a training run ----------------------------------------------------------------------

def _metric_key(key: str) -> str:
    return re.sub(r"[^0-9A-Za-z_\-. /:]", "_", key)


def _log_in_chunks(client: MlflowClient, run_id: str, metrics: list[Metric], params: list[Param],
                   tags: list[RunTag]) -> None:
    """log_batch within the store's per-call limits (100 params or tags, 1000 metrics)."""
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(tags), 100):
        client.log_batch(run_id, tags=tags[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def _summary_metrics(scores: pd.DataFrame) -> dict[str, float]:
    """Every figure of evaluate.summarize as ``eval/<setting>/<metric>/k<k>/<learner>.<stat>``."""
    from metalearn.evaluate import summarize

    out = {}
    for row in summarize(scores).to_dict("records"):
        stem = f"eval/{row['setting']}/{row['metric']}/k{row['k']}/{row['learner']}"
        for stat, value in row.items():
            numeric = stat not in ("setting", "metric", "k", "learner") and isinstance(value, (int, float))
            if numeric and math.isfinite(value):
                out[_metric_key(f"{stem}.{stat}")] = float(value)
    return out


def _history(history: Iterable[Mapping[str, float]] | str | Path) -> list[Mapping[str, float]]:
    if isinstance(history, (str, Path)):
        return json.loads(Path(history).read_text())
    return list(history)


def _model_artifacts(learner: Learner | str | Path, classifier: Learner | str | Path | None, shards_dir: Path,
                     tmp: Path) -> tuple[dict[str, str], str, str]:
    """The files the pyfunc carries (learners, feature stats, featurizer config) and the learners' names."""
    artifacts = {"feature_stats": str(shards_dir / "feature_stats.parquet")}
    reg_path, reg_name = _learner_file(learner, tmp / "regressor.pt")
    artifacts["regressor"] = str(reg_path)
    cls_name = ""
    if classifier is not None:
        cls_path, cls_name = _learner_file(classifier, tmp / "classifier.pt")
        artifacts["classifier"] = str(cls_path)
    io.write_json_atomic(tmp / FEATURIZER_FILE, featurizer_config(artifacts["feature_stats"]))
    artifacts["featurizer"] = str(tmp / FEATURIZER_FILE)
    return artifacts, reg_name, cls_name


def _run_files(out: Path, shards_dir: Path, manifests: Mapping[str, str | Path] | None, scores: pd.DataFrame | None,
               report_files: Iterable[str | Path], secrets: list[str]) -> None:
    """Stage ``manifests/<stage>.json`` and ``evaluation/*`` under ``out``, secrets scrubbed."""
    (out / "manifests").mkdir()
    for stage, path in {"shards": shards_dir, **(manifests or {})}.items():
        path = Path(path) / io.MANIFEST if Path(path).is_dir() else Path(path)
        text = json.dumps(_redact(json.loads(path.read_text()), secrets), indent=2, sort_keys=True)
        (out / "manifests" / f"{stage}.json").write_text(text)
    (out / "evaluation").mkdir()
    if scores is not None:
        (out / "evaluation" / "scores.csv").write_text(_redact(scores.to_csv(index=False), secrets))
    for path in map(Path, report_files):
        if path.name != "scores.csv" or scores is None:
            _copy_scrubbed(path, out / "evaluation" / path.name, secrets)


def _metrics(history: Iterable[Mapping[str, float]] | str | Path, figures: Mapping[str, float] | None,
             scores: pd.DataFrame | None) -> list[Metric]:
    """Training curves at their steps, single training figures, every evaluation summary figure."""
    now = int(time.time() * 1000)
    out = [Metric(_metric_key(f"train/{key}"), float(value), now, int(entry["step"]))
           for entry in _history(history) for key, value in entry.items()
           if key != "step" and value is not None and math.isfinite(float(value))]
    single = {_metric_key(f"train/{k}"): float(v) for k, v in (figures or {}).items()
              if isinstance(v, (int, float)) and math.isfinite(float(v))}
    if scores is not None:
        single.update(_summary_metrics(scores))
    return out + [Metric(k, v, now, 0) for k, v in single.items()]


def log_training_run(
    learner: Learner | str | Path,
    shards_dir: str | Path,
    *,
    classifier: Learner | str | Path | None = None,
    configs: Mapping[str, Any] | None = None,
    history: Iterable[Mapping[str, float]] | str | Path = (),
    metrics: Mapping[str, float] | None = None,
    scores: pd.DataFrame | str | Path | None = None,
    scores_learner: str | None = None,
    report_files: Iterable[str | Path] = (),
    manifests: Mapping[str, str | Path] | None = None,
    cfg: RegistryConfig = RegistryConfig(),
    register: bool = True,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Record one trained learner as an MLflow run with its pyfunc model; register it as ``challenger``.

    Args:
        learner: the trained regression learner, or its ``save_learner`` file.
        shards_dir: the shards it was trained on (feature_stats.parquet travels with the model).
        classifier: optional classification learner carried by the same model (e.g. protonet).
        configs: stage configs (dataclasses or dicts), logged flattened as params ``<stage>.<key>``;
            ``configs["eval"]`` (or ``["evaluate"]``: seed, n_query) identifies the meta-test draws
            for :func:`promote`. Secret-named keys (api_key, token, ...) are logged as "***".
        history: training curve, ``[{"step": s, "train_loss": ..., "val_loss": ...}, ...]`` or a
            JSON file of it; logged as metrics ``train/<key>`` at each step.
        metrics: single figures such as best_val_loss, logged as ``train/<key>``.
        scores: the long k-shot score table (or scores.csv): artifact evaluation/scores.csv, and
            every evaluation summary figure as a metric ``eval/<setting>/<metric>/k<k>/<learner>.<stat>``.
        scores_learner: the learner's name in ``scores`` (default: its ``name``).
        report_files: more evaluation artifacts (summary.md, kshot.png).
        manifests: other stages' directories (or manifest.json files), e.g. snapshot and features.
        cfg: tracking URI, experiment and registered model name.
        register: create a registered model version with alias ``challenger``.
        tags: extra run tags.

    Returns:
        {"run_id", "experiment_id", "model_uri", "model_name", "version", "tracking_uri"}
        (``version`` None when not registered).
    """
    shards_dir = Path(shards_dir)
    shards_manifest = io.read_manifest(shards_dir)
    uri = resolve_tracking_uri(cfg.tracking_uri)
    secrets = _secret_values()
    configs = dict(configs or {})
    table = scores if isinstance(scores, pd.DataFrame) or scores is None else pd.read_csv(scores)
    with tempfile.TemporaryDirectory(prefix="metalearn-mlflow-") as tmp_name, _tracking(uri) as client:
        tmp = Path(tmp_name)
        artifacts, reg_name, cls_name = _model_artifacts(learner, classifier, shards_dir, tmp)
        (tmp / "model_code.py").write_text(_MODEL_CODE)
        (tmp / "run").mkdir()
        _run_files(tmp / "run", shards_dir, manifests, table, report_files, secrets)

        protocol = eval_protocol(shards_manifest.content_hash, configs.get("eval", configs.get("evaluate")))
        run_tags = {**_lineage(shards_manifest), "metalearn.learner": reg_name, "metalearn.classifier": cls_name,
                    "metalearn.scores_learner": scores_learner or reg_name, "metalearn.eval_protocol": protocol,
                    "metalearn.feature_set_version": json.loads(Path(artifacts["featurizer"]).read_text())["version"],
                    **(tags or {})}
        params = {"learner.name": reg_name, "classifier.name": cls_name or "none"}
        for stage, value in configs.items():
            params.update(flatten(stage, value))
        state = torch.load(artifacts["regressor"], map_location="cpu", weights_only=False)["state"]
        params.update(flatten("learner", state.get("hyperparams", {})))

        experiment_id = _experiment_id(client, cfg.experiment, uri)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or reg_name) as run:
            run_id = run.info.run_id
            _log_in_chunks(client, run_id, _metrics(history, metrics, table),
                           [Param(k, str(_redact(v, secrets))[:6000]) for k, v in _redact(params, secrets).items()],
                           [RunTag(k, str(_redact(v, secrets))) for k, v in run_tags.items()])
            for folder in ("manifests", "evaluation"):
                if any((tmp / "run" / folder).iterdir()):
                    client.log_artifacts(run_id, str(tmp / "run" / folder), folder)
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN, python_model=str(tmp / "model_code.py"), artifacts=artifacts,
                signature=SIGNATURE, input_example=INPUT_EXAMPLE, pip_requirements=pip_requirements(),
                metadata={"learner": reg_name, "classifier": cls_name, "eval_protocol": protocol,
                          "shards_hash": shards_manifest.content_hash},
            )
        result = {"run_id": run_id, "experiment_id": experiment_id, "model_uri": info.model_uri,
                  "model_name": cfg.model_name, "version": None, "tracking_uri": uri}
        if register:
            version_tags = {k: v for k, v in run_tags.items() if k.startswith(("metalearn.", "lineage.", "git."))}
            version_tags["metalearn.scores_uri"] = f"runs:/{run_id}/{SCORES_ARTIFACT}" if table is not None else ""
            version = mlflow.register_model(info.model_uri, cfg.model_name, tags=_redact(version_tags, secrets))
            client.set_registered_model_alias(cfg.model_name, CHALLENGER, version.version)
            result["version"] = str(version.version)
    return result


# --- promotion -----------------------------------------------------------------------------------

def _version_scores(version: Any, uri: str) -> pd.DataFrame | None:
    source = version.tags.get("metalearn.scores_uri")
    if not source:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=uri)
        return pd.read_csv(path)


def _same_draws(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``a`` and ``b`` (already renamed) restricted to the (task, k, draw, metric) keys both have."""
    keys = ["task_id", "setting", "k", "draw", "metric"]
    common = a[keys].drop_duplicates().merge(b[keys].drop_duplicates(), on=keys)
    return pd.concat([a.merge(common, on=keys), b.merge(common, on=keys)], ignore_index=True)


def paired_gate(scores: pd.DataFrame, candidate: str, reference: str, cfg: RegistryConfig) -> dict[str, Any]:
    """The promotion test on a long score table holding both learners on the same draws.

    The candidate passes when the median over tasks of its per-task metric improves on the
    reference's by at least ``cfg.min_improvement`` (relative) and it wins at least
    ``cfg.min_win_rate`` of the tasks (paired, ties half).
    """
    from metalearn.evaluate import HIGHER_IS_BETTER, paired_comparison
    from metalearn.report import per_task

    numbers: dict[str, Any] = {"metric": cfg.metric, "k": cfg.k, "n_tasks": 0}
    at_k = scores[(scores["metric"] == cfg.metric) & (scores["k"] == cfg.k)]
    present = set(at_k["learner"])
    if not {candidate, reference} <= present:
        return {**numbers, "passed": False,
                "reason": f"no {cfg.metric} scores at k={cfg.k} for {sorted({candidate, reference} - present)}"}
    cmp = paired_comparison(at_k, candidate, reference, cfg.metric, cfg.k)
    if cmp.n_tasks == 0:
        return {**numbers, "passed": False, "reason": "no task with finite scores for both on the same draws"}
    table = per_task(at_k)
    wide = table.pivot_table(index="task_id", columns="learner", values="value").loc[cmp.differences.index]
    med_c, med_r = float(np.median(wide[candidate])), float(np.median(wide[reference]))
    sign = 1.0 if HIGHER_IS_BETTER[cfg.metric] else -1.0
    rel = sign * (med_c - med_r) / max(abs(med_r), 1e-12)
    numbers.update(n_tasks=cmp.n_tasks, win_rate=cmp.win_rate, mean_improvement=cmp.mean_improvement,
                   median_candidate=med_c, median_reference=med_r, relative_improvement=rel)
    passed = rel >= cfg.min_improvement and cmp.win_rate >= cfg.min_win_rate
    reason = (f"median {cfg.metric} {med_c:.4g} vs {med_r:.4g} ({rel:+.1%}, need >= {cfg.min_improvement:.1%}); "
              f"wins {cmp.win_rate:.0%} of {cmp.n_tasks} tasks (need >= {cfg.min_win_rate:.0%})")
    return {**numbers, "passed": bool(passed), "reason": reason}


def _alias_version(client: MlflowClient, name: str, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def promote(version: str | int | None = None, cfg: RegistryConfig = RegistryConfig()) -> dict[str, Any]:
    """Give ``version`` (default: the ``challenger``) the ``champion`` alias if it wins the paired gate.

    Against the current champion: both versions' scores.csv are compared on the draws both have
    (same tasks, k, draw), provided their evaluation protocols match. With no champion yet: against
    ``cfg.baseline`` in the candidate's own scores. The decision and its numbers are recorded as
    ``promotion.*`` tags on the version.

    Returns:
        JSON-able {"model_name", "version", "decision" ("promoted" | "rejected" | "already_champion"),
        "champion", "compared_to", "reason", "metric", "k", "n_tasks", "win_rate",
        "median_candidate", "median_reference", "relative_improvement", ...}.
    """
    uri = resolve_tracking_uri(cfg.tracking_uri)
    with _tracking(uri) as client:
        if version is None:
            found = _alias_version(client, cfg.model_name, CHALLENGER)
            if found is None:
                raise LookupError(f"registered model {cfg.model_name!r} has no {CHALLENGER!r} version at {uri}")
            version = found.version
        cand = client.get_model_version(cfg.model_name, str(version))
        champ = _alias_version(client, cfg.model_name, CHAMPION)
        base = {"model_name": cfg.model_name, "version": str(cand.version)}
        if champ is not None and str(champ.version) == str(cand.version):
            return {**base, "decision": "already_champion", "champion": str(champ.version),
                    "reason": "this version is already the champion"}
        gate = _compare(cand, champ, cfg, uri)
        decision = "promoted" if gate.pop("passed") else "rejected"
        if decision == "promoted":
            client.set_registered_model_alias(cfg.model_name, CHAMPION, cand.version)
            if champ is not None:
                client.set_model_version_tag(cfg.model_name, champ.version, "promotion.replaced_by", str(cand.version))
        previous = str(champ.version) if champ is not None else None
        out = {**base, "decision": decision, **gate,
               "champion": str(cand.version) if decision == "promoted" else previous,
               "previous_champion": previous, "min_improvement": cfg.min_improvement,
               "min_win_rate": cfg.min_win_rate}
        for key, value in out.items():
            if key not in ("model_name", "version") and value is not None:
                client.set_model_version_tag(cfg.model_name, cand.version, f"promotion.{key}", str(value))
    return out


def _compare(cand: Any, champ: Any | None, cfg: RegistryConfig, uri: str) -> dict[str, Any]:
    """Gate numbers for the candidate version against the champion version (or the baseline)."""
    cand_scores = _version_scores(cand, uri)
    if cand_scores is None:
        return {"passed": False, "compared_to": None, "reason": "candidate has no scores.csv artifact"}
    cand_name = cand.tags.get("metalearn.scores_learner") or cand.tags.get("metalearn.learner")
    ours = cand_scores[cand_scores["learner"] == cand_name].assign(learner="candidate")
    if ours.empty:
        return {"passed": False, "compared_to": None, "reason": f"candidate's scores.csv has no rows of {cand_name!r}"}
    if champ is None:
        compared_to = f"baseline {cfg.baseline}"
        theirs = cand_scores[cand_scores["learner"] == cfg.baseline].assign(learner="reference")
        if theirs.empty:
            return {"passed": False, "compared_to": compared_to,
                    "reason": f"no champion yet and the scores have no {cfg.baseline!r} baseline to beat"}
    else:
        compared_to = f"version {champ.version}"
        p_cand, p_champ = cand.tags.get("metalearn.eval_protocol"), champ.tags.get("metalearn.eval_protocol")
        if p_cand and p_champ and p_cand != p_champ:
            return {"passed": False, "compared_to": compared_to,
                    "reason": f"evaluation protocols differ ({p_cand} vs {p_champ}): the draws are not paired"}
        champ_scores = _version_scores(champ, uri)
        if champ_scores is None:
            return {"passed": False, "compared_to": compared_to, "reason": "champion has no scores.csv artifact"}
        champ_name = champ.tags.get("metalearn.scores_learner") or champ.tags.get("metalearn.learner")
        theirs = champ_scores[champ_scores["learner"] == champ_name].assign(learner="reference")
    return {"compared_to": compared_to, **paired_gate(_same_draws(ours, theirs), "candidate", "reference", cfg)}


# --- consumers -----------------------------------------------------------------------------------

def load_model(uri: str, tracking_uri: str | None = None) -> Any:
    """Load a logged model (``models:/metalearn@champion``, ``runs:/...``, a path) as an MLflow pyfunc.

    Raises LookupError (not an MLflow type, so callers need no mlflow import) when the store has
    no such model, version or alias.
    """
    store = resolve_tracking_uri(tracking_uri)
    with _tracking(store):
        try:
            return mlflow.pyfunc.load_model(uri)
        except MlflowException as err:
            raise LookupError(f"cannot load model {uri!r} from {store}: {str(err).splitlines()[0]}") from err


def load_champion(name: str = "metalearn", tracking_uri: str | None = None) -> Any:
    """The current ``champion`` of registered model ``name``; LookupError if there is none."""
    uri = resolve_tracking_uri(tracking_uri)
    with _tracking(uri) as client:
        if _alias_version(client, name, CHAMPION) is None:
            raise LookupError(f"registered model {name!r} has no {CHAMPION!r} version at {uri}")
    return load_model(f"models:/{name}@{CHAMPION}", uri)


__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "SIGNATURE",
    "MetalearnModel",
    "RegistryConfig",
    "eval_protocol",
    "git_commit",
    "load_champion",
    "load_model",
    "log_training_run",
    "paired_gate",
    "pip_requirements",
    "promote",
    "resolve_tracking_uri",
]
