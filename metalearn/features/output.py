"""What the features stage publishes, and the check that a published output is still intact.

One directory per snapshot and setting, ``WorkDir.feature_table(FEATURE_SET_VERSION, key)`` with
``key = <snapshot content hash[:16]>`` plus ``-nostruct`` when structure features are off::

    features.parquet     material_key, formula, feature columns (float64)
    errors.parquet       material_key, formula, reason, detail (schema.ERROR_COLUMNS)
    record_keys.parquet  record_id, material_key (joins the snapshot's records to features)
    manifest.json        metalearn.schema.Manifest, stage "features", with file digests

Every distinct material is in exactly one of features.parquet and errors.parquet. The readers
(``metalearn.shards``, ``metalearn verify``) import the names and the check from here.
"""

from __future__ import annotations

from pathlib import Path

from metalearn.features.composition import FEATURE_SET_VERSION, composition_feature_names
from metalearn.features.integrity import check_output
from metalearn.features.structure import structure_feature_names
from metalearn.io import read_manifest
from metalearn.layout import WorkDir
from metalearn.schema import FEATURE_ERRORS_FILE, FEATURES_FILE, RECORD_KEYS_FILE


def output_dir(work: WorkDir, snapshot_hash: str, structure_features: bool) -> Path:
    """Where the features of one snapshot (content hash) and setting are published."""
    suffix = "" if structure_features else "-nostruct"
    return work.feature_table(FEATURE_SET_VERSION, f"{snapshot_hash[:16]}{suffix}")


def feature_columns(structure_features: bool) -> list[str]:
    """Feature columns of features.parquet, in order."""
    if not structure_features:
        return composition_feature_names()
    return composition_feature_names() + structure_feature_names()


def dictionary_columns(columns: list[str]) -> list[str]:
    """The feature columns worth Parquet dictionary encoding: values drawn from a per-element table
    (or its pairs), so a few hundred distinct values. Dictionary encoding the others (means,
    norms, unique keys) costs time and saves nothing; this changes file size, never content."""
    per_element = ("minimum", "maximum", "range", "mode")
    few = {"compound possible", "max ionic char", "spacegroup_num", "crystal_system_int",
           "is_centrosymmetric", "n_symmetry_ops"}
    return [c for c in columns if c in few or (c.startswith("MagpieData ") and c.split()[1] in per_element)]


def verify_features(path: Path) -> list[str]:
    """Problems of a published features directory; empty when every file matches its manifest.

    Checks each file's sha256 against the manifest (one sequential read of the
    directory, no Parquet decoding); outputs written before digests were recorded are checked
    by opening every Parquet footer and comparing row counts with the manifest.

    Example:
        >>> verify_features(work.feature_table("v1", "330736300788b88c-nostruct"))
        []
    """
    path = Path(path)
    rows = {}
    try:
        manifest = read_manifest(path)
        rows = {FEATURES_FILE: manifest.n_rows, FEATURE_ERRORS_FILE: manifest.counts.get("n_errors"),
                RECORD_KEYS_FILE: manifest.counts.get("n_records")}
    except (OSError, ValueError, TypeError):
        pass  # check_output reports the manifest itself
    return check_output(path, {k: v for k, v in rows.items() if v is not None})
