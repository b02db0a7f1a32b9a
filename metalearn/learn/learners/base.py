"""The one Learner protocol every meta-learner and baseline follows.

Why a protocol and not a base class with logic: MAML, ProtoNet, the metric regressor and the
scikit-learn baselines share only this shape, which evaluation, training and the MLflow pyfunc
wrapper rely on (the torch learners share helpers from ``neural.py``, not a base class). Saving
and loading go through the factory in ``metalearn.learn.learners``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from metalearn.learn.sampling import TaskBatch


@dataclass(frozen=True)
class Prediction:
    """Predictions for one task's query rows, in the (normalised) target space of the support set."""

    mean: torch.Tensor  # (n_query,) regression value, or P(y=1) for classification
    std: torch.Tensor | None = None  # (n_query,) predictive standard deviation, where the learner has one


@runtime_checkable
class Learner(Protocol):
    """Meta-train on episodes; adapt to one task's support set; predict its query rows.

    ``name`` is the learner name used on the CLI and in MLflow (e.g. "maml", "protonet", "rf").
    ``meta_trainable`` is False for baselines that only fit on the support set.
    """

    name: str
    task_type: str  # "regression" | "classification"
    meta_trainable: bool

    def meta_train_step(self, batch: TaskBatch) -> dict[str, float]:
        """One outer-loop update on a meta-batch; returns scalar logs such as {"loss": ...}."""
        ...

    def meta_loss(self, batch: TaskBatch) -> float:
        """Mean query loss after adaptation, without updating anything (meta-val early stopping)."""
        ...

    def adapt(self, x_support: torch.Tensor, y_support: torch.Tensor) -> Any:
        """Fit to one task: x_support (n_support, F), y_support (n_support,) -> opaque adapted state."""
        ...

    def predict(self, state: Any, x_query: torch.Tensor) -> Prediction:
        """x_query (n_query, F) -> Prediction with mean (n_query,) [and std (n_query,)]."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the learner (weights and hyperparameters), torch.save-able."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

