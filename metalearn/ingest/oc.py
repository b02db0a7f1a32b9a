"""Open Catalyst (OC20/OC22) source: ASE frames (extxyz, ASE databases incl. ``.aselmdb``) and OC20-Dense.

What the fields mean, and why two energies are never mixed:

* **Total DFT energy** (``energy_ev`` of a frame; the extxyz ``energy`` key / an ASE row's
  calculator energy): the VASP energy of the *whole adsorbate+slab system* in eV (RPBE for OC20).
  It grows with system size (hundreds of eV for ~100 atoms) and is NOT an adsorption energy: turning it
  into one needs the clean-slab and gas-phase reference energies, which the bundled sample lacks.
* **Adsorption energy** (``adsorption_energy_ev``, OC20-Dense): E(adsorbate+slab) - E(slab) - E(gas
  references), eV, as published by AdsorbML. One value per placement (``config_id``: ``heurN`` or
  ``randN``); the OC20-Dense target of a system is the **minimum over its placements**.
* ``system_id``: OC20 system id. For trajectories the ``sid`` (e.g. ``random1000100``); for OC20-Dense
  ``<adsorbate_idx>_<bulk_idx>_<surface_idx>`` (bulk and surface indices point into OC20's own bulk
  and surface catalogues, not Materials Project ids).
* ``adsorbate``: the OC adsorbate SMILES-like name (``*O``, ``*COCH2OH``) when known: OC20-Dense
  gives it; the trajectory sample does not (its tags are unset), so it is null there.
* ``fmax_ev_per_a``: largest force norm over the atoms free to move (fixed = FixAtoms constraint).

Records (``load_oc``):

* ``oc20_is2re:total_energy_ev`` (family ``total_energy``; 30 systems): target = relaxed total DFT
  energy in eV per *system* (not per atom); ``structure_json`` = the **initial** structure, as in
  the IS2RE task (initial structure -> relaxed energy); formula = the system's composition.
* ``oc20_dense:adsorption_energy_ev`` (family ``adsorption_energy``; 200 systems): target = minimum
  adsorption energy over placements. There is no slab geometry or bulk composition for these, so
  ``formula`` is the **adsorbate's** formula, ``material_id`` the ``system_id``, ``structure_json``
  null. Composition features therefore see only the adsorbate; systems sharing an adsorbate differ
  only by id.

Example:
    >>> records, properties = load_oc()
    >>> sorted(records["dataset_id"].unique())
    ['oc20_dense:adsorption_energy_ev', 'oc20_is2re:total_energy_ev']
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from metalearn import io
from metalearn import schema as S
from metalearn.ingest.snapshot import SnapshotResult, write_snapshot
from metalearn.layout import WorkDir

SOURCE = "oc"
SOURCE_DB = "Open Catalyst (OC20)"
IS2RE_FILE = "oc20_is2re_sample.extxyz.gz"
DENSE_FILE = "oc20dense_val_targets.csv"
ADSORBATES_FILE = "oc20_adsorbates.csv"
IS2RE_DATASET = "oc20_is2re:total_energy_ev"
DENSE_DATASET = "oc20_dense:adsorption_energy_ev"
FRAME_COLUMNS = ("system_id", "frame_index", "frame_kind", "adsorbate", "formula", "natoms", "n_fixed",
                 "energy_ev", "fmax_ev_per_a", "structure_json", "source_row", "extra_json")
_ID_KEYS = ("sid", "system_id")
_ADSORBATE_KEYS = ("adsorbate", "ads_symbols", "adsorbate_name")
_DB_SUFFIXES = (".db", ".aselmdb", ".lmdb", ".json")


def resolve_data_dir(data_dir: Path | None = None) -> Path:
    """The directory holding the OC files: ``data_dir`` (or its ``oc/``), else the bundled ``data/oc``."""
    base = Path(data_dir) if data_dir is not None else io.repo_data_dir() / "oc"
    return base / "oc" if (base / "oc").is_dir() and not (base / DENSE_FILE).exists() else base


def structure_json(atoms: Any) -> str:
    """pymatgen JSON of an ASE Atoms (FixAtoms -> ``selective_dynamics``); frame metadata left out."""
    from pymatgen.io.ase import AseAtomsAdaptor

    bare = atoms.copy()  # copy() drops the calculator; clearing info keeps metadata out of the structure
    bare.info = {}
    return AseAtomsAdaptor.get_structure(bare).to_json()


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _first(mappings: tuple[dict, ...], keys: tuple[str, ...]) -> Any:
    for mapping in mappings:
        for key in keys:
            if mapping.get(key) is not None:
                return _plain(mapping[key])
    return None


def frame_record(atoms: Any, *, source_row: int, meta: dict | None = None, with_structure: bool = True
                 ) -> dict[str, Any]:
    """One FRAME_COLUMNS row for an Atoms; ids/adsorbate come from ``meta`` or ``atoms.info``."""
    meta = dict(meta or {})
    sources = (meta, dict(atoms.info))
    fixed = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if type(constraint).__name__ == "FixAtoms":
            fixed[constraint.get_indices()] = True
    energy = fmax = None
    if atoms.calc is not None:
        results = atoms.calc.results
        energy = float(results["energy"]) if "energy" in results else None
        if "forces" in results and (~fixed).any():
            fmax = float(np.linalg.norm(np.asarray(results["forces"])[~fixed], axis=1).max())
    system_id = _first(sources, _ID_KEYS)
    known = set(_ID_KEYS) | set(_ADSORBATE_KEYS) | {"frame_index", "frame_kind"}
    extra = {k: _plain(v) for k, v in {**dict(atoms.info), **meta}.items() if k not in known}
    return {
        "system_id": None if system_id is None else str(system_id),
        "frame_index": _first(sources, ("frame_index",)),
        "frame_kind": _first(sources, ("frame_kind",)),
        "adsorbate": _first(sources, _ADSORBATE_KEYS),
        "formula": atoms.get_chemical_formula(),
        "natoms": len(atoms),
        "n_fixed": int(fixed.sum()),
        "energy_ev": energy,
        "fmax_ev_per_a": fmax,
        "structure_json": structure_json(atoms) if with_structure else None,
        "source_row": source_row,
        "extra_json": json.dumps(extra, sort_keys=True, default=str) if extra else None,
    }


@contextmanager
def _seekable_text(path: Path) -> Iterator[IO[str]]:
    """The file as seekable text. Why: ASE's extxyz reader seeks backwards, and seeking in a gzip
    stream re-decompresses from the start (quadratic: 16 s instead of 1 s for the 564-frame sample)."""
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower())
    if opener is None:
        with open(path, encoding="utf-8") as handle:
            yield handle
        return
    with tempfile.SpooledTemporaryFile(max_size=256 * 2**20, mode="w+", encoding="utf-8") as buffer:
        with opener(path, "rt", encoding="utf-8") as source:
            shutil.copyfileobj(source, buffer)
        buffer.seek(0)
        yield buffer  # type: ignore[misc]


def iter_extxyz(path: Path, with_structures: bool = True) -> Iterator[dict[str, Any]]:
    """Frames of an extxyz file (plain, .gz, .bz2 or .xz), streamed, as FRAME_COLUMNS dicts."""
    import ase.io

    with _seekable_text(Path(path)) as handle:
        for index, atoms in enumerate(ase.io.iread(handle, index=":", format="extxyz")):
            yield frame_record(atoms, source_row=index, with_structure=with_structures)


def iter_ase_db(path: Path, selection: Any = None, with_structures: bool = True) -> Iterator[dict[str, Any]]:
    """Rows of an ASE database (SQLite ``.db``, ``.json``, or ``.aselmdb`` via ase-db-backends).

    Ids and adsorbate are looked up in the row's key-value pairs, then its ``data`` dict
    (keys ``sid``/``system_id``, ``adsorbate``/``ads_symbols``). ``energy_ev`` is the stored
    calculator energy: a total DFT energy for OC20/OC22 frames unless the database says otherwise.
    """
    import ase.db

    with ase.db.connect(str(path)) as db:
        for row in db.select(selection):
            meta = {**dict(row.get("data") or {}), **dict(row.key_value_pairs)}
            meta = {k: v for k, v in meta.items() if np.ndim(v) == 0}  # keep scalars, not arrays
            yield frame_record(row.toatoms(), source_row=int(row.id), meta=meta, with_structure=with_structures)


def read_frames(path: Path, with_structures: bool = True, selection: Any = None) -> pd.DataFrame:
    """All frames of an extxyz file or an ASE database, by file suffix, as a FRAME_COLUMNS table."""
    path = Path(path)
    if not path.exists():  # ase.db.connect would create an empty database instead of failing
        raise FileNotFoundError(f"no OC data file at {path}")
    suffixes = "".join(path.suffixes).lower()
    if ".xyz" in suffixes or ".extxyz" in suffixes:
        rows = iter_extxyz(path, with_structures)
    elif path.suffix.lower() in _DB_SUFFIXES:
        rows = iter_ase_db(path, selection, with_structures)
    else:
        raise ValueError(f"{path}: not an extxyz file or an ASE database ({', '.join(_DB_SUFFIXES)})")
    return pd.DataFrame(list(rows), columns=list(FRAME_COLUMNS))


def trajectories(frames: pd.DataFrame) -> pd.DataFrame:
    """One row per system: initial and relaxed frame (``frame_kind``, else lowest/highest frame_index)."""
    rows = []
    for system_id, group in frames.groupby("system_id", sort=True):
        if len(group) < 2:
            raise ValueError(f"system {system_id!r} has one frame; a trajectory needs initial and relaxed")
        order = group.sort_values(["frame_index", "source_row"], na_position="last")
        kinds = order["frame_kind"]
        initial = order[kinds == "initial"].iloc[0] if (kinds == "initial").any() else order.iloc[0]
        relaxed = order[kinds == "relaxed"].iloc[-1] if (kinds == "relaxed").any() else order.iloc[-1]
        rows.append({"system_id": system_id, "adsorbate": relaxed["adsorbate"], "formula": relaxed["formula"],
                     "natoms": int(relaxed["natoms"]), "n_fixed": int(relaxed["n_fixed"]),
                     "e_initial_ev": initial["energy_ev"], "e_relaxed_ev": relaxed["energy_ev"],
                     "fmax_relaxed_ev_per_a": relaxed["fmax_ev_per_a"],
                     "initial_structure_json": initial["structure_json"],
                     "relaxed_structure_json": relaxed["structure_json"]})
    return pd.DataFrame(rows)


def load_oc20_dense(data_dir: Path | None = None) -> pd.DataFrame:
    """One row per OC20-Dense system: the minimum adsorption energy over placements, with its adsorbate.

    Columns: system_id, adsorbate, adsorbate_formula, adsorbate_idx, bulk_idx, surface_idx, n_configs,
    best_config, adsorption_energy_ev.
    """
    base = resolve_data_dir(data_dir)
    configs = pd.read_csv(base / DENSE_FILE, dtype={"system_id": str, "config_id": str})
    adsorbates = pd.read_csv(base / ADSORBATES_FILE, keep_default_na=False)
    configs = configs.dropna(subset=["adsorption_energy_eV"])
    best = configs.loc[configs.groupby("system_id")["adsorption_energy_eV"].idxmin()]
    counts = configs.groupby("system_id").size().rename("n_configs")
    table = best.merge(counts, left_on="system_id", right_index=True).merge(
        adsorbates[["adsorbate_idx", "formula"]].rename(columns={"formula": "adsorbate_formula"}),
        on="adsorbate_idx", how="left", validate="many_to_one")
    table = table.rename(columns={"config_id": "best_config", "adsorption_energy_eV": "adsorption_energy_ev"})
    columns = ["system_id", "adsorbate", "adsorbate_formula", "adsorbate_idx", "bulk_idx", "surface_idx",
               "n_configs", "best_config", "adsorption_energy_ev"]
    return table[columns].sort_values("system_id").reset_index(drop=True)


def properties_table() -> pd.DataFrame:
    rows = [
        {S.DATASET_ID: DENSE_DATASET, S.PROPERTY: "OC20-Dense adsorption energy, min over placements (RPBE)",
         S.PROPERTY_KEY: "adsorption_energy_ev", S.UNIT: "eV", S.TASK_TYPE: "regression",
         S.SOURCE_DB: "Open Catalyst (OC20-Dense / AdsorbML)", S.FAMILY: "adsorption_energy", S.TRANSFORM: "none"},
        {S.DATASET_ID: IS2RE_DATASET, S.PROPERTY: "relaxed total DFT energy of adsorbate+slab (OC20, RPBE)",
         S.PROPERTY_KEY: "total_energy_ev", S.UNIT: "eV per system", S.TASK_TYPE: "regression",
         S.SOURCE_DB: SOURCE_DB, S.FAMILY: "total_energy", S.TRANSFORM: "none"},
    ]
    return pd.DataFrame(rows, columns=[f.name for f in S.PROPERTIES_SCHEMA])


def dense_records(dense: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        S.RECORD_ID: DENSE_DATASET + ":" + dense["system_id"], S.DATASET_ID: DENSE_DATASET,
        S.MATERIAL_ID: dense["system_id"], S.FORMULA: dense["adsorbate_formula"], S.STRUCTURE_JSON: None,
        S.TARGET: dense["adsorption_energy_ev"].astype("float64"), S.ORIG_SPLIT: "val",
    })


def is2re_records(trajs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        S.RECORD_ID: IS2RE_DATASET + ":" + trajs["system_id"], S.DATASET_ID: IS2RE_DATASET,
        S.MATERIAL_ID: trajs["system_id"], S.FORMULA: trajs["formula"],
        S.STRUCTURE_JSON: trajs["initial_structure_json"], S.TARGET: trajs["e_relaxed_ev"].astype("float64"),
        S.ORIG_SPLIT: None,
    })


def load_oc_tables(data_dir: Path | None = None) -> dict[str, pd.DataFrame]:
    """The source-native tables: per-system trajectories (IS2RE sample) and OC20-Dense systems."""
    base = resolve_data_dir(data_dir)
    return {"oc20_trajectories": trajectories(read_frames(base / IS2RE_FILE)),
            "oc20_dense_systems": load_oc20_dense(base)}


def load_oc(data_dir: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long records and property rows for OC20-Dense adsorption energies and the IS2RE sample."""
    tables = load_oc_tables(data_dir)
    return _records(tables), properties_table()


def _records(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    records = pd.concat([dense_records(tables["oc20_dense_systems"]),
                         is2re_records(tables["oc20_trajectories"])], ignore_index=True)
    return records[[f.name for f in S.RECORDS_SCHEMA]]


def ingest_oc(work: WorkDir, data_dir: Path | None = None) -> SnapshotResult:
    """Write (unless unchanged) an ``oc`` raw snapshot from the OC files in ``data_dir`` under ``work.raw("oc")``."""
    base = resolve_data_dir(data_dir)
    tables = load_oc_tables(base)
    files = [IS2RE_FILE, DENSE_FILE, ADSORBATES_FILE]
    return write_snapshot(
        work, SOURCE, _records(tables), properties_table(),
        query={"files": files},
        extra={"input_hash": io.hash_bytes(*((base / f).read_bytes() for f in files))},
        tables=tables,
    )
