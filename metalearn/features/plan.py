"""Plan the features stage: which materials still need features, and featurizing one chunk of them.

Why a cache keyed by material: snapshots overlap heavily from one nightly run to the next, and the
bundled data repeats formulas across datasets. Each distinct material (formula, structure_json)
gets a ``material_key``; featurized materials live in immutable cache shards under
``WorkDir.feature_cache(FEATURE_SET_VERSION)``, so a new snapshot featurizes only materials never
seen before, and a run killed halfway resumes from the shards it finished.

Two ways to run the plan. :func:`plan_materials` keeps it in memory, for
:func:`metalearn.features.stage.build_features` (one process, no chunk files). :func:`plan_features`
also writes the pending materials as chunk files under ``WorkDir.feature_plans`` and returns
their paths, so an orchestrator can fan :func:`featurize_chunk` out over workers (each chunk is
pure and idempotent) and then call :func:`metalearn.features.assemble.assemble_features` once.

A published output that no longer matches its manifest (truncated, edited, half deleted) is not
"done": the plan sets it aside (``<dir>.corrupt-<UTC time>``) and featurizes again.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from metalearn.features import scratch
from metalearn.features.composition import FEATURE_SET_VERSION, featurize_compositions
from metalearn.features.integrity import locked, set_aside
from metalearn.features.keys import distinct_materials, key_bytes, positions
from metalearn.features.output import dictionary_columns, output_dir, verify_features
from metalearn.features.structure import featurize_structures
from metalearn.ingest.snapshot import RECORDS
from metalearn.io import hash_json, read_manifest, write_bytes_atomic, write_parquet_atomic
from metalearn.layout import WorkDir
from metalearn.schema import (
    DETAIL,
    FORMULA,
    MATERIAL_KEY,
    REASON,
    RECORD_ID,
    RECORD_KEYS_FILE,
    STRUCTURE_JSON,
)

MATERIALS_FILE = "materials.parquet"  # plan folder: material_key, formula of every material needed
CHUNKS = "chunks"
SHARD_GLOB = "shard-*.parquet"
_CHUNK_NAME = re.compile(r"chunk-\d+-([0-9a-f]{24})\.parquet$")


@dataclass(frozen=True)
class FeaturizeConfig:
    """Settings of the features stage.

    Attributes:
        chunk_size: materials per chunk (the unit of fan-out, retry and cache shard).
        max_error_rate: the stage fails if more than this fraction of materials are error rows,
            which catches a broken source or parser instead of training on what is left.
        structure_features: also compute structure features where a record has a structure.
            Off by default: they cost 20-60 ms per structure (the composition fast path costs
            ~10 us per formula), a structure that fails to featurize turns its material into an
            error row, and the shards stage joins only composition features, so no learner sees
            them yet. When True, materials are keyed by (formula, structure) and features.parquet
            gains the columns of :func:`metalearn.features.structure.structure_feature_names`.
            When False, structures are ignored and materials are keyed by formula only.
    """

    chunk_size: int = 5000
    max_error_rate: float = 0.05
    structure_features: bool = False

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
    done: bool = False  # the output already exists and is intact: nothing to do
    set_aside: str = ""  # where a corrupt earlier output was moved, if one was found

    @property
    def cfg(self) -> FeaturizeConfig:
        return FeaturizeConfig(**self.config)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeaturePlan:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class MaterialsPlan:
    """The in-memory plan: the same decisions as a FeaturePlan, with the tables instead of files."""

    plan: FeaturePlan  # no plan_dir, no chunk files; shards lists the cached shards only
    record_keys: pa.Table | None  # record_id, material_key in snapshot order
    needed: pa.Array | None  # sorted material keys of the snapshot
    pending: pa.Table | None  # material_key, formula, structure_json: not in the cache, sorted


def shard_digest(keys: list[str]) -> str:
    """What names a chunk's cache shard (and its chunk file): a hash of its material keys."""
    return hash_json(sorted(keys))[:24]


def shard_name(digest: str) -> str:
    return f"shard-{digest}.parquet"


def _cached(cache_dir: Path, needed: pa.Array) -> tuple[np.ndarray, list[str]]:
    """(needed keys found in the cache, the shards that hold them, in shard-name order)."""
    wanted = key_bytes(needed)
    covered = np.zeros(len(wanted), dtype=bool)
    shards = []
    for shard in sorted(cache_dir.glob(SHARD_GLOB)):
        try:
            keys = pq.read_table(shard, columns=[MATERIAL_KEY], use_threads=False).column(0)
        except (OSError, pa.ArrowException):  # torn or truncated: not a cache entry any more
            set_aside(shard)
            continue
        pos = positions(wanted, key_bytes(keys))
        new = pos[pos >= 0]
        new = new[~covered[new]]
        if len(new):
            covered[new] = True
            shards.append(str(shard))
    return covered, shards


def plan_materials(snapshot_dir: Path, work: WorkDir, cfg: FeaturizeConfig = FeaturizeConfig()) -> MaterialsPlan:
    """Find the snapshot's distinct materials and look them up in the cache; writes nothing.

    ``plan.done`` is True when an intact output for this snapshot and config exists. An output
    that fails :func:`metalearn.features.output.verify_features` is set aside first.
    """
    snapshot_dir = Path(snapshot_dir)
    manifest = read_manifest(snapshot_dir)
    out = output_dir(work, manifest.content_hash, cfg.structure_features)
    cache_dir = work.feature_cache(FEATURE_SET_VERSION)
    base = {"snapshot_dir": str(snapshot_dir), "snapshot_hash": manifest.content_hash,
            "source": manifest.source, "output_dir": str(out), "cache_dir": str(cache_dir),
            "plan_dir": "", "config": asdict(cfg)}
    moved = None
    if out.exists():
        with locked(work.feature_plans(FEATURE_SET_VERSION)):  # one run sets aside, none a fresh copy
            problems = verify_features(out) if out.exists() else ["published and set aside meanwhile"]
            if not problems:
                return MaterialsPlan(FeaturePlan(**base, done=True), None, None, None)
            moved = set_aside(out, problems)

    columns = [RECORD_ID, FORMULA] + ([STRUCTURE_JSON] if cfg.structure_features else [])
    path = snapshot_dir / f"{RECORDS}.parquet"  # TODO: schema.RECORDS_FILE, once the raw part names it
    records = pq.read_table(path, columns=columns, use_threads=False)
    structure = records.column(STRUCTURE_JSON).combine_chunks() if cfg.structure_features else None
    codes, materials = distinct_materials(records.column(FORMULA).combine_chunks(), structure)
    record_keys = pa.table({RECORD_ID: records.column(RECORD_ID),
                            MATERIAL_KEY: materials.column(MATERIAL_KEY).take(pa.array(codes))})
    materials = materials.sort_by(MATERIAL_KEY)
    needed = materials.column(MATERIAL_KEY).combine_chunks()
    covered, shards = _cached(cache_dir, needed)
    plan = FeaturePlan(**base, n_records=records.num_rows, n_materials=len(needed),
                       n_cached=int(covered.sum()), n_pending=int((~covered).sum()), shards=shards,
                       set_aside=str(moved or ""))
    return MaterialsPlan(plan, record_keys, needed, materials.filter(pa.array(~covered)))


def tidy(work: WorkDir) -> None:
    """Remove what killed runs left: stale plan folders, old temp files of the cache and outputs.

    Call under ``locked(work.feature_plans(FEATURE_SET_VERSION))``.
    """
    scratch.clean_stale(work.feature_plans(FEATURE_SET_VERSION))
    scratch.clean_old_tmp(work.feature_cache(FEATURE_SET_VERSION))
    scratch.clean_old_tmp(work.features(FEATURE_SET_VERSION))


def chunks_of(pending: pa.Table, chunk_size: int) -> list[pa.Table]:
    return [pending.slice(start, chunk_size) for start in range(0, pending.num_rows, chunk_size)]


def plan_features(snapshot_dir: Path, work: WorkDir, cfg: FeaturizeConfig = FeaturizeConfig()) -> FeaturePlan:
    """:func:`plan_materials`, then the pending materials as chunk files in a plan folder.

    Returns a plan whose ``chunks`` are the Parquet files (material_key, formula,
    structure_json) that :func:`featurize_chunk` must turn into cache shards before
    :func:`metalearn.features.assemble.assemble_features`. ``plan.done`` is True (and nothing
    is written) when an intact output for this snapshot and config already exists. Removes the
    plan folders of earlier runs that no live process owns (:mod:`metalearn.features.scratch`).
    """
    planned = plan_materials(snapshot_dir, work, cfg)
    if planned.plan.done:
        return planned.plan
    plan, pending = planned.plan, planned.pending
    pending_keys = pending.column(MATERIAL_KEY).to_pylist()
    plan_id = hash_json([plan.snapshot_hash, asdict(cfg), FEATURE_SET_VERSION, pending_keys])
    plans_root = work.feature_plans(FEATURE_SET_VERSION)
    plan_dir = plans_root / plan_id[:16]
    with locked(plans_root):
        scratch.claim(plan_dir)  # before tidying: this plan's folder is live, whoever left it
        tidy(work)
    if not (plan_dir / RECORD_KEYS_FILE).exists():
        write_parquet_atomic(plan_dir / MATERIALS_FILE, pa.table({MATERIAL_KEY: planned.needed}))
        write_parquet_atomic(plan_dir / RECORD_KEYS_FILE, planned.record_keys)
    chunks, chunk_rows, shards = [], [], list(plan.shards)
    for number, chunk in enumerate(chunks_of(pending, cfg.chunk_size)):
        digest = shard_digest(pending_keys[number * cfg.chunk_size: number * cfg.chunk_size + chunk.num_rows])
        path = plan_dir / CHUNKS / f"chunk-{number:05d}-{digest}.parquet"  # see featurize_chunk
        if not path.exists():
            write_parquet_atomic(path, chunk)
        chunks.append(str(path))
        chunk_rows.append(chunk.num_rows)
        shards.append(str(Path(plan.cache_dir) / shard_name(digest)))
    return FeaturePlan(**{**asdict(plan), "plan_dir": str(plan_dir), "chunks": chunks,
                          "chunk_rows": chunk_rows, "shards": shards})


def _arrays(frame: pd.DataFrame) -> dict[str, pa.Array]:
    """float64 columns of a frame as Arrow arrays, NaN as null (what ``Table.from_pandas`` does)."""
    values = np.ascontiguousarray(frame.to_numpy(dtype=np.float64).T)  # (F, N): one copy
    return {name: pa.array(column, from_pandas=True) for name, column in zip(frame.columns, values)}


def featurize_table(chunk: pa.Table) -> pa.Table:
    """One chunk (material_key, formula, structure_json) -> its cache shard: the keys, formulas,
    feature columns (float64, null where not computed) and the error reason/detail (null if none)."""
    formulas = pd.Series(chunk.column(FORMULA).to_pylist(), dtype=object)
    comp, comp_errors = featurize_compositions(formulas)
    reason = np.full(len(formulas), None, dtype=object)
    detail = np.full(len(formulas), None, dtype=object)
    reason[comp_errors.index.to_numpy(dtype=int)] = comp_errors[REASON].to_numpy()
    detail[comp_errors.index.to_numpy(dtype=int)] = comp_errors[DETAIL].to_numpy()
    columns = {MATERIAL_KEY: chunk.column(MATERIAL_KEY), FORMULA: chunk.column(FORMULA)}
    columns |= _arrays(comp)
    structures = chunk.column(STRUCTURE_JSON) if STRUCTURE_JSON in chunk.column_names else None
    if structures is not None and structures.null_count < len(structures):
        struct, struct_errors = featurize_structures(pd.Series(structures.to_pylist(), dtype=object))
        columns |= _arrays(struct)
        for i in struct_errors.index:  # the composition's error, if any, stays the reason
            first = reason[i] is None
            reason[i] = struct_errors.at[i, REASON] if first else reason[i]
            detail[i] = struct_errors.at[i, DETAIL] if first else f"{detail[i]}; {struct_errors.at[i, DETAIL]}"
    columns |= {REASON: pa.array(reason, pa.string()), DETAIL: pa.array(detail, pa.string())}
    return pa.table(columns)


def write_shard(cache_dir: Path, shard: pa.Table) -> Path:
    """Publish a featurized chunk in the cache (atomic; an existing shard of the same keys is kept).

    Encoded for speed: dictionary pages only for the few-valued columns, no statistics, no
    compression (twice the size of snappy, half the write time; the cache is one per feature set,
    the per-snapshot outputs are the compressed ones).
    """
    path = Path(cache_dir) / shard_name(shard_digest(shard.column(MATERIAL_KEY).to_pylist()))
    if not path.exists():
        buffer = pa.BufferOutputStream()
        pq.write_table(shard, buffer, compression="none", write_statistics=False,
                       use_dictionary=dictionary_columns(shard.column_names))
        write_bytes_atomic(path, buffer.getvalue().to_pybytes())
    return path


def featurize_chunk(chunk_path: Path, cache_dir: Path) -> Path:
    """Featurize one chunk into one cache shard (features and error rows); returns the shard.

    Pure and idempotent: the shard is named by the chunk's material keys (which the chunk's file
    name carries) and written atomically, so a retried or resumed chunk finds its finished shard
    and returns at once, even after the plan folder has been cleaned up.
    """
    chunk_path, cache_dir = Path(chunk_path), Path(cache_dir)
    named = _CHUNK_NAME.search(chunk_path.name)
    if named and (cache_dir / shard_name(named.group(1))).exists():
        return cache_dir / shard_name(named.group(1))
    plan_dir = chunk_path.parent.parent
    with locked(plan_dir.parent):
        mine = scratch.claim(plan_dir, create=False)  # keep the plan alive while this works on it
    try:
        return write_shard(cache_dir, featurize_table(pq.read_table(chunk_path, use_threads=False)))
    finally:
        if mine:
            scratch.release(plan_dir)
