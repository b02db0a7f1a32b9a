"""Prefect tasks for the registry: log the trained learners to MLflow, register one, promote it.

Which learner becomes the candidate: the regression learner with the better median of the gate
metric (RegistryConfig.metric at RegistryConfig.k, averaged over the two meta-test settings) in
tonight's evaluation. Every learner still gets its MLflow run; only the candidate gets a model
version (alias ``challenger``), and :func:`promote_candidate` moves ``champion`` only on a paired win.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run

from metalearn import io
from metalearn.config import from_dict, to_jsonable
from metalearn.evaluate.gate import RegistryConfig, choose_candidate
from metalearn.learn.stage import task_type_of
from metalearn.predict.model_cache import resolve_tracking_uri
from metalearn.registry import log_training_run, promote
from tasks._common import artifact_key, content_of, manifest_hash, markdown_table, stamp


def _register_key(ctx: Any, parameters: dict[str, Any]) -> str:
    """What was trained and scored (by content), the configs, and the MLflow store: a different
    tracking server is a different registry. Bookkeeping fields such as ``cached`` are left out."""
    p = parameters
    return io.hash_json({
        "task": ctx.task.name, "shards": {"path": p["shards_dir"], "content": manifest_hash(p["shards_dir"])},
        "checkpoints": content_of({n: r["checkpoint"] for n, r in p["trained"].items()}),
        "scores": content_of(p["evaluation"]["scores_csv"]), "configs": p["configs"],
        "manifests": p["manifests"], "workdir": p["workdir"], "registry": to_jsonable(p["registry_cfg"]),
        "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI")})


@task(name="register", cache_key_fn=_register_key, persist_result=True)
def register(shards_dir: str, trained: dict[str, dict[str, Any]], evaluation: dict[str, Any],
             configs: dict[str, Any], manifests: dict[str, str], workdir: str,
             registry_cfg: RegistryConfig) -> dict[str, Any]:
    """Log one MLflow run per trained regression learner; register the best one as ``challenger``.

    Args:
        trained: learner name -> meta_train's result ({"checkpoint", "history", "metrics", ...}).
        evaluation: evaluate's result ({"scores_csv", "summary_md", "plot_png", "summary"}).
        configs: stage configs logged as params (``configs["eval"]`` fixes the paired draws).
        manifests: other stage directories (snapshot, features) logged as lineage.
        registry_cfg: the gate and registered model; its tracking URI None means
            ``$MLFLOW_TRACKING_URI``, else SQLite under ``workdir``.
    Returns:
        {"candidate", "selection", "run_id", "version", "model_uri", "model_name", "tracking_uri",
        "runs", "registry"}.
    """
    logger = get_run_logger()
    cfg = dataclasses.replace(registry_cfg, tracking_uri=resolve_tracking_uri(registry_cfg.tracking_uri, workdir))
    regressors = [n for n in trained if task_type_of(n) == "regression"]
    classifiers = [n for n in trained if task_type_of(n) == "classification"]
    if not regressors:
        raise ValueError(f"no regression learner among {sorted(trained)}; the model needs one")
    candidate, selection = choose_candidate(evaluation["summary"], regressors, cfg)
    classifier = trained[classifiers[0]]["checkpoint"] if classifiers else None
    classifier_vectors = trained[classifiers[0]].get("vectors") if classifiers else None
    reports = [evaluation[k] for k in ("summary_md", "plot_png") if evaluation.get(k)]
    tags = _prefect_tags()
    runs: dict[str, dict[str, Any]] = {}
    for name in sorted(regressors, key=lambda n: n != candidate):  # the candidate first
        result = trained[name]
        runs[name] = log_training_run(
            result["checkpoint"], Path(shards_dir), classifier=classifier,
            configs={**configs, "train": configs.get("train", {}).get(name, {})},
            history=result["history"], metrics=result.get("metrics"), scores=evaluation["scores_csv"],
            scores_learner=name, report_files=reports, manifests=manifests, cfg=cfg,
            register=name == candidate, run_name=run_name(name), tags=tags,
            representation=_representation(result.get("vectors") or classifier_vectors))
        logger.info("MLflow run %s for %s%s", runs[name]["run_id"], name,
                    f" -> {cfg.model_name} version {runs[name]['version']}" if name == candidate else "")
    result = {"candidate": candidate, "selection": selection, **runs[candidate], "runs": runs,
              "registry": to_jsonable(cfg)}
    publish_run(result)
    return stamp(result)


def _representation(vectors_dir: str | None) -> Path | None:
    """The representation directory a model must carry when its regressor or classifier reads vectors."""
    return Path(vectors_dir).parent if vectors_dir else None


def run_name(learner: str) -> str:
    """``<nightly|retrain>-<learner>-<UTC date>``: what the MLflow run is, at a glance."""
    kind = (flow_run.flow_name or "metalearn-run").removeprefix("metalearn-")
    return f"{kind}-{learner}-{datetime.now(UTC):%Y%m%d}"


def _prefect_tags() -> dict[str, str]:
    """Tags that link an MLflow run back to its Prefect flow run (the UI URL when a server is set)."""
    if not flow_run.id:
        return {}
    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name),
            "prefect.flow_name": str(flow_run.flow_name)}
    if os.environ.get("PREFECT_API_URL") and flow_run.ui_url:
        tags["prefect.flow_run_url"] = str(flow_run.ui_url)
    return tags


def publish_run(result: dict[str, Any]) -> None:
    """The link (or note) from the Prefect run to the candidate's MLflow run; also for a cached result."""
    run, candidate, selection = result, result["candidate"], result["selection"]
    uri = run["tracking_uri"]
    if uri.startswith(("http://", "https://")):
        create_link_artifact(link=f"{uri.rstrip('/')}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}",
                             link_text=f"MLflow run of {candidate} (version {run['version']})",
                             key=artifact_key("mlflow-run"), description="the registered candidate's MLflow run")
        return
    create_markdown_artifact(
        markdown=(f"# MLflow run\n\n- learner: **{candidate}** -> `{run['model_name']}` version "
                  f"{run['version']} (alias `challenger`)\n- run id: `{run['run_id']}`\n"
                  f"- tracking URI: `{uri}`\n- model URI: `{run['model_uri']}`\n- selection: {selection}\n\n"
                  f"Browse it with `mlflow ui --backend-store-uri {uri}`.\n"),
        key=artifact_key("mlflow-run"), description="the registered candidate's MLflow run")


def _promote_key(ctx: Any, parameters: dict[str, Any]) -> str:
    reg = parameters["registered"]
    return io.hash_json({"task": ctx.task.name, "run_id": reg["run_id"], "version": reg["version"],
                         "registry": reg["registry"], "enabled": parameters.get("enabled", True)})


@task(name="promote", cache_key_fn=_promote_key, persist_result=True)
def promote_candidate(registered: dict[str, Any], enabled: bool = True) -> dict[str, Any]:
    """Move ``champion`` to the registered version if it wins the paired gate; report the evidence."""
    cfg = from_dict(RegistryConfig, registered["registry"])
    if not enabled:
        decision = {"model_name": cfg.model_name, "version": registered["version"], "decision": "skipped",
                    "reason": "promotion disabled by the `promote` parameter"}
    else:
        decision = promote(registered["version"], cfg)
    get_run_logger().info("promotion: %s (%s)", decision["decision"], decision.get("reason"))
    decision = {**decision, "candidate": registered.get("candidate"), "selection": registered.get("selection")}
    publish_promotion(decision)
    return stamp(decision)


def publish_promotion(decision: dict[str, Any]) -> None:
    """The promotion decision and tonight's champion (also republished when promote was cached)."""
    evidence = [{"field": k, "value": v} for k, v in decision.items()
                if k not in ("model_name", "version", "candidate", "selection", "published_by")]
    champion = decision.get("champion")
    create_markdown_artifact(
        markdown=(f"# Champion: `{decision['model_name']}` version **{champion or 'none yet'}**\n\n"
                  f"Load it with `models:/{decision['model_name']}@champion`. Tonight's candidate: version "
                  f"{decision['version']} (learner {decision.get('candidate')}), {decision['decision']}.\n"),
        key=artifact_key("champion"), description="the registered model version that is champion tonight")
    create_markdown_artifact(
        markdown=(f"# Promotion: **{decision['decision']}**\n\n"
                  f"`{decision['model_name']}` version {decision['version']} "
                  f"(learner {decision.get('candidate')}), compared to {decision.get('compared_to', 'n/a')}.\n\n"
                  f"{decision.get('reason', '')}\n\n## Evidence\n\n" + markdown_table(evidence, ["field", "value"])
                  + f"\n## Candidate selection\n\n{decision.get('selection')}\n"),
        key=artifact_key("promotion"), description="champion decision and the paired comparison behind it")
