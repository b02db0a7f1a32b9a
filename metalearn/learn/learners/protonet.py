"""Prototypical networks (Snell et al. 2017) for binary classification tasks, torchmeta-style.

A task's prototype for class c is the mean embedding of its support rows of class c; a query row
gets softmax(-squared Euclidean distance to each prototype). The embedding network is meta-trained
with the query cross-entropy.

A support set can lack a class (few positives among ten materials is common). Then there is no
prototype to compare with, and a softmax over the one remaining class would say P = 1 for every
query. Instead the learner predicts a smoothed rate for every query:
P(y=1) = (n_pos + m * prior) / (n_support + m), where ``prior`` is the positive rate seen in
meta-training and m = ``ProtoNetConfig.prior_strength``. Such tasks are left out of the
meta-training loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from metalearn.learn.learners.base import Prediction
from metalearn.learn.learners.neural import adamw, load_state, resolve_device, save_state, seeded
from metalearn.learn.models import MLP
from metalearn.learn.sampling import TaskBatch

NUM_CLASSES = 2


@dataclass(frozen=True)
class ProtoNetConfig:
    """Hyperparameters of the prototypical network; JSON-able."""

    hidden: tuple[int, ...] = (128, 128)
    embed_dim: int = 64
    outer_lr: float = 1e-3
    weight_decay: float = 0.0
    dropout: float = 0.0
    layer_norm: bool = False
    prior_strength: float = 1.0  # pseudo-counts of the meta-train prior when a class is missing
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))


def get_prototypes(
    embeddings: torch.Tensor, targets: torch.Tensor, num_classes: int = NUM_CLASSES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean support embedding per class.

    Args:
        embeddings: (B, n_support, D) support embeddings of B tasks.
        targets: (B, n_support) int64 class labels in [0, num_classes).
        num_classes: C.

    Returns:
        prototypes (B, C, D), zero for a class with no support row; counts (B, C) rows per class.
    """
    b, n_support, d = embeddings.shape
    ones = torch.ones_like(targets, dtype=embeddings.dtype)
    counts = embeddings.new_zeros(b, num_classes).scatter_add_(1, targets, ones)
    index = targets.unsqueeze(-1).expand(b, n_support, d)
    sums = embeddings.new_zeros(b, num_classes, d).scatter_add_(1, index, embeddings)
    return sums / counts.clamp_min(1).unsqueeze(-1), counts


def class_logits(prototypes: torch.Tensor, embeddings: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Negative squared distances: prototypes (B, C, D), embeddings (B, n, D), counts (B, C) -> (B, n, C).

    A class with no support row gets -inf, so it takes no probability mass.
    """
    sq = ((embeddings.unsqueeze(2) - prototypes.unsqueeze(1)) ** 2).sum(-1)  # (B, n, C)
    return (-sq).masked_fill((counts == 0).unsqueeze(1), float("-inf"))


def prototypical_loss(
    prototypes: torch.Tensor, embeddings: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query cross-entropy of softmax(-squared distance), over the tasks whose support has every class.

    Args:
        prototypes: (B, C, D); embeddings: (B, n_query, D) query embeddings; targets: (B, n_query) int64;
        counts: (B, C) support rows per class (from :func:`get_prototypes`).

    Returns:
        (scalar mean loss over the kept tasks' query rows (0 if none), (B,) bool mask of kept tasks).
    """
    complete = (counts > 0).all(dim=1)  # (B,)
    logits = class_logits(prototypes, embeddings, counts.clamp_min(1))  # kept tasks have no -inf
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, n_query)
    weight = complete.to(nll.dtype).unsqueeze(1).expand_as(nll)
    return (nll * weight).sum() / weight.sum().clamp_min(1), complete


class ProtoNet:
    """Prototypical network learner for classification tasks; predictions are P(y=1)."""

    name = "protonet"
    meta_trainable = True

    def __init__(
        self, n_features: int, task_type: str = "classification", cfg: ProtoNetConfig = ProtoNetConfig()
    ):
        if task_type != "classification":
            raise ValueError(
                f"protonet handles classification tasks only, got {task_type!r}; use 'metric' instead"
            )
        self.n_features, self.task_type, self.cfg = int(n_features), task_type, cfg
        self.device = resolve_device(cfg.device)
        self.model = seeded(
            cfg.seed, lambda: MLP(n_features, cfg.hidden, cfg.embed_dim, cfg.dropout, cfg.layer_norm)
        ).to(self.device)
        self.optimizer = adamw(self.model.parameters(), lr=cfg.outer_lr, weight_decay=cfg.weight_decay)
        self.label_counts_ = torch.zeros(NUM_CLASSES, dtype=torch.float64)  # meta-train support labels

    @property
    def prior_(self) -> float:
        """Positive rate of the meta-train support labels seen so far (0.5 before training)."""
        total = float(self.label_counts_.sum())
        return float(self.label_counts_[1]) / total if total > 0 else 0.5

    def _loss(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        b = batch.to(self.device)
        prototypes, counts = get_prototypes(self.model(b.x_support), b.y_support.long())
        return prototypical_loss(prototypes, self.model(b.x_query), b.y_query.long(), counts)

    def meta_train_step(self, batch: TaskBatch) -> dict[str, float]:
        self.model.train()
        self.label_counts_ += torch.bincount(batch.y_support.long().flatten().cpu(), minlength=NUM_CLASSES)
        loss, kept = self._loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach()), "tasks_used": float(kept.sum())}

    def meta_loss(self, batch: TaskBatch) -> float:
        self.model.eval()
        with torch.no_grad():
            return float(self._loss(batch)[0])

    def adapt(self, x_support: torch.Tensor, y_support: torch.Tensor) -> dict[str, torch.Tensor]:
        """x_support (n_support, F), y_support (n_support,) 0/1 -> {"prototypes": (C, D), "counts": (C,)}."""
        self.model.eval()
        with torch.no_grad():
            emb = self.model(x_support.to(self.device, torch.float32)).unsqueeze(0)
            prototypes, counts = get_prototypes(emb, y_support.to(self.device).long().unsqueeze(0))
        return {"prototypes": prototypes[0], "counts": counts[0]}

    def predict(self, state: dict[str, torch.Tensor], x_query: torch.Tensor) -> Prediction:
        """x_query (n_query, F) -> Prediction(mean=P(y=1) (n_query,)) on CPU."""
        counts = state["counts"]
        if bool((counts == 0).any()):
            m, n_support = self.cfg.prior_strength, float(counts.sum())
            p = (float(counts[1]) + m * self.prior_) / (n_support + m)
            return Prediction(mean=torch.full((x_query.shape[0],), p, dtype=torch.float32))
        self.model.eval()
        with torch.no_grad():
            emb = self.model(x_query.to(self.device, torch.float32)).unsqueeze(0)
            logits = class_logits(state["prototypes"].unsqueeze(0), emb, counts.unsqueeze(0))[0]
        return Prediction(mean=torch.softmax(logits, dim=-1)[:, 1].float().cpu())

    def state_dict(self) -> dict[str, Any]:
        return save_state(
            self.n_features, self.task_type, self.cfg, self.model, self.optimizer,
            label_counts=self.label_counts_.clone(),
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.label_counts_ = state["label_counts"].to(torch.float64).clone()
        load_state(state, self.model, self.optimizer)
