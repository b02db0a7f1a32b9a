"""Few-shot heads on the transfer representation (:mod:`metalearn.represent`): k rows -> a model.

Every head works in a *support-chosen* target space: log when every support value is positive and
max/min > 10 (:func:`log_rule`), else the identity; then standardised with support statistics.
Predictions come back in the space the support arrived in. The heads therefore want targets in
the property's unit (``wants_raw_targets = True``); given support-normalised targets the log rule
simply never fires (normalised values are not all positive) and they still work.

Heads (all closed-form or tiny iterative fits; adapt + predict on 10 / 100 rows takes milliseconds):

* ``ridge``: ridge regression, alpha by exact leave-one-out on the support (hat-matrix identity);
* ``huber``: the same ridge refitted by iteratively reweighted least squares with Huber weights;
* ``gp``: Gaussian process (constant x RBF + white noise, marginal-likelihood fit), with std;
* ``knn``: inverse-distance kNN, neighbours by LOO;
* ``median``: the support median (the robust floor for heavy-tailed properties);
* ``auto``: computes every candidate's LOO predictions on the support, scores them by MAE in the
  support's own unit and predicts with the best (``ensemble=m`` averages the best m).

``feature_weights`` (P,) multiplies the (standardised) representation before any head: a prior over
which transfer features matter. ``alpha`` / ``alpha_by_k`` fix the ridge penalty of ``ridge`` and
``huber`` instead of choosing it by support LOO (which is noisy at k = 5-10). :class:`MetaTransferHead`
meta-learns both across meta-train tasks: the weights as mean |Spearman| relevance, the penalty per
support size by simulated k-shot episodes (``alpha_by_k``).

Example:
    >>> head = TransferHead(n_features=30, head="auto")
    >>> state = head.adapt(x_support, y_support)          # (k, P), (k,) in the property's unit
    >>> head.predict(state, x_query).mean.shape           # (q,)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metalearn.learn.learners.base import Prediction
from metalearn.learn.learners.episodes import check_task_type, episode_loss, to_numpy

HEADS = ("ridge", "huber", "gp", "knn", "median", "auto")
ALPHAS = np.logspace(-2, 4, 25)
KNN_NEIGHBOURS = (1, 2, 3, 5)
HUBER_C = 1.345  # Huber's constant, in units of the robust residual scale


def alpha_for_k(alpha_by_k, k: int) -> float:
    """Penalty for support size k from [[k_i, alpha_i], ...]: linear in log-log, held flat beyond the ends."""
    pairs = sorted((float(a), float(b)) for a, b in alpha_by_k)
    ks, alphas = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.exp(np.interp(np.log(max(k, 1)), ks, alphas)))


def log_rule(y: np.ndarray) -> bool:
    """Log target iff every support value is > 0 and max/min > 10 (spans more than a decade)."""
    y = np.asarray(y, dtype=float)
    return bool(len(y) > 0 and np.all(y > 0) and np.max(y) / np.min(y) > 10)


@dataclass(frozen=True)
class TargetSpace:
    """Support-chosen transform: t = log(y) or y, then z = (t - mean) / std."""

    log: bool
    mean: float
    std: float

    @classmethod
    def from_support(cls, y: np.ndarray, allow_log: bool = True) -> TargetSpace:
        use_log = allow_log and log_rule(y)
        t = np.log(y) if use_log else np.asarray(y, dtype=float)
        std = float(np.std(t))
        return cls(use_log, float(np.mean(t)), std if std > 1e-9 else 1.0)

    def forward(self, y: np.ndarray) -> np.ndarray:
        t = np.log(y) if self.log else np.asarray(y, dtype=float)
        return (t - self.mean) / self.std

    def inverse(self, z: np.ndarray) -> np.ndarray:
        t = np.asarray(z) * self.std + self.mean
        return np.exp(np.clip(t, -700, 700)) if self.log else t


# --- the candidate fits: each returns (predict(x) -> (mean_z, std_z or None), loo_z (k,)) ---

def _ridge_path(x: np.ndarray, z: np.ndarray, alphas: np.ndarray, weights: np.ndarray | None = None):
    """Weighted ridge with unpenalised intercept for every alpha: (coef (A, P), intercept (A,), loo (A, k)).

    LOO residuals come from the exact hat-matrix identity r_i / (1 - h_ii) (exact for fixed weights).
    """
    k = len(z)
    w = np.ones(k) if weights is None else weights
    sw = np.sqrt(w / w.sum() * k)
    xm, zm = np.average(x, axis=0, weights=w), np.average(z, weights=w)
    xs, zs = (x - xm) * sw[:, None], (z - zm) * sw
    u, s, vt = np.linalg.svd(xs, full_matrices=False)  # xs = U S V'
    uz = u.T @ zs
    d = s[None, :] ** 2 / (s[None, :] ** 2 + alphas[:, None])  # (A, r) shrinkage factors
    fitted = (d * uz[None, :]) @ u.T / sw[None, :] + zm  # (A, k)
    lev = (d[:, None, :] * (u[None, :, :] ** 2)).sum(-1) + (w / w.sum())[None, :]  # (A, k) diag of hat
    loo = z[None, :] - (z[None, :] - fitted) / np.clip(1 - lev, 1e-6, None)
    coef = (d / np.where(s > 1e-12, s, np.inf)[None, :] * uz[None, :]) @ vt  # (A, P)
    return coef, zm - coef @ xm, loo


def fit_ridge(x: np.ndarray, z: np.ndarray, alphas: np.ndarray = ALPHAS):
    coef, icpt, loo = _ridge_path(x, z, alphas)
    best = int(np.argmin(np.mean(np.abs(loo - z[None, :]), axis=1)))
    c, b, l_best = coef[best], icpt[best], loo[best]
    spread = float(np.sqrt(np.mean((l_best - z) ** 2)))
    return (lambda xq: (xq @ c + b, np.full(len(xq), spread))), l_best, float(alphas[best])


def fit_huber(x: np.ndarray, z: np.ndarray, alpha: float, n_iter: int = 20):
    """IRLS Huber ridge at the ridge's LOO alpha; LOO through the final weighted hat matrix."""
    w = np.ones(len(z))
    a = np.array([alpha])
    for _ in range(n_iter):
        coef, icpt, _ = _ridge_path(x, z, a, w)
        r = z - (x @ coef[0] + icpt[0])
        scale = max(1.4826 * np.median(np.abs(r - np.median(r))), 1e-6)
        w_new = np.minimum(1.0, HUBER_C * scale / np.maximum(np.abs(r), 1e-12))
        if np.allclose(w_new, w, atol=1e-4):
            break
        w = w_new
    coef, icpt, loo = _ridge_path(x, z, a, w)
    c, b = coef[0], icpt[0]
    spread = float(1.4826 * np.median(np.abs(loo[0] - z)))
    return (lambda xq: (xq @ c + b, np.full(len(xq), spread))), loo[0]


def fit_gp(x: np.ndarray, z: np.ndarray, seed: int = 0):
    """GP on standardised targets (zero prior mean = the support mean); LOO by the closed-form identity."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    p = x.shape[1]
    kernel = ConstantKernel(1.0, (1e-2, 1e2)) * RBF(np.sqrt(p), (1e-2 * np.sqrt(p), 1e2 * np.sqrt(p))) \
        + WhiteKernel(0.1, (1e-4, 1e1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp = GaussianProcessRegressor(kernel, normalize_y=False, random_state=seed).fit(x, z)
    kmat = gp.kernel_(x)
    kinv = np.linalg.inv(kmat + 1e-10 * np.eye(len(z)))
    loo = z - (kinv @ z) / np.diag(kinv)

    def predict(xq):
        mean, std = gp.predict(xq, return_std=True)
        return mean, std

    return predict, loo


def fit_knn(x: np.ndarray, z: np.ndarray, neighbours=KNN_NEIGHBOURS):
    """Inverse-distance-weighted kNN; the neighbour count by LOO on the support."""
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    best, best_err, best_loo = 1, np.inf, None
    for n in neighbours:
        n = min(n, len(z) - 1)
        if n < 1:
            break
        idx = np.argsort(d, axis=1)[:, :n]
        wts = 1.0 / np.maximum(np.take_along_axis(d, idx, 1), 1e-9)
        loo = (wts * z[idx]).sum(1) / wts.sum(1)
        err = float(np.mean(np.abs(loo - z)))
        if err < best_err:
            best, best_err, best_loo = n, err, loo
    if best_loo is None:  # k == 1
        best_loo = np.zeros_like(z)

    def predict(xq):
        dq = np.sqrt(((xq[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        n = min(best, len(z))
        idx = np.argsort(dq, axis=1)[:, :n]
        wts = 1.0 / np.maximum(np.take_along_axis(dq, idx, 1), 1e-9)
        return (wts * z[idx]).sum(1) / wts.sum(1), None

    return predict, best_loo


def fit_median(z: np.ndarray):
    k = len(z)
    med = float(np.median(z))
    loo = np.array([np.median(np.delete(z, i)) for i in range(k)]) if k > 1 else np.array([med])
    spread = float(1.4826 * np.median(np.abs(z - med)))
    return (lambda xq: (np.full(len(xq), med), np.full(len(xq), spread))), loo


@dataclass
class HeadState:
    space: TargetSpace
    predictors: list  # callables xq -> (mean_z, std_z | None)
    chosen: list[str]
    loo_mae: dict[str, float]  # in the support's unit
    z_range: tuple[float, float] = (-np.inf, np.inf)  # predictions are clipped to this (standardised) range


class TransferHead:
    """A support-only head on the transfer representation (the Learner protocol).

    Args:
        n_features: width P of the representation.
        task_type: "regression" only.
        head: one of :data:`HEADS`.
        candidates: the heads ``auto`` chooses among.
        ensemble: ``auto`` averages the best ``ensemble`` candidates by support LOO MAE.
        allow_log: apply :func:`log_rule` (False: always the identity).
        feature_weights: (P,) multiplier of the representation (None: all ones).
        clip: predictions are clipped to the support's range widened by ``clip`` x its width on
            each side (in the transformed space); a linear head extrapolating in log space would
            otherwise predict exp(large). None: no clipping. Default 0 (the support range; chosen on
            the validation protocol over None / 0.25 / 0).
        alpha: fixed ridge penalty of ``ridge`` / ``huber`` (None: chosen by support LOO).
        alpha_by_k: [[k, alpha], ...]: the penalty as a function of the support size (log-log
            interpolation, :func:`alpha_for_k`); takes precedence over ``alpha``. None: unused.
    """

    meta_trainable = False
    wants_raw_targets = True

    def __init__(self, n_features: int, task_type: str = "regression", head: str = "auto",
                 candidates: tuple[str, ...] = ("ridge", "huber", "gp", "knn", "median"), ensemble: int = 1,
                 allow_log: bool = True, feature_weights: list[float] | None = None, clip: float | None = 0.0,
                 seed: int = 0, alpha: float | None = None, alpha_by_k: list | None = None) -> None:
        if check_task_type(task_type) != "regression":
            raise ValueError("transfer heads are regression learners; got task_type='classification'")
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; valid: {HEADS}")
        bad = set(candidates) - set(HEADS[:-1])
        if bad:
            raise ValueError(f"unknown candidate heads {sorted(bad)}; valid: {HEADS[:-1]}")
        self.n_features, self.task_type = int(n_features), task_type
        self.name = f"transfer_{head}"
        self.hyperparams = {"head": head, "candidates": tuple(candidates), "ensemble": int(ensemble),
                            "allow_log": bool(allow_log), "seed": int(seed),
                            "clip": None if clip is None else float(clip),
                            "alpha": None if alpha is None else float(alpha),
                            "alpha_by_k": None if alpha_by_k is None else [[int(a), float(b)] for a, b in alpha_by_k],
                            "feature_weights": None if feature_weights is None else [float(v) for v in feature_weights]}

    def _weights(self) -> np.ndarray:
        w = self.hyperparams["feature_weights"]
        return np.ones(self.n_features) if w is None else np.asarray(w, dtype=float)

    def fixed_alpha(self, k: int) -> float | None:
        """The ridge penalty for a support of k rows, or None (choose by support LOO)."""
        h = self.hyperparams
        if h.get("alpha_by_k"):
            return alpha_for_k(h["alpha_by_k"], k)
        return h.get("alpha")

    def _fit_one(self, name: str, x: np.ndarray, z: np.ndarray, alpha: float | None):
        if name == "ridge":
            pred, loo, _ = fit_ridge(x, z, ALPHAS if alpha is None else np.array([alpha]))
            return pred, loo
        if name == "huber":
            return fit_huber(x, z, alpha if alpha is not None else fit_ridge(x, z)[2])
        if name == "gp":
            return fit_gp(x, z, self.hyperparams["seed"])
        if name == "knn":
            return fit_knn(x, z)
        return fit_median(z)

    def adapt(self, x_support: torch.Tensor, y_support: torch.Tensor) -> HeadState:
        x, y = to_numpy(x_support), to_numpy(y_support)
        if x.ndim != 2 or x.shape[1] != self.n_features or y.shape != x.shape[:1] or len(y) == 0:
            raise ValueError(f"{self.name}: need x (k, {self.n_features}) and y (k,), k >= 1; "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
        x = np.nan_to_num(x) * self._weights()
        h = self.hyperparams
        space = TargetSpace.from_support(y, h["allow_log"])
        z = space.forward(y)
        if len(y) < 3:  # too few rows to fit or to choose: the median
            pred, _ = fit_median(z)
            return HeadState(space, [pred], ["median"], {}, self._range(z))
        names = h["candidates"] if h["head"] == "auto" else (h["head"],)
        fits, alpha = {}, self.fixed_alpha(len(y))
        for name in names:
            if name == "ridge":
                pred, loo, alpha = fit_ridge(x, z, ALPHAS if alpha is None else np.array([alpha]))
                fits[name] = (pred, loo)
            else:
                fits[name] = self._fit_one(name, x, z, alpha)
        y_unit = space.inverse(z)
        loo_mae = {n: float(np.mean(np.abs(space.inverse(loo) - y_unit))) for n, (_, loo) in fits.items()}
        ranked = sorted(loo_mae, key=loo_mae.get)[: max(1, h["ensemble"])]
        return HeadState(space, [fits[n][0] for n in ranked], ranked, loo_mae, self._range(z))

    def _range(self, z: np.ndarray) -> tuple[float, float]:
        if self.hyperparams["clip"] is None:
            return (-np.inf, np.inf)
        width = float(np.max(z) - np.min(z))
        return (float(np.min(z)) - self.hyperparams["clip"] * width, float(np.max(z)) + self.hyperparams["clip"] * width)

    def predict(self, state: HeadState, x_query: torch.Tensor) -> Prediction:
        xq = np.nan_to_num(to_numpy(x_query)) * self._weights()
        means, stds = zip(*(p(xq) for p in state.predictors))
        y = np.mean([state.space.inverse(np.clip(m, *state.z_range)) for m in means], axis=0)
        std = None
        if stds[0] is not None:  # delta method back to the unit
            t_std = np.asarray(stds[0]) * state.space.std
            std = t_std * y if state.space.log else t_std
        dev = x_query.device
        return Prediction(mean=torch.as_tensor(y, dtype=torch.float32, device=dev),
                          std=None if std is None else torch.as_tensor(std, dtype=torch.float32, device=dev))

    # --- the Learner protocol's remaining methods ---
    def meta_train_step(self, batch) -> dict[str, float]:
        raise RuntimeError(f"{self.name!r} fits on each support set only; it has nothing to meta-train")

    def meta_loss(self, batch) -> float:
        return episode_loss(self, batch)

    def state_dict(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "task_type": self.task_type, "hyperparams": dict(self.hyperparams)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["n_features"], state["task_type"]) != (self.n_features, self.task_type):
            raise ValueError(f"{self.name!r}: saved learner is for {state['n_features']} features, "
                             f"{state['task_type']}; this one for {self.n_features}, {self.task_type}")
        self.hyperparams.update(state.get("hyperparams", {}))
