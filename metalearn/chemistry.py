"""Chemistry groups of materials: the documented rule that cuts a property into few-shot tasks.

Rule (first match wins, from the most electronegative anion class down), on the set of elements
of the reduced composition:

1. ``halide``: contains F, Cl, Br or I
2. ``oxide``: contains O
3. ``chalcogenide``: contains S, Se or Te
4. ``pnictide``: contains N, P, As or Sb
5. ``carbide_boride_hydride``: contains C, B or H
6. ``intermetallic``: every element is a metal (pymatgen ``Element.is_metal``)
7. ``other``: the rest (e.g. Si-Ge compounds, noble-gas or metalloid-only systems)

Why by anion class: it is how chemists partition inorganic compounds, it keeps near-duplicate
compounds (same anion chemistry) in one group, and it makes "unseen chemistry" a meaningful
held-out setting. A formula's group depends only on the formula, so the same formula+property can
never be in two groups.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

GROUPS = ("halide", "oxide", "chalcogenide", "pnictide", "carbide_boride_hydride", "intermetallic", "other")
_ANION_CLASSES = (
    ("halide", {"F", "Cl", "Br", "I"}),
    ("oxide", {"O"}),
    ("chalcogenide", {"S", "Se", "Te"}),
    ("pnictide", {"N", "P", "As", "Sb"}),
    ("carbide_boride_hydride", {"C", "B", "H"}),
)


@lru_cache(maxsize=500_000)
def parse_formula(formula: str) -> tuple[str, tuple[str, ...]]:
    """(reduced formula, sorted element symbols) of a formula string; raises ValueError if unparseable."""
    from pymatgen.core import Composition

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp = Composition(formula)
    return comp.reduced_formula, tuple(sorted(el.symbol for el in comp.elements))


@lru_cache(maxsize=4096)
def _is_metal(symbol: str) -> bool:
    from pymatgen.core import Element

    return bool(Element(symbol).is_metal)


def chemistry_group(elements: tuple[str, ...]) -> str:
    """The group of a material from its element symbols (see the module docstring for the rule)."""
    present = set(elements)
    for group, anions in _ANION_CLASSES:
        if present & anions:
            return group
    if present and all(_is_metal(el) for el in present):
        return "intermetallic"
    return "other"
