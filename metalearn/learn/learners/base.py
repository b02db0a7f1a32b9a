"""The one Learner protocol every meta-learner and baseline follows.

Why a protocol and not a base class with logic: MAML, ProtoNet, the metric regressor and the
scikit-learn baselines share no code, only this shape, which evaluate.py, train.py and the
MLflow pyfunc wrapper rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from metalearn.learn.sampling import TaskBatch


@dataclass(frozen=True)
class Prediction:
    """Predictions for one task's query rows, in the (normalised) target space of the support set."""

    mean: torch.Tensor  # (q,) regression value, or P(y=1) for classification
    std: torch.Tensor | None = None  # (q,) predictive standard deviation, where the learner has one


@runtime_checkable
class Learner(Protocol):
    """Meta-train on episodes; adapt to one task's support set; predict its query rows.

    ``name`` is the algorithm id used on the CLI and in MLflow (e.g. "maml", "protonet", "rf").
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
        """Fit to one task: x_support (k, F), y_support (k,) -> opaque adapted state."""
        ...

    def predict(self, state: Any, x_query: torch.Tensor) -> Prediction:
        """x_query (q, F) -> Prediction with mean (q,) [and std (q,)]."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the learner (weights and hyperparameters), torch.save-able."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def save_learner(learner: Learner, path: Path) -> None:
    """Save via torch.save of the learner's state_dict (weights + config, no pickled classes)."""
    import io

    from metalearn.io import write_bytes_atomic

    buffer = io.BytesIO()
    torch.save({"name": learner.name, "state": learner.state_dict()}, buffer)
    write_bytes_atomic(Path(path), buffer.getvalue())


def load_learner(path: Path, **kwargs: Any) -> Learner:
    """Rebuild a learner written by :func:`save_learner` through the factory in ``metalearn.learn.learners``."""
    from metalearn.learn.learners import load_learner as load  # lazy: the factory imports this module

    return load(path, **kwargs)
