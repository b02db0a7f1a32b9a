"""Open Catalyst readers on the bundled real OC20 data: extxyz frames, ASE databases, OC20-Dense."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from metalearn import io
from metalearn import schema as S
from metalearn.ingest import oc
from metalearn.ingest.snapshot import read_table
from metalearn.ingest.validate import validate_records

OC_DIR = io.repo_data_dir() / "oc"


@pytest.fixture(scope="module")
def is2re_frames() -> pd.DataFrame:
    return oc.read_frames(OC_DIR / oc.IS2RE_FILE)


@pytest.fixture(scope="module")
def summary_csv() -> pd.DataFrame:
    return pd.read_csv(OC_DIR / "oc20_trajectories_summary.csv").set_index("sid")


def test_extxyz_frames_and_energies_match_the_summary(is2re_frames, summary_csv):
    assert len(is2re_frames) == 60
    assert set(is2re_frames["system_id"]) == set(summary_csv.index) and len(summary_csv) == 30
    kinds = is2re_frames.groupby("system_id")["frame_kind"].apply(lambda k: tuple(sorted(k)))
    assert set(kinds) == {("initial", "relaxed")}
    trajs = oc.trajectories(is2re_frames).set_index("system_id")
    np.testing.assert_allclose(trajs["e_initial_ev"], summary_csv.loc[trajs.index, "e_initial_eV"], atol=1e-6)
    np.testing.assert_allclose(trajs["e_relaxed_ev"], summary_csv.loc[trajs.index, "e_relaxed_eV"], atol=1e-6)
    np.testing.assert_allclose(trajs["fmax_relaxed_ev_per_a"],
                               summary_csv.loc[trajs.index, "fmax_relaxed_eV_per_A"], atol=1e-6)
    assert (trajs["natoms"] == summary_csv.loc[trajs.index, "natoms"]).all()
    assert (trajs["n_fixed"] == summary_csv.loc[trajs.index, "n_fixed"]).all()
    assert (trajs["formula"] == summary_csv.loc[trajs.index, "formula"]).all()
    assert trajs["adsorbate"].isna().all()  # the sample has no adsorbate tags

    from pymatgen.core import Structure

    row = trajs.iloc[0]
    initial = Structure.from_dict(json.loads(row["initial_structure_json"]))
    relaxed = Structure.from_dict(json.loads(row["relaxed_structure_json"]))
    assert len(initial) == len(relaxed) == row["natoms"]
    fixed = [not any(flags) for flags in initial.site_properties["selective_dynamics"]]
    assert sum(fixed) == row["n_fixed"]
    assert not np.allclose(initial.cart_coords, relaxed.cart_coords)  # it did relax


def test_s2ef_frame_counts_per_system(summary_csv):
    frames = oc.read_frames(OC_DIR / "oc20_s2ef_sample.extxyz.gz", with_structures=False)
    assert len(frames) == 564 and frames["structure_json"].isna().all()
    counts = frames.groupby("system_id").size()
    assert (counts == summary_csv.loc[counts.index, "n_s2ef_frames_in_sample"]).all()
    assert frames["energy_ev"].notna().all()


@pytest.mark.parametrize("suffix", [".db", ".aselmdb"])
def test_ase_database_round_trip(tmp_path, suffix):
    import ase.db
    import ase.io

    atoms_list = list(ase.io.iread(str(OC_DIR / oc.IS2RE_FILE), index=":4", format="extxyz"))
    path = tmp_path / f"frames{suffix}"
    with ase.db.connect(str(path)) as db:
        for atoms in atoms_list:
            db.write(atoms, sid=atoms.info["sid"], frame_index=int(atoms.info["frame_index"]),
                     data={"adsorbate": "*O", "note": "round trip"})

    frames = oc.read_frames(path)
    assert len(frames) == 4
    for atoms, row in zip(atoms_list, frames.itertuples(index=False)):
        assert row.system_id == atoms.info["sid"] and row.frame_index == atoms.info["frame_index"]
        assert row.adsorbate == "*O" and json.loads(row.extra_json) == {"note": "round trip"}
        assert row.energy_ev == pytest.approx(atoms.get_potential_energy())
        assert row.natoms == len(atoms) and row.n_fixed == len(atoms.constraints[0].get_indices())
        from pymatgen.core import Structure

        np.testing.assert_allclose(Structure.from_dict(json.loads(row.structure_json)).cart_coords,
                                   atoms.positions, atol=1e-8)
    first_sid = atoms_list[0].info["sid"]
    assert set(oc.read_frames(path, selection=f"sid={first_sid}")["system_id"]) == {first_sid}


def test_missing_database_is_an_error_not_a_new_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        oc.read_frames(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()


def test_oc20_dense_target_is_the_minimum_over_configs():
    dense = oc.load_oc20_dense(OC_DIR)
    raw = pd.read_csv(OC_DIR / oc.DENSE_FILE, dtype={"system_id": str})
    best: dict[str, tuple[float, str]] = {}
    counts: dict[str, int] = defaultdict(int)
    for system_id, config, energy in zip(raw["system_id"], raw["config_id"], raw["adsorption_energy_eV"]):
        counts[system_id] += 1
        if system_id not in best or energy < best[system_id][0]:
            best[system_id] = (energy, config)
    assert len(dense) == len(best) == 200
    for row in dense.itertuples(index=False):
        assert row.adsorption_energy_ev == best[row.system_id][0]
        assert row.best_config == best[row.system_id][1] and row.n_configs == counts[row.system_id]
        assert row.system_id == f"{row.adsorbate_idx}_{row.bulk_idx}_{row.surface_idx}"
    assert dense.set_index("adsorbate").loc["*O", "adsorbate_formula"].eq("O").all()
    assert dense["adsorbate_formula"].notna().all()


def test_records_follow_the_schema_and_validate_cleanly():
    records, properties = oc.load_oc(OC_DIR)
    assert list(records.columns) == [f.name for f in S.RECORDS_SCHEMA]
    assert list(properties.columns) == [f.name for f in S.PROPERTIES_SCHEMA]
    assert records[S.RECORD_ID].is_unique
    assert records.groupby(S.DATASET_ID).size().to_dict() == {oc.DENSE_DATASET: 200, oc.IS2RE_DATASET: 30}
    assert dict(zip(properties[S.DATASET_ID], properties[S.FAMILY])) == {
        oc.DENSE_DATASET: "adsorption_energy", oc.IS2RE_DATASET: "total_energy"}
    dense = records[records[S.DATASET_ID] == oc.DENSE_DATASET]
    assert dense[S.STRUCTURE_JSON].isna().all() and dense[S.TARGET].between(-10, 10).all()
    is2re = records[records[S.DATASET_ID] == oc.IS2RE_DATASET]
    assert is2re[S.STRUCTURE_JSON].notna().all() and (is2re[S.TARGET] < -50).all()  # total, not adsorption
    clean, quarantine = validate_records(records, dict(zip(properties[S.DATASET_ID], properties[S.TASK_TYPE])))
    assert len(quarantine) == 0 and len(clean) == len(records)


def test_ingest_oc_writes_once(work):
    first = oc.ingest_oc(work)
    assert first.created and first.manifest.n_rows == 230 and first.n_quarantined == 0
    assert len(read_table(first.path, "oc20_trajectories")) == 30
    assert len(read_table(first.path, "oc20_dense_systems")) == 200
    again = oc.ingest_oc(work, OC_DIR.parent)  # the data/ dir works too: it holds oc/
    assert not again.created and again.path == first.path
