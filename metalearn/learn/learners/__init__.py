"""Learner presets and the one factory: ``build_learner(name, n_features, task_type, **overrides)``.

``LEARNERS`` maps a name (CLI flag, MLflow param) to a builder ``(n_features, task_type, **overrides)``.
A preset pins the fields that define it (``fomaml`` is MAML with ``first_order=True``); other
overrides are hyperparameters of the learner's config and an unknown key raises ``TypeError``.
The baselines live in ``baselines.py`` and are imported only when built (scikit-learn is slow to import).

Saved learners (``save_learner``) hold ``{"name", "state"}``; ``state`` carries ``n_features``,
``task_type`` and ``hyperparams`` so :func:`load_learner` can rebuild through the factory.

Example:
    >>> learner = build_learner("fomaml", n_features=132, task_type="regression", inner_steps=3)
    >>> learner.name
    'fomaml'
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from metalearn.learn.learners.base import Learner, Prediction, save_learner
from metalearn.learn.learners.maml import MAML, MAMLConfig
from metalearn.learn.learners.metric import MetricConfig, MetricGP
from metalearn.learn.learners.protonet import ProtoNet, ProtoNetConfig

Builder = Callable[..., Learner]


def _preset(cls: type, config: type, name: str, **pinned: Any) -> Builder:
    def build(n_features: int, task_type: str, **overrides: Any) -> Learner:
        clash = {k: v for k, v in overrides.items() if k in pinned and v != pinned[k]}
        if clash:
            raise ValueError(f"preset {name!r} fixes {pinned}; got conflicting overrides {clash}")
        return cls(n_features, task_type, config(**{**overrides, **pinned}))

    return build


def _baseline(class_name: str) -> Builder:
    def build(n_features: int, task_type: str, **hyperparams: Any) -> Learner:
        from metalearn.learn.learners import baselines

        return getattr(baselines, class_name)(n_features, task_type, **hyperparams)

    return build


LEARNERS: dict[str, Builder] = {
    "maml": _preset(MAML, MAMLConfig, "maml", algorithm="maml", first_order=False),
    "fomaml": _preset(MAML, MAMLConfig, "fomaml", algorithm="maml", first_order=True),
    "metasgd": _preset(MAML, MAMLConfig, "metasgd", algorithm="metasgd"),
    "anil": _preset(MAML, MAMLConfig, "anil", algorithm="anil"),
    "protonet": _preset(ProtoNet, ProtoNetConfig, "protonet"),
    "metric": _preset(MetricGP, MetricConfig, "metric"),
    "mean": _baseline("SupportMean"),
    "knn": _baseline("KNNBaseline"),
    "rf": _baseline("RandomForestBaseline"),
    "mlp": _baseline("ScratchMLP"),
    "pretrained_ridge": _baseline("PretrainedRidge"),
}


def build_learner(name: str, n_features: int, task_type: str, **overrides: Any) -> Learner:
    """Build the learner ``name`` for inputs of width ``n_features``; overrides are config fields."""
    try:
        builder = LEARNERS[name]
    except KeyError:
        raise ValueError(f"unknown learner {name!r}; valid names: {sorted(LEARNERS)}") from None
    return builder(n_features, task_type, **overrides)


def load_learner(path: str | Path, *, trusted: bool = False, **overrides: Any) -> Learner:
    """Rebuild a learner saved by ``save_learner``: factory(name, n_features, task_type, **hyperparams).

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


__all__ = ["LEARNERS", "Learner", "Prediction", "build_learner", "load_learner", "save_learner"]
