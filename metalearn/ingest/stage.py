"""Ingest one source into a raw snapshot: the library entry point behind ``metalearn ingest``.

Each source module loads its records and publishes them through
:func:`metalearn.ingest.snapshot.write_snapshot` (validation, quarantine, content hash, atomic
publish); :data:`SOURCES` maps a source name to the call that does it. The bundled source is
fingerprinted first, so a nightly re-ingest of the unchanged bundle costs a file hash, not a
re-parse of thousands of CIFs.

Example:
    >>> result = ingest(WorkDir.resolve("/tmp/run"), IngestConfig(max_rows_per_dataset=80))  # doctest: +SKIP
    >>> result.path.parent == WorkDir.resolve("/tmp/run").raw("bundled")  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metalearn import io
from metalearn.ingest import bundled, mp_client, oc
from metalearn.ingest.mp import MPConfig
from metalearn.ingest.snapshot import SnapshotResult
from metalearn.layout import WorkDir

Progress = Callable[..., None]


@dataclass(frozen=True)
class IngestConfig:
    """What to pull. ``max_rows_per_dataset`` subsamples each bundled dataset (seeded; None: every
    record, the nightly default; the quick profile and tests take small slices)."""

    source: str = "bundled"
    max_rows_per_dataset: int | None = None
    seed: int = 0
    datasets: tuple[str, ...] | None = None
    mp_endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; expected one of {tuple(SOURCES)}")
        if self.max_rows_per_dataset is not None and self.max_rows_per_dataset < 1:
            raise ValueError(f"ingest.max_rows_per_dataset must be >= 1 or null (every row), "
                             f"got {self.max_rows_per_dataset}")


def _bundled(work: WorkDir, cfg: IngestConfig, api_key: Any, on_progress: Progress | None) -> SnapshotResult:
    return bundled.ingest_bundled(work, max_rows_per_dataset=cfg.max_rows_per_dataset, seed=cfg.seed,
                                  datasets=cfg.datasets)


def _mp(work: WorkDir, cfg: IngestConfig, api_key: Any, on_progress: Progress | None) -> SnapshotResult:
    mp_cfg = MPConfig(endpoint=cfg.mp_endpoint) if cfg.mp_endpoint else MPConfig()
    return mp_client.ingest_mp(work, mp_cfg, api_key=api_key, on_progress=on_progress)


def _oc(work: WorkDir, cfg: IngestConfig, api_key: Any, on_progress: Progress | None) -> SnapshotResult:
    return oc.ingest_oc(work)


# source name -> (work, cfg, api_key, on_progress) -> SnapshotResult. The one list of sources.
SOURCES: dict[str, Callable[[WorkDir, IngestConfig, Any, Progress | None], SnapshotResult]] = {
    "bundled": _bundled,
    "mp": _mp,
    "oc": _oc,
}


def ingest(work: WorkDir, cfg: IngestConfig, api_key: Any = None, on_progress: Progress | None = None
           ) -> SnapshotResult:
    """Pull ``cfg.source`` into ``work.raw(source)/<snapshot_id>/`` (or find it unchanged and intact).

    Args:
        work: the work directory.
        cfg: which source and how much of it.
        api_key: the MP key (``source="mp"`` only; else ``$MP_API_KEY``). Never stored or logged.
        on_progress: MP only: ``on_progress(stage, done, total)``.
    Returns:
        SnapshotResult (``created=False`` with the existing snapshot when nothing changed).
    """
    if not isinstance(work, WorkDir):
        raise TypeError(f"ingest() takes a WorkDir, not {type(work).__name__}: pass WorkDir.resolve({work!r})")
    io.clean_stale_tmp(work.raw_root())
    return SOURCES[cfg.source](work, cfg, api_key, on_progress)
