"""Reading and writing task shards on disk.

Layout of one shards directory (``WorkDir.shards(snapshot_id, feature_set, config_key)``)::

    data/                  task rows, Parquet partitioned by task_key (hive): schema.TASK_ROW_COLUMNS
                           + feature columns (float32)
    tasks.parquet          the tasks index, one row per task (property, group, unit, split, ...)
    feature_stats.parquet  feature, mean, std over meta-train tasks only
    excluded.parquet       record_id, dataset_id, reason: every record that is in no task
    manifest.json          stage "shards", with the sha256 of every file above

Threads: one (``use_threads=False``, ``nthreads=1``) for every Arrow call here, deliberately: the
stages share small machines with other processes, and one writer per worker is the unit of scale.

Why a partitioned dataset: a sampler for one split reads only the partitions of its tasks, and
the nightly run of a bigger snapshot does not have to hold every task in memory to write it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from metalearn import io
from metalearn import schema as S
from metalearn.features.integrity import check_output, is_set_aside, with_digests
from metalearn.ingest.snapshot import FILE_DIGESTS
from metalearn.layout import WorkDir


def write_shards(final: Path, table: pd.DataFrame, index: pd.DataFrame, stats: pd.DataFrame,
                 excluded: pd.DataFrame, manifest: S.Manifest) -> S.Manifest:
    """Publish one shards directory atomically (a no-op if ``final`` appears meanwhile).

    Returns the manifest as written: ``manifest`` plus the digests of every file.
    """
    with io.staged_dir(final) as tmp:
        ds.write_dataset(pa.Table.from_pandas(table, preserve_index=False, nthreads=1), tmp / S.TASK_DATA_DIR,
                         format="parquet",
                         partitioning=ds.partitioning(pa.schema([(S.TASK_KEY, pa.string())]), flavor="hive"),
                         existing_data_behavior="error", use_threads=False)
        io.write_parquet_atomic(tmp / S.TASKS_FILE, index)
        io.write_parquet_atomic(tmp / S.FEATURE_STATS_FILE, stats)
        io.write_parquet_atomic(tmp / S.EXCLUDED_FILE, excluded.astype(str))
        manifest = with_digests(manifest, tmp)
        io.write_manifest(tmp, manifest)
    return manifest


def read_index(shards: Path) -> pd.DataFrame:
    return io.read_parquet(Path(shards) / S.TASKS_FILE)


def read_feature_stats(shards: Path) -> pd.DataFrame:
    """feature, mean, std (meta-train tasks only): the standardisation a model ships with."""
    return io.read_parquet(Path(shards) / S.FEATURE_STATS_FILE)


def read_task_rows(shards: Path, task_keys: list[str]) -> pd.DataFrame:
    """Rows of the given tasks only (partition pruning: other tasks' files are not opened)."""
    dataset = ds.dataset(Path(shards) / S.TASK_DATA_DIR, format="parquet", partitioning="hive")
    table = dataset.to_table(filter=ds.field(S.TASK_KEY).isin(task_keys), use_threads=False)
    return table.to_pandas(use_threads=False)


def verify_shards(path: Path) -> list[str]:
    """Problems of a published shards directory; empty when every file matches its manifest.

    Checks each file's sha256 against the manifest (one sequential read, no Parquet
    decoding). Shards written before digests were recorded are checked by opening every Parquet
    footer and comparing the index's and the rows' counts with the manifest.
    """
    path = Path(path)
    try:
        manifest = io.read_manifest(path)
    except (OSError, ValueError, TypeError):
        return check_output(path)  # reports the manifest itself
    problems = check_output(path, {S.TASKS_FILE: manifest.counts["tasks"]} if "tasks" in manifest.counts else {})
    if problems or FILE_DIGESTS in manifest.extra:
        return problems
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in (path / S.TASK_DATA_DIR).rglob("*.parquet"))
    if rows != manifest.n_rows:
        return [f"{path / S.TASK_DATA_DIR}: {rows} rows, manifest says {manifest.n_rows}"]
    return []


def complete_shards(work: WorkDir) -> list[Path]:
    """Shards directories with a manifest (not staged by a running build, not set aside)."""
    return [p for p in work.all_shards()
            if not p.name.startswith(io.TMP_PREFIX) and not is_set_aside(p) and (p / io.MANIFEST).exists()]


def latest_shards(work: WorkDir) -> Path | None:
    """The most recently written complete shards directory under the work directory."""
    candidates = complete_shards(work)
    return max(candidates, key=lambda p: (p / io.MANIFEST).stat().st_mtime) if candidates else None
