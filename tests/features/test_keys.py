"""The fast material keys and row hashes against their reference definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from metalearn.features.assemble import row_hashes
from metalearn.features.keys import _keys, key_bytes, material_key, material_keys, positions

TRICKY = ["Fe2O3", "NaN", 'Fe"O', "Fe\\O", "Fe\nO\t\x00", "Fe₂O₃", "é", "𝔽e", "", " Fe ", "\u2028", "[1, 2]"]


def test_fast_keys_equal_json_dumps_keys():
    structures = [None, '{"lattice": {"a": 1}}', "ünïcode \" \\ \n", ""]
    pairs = [(f, s) for f in TRICKY for s in structures]
    got = _keys([f for f, _ in pairs], [s for _, s in pairs])
    assert got == [material_key(f, s) for f, s in pairs]


def test_material_keys_per_record_and_structure_switch():
    records = pd.DataFrame({"formula": ["Fe2O3", "NaCl", "Fe2O3", "Fe2O3", "NaCl"],
                            "structure_json": [None, None, '{"s": 1}', '{"s": 1}', '{"s": 2}']})
    with_structure = material_keys(records, structure_features=True)
    assert with_structure.tolist() == [material_key(f, s) for f, s in records.itertuples(index=False)]
    assert material_keys(records, structure_features=False).tolist() == [material_key(f, None) for f in records.formula]
    assert with_structure.nunique() == 4


def test_key_positions_match_a_python_lookup():
    rng = np.random.default_rng(0)
    universe = sorted({material_key(str(i), None) for i in range(500)})
    probe = [universe[i] for i in rng.integers(0, 500, 200)] + [material_key("absent", None)]
    pos = positions(key_bytes(pa.array(universe)), key_bytes(pa.array(probe).slice(0)))
    lookup = {k: i for i, k in enumerate(universe)}
    assert pos.tolist() == [lookup.get(k, -1) for k in probe]
    assert positions(key_bytes(pa.array(universe)), key_bytes(pa.array(probe[5:9]))).tolist() == \
        [lookup[k] for k in probe[5:9]]


def test_row_hashes_equal_pandas_hash_pandas_object():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(50, 4))
    values[3, 1] = np.nan
    table = pa.table({"material_key": [f"k{i}" for i in range(50)], "formula": ["Fe2O3"] * 49 + ["é"],
                      **{f"f{j}": pa.array(values[:, j], from_pandas=True) for j in range(4)},
                      "g": pa.nulls(50, pa.float64())})
    assert table.column("f1").null_count == 1
    expected = pd.util.hash_pandas_object(table.to_pandas(), index=False).to_numpy()
    np.testing.assert_array_equal(row_hashes(table), expected)
