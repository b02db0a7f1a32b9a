"""Deep-kernel GP for few-shot regression with predictive uncertainty (the FS-Mol DKT/ADKT family).

An MLP embeds each material; an RBF kernel on the embedding defines a GP whose posterior on the
support set predicts the query rows. The embedding and the kernel's lengthscale, outputscale and
noise are meta-trained by the Gaussian negative log-likelihood of the query targets. The GP's prior
mean is the support mean, so a task with uninformative embeddings falls back to the support mean.

Classification tasks are handled by regressing the 0/1 labels; the predicted mean is clipped to
[0, 1] and read as P(y=1) (a calibrated classifier this is not: ProtoNet is the classification
metric learner). ``std`` is the GP's predictive std in the (normalised) target space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metalearn.learn.learners.base import Prediction
from metalearn.learn.learners.episodes import check_task_type
from metalearn.learn.learners.neural import adamw, load_state, resolve_device, save_state, seeded
from metalearn.learn.models import MLP
from metalearn.learn.sampling import TaskBatch


@dataclass(frozen=True)
class MetricConfig:
    """Hyperparameters of the deep-kernel GP; JSON-able."""

    hidden: tuple[int, ...] = (128, 128)
    embed_dim: int = 64
    outer_lr: float = 1e-3
    weight_decay: float = 0.0
    dropout: float = 0.0
    layer_norm: bool = False
    init_lengthscale: float | None = 4.0  # chosen on meta-val (0.5*sqrt(64)); None -> sqrt(embed_dim)
    init_outputscale: float = 1.0  # targets are normalised with support stats, so variance ~1
    init_noise: float = 0.1
    min_noise: float = 1e-4  # keeps the support kernel matrix well conditioned
    jitter: float = 1e-6
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))


def rbf_kernel(
    a: torch.Tensor, b: torch.Tensor, lengthscale: torch.Tensor, outputscale: torch.Tensor
) -> torch.Tensor:
    """s^2 exp(-|a - b|^2 / (2 l^2)): a (B, n, D), b (B, m, D) -> (B, n, m)."""
    sq = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1).unsqueeze(-2) - 2 * a @ b.transpose(-1, -2)
    return outputscale * torch.exp(-0.5 * sq.clamp_min(0) / lengthscale**2)


def gp_posterior(
    z_support: torch.Tensor,
    y_support: torch.Tensor,
    z_query: torch.Tensor,
    lengthscale: torch.Tensor,
    outputscale: torch.Tensor,
    noise: torch.Tensor,
    jitter: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GP posterior at the query rows, prior mean = support mean of each task.

    Args:
        z_support (B, n_support, D) support embeddings; y_support (B, n_support) targets;
        z_query (B, n_query, D) query embeddings; lengthscale, outputscale, noise: scalar tensors
        (noise is the observation variance).

    Returns:
        mean (B, n_query) and predictive variance (B, n_query), observation noise included.
    """
    mu = y_support.mean(-1, keepdim=True)  # (B, 1)
    k_ss = rbf_kernel(z_support, z_support, lengthscale, outputscale)
    eye = torch.eye(z_support.shape[-2], dtype=z_support.dtype, device=z_support.device)
    chol = torch.linalg.cholesky(k_ss + (noise + jitter) * eye)  # (B, n_support, n_support)
    k_sq = rbf_kernel(z_support, z_query, lengthscale, outputscale)  # (B, n_support, n_query)
    alpha = torch.cholesky_solve((y_support - mu).unsqueeze(-1), chol)  # (B, n_support, 1)
    mean = mu + (k_sq.transpose(-1, -2) @ alpha).squeeze(-1)
    v = torch.linalg.solve_triangular(chol, k_sq, upper=False)  # (B, n_support, n_query)
    latent_var = (outputscale - (v * v).sum(-2)).clamp_min(0)
    return mean, latent_var + noise


def gaussian_nll(y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Mean of 0.5 (log 2 pi var + (y - mean)^2 / var) over all entries."""
    return 0.5 * (torch.log(2 * math.pi * var) + (y - mean) ** 2 / var).mean()


def _inv_softplus(x: float) -> float:
    return x + math.log(-math.expm1(-x))


class DeepKernel(nn.Module):
    """MLP embedding plus the RBF kernel's positive hyperparameters (stored through softplus)."""

    def __init__(self, n_features: int, cfg: MetricConfig) -> None:
        super().__init__()
        self.net = MLP(n_features, cfg.hidden, cfg.embed_dim, cfg.dropout, cfg.layer_norm)
        ls = cfg.init_lengthscale if cfg.init_lengthscale is not None else math.sqrt(cfg.embed_dim)
        self.raw_lengthscale = nn.Parameter(torch.tensor(_inv_softplus(ls)))
        self.raw_outputscale = nn.Parameter(torch.tensor(_inv_softplus(cfg.init_outputscale)))
        self.raw_noise = nn.Parameter(torch.tensor(_inv_softplus(max(cfg.init_noise - cfg.min_noise, 1e-6))))
        self.min_noise = cfg.min_noise

    def hyper(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lengthscale, outputscale, noise variance), all > 0."""
        return (
            F.softplus(self.raw_lengthscale),
            F.softplus(self.raw_outputscale),
            self.min_noise + F.softplus(self.raw_noise),
        )


class MetricGP:
    """Deep-kernel GP learner: ``adapt`` stores the support set, ``predict`` is the GP posterior."""

    name = "metric"
    meta_trainable = True

    def __init__(
        self, n_features: int, task_type: str = "regression", cfg: MetricConfig = MetricConfig()
    ) -> None:
        self.n_features, self.task_type, self.cfg = int(n_features), check_task_type(task_type), cfg
        self.device = resolve_device(cfg.device)
        self.kernel = seeded(cfg.seed, lambda: DeepKernel(n_features, cfg)).to(self.device)
        scales = [self.kernel.raw_lengthscale, self.kernel.raw_outputscale, self.kernel.raw_noise]
        self.optimizer = adamw(
            self.kernel.net.parameters(), scales, lr=cfg.outer_lr, weight_decay=cfg.weight_decay
        )

    def _posterior(
        self, x_support: torch.Tensor, y_support: torch.Tensor, x_query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_support, F), (B, n_support), (B, n_query, F) -> mean, variance, each (B, n_query)."""
        net = self.kernel.net
        return gp_posterior(net(x_support), y_support, net(x_query), *self.kernel.hyper(), self.cfg.jitter)

    def _loss(self, batch: TaskBatch) -> torch.Tensor:
        b = batch.to(self.device)
        mean, var = self._posterior(b.x_support, b.y_support, b.x_query)
        return gaussian_nll(b.y_query, mean, var)

    def meta_train_step(self, batch: TaskBatch) -> dict[str, float]:
        """One AdamW step on the query Gaussian NLL of the meta-batch."""
        self.kernel.train()
        loss = self._loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            ls, os_, noise = (float(t) for t in self.kernel.hyper())
        return {"loss": float(loss.detach()), "lengthscale": ls, "outputscale": os_, "noise": noise}

    def meta_loss(self, batch: TaskBatch) -> float:
        self.kernel.eval()
        with torch.no_grad():
            return float(self._loss(batch))

    def adapt(self, x_support: torch.Tensor, y_support: torch.Tensor) -> dict[str, torch.Tensor]:
        """A GP needs no fitting beyond its support set: returns it, on the learner's device."""
        return {"x": x_support.to(self.device, torch.float32), "y": y_support.to(self.device, torch.float32)}

    def predict(self, state: dict[str, torch.Tensor], x_query: torch.Tensor) -> Prediction:
        """x_query (n_query, F) -> Prediction(mean, std, each (n_query,)) on CPU.

        The mean is clipped to [0, 1] for classification.
        """
        self.kernel.eval()
        with torch.no_grad():
            x = x_query.to(self.device, torch.float32).unsqueeze(0)
            mean, var = self._posterior(state["x"].unsqueeze(0), state["y"].unsqueeze(0), x)
        mean, std = mean[0].cpu(), var[0].sqrt().cpu()
        if self.task_type == "classification":
            mean = mean.clamp(0.0, 1.0)
        return Prediction(mean=mean, std=std)

    def state_dict(self) -> dict[str, Any]:
        return save_state(self.n_features, self.task_type, self.cfg, self.kernel, self.optimizer)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_state(state, self.kernel, self.optimizer)
