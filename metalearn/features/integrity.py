"""Stage outputs checked against their manifest: file digests, readability, setting a bad one aside.

Why: outputs are immutable and keyed by content hash, so "the manifest exists" used to mean "done".
A truncated or bit-flipped file then stayed "done" forever: the next stage failed on it and a rerun
of the stage that wrote it did nothing. Now every features and shards manifest records the sha256
of each file it covers (``Manifest.extra[FILE_DIGESTS]``, the raw snapshot's format); an output
whose files do not match, or cannot be read, is treated as absent: :func:`set_aside` renames it
to ``<dir>.corrupt-<UTC time>`` (``metalearn.io.move_aside``, kept for inspection with the
problems found, never read again) and the stage recomputes it.

Cost: one sequential sha256 pass over the output's files (~0.5-1.5 GB/s on one core here), no
Parquet decoding. Outputs written before digests were recorded are checked by opening every
Parquet footer and comparing row counts instead (no bit-level guarantee for those).

Used by both ``metalearn.features`` and ``metalearn.shards``.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq

from metalearn.ingest.snapshot import FILE_DIGESTS, PROBLEMS_FILE
from metalearn.io import CORRUPT_MARK, MANIFEST, hash_file, move_aside, read_manifest, write_json_atomic
from metalearn.schema import Manifest

LOCK = ".lock"


def file_digests(directory: Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``directory`` except the manifest,
    sorted by path: what a manifest records in ``extra[FILE_DIGESTS]``."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(directory).as_posix(): hash_file(p) for p in files}


def check_output(directory: Path, parquet_rows: Mapping[str, int] | None = None) -> list[str]:
    """Problems of one stage output against its manifest; empty when it is intact.

    Args:
        directory: a stage output holding ``manifest.json``.
        parquet_rows: for outputs without recorded digests only: expected row counts of some of
            its Parquet files (relative path -> rows), e.g. ``{"features.parquet": n_rows}``.

    Returns:
        one line per problem (missing, altered or unreadable file; unreadable manifest).
    """
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except FileNotFoundError:
        return [f"{directory}: no {MANIFEST}"]
    except (ValueError, TypeError) as err:  # torn or hand-edited JSON, unknown keys
        return [f"{directory / MANIFEST}: unreadable ({type(err).__name__}: {err})"]
    recorded = manifest.extra.get(FILE_DIGESTS)
    if recorded is None:
        return _check_readable(directory, parquet_rows or {})
    problems = []
    for name, digest in sorted(recorded.items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif hash_file(path) != digest:
            problems.append(f"{path}: sha256 does not match the manifest")
    return problems


def _check_readable(directory: Path, parquet_rows: Mapping[str, int]) -> list[str]:
    """Legacy outputs (no digests): every Parquet footer opens, the given row counts match."""
    problems = [f"{directory / name}: missing" for name in parquet_rows if not (directory / name).is_file()]
    for path in sorted(directory.rglob("*.parquet")):
        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except Exception as err:  # noqa: BLE001 -- any failure to open is the finding, reported
            problems.append(f"{path}: unreadable ({type(err).__name__}: {err})")
            continue
        expected = parquet_rows.get(path.relative_to(directory).as_posix())
        if expected is not None and rows != expected:
            problems.append(f"{path}: {rows} rows, manifest says {expected}")
    return problems


def with_digests(manifest: Manifest, directory: Path) -> Manifest:
    """``manifest`` with the digests of the files already written in ``directory``."""
    return replace(manifest, extra={**manifest.extra, FILE_DIGESTS: file_digests(directory)})


def set_aside(path: Path, problems: list[str] | None = None) -> Path | None:
    """Move a corrupt output (directory or file) to ``<path>.corrupt-<UTC time>``.

    Returns the new path, or None if another process moved it first. A directory gets the
    problems found in ``verify-problems.json``, as a corrupt raw snapshot does.
    """
    try:
        moved = move_aside(Path(path))
    except FileNotFoundError:
        return None
    if problems is not None and moved.is_dir():
        write_json_atomic(moved / PROBLEMS_FILE, {"output": Path(path).name, "problems": problems})
    return moved


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``<directory>/.lock`` (created if missing) for the block.

    For the short check-then-act sections of concurrent runs: verify-then-set-aside, and the
    claims and cleanups of plan folders. Advisory, per host (or a file system with flock).
    """
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_set_aside(path: Path) -> bool:
    return CORRUPT_MARK in Path(path).name
