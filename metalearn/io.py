"""Atomic Parquet/JSON writes, content and file hashes, and moving a damaged output aside.

Why atomic: a run killed halfway must never leave a file (or a snapshot directory) that a later
stage could read as complete. Everything is written to a temporary sibling and renamed into place;
a directory is "published" by renaming a fully written temp directory. Where outputs live under the
work directory is :class:`metalearn.layout.WorkDir`'s business, not this module's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from metalearn.schema import Manifest

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
CORRUPT_MARK = ".corrupt-"  # <dir>.corrupt-<UTC time>: a damaged output moved aside, kept for inspection
_HASH_CHUNK = 1 << 22


def repo_data_dir() -> Path:
    """The bundled real data shipped with the project (read-only input, never an output)."""
    env = os.environ.get("METALEARN_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "data"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def write_parquet_atomic(path: Path, table: pa.Table | pd.DataFrame, schema: pa.Schema | None = None) -> str:
    """Write a Parquet file atomically; DataFrames are converted with ``schema`` when given.

    Returns:
        the SHA-256 (hex) of the file's bytes as written, for a manifest to record.
    """
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, schema=schema, preserve_index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".parquet", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        digest = hash_file(Path(tmp))  # just written, so read back from the page cache
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a temp directory next to ``final``; rename it to ``final`` only if the block succeeds.

    A crash inside the block leaves only a ``.tmp-*`` directory, which readers ignore and
    :func:`clean_stale_tmp` removes. If ``final`` already exists (same content hash), the staged
    copy is discarded: outputs are immutable.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
            _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_stale_tmp(parent: Path) -> int:
    """Remove temp files/dirs left by killed runs under ``parent``; returns how many were removed."""
    removed = 0
    if not parent.exists():
        return 0
    for item in parent.rglob(f"{TMP_PREFIX}*"):
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
        removed += 1
    return removed


def move_aside(path: Path, mark: str = CORRUPT_MARK) -> Path:
    """Rename ``path`` to ``<path>.corrupt-<UTC time>`` (same parent) and return the new path.

    Why rename, not delete: a damaged output is evidence (of a disk fault, a killed copy, a bug);
    readers skip names carrying ``mark`` and a rerun recomputes the output.
    """
    target = path.with_name(f"{path.name}{mark}{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")
    os.replace(path, target)
    _fsync_dir(path.parent)
    return target


def hash_file(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_bytes(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def hash_json(obj: Any) -> str:
    """Stable hash of a JSON-able object (sorted keys), e.g. a config."""
    return hash_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


def hash_frame(frame: pd.DataFrame) -> str:
    """Content hash of a DataFrame: row order and column names matter, the index does not."""
    values = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hash_bytes(",".join(map(str, frame.columns)).encode(), values.tobytes())


def write_manifest(directory: Path, manifest: Manifest) -> None:
    write_bytes_atomic(directory / MANIFEST, manifest.to_json().encode())


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no {MANIFEST} in {directory}: not a complete stage output")
    return Manifest.from_json(path.read_text())


def read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    return pq.read_table(path, columns=columns).to_pandas()
