"""Every bundled dataset loads with its metadata; caveats from PROVENANCE.md hold."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metalearn import schema as S
from metalearn.ingest import bundled


def test_every_index_dataset_has_family_and_loads():
    index = bundled.read_index()
    assert len(index) == 26
    for entry in index.itertuples(index=False):
        records = bundled.load_composition_dataset(entry.dataset_id, max_rows=50)
        assert len(records) == 50, entry.dataset_id
        assert set(records.columns) == {f.name for f in S.RECORDS_SCHEMA}
        assert records[S.DATASET_ID].eq(entry.dataset_id).all()
        assert np.isfinite(records[S.TARGET]).mean() > 0.9


def test_properties_table_matches_schema_and_vocabulary():
    props = bundled.properties_table()
    assert list(props.columns) == [f.name for f in S.PROPERTIES_SCHEMA]
    assert props[S.DATASET_ID].is_unique
    assert set(props[S.TASK_TYPE]) <= set(S.TASK_TYPES)
    assert set(props[S.TRANSFORM]) <= set(S.TRANSFORMS)
    classification = set(props.loc[props[S.TASK_TYPE] == "classification", S.DATASET_ID])
    assert classification == {"matbench_expt_is_metal", "matbench_glass", "matbench_mp_is_metal"}
    # several sources of one physical property share a family (split leakage depends on this)
    fam = dict(zip(props[S.DATASET_ID], props[S.FAMILY]))
    assert fam["mp_bulk_modulus"] == fam["aflow__ael_bulk_modulus_vrh"] == fam["matbench_elasticity_log10_K_VRH"]
    assert fam["matbench_dielectric"] == fam["mp_dielectric:n"] == "refractive_index"


def test_sodium_nitride_is_not_read_as_missing():
    records = bundled.load_composition_dataset("mp_e_hull")
    assert (records[S.FORMULA] == "NaN").sum() == 1
    assert records[S.FORMULA].notna().all()


def test_subsample_is_seeded_and_bounded():
    a = bundled.load_composition_dataset("aflow__Egap", max_rows=100, seed=3)
    b = bundled.load_composition_dataset("aflow__Egap", max_rows=100, seed=3)
    c = bundled.load_composition_dataset("aflow__Egap", max_rows=100, seed=4)
    assert a.equals(b) and not a.equals(c)


def test_structure_datasets_parse_cifs_to_pymatgen_json():
    from pymatgen.core import Structure

    records = bundled.load_structure_datasets(max_rows=20)
    assert set(records[S.DATASET_ID]) == {p.dataset_id for p in bundled.STRUCTURE_PROPERTIES}
    sample = records[S.STRUCTURE_JSON].iloc[0]
    structure = Structure.from_dict(json.loads(sample))
    assert structure.composition.reduced_formula


def test_unparseable_cif_is_kept_for_quarantine():
    text = bundled.cif_to_structure_json("data_broken\n_cell_length_a 1\n")
    assert "unparsed_cif" in json.loads(text)


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown bundled dataset"):
        bundled.load_composition_dataset("nope")
