"""Assemble the features stage's output from cache shards: streaming, atomic, immutable.

Split from :mod:`metalearn.features.plan` because publishing has its own reasons to change (layout,
manifest, error budget). Memory is bounded by one shard at a time: rows are streamed into a
Parquet writer inside an :func:`metalearn.io.staged_dir`, so a failure (a missing shard, too many
errors) publishes nothing.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from metalearn.features.composition import FEATURE_SET_VERSION, composition_feature_names
from metalearn.io import (
    hash_bytes,
    hash_frame,
    read_parquet,
    staged_dir,
    write_manifest,
    write_parquet_atomic,
)
from metalearn.schema import DETAIL, FORMULA, MATERIAL_KEY, REASON, Manifest

if TYPE_CHECKING:
    from metalearn.features.plan import FeaturePlan

FEATURES_FILE = "features.parquet"
ERRORS_FILE = "errors.parquet"
RECORD_KEYS_FILE = "record_keys.parquet"
MATERIALS_FILE = "materials.parquet"
ERROR_COLUMNS = [MATERIAL_KEY, FORMULA, REASON, DETAIL]


def feature_columns(structure_features: bool) -> list[str]:
    """Feature columns of features.parquet, in order."""
    if not structure_features:
        return composition_feature_names()
    from metalearn.features.structure import structure_feature_names

    return composition_feature_names() + structure_feature_names()


def _versions() -> dict[str, str]:
    out = {"feature_set": FEATURE_SET_VERSION}
    for package in ("matminer", "pymatgen", "pymatgen-core", "numpy", "pandas", "pyarrow"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def assemble_features(plan: FeaturePlan) -> Path:
    """Write features.parquet, errors.parquet, record_keys.parquet and manifest.json.

    Returns the output directory; a no-op if it already exists (outputs are immutable).

    Raises:
        RuntimeError: a chunk of the plan has not been featurized yet.
        ValueError: the fraction of error rows exceeds ``cfg.max_error_rate``.
    """
    out = Path(plan.output_dir)
    if (out / "manifest.json").exists():
        return out
    missing = [s for s in plan.shards if not Path(s).exists()]
    if missing:
        raise RuntimeError(
            f"{len(missing)} of {len(plan.shards)} cache shards missing (run featurize_chunk on "
            f"every chunk first), e.g. {missing[0]}"
        )
    cfg = plan.cfg
    plan_dir = Path(plan.plan_dir)
    needed = set(read_parquet(plan_dir / MATERIALS_FILE, columns=[MATERIAL_KEY])[MATERIAL_KEY])
    columns = [MATERIAL_KEY, FORMULA, *feature_columns(cfg.structure_features)]
    schema = pa.schema(
        [pa.field(MATERIAL_KEY, pa.string()), pa.field(FORMULA, pa.string())]
        + [pa.field(c, pa.float64()) for c in columns[2:]]
    )
    seen: set[str] = set()
    errors, row_hashes = [], []
    with staged_dir(out) as tmp:
        with pq.ParquetWriter(tmp / FEATURES_FILE, schema) as writer:
            for shard in plan.shards:
                frame = read_parquet(Path(shard))
                frame = frame[frame[MATERIAL_KEY].isin(needed - seen)].drop_duplicates(MATERIAL_KEY)
                seen.update(frame[MATERIAL_KEY])
                failed = frame[REASON].notna()
                errors.append(frame.loc[failed, ERROR_COLUMNS])
                good = frame.loc[~failed].reindex(columns=columns).reset_index(drop=True)
                good[columns[2:]] = good[columns[2:]].astype("float64")
                writer.write_table(pa.Table.from_pandas(good, schema=schema, preserve_index=False))
                row_hashes.append(pd.util.hash_pandas_object(good, index=False).to_numpy())
        if seen != needed:
            raise RuntimeError(f"{len(needed - seen)} materials of the plan are in no cache shard")
        error_frame = pd.concat(errors, ignore_index=True).sort_values(MATERIAL_KEY).reset_index(drop=True)
        rate = len(error_frame) / max(1, len(needed))
        by_reason = error_frame[REASON].value_counts().to_dict()
        if rate > cfg.max_error_rate:
            raise ValueError(
                f"features of snapshot {plan.snapshot_hash[:16]}: {len(error_frame)} of "
                f"{len(needed)} materials failed ({rate:.2%} > max_error_rate "
                f"{cfg.max_error_rate:.2%}); reasons {by_reason}"
            )
        write_parquet_atomic(tmp / ERRORS_FILE, error_frame[ERROR_COLUMNS])
        shutil.copyfile(plan_dir / RECORD_KEYS_FILE, tmp / RECORD_KEYS_FILE)
        hashes = np.sort(np.concatenate(row_hashes)) if row_hashes else np.zeros(0, dtype=np.uint64)
        n_features = len(hashes)
        manifest = Manifest(
            stage="features",
            source=plan.source,
            content_hash=hash_bytes(
                ",".join(columns).encode(), hashes.tobytes(), hash_frame(error_frame).encode()
            ),
            n_rows=n_features,
            created=datetime.now(UTC).isoformat(),
            inputs={"snapshot": plan.snapshot_hash},
            versions=_versions(),
            counts={
                "n_records": plan.n_records,
                "n_materials": len(needed),
                "n_features": n_features,
                "n_errors": len(error_frame),
                "errors_by_reason": by_reason,
                "n_cached": plan.n_cached,
                "n_featurized": plan.n_pending,
                "n_feature_columns": len(columns) - 2,
            },
            extra={"feature_set_version": FEATURE_SET_VERSION, "config": plan.config},
        )
        write_manifest(tmp, manifest)
    shutil.rmtree(plan_dir, ignore_errors=True)  # chunk inputs are no longer needed
    return out
