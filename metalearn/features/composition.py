"""Composition features: matminer's definitions, computed by a vectorized NumPy fast path.

Why a fast path: matminer's ``featurize_dataframe`` runs a Python loop per composition and per
property (~600 formulas/s for Magpie alone), which makes featurizing the bundled ~540k formulas a
half-hour job. Here the elemental tables are taken once from matminer's own data sources
(``MagpieData``, ``PymatgenData``), each formula is parsed once
(:func:`metalearn.chemistry.parse_composition`, cached), and the statistics of
:class:`matminer.featurizers.utils.stats.PropertyStats` (minimum, maximum, range, mean, avg_dev,
mode; NaN propagation included) are evaluated for a whole block of compositions at once.
``tests/features/test_featurize.py`` checks every value against
:func:`featurize_compositions_matminer` (matminer itself) to 1e-9, NaN pattern included.

The feature set (``FEATURE_SET_VERSION``) is matminer's, with ``impute_nan=False`` everywhere:
matminer's default imputes a missing elemental value with the mean over all elements, which
invents data; we keep the NaN and report the material as an error row ("missing_element_data").

* ``ElementProperty.from_preset("magpie")``: 22 properties x 6 statistics = 132
* ``Stoichiometry()``: 0, 2, 3, 5, 7, 10-norms = 6
* ``ValenceOrbital()``: avg and frac of s, p, d, f valence electrons = 8
* ``IonProperty(fast=True)``: compound possible, max / avg ionic character = 3. ``fast=True``
  (each element in one of its common oxidation states at a time) because the default
  ``fast=False`` calls pymatgen's ``oxi_state_guesses``, an exponential search that cannot be
  reproduced exactly in vectorized form and takes seconds on many-element alloys.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pandas as pd

from metalearn.chemistry import MAX_Z, Parsed, parse_composition
from metalearn.features.composition_stats import compound_possible, ionic_character, property_stats
from metalearn.schema import DETAIL, FORMULA, REASON

FEATURE_SET_VERSION = "v1"  # bump whenever a feature definition, its data or a label changes

# error reason (machine code) of a formula that parses but lacks elemental data; the parse errors
# (unparseable_formula, unknown_element) are metalearn.chemistry's
MISSING_DATA = "missing_element_data"

_BLOCK = 8192  # rows per vectorized block: bounds the (rows, elements, properties) temporaries


@functools.lru_cache(maxsize=1)
def matminer_featurizers() -> tuple:
    """The matminer featurizers that define the composition feature set (built once per process)."""
    from matminer.featurizers.composition import ElementProperty, IonProperty, Stoichiometry, ValenceOrbital
    from matminer.utils.data import PymatgenData

    return (
        ElementProperty.from_preset("magpie", impute_nan=False),
        Stoichiometry(),
        ValenceOrbital(impute_nan=False),
        IonProperty(data_source=PymatgenData(impute_nan=False), impute_nan=False, fast=True),
    )


def composition_feature_names() -> list[str]:
    """Column names of the composition features, exactly ``feature_labels()`` of each featurizer."""
    return [label for f in matminer_featurizers() for label in f.feature_labels()]


class _Tables(NamedTuple):
    magpie: np.ndarray  # (119, n_props) indexed by Z; row 0 unused (NaN)
    magpie_props: list[str]
    stats: list[str]
    valence: np.ndarray  # (119, 5): Ns, Np, Nd, Nf, N valence
    electronegativity: np.ndarray  # (119,) pymatgen X, NaN where pymatgen has none
    oxidation: np.ndarray  # (119, S) common oxidation states, NaN padded
    p_list: tuple[int, ...]
    orbitals: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def _tables() -> _Tables:
    """Elemental data read once from the featurizers' own data sources (never hand-copied)."""
    from pymatgen.core import Element

    magpie_fz, stoich_fz, valence_fz, ion_fz = matminer_featurizers()
    if list(valence_fz.props) != ["avg", "frac"] or ion_fz.fast is not True:
        raise RuntimeError("fast path assumes ValenceOrbital props (avg, frac) and IonProperty(fast=True)")
    elements = [Element.from_Z(z) for z in range(1, MAX_Z + 1)]

    def column(source, prop: str) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns for every element without a value
            values = [source.get_elemental_property(e, prop) for e in elements]
        return np.array([np.nan] + [np.nan if v is None else float(v) for v in values])

    magpie = np.stack([column(magpie_fz.data_source, p) for p in magpie_fz.features], axis=1)
    orbitals = tuple(valence_fz.orbitals)
    valence = np.stack(
        [column(valence_fz.data_source, f"N{o}Valence") for o in orbitals]
        + [column(valence_fz.data_source, "NValence")],
        axis=1,
    )
    states = [list(ion_fz.data_source.get_oxidation_states(e)) for e in elements]
    oxidation = np.full((MAX_Z + 1, max(len(s) for s in states)), np.nan)
    for z, s in enumerate(states, start=1):
        oxidation[z, : len(s)] = s
    return _Tables(
        magpie=magpie,
        magpie_props=list(magpie_fz.features),
        stats=list(magpie_fz.stats),
        valence=valence,
        electronegativity=column(ion_fz.data_source, "X"),
        oxidation=oxidation,
        p_list=tuple(stoich_fz.p_list),
        orbitals=orbitals,
    )


def _result(series: pd.Series, parsed: list[Parsed], values: np.ndarray, names: list[str]):
    """(features, errors) from parse results and feature values; NaN in a parsed row is an error."""
    nan_rows = set(np.flatnonzero(np.isnan(values).any(axis=1)).tolist())
    rows = []
    for i, p in enumerate(parsed):
        if p.reason:
            rows.append((i, series.iat[i], p.reason, p.detail))
        elif i in nan_rows:
            rows.append((i, series.iat[i], MISSING_DATA, _missing_data_detail(p, values[i], names)))
    errors = pd.DataFrame(rows, columns=["_pos", FORMULA, REASON, DETAIL])
    errors.index = series.index[errors.pop("_pos").to_numpy(dtype=int)] if rows else series.index[:0]
    return pd.DataFrame(values, index=series.index, columns=names), errors


def _as_series(formulas: Iterable[str] | pd.Series) -> pd.Series:
    if isinstance(formulas, pd.Series):
        return formulas
    return pd.Series(list(formulas), dtype=object)


def _block_features(parsed: list[Parsed]) -> np.ndarray:
    """Features of parsed, valid compositions. Returns (N, F) float64."""
    t = _tables()
    n = np.array([len(p.z) for p in parsed])
    width = int(n.max())
    mask = np.arange(width)[None, :] < n[:, None]  # (N, K)
    z = np.zeros(mask.shape, dtype=np.intp)
    w = np.zeros(mask.shape)
    z[mask] = np.fromiter((x for p in parsed for x in p.z), dtype=np.intp, count=int(n.sum()))
    w[mask] = np.fromiter((x for p in parsed for x in p.amounts), dtype=float, count=int(n.sum()))

    magpie = property_stats(t.magpie[z], w, mask, t.stats)  # (N, P * S), property-major
    frac = w / w.sum(axis=1, keepdims=True)  # Stoichiometry: el_amt / n_atoms
    norms = [n.astype(float) if p == 0 else (frac**p).sum(axis=1) ** (1.0 / p) for p in t.p_list]
    valence = property_stats(t.valence[z], w, mask, ["mean"])  # (N, 5): s, p, d, f, total
    with np.errstate(divide="ignore", invalid="ignore"):
        valence_frac = valence[:, :-1] / valence[:, -1:]
    possible = compound_possible(t.oxidation[z], w, n)
    max_ic, avg_ic = ionic_character(t.electronegativity[z], w, mask)
    return np.column_stack(
        [magpie, *norms, valence[:, :-1], valence_frac, possible.astype(float), max_ic, avg_ic]
    )


def _missing_data_detail(p: Parsed, row: np.ndarray, names: list[str]) -> str:
    from pymatgen.core import Element

    t = _tables()
    lacking = []
    for z in p.z:
        props = [name for name, v in zip(t.magpie_props, t.magpie[z]) if np.isnan(v)]
        if len(p.z) > 1 and np.isnan(t.electronegativity[z]):
            props.append("X (pymatgen)")
        if props:
            lacking.append(f"{Element.from_Z(z).symbol} has no {', '.join(props)}")
    nan_cols = [c for c, v in zip(names, row) if np.isnan(v)]
    head = "; ".join(lacking) or "NaN features"
    return f"{head} -> {len(nan_cols)} NaN features, e.g. {nan_cols[:3]}"


def featurize_compositions(formulas: Iterable[str] | pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Composition features of many formulas, equal to matminer's values to 1e-9.

    Args:
        formulas: formula strings in any pymatgen-parseable style (``Ni1Tm1``, ``Zr3(Cu2Ge)2``,
            ``Hg0.7Cd0.3Te``). A Series keeps its index.

    Returns:
        (features, errors): ``features`` is float64, (N, 149), indexed like the input, columns
        :func:`composition_feature_names`; rows that could not be featurized are all NaN.
        ``errors`` has columns formula, reason, detail, indexed by the input label, one row per
        failed formula: ``unparseable_formula``, ``unknown_element``, or
        ``missing_element_data`` (the row keeps matminer's values, NaN where data is missing).

    Example:
        >>> features, errors = featurize_compositions(["Fe2O3", "Xx2O"])
        >>> errors["reason"].tolist()
        ['unknown_element']
    """
    series = _as_series(formulas)
    names = composition_feature_names()
    values = np.full((len(series), len(names)), np.nan)
    parsed = [parse_composition(f) for f in series.tolist()]
    ok = np.array([p.reason is None for p in parsed], dtype=bool)
    ok_pos = np.flatnonzero(ok)
    n_el = np.array([len(parsed[i].z) for i in ok_pos], dtype=int)
    for k in np.unique(n_el):  # blocks of equal element count: no padding work
        same = ok_pos[n_el == k]
        for start in range(0, len(same), _BLOCK):
            pos = same[start : start + _BLOCK]
            values[pos] = _block_features([parsed[i] for i in pos])
    return _result(series, parsed, values, names)


def featurize_compositions_matminer(
    formulas: Iterable[str] | pd.Series, n_jobs: int | None = 1
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The reference path: matminer's own ``featurize_dataframe`` on pymatgen Compositions.

    Same return contract as :func:`featurize_compositions`, so the two can be compared value by
    value. Parsing and error classification are shared; every feature value comes from matminer.

    Args:
        n_jobs: matminer worker processes; 1 (the default) is the fastest on small machines,
            None keeps matminer's own default (one per CPU).
    """
    from matminer.featurizers.base import MultipleFeaturizer
    from pymatgen.core import Composition

    series = _as_series(formulas)
    names = composition_feature_names()
    parsed = [parse_composition(f) for f in series.tolist()]
    ok_pos = [i for i, p in enumerate(parsed) if p.reason is None]
    values = np.full((len(series), len(names)), np.nan)
    if ok_pos:
        featurizer = MultipleFeaturizer(list(matminer_featurizers()))
        if n_jobs is not None:
            featurizer.set_n_jobs(n_jobs)
        frame = pd.DataFrame({"composition": [Composition(series.iat[i]) for i in ok_pos]})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = featurizer.featurize_dataframe(frame, "composition", pbar=False)
        values[ok_pos] = out[names].astype(float).to_numpy()
    return _result(series, parsed, values, names)
