"""The one formula parser (metalearn.chemistry): pymatgen's element amounts, and the rules it adds."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from metalearn import io
from metalearn.chemistry import (
    UNKNOWN_ELEMENT,
    UNPARSEABLE,
    composition_key,
    parse_composition,
    parse_formula,
)
from metalearn.ingest import bundled

TRICKY = ["Fe2O3", "Zr3(Cu2Ge)2", "Hg0.7Cd0.3Te", "Ca(OH)2", "Li3Fe2(PO4)3", "K4[Fe(CN)6]", "Y3N@C80",
          "NaN", "D2O", "T2HO", "Na Cl", " NaCl", "Xe2F", "Og2", "Fe2.000000001O3", "H", "O2", "LiFePO4",
          "Li4Fe4P4O16", "Mn0.5Co0.25Ni0.25O2", "C60", "(NH4)2SO4"]


@pytest.fixture(scope="module")
def real_formulas() -> list[str]:
    """Distinct formulas of a seeded sample of every bundled composition dataset."""
    formulas: set[str] = set()
    for entry in bundled.read_index().itertuples(index=False):
        table = pd.read_csv(io.repo_data_dir() / entry.path, keep_default_na=False, dtype=str)
        formulas |= set(table["formula"].sample(min(len(table), 150), random_state=0))
    return sorted(formulas)


def _pymatgen(formula: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    from pymatgen.core import Composition

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = list(Composition(formula).element_composition.items())
    return tuple(el.Z for el, _ in items), tuple(float(a) for _, a in items)


def test_amounts_are_exactly_pymatgens(real_formulas):
    for formula in real_formulas + TRICKY:
        parsed = parse_composition(formula)
        assert parsed.reason is None, (formula, parsed)
        assert (parsed.z, parsed.amounts) == _pymatgen(formula), formula  # exact, not approximate


@pytest.mark.parametrize("formula", ["NaCl0", "Na0Cl", "NaCl0.0", "NaCl00", "Na(Cl0)2", "(NaCl)0", "O0",
                                     "NaCl1e-9"])
def test_a_zero_amount_is_not_a_valid_formula(formula):
    from pymatgen.core import Composition

    assert "Cl" not in str(Composition("NaCl0"))  # what pymatgen alone would do: silently Na
    parsed = parse_composition(formula)
    assert parsed.reason == UNPARSEABLE and "zero amount" in parsed.detail, parsed
    with pytest.raises(ValueError, match="zero amount"):
        parse_formula(formula)


@pytest.mark.parametrize("formula,symbol", [("Xq2", "Xq"), ("Xx", "Xx"), ("Uuo", "Uuo"), ("FeXq2O", "Xq")])
def test_unknown_elements(formula, symbol):
    parsed = parse_composition(formula)
    assert parsed.reason == UNKNOWN_ELEMENT and symbol in parsed.detail and parsed.z == ()


@pytest.mark.parametrize("formula", ["", "   ", "abc", "123", "Na(Cl", "Fe2O3)", "NaCl-1", "h2o", "Fe2+", None, 3.5])
def test_empty_or_garbage_is_unparseable(formula):
    parsed = parse_composition(formula)
    assert parsed.reason == UNPARSEABLE and parsed.detail and parsed.z == ()


def test_reduced_formula_and_elements():
    assert parse_formula("Zr3(Cu2Ge)2") == parse_formula("Zr3Cu4Ge2")
    assert parse_formula("Fe4O6") == ("Fe2O3", ("Fe", "O"))
    assert parse_formula("D2O") == ("H2O", ("H", "O"))
    assert parse_formula("T2HO")[1] == ("H", "O")  # isotopes are hydrogen, listed once
    with pytest.raises(ValueError, match="unknown_element"):
        parse_formula("Xq2")


def test_composition_key_groups_exactly_like_reduced_formula(real_formulas):
    formulas = real_formulas + TRICKY + ["Fe0.5O0.5", "FeO", "Fe2O2", "H2", "O"]
    by_reduced = pd.Series({f: parse_formula(f)[0] for f in formulas})
    by_key = pd.Series({f: str(composition_key(parse_composition(f))) for f in formulas})
    a = by_reduced.groupby(by_reduced).ngroup()
    b = by_key.groupby(by_key).ngroup()
    pairs = pd.DataFrame({"a": a, "b": b})
    assert pairs.groupby("a")["b"].nunique().max() == 1 and pairs.groupby("b")["a"].nunique().max() == 1
    assert composition_key(parse_composition("Fe4O6")) == composition_key(parse_composition("Fe2O3"))
    assert composition_key(parse_composition("Fe0.5O0.5")) != composition_key(parse_composition("FeO"))


def test_parser_is_cached_and_returns_plain_tuples():
    first = parse_composition("Ba2YCu3O7")
    assert parse_composition("Ba2YCu3O7") is first
    assert isinstance(first.z, tuple) and all(isinstance(a, float) for a in first.amounts)
    assert np.isclose(sum(first.amounts), 13.0)
