"""The meta-learned head on the transfer representation: what one 10-row task cannot know, learned across tasks.

:class:`MetaTransferHead` is a :class:`~metalearn.learn.learners.transfer_heads.TransferHead` whose
feature weights (which transfer features carry signal for properties in general) and ridge/Huber
penalty per support size are meta-learned on meta-train tasks, each task masked from its own
property family's members.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metalearn.learn.learners.transfer_heads import TransferHead

META_ALPHAS = np.logspace(-1, 2.5, 15)  # the ridge penalties MetaTransferHead scores on episodes
META_KS = (5, 10, 20)  # support sizes of its episodes


def feature_relevance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|Spearman correlation| of each column of x (n, P) with y (n,); 0 for constant columns."""
    rx = np.argsort(np.argsort(x, axis=0, kind="stable"), axis=0, kind="stable").astype(float)
    ry = np.argsort(np.argsort(y, kind="stable"), kind="stable").astype(float)
    rx -= rx.mean(0)
    ry -= ry.mean()
    denom = np.sqrt((rx ** 2).sum(0) * (ry ** 2).sum())
    return np.abs(np.where(denom > 0, (rx * ry[:, None]).sum(0) / np.where(denom > 0, denom, 1.0), 0.0))


class MetaTransferHead(TransferHead):
    """:class:`TransferHead` (``huber`` by default) whose feature weights and ridge penalty are meta-learned.

    What one task of 10 rows cannot know: which transfer features carry signal for properties in
    general, and how hard to shrink. Across meta-train tasks, each column's mean |Spearman
    correlation| with the task targets (only over tasks whose own family is not that column's
    family: a property's own member would trivially predict it) becomes ``weight ** gamma``,
    normalised to mean 1, which multiplies the representation before every head (a
    ridge/GP/kNN prior on relevance).

    With ``meta_alpha`` (default) the ridge penalty is meta-learned too: k-shot episodes drawn
    from the meta-train tasks (the task's own-family columns zeroed, as for an unseen family) are
    scored, MAE/MAD of the query, for each penalty in :data:`META_ALPHAS`; per support size the
    best mean becomes ``hyperparams["alpha_by_k"]``. Support LOO picks the penalty from 10 rows
    and is noisy; the episodes' choice was better on the validation protocol at every k.

    ``meta_fit(tasks)`` is the direct route; ``meta_train_step(batch)`` accumulates the same
    statistics from episodes (support + query rows, no family mask).
    """

    meta_trainable = True

    def __init__(self, n_features: int, task_type: str = "regression", gamma: float = 1.0,
                 meta_alpha: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("head", "huber")  # chosen on the validation protocol (over auto, auto x3 ensemble)
        super().__init__(n_features, task_type, **kwargs)
        self.name = "meta_transfer"
        self.hyperparams["gamma"] = float(gamma)
        self.hyperparams["meta_alpha"] = bool(meta_alpha)
        self.relevance_sum_ = np.zeros(self.n_features)
        self.relevance_count_ = np.zeros(self.n_features)
        self.alpha_loss_sum_: dict[int, np.ndarray] = {}  # support size -> (len(META_ALPHAS),) summed MAE/MAD
        self.alpha_loss_count_: dict[int, int] = {}

    def _update(self, x: np.ndarray, y: np.ndarray, mask: np.ndarray | None) -> None:
        ok = np.ones(self.n_features, bool) if mask is None else np.asarray(mask, bool)
        rel = feature_relevance(np.nan_to_num(x), y)
        self.relevance_sum_[ok] += rel[ok]
        self.relevance_count_[ok] += 1
        mean_rel = self.relevance_sum_ / np.maximum(self.relevance_count_, 1)
        w = mean_rel ** self.hyperparams["gamma"]
        self.hyperparams["feature_weights"] = (w / w.mean() if w.mean() > 0 else np.ones_like(w)).tolist()

    def _score_alphas(self, xs: np.ndarray, ys: np.ndarray, xq: np.ndarray, yq: np.ndarray) -> None:
        """Add one episode's MAE/MAD at every penalty of :data:`META_ALPHAS` (current feature weights)."""
        mad = float(np.mean(np.abs(yq - yq.mean())))
        if len(ys) < 3 or len(yq) == 0 or not mad > 0:
            return
        saved = self.hyperparams["alpha"], self.hyperparams["alpha_by_k"]
        self.hyperparams["alpha_by_k"] = None
        losses = np.empty(len(META_ALPHAS))
        try:
            for i, a in enumerate(META_ALPHAS):
                self.hyperparams["alpha"] = float(a)
                pred = self.predict(self.adapt(torch.as_tensor(xs), torch.as_tensor(ys)), torch.as_tensor(xq))
                losses[i] = np.mean(np.abs(pred.mean.double().numpy() - yq)) / mad
        finally:
            self.hyperparams["alpha"], self.hyperparams["alpha_by_k"] = saved
        if not np.all(np.isfinite(losses)):
            return
        k = len(ys)
        self.alpha_loss_sum_[k] = self.alpha_loss_sum_.get(k, np.zeros(len(META_ALPHAS))) + losses
        self.alpha_loss_count_[k] = self.alpha_loss_count_.get(k, 0) + 1
        self._set_alpha_by_k()

    def _set_alpha_by_k(self) -> None:
        if self.hyperparams["meta_alpha"] and self.alpha_loss_sum_:
            self.hyperparams["alpha_by_k"] = [[int(k), float(META_ALPHAS[int(np.argmin(v))])]
                                              for k, v in sorted(self.alpha_loss_sum_.items())]

    def meta_fit(self, tasks, ks: tuple[int, ...] = META_KS, n_episodes: int = 5, n_query: int = 100,
                 seed: int = 0) -> MetaTransferHead:
        """tasks: iterable of (x (n, P), y (n,), mask (P,) bool or None: columns allowed for this task).

        y should be in the property's unit (what the head sees at test time; relevance is a rank
        statistic, so any monotone transform gives the same weights). With ``meta_alpha``, after the
        weights, ``n_episodes`` episodes per task and support size in ``ks`` choose the penalty.
        """
        tasks = [(np.asarray(x, float), np.asarray(y, float), mask) for x, y, mask in tasks]
        for x, y, mask in tasks:
            self._update(x, y, mask)
        if not self.hyperparams["meta_alpha"]:
            return self
        rng = np.random.default_rng(seed)
        for x, y, mask in tasks:
            x = np.nan_to_num(x) * (1.0 if mask is None else np.asarray(mask, float))
            for k in ks:
                if len(y) < k + 10:
                    continue
                for _ in range(n_episodes):
                    perm = rng.permutation(len(y))
                    s, q = perm[:k], perm[k:k + n_query]
                    self._score_alphas(x[s], y[s], x[q], y[q])
        return self

    def meta_train_step(self, batch) -> dict[str, float]:
        for t in range(batch.n_tasks):
            xs, xq = batch.x_support[t].double().cpu().numpy(), batch.x_query[t].double().cpu().numpy()
            ys, yq = batch.y_support[t].double().cpu().numpy(), batch.y_query[t].double().cpu().numpy()
            self._update(np.concatenate([xs, xq]), np.concatenate([ys, yq]), None)
            if self.hyperparams["meta_alpha"] and t == 0:  # one episode per step bounds the cost
                self._score_alphas(xs, ys, xq, yq)
        return {"mean_relevance": float(np.mean(self.relevance_sum_ / np.maximum(self.relevance_count_, 1)))}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "relevance_sum": self.relevance_sum_.tolist(),
                "relevance_count": self.relevance_count_.tolist(),
                "alpha_loss_sum": {str(k): v.tolist() for k, v in self.alpha_loss_sum_.items()},
                "alpha_loss_count": {str(k): int(v) for k, v in self.alpha_loss_count_.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.relevance_sum_ = np.asarray(state["relevance_sum"], float)
        self.relevance_count_ = np.asarray(state["relevance_count"], float)
        self.alpha_loss_sum_ = {int(k): np.asarray(v, float) for k, v in state.get("alpha_loss_sum", {}).items()}
        self.alpha_loss_count_ = {int(k): int(v) for k, v in state.get("alpha_loss_count", {}).items()}
