"""Immutable raw snapshots: ``raw/<source>/<snapshot_id>/`` with records, properties, quarantine, manifest.

Why immutable and content-keyed: every later stage names the snapshot it read by content hash,
so a nightly re-ingest of unchanged data writes nothing and everything downstream stays cached.

Why verified: "unchanged" must mean the snapshot on disk still holds that content. The manifest
records the SHA-256 of every file it describes; :func:`verify_snapshot` re-hashes them (one read
per file, no Parquet decoding), and a snapshot that fails is moved aside as
``<snapshot>.corrupt-<UTC time>`` and treated as absent, so the ingest recomputes it.

Example:
    >>> work = WorkDir.resolve("/tmp/run")  # doctest: +SKIP
    >>> {path.name: problems for path, problems in verify_workdir(work).items() if problems}  # doctest: +SKIP
    {}
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from metalearn import io
from metalearn import schema as S
from metalearn.ingest.validate import VALIDATION_VERSION, validate_records
from metalearn.layout import WorkDir

logger = logging.getLogger(__name__)

RECORDS = "records"
PROPERTIES = "properties"
QUARANTINE = "quarantine"
FILE_DIGESTS = "file_sha256"  # manifest.extra key: file name -> SHA-256 of its bytes
VALIDATION_KEY = "validation_version"  # manifest.extra key: the validate.VALIDATION_VERSION that made it
PROBLEMS_FILE = "verify-problems.json"  # written into a snapshot moved aside
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


def _is_snapshot_dir(path: Path) -> bool:
    return (path.is_dir() and not path.name.startswith(io.TMP_PREFIX) and io.CORRUPT_MARK not in path.name
            and (path / io.MANIFEST).exists())


def list_snapshots(work: WorkDir, source: str) -> list[Path]:
    """Complete snapshots of ``source``, oldest first (ids start with a UTC timestamp); moved-aside ones excluded."""
    parent = work.raw(source)
    if not parent.exists():
        return []
    return sorted(p for p in parent.iterdir() if _is_snapshot_dir(p))


def latest_snapshot(work: WorkDir, source: str) -> Path | None:
    """The newest complete snapshot of ``source`` (not verified; see :func:`latest_verified_snapshot`)."""
    snapshots = list_snapshots(work, source)
    return snapshots[-1] if snapshots else None


def latest_verified_snapshot(work: WorkDir, source: str) -> Path | None:
    """The newest snapshot of ``source`` that passes :func:`verify_snapshot`.

    Newer ones that fail are moved aside (``<dir>.corrupt-<UTC time>``, with the problems in
    ``verify-problems.json``) and logged, so the caller recomputes instead of trusting them.
    """
    for path in reversed(list_snapshots(work, source)):
        problems = verify_snapshot(path)
        if not problems:
            return path
        moved = io.move_aside(path)
        io.write_json_atomic(moved / PROBLEMS_FILE, {"snapshot": path.name, "problems": problems})
        logger.warning("snapshot %s is corrupt (%s); moved aside to %s and treated as absent",
                       path, "; ".join(problems), moved.name)
    return None


def read_table(snapshot: Path, name: str) -> pd.DataFrame:
    return io.read_parquet(Path(snapshot) / f"{name}.parquet")


def content_hash(records: pd.DataFrame, properties: pd.DataFrame, quarantine: pd.DataFrame,
                 tables: dict[str, pd.DataFrame] | None = None) -> str:
    """The content hash a manifest keys a snapshot by: its clean records, properties, quarantine and tables."""
    return io.hash_bytes(
        io.hash_frame(records).encode(), io.hash_frame(properties).encode(), io.hash_frame(quarantine).encode(),
        *(f"{name}:{io.hash_frame(frame)}".encode() for name, frame in sorted((tables or {}).items())),
    )


def _table_names(manifest: S.Manifest) -> list[str]:
    return sorted(k[len("table_"):] for k in manifest.counts if k.startswith("table_"))


def verify_snapshot(path: Path, deep: bool = False) -> list[str]:
    """Problems that make ``path`` untrustworthy as a snapshot; empty when it is intact.

    Checks that the manifest reads and that every file it lists has the recorded SHA-256 (one
    sequential read per file). A snapshot written before digests were recorded, or ``deep=True``,
    is checked by reading its tables and recomputing the manifest's content hash (slower: the
    Parquet files are decoded and every row hashed).

    Example:
        >>> verify_snapshot(Path("work/raw/bundled/20260101T000000000000Z-abc"))  # doctest: +SKIP
        ['records.parquet: sha256 1f0c... does not match the manifest (9a7e...)']
    """
    path = Path(path)
    if not path.is_dir():
        return [f"{path} is not a directory"]
    try:
        manifest = io.read_manifest(path)
    except (OSError, ValueError, TypeError) as exc:  # missing, not JSON, or not a Manifest
        return [f"{io.MANIFEST} cannot be read: {type(exc).__name__}: {exc}"]
    names = [RECORDS, PROPERTIES, QUARANTINE, *_table_names(manifest)]
    digests = manifest.extra.get(FILE_DIGESTS) or {}
    problems = [f"{name}.parquet is missing" for name in names if not (path / f"{name}.parquet").is_file()]
    if problems:
        return problems
    for file, digest in sorted(digests.items()):
        actual = io.hash_file(path / file) if (path / file).is_file() else None
        if actual is None:
            problems.append(f"{file} is missing")
        elif actual != digest:
            problems.append(f"{file}: sha256 {actual[:12]}... does not match the manifest ({digest[:12]}...)")
    unlisted = [f"{n}.parquet" for n in names if f"{n}.parquet" not in digests]
    if problems or not (deep or unlisted):
        return problems
    try:
        frames = {name: read_table(path, name) for name in names}
    except Exception as exc:  # noqa: BLE001 -- any read failure (truncated footer, bad page) is the finding
        return [f"a table cannot be read: {type(exc).__name__}: {str(exc)[:200]}"]
    recomputed = content_hash(frames[RECORDS], frames[PROPERTIES], frames[QUARANTINE],
                              {n: frames[n] for n in _table_names(manifest)})
    if recomputed != manifest.content_hash:
        problems.append(f"content hash {recomputed[:12]}... of the tables does not match the manifest "
                        f"({manifest.content_hash[:12]}...)")
    return problems


def verify_workdir(work: WorkDir, deep: bool = False) -> dict[Path, list[str]]:
    """:func:`verify_snapshot` for every complete snapshot of every source under ``work`` (read only)."""
    root = work.raw_root()
    sources = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []
    return {path: verify_snapshot(path, deep=deep) for source in sources for path in list_snapshots(work, source)}


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
    work: WorkDir,
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
    """Validate, hash and (unless unchanged) atomically publish a raw snapshot under ``work.raw(source)``.

    Args:
        records: long records (RECORDS_SCHEMA columns; targets may be the source's text); bad rows
            are moved to quarantine.
        properties: one row per dataset_id (PROPERTIES_SCHEMA).
        quarantine: rows the source itself already rejected (e.g. unparseable documents).
        tables: extra source-native tables, stored as ``<name>.parquet`` (e.g. MP's wide summary).
        inputs: upstream snapshot id -> content hash (for combined snapshots), kept in the manifest.
        validate: False only for records that come from validated snapshots (see combine_snapshots).
    Returns:
        SnapshotResult; ``created=False`` and the latest path when the content hash is unchanged
        (and that snapshot verifies; a corrupt one is moved aside and this one written).
    """
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

    digest = content_hash(clean, properties, rejected, tables)
    latest = latest_verified_snapshot(work, source)
    if latest is not None:
        previous = io.read_manifest(latest)
        # A snapshot validated by older rules is superseded once (same content, current rules recorded),
        # so the unchanged-input short cuts of the sources can trust it from then on.
        current = not validate or previous.extra.get(VALIDATION_KEY) == VALIDATION_VERSION
        if previous.content_hash == digest and current:
            return SnapshotResult(latest, previous, created=False, n_quarantined=len(rejected))

    now = datetime.now(UTC)
    snapshot_id = f"{now:%Y%m%dT%H%M%S%fZ}-{digest[:12]}"
    reasons = rejected[S.REASON].value_counts().to_dict() if len(rejected) else {}
    counts = {"records": len(clean), "quarantined": len(rejected), "quarantine_reasons": reasons,
              "datasets": int(clean[S.DATASET_ID].nunique()),
              "per_dataset": clean[S.DATASET_ID].value_counts().sort_index().to_dict(),
              **{f"table_{name}": len(frame) for name, frame in tables.items()}}
    final = work.raw(source) / snapshot_id
    with io.staged_dir(final) as tmp:
        files = {
            f"{RECORDS}.parquet": io.write_parquet_atomic(tmp / f"{RECORDS}.parquet", clean, schema=S.RECORDS_SCHEMA),
            f"{PROPERTIES}.parquet": io.write_parquet_atomic(tmp / f"{PROPERTIES}.parquet", properties,
                                                             schema=S.PROPERTIES_SCHEMA),
            f"{QUARANTINE}.parquet": io.write_parquet_atomic(tmp / f"{QUARANTINE}.parquet", rejected,
                                                             schema=S.QUARANTINE_SCHEMA),
        }
        for name, frame in tables.items():
            files[f"{name}.parquet"] = io.write_parquet_atomic(tmp / f"{name}.parquet", frame)
        manifest = S.Manifest(
            stage="raw", source=source, content_hash=digest, n_rows=len(clean), created=now.isoformat(),
            inputs=dict(inputs or {}), query=dict(query or {}),
            versions={**package_versions(), **(versions or {})}, database_version=database_version,
            counts=counts, extra={**(extra or {}), **({VALIDATION_KEY: VALIDATION_VERSION} if validate else {}),
                                  FILE_DIGESTS: dict(sorted(files.items()))},
        )
        io.write_manifest(tmp, manifest)  # last: a directory without a manifest is never complete
    return SnapshotResult(final, manifest, created=True, n_quarantined=len(rejected))


def combine_snapshots(work: WorkDir, snapshots: list[Path], source: str = "combined") -> SnapshotResult:
    """One snapshot holding the records of several (e.g. bundled or MP + Open Catalyst).

    Why: features and task shards are built from one snapshot, so every source that should reach
    training is combined first. Inputs are already validated, so their rows (and quarantines) are
    carried over as they are; an unchanged set of inputs returns the latest combined snapshot
    without reading anything but its file digests.
    """
    inputs = {Path(p).name: io.read_manifest(Path(p)).content_hash for p in snapshots}
    latest = latest_verified_snapshot(work, source)
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
        work, source, records, properties.drop_duplicates(S.DATASET_ID),
        quarantine=pd.concat(parts[QUARANTINE], ignore_index=True), inputs=inputs, validate=False,
        query={"combined": [m.source for m in manifests]},
        database_version=";".join(m.database_version for m in manifests if m.database_version) or None)

