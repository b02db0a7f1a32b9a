"""Validation data edges (#11): conflicting duplicates, targets quarantined with their original text.

The bundled source reads a real (tiny) data directory here, so the CSV -> records -> validation ->
snapshot path is the production one: nothing is mocked.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from metalearn import io
from metalearn import schema as S
from metalearn.ingest import bundled
from metalearn.ingest.snapshot import read_table, write_snapshot
from metalearn.ingest.validate import REL_TOL, validate_records

TOY_ROWS = [  # formula, target text
    ("Ag2BiO3", "0.0"), ("Ag2BiO3", "99.0"),      # the same material twice, contradicting itself
    ("Ag4Bi2O6", "99.0"),                          # ... and a third copy under an unreduced formula
    ("GaN", "3.2"), ("GaN", "3.2"),                # agreeing copies: kept (merged downstream)
    ("MgO", "7.8"), ("MgO", "7.8000001"),          # within the tolerance: agreement
    ("NaCl", "abc"), ("KBr", ""), ("KI", "1e400"), ("LiF", "nan"),
    ("NaCl0", "1.0"), ("Xq2", "1.0"), ("", "1.0"), ("Si", "1.1"),
]


@pytest.fixture
def toy_data(tmp_path):
    """A data directory in the bundled layout holding one composition dataset (as aflow__Egap)."""
    base = tmp_path / "data"
    (base / "composition").mkdir(parents=True)
    entry = bundled.read_index().set_index("dataset_id").loc[["aflow__Egap"]].reset_index()
    entry["path"] = "composition/toy.csv"
    entry.to_csv(base / "composition" / "INDEX.csv", index=False)
    pd.DataFrame(TOY_ROWS, columns=["formula", "target"]).assign(split="train").to_csv(
        base / "composition" / "toy.csv", index=False)
    return base


def _quarantine(result) -> pd.DataFrame:
    return read_table(result.path, "quarantine").set_index(S.RECORD_ID)


def test_conflicting_duplicates_are_quarantined_with_every_value(work, toy_data):
    result = bundled.ingest_bundled(work, max_rows_per_dataset=None, datasets=["aflow__Egap"], data_dir=toy_data)
    quarantine = _quarantine(result)
    conflict = quarantine[quarantine[S.REASON] == "conflicting_duplicate"]
    assert sorted(conflict.index) == ["aflow__Egap:0", "aflow__Egap:1", "aflow__Egap:2"]
    for detail in conflict[S.DETAIL]:
        assert "0.0" in detail and "99.0" in detail and "Ag2BiO3" in detail and "3 copies" in detail
    raws = [json.loads(r) for r in conflict[S.RAW]]
    assert sorted((r[S.FORMULA], r[S.TARGET]) for r in raws) == [("Ag2BiO3", "0.0"), ("Ag2BiO3", "99.0"),
                                                                  ("Ag4Bi2O6", "99.0")]
    records = read_table(result.path, "records")
    assert "Ag2BiO3" not in set(records[S.FORMULA])  # nothing downstream can merge them into 49.5
    assert records.groupby(S.FORMULA).size().to_dict() == {"GaN": 2, "MgO": 2, "Si": 1}
    # nothing is lost: every input row is a record or a quarantine row
    assert len(records) + len(quarantine) == len(TOY_ROWS)


def test_bad_targets_keep_their_original_text(work, toy_data):
    result = bundled.ingest_bundled(work, max_rows_per_dataset=None, datasets=["aflow__Egap"], data_dir=toy_data)
    quarantine = _quarantine(result)
    by_formula = {json.loads(raw)[S.FORMULA]: (reason, detail, json.loads(raw)[S.TARGET])
                  for reason, detail, raw in zip(quarantine[S.REASON], quarantine[S.DETAIL], quarantine[S.RAW])}
    assert by_formula["NaCl"] == ("nonfinite_target", "target 'abc' is not a number", "abc")
    assert by_formula["KBr"] == ("nonfinite_target", "target is empty ('')", "")
    assert by_formula["KI"][0] == "nonfinite_target" and by_formula["KI"][2] == "1e400"
    assert "'1e400'" in by_formula["KI"][1] and "inf" in by_formula["KI"][1]
    assert by_formula["LiF"][2] == "nan" and "'nan'" in by_formula["LiF"][1]
    assert not any("np.float64" in detail for detail in quarantine[S.DETAIL])
    assert by_formula["NaCl0"][0] == "unparseable_formula" and "zero amount" in by_formula["NaCl0"][1]
    assert by_formula["Xq2"][0] == "unknown_element" and "Xq" in by_formula["Xq2"][1]
    assert by_formula[""][0] == "unparseable_formula"
    assert result.manifest.counts["quarantine_reasons"] == {"conflicting_duplicate": 3, "nonfinite_target": 4,
                                                            "unparseable_formula": 2, "unknown_element": 1}


def test_clean_targets_are_the_same_floats_the_csv_reader_gives(toy_data):
    text, _ = bundled.load_bundled(toy_data, datasets=["aflow__Egap"], target_text=True)
    numbers, _ = bundled.load_bundled(toy_data, datasets=["aflow__Egap"])
    assert text[S.TARGET].map(type).eq(str).all() and numbers[S.TARGET].dtype == "float64"
    clean, _ = validate_records(text, {"aflow__Egap": "regression"})
    expected = numbers.set_index(S.RECORD_ID)[S.TARGET]
    assert (clean.set_index(S.RECORD_ID)[S.TARGET] == expected.loc[clean[S.RECORD_ID]]).all()
    assert clean[S.TARGET].dtype == "float64"


def _props(*datasets):
    return pd.DataFrame([{S.DATASET_ID: d, S.PROPERTY: d, S.PROPERTY_KEY: d, S.UNIT: "eV", S.TASK_TYPE: "regression",
                          S.SOURCE_DB: "test", S.FAMILY: "band_gap", S.TRANSFORM: "none"} for d in datasets])


def _rows(rows):
    return pd.DataFrame([{S.RECORD_ID: r[0], S.DATASET_ID: r[1], S.MATERIAL_ID: r[2], S.FORMULA: r[3],
                          S.STRUCTURE_JSON: r[4], S.TARGET: r[5], S.ORIG_SPLIT: None} for r in rows])


def _structure(a: float) -> str:
    from pymatgen.core import Lattice, Structure

    return json.dumps(Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).as_dict())


def test_structures_and_material_ids_tell_polymorphs_and_systems_apart(work):
    rock, other = _structure(5.6), _structure(6.0)
    rows = [
        ("p1", "gap", None, "NaCl", rock, 5.0), ("p2", "gap", None, "NaCl", other, 4.0),  # polymorphs: kept
        ("p3", "gap", None, "NaCl", rock, 5.0),                                         # same structure, agrees
        ("s1", "ads", "sys-1", "O", None, -1.0), ("s2", "ads", "sys-2", "O", None, 0.5),  # OC-style systems: kept
        ("c1", "gap", None, "KCl", rock, 1.0), ("c2", "gap", None, "K2Cl2", rock, 2.0),  # same structure, conflict
        ("d1", "other", None, "Ag2BiO3", None, 0.0), ("d2", "other", None, "Ag2BiO3", None, 99.0),  # gross
        ("d3", "gap2", None, "Ag2BiO3", None, 99.0),                                     # another dataset: its own
        ("m1", "other", None, "MgAl2O4", None, 3.29), ("m2", "other", None, "MgAl2O4", None, 4.54),  # polymorphs
    ] + [(f"f{i}", "other", None, f, None, 1.0 + 0.5 * i)                                 # the dataset's spread
         for i, f in enumerate(["LiF", "NaF", "KF", "RbF", "CsF", "LiCl", "KCl", "RbCl"])]
    result = write_snapshot(work, "test", _rows(rows), _props("gap", "ads", "other", "gap2"))
    quarantine = _quarantine(result)
    assert dict(zip(quarantine.index, quarantine[S.REASON])) == {
        "c1": "conflicting_duplicate", "c2": "conflicting_duplicate",
        "d1": "conflicting_duplicate", "d2": "conflicting_duplicate"}
    kept = sorted(read_table(result.path, "records")[S.RECORD_ID])
    assert kept == sorted(["d3", "p1", "p2", "p3", "s1", "s2", "m1", "m2"] + [f"f{i}" for i in range(8)])
    assert "3 interquartile ranges" in quarantine.loc["d1", S.DETAIL] and "99.0" in quarantine.loc["d1", S.DETAIL]


def test_tolerance_is_relative_to_the_value_and_the_dataset_spread():
    spread = 1000.0  # dataset spread: the "wide" rows span 0..1000
    near = 5.0 * (1 + REL_TOL / 10)
    far = 5.0 * (1 + REL_TOL * 10)
    # the same material id: one material, so the strict tolerance (float noise only) applies
    rows = [("w0", "gap", None, "Si", None, 0.0), ("w1", "gap", None, "Ge", None, spread),
            ("a1", "gap", "mp-1", "GaN", None, 5.0), ("a2", "gap", "mp-1", "GaN", None, near),
            ("b1", "gap", "mp-2", "InP", None, 5.0), ("b2", "gap", "mp-2", "InP", None, far),
            ("r1", "gap", None, "AlN", None, 2.0), ("r1", "gap", None, "AlN", None, 2.0)]  # exact copy: collapses
    clean, quarantine = validate_records(_rows(rows), {"gap": "regression"})
    assert sorted(quarantine[S.RECORD_ID]) == ["b1", "b2"]
    assert sorted(clean[S.RECORD_ID]) == ["a1", "a2", "r1", "w0", "w1"]


def test_same_record_id_or_material_id_with_different_targets_conflicts():
    rows = [("r1", "gap", None, "GaAs", None, 1.4), ("r1", "gap", None, "GaAs", None, 1.5),
            ("m1", "gap", "mp-1", "CaO", None, 2.0), ("m2", "gap", "mp-1", "CaO2", None, 3.0)]
    clean, quarantine = validate_records(_rows(rows), {"gap": "regression"})
    assert clean.empty and list(quarantine[S.REASON].unique()) == ["conflicting_duplicate"]
    assert len(quarantine) == 4
    details = dict(zip(quarantine[S.RECORD_ID], quarantine[S.DETAIL]))
    assert "1.4" in details["r1"] and "1.5" in details["r1"]
    assert "mp-1" in details["m1"] and "2.0" in details["m2"] and "3.0" in details["m2"]
    assert io.hash_frame(quarantine)  # a frame the snapshot can hash and store
