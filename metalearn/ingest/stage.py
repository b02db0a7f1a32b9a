"""Ingest one source into a raw snapshot: the library entry point behind ``metalearn ingest``.

Each source module loads records; :func:`metalearn.ingest.snapshot.write_snapshot` validates, quarantines
and publishes them. The bundled source is fingerprinted first, so a nightly re-ingest of the
unchanged bundle costs a file hash, not a re-parse of thousands of CIFs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from metalearn import io
from metalearn.ingest.snapshot import SnapshotResult, latest_snapshot, write_snapshot

SOURCES = ("bundled", "mp", "oc")


@dataclass(frozen=True)
class IngestConfig:
    """What to pull. ``max_rows_per_dataset`` subsamples each bundled dataset (seeded)."""

    source: str = "bundled"
    max_rows_per_dataset: int | None = 3000
    seed: int = 0
    datasets: tuple[str, ...] | None = None
    mp_endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown source {self.source!r}; expected one of {SOURCES}")


def ingest_bundled(workdir: Path, cfg: IngestConfig) -> SnapshotResult:
    from metalearn.ingest import bundled

    query = {"max_rows_per_dataset": cfg.max_rows_per_dataset, "seed": cfg.seed,
             "datasets": list(cfg.datasets) if cfg.datasets else None}
    fingerprint = bundled.input_fingerprint()
    latest = latest_snapshot(workdir, "bundled")
    if latest is not None:
        manifest = io.read_manifest(latest)
        if manifest.extra.get("input_fingerprint") == fingerprint and manifest.query == query:
            n_quarantined = int(manifest.counts.get("quarantined", 0))
            return SnapshotResult(latest, manifest, created=False, n_quarantined=n_quarantined)
    records, properties = bundled.load_bundled(
        max_rows_per_dataset=cfg.max_rows_per_dataset, seed=cfg.seed,
        datasets=list(cfg.datasets) if cfg.datasets else None)
    return write_snapshot(workdir, "bundled", records, properties, query=query,
                          extra={"input_fingerprint": fingerprint})


def ingest(workdir: Path, cfg: IngestConfig, api_key: str | None = None, on_progress=None) -> SnapshotResult:
    """Pull ``cfg.source`` into ``<workdir>/raw/<source>/<snapshot_id>/`` (or find it unchanged)."""
    workdir = io.resolve_workdir(workdir)
    io.clean_stale_tmp(workdir / "raw")
    if cfg.source == "bundled":
        return ingest_bundled(workdir, cfg)
    if cfg.source == "oc":
        from metalearn.ingest.oc import ingest_oc

        return ingest_oc(workdir)
    from metalearn.ingest.mp import MPConfig, ingest_mp

    mp_cfg = MPConfig(endpoint=cfg.mp_endpoint) if cfg.mp_endpoint else MPConfig()
    return ingest_mp(workdir, mp_cfg, api_key=api_key, on_progress=on_progress)
