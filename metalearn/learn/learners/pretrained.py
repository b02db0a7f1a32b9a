"""``PretrainedRidge``: multitask-pretrained encoder + a linear probe fitted on the support set.

The "is meta-training really necessary?" baseline (Tian et al. 2020, "Rethinking few-shot
classification"): pretrain an encoder on all meta-train tasks by plain multitask regression, one
linear head per task, then for a new task fit only a ridge (regression) or logistic
(classification) probe on the support embeddings. It uses the same episodes as the
meta-learners, so ``meta_train`` drives it unchanged; its meta-val loss is the few-shot loss
after the probe, so early stopping selects the encoder that probes best.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metalearn.learn.learners.base import Prediction
from metalearn.learn.learners.episodes import check_task_type, episode_loss, to_numpy
from metalearn.learn.learners.neural import (
    adamw,
    move_optimizer_state,
    optimizer_state_cpu,
    resolve_device,
    seeded,
)
from metalearn.learn.sampling import TaskBatch

# Hyperparameters that fix the shapes of the saved weights; the rest (probe, optimiser, device)
# may be overridden when loading.
ARCHITECTURE = ("hidden", "embed_dim", "max_tasks")


def _mlp(n_in: int, hidden: tuple[int, ...], n_out: int) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for h in hidden:
        layers += [torch.nn.Linear(n_in, h), torch.nn.ReLU()]
        n_in = h
    return torch.nn.Sequential(*layers, torch.nn.Linear(n_in, n_out))


TASK_STD_FLOOR = 0.05


class PretrainedRidge:
    """Encoder pretrained by multitask regression; ridge/logistic probe on support embeddings.

    Args:
        n_features: F, the feature width.
        task_type: "regression" | "classification".
        hidden: encoder hidden widths; embed_dim: embedding width d.
        ridge_alpha: L2 penalty of the probe (1/C for the logistic probe).
        lr, weight_decay: AdamW for the encoder (heads get no weight decay).
        max_tasks: rows in the per-task head table; meta-train tasks get rows in order of first
            appearance, and more distinct tasks than this is an error.
        seed: initialisation seed.
        device: "auto" | "cpu" | "cuda"; ``meta_train`` may move the learner with ``to``.

    Fitted state: ``encoder_``, ``heads_`` ((max_tasks, d + 1): weights and bias per task),
    ``task_rows_`` (task_id -> head row), ``task_stats_`` ((max_tasks, 2) target mean/std per
    task, fixed when a task is first seen, so a task's head sees one consistent target scale
    across episodes instead of each episode's support-normalised targets).
    """

    name = "pretrained_ridge"
    meta_trainable = True

    def __init__(
        self,
        n_features: int,
        task_type: str = "regression",
        hidden: tuple[int, ...] = (128, 128),
        embed_dim: int = 64,
        ridge_alpha: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        max_tasks: int = 4096,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        self.n_features = int(n_features)
        self.task_type = check_task_type(task_type)
        self.hyperparams = {
            "hidden": tuple(int(h) for h in hidden),
            "embed_dim": int(embed_dim),
            "ridge_alpha": float(ridge_alpha),
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "max_tasks": int(max_tasks),
            "seed": int(seed),
            "device": str(device),
        }

        def init() -> tuple[torch.nn.Sequential, torch.nn.Parameter]:
            encoder = _mlp(self.n_features, self.hyperparams["hidden"], embed_dim)
            return encoder, torch.nn.Parameter(torch.randn(max_tasks, embed_dim + 1) / embed_dim**0.5)

        self.encoder_, self.heads_ = seeded(self.hyperparams["seed"], init)
        self.task_stats_ = torch.tensor([[0.0, 1.0]]).repeat(max_tasks, 1)
        self.task_rows_: dict[str, int] = {}
        # Rows of heads_ not in a batch get zero gradient; Adam's decaying momentum still nudges
        # them briefly, which is harmless: each head only ever scores its own task.
        self.optimizer_ = adamw(self.encoder_.parameters(), [self.heads_], lr=lr, weight_decay=weight_decay)
        self.to(resolve_device(device))

    # ---- meta-training (multitask pretraining on the episodes' rows) -------------------------
    def _rows(self, task_ids: tuple[str, ...], y: torch.Tensor) -> torch.Tensor:
        for t, task_id in enumerate(task_ids):
            if task_id in self.task_rows_:
                continue
            row = len(self.task_rows_)
            if row >= self.hyperparams["max_tasks"]:
                raise ValueError(f"pretrained_ridge: more than max_tasks={row} distinct meta-train tasks")
            self.task_rows_[task_id] = row
            if self.task_type == "regression":
                # Floored at TASK_STD_FLOOR (in the task's transformed unit), not STD_FLOOR: a first
                # episode of a mostly-constant task (band gaps of metals) would otherwise fix a
                # 1e-6 scale and blow this task's head loss up to ~1e10 (seen in meta-val tuning).
                self.task_stats_[row] = torch.stack(
                    [y[t].mean(), y[t].std(unbiased=False).clamp_min(TASK_STD_FLOOR)]
                )
        return torch.tensor([self.task_rows_[i] for i in task_ids], device=self.heads_.device)

    def meta_train_step(self, batch: TaskBatch) -> dict[str, float]:
        """One AdamW step on all support + query rows of the batch, each through its task's head."""
        if batch.task_type != self.task_type:
            raise ValueError(f"pretrained_ridge is a {self.task_type} learner; batch is {batch.task_type}")
        x = torch.cat([batch.x_support, batch.x_query], dim=1).float()  # (T, n_support + n_query, F)
        y = torch.cat([batch.y_support, batch.y_query], dim=1).float()  # (T, n_support + n_query)
        if self.task_type == "regression" and batch.y_mean is not None and batch.y_std is not None:
            y = y * batch.y_std[:, None] + batch.y_mean[:, None]  # back to the task's transformed unit
        rows = self._rows(batch.task_ids, y.detach().cpu())
        if self.task_type == "regression":
            stats = self.task_stats_.to(y.device)[rows]  # (T, 2)
            y = (y - stats[:, :1]) / stats[:, 1:]
        d = self.hyperparams["embed_dim"]
        self.encoder_.train()
        z = self.encoder_(x)  # (T, n_support + n_query, d)
        head = self.heads_[rows]  # (T, d + 1)
        out = torch.einsum("tnd,td->tn", z, head[:, :d]) + head[:, d:]
        if self.task_type == "regression":
            loss = torch.mean((out - y) ** 2)
        else:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out, y)
        self.optimizer_.zero_grad()
        loss.backward()
        self.optimizer_.step()
        return {"loss": float(loss.detach())}

    def meta_loss(self, batch: TaskBatch) -> float:
        """Few-shot query loss after the probe: the quantity early stopping should minimise."""
        return episode_loss(self, batch)

    # ---- adaptation: a probe on the frozen encoder ---------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x (n, F) -> embeddings (n, d), no grad."""
        self.encoder_.eval()
        with torch.no_grad():
            return self.encoder_(x.float().to(self.heads_.device))

    def adapt(self, x_support: torch.Tensor, y_support: torch.Tensor) -> Any:
        """Fit the probe on (n_support, F), (n_support,); returns (w (d,), b) for ridge or a classifier."""
        if not self.task_rows_:  # a random encoder would be reported under this baseline's name
            raise RuntimeError("pretrained_ridge has not been pretrained: run meta_train on it first")
        z, y = self.embed(x_support).double(), y_support.detach().to(self.heads_.device).double()
        alpha = self.hyperparams["ridge_alpha"]
        if self.task_type == "classification":
            labels = to_numpy(y).astype(int)
            if len(np.unique(labels)) < 2:
                return float(labels[0])
            # Deferred: scikit-learn takes about a second to import, and only this probe needs it.
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(C=1.0 / alpha, max_iter=1000).fit(to_numpy(z), labels)
        # Dual-form ridge with an unpenalised intercept: an (n_support, n_support) solve, cheap
        # because n_support << d.
        z_mean, y_mean = z.mean(0), y.mean()
        zc, yc = z - z_mean, y - y_mean
        gram = zc @ zc.T + alpha * torch.eye(len(y), dtype=z.dtype, device=z.device)
        w = zc.T @ torch.linalg.solve(gram, yc)
        return w, y_mean - z_mean @ w

    def predict(self, state: Any, x_query: torch.Tensor) -> Prediction:
        z = self.embed(x_query)
        if self.task_type == "regression":
            w, b = state
            return Prediction(mean=(z.double() @ w + b).float().to(x_query.device))
        if isinstance(state, float):
            return Prediction(mean=torch.full((x_query.shape[0],), state, device=x_query.device))
        proba = state.predict_proba(to_numpy(z))[:, list(state.classes_).index(1)]
        return Prediction(mean=torch.as_tensor(proba, dtype=torch.float32, device=x_query.device))

    # ---- persistence and device ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "n_features": self.n_features,
            "task_type": self.task_type,
            "hyperparams": self.hyperparams,
            "encoder": self.encoder_.state_dict(),
            "heads": self.heads_.detach(),
            "task_stats": self.task_stats_,
            "task_ids": list(self.task_rows_),
            "optimizer": optimizer_state_cpu(self.optimizer_),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state["n_features"], state["task_type"], *(state["hyperparams"][k] for k in ARCHITECTURE))
        mine = (self.n_features, self.task_type, *(self.hyperparams[k] for k in ARCHITECTURE))
        if saved != mine:
            raise ValueError(
                f"pretrained_ridge: saved (n_features, task_type, {', '.join(ARCHITECTURE)}) = "
                f"{saved} does not match this learner's {mine}"
            )
        self.encoder_.load_state_dict(state["encoder"])
        with torch.no_grad():
            self.heads_.copy_(state["heads"])
        self.task_stats_ = state["task_stats"].detach().clone().cpu()
        self.task_rows_ = {task_id: row for row, task_id in enumerate(state["task_ids"])}
        self.optimizer_.load_state_dict(state["optimizer"])  # casts its state to the params' device

    def to(self, device: torch.device | str) -> PretrainedRidge:
        self.encoder_.to(device)
        self.heads_.data = self.heads_.data.to(device)
        move_optimizer_state(self.optimizer_, device)
        return self
