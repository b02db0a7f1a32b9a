"""The shards stage: a snapshot and its features -> task shards (define, split, standardise, store).

``build_shards`` is a no-op when an intact shards directory for (snapshot, feature set, config)
exists. One that fails :func:`metalearn.shards.store.verify_shards` is set aside
(``<dir>.corrupt-<UTC time>``) and rebuilt; features that fail
:func:`metalearn.features.output.verify_features` are refused (rerun featurize, which repairs them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from metalearn import io
from metalearn import schema as S
from metalearn.features.composition import composition_feature_names
from metalearn.features.integrity import locked, set_aside
from metalearn.features.output import verify_features
from metalearn.ingest.snapshot import PROPERTIES, RECORDS, read_table
from metalearn.layout import WorkDir
from metalearn.shards.define import ShardConfig, config_key, define_tasks, feature_stats
from metalearn.shards.store import verify_shards, write_shards


@dataclass(frozen=True)
class ShardsResult:
    path: Path
    manifest: S.Manifest
    created: bool
    set_aside: Path | None = None  # where a corrupt earlier copy was moved, if one was found

    def summary(self) -> str:
        counts = self.manifest.counts
        per_split = ", ".join(f"{k}: {v}" for k, v in counts.get("tasks_per_split", {}).items())
        return (f"{counts.get('tasks', 0)} tasks ({per_split}); {counts.get('rows', 0)} rows, "
                f"{counts.get('families', 0)} families, {counts.get('groups', 0)} groups, "
                f"{counts.get('excluded', 0)} records excluded -> {self.path}"
                + ("" if self.created else " (unchanged)")
                + (f" (a corrupt copy was set aside at {self.set_aside})" if self.set_aside else ""))


def shards_dir(work: WorkDir, snapshot_dir: Path, features_dir: Path, cfg: ShardConfig) -> Path:
    """Where the shards of (snapshot, features, config) live; the feature set comes from the
    features manifest."""
    feature_set = io.read_manifest(Path(features_dir)).extra["feature_set_version"]
    return work.shards(Path(snapshot_dir).name, feature_set, config_key(cfg))


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    return pq.read_table(path, columns=columns, use_threads=False).to_pandas(use_threads=False)  # one thread


def _join_features(records: pd.DataFrame, features_dir: Path) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """Attach composition features to records through the features stage's record -> material key map.

    Records whose featurization failed are returned separately: they are errors of the features
    stage (with reasons in its errors.parquet), reported in the shards' excluded table, not lost.
    """
    names = composition_feature_names()
    features = _read(features_dir / S.FEATURES_FILE, [S.MATERIAL_KEY, *names])
    keys = _read(features_dir / S.RECORD_KEYS_FILE, [S.RECORD_ID, S.MATERIAL_KEY])
    keyed = records.merge(keys, on=S.RECORD_ID, how="left", validate="one_to_one")
    joined = keyed.merge(features, on=S.MATERIAL_KEY, how="left", validate="many_to_one")
    missing = joined[names].isna().all(axis=1)
    return joined[~missing].reset_index(drop=True), names, joined.loc[missing, [S.RECORD_ID, S.DATASET_ID]]


def build_shards(snapshot_dir: Path, features_dir: Path, work: WorkDir, cfg: ShardConfig | None = None
                 ) -> ShardsResult:
    """Build (or find) the task shards for one snapshot + feature set + config.

    Raises:
        ValueError: the features do not match their manifest (rerun featurize to repair them).

    Example:
        >>> result = build_shards(snapshot_dir, features_dir, WorkDir.resolve(root), ShardConfig())
        >>> read_index(result.path)[["task_id", "split", "n_rows"]]
    """
    snapshot_dir, features_dir, cfg = Path(snapshot_dir), Path(features_dir), cfg or ShardConfig()
    final = shards_dir(work, snapshot_dir, features_dir, cfg)
    moved = None
    if final.exists():
        with locked(final.parent):  # one run sets aside, none a copy another run just published
            problems = verify_shards(final) if final.exists() else ["published and set aside meanwhile"]
            if not problems:
                return ShardsResult(final, io.read_manifest(final), created=False)
            moved = set_aside(final, problems)
    problems = verify_features(features_dir)
    if problems:
        raise ValueError(f"features {features_dir} do not match their manifest ({'; '.join(problems[:3])}); "
                         "rerun featurize, which sets them aside and rebuilds them")
    snap_manifest = io.read_manifest(snapshot_dir)
    feat_manifest = io.read_manifest(features_dir)
    records, properties = read_table(snapshot_dir, RECORDS), read_table(snapshot_dir, PROPERTIES)
    records, names, failed = _join_features(records, features_dir)
    rows, index, excluded = define_tasks(records, properties, cfg)
    if len(failed):
        excluded = pd.concat([excluded, failed.assign(**{S.REASON: "featurization_failed"})], ignore_index=True)
    stats = feature_stats(rows, index, names)
    table = rows[S.TASK_ROW_COLUMNS + names].copy()
    table[names] = table[names].astype(np.float32)

    per_split = index[S.SPLIT].value_counts().reindex(list(S.SPLITS), fill_value=0).to_dict()
    manifest = S.Manifest(
        stage="shards", source=snap_manifest.source,
        content_hash=io.hash_bytes(io.hash_frame(table).encode(), io.hash_frame(index).encode()),
        n_rows=len(table), created=datetime.now(UTC).isoformat(),
        inputs={"snapshot": snap_manifest.content_hash, "features": feat_manifest.content_hash},
        query={"config": asdict(cfg)}, versions=snap_manifest.versions,
        database_version=snap_manifest.database_version,
        counts={"tasks": len(index), "rows": len(table), "tasks_per_split": per_split,
                "families": int(index[S.FAMILY].nunique()), "groups": int(index[S.GROUP].nunique()),
                "properties": int(index[S.DATASET_ID].nunique()), "excluded": len(excluded),
                "excluded_reasons": excluded[S.REASON].value_counts().to_dict() if len(excluded) else {},
                "task_types": index[S.TASK_TYPE].value_counts().to_dict()},
        extra={"feature_names": names, "snapshot_id": snapshot_dir.name, "features_id": features_dir.name},
    )
    manifest = write_shards(final, table, index, stats, excluded, manifest)
    return ShardsResult(final, manifest, created=True, set_aside=moved)
