"""The features stage: snapshot -> features.parquet + errors.parquet, with an incremental cache.

Why a cache keyed by material: snapshots overlap heavily from one nightly run to the next, and the
bundled data repeats formulas across datasets. Each distinct material (formula, structure_json)
gets a ``material_key``; featurized materials live in immutable cache shards under
``<workdir>/features/<FEATURE_SET_VERSION>/cache/``, so a new snapshot featurizes only materials
never seen before, and a run killed halfway resumes from the shards it finished.

Why chunks: :func:`plan_features` writes the pending materials as chunk files and returns their
paths, so an orchestrator can fan :func:`featurize_chunk` out over workers (each chunk is pure and
idempotent) and then call :func:`assemble_features` once. :func:`build_features` runs the same
three steps sequentially. Memory stays bounded by the chunk size throughout.

Output (immutable, atomically published, a no-op when it exists)::

    <workdir>/features/<FEATURE_SET_VERSION>/<snapshot content hash[:16]>[-nostruct]/
        features.parquet     material_key, formula, feature columns (float64)
        errors.parquet       material_key, formula, reason, detail
        record_keys.parquet  record_id, material_key (joins the snapshot's records to features)
        manifest.json        metalearn.schema.Manifest, stage "features"

Every distinct material is in exactly one of features.parquet and errors.parquet.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from metalearn.features.assemble import assemble_features
from metalearn.features.composition import (
    FEATURE_SET_VERSION,
    composition_feature_names,
    featurize_compositions,
    featurize_compositions_matminer,
)
from metalearn.features.structure import featurize_structures, structure_feature_names
from metalearn.io import hash_json, read_manifest, read_parquet, write_parquet_atomic
from metalearn.schema import DETAIL, FORMULA, MATERIAL_KEY, REASON, RECORD_ID, STRUCTURE_JSON

__all__ = [
    "FEATURE_SET_VERSION",
    "FeaturePlan",
    "FeaturizeConfig",
    "assemble_features",
    "build_features",
    "composition_feature_names",
    "featurize_chunk",
    "featurize_compositions",
    "featurize_compositions_matminer",
    "featurize_structures",
    "material_key",
    "plan_features",
    "structure_feature_names",
]

RECORDS_FILE = "records.parquet"
MATERIALS_FILE = "materials.parquet"
RECORD_KEYS_FILE = "record_keys.parquet"
SHARD_GLOB = "shard-*.parquet"


@dataclass(frozen=True)
class FeaturizeConfig:
    """Settings of the features stage.

    Attributes:
        chunk_size: materials per chunk (the unit of fan-out, retry and cache shard).
        max_error_rate: the stage fails if more than this fraction of materials are error rows,
            which catches a broken source or parser instead of training on what is left.
        structure_features: also compute structure features where a record has a structure.
            When False, structures are ignored and materials are keyed by formula only.
    """

    chunk_size: int = 5000
    max_error_rate: float = 0.05
    structure_features: bool = True

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ValueError(f"max_error_rate must be in [0, 1], got {self.max_error_rate}")


@dataclass(frozen=True)
class FeaturePlan:
    """What :func:`plan_features` decided: JSON-able, so it can travel between Prefect tasks."""

    snapshot_dir: str
    snapshot_hash: str
    source: str
    output_dir: str
    cache_dir: str
    plan_dir: str
    config: dict
    n_records: int = 0
    n_materials: int = 0
    n_cached: int = 0
    n_pending: int = 0
    chunks: list[str] = field(default_factory=list)  # chunk files still to featurize
    chunk_rows: list[int] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)  # cache shards holding every material, once done
    done: bool = False  # the output already exists: nothing to do

    @property
    def cfg(self) -> FeaturizeConfig:
        return FeaturizeConfig(**self.config)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeaturePlan:
        return cls(**json.loads(text))


def material_key(formula: str, structure_json: str | None) -> str:
    """Content hash of one material under the current feature set (the feature-cache key).

    sha256 of the JSON list ``[FEATURE_SET_VERSION, formula, structure_json]`` (what
    ``metalearn.io.hash_json`` gives for it), first 32 hex digits.
    """
    text = json.dumps([FEATURE_SET_VERSION, formula, structure_json])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def material_keys(records: pd.DataFrame, cfg: FeaturizeConfig = FeaturizeConfig()) -> pd.Series:
    """``material_key`` of every record (aligned to ``records``), hashing each distinct
    (formula, structure) pair once; structures count only if ``cfg.structure_features``."""
    if records[FORMULA].isna().any():
        raise ValueError(f"{int(records[FORMULA].isna().sum())} records have no formula")
    f_codes, formulas = pd.factorize(records[FORMULA])
    if cfg.structure_features:
        s_codes, structures = pd.factorize(records[STRUCTURE_JSON])  # null -> -1
    else:
        s_codes, structures = np.full(len(records), -1), pd.Index([])
    base = len(structures) + 1
    formulas, structures = formulas.to_numpy(), structures.to_numpy()
    p_codes, pairs = pd.factorize(f_codes.astype(np.int64) * base + (s_codes + 1))
    keys = [material_key(formulas[p // base], structures[p % base - 1] if p % base else None) for p in pairs]
    return pd.Series(np.asarray(keys, dtype=object)[p_codes], index=records.index, name=MATERIAL_KEY)


def _feature_root(workdir: Path) -> Path:
    return Path(workdir) / "features" / FEATURE_SET_VERSION


def _shard_name(keys: pd.Series) -> str:
    return f"shard-{hash_json(sorted(keys.tolist()))[:24]}.parquet"


def plan_features(snapshot_dir: Path, workdir: Path, cfg: FeaturizeConfig = FeaturizeConfig()) -> FeaturePlan:
    """Find the snapshot's distinct materials, look them up in the cache, chunk the rest.

    Returns a plan whose ``chunks`` are the Parquet files (material_key, formula,
    structure_json) that :func:`featurize_chunk` must turn into cache shards before
    :func:`assemble_features`. ``plan.done`` is True (and nothing is written) when the output
    for this snapshot and config already exists.
    """
    snapshot_dir = Path(snapshot_dir)
    manifest = read_manifest(snapshot_dir)
    root = _feature_root(workdir)
    suffix = "" if cfg.structure_features else "-nostruct"
    output_dir = root / f"{manifest.content_hash[:16]}{suffix}"
    cache_dir = root / "cache"
    base = {
        "snapshot_dir": str(snapshot_dir),
        "snapshot_hash": manifest.content_hash,
        "source": manifest.source,
        "output_dir": str(output_dir),
        "cache_dir": str(cache_dir),
        "config": asdict(cfg),
    }
    if (output_dir / "manifest.json").exists():
        return FeaturePlan(**base, plan_dir="", done=True)

    records = read_parquet(snapshot_dir / RECORDS_FILE, columns=[RECORD_ID, FORMULA, STRUCTURE_JSON])
    records[MATERIAL_KEY] = material_keys(records, cfg)
    if not cfg.structure_features:
        records[STRUCTURE_JSON] = None
    materials = (
        records.drop_duplicates(MATERIAL_KEY)[[MATERIAL_KEY, FORMULA, STRUCTURE_JSON]]
        .sort_values(MATERIAL_KEY)
        .reset_index(drop=True)
    )
    needed = set(materials[MATERIAL_KEY])
    cached: set[str] = set()
    shards: list[str] = []
    for shard in sorted(cache_dir.glob(SHARD_GLOB)):
        keys = set(pq.read_table(shard, columns=[MATERIAL_KEY]).column(0).to_pylist()) & (needed - cached)
        if keys:
            cached |= keys
            shards.append(str(shard))
    pending = materials[~materials[MATERIAL_KEY].isin(cached)].reset_index(drop=True)

    plan_id = hash_json(
        [manifest.content_hash, asdict(cfg), FEATURE_SET_VERSION, pending[MATERIAL_KEY].tolist()]
    )
    plan_dir = root / "plans" / plan_id[:16]
    if not (plan_dir / RECORD_KEYS_FILE).exists():
        write_parquet_atomic(plan_dir / MATERIALS_FILE, materials[[MATERIAL_KEY, FORMULA]])
        write_parquet_atomic(plan_dir / RECORD_KEYS_FILE, records[[RECORD_ID, MATERIAL_KEY]])
    chunks, chunk_rows = [], []
    for number, start in enumerate(range(0, len(pending), cfg.chunk_size)):
        chunk = pending.iloc[start : start + cfg.chunk_size]
        path = plan_dir / "chunks" / f"chunk-{number:05d}.parquet"
        if not path.exists():
            write_parquet_atomic(path, chunk)
        chunks.append(str(path))
        chunk_rows.append(len(chunk))
        shards.append(str(cache_dir / _shard_name(chunk[MATERIAL_KEY])))
    return FeaturePlan(
        **base,
        plan_dir=str(plan_dir),
        n_records=len(records),
        n_materials=len(materials),
        n_cached=len(cached),
        n_pending=len(pending),
        chunks=chunks,
        chunk_rows=chunk_rows,
        shards=shards,
    )


def featurize_chunk(chunk_path: Path, cache_dir: Path) -> Path:
    """Featurize one chunk into one cache shard (features and error rows); returns the shard.

    Pure and idempotent: the shard is named by the chunk's material keys and written atomically,
    so a retried or resumed chunk finds its finished shard and returns at once.
    """
    chunk = read_parquet(Path(chunk_path))
    shard = Path(cache_dir) / _shard_name(chunk[MATERIAL_KEY])
    if shard.exists():
        return shard
    comp, comp_errors = featurize_compositions(chunk[FORMULA])
    out = pd.concat([chunk[[MATERIAL_KEY, FORMULA]], comp], axis=1)
    out[REASON] = comp_errors[REASON].reindex(chunk.index).astype("string")
    out[DETAIL] = comp_errors[DETAIL].reindex(chunk.index).astype("string")
    has_structure = chunk[STRUCTURE_JSON].notna()
    if has_structure.any():
        struct, struct_errors = featurize_structures(chunk[STRUCTURE_JSON].where(has_structure, None))
        out = pd.concat([out, struct], axis=1)
        first = out[REASON].isna()
        for i in struct_errors.index:  # the composition's error, if any, stays the reason
            detail = struct_errors.at[i, DETAIL]
            out.at[i, REASON] = struct_errors.at[i, REASON] if first[i] else out.at[i, REASON]
            out.at[i, DETAIL] = detail if first[i] else f"{out.at[i, DETAIL]}; {detail}"
    write_parquet_atomic(shard, out)
    return shard


def build_features(
    snapshot_dir: Path,
    workdir: Path,
    cfg: FeaturizeConfig = FeaturizeConfig(),
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """plan -> every chunk, sequentially -> assemble. Returns the features directory.

    Args:
        on_progress: called as ``on_progress(done, total)`` in materials featurized this run.

    Example:
        >>> out = build_features(snapshot_dir, workdir, FeaturizeConfig(chunk_size=2000))
        >>> features = pd.read_parquet(out / "features.parquet")
    """
    plan = plan_features(snapshot_dir, workdir, cfg)
    if plan.done:
        return Path(plan.output_dir)
    done = 0
    if on_progress:
        on_progress(0, plan.n_pending)
    for chunk, rows in zip(plan.chunks, plan.chunk_rows):
        featurize_chunk(Path(chunk), Path(plan.cache_dir))
        done += rows
        if on_progress:
            on_progress(done, plan.n_pending)
    return assemble_features(plan)
