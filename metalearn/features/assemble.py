"""Publish the features stage's output from cache shards: streaming, atomic, immutable.

Split from :mod:`metalearn.features.plan` because publishing has its own reasons to change
(layout, manifest, error budget). :class:`FeatureWriter` takes shard tables one at a time (read
back from the cache by :func:`assemble_features`, or straight from the featurizer in
:func:`metalearn.features.stage.build_features`), so memory is bounded by one shard plus one
row group of output (``ROW_GROUP_ROWS``), and writes inside a :func:`metalearn.io.staged_dir`: a
failure (a missing shard, too many errors) publishes nothing.

The content hash is unchanged from earlier versions: sha256 over the column names, the sorted
``pandas.util.hash_pandas_object`` row hashes of features.parquet and ``hash_frame`` of the
errors sorted by material key, so it does not depend on shard order or chunk size.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from metalearn.features import scratch
from metalearn.features.composition import FEATURE_SET_VERSION
from metalearn.features.integrity import locked, with_digests
from metalearn.features.keys import key_bytes, positions
from metalearn.features.output import dictionary_columns, feature_columns
from metalearn.features.plan import MATERIALS_FILE, FeaturePlan
from metalearn.io import MANIFEST, hash_bytes, hash_frame, staged_dir, write_manifest, write_parquet_atomic
from metalearn.schema import (
    ERROR_COLUMNS,
    FEATURE_ERRORS_FILE,
    FEATURES_FILE,
    FORMULA,
    MATERIAL_KEY,
    REASON,
    RECORD_KEYS_FILE,
    Manifest,
)


def _versions() -> dict[str, str]:
    out = {"feature_set": FEATURE_SET_VERSION}
    for package in ("matminer", "pymatgen", "pymatgen-core", "numpy", "pandas", "pyarrow"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def row_hashes(table: pa.Table) -> np.ndarray:
    """``pandas.util.hash_pandas_object(table.to_pandas(), index=False)``, without the DataFrame.

    Each column through pandas' ``hash_array`` (floats as their bits, null as NaN; strings as
    objects), combined like pandas' ``combine_hash_arrays`` (CPython's tuple hash). Returns (N,)
    uint64. ``tests/features`` checks it against pandas itself.
    """
    out = np.full(table.num_rows, 0x345678, dtype=np.uint64)
    mult = np.uint64(1000003)
    n = table.num_columns
    for i, column in enumerate(table.columns):
        out ^= pd.util.hash_array(column.to_numpy())
        out *= mult
        mult += np.uint64(82520 + 2 * (n - i))
    return out + np.uint64(97531)


ROW_GROUP_ROWS = 1 << 16  # ~80 MB of features per row group: few dictionary pages, bounded memory


class FeatureWriter:
    """Streams shards into ``<tmp>/features.parquet``; :meth:`finish` writes the rest and the manifest.

    Each needed material is taken from the first shard that has it; rows of other materials
    (a shard may be shared with other snapshots) are skipped.

    Args:
        tmp: the staged output directory.
        needed: sorted material keys of the snapshot, (M,).
        structure_features: whether features.parquet has the structure columns.
    """

    def __init__(self, tmp: Path, needed: pa.Array, structure_features: bool) -> None:
        self.columns = [MATERIAL_KEY, FORMULA, *feature_columns(structure_features)]
        self.schema = pa.schema([pa.field(MATERIAL_KEY, pa.string()), pa.field(FORMULA, pa.string())]
                                + [pa.field(c, pa.float64()) for c in self.columns[2:]])
        self._needed = key_bytes(needed)
        self._seen = np.zeros(len(self._needed), dtype=bool)
        self._writer = pq.ParquetWriter(tmp / FEATURES_FILE, self.schema, write_statistics=False,
                                        use_dictionary=dictionary_columns(self.columns))
        self._pending: list[pa.Table] = []  # good rows not written yet: row groups of ROW_GROUP_ROWS
        self._errors: list[pa.Table] = []
        self._hashes: list[np.ndarray] = []
        self.tmp = tmp

    def add(self, shard: pa.Table) -> None:
        pos = positions(self._needed, key_bytes(shard.column(MATERIAL_KEY)))
        take = pos >= 0
        take[take] = ~self._seen[pos[take]]
        self._seen[pos[take]] = True
        rows = shard if take.all() else shard.filter(pa.array(take))  # all of it, on a cold run
        if rows.column(REASON).null_count < rows.num_rows:
            failed = pc.is_valid(rows.column(REASON))
            self._errors.append(rows.filter(failed).select(ERROR_COLUMNS))
            rows = rows.filter(pc.invert(failed))
        present = set(rows.column_names)
        missing = pa.nulls(rows.num_rows, pa.float64())  # structure columns of a shard without any
        good = pa.table([rows.column(c) if c in present else missing for c in self.columns],
                        schema=self.schema)
        self._hashes.append(row_hashes(good))
        self._pending.append(good)
        if sum(t.num_rows for t in self._pending) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            table = pa.concat_tables(self._pending)
            self._writer.write_table(table, row_group_size=max(1, table.num_rows))
            self._pending = []

    def finish(self, record_keys: pa.Table | Path, plan: FeaturePlan) -> Manifest:
        """Close features.parquet, write errors, record keys and the manifest (into ``tmp``).

        Raises:
            RuntimeError: some needed material was in no shard.
            ValueError: the fraction of error rows exceeds ``plan.cfg.max_error_rate``.
        """
        self._flush()
        self._writer.close()
        cfg, n_needed = plan.cfg, len(self._needed)
        if not self._seen.all():
            raise RuntimeError(f"{int((~self._seen).sum())} materials of the plan are in no cache shard")
        if self._errors:
            error_frame = pa.concat_tables(self._errors).to_pandas(use_threads=False)
        else:
            error_frame = pd.DataFrame(columns=ERROR_COLUMNS)
        error_frame = error_frame.sort_values(MATERIAL_KEY).reset_index(drop=True)
        rate = len(error_frame) / max(1, n_needed)
        by_reason = error_frame[REASON].value_counts().to_dict()
        if rate > cfg.max_error_rate:
            raise ValueError(
                f"features of snapshot {plan.snapshot_hash[:16]}: {len(error_frame)} of "
                f"{n_needed} materials failed ({rate:.2%} > max_error_rate "
                f"{cfg.max_error_rate:.2%}); reasons {by_reason}"
            )
        write_parquet_atomic(self.tmp / FEATURE_ERRORS_FILE, error_frame[ERROR_COLUMNS])
        if isinstance(record_keys, Path):
            shutil.copyfile(record_keys, self.tmp / RECORD_KEYS_FILE)
        else:
            write_parquet_atomic(self.tmp / RECORD_KEYS_FILE, record_keys)
        hashes = np.sort(np.concatenate(self._hashes)) if self._hashes else np.zeros(0, dtype=np.uint64)
        n_features = len(hashes)
        manifest = Manifest(
            stage="features",
            source=plan.source,
            content_hash=hash_bytes(
                ",".join(self.columns).encode(), hashes.tobytes(), hash_frame(error_frame).encode()
            ),
            n_rows=n_features,
            created=datetime.now(UTC).isoformat(),
            inputs={"snapshot": plan.snapshot_hash},
            versions=_versions(),
            counts={
                "n_records": plan.n_records,
                "n_materials": n_needed,
                "n_features": n_features,
                "n_errors": len(error_frame),
                "errors_by_reason": by_reason,
                "n_cached": plan.n_cached,
                "n_featurized": plan.n_pending,
                "n_feature_columns": len(self.columns) - 2,
            },
            extra={"feature_set_version": FEATURE_SET_VERSION, "config": plan.config},
        )
        manifest = with_digests(manifest, self.tmp)
        write_manifest(self.tmp, manifest)
        return manifest

    def abort(self) -> None:
        self._writer.close()


def assemble_features(plan: FeaturePlan) -> Path:
    """Write features.parquet, errors.parquet, record_keys.parquet and manifest.json.

    Returns the output directory; a no-op if it already exists (outputs are immutable).

    Raises:
        RuntimeError: a chunk of the plan has not been featurized yet.
        ValueError: the fraction of error rows exceeds ``cfg.max_error_rate``.
    """
    out = Path(plan.output_dir)
    if (out / MANIFEST).exists():
        return out
    missing = [s for s in plan.shards if not Path(s).exists()]
    if missing:
        raise RuntimeError(
            f"{len(missing)} of {len(plan.shards)} cache shards missing (run featurize_chunk on "
            f"every chunk first), e.g. {missing[0]}"
        )
    plan_dir = Path(plan.plan_dir)
    with locked(plan_dir.parent):
        scratch.claim(plan_dir, create=False)
    needed = pq.read_table(plan_dir / MATERIALS_FILE, columns=[MATERIAL_KEY], use_threads=False).column(0)
    with staged_dir(out) as tmp:
        writer = FeatureWriter(tmp, needed, plan.cfg.structure_features)
        try:
            for shard in plan.shards:
                writer.add(pq.read_table(shard, use_threads=False))
        except BaseException:
            writer.abort()
            raise
        writer.finish(plan_dir / RECORD_KEYS_FILE, plan)
    scratch.finish(plan_dir)  # chunk inputs are no longer needed (by this run)
    return out
