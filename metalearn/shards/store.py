"""Reading and writing task shards on disk (the layout is described in shards.py).

Why a partitioned dataset: a sampler for one split reads only the partitions of its tasks, and
the nightly run of a bigger snapshot does not have to hold every task in memory to write it.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from metalearn import io
from metalearn import schema as S
from metalearn.shards.define import (
    GROUP,
    REDUCED_FORMULA,
    SPLIT,
    TASK_ID,
    TASK_KEY,
    Y_RAW,
    ShardConfig,
    ShardsResult,
    Y,
    config_hash,
    define_tasks,
    feature_stats,
)
from metalearn.shards.split import SPLITS

TASKS = "tasks.parquet"
FEATURE_STATS = "feature_stats.parquet"
EXCLUDED = "excluded.parquet"
DATA = "data"
ROW_COLUMNS = [TASK_KEY, TASK_ID, S.RECORD_ID, S.FORMULA, REDUCED_FORMULA, GROUP, S.MATERIAL_KEY, Y, Y_RAW]


def shards_dir(workdir: Path, snapshot_dir: Path, features_dir: Path, cfg: ShardConfig) -> Path:
    return Path(workdir) / "shards" / Path(snapshot_dir).name / Path(features_dir).parent.name / config_hash(cfg)


def _join_features(records: pd.DataFrame, features_dir: Path) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """Attach composition features to records through the features stage's record -> material key map.

    Records whose featurization failed are returned separately: they are errors of the features
    stage (with reasons in its errors.parquet), reported in the shards' excluded table, not lost.
    """
    from metalearn.features.plan import composition_feature_names

    names = composition_feature_names()
    features = io.read_parquet(features_dir / "features.parquet", columns=[S.MATERIAL_KEY, *names])
    keys = io.read_parquet(features_dir / "record_keys.parquet", columns=[S.RECORD_ID, S.MATERIAL_KEY])
    keyed = records.merge(keys, on=S.RECORD_ID, how="left", validate="one_to_one")
    joined = keyed.merge(features, on=S.MATERIAL_KEY, how="left", validate="many_to_one")
    missing = joined[names].isna().all(axis=1)
    return joined[~missing].reset_index(drop=True), names, joined.loc[missing, [S.RECORD_ID, S.DATASET_ID]]


def write_shards(snapshot_dir: Path, features_dir: Path, workdir: Path, cfg: ShardConfig) -> ShardsResult:
    """Define tasks, split them, standardise with meta-train stats and publish atomically (no-op if present)."""
    final = shards_dir(workdir, snapshot_dir, features_dir, cfg)
    if (final / io.MANIFEST).exists():
        return ShardsResult(final, io.read_manifest(final), created=False)
    snap_manifest = io.read_manifest(snapshot_dir)
    feat_manifest = io.read_manifest(features_dir)
    records = io.read_parquet(snapshot_dir / "records.parquet")
    properties = io.read_parquet(snapshot_dir / "properties.parquet")
    records, names, failed = _join_features(records, features_dir)
    rows, index, excluded = define_tasks(records, properties, cfg)
    if len(failed):
        excluded = pd.concat([excluded, failed.assign(reason="featurization_failed")], ignore_index=True)
    stats = feature_stats(rows, index, names)
    table = rows[ROW_COLUMNS + names].copy()
    table[names] = table[names].astype(np.float32)

    per_split = index[SPLIT].value_counts().reindex(list(SPLITS), fill_value=0).to_dict()
    manifest = S.Manifest(
        stage="shards", source=snap_manifest.source,
        content_hash=io.hash_bytes(io.hash_frame(table).encode(), io.hash_frame(index).encode()),
        n_rows=len(table), created=datetime.now(UTC).isoformat(),
        inputs={"snapshot": snap_manifest.content_hash, "features": feat_manifest.content_hash},
        query={"config": asdict(cfg)}, versions=snap_manifest.versions,
        database_version=snap_manifest.database_version,
        counts={"tasks": len(index), "rows": len(table), "tasks_per_split": per_split,
                "families": int(index[S.FAMILY].nunique()), "groups": int(index[GROUP].nunique()),
                "properties": int(index[S.DATASET_ID].nunique()), "excluded": len(excluded),
                "excluded_reasons": excluded["reason"].value_counts().to_dict() if len(excluded) else {},
                "task_types": index[S.TASK_TYPE].value_counts().to_dict()},
        extra={"feature_names": names, "snapshot_id": Path(snapshot_dir).name,
               "features_id": Path(features_dir).name},
    )
    with io.staged_dir(final) as tmp:
        ds.write_dataset(pa.Table.from_pandas(table, preserve_index=False), tmp / DATA, format="parquet",
                         partitioning=ds.partitioning(pa.schema([(TASK_KEY, pa.string())]), flavor="hive"),
                         existing_data_behavior="error")
        io.write_parquet_atomic(tmp / TASKS, index)
        io.write_parquet_atomic(tmp / FEATURE_STATS, stats)
        io.write_parquet_atomic(tmp / EXCLUDED, excluded.astype(str))
        io.write_manifest(tmp, manifest)
    return ShardsResult(final, manifest, created=True)


def read_index(shards: Path) -> pd.DataFrame:
    return io.read_parquet(Path(shards) / TASKS)


def read_task_rows(shards: Path, task_keys: list[str]) -> pd.DataFrame:
    """Rows of the given tasks only (partition pruning: other tasks' files are not opened)."""
    dataset = ds.dataset(Path(shards) / DATA, format="parquet", partitioning="hive")
    table = dataset.to_table(filter=ds.field(TASK_KEY).isin(task_keys))
    return table.to_pandas()


def latest_shards(workdir: Path) -> Path | None:
    """The most recently written complete shards directory under the workdir."""
    candidates = [p.parent for p in (Path(workdir) / "shards").glob(f"*/*/*/{io.MANIFEST}")]
    return max(candidates, key=lambda p: (p / io.MANIFEST).stat().st_mtime) if candidates else None
