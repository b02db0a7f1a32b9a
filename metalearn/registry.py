"""MLflow records: one run per trained learner, the adapt-at-predict-time model, champion/challenger.

The only module that imports mlflow (tests/test_layers.py checks). Prefect tasks call these
functions with paths and get small JSON-able dicts back; consumers call :func:`load_champion`
without Prefect.

The logged model is a pyfunc whose input is a table of *support* and *query* rows (columns
``role``, ``formula``, optional ``cif``, ``target``, optional ``task_type``): at predict time it
featurizes the formulas with the feature set it was trained on, adapts its learner on the support
rows and returns ``prediction`` (+ ``uncertainty``) for the query rows. Versions get the alias
``challenger``; :func:`promote` moves ``champion`` only on a paired win on the same meta-test draws.

The model is self-contained: it carries this ``metalearn`` package (MLflow ``code_paths``), the
featurizer's names, settings and elemental tables, and a requirements list of published packages
only, so ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work where this repository is
absent. Bad input raises ``MlflowException(..., INVALID_PARAMETER_VALUE)`` from the pyfunc, so a
scoring server answers HTTP 400 with the reason (row, formula, why) and no stack trace.

What needs no mlflow lives beside it and is re-exported here: the gate and :class:`RegistryConfig`
(evaluate/gate.py), what a run records (run_record.py), secret scrubbing (secrets.py), the
tracking URI and the local model cache (predict/model_cache.py), and the model's behaviour itself
(:class:`metalearn.predict.local_model.MetalearnModel`), which a consumer with this package can
load from a cached copy without importing MLflow at all.

Example:
    >>> run = log_training_run("fomaml/learner.pt", shards_dir, classifier="protonet/learner.pt",
    ...                        configs={"eval": eval_cfg}, history="fomaml/history.json",
    ...                        scores="eval/scores.csv", report_files=["eval/summary.md"])
    >>> promote(run["version"])["decision"]
    'promoted'
    >>> load_champion().predict(table)          # DataFrame: formula, prediction, uncertainty
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from metalearn import io
from metalearn.evaluate.gate import (
    RegistryConfig,
    compare_versions,
    decision_record,
    eval_protocol,
)
from metalearn.layout import WorkDir
from metalearn.learn.learners.base import Learner
from metalearn.predict.model_cache import ModelCache, parse_model_uri, resolve_tracking_uri
from metalearn.run_record import (
    content_key,
    learner_tags,
    lineage,
    metric_points,
    model_artifacts,
    package_code,
    pip_requirements,
    run_params,
    stage_run_files,
)
from metalearn.secrets import redact, secret_values

CHAMPION, CHALLENGER = "champion", "challenger"
SCORES_ARTIFACT = "evaluation/scores.csv"
MODEL_NAME_IN_RUN = "model"
_DEFAULT = RegistryConfig()  # frozen: a safe shared default argument


# --- tracking store ------------------------------------------------------------------------------

def _sqlite_artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live next to its database (``mlartifacts/``), never in ./mlruns."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()


@contextmanager
def _tracking(uri: str) -> Iterator[MlflowClient]:
    """Point MLflow's fluent API at ``uri`` for the block (log_model and load_model use it).

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into the environment, and an
    explicitly set URI wins over the variable afterwards. So the state is put back as it was: the
    variable's old value, or nothing set at all (not the default URI pinned), otherwise a later
    flow in the same process would silently use this block's store, or ``./mlflow.db``.
    """
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    finally:
        mlflow.set_tracking_uri(None)  # unset (the variable too): the fluent API reads the variable again
        if previous_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


CONTENT_TAG = "metalearn.content_key"  # run_record.content_key of what the run recorded
MODEL_URI_TAG = "metalearn.model_uri"  # set last inside the run: a run without it is incomplete


def _run_with_key(client: MlflowClient, experiment_id: str, key: str, model_name: str | None
                  ) -> dict[str, Any] | None:
    """The finished run recording exactly this content (and, when registering, its model version), or None.

    A run whose registration did not finish (killed in between) is not reused: a new run is logged.
    """
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{CONTENT_TAG}` = '{key}'",
                              order_by=["attributes.start_time ASC"], max_results=5)
    for run in runs:
        model_uri = run.data.tags.get(MODEL_URI_TAG)
        if run.info.status != "FINISHED" or not model_uri:
            continue
        found = {"run_id": run.info.run_id, "model_uri": model_uri, "version": None}
        if model_name is None:
            return found
        versions = [v for v in client.search_model_versions(f"name = '{model_name}'")
                    if v.run_id == run.info.run_id]
        if versions:
            return {**found, "version": str(max(int(v.version) for v in versions))}
    return None


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_sqlite_artifact_root(uri))
    except MlflowException:  # created concurrently by another run
        return client.get_experiment_by_name(name).experiment_id


# --- the pyfunc model ----------------------------------------------------------------------------

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "role"), ColSpec("string", "formula"), ColSpec("string", "cif", required=False),
                   ColSpec("double", "target", required=False), ColSpec("string", "task_type", required=False)]),
    outputs=Schema([ColSpec("string", "formula"), ColSpec("double", "prediction"),
                    ColSpec("double", "uncertainty", required=False)]),
    params=ParamSchema([ParamSpec("task_type", "string", "auto"), ParamSpec("transform", "string", "none")]),
)

# Shown in the UI and stored with the model; MLflow also runs the model on it once at log time.
INPUT_EXAMPLE = pd.DataFrame({"role": ["support", "support", "support", "query"],
                              "formula": ["Fe2O3", "NaCl", "MgO", "ZnO"], "target": [1.0, 2.0, 3.0, float("nan")]})

# The model's own code file (MLflow "models from code"). It is the only place the pyfunc class
# exists: it imports from the package the model carries (code_paths) nothing but the predict path,
# and turns bad input into MLflow's INVALID_PARAMETER_VALUE (a 400 with the message, no traceback).
_MODEL_CODE = '''"""metalearn pyfunc: adapt on the table's support rows, predict its query rows."""
import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE


class MetalearnPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from metalearn.predict.local_model import MetalearnModel

        self.model = MetalearnModel.from_artifacts(context.artifacts)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from metalearn.predict.table import InputError

        try:
            return self.model.predict(model_input, params)
        except InputError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None


mlflow.models.set_model(MetalearnPyfunc())
'''


# --- logging a training run ----------------------------------------------------------------------

def _log_in_chunks(client: MlflowClient, run_id: str, metrics: list[Metric], params: list[Param],
                   tags: list[RunTag]) -> None:
    """log_batch within the store's per-call limits (100 params or tags, 1000 metrics)."""
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(tags), 100):
        client.log_batch(run_id, tags=tags[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


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
    cfg: RegistryConfig = _DEFAULT,
    register: bool = True,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    representation: str | Path | None = None,
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
        representation: the transfer representation's directory, for a head that reads it (the
            model then carries the representation's members).

    Returns:
        {"run_id", "experiment_id", "model_uri", "model_name", "version", "tracking_uri"}
        (``version`` None when not registered).
    """
    shards_dir = Path(shards_dir)
    shards_manifest = io.read_manifest(shards_dir)
    uri = resolve_tracking_uri(cfg.tracking_uri)
    secrets = secret_values()
    configs = dict(configs or {})
    table = scores if isinstance(scores, pd.DataFrame) or scores is None else pd.read_csv(scores)
    with tempfile.TemporaryDirectory(prefix="metalearn-mlflow-") as tmp_name, _tracking(uri) as client:
        tmp = Path(tmp_name)
        artifacts, reg_name, cls_name, structure = model_artifacts(learner, classifier, shards_dir, tmp,
                                                                   representation)
        (tmp / "model_code.py").write_text(_MODEL_CODE)
        code = package_code(tmp / "code")
        (tmp / "run").mkdir()
        stage_run_files(tmp / "run", shards_dir, manifests, table, report_files, secrets)

        key = content_key(artifacts, shards_manifest.content_hash, configs, table, manifests, cfg.model_name,
                          scores_learner, register)
        experiment_id = _experiment_id(client, cfg.experiment, uri)
        found = _run_with_key(client, experiment_id, key, cfg.model_name if register else None)
        if found is not None:  # the same inputs were logged before: reuse that run and version
            return {**found, "experiment_id": experiment_id, "model_name": cfg.model_name, "tracking_uri": uri,
                    "reused": True}
        protocol = eval_protocol(shards_manifest.content_hash, configs.get("eval", configs.get("evaluate")))
        run_tags = {**lineage(shards_manifest), **learner_tags(reg_name, cls_name, scores_learner, protocol,
                                                               artifacts["featurizer"]), **(tags or {}),
                    CONTENT_TAG: key}
        params = run_params(reg_name, cls_name, configs, artifacts["regressor"])

        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or reg_name) as run:
            run_id = run.info.run_id
            now = int(time.time() * 1000)
            points = [Metric(k, v, now, step) for k, v, step in metric_points(history, metrics, table)]
            _log_in_chunks(client, run_id, points,
                           [Param(k, str(redact(v, secrets))[:6000]) for k, v in redact(params, secrets).items()],
                           [RunTag(k, str(redact(v, secrets))) for k, v in run_tags.items()])
            for folder in ("manifests", "evaluation"):
                if any((tmp / "run" / folder).iterdir()):
                    client.log_artifacts(run_id, str(tmp / "run" / folder), folder)
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN, python_model=str(tmp / "model_code.py"), artifacts=artifacts,
                signature=SIGNATURE, input_example=INPUT_EXAMPLE, code_paths=[str(code)],
                pip_requirements=pip_requirements(structure=structure, representation=representation is not None),
                metadata={"learner": reg_name, "classifier": cls_name, "eval_protocol": protocol,
                          "shards_hash": shards_manifest.content_hash},
            )
            client.set_tag(run_id, MODEL_URI_TAG, info.model_uri)
        result = {"run_id": run_id, "experiment_id": experiment_id, "model_uri": info.model_uri,
                  "model_name": cfg.model_name, "version": None, "tracking_uri": uri, "reused": False}
        if register:
            version_tags = {k: v for k, v in run_tags.items() if k.startswith(("metalearn.", "lineage.", "git."))}
            version_tags["metalearn.scores_uri"] = f"runs:/{run_id}/{SCORES_ARTIFACT}" if table is not None else ""
            version = mlflow.register_model(info.model_uri, cfg.model_name, tags=redact(version_tags, secrets))
            client.set_registered_model_alias(cfg.model_name, CHALLENGER, version.version)
            result["version"] = str(version.version)
    return result


# --- promotion -----------------------------------------------------------------------------------

@contextmanager
def _no_download_bars() -> Iterator[None]:
    """MLflow draws a tqdm bar per download on stderr; a consumer's stderr is for its own lines."""
    before = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = before


def _version_scores(version: Any, uri: str) -> pd.DataFrame | None:
    source = version.tags.get("metalearn.scores_uri")
    if not source:
        return None
    with tempfile.TemporaryDirectory() as tmp, _no_download_bars():
        path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=uri)
        return pd.read_csv(path)


def _alias_version(client: MlflowClient, name: str, alias: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def promote(version: str | int | None = None, cfg: RegistryConfig = _DEFAULT) -> dict[str, Any]:
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
        gate = compare_versions(cand, champ, cfg, lambda v: _version_scores(v, uri))
        out = {**base, **decision_record(str(cand.version), str(champ.version) if champ is not None else None,
                                         gate, cfg)}
        if out["decision"] == "promoted":
            client.set_registered_model_alias(cfg.model_name, CHAMPION, cand.version)
            if champ is not None:
                client.set_model_version_tag(cfg.model_name, champ.version, "promotion.replaced_by", str(cand.version))
        for key, value in out.items():
            if key not in ("model_name", "version") and value is not None:
                client.set_model_version_tag(cfg.model_name, cand.version, f"promotion.{key}", str(value))
    return out


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


def resolve_model_version(uri: str, tracking_uri: str | None = None) -> str:
    """The version a ``models:/name@alias`` (or ``models:/name/latest``) URI names now; LookupError if none."""
    ref = parse_model_uri(uri)
    if ref is None or ref.kind not in ("alias", "version"):
        raise ValueError(f"{uri!r} does not name a registered model version")
    if ref.kind == "version":
        return str(ref.version)
    store = resolve_tracking_uri(tracking_uri)
    with _tracking(store) as client:
        try:
            if ref.alias == "latest":
                versions = client.search_model_versions(f"name = '{ref.name}'")
                if not versions:
                    raise LookupError(f"registered model {ref.name!r} has no versions at {store}")
                return str(max(int(v.version) for v in versions))
            return str(client.get_model_version_by_alias(ref.name, ref.alias).version)
        except MlflowException as err:
            raise LookupError(f"cannot resolve {uri!r} at {store}: {str(err).splitlines()[0]}") from None


def download_model(uri: str, tracking_uri: str | None, dst: str | Path) -> Path:
    """Copy a logged model's files (``models:/name/3``, ``runs:/...``) into the empty directory ``dst``."""
    store = resolve_tracking_uri(tracking_uri)
    try:
        with _tracking(store), _no_download_bars():
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=store)
    except MlflowException as err:
        raise LookupError(f"cannot load model {uri!r} from {store}: {str(err).splitlines()[0]}") from None
    return Path(dst)


def fetch_model_copy(uri: str, tracking_uri: str | None = None, workdir: str | os.PathLike | None = None) -> Path:
    """Resolve ``uri`` and copy that version into the work directory's model cache (once per version).

    The cache miss behind ``metalearn predict``: later calls find the copy with
    ``metalearn.predict.local_model.cached_model_dir`` without importing MLflow.
    """
    store = resolve_tracking_uri(tracking_uri, workdir)
    return ModelCache(WorkDir.resolve(workdir).model_cache()).fill(store, uri, resolve_model_version, download_model)


