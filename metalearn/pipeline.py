"""The nightly run's configuration: RunConfig, the profiles, and one validation of every stage config.

The one module that knows every stage's config dataclass; flows and the CLI build a
:class:`RunConfig` from JSON-able parameters and call :func:`resolve_stages` once, at the edge.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from metalearn.config import deep_merge, from_dict, to_jsonable

# --- run profiles and the nightly flow's parameters -------------------------------------------
#
# A profile is a dict of per-stage overrides (a preset behind a dict, not an if/elif ladder):
# data size (IngestConfig.max_rows_per_dataset), training steps (ExperimentConfig.train) and
# evaluation draws (EvalConfig). Flow parameters override the profile key by key.

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # `metalearn run --profile quick`: a smoke run of every stage; measured ~2 min on 2 busy CPU cores.
    "quick": {
        "ingest": {"max_rows_per_dataset": 80},
        "featurize": {"chunk_size": 400},
        "shards": {},
        "train": {"n_support": 5, "n_query": 10,
                  "train": {"max_steps": 40, "meta_batch_size": 4, "eval_every": 20, "patience": 2,
                            "n_val_batches": 1, "checkpoint_every": 20}},
        "evaluate": {"ks": (1, 5), "n_draws": 2, "n_query": 16, "baselines": ("mean", "knn")},
    },
    # The nightly default: 88k records, 190 tasks; measured ~11 min on 2 CPU cores (evaluation ~8 of
    # them: 64 meta-test tasks x 4 k x 10 draws x 6 learners). A rerun without new data: ~15 s.
    "default": {
        "ingest": {"max_rows_per_dataset": 3000},
        "featurize": {"chunk_size": 2000},
        "shards": {},
        "train": {"n_support": 10, "n_query": 20,
                  "train": {"max_steps": 600, "meta_batch_size": 8, "eval_every": 50, "patience": 4,
                            "n_val_batches": 2, "checkpoint_every": 100}},
        "evaluate": {"ks": (1, 5, 10, 20), "n_draws": 10, "n_query": 32,
                     "baselines": ("mean", "knn", "rf", "mlp", "pretrained_ridge")},
    },
}

SOURCES_AUTO = ("auto", "bundled", "mp")
GRADIENT_LEARNERS = ("maml", "fomaml", "metasgd", "anil")
METRIC_LEARNERS = ("metric",)
CLASSIFIER_LEARNERS = ("protonet",)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The nightly flow's parameters, all JSON-able.

    Args:
        profile: a key of :data:`PROFILES`; the stage dicts below override it key by key.
        source: "auto" (Materials Project when a key is configured, else the bundled data),
            "bundled" or "mp".
        include_oc: also ingest the bundled Open Catalyst sample as its own snapshot.
        workdir: the work directory (None: ``$METALEARN_HOME``, else ./.metalearn).
        mp_secret_block: name of the Prefect Secret block holding the MP key (``MP_API_KEY`` wins).
        gradient_learner / metric_learner: the two regression learners meta-trained every night;
            the better one on tonight's evaluation becomes the registered candidate.
        classifier_learner: meta-trained for classification tasks (0/1 targets) and shipped inside
            the registered model next to the regressor; None to skip.
        pretrained_baseline: also meta-train the multitask-pretrained ridge baseline ("is
            meta-training really necessary?") so it is scored on the same draws; never registered.
        hyperparams: per-learner hyperparameter overrides, e.g. ``{"fomaml": {"inner_steps": 3}}``.
        model_name: registered model name in MLflow.
        promote: move the ``champion`` alias when the new model wins the paired comparison.
        train_deployment: run meta-train/evaluate/register as this Prefect deployment (e.g.
            "metalearn-retrain/retrain" on the ``gpu`` work pool) instead of in this flow run.
        registry: overrides of the promotion gate (RegistryConfig: experiment, metric, k,
            min_improvement, min_win_rate, baseline); the tracking URI comes from the environment.
        ingest / featurize / shards / train / evaluate: overrides of IngestConfig, FeaturizeConfig,
            ShardConfig, ExperimentConfig and EvalConfig fields.
    """

    profile: str = "default"
    source: str = "auto"
    include_oc: bool = True
    workdir: str | None = None
    mp_secret_block: str = "mp-api-key"
    gradient_learner: str = "fomaml"
    metric_learner: str = "metric"
    classifier_learner: str | None = "protonet"
    pretrained_baseline: bool = True
    hyperparams: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    model_name: str = "metalearn"
    promote: bool = True
    train_deployment: str | None = None
    registry: dict[str, Any] = dataclasses.field(default_factory=dict)
    ingest: dict[str, Any] = dataclasses.field(default_factory=dict)
    featurize: dict[str, Any] = dataclasses.field(default_factory=dict)
    shards: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    evaluate: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; expected one of {sorted(PROFILES)}")
        if self.source not in SOURCES_AUTO:
            raise ValueError(f"unknown source {self.source!r}; expected one of {SOURCES_AUTO}")
        if self.gradient_learner not in GRADIENT_LEARNERS:
            raise ValueError(f"gradient_learner {self.gradient_learner!r} is not one of {GRADIENT_LEARNERS}")
        if self.metric_learner not in METRIC_LEARNERS:
            raise ValueError(f"metric_learner {self.metric_learner!r} is not one of {METRIC_LEARNERS}")
        if {"tracking_uri", "model_name"} & set(self.registry):
            raise ValueError("registry may not set tracking_uri (use MLFLOW_TRACKING_URI) or model_name "
                             "(use the model_name parameter)")
        if "source" in self.ingest:
            raise ValueError("set the source with the `source` parameter, not inside `ingest`")
        if self.classifier_learner not in (None, *CLASSIFIER_LEARNERS):
            raise ValueError(f"classifier_learner {self.classifier_learner!r} is not one of {CLASSIFIER_LEARNERS}")
        unknown = sorted(set(self.hyperparams) - set(self.learners))
        if unknown:
            raise ValueError(f"hyperparams given for {unknown}, which this run does not train {self.learners}")

    @property
    def registered_learners(self) -> tuple[str, ...]:
        """Learners that may go into the registered model (regressor candidates + the classifier)."""
        extra = (self.classifier_learner,) if self.classifier_learner else ()
        return (self.gradient_learner, self.metric_learner, *extra)

    @property
    def learners(self) -> tuple[str, ...]:
        """Everything meta-trained tonight: the registered learners plus meta-trained baselines."""
        return self.registered_learners + (("pretrained_ridge",) if self.pretrained_baseline else ())


def resolve_stages(run: RunConfig) -> dict[str, Any]:
    """Profile + overrides, validated by building every stage's dataclass (unknown keys raise).

    Returns JSON-able dicts (what tasks receive): ``ingest`` (IngestConfig fields except
    ``source``), ``featurize``, ``shards``, ``train`` (ExperimentConfig per learner name),
    ``evaluate`` and ``registry`` (RegistryConfig fields except ``tracking_uri``).
    """
    from metalearn.ingest.stage import IngestConfig
    from metalearn.shards.define import ShardConfig

    profile = PROFILES[run.profile]
    merged = {stage: deep_merge(profile.get(stage, {}), getattr(run, stage))
              for stage in ("ingest", "featurize", "shards", "train", "evaluate")}
    ingest = to_jsonable(from_dict(IngestConfig, merged["ingest"]))
    ingest.pop("source")
    out: dict[str, Any] = {"ingest": ingest, "shards": to_jsonable(from_dict(ShardConfig, merged["shards"]))}
    try:
        from metalearn.features.plan import FeaturizeConfig
    except ImportError:  # featurize not installed in this checkout: keep the dict, validated downstream
        out["featurize"] = dict(merged["featurize"])
    else:
        out["featurize"] = to_jsonable(from_dict(FeaturizeConfig, merged["featurize"]))
    from metalearn.evaluate.protocol import EvalConfig
    from metalearn.learn.learners import build_learner
    from metalearn.learn.stage import ExperimentConfig, task_type_of

    train: dict[str, Any] = {}
    for name in run.learners:
        exp = deep_merge(merged["train"], {"hyperparams": run.hyperparams.get(name, {})})
        cfg = from_dict(ExperimentConfig, exp)
        cfg.train_config()  # TrainConfig fields are checked now, not after ingest and featurize
        try:  # a tiny throwaway build checks hyperparameter names before any data is touched
            build_learner(name, 4, task_type_of(name), **cfg.hyperparams)
        except TypeError as err:
            raise ValueError(f"bad hyperparams for {name!r}: {err}") from None
        train[name] = to_jsonable(cfg)
    out["train"] = train
    out["evaluate"] = to_jsonable(from_dict(EvalConfig, merged["evaluate"]))
    from metalearn.evaluate.gate import RegistryConfig

    registry = to_jsonable(from_dict(RegistryConfig, {**run.registry, "model_name": run.model_name}))
    registry.pop("tracking_uri")
    out["registry"] = registry
    return out
