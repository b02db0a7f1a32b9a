"""Learner presets and the one factory: ``build_learner(name, n_features, task_type, **overrides)``.

``LEARNERS`` maps a name (CLI flag, MLflow param) to a builder ``(n_features, task_type, **overrides)``.
A preset pins the fields that define it (``fomaml`` is MAML with ``first_order=True``); other
overrides are hyperparameters of the learner's config and an unknown key raises ``TypeError``
(:func:`check_hyperparams` raises the same without building anything heavy). The baselines'
classes are their own builders.

Saved learners (:func:`save_learner`) hold ``{"name", "state"}``; ``state`` carries ``n_features``,
``task_type`` and ``hyperparams`` so :func:`load_learner` can rebuild through the factory. Why
saving lives here and not on the learner: loading needs the factory, which imports every learner.

Example:
    >>> learner = build_learner("fomaml", n_features=132, task_type="regression", inner_steps=3)
    >>> learner.name
    'fomaml'
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metalearn.io import write_bytes_atomic
from metalearn.learn.learners.base import Learner
from metalearn.learn.learners.baselines import BASELINES
from metalearn.learn.learners.maml import MAML, MAMLConfig
from metalearn.learn.learners.meta_transfer import MetaTransferHead
from metalearn.learn.learners.metric import MetricConfig, MetricGP
from metalearn.learn.learners.protonet import ProtoNet, ProtoNetConfig
from metalearn.learn.learners.transfer_heads import TransferHead

Builder = Callable[..., Learner]


@dataclass(frozen=True)
class Preset:
    """A meta-learner class with its config dataclass and the config fields that define the preset."""

    cls: type
    config: type
    name: str
    pinned: dict[str, Any] = field(default_factory=dict)

    def make_config(self, overrides: dict[str, Any]) -> Any:
        """The preset's config with ``overrides``; unknown keys raise TypeError, bad values ValueError."""
        clash = {k: v for k, v in overrides.items() if k in self.pinned and v != self.pinned[k]}
        if clash:
            raise ValueError(f"preset {self.name!r} fixes {self.pinned}; got conflicting overrides {clash}")
        return self.config(**{**overrides, **self.pinned})

    def __call__(self, n_features: int, task_type: str, **overrides: Any) -> Learner:
        return self.cls(n_features, task_type, self.make_config(overrides))


@dataclass(frozen=True)
class Head:
    """A few-shot head on the representation, with the hyperparameters that define the preset."""

    cls: type
    pinned: dict[str, Any] = field(default_factory=dict)

    def __call__(self, n_features: int, task_type: str, **overrides: Any) -> Learner:
        clash = {k: v for k, v in overrides.items() if k in self.pinned and v != self.pinned[k]}
        if clash:
            raise ValueError(f"this preset fixes {self.pinned}; got conflicting overrides {clash}")
        return self.cls(n_features, task_type, **{**overrides, **self.pinned})


@dataclass(frozen=True)
class OnRepresentation:
    """A meta-learner of the composition features, fed the transfer representation's vectors instead.

    Why: the issue's question "does MAML/ANIL/ProtoNet/the metric GP gain from the representation as
    the heads do?" needs the same learners on the other input; the name (``<base>_rep``) is what
    routes the vectors to it in training, evaluation and predict.
    """

    base: str

    def __call__(self, n_features: int, task_type: str, **overrides: Any) -> Learner:
        learner = LEARNERS[self.base](n_features, task_type, **overrides)
        learner.name = f"{self.base}_rep"  # saved and routed by this name: load_learner rebuilds the wrapper
        return learner


LEARNERS: dict[str, Builder] = {
    "maml": Preset(MAML, MAMLConfig, "maml", {"variant": "maml", "first_order": False}),
    "fomaml": Preset(MAML, MAMLConfig, "fomaml", {"variant": "maml", "first_order": True}),
    "metasgd": Preset(MAML, MAMLConfig, "metasgd", {"variant": "metasgd"}),
    "anil": Preset(MAML, MAMLConfig, "anil", {"variant": "anil"}),
    "protonet": Preset(ProtoNet, ProtoNetConfig, "protonet"),
    "metric": Preset(MetricGP, MetricConfig, "metric"),
    **BASELINES,  # Cls(n_features, task_type, **hyperparams)
    # Few-shot heads on the transfer representation (inputs: metalearn.represent vectors).
    **{f"transfer_{head}": Head(TransferHead, {"head": head}) for head in ("ridge", "huber", "gp", "knn", "auto")},
    "meta_transfer": Head(MetaTransferHead, {}),
    # The meta-learners on the representation (the evaluation's RF on it is the baseline "rf_rep").
    **{f"{base}_rep": OnRepresentation(base) for base in ("fomaml", "anil", "protonet", "metric")},
}

# Learners whose inputs are the transfer representation's vectors, not the composition features.
REPRESENTATION_LEARNERS = frozenset(name for name, b in LEARNERS.items() if isinstance(b, (Head, OnRepresentation)))


def uses_representation(learner: str) -> bool:
    """Whether ``learner`` reads the transfer representation's vectors instead of composition features."""
    return learner in REPRESENTATION_LEARNERS


def _builder(name: str) -> Builder:
    try:
        return LEARNERS[name]
    except KeyError:
        raise ValueError(f"unknown learner {name!r}; valid names: {sorted(LEARNERS)}") from None


def build_learner(name: str, n_features: int, task_type: str, **overrides: Any) -> Learner:
    """Build the learner ``name`` for inputs of width ``n_features``; overrides are config fields."""
    return _builder(name)(n_features, task_type, **overrides)


def check_hyperparams(name: str, hyperparams: dict[str, Any]) -> None:
    """Raise as :func:`build_learner` would for these hyperparameters, before any data exists.

    Why: a run should fail on a typo'd key at once, not after ingest and featurization. A preset's
    config is built without its network; a baseline is built on one feature (cheap, no fitting).

    Raises:
        ValueError for an unknown name or a bad value; TypeError for an unknown key.
    """
    builder = _builder(name)
    if isinstance(builder, OnRepresentation):
        builder = LEARNERS[builder.base]  # same hyperparameters as the learner it wraps
    if isinstance(builder, Preset):
        builder.make_config(dict(hyperparams))
    else:
        builder(1, "regression", **hyperparams)


def save_learner(learner: Learner, path: str | Path) -> None:
    """Save via torch.save of the learner's state_dict (weights + config, no pickled classes)."""
    buffer = io.BytesIO()
    torch.save({"name": learner.name, "state": learner.state_dict()}, buffer)
    write_bytes_atomic(Path(path), buffer.getvalue())


def load_learner(path: str | Path, *, trusted: bool = False, **overrides: Any) -> Learner:
    """Rebuild a learner saved by :func:`save_learner`: factory(name, n_features, task_type, **hyperparams).

    Args:
        path: file written by ``save_learner``.
        trusted: allow a full unpickle when the file holds more than tensors and plain containers
            (e.g. a fitted scikit-learn model). Only for files you wrote yourself.
        overrides: hyperparameters replaced at load time, e.g. ``device="cpu"``.
    """
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trusted:
            raise ValueError(
                f"{path} holds objects beyond tensors and plain containers; "
                "pass trusted=True to unpickle a file you wrote yourself"
            ) from err
        blob = torch.load(path, map_location="cpu", weights_only=False)
    state = blob["state"]
    missing = [k for k in ("n_features", "task_type") if k not in state]
    if missing:
        raise ValueError(f"{path}: learner {blob.get('name')!r} state lacks {missing}; cannot rebuild it")
    hyperparams = {**state.get("hyperparams", {}), **overrides}
    learner = build_learner(blob["name"], state["n_features"], state["task_type"], **hyperparams)
    learner.load_state_dict(state)
    return learner
