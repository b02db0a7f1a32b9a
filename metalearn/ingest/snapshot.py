"""Immutable raw snapshots: ``raw/<source>/<snapshot_id>/`` with records, properties, quarantine, manifest.

Why immutable and content-keyed: every later stage names the snapshot it read by content hash,
so a nightly re-ingest of unchanged data writes nothing and everything downstream stays cached.
"""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from metalearn import io
from metalearn import schema as S
from metalearn.ingest.validate import validate_records

RECORDS = "records"
PROPERTIES = "properties"
QUARANTINE = "quarantine"
_VERSIONED_PACKAGES = ("metalearn", "pymatgen", "pandas", "pyarrow", "mp-api", "ase", "emmet-core")


@dataclass(frozen=True)
class SnapshotResult:
    """What an ingest produced; ``created`` is False when the content equalled the latest snapshot."""

    path: Path
    manifest: S.Manifest
    created: bool
    n_quarantined: int

    def summary(self) -> str:
        state = "new snapshot" if self.created else "unchanged, no new snapshot"
        return (f"{self.manifest.source}: {self.manifest.n_rows} rows, {self.n_quarantined} quarantined "
                f"({state}) -> {self.path}")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def source_dir(workdir: Path, source: str) -> Path:
    return Path(workdir) / "raw" / source


def list_snapshots(workdir: Path, source: str) -> list[Path]:
    """Complete snapshots of ``source``, oldest first (ids start with a UTC timestamp)."""
    parent = source_dir(workdir, source)
    if not parent.exists():
        return []
    return sorted(p for p in parent.iterdir()
                  if p.is_dir() and not p.name.startswith(io.TMP_PREFIX) and (p / io.MANIFEST).exists())


def latest_snapshot(workdir: Path, source: str) -> Path | None:
    snapshots = list_snapshots(workdir, source)
    return snapshots[-1] if snapshots else None


def read_table(snapshot: Path, name: str) -> pd.DataFrame:
    return io.read_parquet(Path(snapshot) / f"{name}.parquet")


def _normalise(records: pd.DataFrame) -> pd.DataFrame:
    """Cast to the records schema's columns and a canonical row order, so hashes don't depend on order."""
    missing = [c for c in (S.RECORD_ID, S.DATASET_ID, S.FORMULA, S.TARGET) if c not in records]
    if missing:
        raise ValueError(f"records lack required columns {missing}")
    out = records.copy()
    for column in (S.MATERIAL_ID, S.STRUCTURE_JSON, S.ORIG_SPLIT):
        if column not in out:
            out[column] = None
    out = out[[f.name for f in S.RECORDS_SCHEMA]]
    out[S.RECORD_ID] = out[S.RECORD_ID].astype(str)
    return out


def write_snapshot(
    workdir: Path,
    source: str,
    records: pd.DataFrame,
    properties: pd.DataFrame,
    *,
    quarantine: pd.DataFrame | None = None,
    query: dict | None = None,
    versions: dict | None = None,
    database_version: str | None = None,
    extra: dict | None = None,
    tables: dict[str, pd.DataFrame] | None = None,
    inputs: dict[str, str] | None = None,
    validate: bool = True,
) -> SnapshotResult:
    """Validate, hash and (unless unchanged) atomically publish a raw snapshot.

    Args:
        records: long records (RECORDS_SCHEMA columns); bad rows are moved to quarantine.
        properties: one row per dataset_id (PROPERTIES_SCHEMA).
        quarantine: rows the source itself already rejected (e.g. unparseable documents).
        tables: extra source-native tables, stored as ``<name>.parquet`` (e.g. MP's wide summary).
        inputs: upstream snapshot id -> content hash (for combined snapshots), kept in the manifest.
        validate: False only for records that come from validated snapshots (see combine_snapshots).
    Returns:
        SnapshotResult; ``created=False`` and the latest path when the content hash is unchanged.
    """
    workdir = Path(workdir)
    properties = properties[[f.name for f in S.PROPERTIES_SCHEMA]].sort_values(S.DATASET_ID)
    properties = properties.reset_index(drop=True)
    unknown = set(records[S.DATASET_ID]) - set(properties[S.DATASET_ID])
    if unknown:
        raise ValueError(f"records reference dataset ids with no property metadata: {sorted(unknown)[:5]}")
    task_types = dict(zip(properties[S.DATASET_ID], properties[S.TASK_TYPE]))
    if validate:
        clean, rejected = validate_records(_normalise(records), task_types)
    else:
        clean, rejected = _normalise(records), pd.DataFrame(columns=[f.name for f in S.QUARANTINE_SCHEMA])
    clean = clean.sort_values([S.DATASET_ID, S.RECORD_ID], kind="stable").reset_index(drop=True)
    parts = [q for q in (quarantine, rejected) if q is not None and len(q)]
    rejected = pd.concat(parts, ignore_index=True) if parts else rejected
    tables = dict(tables or {})

    content_hash = io.hash_bytes(
        io.hash_frame(clean).encode(), io.hash_frame(properties).encode(),
        io.hash_frame(rejected).encode(),
        *(f"{name}:{io.hash_frame(frame)}".encode() for name, frame in sorted(tables.items())),
    )
    latest = latest_snapshot(workdir, source)
    if latest is not None:
        previous = io.read_manifest(latest)
        if previous.content_hash == content_hash:
            return SnapshotResult(latest, previous, created=False, n_quarantined=len(rejected))

    now = datetime.now(UTC)
    snapshot_id = f"{now:%Y%m%dT%H%M%S%fZ}-{content_hash[:12]}"
    reasons = rejected[S.REASON].value_counts().to_dict() if len(rejected) else {}
    manifest = S.Manifest(
        stage="raw", source=source, content_hash=content_hash, n_rows=len(clean), created=now.isoformat(),
        inputs=dict(inputs or {}), query=dict(query or {}), versions={**package_versions(), **(versions or {})},
        database_version=database_version,
        counts={"records": len(clean), "quarantined": len(rejected), "quarantine_reasons": reasons,
                "datasets": int(clean[S.DATASET_ID].nunique()),
                "per_dataset": clean[S.DATASET_ID].value_counts().sort_index().to_dict(),
                **{f"table_{name}": len(frame) for name, frame in tables.items()}},
        extra=dict(extra or {}),
    )
    final = source_dir(workdir, source) / snapshot_id
    with io.staged_dir(final) as tmp:
        io.write_parquet_atomic(tmp / f"{RECORDS}.parquet", clean, schema=S.RECORDS_SCHEMA)
        io.write_parquet_atomic(tmp / f"{PROPERTIES}.parquet", properties, schema=S.PROPERTIES_SCHEMA)
        io.write_parquet_atomic(tmp / f"{QUARANTINE}.parquet", rejected, schema=S.QUARANTINE_SCHEMA)
        for name, frame in tables.items():
            io.write_parquet_atomic(tmp / f"{name}.parquet", frame)
        io.write_manifest(tmp, manifest)  # last: a directory without a manifest is never complete
    return SnapshotResult(final, manifest, created=True, n_quarantined=len(rejected))


def combine_snapshots(workdir: Path, snapshots: list[Path], source: str = "combined") -> SnapshotResult:
    """One snapshot holding the records of several (e.g. bundled or MP + Open Catalyst).

    Why: features and task shards are built from one snapshot, so every source that should reach
    training is combined first. Inputs are already validated, so their rows (and quarantines) are
    carried over as they are; an unchanged set of inputs returns the latest combined snapshot
    without reading anything.
    """
    inputs = {Path(p).name: io.read_manifest(Path(p)).content_hash for p in snapshots}
    latest = latest_snapshot(workdir, source)
    if latest is not None:
        manifest = io.read_manifest(latest)
        if manifest.inputs == inputs:
            return SnapshotResult(latest, manifest, created=False,
                                  n_quarantined=int(manifest.counts.get("quarantined", 0)))
    parts = {name: [read_table(Path(p), name) for p in snapshots] for name in (RECORDS, PROPERTIES, QUARANTINE)}
    records, properties = pd.concat(parts[RECORDS], ignore_index=True), pd.concat(parts[PROPERTIES], ignore_index=True)
    clash = properties[properties.duplicated(S.DATASET_ID, keep=False)].drop_duplicates()
    if clash[S.DATASET_ID].duplicated().any():
        raise ValueError(f"snapshots disagree on property metadata of {sorted(set(clash[S.DATASET_ID]))[:5]}")
    manifests = [io.read_manifest(Path(p)) for p in snapshots]
    return write_snapshot(
        workdir, source, records, properties.drop_duplicates(S.DATASET_ID),
        quarantine=pd.concat(parts[QUARANTINE], ignore_index=True), inputs=inputs, validate=False,
        query={"combined": [m.source for m in manifests]},
        database_version=";".join(m.database_version for m in manifests if m.database_version) or None)
