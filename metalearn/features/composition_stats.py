"""Vectorized versions of matminer's per-composition statistics, for the composition fast path.

Each function mirrors one piece of matminer 0.10 code line by line, but over a block of
compositions held as padded arrays: ``values`` (N, K, ...) gathered from an elemental table by
atomic number, ``weights`` (N, K) the element amounts exactly as pymatgen's
``Composition.element_composition`` gives them (matminer passes these unnormalized amounts as the
"weights", which matters for ``mode``'s ``np.isclose``), and ``mask`` (N, K) marking real
elements (padding is ignored). NaN propagates as it does in matminer: a statistic over a
composition with a missing elemental value is NaN wherever matminer's is.
"""

from __future__ import annotations

import numpy as np

# np.isclose defaults, used by PropertyStats.mode and IonProperty
_RTOL, _ATOL = 1e-5, 1e-8
_BUDGET = 1 << 21  # floats per temporary when enumerating oxidation-state sums


def property_stats(values: np.ndarray, weights: np.ndarray, mask: np.ndarray, stats: list[str]) -> np.ndarray:
    """matminer ``PropertyStats`` (minimum, maximum, range, mean, avg_dev, mode) over the K axis.

    Args:
        values: (N, K, P) elemental property values.
        weights: (N, K) element amounts, 0 in padding.
        mask: (N, K) True for real elements.
        stats: statistic names in output order.

    Returns:
        (N, P * len(stats)), property-major like ``ElementProperty.feature_labels()``.
    """
    m3 = mask[:, :, None]
    v = np.where(m3, values, 0.0)
    w3 = weights[:, :, None]
    wsum = weights.sum(axis=1)[:, None]  # (N, 1)
    cache: dict[str, np.ndarray] = {}

    def mean() -> np.ndarray:  # np.average(data, weights=amounts)
        if "mean" not in cache:
            cache["mean"] = (v * w3).sum(axis=1) / wsum
        return cache["mean"]

    def minimum() -> np.ndarray:  # NaN if any value is NaN: np.min propagates NaN
        return np.where(m3, values, np.inf).min(axis=1)

    def maximum() -> np.ndarray:
        return np.where(m3, values, -np.inf).max(axis=1)

    def avg_dev() -> np.ndarray:  # np.average(|x - mean|, weights=amounts)
        return (np.abs(v - mean()[:, None, :]) * w3).sum(axis=1) / wsum

    def mode() -> np.ndarray:  # min of the values whose weight isclose to the largest weight
        wmax = weights.max(axis=1, keepdims=True)
        most = mask & (np.abs(weights - wmax) <= _ATOL + _RTOL * np.abs(wmax))
        return np.where(most[:, :, None], values, np.inf).min(axis=1)

    compute = {
        "minimum": minimum,
        "maximum": maximum,
        "range": lambda: maximum() - minimum(),
        "mean": mean,
        "avg_dev": avg_dev,
        "mode": mode,
    }
    unknown = [s for s in stats if s not in compute]
    if unknown:
        raise ValueError(f"fast path has no vectorized PropertyStats for {unknown}")
    out = np.stack([compute[s]() for s in stats], axis=2)  # (N, P, S)
    return out.reshape(len(values), -1)


def ionic_character(x: np.ndarray, weights: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``IonProperty``'s max and average ionic character, 1 - exp(-(X_A - X_B)^2 / 4) over pairs.

    Args:
        x: (N, K) electronegativity (NaN where unknown).

    Returns:
        (max_ionic_char, avg_ionic_char), each (N,); 0 for single-element compositions.
    """
    n_el = mask.sum(axis=1)
    frac = weights / weights.sum(axis=1, keepdims=True)
    first, second = np.triu_indices(x.shape[1], k=1)  # itertools.combinations order
    pair_ok = mask[:, first] & mask[:, second]
    ic = 1.0 - np.exp(-0.25 * ((x[:, first] - x[:, second]) ** 2))
    avg = np.where(pair_ok, frac[:, first] * frac[:, second] * ic, 0.0).sum(axis=1)
    mx = np.where(pair_ok, ic, -np.inf).max(axis=1) if len(first) else np.zeros(len(x))
    single = n_el < 2
    return np.where(single, 0.0, mx), np.where(single, 0.0, avg)


def compound_possible(oxidation: np.ndarray, weights: np.ndarray, n_el: np.ndarray) -> np.ndarray:
    """``IonProperty(fast=True)``'s "compound possible": some choice of one common oxidation state
    per element gives ``np.isclose(dot(states, amounts), 0)``. True for single elements.

    Args:
        oxidation: (N, K, S) common oxidation states per element, NaN padded.
        weights: (N, K) element amounts.
        n_el: (N,) number of elements.

    Returns:
        (N,) bool.
    """
    out = np.ones(len(n_el), dtype=bool)
    for k in np.unique(n_el[n_el >= 2]):
        rows = np.flatnonzero(n_el == k)
        out[rows] = _any_neutral(np.sort(oxidation[rows, :k], axis=2), weights[rows, :k])
    return out


def _any_neutral(ox: np.ndarray, amounts: np.ndarray) -> np.ndarray:
    """ox: (R, k, S) sorted, NaN last; amounts: (R, k). Returns (R,) bool."""
    valid = ~np.isnan(ox)
    result = np.zeros(len(ox), dtype=bool)
    # An element without common oxidation states makes itertools.product empty: never neutral.
    has_states = valid.any(axis=2).all(axis=1)
    # All states of one sign (metallic alloys): |sum| >= sum(amount * min|state|), far from 0.
    one_sign = np.where(valid, ox > 0, True).all(axis=(1, 2)) | np.where(valid, ox < 0, True).all(axis=(1, 2))
    bound = (amounts * np.where(valid, np.abs(ox), np.inf).min(axis=2)).sum(axis=1)
    todo = np.flatnonzero(has_states & ~(one_sign & (bound > 1e3 * _ATOL)))
    if len(todo) == 0:
        return result
    counts = valid[todo].sum(axis=2)  # (T, k) states per element
    combos = counts.prod(axis=1)
    for r in todo[combos > _BUDGET]:  # rare: very many combinations; drop duplicate partial sums
        result[r] = _neutral_distinct(ox[r], amounts[r])
    small = combos <= _BUDGET
    todo, counts, combos = todo[small], counts[small], combos[small]
    bounds = np.cumsum(combos)
    start = 0
    while start < len(todo):
        base = bounds[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(bounds, base + _BUDGET, side="right")))
        batch = slice(start, stop)
        result[todo[batch]] = _neutral_product(ox[todo[batch]], amounts[todo[batch]], counts[batch])
        start = stop
    return result


def _neutral_product(ox: np.ndarray, amounts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Every combination of every row, flattened (mixed-radix index), summed in element order
    like ``np.dot(states, amounts)``. ox: (R, k, S) NaN last; counts: (R, k). Returns (R,) bool."""
    combos = counts.prod(axis=1)
    row = np.repeat(np.arange(len(ox)), combos)  # (C,) row of each combination
    t = np.arange(len(row)) - np.repeat(np.cumsum(combos) - combos, combos)
    strides = np.cumprod(counts, axis=1) // counts  # (R, k)
    sums = np.zeros(len(row))
    for j in range(ox.shape[1]):
        state = (t // strides[row, j]) % counts[row, j]
        sums = sums + amounts[row, j] * ox[row, j, state]
    return np.bincount(row, weights=np.abs(sums) <= _ATOL, minlength=len(ox)) > 0


def _neutral_distinct(ox: np.ndarray, amounts: np.ndarray) -> bool:
    """One row, exact dynamic programme over the distinct partial sums. ox: (k, S); amounts: (k,)."""
    sums = np.zeros(1)
    for j in range(len(ox)):
        states = ox[j][~np.isnan(ox[j])]
        sums = np.unique((sums[:, None] + amounts[j] * states[None, :]).ravel())
    return bool((np.abs(sums) <= _ATOL).any())
