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
import inspect
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped

from flows.slots import NIGHTLY_WAIT_S, nightly_slot
from metalearn.config import from_dict
from metalearn.features.plan import FeaturizeConfig
from metalearn.layout import WorkDir
from metalearn.learn.learners import uses_representation
from metalearn.pipeline import RunConfig, Stages, resolve_stages
from metalearn.represent.vectors import snapshot_of_shards
from metalearn.shards.store import latest_shards
from metalearn.threads import THREADS_ENV
from metalearn.worklock import WorkDirLock
from tasks import evaluate as evaluate_tasks
from tasks import featurize as featurize_tasks
from tasks import ingest as ingest_tasks
from tasks import register as register_tasks
from tasks import represent as represent_tasks
from tasks import shards as shards_tasks
from tasks import train as train_tasks
from tasks._common import ProgressArtifact, artifact_key
from tasks.publish import ensure_published

FLOW_NAME = "metalearn-nightly"
_D = RunConfig()  # the one source of the flows' parameter defaults


def fresh(task_obj: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a cached task; if its cached result points at an output deleted since, run it again."""
    result = task_obj(*args, **kwargs)
    if not Path(result["path"]).exists():
        get_run_logger().warning("%s: cached output %s is gone; recomputing", task_obj.name, result["path"])
        result = task_obj.with_options(refresh_cache=True)(*args, **kwargs)
    return result


def use_threads(threads: int | None) -> None:
    """The run's thread count for every stage (read by metalearn.threads.limited in each stage)."""
    if threads is not None:
        os.environ[THREADS_ENV] = str(threads)


class StageClock:
    """Wall time per stage of one flow run, for the one-line summaries ``metalearn run`` prints."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 2)


def featurize_snapshot(snapshot_dir: str, workdir: str, featurize_cfg: FeaturizeConfig) -> dict[str, Any]:
    """plan -> chunks fanned out over the flow's task runner -> assemble."""
    feature_plan = featurize_tasks.plan(snapshot_dir, workdir, featurize_cfg)
    chunks = feature_plan["chunks"]
    if chunks:
        progress = ProgressArtifact(artifact_key("features-progress"), "feature chunks done", label="featurize")
        futures = featurize_tasks.chunk.map(chunks, cache_dir=unmapped(feature_plan["cache_dir"]))
        for done, future in enumerate(futures, start=1):
            future.result()  # raises if the chunk failed (after its retries)
            progress.update(done, len(chunks))
        progress.done()
    return ensure_published("features", fresh(featurize_tasks.assemble, feature_plan))


def train_evaluate_register(run: RunConfig, stages: Stages, root: str, shards_dir: str, snapshot_dir: str,
                            manifests: dict[str, str], clock: StageClock) -> dict[str, Any]:
    """Represent, meta-train every learner (one after the other), evaluate them with the baselines,
    register the best, promote it on a paired win."""
    with clock.stage("represent"):
        representation = ensure_published("represent", fresh(represent_tasks.represent, root, snapshot_dir,
                                                             shards_dir, stages.represent))
    vectors = representation["path"]
    with clock.stage("train"):
        trained = {name: fresh(train_tasks.meta_train, root, shards_dir, name, stages.learners[name],
                               vectors if uses_representation(name) else None)
                   for name in run.learners}
    with clock.stage("evaluate"):
        evaluation = ensure_published("evaluate", fresh(
            evaluate_tasks.evaluate, root, shards_dir, {name: r["checkpoint"] for name, r in trained.items()},
            stages.evaluate, vectors))
    manifests = {**manifests, "representation": representation["representation_dir"]}
    configs = {"profile": {"name": run.profile}, **stages.logged()}
    candidates = {name: trained[name] for name in run.registered_learners}  # baselines are scored, not shipped
    with clock.stage("register"):
        registered = ensure_published("register", register_tasks.register(
            shards_dir, candidates, evaluation, configs, manifests, root, stages.registry))
        decision = ensure_published("promote", register_tasks.promote_candidate(registered, enabled=run.promote))
    return {
        "trained": {n: {"checkpoint": r["checkpoint"], "metrics": r["metrics"]} for n, r in trained.items()},
        "evaluation": evaluation["path"], "candidate": registered["candidate"],
        "model_version": registered["version"], "run_id": registered["run_id"],
        "tracking_uri": registered["tracking_uri"], "decision": decision["decision"],
        "champion": decision.get("champion"), "stage_seconds": clock.seconds,
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
    profile: str = _D.profile,
    source: str = _D.source,
    include_oc: bool = _D.include_oc,
    workdir: str | None = _D.workdir,
    mp_secret_block: str = _D.mp_secret_block,
    gradient_learner: str = _D.gradient_learner,
    metric_learner: str = _D.metric_learner,
    classifier_learner: str | None = _D.classifier_learner,
    transfer_learners: list[str] | None = None,
    pretrained_baseline: bool = _D.pretrained_baseline,
    hyperparams: dict[str, dict[str, Any]] | None = None,
    model_name: str = _D.model_name,
    promote: bool = _D.promote,
    train_deployment: str | None = _D.train_deployment,
    registry: dict[str, Any] | None = None,
    ingest: dict[str, Any] | None = None,
    featurize: dict[str, Any] | None = None,
    shards: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    evaluate: dict[str, Any] | None = None,
    represent: dict[str, Any] | None = None,
    threads: int | None = _D.threads,
) -> dict[str, Any]:
    """The whole pipeline; parameters and their defaults as in :class:`metalearn.pipeline.RunConfig`.

    Returns:
        JSON-able summary: snapshot, features, shards, trained learners, headline, registered
        version and the promotion decision (or the training deployment's flow run).
    """
    run = RunConfig.from_params(dict(locals()))
    stages = resolve_stages(run)
    use_threads(run.threads)
    logger = get_run_logger()
    work = WorkDir.resolve(run.workdir)
    root = str(work.root)
    logger.info("profile %s, workdir %s, learners %s", run.profile, root, run.learners)
    with WorkDirLock(work.lock_file(), wait_s=NIGHTLY_WAIT_S, on_wait=logger.warning), \
            nightly_slot(logger.warning):
        clock = StageClock()
        with clock.stage("ingest"):
            chosen = ingest_tasks.choose_source(run.source, run.mp_secret_block)
            snapshot = ingest_tasks.ingest_snapshot(root, chosen, stages.ingest, run.mp_secret_block)
            oc = ingest_tasks.ingest_snapshot.with_options(retries=0)(root, "oc", stages.ingest) \
                if run.include_oc else None
            # Features and shards read one snapshot: Open Catalyst joins the main source's records here.
            combined = ingest_tasks.combine(root, [snapshot["path"], oc["path"]]) if oc else snapshot
        with clock.stage("features"):
            features = featurize_snapshot(combined["path"], root, stages.featurize)
        with clock.stage("shards"):
            task_shards = ensure_published("shards", fresh(shards_tasks.build_task_shards, combined["path"],
                                                           features["path"], root, stages.shards))
        manifests = {"snapshot": combined["path"], "features": features["path"]}
        stages = dataclasses.replace(stages, ingest=dataclasses.replace(stages.ingest, source=chosen))
        if run.train_deployment:
            params = {k: v for k, v in dataclasses.asdict(run).items() if k in retrain_fields()}
            with clock.stage("represent+train+evaluate+register (deployment)"):
                trained = _on_deployment(run.train_deployment, {**params, "workdir": root,
                                                                "shards_dir": task_shards["path"], **manifests})
            trained["stage_seconds"] = clock.seconds
        else:
            trained = train_evaluate_register(run, stages, root, task_shards["path"], combined["path"], manifests,
                                              clock)
    return {"workdir": root, "profile": run.profile, "source": chosen, "snapshot": snapshot["path"],
            "oc_snapshot": oc["path"] if oc else None, "combined_snapshot": combined["path"], "features": features["path"],
            "shards": task_shards["path"], "shards_counts": task_shards["counts"], **trained}


@flow(name="metalearn-retrain", description="meta-train -> evaluate -> register/promote on existing shards")
def retrain(
    shards_dir: str | None = None,
    profile: str = _D.profile,
    workdir: str | None = _D.workdir,
    gradient_learner: str = _D.gradient_learner,
    metric_learner: str = _D.metric_learner,
    classifier_learner: str | None = _D.classifier_learner,
    transfer_learners: list[str] | None = None,
    pretrained_baseline: bool = _D.pretrained_baseline,
    hyperparams: dict[str, dict[str, Any]] | None = None,
    model_name: str = _D.model_name,
    promote: bool = _D.promote,
    registry: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    evaluate: dict[str, Any] | None = None,
    represent: dict[str, Any] | None = None,
    threads: int | None = _D.threads,
    snapshot: str | None = None,
    features: str | None = None,
) -> dict[str, Any]:
    """On-demand retraining (the ``gpu`` pool's deployment): the training half of :func:`nightly`.

    Args:
        shards_dir: the task shards to train on (default: the newest under the work directory).
        snapshot / features: their upstream directories, logged to MLflow as lineage when given.
    """
    run = RunConfig.from_params({k: v for k, v in locals().items() if k not in ("shards_dir", "snapshot", "features")})
    stages = resolve_stages(run)
    use_threads(run.threads)
    work = WorkDir.resolve(run.workdir)
    root = str(work.root)
    if shards_dir is None:
        found = latest_shards(work)
        if found is None:
            raise ValueError(f"no task shards under {root}; run the nightly flow (or `metalearn shards`) first")
        shards_dir = str(found)
    get_run_logger().info("retraining %s on %s", run.learners, shards_dir)
    snapshot = snapshot or str(snapshot_of_shards(work, Path(shards_dir)))
    manifests = {k: v for k, v in (("snapshot", snapshot), ("features", features)) if v}
    return {"workdir": root, "shards": shards_dir,
            **train_evaluate_register(run, stages, root, shards_dir, snapshot, manifests, StageClock())}


@flow(name="metalearn-features", description="featurize one snapshot (plan, chunks fanned out, assemble)")
def features_flow(snapshot_dir: str, workdir: str, featurize: dict[str, Any] | None = None) -> dict[str, Any]:
    """The featurize stage alone, on the flow's task runner (``metalearn featurize``, Dask checks)."""
    cfg = from_dict(FeaturizeConfig, featurize or {})
    return featurize_snapshot(snapshot_dir, str(WorkDir.resolve(workdir).root), cfg)


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


def retrain_fields() -> tuple[str, ...]:
    """The RunConfig fields the retrain flow takes (read from its signature, not listed again)."""
    return tuple(name for name in inspect.signature(retrain.fn).parameters if name in _D.__dataclass_fields__)
