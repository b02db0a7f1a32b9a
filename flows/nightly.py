"""The nightly pipeline as one Prefect flow: ingest -> featurize -> shards -> meta-train -> evaluate -> register.

Every stage is one task in ``tasks/``; this module only wires them. Parameters are JSON-able and
validated on the first line (an unknown key, profile, learner or stage setting fails before any
work). Reruns with unchanged inputs hit the tasks' caches (keyed by the input manifests' content
hashes), so a night without new data costs the ingest check and a few cache lookups.

One nightly run at a time: the flow body holds a slot of the Prefect **global concurrency limit**
``metalearn-nightly`` (limit 1, created on first use; see :data:`NIGHTLY_LIMIT`). It is taken by
the flow itself, so it covers every way a run starts: the cron deployment, an on-demand run, and
``metalearn run`` in a terminal against the same Prefect server (or the same embedded database).
A second run waits for the slot (up to :data:`NIGHTLY_WAIT_S`). The deployments in
``deployments/prefect.yaml`` also set a deployment-level ``concurrency_limit: 1`` so a worker does
not even start infrastructure for a run that would only wait.

Task runners: the default runner (threads) or, with ``task_runner("dask", address)``, prefect-dask's
``DaskTaskRunner`` (a temporary LocalCluster, or the scheduler at ``address``); the featurize chunks
are the fan-out (``.map``). Meta-training runs one learner after the other on purpose (see
tasks/train.py).

Example:
    >>> nightly(profile="quick")                               # embedded Prefect, bundled data
    >>> with_runner("dask")(profile="default", source="mp")    # chunks on a local Dask cluster
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.concurrency.sync import concurrency

from metalearn.config import from_dict
from metalearn.io import resolve_workdir
from metalearn.pipeline import RunConfig, resolve_stages
from tasks import evaluate as evaluate_tasks
from tasks import featurize as featurize_tasks
from tasks import ingest as ingest_tasks
from tasks import register as register_tasks
from tasks import shards as shards_tasks
from tasks import train as train_tasks

NIGHTLY_LIMIT = "metalearn-nightly"  # global concurrency limit: one nightly run at a time
NIGHTLY_WAIT_S = 6 * 3600  # a run waiting longer than this for the slot fails instead of piling up
FLOW_NAME = "metalearn-nightly"


def ensure_global_limit(name: str = NIGHTLY_LIMIT, limit: int = 1) -> None:
    """Create the global concurrency limit ``name`` unless it exists (an existing limit is left as set)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            except ObjectAlreadyExists:  # created by a run starting at the same moment
                pass


def fresh(task_obj: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a cached task; if its cached result points at an output deleted since, run it again."""
    result = task_obj(*args, **kwargs)
    if not Path(result["path"]).exists():
        get_run_logger().warning("%s: cached output %s is gone; recomputing", task_obj.name, result["path"])
        result = task_obj.with_options(refresh_cache=True)(*args, **kwargs)
    return result


def featurize_snapshot(snapshot_dir: str, workdir: str, featurize_cfg: dict[str, Any]) -> dict[str, Any]:
    """plan -> chunks fanned out over the flow's task runner -> assemble."""
    feature_plan = featurize_tasks.plan(snapshot_dir, workdir, featurize_cfg)
    if feature_plan["chunks"]:
        futures = featurize_tasks.chunk.map(feature_plan["chunks"], cache_dir=unmapped(feature_plan["cache_dir"]))
        futures.result()  # raises if any chunk failed (after its retries)
    return fresh(featurize_tasks.assemble, feature_plan)


def train_evaluate_register(run: RunConfig, stages: dict[str, Any], root: str, shards_dir: str,
                            manifests: dict[str, str]) -> dict[str, Any]:
    """Meta-train both learners (one after the other), evaluate them with the baselines, register, promote."""
    trained = {name: fresh(train_tasks.meta_train, shards_dir, name, stages["train"][name])
               for name in run.learners}
    evaluation = fresh(evaluate_tasks.evaluate, shards_dir,
                       {name: result["checkpoint"] for name, result in trained.items()}, stages["evaluate"], root)
    configs = {"profile": {"name": run.profile}, "ingest": stages["ingest"], "featurize": stages["featurize"],
               "shards": stages["shards"], "train": stages["train"], "eval": stages["evaluate"]}
    candidates = {name: trained[name] for name in run.registered_learners}  # baselines are scored, not shipped
    registered = register_tasks.register(shards_dir, candidates, evaluation, configs, manifests, root,
                                         stages["registry"])
    decision = register_tasks.promote_candidate(registered, enabled=run.promote)
    return {
        "trained": {n: {"checkpoint": r["checkpoint"], "metrics": r["metrics"]} for n, r in trained.items()},
        "evaluation": evaluation["path"], "candidate": registered["candidate"],
        "model_version": registered["version"], "run_id": registered["run_id"],
        "tracking_uri": registered["tracking_uri"], "decision": decision["decision"],
        "champion": decision.get("champion"),
    }


def _on_deployment(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Run the training half as deployment ``name`` (e.g. on the gpu pool) and wait for it."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(name, parameters=parameters, timeout=None)
    state = flow_run.state
    if state is None or not state.is_completed():
        raise RuntimeError(f"deployment {name!r} flow run {flow_run.name!r} ended {state.name if state else None}: "
                           f"{state.message if state else ''}")
    return {"train_flow_run": str(flow_run.id), "train_flow_run_name": flow_run.name}


@flow(name=FLOW_NAME, description="ingest -> featurize -> shards -> meta-train -> evaluate -> register/promote")
def nightly(
    profile: str = "default",
    source: str = "auto",
    include_oc: bool = True,
    workdir: str | None = None,
    mp_secret_block: str = "mp-api-key",
    gradient_learner: str = "fomaml",
    metric_learner: str = "metric",
    classifier_learner: str | None = "protonet",
    pretrained_baseline: bool = True,
    hyperparams: dict[str, dict[str, Any]] | None = None,
    model_name: str = "metalearn",
    promote: bool = True,
    train_deployment: str | None = None,
    registry: dict[str, Any] | None = None,
    ingest: dict[str, Any] | None = None,
    featurize: dict[str, Any] | None = None,
    shards: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    evaluate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole pipeline; parameters as in :class:`metalearn.config.RunConfig`.

    Returns:
        JSON-able summary: snapshot, features, shards, trained learners, headline, registered
        version and the promotion decision (or the training deployment's flow run).
    """
    run = from_dict(RunConfig, {k: v for k, v in locals().items() if v is not None})
    stages = resolve_stages(run)
    logger = get_run_logger()
    root = str(resolve_workdir(run.workdir))
    logger.info("profile %s, workdir %s, learners %s", run.profile, root, run.learners)
    ensure_global_limit()
    with concurrency(NIGHTLY_LIMIT, occupy=1, timeout_seconds=NIGHTLY_WAIT_S, strict=True):
        chosen = ingest_tasks.choose_source(run.source, run.mp_secret_block)
        snapshot = ingest_tasks.ingest_snapshot(root, chosen, stages["ingest"], run.mp_secret_block)
        oc = ingest_tasks.ingest_snapshot.with_options(retries=0)(root, "oc", stages["ingest"]) \
            if run.include_oc else None
        # Features and shards read one snapshot: Open Catalyst joins the main source's records here.
        combined = ingest_tasks.combine(root, [snapshot["path"], oc["path"]]) if oc else snapshot
        features = featurize_snapshot(combined["path"], root, stages["featurize"])
        task_shards = fresh(shards_tasks.build_task_shards, combined["path"], features["path"], root,
                            stages["shards"])
        manifests = {"snapshot": combined["path"], "features": features["path"]}
        stages["ingest"] = {**stages["ingest"], "source": chosen}  # logged to MLflow with the other configs
        if run.train_deployment:
            params = {k: v for k, v in dataclasses.asdict(run).items() if k in _RETRAIN_FIELDS}
            trained = _on_deployment(run.train_deployment, {**params, "workdir": root,
                                                            "shards_dir": task_shards["path"], **manifests})
        else:
            trained = train_evaluate_register(run, stages, root, task_shards["path"], manifests)
    return {"workdir": root, "profile": run.profile, "source": chosen, "snapshot": snapshot["path"],
            "oc_snapshot": oc["path"] if oc else None, "combined_snapshot": combined["path"], "features": features["path"],
            "shards": task_shards["path"], "shards_counts": task_shards["counts"], **trained}


_RETRAIN_FIELDS = ("profile", "gradient_learner", "metric_learner", "classifier_learner", "pretrained_baseline",
                   "hyperparams", "model_name", "promote",
                   "registry", "train", "evaluate")


@flow(name="metalearn-retrain", description="meta-train -> evaluate -> register/promote on existing shards")
def retrain(
    shards_dir: str | None = None,
    profile: str = "default",
    workdir: str | None = None,
    gradient_learner: str = "fomaml",
    metric_learner: str = "metric",
    classifier_learner: str | None = "protonet",
    pretrained_baseline: bool = True,
    hyperparams: dict[str, dict[str, Any]] | None = None,
    model_name: str = "metalearn",
    promote: bool = True,
    registry: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    evaluate: dict[str, Any] | None = None,
    snapshot: str | None = None,
    features: str | None = None,
) -> dict[str, Any]:
    """On-demand retraining (the ``gpu`` pool's deployment): the training half of :func:`nightly`.

    Args:
        shards_dir: the task shards to train on (default: the newest under the work directory).
        snapshot / features: their upstream directories, logged to MLflow as lineage when given.
    """
    run = from_dict(RunConfig, {k: v for k, v in locals().items()
                                if v is not None and k not in ("shards_dir", "snapshot", "features")})
    stages = resolve_stages(run)
    root = str(resolve_workdir(run.workdir))
    if shards_dir is None:
        from metalearn.shards.store import latest_shards

        found = latest_shards(Path(root))
        if found is None:
            raise ValueError(f"no task shards under {root}; run the nightly flow (or `metalearn shards`) first")
        shards_dir = str(found)
    get_run_logger().info("retraining %s on %s", run.learners, shards_dir)
    manifests = {k: v for k, v in (("snapshot", snapshot), ("features", features)) if v}
    return {"workdir": root, "shards": shards_dir,
            **train_evaluate_register(run, stages, root, shards_dir, manifests)}


@flow(name="metalearn-features", description="featurize one snapshot (plan, chunks fanned out, assemble)")
def features_flow(snapshot_dir: str, workdir: str, featurize: dict[str, Any] | None = None) -> dict[str, Any]:
    """The featurize stage alone, on the flow's task runner (``metalearn featurize``, Dask checks)."""
    from metalearn.features.plan import FeaturizeConfig

    cfg = from_dict(FeaturizeConfig, featurize or {})
    from dataclasses import asdict

    return featurize_snapshot(snapshot_dir, str(resolve_workdir(workdir)), asdict(cfg))


def task_runner(kind: str = "default", address: str | None = None) -> Any:
    """None for Prefect's default (thread pool) runner, or a DaskTaskRunner (LocalCluster or ``address``)."""
    if kind == "default":
        if address:
            raise ValueError("--dask-address needs --task-runner dask")
        return None
    if kind != "dask":
        raise ValueError(f"unknown task runner {kind!r}; expected 'default' or 'dask'")
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    # Processes, not threads: featurization is Python-heavy and would hold the GIL.
    return DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


def with_runner(kind: str = "default", address: str | None = None, flow_obj: Any = None) -> Any:
    """``flow_obj`` (default: :func:`nightly`) using the chosen task runner."""
    flow_obj = flow_obj or nightly
    runner = task_runner(kind, address)
    return flow_obj if runner is None else flow_obj.with_options(task_runner=runner)
