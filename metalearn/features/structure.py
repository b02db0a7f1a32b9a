"""Structure features: matminer featurizers called directly, one parsed Structure per material.

No fast path here: structures are few (thousands, not hundreds of thousands) and the cost is in
the Voronoi tessellation and the symmetry search, which matminer delegates to pymatgen/spglib.
What this module adds is parsing each ``structure_json`` once, feeding that one ``Structure`` to
every featurizer, and turning any failure into an error row instead of an exception.

Featurizers (labels exactly matminer's ``feature_labels()``):

* ``DensityFeatures()``: density, vpa, packing fraction
* ``GlobalSymmetryFeatures`` without the string-valued "crystal_system" (its integer twin
  "crystal_system_int" is kept): spacegroup_num, crystal_system_int, is_centrosymmetric,
  n_symmetry_ops
* ``SiteStatsFingerprint(CoordinationNumber(MinimumDistanceNN()))``: statistics (mean, std_dev,
  minimum, maximum) of the coordination number over sites. Why not the Ward 2017 preset: its
  Voronoi tessellation costs ~0.1 s per structure (15-25 min for the bundled structures on one
  core), ~12x the minimum-distance neighbour finder, for features the composition-based learners
  do not use yet.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd

from metalearn.schema import DETAIL, REASON, STRUCTURE_JSON

BAD_STRUCTURE = "bad_structure"
STRUCTURE_FAILED = "structure_featurize_failed"
_SYMMETRY_FEATURES = ["spacegroup_num", "crystal_system_int", "is_centrosymmetric", "n_symmetry_ops"]


@functools.lru_cache(maxsize=1)
def structure_featurizers() -> tuple:
    """The matminer featurizers that define the structure feature set (built once per process)."""
    from matminer.featurizers.site import CoordinationNumber
    from matminer.featurizers.structure import DensityFeatures, GlobalSymmetryFeatures, SiteStatsFingerprint
    from pymatgen.analysis.local_env import MinimumDistanceNN

    return (
        DensityFeatures(),
        GlobalSymmetryFeatures(desired_features=_SYMMETRY_FEATURES),
        SiteStatsFingerprint(CoordinationNumber(MinimumDistanceNN()),
                             stats=("mean", "std_dev", "minimum", "maximum")),
    )


def structure_feature_names() -> list[str]:
    """Column names of the structure features, exactly ``feature_labels()`` of each featurizer."""
    return [label for f in structure_featurizers() for label in f.feature_labels()]


def parse_structure(structure_json: str):
    """pymatgen ``Structure`` from ``Structure.as_dict()`` JSON text (the snapshot format)."""
    from pymatgen.core import Structure

    return Structure.from_dict(json.loads(structure_json))


def _one(structure_json: str) -> tuple[list[float] | None, str | None, str]:
    try:
        structure = parse_structure(structure_json)
    except Exception as err:  # noqa: BLE001 -- malformed JSON, missing keys, unknown species: an error row
        return None, BAD_STRUCTURE, f"{type(err).__name__}: {err}"
    values: list[float] = []
    for featurizer in structure_featurizers():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Voronoi / spglib chatter on every cell
                values.extend(float(v) for v in featurizer.featurize(structure))
        except Exception as err:  # noqa: BLE001 -- a featurizer failing on one cell is an error row
            return None, STRUCTURE_FAILED, f"{type(featurizer).__name__}: {type(err).__name__}: {err}"
    if not np.all(np.isfinite(values)):
        return None, STRUCTURE_FAILED, "non-finite structure feature"
    return values, None, ""


def featurize_structures(
    structure_jsons: Iterable[str | None] | pd.Series,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Structure features for rows that have a structure; rows without one stay NaN (no error).

    Args:
        structure_jsons: pymatgen ``Structure.as_dict()`` JSON text per row, or None.

    Returns:
        (features, errors): ``features`` float64 (N, 12) indexed like the input, columns
        :func:`structure_feature_names`; ``errors`` (structure_json, reason, detail) per failed
        row with reason ``bad_structure`` (unparseable) or ``structure_featurize_failed``.

    Example:
        >>> from pymatgen.core import Lattice, Structure
        >>> nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]])
        >>> features, errors = featurize_structures([nacl.to_json(), None])
        >>> int(features.loc[0, "spacegroup_num"]), len(errors)
        (225, 0)
    """
    series = structure_jsons if isinstance(structure_jsons, pd.Series) else pd.Series(list(structure_jsons))
    names = structure_feature_names()
    values = np.full((len(series), len(names)), np.nan)
    error_pos, error_rows = [], []
    for i, text in enumerate(series.tolist()):
        if text is None or (isinstance(text, float) and np.isnan(text)):
            continue
        row, reason, detail = _one(text)
        if row is None:
            error_pos.append(i)
            error_rows.append((text, reason, detail))
        else:
            values[i] = row
    errors = pd.DataFrame(error_rows, columns=[STRUCTURE_JSON, REASON, DETAIL])
    errors.index = series.index[error_pos]
    return pd.DataFrame(values, index=series.index, columns=names), errors


def featurize_structures_matminer(structures: list) -> pd.DataFrame:
    """Reference path: matminer's ``featurize_dataframe`` (n_jobs=1) on pymatgen Structures."""
    from matminer.featurizers.base import MultipleFeaturizer

    featurizer = MultipleFeaturizer(list(structure_featurizers()))
    featurizer.set_n_jobs(1)
    frame = pd.DataFrame({"structure": structures})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = featurizer.featurize_dataframe(frame, "structure", pbar=False)
    return out[structure_feature_names()].astype(float)
