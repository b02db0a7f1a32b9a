"""scikit-learn's random forest regressor, built tree by tree without the forest's per-tree Python.

Why: the RF baseline is refitted on every evaluation episode (task x k x draw, thousands a night)
on 5-20 support rows, where ``RandomForestRegressor.fit`` spends ~90% of its time outside the tree
builder (estimator cloning, ``get_params`` through ``inspect``, a fresh ``RandomState`` per tree
and per bootstrap, sample-weight checks, joblib dispatch) and ``predict`` validates its input once
per tree. This drives scikit-learn's own Cython builder (``DepthFirstTreeBuilder`` with
``BestSplitter`` and the ``MSE`` criterion) with the seeds and bootstrap weights the forest would
draw, so the trees, and every prediction, are bit-identical to
``RandomForestRegressor(random_state=seed, n_jobs=1)``: ``tests/learn/learners/test_forest.py``
checks that against the library on every run, so a scikit-learn release that changes these
internals fails a test instead of changing a baseline. 10-20x faster on support sets of 5-20.

Those builder classes are private API: when they cannot be imported (or the input has NaNs, which
the forest handles with a missing-value mask), :func:`fit_forest` returns None and the caller uses
the public estimator.

Example:
    >>> forest = fit_forest(x_support, y_support, n_estimators=50, seed=0)
    >>> per_tree = forest.predict_per_tree(x_query)          # (n_estimators, n_query)
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

try:  # private scikit-learn API; see the module docstring
    from sklearn.tree._criterion import MSE
    from sklearn.tree._splitter import BestSplitter
    from sklearn.tree._tree import DepthFirstTreeBuilder, Tree
except ImportError:  # pragma: no cover - depends on the scikit-learn release
    Tree = None

MAX_INT = np.iinfo(np.int32).max  # sklearn.ensemble._forest.MAX_INT: the per-tree seed range


@dataclass(frozen=True)
class FittedForest:
    """The fitted trees (scikit-learn ``Tree`` objects) of one forest."""

    trees: tuple

    def predict_per_tree(self, x: np.ndarray) -> np.ndarray:
        """(n, F) -> (n_trees, n) float64: each tree's prediction, as ``estimator.predict`` gives it."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)  # the forest casts to float32 too
        return np.stack([tree.predict(x32)[:, 0] for tree in self.trees])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The forest mean (``RandomForestRegressor.predict``: the trees' predictions summed in order)."""
        return self.predict_per_tree(x).mean(0)  # a row-by-row sum over axis 0, then / n_trees


def resolve_max_features(max_features: float | str | None, n_features: int) -> int:
    """The number of features tried per split, by ``BaseDecisionTree._fit``'s rules."""
    if max_features is None:
        return n_features
    if isinstance(max_features, str):
        if max_features == "sqrt":
            return max(1, int(np.sqrt(n_features)))
        if max_features == "log2":
            return max(1, int(np.log2(n_features)))
        raise ValueError(f"max_features={max_features!r}: expected 'sqrt', 'log2', a number or None")
    if isinstance(max_features, numbers.Integral):
        return int(max_features)
    return max(1, int(float(max_features) * n_features)) if max_features > 0 else 0


def fit_forest(x: np.ndarray, y: np.ndarray, n_estimators: int, seed: int, min_samples_leaf: int = 1,
               max_features: float | str | None = 1.0) -> FittedForest | None:
    """Fit the forest ``RandomForestRegressor`` would (bootstrap, squared error, unlimited depth).

    Returns None when the fast path does not apply (private API missing, non-finite inputs);
    the caller then fits the public estimator.
    """
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    if Tree is None or not np.isfinite(x32).all():
        return None
    n, n_features = x32.shape
    y2 = np.ascontiguousarray(np.reshape(y, (-1, 1)), dtype=np.float64)
    tried = resolve_max_features(max_features, n_features)
    leaf, split = int(min_samples_leaf), max(2, 2 * int(min_samples_leaf))
    master = np.random.RandomState(seed)  # the forest's random_state
    rng = np.random.RandomState()  # reseeded per tree: RandomState(s) costs ~0.1 ms, seed(s) ~2 us
    trees = []
    for _ in range(int(n_estimators)):
        tree_seed = master.randint(MAX_INT)  # _set_random_states: one draw per estimator
        rng.seed(tree_seed)
        weights = np.bincount(rng.randint(0, n, n), minlength=n).astype(np.float64)  # the bootstrap
        rng.seed(tree_seed)  # the tree's _fit builds its splitter from a fresh RandomState(tree_seed)
        splitter = BestSplitter(MSE(1, n), tried, leaf, 0.0, rng, None)
        tree = Tree(n_features, np.ones(1, dtype=np.intp), 1)
        DepthFirstTreeBuilder(splitter, split, leaf, 0.0, MAX_INT, 0.0).build(tree, x32, y2, weights, None)
        trees.append(tree)
    return FittedForest(tuple(trees))
