"""Prefect tasks for the registry: log the trained learners to MLflow, register one, promote it.

Which learner becomes the candidate: the regression learner with the better median of the gate
metric (RegistryConfig.metric at RegistryConfig.k, averaged over the two meta-test settings) in
tonight's evaluation. Every learner still gets its MLflow run; only the candidate gets a model
version (alias ``challenger``), and :func:`promote_candidate` moves ``champion`` only on a paired win.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from metalearn import io
from metalearn.config import from_dict
from metalearn.evaluate.gate import RegistryConfig
from metalearn.learn.stage import task_type_of
from metalearn.registry import log_training_run, promote, resolve_tracking_uri
from tasks._common import artifact_key, content_of, manifest_hash, markdown_table


def _register_key(ctx: Any, parameters: dict[str, Any]) -> str:
    """What was trained and scored (by content), the configs, and the MLflow store: a different
    tracking server is a different registry. Bookkeeping fields such as ``cached`` are left out."""
    p = parameters
    return io.hash_json({
        "task": ctx.task.name, "shards": {"path": p["shards_dir"], "content": manifest_hash(p["shards_dir"])},
        "checkpoints": content_of({n: r["checkpoint"] for n, r in p["trained"].items()}),
        "scores": content_of(p["evaluation"]["scores_csv"]), "configs": p["configs"],
        "manifests": p["manifests"], "workdir": p["workdir"], "registry": p.get("registry_cfg"),
        "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI")})


def choose_candidate(headline: dict[str, float], regressors: list[str], metric: str, k: int) -> tuple[str, dict]:
    """The regressor with the best mean (over settings) of the median ``metric`` at ``k``; ties: first."""
    from metalearn.evaluate.protocol import HIGHER_IS_BETTER

    sign = -1.0 if HIGHER_IS_BETTER.get(metric, False) else 1.0  # lower is better after signing
    evidence: dict[str, float] = {}
    for name in regressors:
        values = [v for key, v in headline.items()
                  if key.endswith(f".{name}.k{k}.{metric}_median") and not math.isnan(v)]
        if values:
            evidence[name] = sum(values) / len(values)
    if not evidence:
        return regressors[0], {"reason": f"no {metric} at k={k} in the evaluation; first learner chosen"}
    best = min(evidence, key=lambda n: (sign * evidence[n], regressors.index(n)))
    return best, {"metric": metric, "k": k, "median_by_learner": evidence}


@task(name="register", cache_key_fn=_register_key, persist_result=True)
def register(shards_dir: str, trained: dict[str, dict[str, Any]], evaluation: dict[str, Any],
             configs: dict[str, Any], manifests: dict[str, str], workdir: str,
             registry_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Log one MLflow run per trained regression learner; register the best one as ``challenger``.

    Args:
        trained: learner name -> meta_train's result ({"checkpoint", "history", "metrics", ...}).
        evaluation: evaluate's result ({"scores_csv", "summary_md", "plot_png", "headline"}).
        configs: stage configs logged as params (``configs["eval"]`` fixes the paired draws).
        manifests: other stage directories (snapshot, features) logged as lineage.
        registry_cfg: RegistryConfig fields except tracking_uri (``$MLFLOW_TRACKING_URI``, else
            SQLite under ``workdir``).
    Returns:
        {"candidate", "selection", "run_id", "version", "model_uri", "model_name", "tracking_uri",
        "runs", "registry"}.
    """
    logger = get_run_logger()
    cfg = from_dict(RegistryConfig, {**(registry_cfg or {}), "tracking_uri": resolve_tracking_uri(None, workdir)})
    regressors = [n for n in trained if task_type_of(n) == "regression"]
    classifiers = [n for n in trained if task_type_of(n) == "classification"]
    if not regressors:
        raise ValueError(f"no regression learner among {sorted(trained)}; the model needs one")
    candidate, selection = choose_candidate(evaluation.get("headline", {}), regressors, cfg.metric, cfg.k)
    classifier = trained[classifiers[0]]["checkpoint"] if classifiers else None
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
            register=name == candidate, run_name=f"{name}-nightly", tags=tags)
        logger.info("MLflow run %s for %s%s", runs[name]["run_id"], name,
                    f" -> {cfg.model_name} version {runs[name]['version']}" if name == candidate else "")
    chosen = runs[candidate]
    _run_artifact(chosen, candidate, selection)
    return {"candidate": candidate, "selection": selection, **chosen, "runs": runs, "registry": asdict(cfg)}


def _prefect_tags() -> dict[str, str]:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return {"prefect.flow_run_id": str(run_id), "prefect.flow_run_name": str(flow_run.name)} if run_id else {}


def _run_artifact(run: dict[str, Any], candidate: str, selection: dict[str, Any]) -> None:
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
    evidence = [{"field": k, "value": v} for k, v in decision.items() if k not in ("model_name", "version")]
    create_markdown_artifact(
        markdown=(f"# Promotion: **{decision['decision']}**\n\n"
                  f"`{decision['model_name']}` version {decision['version']} "
                  f"(learner {registered.get('candidate')}), compared to {decision.get('compared_to', 'n/a')}.\n\n"
                  f"{decision.get('reason', '')}\n\n## Evidence\n\n" + markdown_table(evidence, ["field", "value"])
                  + f"\n## Candidate selection\n\n{registered.get('selection')}\n"),
        key=artifact_key("promotion"), description="champion decision and the paired comparison behind it")
    return decision
