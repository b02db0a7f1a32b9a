"""The features stage in one process: snapshot -> features.parquet + errors.parquet, cached.

:func:`build_features` runs plan -> chunks -> assemble sequentially, without the chunk files the
fan-out path (``plan_features`` / ``featurize_chunk`` / ``assemble_features``, used by the
Prefect flow) needs: each chunk is featurized from memory, published in the cache (what a later
run or the next snapshot reuses) and streamed into the output at once, so nothing is read back.
Both paths publish the same content (same content hash) through
:class:`metalearn.features.assemble.FeatureWriter`.

Threads: one, deliberately. The fast path is elementwise NumPy (no BLAS), every Arrow read and
conversion passes ``use_threads=False``, and matminer is never called with ``n_jobs > 1``; scale
comes from fanning chunks out over worker processes (``plan_features``), not from threads that
would fight the other stages on a small machine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from metalearn.features.assemble import FeatureWriter
from metalearn.features.composition import FEATURE_SET_VERSION
from metalearn.features.integrity import locked
from metalearn.features.plan import (
    FeaturizeConfig,
    chunks_of,
    featurize_table,
    plan_materials,
    tidy,
    write_shard,
)
from metalearn.io import staged_dir
from metalearn.layout import WorkDir


def build_features(
    snapshot_dir: Path,
    work: WorkDir,
    cfg: FeaturizeConfig | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """plan -> every chunk, sequentially -> assemble. Returns the features directory.

    A no-op when an intact output exists; an output that fails
    :func:`metalearn.features.output.verify_features` is set aside and rebuilt. Cache shards
    finished by a killed run are reused.

    Args:
        on_progress: called as ``on_progress(done, total)`` in materials featurized this run.

    Example:
        >>> out = build_features(snapshot_dir, WorkDir.resolve(root), FeaturizeConfig(chunk_size=2000))
        >>> features = pd.read_parquet(out / FEATURES_FILE)
    """
    cfg = cfg or FeaturizeConfig()
    planned = plan_materials(snapshot_dir, work, cfg)
    plan = planned.plan
    out = Path(plan.output_dir)
    if plan.done:
        return out
    with locked(work.feature_plans(FEATURE_SET_VERSION)):
        tidy(work)
    done = 0
    if on_progress:
        on_progress(0, plan.n_pending)
    with staged_dir(out) as tmp:
        writer = FeatureWriter(tmp, planned.needed, cfg.structure_features)
        try:
            for shard in plan.shards:
                writer.add(pq.read_table(shard, use_threads=False))
            for chunk in chunks_of(planned.pending, cfg.chunk_size):
                shard = featurize_table(chunk)
                write_shard(Path(plan.cache_dir), shard)
                writer.add(shard)
                done += chunk.num_rows
                if on_progress:
                    on_progress(done, plan.n_pending)
        except BaseException:
            writer.abort()
            raise
        writer.finish(planned.record_keys, plan)
    return out
