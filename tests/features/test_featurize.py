"""Composition and structure features against matminer itself, on bundled real data.

The fast path must reproduce matminer's ``featurize_dataframe`` to 1e-9 with the same NaN
pattern; error rows (bad formula, unknown element, missing elemental data) must carry a reason.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import pytest

from metalearn.features.composition import (
    FEATURE_SET_VERSION,
    composition_feature_names,
    featurize_compositions,
    featurize_compositions_matminer,
    matminer_featurizers,
)
from metalearn.features.composition_stats import _neutral_distinct, _neutral_product, compound_possible
from metalearn.features.structure import (
    featurize_structures,
    featurize_structures_matminer,
    structure_feature_names,
    structure_featurizers,
)
from metalearn.io import repo_data_dir

PER_DATASET = 100  # x 27 composition datasets: ~2,700 formulas, ~6 s of matminer
EDGE_FORMULAS = [
    "NaN",  # sodium nitride, not a missing value
    "He",
    "HeNe",
    "ArF2",
    "KrF2",
    "XeF4",
    "FrCl",
    "AtH",
    "RnF2",
    "PmCl3",
    "CfO2",
    "Es",
    "Og2",  # missing data
    "Fe",
    "Fe2O3",
    "Fe3O4",
    "Hg0.7Cd0.3Te",
    "Zr3(Cu2Ge)2",
    "Ni1Tm1",
    "CuSO4(H2O)5",
    "Y3N@C80",
    "Fe70Cr18Ni8Mn1Si0.5C0.08Mo2P0.04S0.03N0.1",
    "LiFePO4",
    "C6H12O6",
    "Ca5(PO4)3F",
    "D2O",
]


@pytest.fixture(scope="module", autouse=True)
def _one_process():
    for featurizer in matminer_featurizers() + structure_featurizers():
        featurizer.set_n_jobs(1)


def _bundled_formulas(per_dataset: int, seed: int = 0) -> pd.Series:
    files = sorted((repo_data_dir() / "composition").glob("*/*.csv.gz"))
    assert len(files) >= 20
    picks = []
    for path in files:
        formulas = pd.read_csv(path, keep_default_na=False, usecols=["formula"])["formula"]
        picks.append(formulas.sample(min(per_dataset, len(formulas)), random_state=seed))
    return pd.concat(picks + [pd.Series(EDGE_FORMULAS)], ignore_index=True)


def test_feature_names_are_matminer_labels():
    names = composition_feature_names()
    expected = [label for f in matminer_featurizers() for label in f.feature_labels()]
    assert names == expected and len(set(names)) == len(names) == 149
    assert names[0] == "MagpieData minimum Number" and "avg ionic char" in names
    assert structure_feature_names() == [l for f in structure_featurizers() for l in f.feature_labels()]
    assert "crystal_system" not in structure_feature_names()  # string-valued, dropped
    assert FEATURE_SET_VERSION


def test_fast_path_equals_matminer_on_bundled_formulas():
    formulas = _bundled_formulas(PER_DATASET)
    fast, fast_errors = featurize_compositions(formulas)
    ref, ref_errors = featurize_compositions_matminer(formulas)

    assert list(fast.columns) == list(ref.columns) and fast.index.equals(formulas.index)
    assert (fast.dtypes == np.float64).all()
    a, b = fast.to_numpy(), ref.to_numpy()
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))  # NaN pattern
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9, equal_nan=True)
    pd.testing.assert_frame_equal(fast_errors, ref_errors)
    # the sample exercises the interesting cases, not just binaries
    n_el = fast["0-norm"]
    assert (n_el == 1).any() and (n_el >= 5).any()
    assert fast["compound possible"].isin([0.0, 1.0]).all() and fast["compound possible"].nunique() == 2
    assert (fast_errors["reason"] == "missing_element_data").sum() >= 8
    assert fast.loc[formulas == "NaN", "MagpieData maximum Number"].item() == 11.0  # Na, N


def test_error_rows_have_reasons_and_keep_the_index():
    formulas = pd.Series(["Fe2O3", "Xx2O", "", "Fe2O3)", "(Fe", "Fe-1O", "He", "Fe0"], index=list("abcdefgh"))
    features, errors = featurize_compositions(formulas)
    assert features.index.equals(formulas.index)
    assert list(errors.columns) == ["formula", "reason", "detail"]
    assert errors["reason"].to_dict() == {
        "b": "unknown_element",
        "c": "unparseable_formula",
        "d": "unparseable_formula",
        "e": "unparseable_formula",
        "f": "unparseable_formula",
        "g": "missing_element_data",
        "h": "unparseable_formula",
    }
    assert "Xx" in errors.at["b", "detail"] and "He has no" in errors.at["g", "detail"]
    assert errors["detail"].str.len().gt(0).all()
    assert not features.loc["a"].isna().any()
    assert features.loc[list("bcdefh")].isna().all().all()
    # missing data keeps matminer's values where they exist (only He's properties are NaN)
    assert features.loc["g"].isna().sum() == 12 and features.at["g", "MagpieData mean Number"] == 2.0


def test_parse_cache_and_duplicates_give_identical_rows():
    features, errors = featurize_compositions(["Fe2O3", "Fe2O3", "O3Fe2"] * 3)
    assert errors.empty
    assert np.allclose(features.iloc[0], features.iloc[1:], atol=0)


def test_compound_possible_matches_matminer_loop_semantics():
    """The vectorized enumeration and the distinct-sums DP agree with IonProperty(fast=True)'s loop."""
    rng = np.random.default_rng(0)
    states_pool = [(-2,), (-1, 1, 3, 5, 7), (2, 3), (1,), (-3, 3, 5), (-4, -2, 0, 2, 4), (4, 6), ()]
    for k in range(2, 6):
        ox = np.full((60, k, 5), np.nan)
        amounts = rng.choice([0.5, 1.0, 2.0, 3.0, 0.25, 1.5], size=(60, k))
        expected = []
        for r in range(60):
            states = [states_pool[i] for i in rng.integers(0, len(states_pool), size=k)]
            for j, s in enumerate(states):
                ox[r, j, : len(s)] = sorted(s)
            expected.append(any(np.isclose(np.dot(c, amounts[r]), 0) for c in itertools.product(*states)))
        counts = (~np.isnan(ox)).sum(axis=2)
        has = counts.min(axis=1) > 0
        got = compound_possible(ox, amounts, np.full(60, k))
        assert got.tolist() == expected
        assert (
            _neutral_product(ox[has], amounts[has], counts[has]).tolist() == np.array(expected)[has].tolist()
        )
        assert [_neutral_distinct(ox[r], amounts[r]) for r in np.flatnonzero(has)] == np.array(expected)[
            has
        ].tolist()


def _bundled_structures(per_file: int) -> list:
    from pymatgen.core import Structure

    structures = []
    for path in sorted((repo_data_dir() / "structures").glob("*.csv.gz")):
        cifs = pd.read_csv(path, keep_default_na=False, usecols=["cif"])["cif"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structures += [Structure.from_str(c, fmt="cif") for c in cifs.sample(per_file, random_state=1)]
    return structures


def test_structure_features_equal_matminer_on_bundled_cifs():
    structures = _bundled_structures(per_file=6)
    texts = pd.Series([s.to_json() for s in structures] + [None, "{not json", '{"lattice": 1}'])
    features, errors = featurize_structures(texts)
    ref = featurize_structures_matminer(structures)

    n = len(structures)
    assert list(features.columns) == list(ref.columns) == structure_feature_names()
    np.testing.assert_allclose(features.iloc[:n].to_numpy(), ref.to_numpy(), rtol=0, atol=1e-9)
    assert not features.iloc[:n].isna().any().any()
    assert features.iloc[n].isna().all() and n not in errors.index  # no structure: NaN, not an error
    assert errors["reason"].tolist() == ["bad_structure", "bad_structure"]
    assert errors.index.tolist() == [n + 1, n + 2]
