"""The featurizer a model carries: feature names, settings and elemental tables stored with the model.

Why carried: building matminer's featurizers to learn 149 names and read the elemental tables costs
seconds of imports on every model load, and a model must featurize exactly as it was trained.
At log time :func:`export_featurizer` writes ``featurizer.json`` (feature set version, the model's
feature names in order, the composition settings) and ``featurizer_tables.npz`` (the elemental
tables the features stage reads from matminer's data sources). At predict time
:class:`CarriedFeaturizer` computes the same composition features from those files with
NumPy only: the project's one parser (``metalearn.chemistry.parse_composition``, pymatgen's
grammar) reads the formulas, nothing imports matminer.

The arithmetic mirrors ``metalearn.features.composition`` (``_block_features``, ``_result``,
``_missing_data_detail``) on the carried tables; ``tests/predict/test_featurizer.py`` checks that
values and error rows (reason and detail) are identical to the features stage's on bundled formulas.

Example:
    >>> fz = CarriedFeaturizer.from_files("featurizer.json")
    >>> values, errors = fz.featurize(["Fe2O3", "Og"])   # (2, 149) float64; [(1, "missing_element_data", "...")]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metalearn import io
from metalearn.chemistry import parse_composition
from metalearn.features import composition
from metalearn.features.composition import FEATURE_SET_VERSION, MISSING_DATA, featurize_compositions
from metalearn.features.composition_stats import compound_possible, ionic_character, property_stats
from metalearn.features.structure import structure_feature_names

FEATURIZER_FILE = "featurizer.json"
TABLES_FILE = "featurizer_tables.npz"
_TABLE_KEYS = ("magpie", "valence", "electronegativity", "oxidation", "symbols")
_BLOCK = 8192  # rows per vectorized block, as in the features stage


def export_featurizer(feature_names: Sequence[str], dst: Path) -> dict[str, str]:
    """Write featurizer.json and featurizer_tables.npz into ``dst`` (training side: matminer is there).

    Args:
        feature_names: the model's features in order (feature_stats.parquet's ``feature`` column).

    Returns:
        {"featurizer": path of the JSON, "featurizer_tables": path of the tables}.
    """
    from pymatgen.core import Element

    t = composition._tables()  # the features stage's own tables, read from matminer's data sources
    names = composition.composition_feature_names()
    rest = [n for n in feature_names if n not in set(names)]
    structure: list[str] = []
    if rest:
        structure = structure_feature_names()
        unknown = sorted(set(rest) - set(structure))
        if unknown:
            raise ValueError(f"feature_stats lists features this metalearn cannot compute: {unknown[:5]}")
    symbols = np.array([""] + [Element.from_Z(z).symbol for z in range(1, t.magpie.shape[0])])
    config = {"version": FEATURE_SET_VERSION, "feature_names": list(feature_names),
              "composition": {"names": names, "magpie_props": t.magpie_props, "stats": t.stats,
                              "p_list": list(t.p_list), "orbitals": list(t.orbitals), "tables": TABLES_FILE},
              "structure_names": structure}
    buffer = _npz_bytes(magpie=t.magpie, valence=t.valence, electronegativity=t.electronegativity,
                        oxidation=t.oxidation, symbols=symbols)
    io.write_bytes_atomic(dst / TABLES_FILE, buffer)
    io.write_json_atomic(dst / FEATURIZER_FILE, config)
    return {"featurizer": str(dst / FEATURIZER_FILE), "featurizer_tables": str(dst / TABLES_FILE)}


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    import io as _io

    buffer = _io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@dataclass(frozen=True)
class CarriedFeaturizer:
    """Composition features from the tables a model carries (no matminer at predict time)."""

    version: str
    feature_names: list[str]  # the model's features, in order
    names: list[str]  # the composition features, in the features stage's order
    structure_names: list[str]
    magpie_props: list[str]
    stats: list[str]
    p_list: tuple[int, ...]
    tables: dict[str, np.ndarray]

    @classmethod
    def from_files(cls, featurizer_json: str | Path, tables: str | Path | None = None) -> CarriedFeaturizer:
        """Read featurizer.json (+ its tables next to it); ValueError for another feature set version."""
        path = Path(featurizer_json)
        config = json.loads(path.read_text())
        if config["version"] != FEATURE_SET_VERSION:
            raise ValueError(f"the model was trained on feature set {config['version']!r}; this metalearn "
                             f"computes {FEATURE_SET_VERSION!r}: use the code the model carries")
        comp = config.get("composition")
        if comp is None:
            raise ValueError(f"{path.name} carries no composition tables (a model logged before they were)")
        with np.load(Path(tables) if tables else path.parent / comp["tables"], allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in _TABLE_KEYS}
        return cls(config["version"], list(config["feature_names"]), list(comp["names"]),
                   list(config.get("structure_names", [])), list(comp["magpie_props"]), list(comp["stats"]),
                   tuple(comp["p_list"]), arrays)

    def featurize(self, formulas: Sequence[str]) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
        """Composition features (n, len(names)) float64 and error rows (position, reason, detail).

        Equal to ``featurize_compositions``: a parse failure gives an all-NaN row with its reason;
        a parsed formula with any NaN feature is a ``missing_element_data`` error (values kept).
        """
        parsed = [parse_composition(f) for f in formulas]
        values = np.full((len(parsed), len(self.names)), np.nan)
        ok_pos = np.array([i for i, p in enumerate(parsed) if p.reason is None], dtype=int)
        n_el = np.array([len(parsed[i].z) for i in ok_pos], dtype=int)
        for k in np.unique(n_el):
            same = ok_pos[n_el == k]
            for start in range(0, len(same), _BLOCK):
                pos = same[start:start + _BLOCK]
                values[pos] = self._block([parsed[i] for i in pos])
        errors = []
        nan_rows = set(np.flatnonzero(np.isnan(values).any(axis=1)).tolist())
        for i, p in enumerate(parsed):
            if p.reason:
                errors.append((i, p.reason, p.detail))
            elif i in nan_rows:
                errors.append((i, MISSING_DATA, self._missing_detail(p, values[i])))
        return values, errors

    def _block(self, parsed: list[Any]) -> np.ndarray:
        """Features of parsed, valid compositions of equal element count: (N, F) float64."""
        t = self.tables
        n = np.array([len(p.z) for p in parsed])
        mask = np.arange(int(n.max()))[None, :] < n[:, None]  # (N, K)
        z = np.zeros(mask.shape, dtype=np.intp)
        w = np.zeros(mask.shape)
        z[mask] = np.fromiter((x for p in parsed for x in p.z), dtype=np.intp, count=int(n.sum()))
        w[mask] = np.fromiter((x for p in parsed for x in p.amounts), dtype=float, count=int(n.sum()))
        magpie = property_stats(t["magpie"][z], w, mask, self.stats)  # (N, P * S)
        frac = w / w.sum(axis=1, keepdims=True)
        norms = [n.astype(float) if p == 0 else (frac**p).sum(axis=1) ** (1.0 / p) for p in self.p_list]
        valence = property_stats(t["valence"][z], w, mask, ["mean"])  # (N, 5): s, p, d, f, total
        with np.errstate(divide="ignore", invalid="ignore"):
            valence_frac = valence[:, :-1] / valence[:, -1:]
        possible = compound_possible(t["oxidation"][z], w, n)
        max_ic, avg_ic = ionic_character(t["electronegativity"][z], w, mask)
        return np.column_stack([magpie, *norms, valence[:, :-1], valence_frac, possible.astype(float),
                                max_ic, avg_ic])

    def _missing_detail(self, p: Any, row: np.ndarray) -> str:
        t = self.tables
        lacking = []
        for z in p.z:
            props = [name for name, v in zip(self.magpie_props, t["magpie"][z]) if np.isnan(v)]
            if len(p.z) > 1 and np.isnan(t["electronegativity"][z]):
                props.append("X (pymatgen)")
            if props:
                lacking.append(f"{t['symbols'][z]} has no {', '.join(props)}")
        nan_cols = [c for c, v in zip(self.names, row) if np.isnan(v)]
        head = "; ".join(lacking) or "NaN features"
        return f"{head} -> {len(nan_cols)} NaN features, e.g. {nan_cols[:3]}"


def stage_featurize(formulas: Sequence[str]) -> tuple[np.ndarray, list[tuple[int, str, str]], list[str]]:
    """The features stage's own path (imports matminer): for models that carry no tables."""
    frame, errors = featurize_compositions(list(formulas))
    rows = [(int(i), str(errors.at[i, "reason"]), str(errors.at[i, "detail"])) for i in errors.index]
    return frame.to_numpy(np.float64), rows, list(frame.columns)


__all__ = ["FEATURIZER_FILE", "TABLES_FILE", "CarriedFeaturizer", "export_featurizer", "stage_featurize"]
