"""Formula parsing (the one parser of the project) and the chemistry groups that cut properties into tasks.

**Parsing.** :func:`parse_composition` turns a formula string into atomic numbers and amounts, exactly
``pymatgen.core.Composition(formula).element_composition``, or into a reason why it cannot:

* ``unparseable_formula``: not a string, empty or blank, text pymatgen's formula grammar rejects
  (``Na(Cl``, ``abc``, ``123``), a negative amount, or a **zero amount** (``NaCl0``, ``Na0Cl``,
  ``Na(Cl0)2``, ``(NaCl)0``, or any amount below pymatgen's ``amount_tolerance`` of 1e-8). pymatgen
  silently drops such an element (``Composition("NaCl0")`` is Na); a formula names the elements a
  material contains, so a zero says the input is wrong, not that the element is absent.
* ``unknown_element``: a symbol that is not one of the 118 elements (``Xq2``, ``Xx``, ``Uuo``). The
  isotopes ``D`` and ``T`` are hydrogen, as in pymatgen.

:func:`parse_formula` adds pymatgen's reduced formula and the element symbols (raising ValueError
for a formula that does not parse); featurization, validation, task definition and prediction all
go through these two functions.

Why a fast path: featurizing the bundled ~540k formulas parses each one. The common case (element
symbols, positive amounts) takes pymatgen's own grammar, ``Composition._parse_formula``, and
applies ``Composition``'s amount tolerance, which yields exactly ``element_composition`` at twice
the speed of building a ``Composition``; isotopes and negative amounts go through ``Composition``.

**Chemistry groups.** Rule (first match wins, from the most electronegative anion class down), on
the set of elements of the reduced composition:

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

Example:
    >>> parse_composition("Fe2O3")
    Parsed(z=(26, 8), amounts=(2.0, 3.0), reason=None, detail='')
    >>> parse_composition("NaCl0").reason, parse_composition("Xq2").reason
    ('unparseable_formula', 'unknown_element')
    >>> parse_formula("Zr3(Cu2Ge)2")
    ('Zr3(Cu2Ge)2', ('Cu', 'Ge', 'Zr'))
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import NamedTuple

# Reasons (machine codes, shared with metalearn.schema.QUARANTINE_REASONS and the feature errors).
UNPARSEABLE = "unparseable_formula"
UNKNOWN_ELEMENT = "unknown_element"

MAX_Z = 118
_ISOTOPES = frozenset({"D", "T"})  # pymatgen reads these as hydrogen

GROUPS = ("halide", "oxide", "chalcogenide", "pnictide", "carbide_boride_hydride", "intermetallic", "other")
_ANION_CLASSES = (
    ("halide", {"F", "Cl", "Br", "I"}),
    ("oxide", {"O"}),
    ("chalcogenide", {"S", "Se", "Te"}),
    ("pnictide", {"N", "P", "As", "Sb"}),
    ("carbide_boride_hydride", {"C", "B", "H"}),
)


class Parsed(NamedTuple):
    """One formula parsed: atomic numbers and amounts in ``element_composition`` order, or a reason."""

    z: tuple[int, ...]
    amounts: tuple[float, ...]
    reason: str | None = None  # None, UNPARSEABLE or UNKNOWN_ELEMENT
    detail: str = ""


@lru_cache(maxsize=1)
def _parser() -> tuple:
    """(pymatgen's formula grammar, symbol -> Z, Composition.amount_tolerance), imported once."""
    from pymatgen.core import Composition, Element

    return (
        Composition._parse_formula,
        {e.symbol: e.Z for e in Element if e.Z <= MAX_Z},
        Composition.amount_tolerance,
    )


@lru_cache(maxsize=1 << 16)  # ~20 MB; bounded so a long-lived worker stays small
def parse_composition(formula: str) -> Parsed:
    """Atomic numbers and amounts of ``formula`` (exactly pymatgen's ``element_composition``), or a reason.

    Args:
        formula: any pymatgen-parseable formula (``Ni1Tm1``, ``Zr3(Cu2Ge)2``, ``Hg0.7Cd0.3Te``).
    Returns:
        Parsed(z, amounts, reason=None, detail="") for a valid formula; otherwise empty ``z`` and
        ``amounts``, ``reason`` UNPARSEABLE or UNKNOWN_ELEMENT and a ``detail`` saying why.
        Cached per formula string.
    """
    if not isinstance(formula, str):
        return Parsed((), (), UNPARSEABLE, f"formula is not a string: {formula!r}")
    if not formula.strip():
        return Parsed((), (), UNPARSEABLE, "empty formula")
    parse, to_z, tol = _parser()
    try:
        amounts = parse(formula)
    except Exception as err:  # noqa: BLE001 -- any parse failure is a row-level reason, not a crash
        return Parsed((), (), UNPARSEABLE, f"{type(err).__name__}: {err}")
    z, kept = [], []
    for sym, amt in amounts.items():
        number = to_z.get(sym)
        if number is None or amt < tol:  # unknown symbol, isotope, zero or negative amount
            return _unusual(formula, amounts, to_z, tol)
        z.append(number)
        kept.append(float(amt))
    if not z:
        return Parsed((), (), UNPARSEABLE, "formula has no atoms")
    return Parsed(tuple(z), tuple(kept))


def _unusual(formula: str, amounts: dict[str, float], to_z: dict[str, int], tol: float) -> Parsed:
    unknown = [s for s in amounts if s not in to_z and s not in _ISOTOPES]
    if unknown:
        return Parsed((), (), UNKNOWN_ELEMENT, f"not a chemical element: {', '.join(unknown)}")
    zero = [s for s, a in amounts.items() if abs(a) < tol]
    if zero:
        return Parsed((), (), UNPARSEABLE, f"zero amount of {', '.join(zero)}: a formula lists only the "
                                           "elements present (pymatgen would silently drop them)")
    return _parse_with_composition(formula)


def _parse_with_composition(formula: str) -> Parsed:
    """Isotopes (D, T -> H) and negative amounts: pymatgen's ``Composition`` decides."""
    from pymatgen.core import Composition, Element

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            comp = Composition(formula).element_composition
    except Exception as err:  # noqa: BLE001 -- as above
        return Parsed((), (), UNPARSEABLE, f"{type(err).__name__}: {err}")
    unknown = [getattr(el, "symbol", str(el)) for el in comp if not isinstance(el, Element)]
    if unknown:
        return Parsed((), (), UNKNOWN_ELEMENT, f"not a chemical element: {', '.join(unknown)}")
    if len(comp) == 0:
        return Parsed((), (), UNPARSEABLE, "formula has no atoms")
    items = list(comp.items())
    return Parsed(tuple(el.Z for el, _ in items), tuple(float(a) for _, a in items))


@lru_cache(maxsize=500_000)
def parse_formula(formula: str) -> tuple[str, tuple[str, ...]]:
    """(pymatgen's reduced formula, sorted element symbols) of a formula; ValueError if it does not parse."""
    parsed = parse_composition(formula)
    if parsed.reason is not None:
        raise ValueError(f"{parsed.reason}: {formula!r}: {parsed.detail}")
    from pymatgen.core import Composition

    elements = _elements()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reduced = Composition({elements[z]: a for z, a in zip(parsed.z, parsed.amounts)}).reduced_formula
    return reduced, tuple(sorted(elements[z].symbol for z in parsed.z))


def reduced_formula(formula: str) -> str:
    """pymatgen's reduced formula (``Fe4O6`` -> ``Fe2O3``): the material key of composition-only data."""
    return parse_formula(formula)[0]


def composition_key(parsed: Parsed) -> tuple[tuple[int, float], ...]:
    """A hashable key of the reduced composition: equal exactly when pymatgen's reduced formulas are equal.

    Whole-number amounts (within pymatgen's tolerance) are divided by their greatest common divisor,
    as ``reduced_formula`` does; fractional ones are kept, rounded to 8 decimals. About 20x cheaper
    than ``parse_formula``, for grouping many records by material.
    """
    tol = _parser()[2]
    if all(abs(a - round(a)) < tol for a in parsed.amounts):
        counts = [round(a) for a in parsed.amounts]
        divisor = math.gcd(*counts) or 1
        return tuple(sorted((z, float(c // divisor)) for z, c in zip(parsed.z, counts)))
    return tuple(sorted((z, round(a, 8)) for z, a in zip(parsed.z, parsed.amounts)))


@lru_cache(maxsize=1)
def _elements() -> dict:
    from pymatgen.core import Element

    return {e.Z: e for e in Element if e.Z <= MAX_Z}


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
