"""The real data bundled in the repo's ``data/`` (the offline default source), as long records.

Composition datasets come with their metadata from ``data/composition/INDEX.csv``; the structure
datasets (MP dielectric and piezoelectric, Perov-5) are described here, one property per column.
Read PROVENANCE.md for the caveats: the formula "NaN" is sodium nitride (we read with
``keep_default_na=False``), several properties appear in two sources (hence ``family``).

Targets are read as the files' text. :func:`ingest_bundled` hands that text to the snapshot's
validation, so a value such as ``abc``, an empty cell or ``1e400`` is quarantined with the text it
had; the loaders' default (``target_text=False``) converts leniently (bad values become NaN) for
library callers that want numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metalearn import io
from metalearn import schema as S
from metalearn.ingest.snapshot import VALIDATION_KEY, SnapshotResult, latest_verified_snapshot, write_snapshot
from metalearn.ingest.validate import VALIDATION_VERSION
from metalearn.layout import WorkDir

SOURCE = "bundled"

# dataset_id -> (family, property_key, transform). Families group the same physical property across
# sources, so a family can be held out whole (no leakage of "band gap" from AFLOW into OQMD's test).
COMPOSITION_FAMILIES: dict[str, tuple[str, str, str]] = {
    "aflow__Egap": ("band_gap", "band_gap_ev", "none"),
    "aflow__ael_bulk_modulus_vrh": ("bulk_modulus", "k_vrh_gpa", "log10"),
    "aflow__ael_shear_modulus_vrh": ("shear_modulus", "g_vrh_gpa", "log10"),
    "aflow__agl_thermal_conductivity_300K": ("thermal_conductivity", "kappa_300k_w_per_m_k", "log10"),
    "aflow__energy_atom": ("total_energy", "energy_ev_per_atom", "none"),
    "CritExam__Ed": ("stability", "decomposition_energy_ev_per_atom", "none"),
    "CritExam__Ef": ("formation_energy", "formation_energy_ev_per_atom", "none"),
    "mp_bulk_modulus": ("bulk_modulus", "k_vrh_gpa", "log10"),
    "mp_shear_modulus": ("shear_modulus", "g_vrh_gpa", "log10"),
    "mp_e_hull": ("stability", "energy_above_hull_ev_per_atom", "none"),
    "OQMD_Bandgap": ("band_gap", "band_gap_ev", "none"),
    "OQMD_Energy_per_atom": ("total_energy", "energy_ev_per_atom", "none"),
    "OQMD_Formation_Enthalpy": ("formation_energy", "formation_enthalpy_ev_per_atom", "none"),
    "OQMD_Volume_per_atom": ("volume", "volume_a3_per_atom", "none"),
    "matbench_castelli": ("formation_energy", "heat_of_formation_ev_per_cell", "none"),
    "matbench_dielectric": ("refractive_index", "n", "none"),
    "matbench_elasticity_log10_G_VRH": ("shear_modulus", "log10_g_vrh_gpa", "none"),
    "matbench_elasticity_log10_K_VRH": ("bulk_modulus", "log10_k_vrh_gpa", "none"),
    "matbench_expt_gap": ("band_gap", "band_gap_ev", "none"),
    "matbench_expt_is_metal": ("metallicity", "is_metal", "none"),
    "matbench_glass": ("glass_forming", "is_glass_former", "none"),
    "matbench_mp_e_form": ("formation_energy", "formation_energy_ev_per_atom", "none"),
    "matbench_mp_gap": ("band_gap", "band_gap_ev", "none"),
    "matbench_mp_is_metal": ("metallicity", "is_metal", "none"),
    "roost_expt_non_metals": ("band_gap", "band_gap_ev", "none"),
    "roost_mp_non_metals": ("band_gap", "band_gap_ev", "none"),
}


@dataclass(frozen=True)
class StructureProperty:
    file: str
    column: str
    dataset_id: str
    property: str
    property_key: str
    unit: str
    family: str
    source_db: str
    transform: str = "none"


STRUCTURE_PROPERTIES: tuple[StructureProperty, ...] = (
    StructureProperty("mp_dielectric_petousis2017.csv.gz", "band_gap", "mp_dielectric:band_gap",
                      "band gap, PBE (MP dielectric set)", "band_gap_ev", "eV", "band_gap", "Materials Project"),
    StructureProperty("mp_dielectric_petousis2017.csv.gz", "n", "mp_dielectric:n",
                      "refractive index (MP DFPT)", "n", "dimensionless", "refractive_index", "Materials Project"),
    StructureProperty("mp_dielectric_petousis2017.csv.gz", "poly_total", "mp_dielectric:poly_total",
                      "polycrystalline total dielectric constant (MP DFPT)", "e_total", "dimensionless",
                      "dielectric_constant", "Materials Project", "log10"),
    StructureProperty("mp_piezoelectric_dejong2015.csv.gz", "eij_max", "mp_piezo:eij_max",
                      "max longitudinal piezoelectric modulus (MP DFPT)", "e_ij_max_c_per_m2", "C/m^2",
                      "piezoelectric", "Materials Project"),
    StructureProperty("perov5_cdvae.csv.gz", "heat_all", "perov5:heat_all",
                      "heat of formation of cubic perovskite (Castelli, CMR)", "heat_of_formation_ev_per_cell",
                      "eV per 5-atom cell", "formation_energy", "CMR/Castelli et al. 2012"),
    StructureProperty("perov5_cdvae.csv.gz", "ind_gap", "perov5:ind_gap",
                      "indirect band gap, GLLB-SC (Castelli, CMR)", "band_gap_ev", "eV", "band_gap",
                      "CMR/Castelli et al. 2012"),
)


def read_index(data_dir: Path | None = None) -> pd.DataFrame:
    return pd.read_csv((data_dir or io.repo_data_dir()) / "composition" / "INDEX.csv")


def properties_table(data_dir: Path | None = None) -> pd.DataFrame:
    """One row per bundled dataset with its metadata (PROPERTIES_SCHEMA)."""
    rows = []
    for entry in read_index(data_dir).itertuples(index=False):
        family, key, transform = COMPOSITION_FAMILIES[entry.dataset_id]
        rows.append({S.DATASET_ID: entry.dataset_id, S.PROPERTY: entry.property, S.PROPERTY_KEY: key,
                     S.UNIT: entry.units, S.TASK_TYPE: entry.task_type, S.SOURCE_DB: entry.source_db,
                     S.FAMILY: family, S.TRANSFORM: transform})
    for prop in STRUCTURE_PROPERTIES:
        rows.append({S.DATASET_ID: prop.dataset_id, S.PROPERTY: prop.property, S.PROPERTY_KEY: prop.property_key,
                     S.UNIT: prop.unit, S.TASK_TYPE: "regression", S.SOURCE_DB: prop.source_db,
                     S.FAMILY: prop.family, S.TRANSFORM: prop.transform})
    return pd.DataFrame(rows, columns=[f.name for f in S.PROPERTIES_SCHEMA])


def _subsample(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """A seeded, order-preserving subsample; the full table when ``max_rows`` is None."""
    if max_rows is None or len(frame) <= max_rows:
        return frame
    keep = np.sort(np.random.default_rng(seed).choice(len(frame), size=max_rows, replace=False))
    return frame.iloc[keep]


def _targets(text: pd.Series, target_text: bool) -> np.ndarray:
    """The file's target text as it is, or converted leniently (text that is no number -> NaN)."""
    return text.to_numpy() if target_text else pd.to_numeric(text, errors="coerce").to_numpy()


def load_composition_dataset(dataset_id: str, data_dir: Path | None = None, max_rows: int | None = None,
                             seed: int = 0, target_text: bool = False) -> pd.DataFrame:
    """Records of one composition dataset.

    Args:
        target_text: keep each target as the file's text (for validation, which quarantines bad
            values with that text); False converts to float64, bad values becoming NaN.
    """
    index = read_index(data_dir).set_index("dataset_id")
    if dataset_id not in index.index:
        raise ValueError(f"unknown bundled dataset {dataset_id!r}; see data/composition/INDEX.csv")
    path = (data_dir or io.repo_data_dir()) / index.at[dataset_id, "path"]
    frame = _subsample(pd.read_csv(path, keep_default_na=False, dtype={"formula": str, "target": str}),
                       max_rows, seed)
    material = frame["material_id"].astype(str) if "material_id" in frame else None
    return pd.DataFrame({
        S.RECORD_ID: [f"{dataset_id}:{i}" for i in frame.index],
        S.DATASET_ID: dataset_id,
        S.MATERIAL_ID: material.to_numpy() if material is not None else None,
        S.FORMULA: frame["formula"].to_numpy(),
        S.STRUCTURE_JSON: None,
        S.TARGET: _targets(frame["target"], target_text),
        S.ORIG_SPLIT: frame["split"].to_numpy(),
    })


def cif_to_structure_json(cif: str) -> str:
    """pymatgen JSON of a CIF; a CIF that does not parse is kept as ``{"unparsed_cif": ...}``.

    Why not None: validation then quarantines the record as ``bad_structure`` with the CIF in it,
    instead of the structure silently disappearing.
    """
    import warnings

    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return json.dumps(Structure.from_str(cif, fmt="cif").as_dict())
    except Exception:  # noqa: BLE001 -- any parse failure ends in quarantine, with the CIF kept
        return json.dumps({"unparsed_cif": cif})


def load_structure_datasets(data_dir: Path | None = None, max_rows: int | None = None,
                            seed: int = 0, target_text: bool = False) -> pd.DataFrame:
    """Long records for every structure-bearing property, each CIF parsed once per file."""
    base = (data_dir or io.repo_data_dir()) / "structures"
    frames = []
    for file in sorted({p.file for p in STRUCTURE_PROPERTIES}):
        text_columns = {p.column: str for p in STRUCTURE_PROPERTIES if p.file == file}
        table = _subsample(pd.read_csv(base / file, keep_default_na=False, dtype={"formula": str, **text_columns}),
                           max_rows, seed)
        structures = [cif_to_structure_json(c) for c in table["cif"]]
        for prop in (p for p in STRUCTURE_PROPERTIES if p.file == file):
            frames.append(pd.DataFrame({
                S.RECORD_ID: [f"{prop.dataset_id}:{i}" for i in table.index],
                S.DATASET_ID: prop.dataset_id,
                S.MATERIAL_ID: table["material_id"].astype(str).to_numpy(),
                S.FORMULA: table["formula"].to_numpy(),
                S.STRUCTURE_JSON: structures,
                S.TARGET: _targets(table[prop.column], target_text),
                S.ORIG_SPLIT: table["split"].to_numpy() if "split" in table else None,
            }))
    return pd.concat(frames, ignore_index=True)


def input_fingerprint(data_dir: Path | None = None) -> str:
    """Hash of the bundled files' bytes: an unchanged bundle lets a re-ingest skip parsing entirely."""
    base = data_dir or io.repo_data_dir()
    files = sorted(list((base / "composition").rglob("*.csv*")) + list((base / "structures").glob("*.csv.gz")))
    return io.hash_bytes(*(f.relative_to(base).as_posix().encode() + f.read_bytes() for f in files))


def load_bundled(data_dir: Path | None = None, max_rows_per_dataset: int | None = None,
                 seed: int = 0, datasets: list[str] | None = None,
                 target_text: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All bundled records and their property table.

    Args:
        max_rows_per_dataset: seeded subsample per dataset (few-shot tasks need hundreds of rows,
            not 300k); None keeps everything.
        datasets: restrict to these dataset ids (composition or structure ones).
        target_text: targets as the files' text (see :func:`load_composition_dataset`).
    """
    properties = properties_table(data_dir)
    wanted = set(datasets) if datasets else set(properties[S.DATASET_ID])
    unknown = wanted - set(properties[S.DATASET_ID])
    if unknown:
        raise ValueError(f"unknown bundled datasets {sorted(unknown)}")
    frames = [load_composition_dataset(d, data_dir, max_rows_per_dataset, seed, target_text)
              for d in read_index(data_dir)["dataset_id"] if d in wanted]
    if any(p.dataset_id in wanted for p in STRUCTURE_PROPERTIES):
        structures = load_structure_datasets(data_dir, max_rows_per_dataset, seed, target_text)
        frames.append(structures[structures[S.DATASET_ID].isin(wanted)])
    records = pd.concat(frames, ignore_index=True)
    return records, properties[properties[S.DATASET_ID].isin(wanted)].reset_index(drop=True)


def ingest_bundled(work: WorkDir, *, max_rows_per_dataset: int | None = 3000, seed: int = 0,
                   datasets: list[str] | tuple[str, ...] | None = None,
                   data_dir: Path | None = None) -> SnapshotResult:
    """Write (unless unchanged) a ``bundled`` raw snapshot under ``work.raw("bundled")``.

    Why a fingerprint first: a nightly re-ingest of the unchanged bundle then costs a hash of the
    files and a check of the snapshot's digests, not a re-parse of thousands of CIFs. The snapshot
    found must verify and have been validated by the current rules; otherwise it is rebuilt.
    """
    query = {"max_rows_per_dataset": max_rows_per_dataset, "seed": seed,
             "datasets": list(datasets) if datasets else None}
    fingerprint = input_fingerprint(data_dir)
    latest = latest_verified_snapshot(work, SOURCE)
    if latest is not None:
        manifest = io.read_manifest(latest)
        if (manifest.extra.get("input_fingerprint") == fingerprint and manifest.query == query
                and manifest.extra.get(VALIDATION_KEY) == VALIDATION_VERSION):
            return SnapshotResult(latest, manifest, created=False,
                                  n_quarantined=int(manifest.counts.get("quarantined", 0)))
    records, properties = load_bundled(data_dir, max_rows_per_dataset=max_rows_per_dataset, seed=seed,
                                       datasets=list(datasets) if datasets else None, target_text=True)
    return write_snapshot(work, SOURCE, records, properties, query=query, extra={"input_fingerprint": fingerprint})
