"""Raw snapshots: quarantine of each bad-input kind, immutability, atomicity, no-op re-ingest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from metalearn import io
from metalearn import schema as S
from metalearn.ingest.snapshot import latest_snapshot, list_snapshots, read_table, write_snapshot


def _properties(**task_types):
    return pd.DataFrame([{S.DATASET_ID: d, S.PROPERTY: d, S.PROPERTY_KEY: d, S.UNIT: "eV", S.TASK_TYPE: t,
                          S.SOURCE_DB: "test", S.FAMILY: "band_gap", S.TRANSFORM: "none"}
                         for d, t in task_types.items()])


def _records(rows):
    return pd.DataFrame([{S.RECORD_ID: r[0], S.DATASET_ID: r[1], S.MATERIAL_ID: r[2], S.FORMULA: r[3],
                          S.STRUCTURE_JSON: r[4], S.TARGET: r[5], S.ORIG_SPLIT: None} for r in rows])


def _good_structure():
    from pymatgen.core import Lattice, Structure

    return json.dumps(Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).as_dict())


def test_each_bad_input_kind_is_quarantined_with_reason(work):
    rows = [
        ("r1", "gap", None, "NaCl", None, 5.0),
        ("r2", "gap", None, "Na(Cl", None, 1.0),           # unparseable formula
        ("r3", "gap", None, "Xx2O", None, 1.0),            # unknown element
        ("r4", "gap", None, "KBr", None, float("nan")),    # NaN target
        ("r5", "gap", None, "KI", None, float("inf")),     # inf target
        ("r6", "gap", None, "MgO", '{"lattice": 3}', 1.0),  # broken structure
        ("r7", "gap", "mp-1", "CaO", None, 2.0),           # duplicate id, conflicting values
        ("r8", "gap", "mp-1", "CaO", None, 3.0),
        ("r9", "gap", None, "NaN", _good_structure(), 4.0),  # sodium nitride + a valid structure
        ("r10", "metal", None, "Cu", None, 0.5),           # classification label not 0/1
        ("r11", "metal", None, "Fe", None, 1.0),
    ]
    result = write_snapshot(work, "test", _records(rows), _properties(gap="regression", metal="classification"))
    quarantine = read_table(result.path, "quarantine")
    reasons = dict(zip(quarantine[S.RECORD_ID], quarantine[S.REASON]))
    assert reasons == {"r2": "unparseable_formula", "r3": "unknown_element", "r4": "nonfinite_target",
                       "r5": "nonfinite_target", "r6": "bad_structure", "r7": "conflicting_duplicate",
                       "r8": "conflicting_duplicate", "r10": "invalid_label"}
    # nothing is lost: every input row is either a clean record or a quarantine row with its raw input
    records = read_table(result.path, "records")
    assert sorted(records[S.RECORD_ID]) == ["r1", "r11", "r9"]
    assert all(json.loads(raw)[S.RECORD_ID] for raw in quarantine[S.RAW])
    assert result.manifest.counts["quarantined"] == 8
    assert result.manifest.counts["quarantine_reasons"]["nonfinite_target"] == 2


def test_exact_duplicates_collapse_without_quarantine(work):
    rows = [("a", "gap", "mp-2", "GaN", None, 3.0), ("a", "gap", "mp-2", "GaN", None, 3.0)]
    result = write_snapshot(work, "test", _records(rows), _properties(gap="regression"))
    assert result.n_quarantined == 0 and result.manifest.n_rows == 1


def test_reingest_same_content_writes_nothing_and_changed_content_is_new(work):
    rows = [("a", "gap", None, "GaN", None, 3.0), ("b", "gap", None, "GaAs", None, 1.4)]
    first = write_snapshot(work, "test", _records(rows), _properties(gap="regression"))
    again = write_snapshot(work, "test", _records(rows[::-1]), _properties(gap="regression"))
    assert first.created and not again.created and again.path == first.path
    changed = write_snapshot(work, "test", _records(rows + [("c", "gap", None, "InP", None, 1.3)]),
                             _properties(gap="regression"))
    assert changed.created and changed.path != first.path
    assert list_snapshots(work, "test") == [first.path, changed.path]
    # the first snapshot is untouched (immutable)
    assert read_table(first.path, "records").shape[0] == 2
    manifest = io.read_manifest(changed.path)
    assert manifest.content_hash != first.manifest.content_hash and manifest.n_rows == 3
    assert {"pymatgen", "pandas", "pyarrow"} <= set(manifest.versions)


def test_killed_write_leaves_no_readable_snapshot(work):
    script = textwrap.dedent(f"""
        import time, pandas as pd
        import metalearn.io as io
        from metalearn import schema as S
        from metalearn.ingest.snapshot import write_snapshot
        real = io.write_parquet_atomic
        def slow(path, *a, **k):
            real(path, *a, **k)
            print("wrote", path.name, flush=True)
            time.sleep(60)
        io.write_parquet_atomic = slow
        records = pd.DataFrame({{"record_id": ["a"], "dataset_id": ["gap"], "formula": ["GaN"], "target": [3.0]}})
        props = pd.DataFrame([{{"dataset_id": "gap", "property": "gap", "property_key": "gap", "unit": "eV",
                               "task_type": "regression", "source_db": "t", "family": "band_gap",
                               "transform": "none"}}])
        from metalearn.layout import WorkDir
        write_snapshot(WorkDir.resolve({str(work.root)!r}), "test", records, props)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("wrote"), line
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert latest_snapshot(work, "test") is None
    leftovers = list(work.raw("test").iterdir())
    assert leftovers and all(p.name.startswith(io.TMP_PREFIX) for p in leftovers)
    assert io.clean_stale_tmp(work.raw_root()) >= 1
    assert not list(work.raw("test").iterdir())


def test_records_must_reference_known_datasets(work):
    with pytest.raises(ValueError, match="no property metadata"):
        write_snapshot(work, "test", _records([("a", "other", None, "GaN", None, 1.0)]),
                       _properties(gap="regression"))


def test_combine_snapshots_keeps_rows_and_quarantine_and_is_a_noop_when_unchanged(work):
    from metalearn.ingest.snapshot import combine_snapshots

    a = write_snapshot(work, "a", _records([("a1", "gap", None, "GaN", None, 3.0),
                                               ("a2", "gap", None, "Na(Cl", None, 1.0)]), _properties(gap="regression"))
    b = write_snapshot(work, "b", _records([("b1", "metal", None, "Cu", None, 1.0)]),
                       _properties(metal="classification"))
    combined = combine_snapshots(work, [a.path, b.path])
    assert combined.created and combined.manifest.n_rows == 2 and combined.n_quarantined == 1
    assert set(read_table(combined.path, "records")[S.RECORD_ID]) == {"a1", "b1"}
    assert set(read_table(combined.path, "properties")[S.DATASET_ID]) == {"gap", "metal"}
    assert combined.manifest.inputs == {a.path.name: a.manifest.content_hash, b.path.name: b.manifest.content_hash}
    again = combine_snapshots(work, [a.path, b.path])
    assert not again.created and again.path == combined.path
