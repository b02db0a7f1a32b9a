"""Baselines a meta-learner must beat, each fitted on the same n_support support rows only.

``SupportMean`` is the floor; ``KNNBaseline``, ``RandomForestBaseline`` and ``ScratchMLP`` ask
"does a plain model on n_support rows already do as well?"; ``PretrainedRidge`` (in
:mod:`metalearn.learn.learners.pretrained`) asks "is meta-training necessary, or is a multitask-pretrained
encoder plus a linear probe enough?".

All follow the :class:`~metalearn.learn.learners.base.Learner` protocol. Regression targets arrive
normalised with support statistics (evaluate.py does that); classification targets are 0/1 and
predictions are P(y=1). The support-only baselines have ``meta_trainable = False``: their
``meta_train_step`` raises, and :func:`metalearn.learn.train.meta_train` returns at once for them.

scikit-learn is imported inside ``adapt``: it takes about a second to import, and building the
learner factory (every CLI call, every Prefect task) should not pay for it unless a baseline fits.

Example:
    >>> rf = RandomForestBaseline(n_features=8, task_type="regression", n_estimators=50)
    >>> state = rf.adapt(x_support, y_support)    # (n_support, F), (n_support,)
    >>> rf.predict(state, x_query).mean.shape     # (n_query,)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metalearn.learn.learners.base import Prediction
from metalearn.learn.learners.episodes import check_task_type, episode_loss, to_numpy
from metalearn.learn.learners.neural import seeded
from metalearn.learn.learners.pretrained import PretrainedRidge
from metalearn.learn.sampling import TaskBatch


class _SupportOnly:
    """Shared plumbing for baselines that fit on each support set and have nothing to meta-train."""

    name = "support-only"
    meta_trainable = False

    def __init__(self, n_features: int, task_type: str = "regression", **hyperparams: Any) -> None:
        self.n_features = int(n_features)
        self.task_type = check_task_type(task_type)
        self.hyperparams = dict(hyperparams)

    def meta_train_step(self, batch: TaskBatch) -> dict[str, float]:
        raise RuntimeError(
            f"{self.name!r} is not meta-trainable: it fits on each support set only "
            "(meta_train() returns at once for learners with meta_trainable=False)"
        )

    def meta_loss(self, batch: TaskBatch) -> float:
        return episode_loss(self, batch)

    def state_dict(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "task_type": self.task_type, "hyperparams": self.hyperparams}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing is fitted across tasks; only check the saved learner was built for the same inputs.

        Hyperparameters may differ (``load_learner`` overrides); the constructor's win.
        """
        saved, mine = (state["n_features"], state["task_type"]), (self.n_features, self.task_type)
        if saved != mine:
            raise ValueError(f"{self.name!r}: saved (n_features, task_type) {saved} does not match {mine}")

    def _check(self, x_support: torch.Tensor, y_support: torch.Tensor) -> None:
        if x_support.ndim != 2 or x_support.shape[1] != self.n_features:
            raise ValueError(
                f"{self.name}: x_support has shape {tuple(x_support.shape)}; "
                f"need (n_support, {self.n_features})"
            )
        if y_support.shape != x_support.shape[:1] or x_support.shape[0] == 0:
            raise ValueError(
                f"{self.name}: y_support has shape {tuple(y_support.shape)}; "
                f"need ({x_support.shape[0]},) with n_support >= 1"
            )


class SupportMean(_SupportOnly):
    """Predict the support mean (regression) or the support positive fraction (classification)."""

    name = "mean"
    centre = staticmethod(np.mean)  # the support statistic predicted for every query row

    def adapt(self, x_support: torch.Tensor, y_support: torch.Tensor) -> tuple[float, float]:
        self._check(x_support, y_support)
        y = to_numpy(y_support)
        return float(self.centre(y)), float(np.std(y))

    def predict(self, state: tuple[float, float], x_query: torch.Tensor) -> Prediction:
        mean, std = state
        q = x_query.shape[0]
        out = torch.full((q,), mean, dtype=torch.float32, device=x_query.device)
        spread = torch.full((q,), std, dtype=torch.float32, device=x_query.device)
        return Prediction(mean=out, std=spread if self.task_type == "regression" else None)


class SupportMedian(SupportMean):
    """Predict the support median: what minimises MAE when nothing else is known (heavy tails)."""

    name = "median"
    centre = staticmethod(np.median)


class KNNBaseline(_SupportOnly):
    """k-nearest-neighbour average of support targets (0/1 targets average to P(y=1)).

    Args:
        n_neighbors: neighbours to average; capped at the support size n_support.
        weights: "distance" (inverse distance; exact matches win) or "uniform".
    """

    name = "knn"

    def __init__(
        self, n_features: int, task_type: str = "regression", n_neighbors: int = 5, weights: str = "distance"
    ) -> None:
        super().__init__(n_features, task_type, n_neighbors=int(n_neighbors), weights=weights)

    def adapt(self, x_support: torch.Tensor, y_support: torch.Tensor) -> Any:
        from sklearn.neighbors import KNeighborsRegressor  # deferred: see the module docstring

        self._check(x_support, y_support)
        n_neighbors = min(self.hyperparams["n_neighbors"], x_support.shape[0])
        model = KNeighborsRegressor(n_neighbors=n_neighbors, weights=self.hyperparams["weights"])
        return model.fit(to_numpy(x_support), to_numpy(y_support))

    def predict(self, state: Any, x_query: torch.Tensor) -> Prediction:
        mean = state.predict(to_numpy(x_query))
        return Prediction(mean=torch.as_tensor(mean, dtype=torch.float32, device=x_query.device))


class RandomForestBaseline(_SupportOnly):
    """scikit-learn random forest on the support rows; regression std is the spread over trees.

    Regression forests are built by :func:`~metalearn.learn.learners.forest.fit_forest`: the
    trees ``RandomForestRegressor`` builds, bit for bit, at a tenth of its cost per episode.

    n_support=1 and single-class supports cannot split, so they predict the support constant.
    """

    name = "rf"

    def __init__(
        self,
        n_features: int,
        task_type: str = "regression",
        n_estimators: int = 50,
        min_samples_leaf: int = 1,
        max_features: float | str | None = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            n_features,
            task_type,
            n_estimators=int(n_estimators),
            min_samples_leaf=int(min_samples_leaf),
            max_features=max_features,
            seed=int(seed),
        )

    def adapt(self, x_support: torch.Tensor, y_support: torch.Tensor) -> Any:
        self._check(x_support, y_support)
        x, y = to_numpy(x_support), to_numpy(y_support)
        if len(np.unique(y)) < 2:  # nothing to split on: the constant is the exact fit
            return float(y[0])
        h = self.hyperparams
        if self.task_type == "regression":
            from metalearn.learn.learners.forest import fit_forest  # deferred: imports scikit-learn

            forest = fit_forest(x, y, h["n_estimators"], h["seed"], h["min_samples_leaf"], h["max_features"])
            if forest is not None:  # the same trees as the estimator below, without its overhead
                return forest
        # deferred: see the module docstring
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        cls = RandomForestRegressor if self.task_type == "regression" else RandomForestClassifier
        model = cls(
            n_estimators=h["n_estimators"],
            min_samples_leaf=h["min_samples_leaf"],
            max_features=h["max_features"],
            random_state=h["seed"],
            n_jobs=1,
        )
        return model.fit(x, y if self.task_type == "regression" else y.astype(int))

    def predict(self, state: Any, x_query: torch.Tensor) -> Prediction:
        q, device = x_query.shape[0], x_query.device
        if isinstance(state, float):
            std = torch.zeros(q, device=device) if self.task_type == "regression" else None
            return Prediction(mean=torch.full((q,), state, device=device), std=std)
        x = to_numpy(x_query)
        if self.task_type == "classification":
            proba = state.predict_proba(x)[:, list(state.classes_).index(1)]
            return Prediction(mean=torch.as_tensor(proba, dtype=torch.float32, device=device))
        if hasattr(state, "predict_per_tree"):  # a FittedForest
            per_tree = state.predict_per_tree(x)
        else:
            per_tree = np.stack([tree.predict(x) for tree in state.estimators_])  # (n_estimators, n_query)
        return Prediction(
            mean=torch.as_tensor(per_tree.mean(0), dtype=torch.float32, device=device),
            std=torch.as_tensor(per_tree.std(0), dtype=torch.float32, device=device),
        )


class ScratchMLP(_SupportOnly):
    """An MLP trained from a fixed random init on the support set alone (full-batch Adam).

    The init and training are seeded inside ``adapt``, so the same support set gives the same
    model every time, independent of the global RNG.
    """

    name = "mlp"

    def __init__(
        self,
        n_features: int,
        task_type: str = "regression",
        hidden: tuple[int, ...] = (64, 64),
        steps: int = 100,
        lr: float = 1e-2,
        weight_decay: float = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__(
            n_features,
            task_type,
            hidden=tuple(int(h) for h in hidden),
            steps=int(steps),
            lr=float(lr),
            weight_decay=float(weight_decay),
            seed=int(seed),
        )

    def _net(self) -> torch.nn.Sequential:
        layers: list[torch.nn.Module] = []
        width = self.n_features
        for h in self.hyperparams["hidden"]:
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
            width = h
        return torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))

    def adapt(self, x_support: torch.Tensor, y_support: torch.Tensor) -> torch.nn.Sequential:
        self._check(x_support, y_support)
        h = self.hyperparams
        net = seeded(h["seed"], self._net).to(x_support.device)
        x, y = x_support.detach().float(), y_support.detach().float()
        loss_fn = torch.nn.MSELoss() if self.task_type == "regression" else torch.nn.BCEWithLogitsLoss()
        opt = torch.optim.Adam(net.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])
        with torch.enable_grad():
            for _ in range(h["steps"]):
                opt.zero_grad()
                loss_fn(net(x).squeeze(-1), y).backward()
                opt.step()
        return net.eval()

    def predict(self, state: torch.nn.Sequential, x_query: torch.Tensor) -> Prediction:
        with torch.no_grad():
            out = state(x_query.float()).squeeze(-1)
        return Prediction(mean=out if self.task_type == "regression" else torch.sigmoid(out))


# name -> class, for build_learner; every constructor is Cls(n_features, task_type, **hyperparams).
BASELINES: dict[str, type] = {
    "mean": SupportMean,
    "median": SupportMedian,
    "knn": KNNBaseline,
    "rf": RandomForestBaseline,
    "mlp": ScratchMLP,
    "pretrained_ridge": PretrainedRidge,
}
