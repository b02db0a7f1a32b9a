"""The nightly run's configuration: RunConfig, the profiles, and one validation of every stage config.

The one module that knows every stage's config dataclass; flows and the CLI build a
:class:`RunConfig` from JSON-able parameters and call :func:`resolve_stages` once, at the edge.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from metalearn.config import deep_merge, from_dict, to_jsonable
from metalearn.evaluate.gate import RegistryConfig
from metalearn.evaluate.protocol import EvalConfig
from metalearn.features.plan import FeaturizeConfig
from metalearn.ingest.stage import IngestConfig
from metalearn.learn.learners import REPRESENTATION_LEARNERS, check_hyperparams
from metalearn.learn.stage import LearnerConfig
from metalearn.represent.transfer import TransferConfig
from metalearn.shards.define import ShardConfig

# --- run profiles and the nightly flow's parameters -------------------------------------------
#
# A profile is a dict of per-stage overrides (a preset behind a dict, not an if/elif ladder):
# data size (IngestConfig.max_rows_per_dataset), training steps (the TrainConfig fields of ``train``) and
# evaluation draws (EvalConfig). Flow parameters override the profile key by key.

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # `metalearn run --profile quick`: a smoke run of every stage; measured ~2 min on 2 busy CPU cores.
    "quick": {
        "ingest": {"max_rows_per_dataset": 80},
        "featurize": {"chunk_size": 400},
        "shards": {},
        "train": {"n_support": 5, "n_query": 10, "max_steps": 40, "meta_batch_size": 4, "eval_every": 20,
                  "patience": 2, "n_val_batches": 1, "checkpoint_every": 20},
        "evaluate": {"n_support": (5,), "n_draws": 2, "n_query": 16, "baselines": ("mean", "median", "knn")},
        "registry": {"n_support": 5},
        "represent": {"n_estimators": 40, "n_folds": 3, "max_rows_per_dataset": 2000, "min_member_rows": 40},
    },
    # The nightly default: every bundled record (1.43M + Open Catalyst); wall times in bench/RESULTS.md.
    "default": {
        "ingest": {"max_rows_per_dataset": None},  # every bundled record; stages cap inside, documented
        "featurize": {"chunk_size": 25000},
        "shards": {},
        "train": {"n_support": 10, "n_query": 20, "max_steps": 600, "meta_batch_size": 8, "eval_every": 50,
                  "patience": 4, "n_val_batches": 2, "checkpoint_every": 100},
        "evaluate": {"n_support": (5, 10, 20), "n_draws": 10, "n_query": 32,
                     # no scratch MLP: ~20% of a cold evaluation, and worse than RF on the median in
                     # every setting and k of the full-data nightly; add "mlp" to score it again
                     "baselines": ("mean", "median", "knn", "rf", "pretrained_ridge")},
        "registry": {"n_support": 10},
        "represent": {},
    },
}

SOURCES_AUTO = ("auto", "bundled", "mp")
GRADIENT_LEARNERS = ("maml", "fomaml", "metasgd", "anil")
METRIC_LEARNERS = ("metric",)
CLASSIFIER_LEARNERS = ("protonet", "protonet_rep")  # protonet_rep: ProtoNet on the representation


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
        gradient_learner / metric_learner: regression meta-learners on the composition features.
        transfer_learners: few-shot heads on the transfer representation (``meta_transfer``: its
            feature weights meta-learned across meta-train tasks). The best regression learner of
            all of these on tonight's evaluation becomes the registered candidate.
        classifier_learner: meta-trained for classification tasks (0/1 targets) and shipped inside
            the registered model next to the regressor; None to skip.
        pretrained_baseline: also meta-train the multitask-pretrained ridge baseline ("is
            meta-training really necessary?") so it is scored on the same draws; never registered.
        hyperparams: per-learner hyperparameter overrides, e.g. ``{"fomaml": {"inner_steps": 3}}``.
        model_name: registered model name in MLflow.
        promote: move the ``champion`` alias when the new model wins the paired comparison.
        train_deployment: run meta-train/evaluate/register as this Prefect deployment (e.g.
            "metalearn-retrain/retrain" on the ``gpu`` work pool) instead of in this flow run.
        registry: overrides of the promotion gate (RegistryConfig: experiment, metric, n_support,
            min_improvement, min_win_rate, baseline); the tracking URI comes from the environment.
        ingest / featurize / shards / evaluate: overrides of IngestConfig, FeaturizeConfig,
            ShardConfig and EvalConfig fields.
        train: ``n_support``, ``n_query`` and the TrainConfig fields (``max_steps``, ...), flat.
        represent: overrides of the transfer representation's TransferConfig (members, folds, caps).
        threads: threads per stage for torch, BLAS/OpenMP and LightGBM/scikit-learn (None:
            ``$METALEARN_THREADS``, else 1; more than one only on a machine the run has to itself).
    """

    profile: str = "default"
    source: str = "auto"
    include_oc: bool = True
    workdir: str | None = None
    mp_secret_block: str = "mp-api-key"
    gradient_learner: str = "fomaml"
    metric_learner: str = "metric"
    classifier_learner: str | None = "protonet"
    transfer_learners: tuple[str, ...] = ("meta_transfer", "transfer_huber")
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
    represent: dict[str, Any] = dataclasses.field(default_factory=dict)
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
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
        bad = sorted(set(self.transfer_learners) - REPRESENTATION_LEARNERS | set(CLASSIFIER_LEARNERS) & set(self.transfer_learners))
        if bad:
            raise ValueError(f"transfer_learners {bad} are not regression learners on the representation; valid: "
                             f"{sorted(REPRESENTATION_LEARNERS - set(CLASSIFIER_LEARNERS))}")
        unknown = sorted(set(self.hyperparams) - set(self.learners))
        if unknown:
            raise ValueError(f"hyperparams given for {unknown}, which this run does not train {self.learners}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> RunConfig:
        """Flow parameters -> RunConfig: None for a stage dict means "no overrides"; types are checked."""
        defaulted = {f.name for f in dataclasses.fields(cls)
                     if f.type in ("dict[str, Any]", "dict[str, dict[str, Any]]", "tuple[str, ...]")}
        return from_dict(cls, {k: v for k, v in params.items() if not (v is None and k in defaulted)})

    @property
    def registered_learners(self) -> tuple[str, ...]:
        """Learners that may go into the registered model (regressor candidates + the classifier)."""
        extra = (self.classifier_learner,) if self.classifier_learner else ()
        return (self.gradient_learner, self.metric_learner, *self.transfer_learners, *extra)

    @property
    def learners(self) -> tuple[str, ...]:
        """Everything meta-trained tonight: the registered learners plus meta-trained baselines."""
        return self.registered_learners + (("pretrained_ridge",) if self.pretrained_baseline else ())


STAGE_KEYS = ("ingest", "featurize", "shards", "represent", "train", "evaluate", "registry")

# Old spellings of public flow parameters, accepted for one release with a DeprecationWarning.
_RENAMED = {("evaluate", "ks"): "n_support", ("registry", "k"): "n_support"}


def _upgrade(stage: str, values: dict[str, Any]) -> dict[str, Any]:
    """Rewrite deprecated spellings in one stage's overrides (warns once per spelling)."""
    values = dict(values)
    if stage == "train" and isinstance(values.get("train"), dict):
        warnings.warn('flow parameter train={"train": {...}} is deprecated: put the TrainConfig fields '
                      'directly in train, e.g. {"train": {"max_steps": 100}}', DeprecationWarning, stacklevel=3)
        values = {**values.pop("train"), **values}
    for (where, old), new in _RENAMED.items():
        if where == stage and old in values:
            warnings.warn(f"flow parameter {stage}.{old} is deprecated; use {stage}.{new}", DeprecationWarning,
                          stacklevel=3)
            values.setdefault(new, values.pop(old))
            values.pop(old, None)
    return values


@dataclasses.dataclass(frozen=True)
class Stages:
    """Every stage's typed config for one run: what the flow hands to its tasks."""

    ingest: IngestConfig
    featurize: FeaturizeConfig
    shards: ShardConfig
    represent: TransferConfig
    learners: dict[str, LearnerConfig]
    evaluate: EvalConfig
    registry: RegistryConfig

    def logged(self) -> dict[str, Any]:
        """JSON-able configs as MLflow records them (``train`` per learner)."""
        return {"ingest": to_jsonable(self.ingest), "featurize": to_jsonable(self.featurize),
                "shards": to_jsonable(self.shards), "represent": to_jsonable(self.represent),
                "eval": to_jsonable(self.evaluate),
                "train": {name: to_jsonable(cfg) for name, cfg in self.learners.items()}}


def _stage(cls: type, stage: str, values: dict[str, Any]) -> Any:
    try:
        return from_dict(cls, values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"parameter {stage}: {err}") from None


def _merged(run: RunConfig) -> dict[str, dict[str, Any]]:
    profile = PROFILES[run.profile]
    return {stage: deep_merge(_upgrade(stage, profile.get(stage, {})), _upgrade(stage, getattr(run, stage)))
            for stage in STAGE_KEYS}


def learner_config(run: RunConfig, name: str, merged: dict[str, dict[str, Any]] | None = None) -> LearnerConfig:
    """The training config of learner ``name`` under ``run``'s profile and overrides."""
    merged = merged or _merged(run)
    hyperparams = run.hyperparams.get(name, {})
    try:
        check_hyperparams(name, hyperparams)
        return LearnerConfig.from_params(merged["train"], hyperparams)
    except (TypeError, ValueError) as err:
        raise ValueError(f"parameter {'hyperparams.' + name if hyperparams else 'train'}: {err}") from None


def resolve_stages(run: RunConfig, source: str | None = None) -> Stages:
    """Profile + overrides -> every stage's typed config: the one validation of a run's parameters.

    Args:
        source: the ingest source chosen for tonight (``run.source`` "auto" is resolved by the flow).
    Raises:
        ValueError naming the parameter, for an unknown key, a bad type or an out-of-range value.
    """
    merged = _merged(run)
    ingest_source = source or ("bundled" if run.source == "auto" else run.source)
    learners = {name: learner_config(run, name, merged) for name in run.learners}
    return Stages(
        ingest=_stage(IngestConfig, "ingest", {**merged["ingest"], "source": ingest_source}),
        featurize=_stage(FeaturizeConfig, "featurize", merged["featurize"]),
        shards=_stage(ShardConfig, "shards", merged["shards"]),
        represent=_stage(TransferConfig, "represent", merged["represent"]),
        learners=learners,
        evaluate=_stage(EvalConfig, "evaluate", merged["evaluate"]),
        registry=_stage(RegistryConfig, "registry", {**merged["registry"], "model_name": run.model_name}),
    )
