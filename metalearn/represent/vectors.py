"""Representation vectors for every material of a set of task shards: what the few-shot heads learn from.

The leakage rule, decided here from the shards' splits (no transfer feature may have been fitted on
the row it describes, and no task may be scored on a representation that saw it):

- every dataset of a ``meta-test-property`` family is left out of the representation;
- every (family, material) of a ``meta-test-chemistry`` task is removed from the training rows of
  every dataset of that family (the held-out chemistry of a training property, and the same
  compound measured by another source of that property);
- training rows get their *out-of-fold* member predictions; every other material gets the full
  members' predictions (a model that never saw it).

Output, content-keyed (representation key + shards content hash), atomically published::

    representations/<representation key>/                     the fitted members (stage.py)
    representations/<representation key>/vectors-<shards hash[:12]>/
        vectors.parquet   reduced_formula, v000..v{P-1}: standardised vectors of every shards material
        columns.json      per column: dataset_id, family (a head may mask a task's own family)

Example:
    >>> out = represent_shards(work, snapshot_dir, shards_dir)
    >>> vectors = Vectors.load(out.vectors_dir)
    >>> x = vectors.matrix(task_rows["reduced_formula"])       # (n, P) float32
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metalearn import io
from metalearn import schema as S
from metalearn.features.composition import composition_feature_names
from metalearn.ingest.snapshot import list_snapshots, read_table
from metalearn.layout import WorkDir
from metalearn.represent.rows import MATERIAL_KEY, training_rows
from metalearn.represent.stage import fit_or_load
from metalearn.represent.transfer import TransferConfig, TransferRepresentation
from metalearn.shards.store import read_index, read_task_rows

VECTORS_FILE = "vectors.parquet"
COLUMNS_FILE = "columns.json"
COLUMN_PREFIX = "v"


@dataclass(frozen=True)
class ShardsRepresentation:
    """What :func:`represent_shards` built: the representation and the shards' vectors."""

    representation_dir: Path
    vectors_dir: Path
    key: str
    created: bool
    n_members: int
    excluded_families: tuple[str, ...]
    n_held_out_materials: int
    seconds: float
    size_bytes: int


def leakage_rule(shards_dir: Path) -> tuple[tuple[str, ...], pd.DataFrame, pd.DataFrame]:
    """(families to leave out, held-out (family, reduced formula) pairs, the shards' rows) of a set of shards."""
    index = read_index(shards_dir)
    excluded = tuple(sorted(set(index.loc[index[S.SPLIT] == S.META_TEST_PROPERTY, S.FAMILY])))
    rows = read_task_rows(shards_dir, index[S.TASK_KEY].tolist())
    rows = rows.merge(index[[S.TASK_KEY, S.FAMILY, S.SPLIT]], on=S.TASK_KEY, how="left")
    held = rows.loc[rows[S.SPLIT] == S.META_TEST_CHEMISTRY, [S.FAMILY, S.REDUCED_FORMULA]].drop_duplicates()
    return excluded, held, rows


def snapshot_of_shards(work: WorkDir, shards_dir: Path) -> Path:
    """The snapshot a set of shards was cut from (its source and content hash are in the shards' manifest)."""
    manifest = io.read_manifest(Path(shards_dir))
    for snapshot in list_snapshots(work, manifest.source):
        if io.read_manifest(snapshot).content_hash == manifest.inputs.get("snapshot"):
            return snapshot
    raise FileNotFoundError(f"the snapshot of {shards_dir} ({manifest.source}, content "
                            f"{str(manifest.inputs.get('snapshot'))[:16]}) is no longer under {work.raw_root()}")


def represent_shards(work: WorkDir, snapshot_dir: Path, shards_dir: Path, cfg: TransferConfig | None = None,
                     log=None) -> ShardsRepresentation:
    """Fit (or load) the representation the shards' splits allow and write the vectors of their materials."""
    cfg = cfg or TransferConfig()
    excluded, held, shard_rows = leakage_rule(Path(shards_dir))
    records = read_table(Path(snapshot_dir), "records")
    properties = read_table(Path(snapshot_dir), "properties")
    rows, _ = training_rows(records, properties, exclude_families=excluded, min_rows=cfg.min_member_rows)
    held_pairs = pd.MultiIndex.from_frame(held.rename(columns={S.REDUCED_FORMULA: MATERIAL_KEY}))
    keep = ~pd.MultiIndex.from_frame(rows[[S.FAMILY, MATERIAL_KEY]]).isin(held_pairs)
    rows = rows[keep].reset_index(drop=True)
    # Composition features of every material involved, from the shards where they have them.
    names = composition_feature_names()
    result = fit_or_load(work, rows, cfg, log=log,
                         extra={"exclude_families": list(excluded), "held_out_materials": int((~keep).sum())})
    rep = result.representation
    shards_hash = io.read_manifest(Path(shards_dir)).content_hash[:12]
    out = result.path / f"vectors-{shards_hash}"
    if not (out / io.MANIFEST).exists():
        materials = shard_rows.drop_duplicates(S.REDUCED_FORMULA)
        keys = materials[S.REDUCED_FORMULA].to_numpy(dtype=object)
        z = rep.standardise(rep.represent(keys, materials[names].to_numpy(np.float64)))
        write_vectors(out, keys, z, rep, {"representation": result.key, "shards": shards_hash})
    return ShardsRepresentation(result.path, out, result.key, result.created, len(rep.members_), excluded,
                                int((~keep).sum()), result.seconds, result.size_bytes)


def write_vectors(out: Path, keys: np.ndarray, z: np.ndarray, rep: TransferRepresentation, inputs: dict) -> None:
    columns = [f"{COLUMN_PREFIX}{j:03d}" for j in range(z.shape[1])]
    table = pd.DataFrame(z.astype(np.float32), columns=columns)
    table.insert(0, S.REDUCED_FORMULA, keys)
    with io.staged_dir(out) as tmp:
        io.write_parquet_atomic(tmp / VECTORS_FILE, table)
        io.write_json_atomic(tmp / COLUMNS_FILE, [{"column": c, S.DATASET_ID: m.dataset_id, S.FAMILY: m.family}
                                                  for c, m in zip(columns, rep.members_)])
        io.write_manifest(tmp, S.Manifest(stage="vectors", source=inputs["shards"],
                                          content_hash=io.hash_frame(table), n_rows=len(table),
                                          created=pd.Timestamp.now("UTC").isoformat(), inputs=inputs))


class Vectors:
    """Standardised representation vectors by reduced formula, and which member each column is."""

    def __init__(self, table: pd.DataFrame, columns: list[dict]) -> None:
        self.columns = columns
        self.names = [c["column"] for c in columns]
        self.families = [c[S.FAMILY] for c in columns]
        self._by_formula = pd.Series(np.arange(len(table)), index=table[S.REDUCED_FORMULA].to_numpy())
        self._values = table[self.names].to_numpy(np.float32)

    @classmethod
    def load(cls, path: Path) -> Vectors:
        path = Path(path)
        return cls(io.read_parquet(path / VECTORS_FILE), json.loads((path / COLUMNS_FILE).read_text()))

    @property
    def n_features(self) -> int:
        return len(self.names)

    def matrix(self, reduced_formulas) -> np.ndarray:
        """(n,) reduced formulas -> (n, P) float32 vectors; a formula without a vector is an error."""
        at = self._by_formula.reindex(pd.Index(np.asarray(reduced_formulas, dtype=object)))
        if at.isna().any():
            missing = at.index[at.isna()][:3].tolist()
            raise KeyError(f"{int(at.isna().sum())} materials have no representation vector, e.g. {missing}")
        return self._values[at.to_numpy(dtype=np.int64)]

    def mask_for(self, family: str) -> np.ndarray:
        """(P,) True for the columns a task of ``family`` may use: not its own property's members."""
        return np.array([f != family for f in self.families])
