"""Material keys: the content hash that names a material in the feature cache.

Why its own module: the key is the cache's contract (change it and every cached feature is
orphaned), and computing it is the per-record part of the features stage. A snapshot has ~2.6
records per distinct material; each distinct (formula, structure) pair is found with Arrow's
dictionary encoding and hashed once, building the same JSON text as ``json.dumps`` directly
(``tests/features`` checks the two against each other).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from metalearn.features.composition import FEATURE_SET_VERSION
from metalearn.schema import FORMULA, MATERIAL_KEY, STRUCTURE_JSON

_ESCAPE = json.encoder.encode_basestring_ascii  # the string encoder json.dumps uses (ensure_ascii)


def material_key(formula: str, structure_json: str | None) -> str:
    """Content hash of one material under the current feature set (the feature-cache key).

    sha256 of the JSON list ``[FEATURE_SET_VERSION, formula, structure_json]`` (what
    ``metalearn.io.hash_json`` gives for it), first 32 hex digits.
    """
    text = json.dumps([FEATURE_SET_VERSION, formula, structure_json])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _keys(formulas: list[str], structures: list[str | None]) -> list[str]:
    """:func:`material_key` of each pair, building the same JSON text without json.dumps' overhead."""
    head, sha = f"[{_ESCAPE(FEATURE_SET_VERSION)}, ", hashlib.sha256
    return [
        sha(f"{head}{_ESCAPE(f)}, {'null' if s is None else _ESCAPE(s)}]".encode()).hexdigest()[:32]
        for f, s in zip(formulas, structures)
    ]


def distinct_materials(formula: pa.Array, structure: pa.Array | None) -> tuple[np.ndarray, pa.Table]:
    """(material code per record, distinct materials): each (formula, structure) pair hashed once."""
    if formula.null_count:
        raise ValueError(f"{formula.null_count} records have no formula")
    f = pc.dictionary_encode(formula)
    f_codes = f.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    if structure is None or structure.null_count == len(structure):
        codes, forms, structs = f_codes, f.dictionary, pa.nulls(len(f.dictionary), pa.string())
    else:
        s = pc.dictionary_encode(structure)
        s_codes = s.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        base = len(s.dictionary) + 1
        codes, pairs = pd.factorize(f_codes * base + (s_codes + 1))
        s_of = pairs % base - 1
        forms = f.dictionary.take(pa.array(pairs // base))
        structs = s.dictionary.take(pa.array(np.where(s_of < 0, 0, s_of), mask=s_of < 0))
    keys = pa.array(_keys(forms.to_pylist(), structs.to_pylist()), pa.string())
    return codes, pa.table({MATERIAL_KEY: keys, FORMULA: forms.cast(pa.string()), STRUCTURE_JSON: structs})


def material_keys(records: pd.DataFrame, structure_features: bool) -> pd.Series:
    """``material_key`` of every record (aligned to ``records``), hashing each distinct
    (formula, structure) pair once; structures count only if ``structure_features``."""
    structure = pa.array(records[STRUCTURE_JSON], pa.string()) if structure_features else None
    codes, materials = distinct_materials(pa.array(records[FORMULA], pa.string()), structure)
    keys = materials.column(MATERIAL_KEY).to_numpy(zero_copy_only=False)[codes]
    return pd.Series(keys, index=records.index, name=MATERIAL_KEY)


def key_bytes(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Material keys as a numpy ``S32`` array (a view of Arrow's buffer): sortable and searchable
    in C (``np.searchsorted``), in the same order as Arrow's and Python's string sort."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if len(keys) == 0:
        return np.empty(0, dtype="S32")
    fixed = keys.cast(pa.binary(32))  # raises if a key is not 32 bytes long
    return np.frombuffer(fixed.buffers()[1], dtype="S32", count=fixed.offset + len(fixed))[fixed.offset:]


def positions(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index of each of ``keys`` in ``sorted_keys`` (both from :func:`key_bytes`), -1 where absent."""
    pos = np.searchsorted(sorted_keys, keys)
    found = pos < len(sorted_keys)
    found[found] = sorted_keys[pos[found]] == keys[found]
    return np.where(found, pos, -1)
