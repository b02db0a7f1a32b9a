"""CSV files in and out for ``metalearn predict``: line-numbered reads, input-safe atomic writes.

Why not ``pandas.read_csv``: its errors name a byte offset or nothing, and it reads the whole
file. Here a file is read as UTF-8 line by line (a UTF-8 BOM is accepted), so an undecodable
byte, a NUL, a ragged row (more or fewer fields than the header) is one :class:`InputError`
naming the file and line; query rows come in chunks of bounded size. The output is written to a
temporary sibling and renamed into place only when every row is written, and it may never be one
of the inputs (checked by inode, so another spelling, a symlink or a hard link is caught too).

Example:
    >>> header, rows = read_rows("support.csv", ("formula", "target"), "support")
    >>> rows[0]
    Row(line=2, cells={'formula': 'Fe2O3', 'target': '1.5'})
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, NamedTuple

from metalearn.io import TMP_PREFIX
from metalearn.predict.table import CIF, FORMULA, InputError

csv.field_size_limit(1 << 24)  # a CIF in a cell can exceed the 128 KiB default


class Row(NamedTuple):
    """One CSV record: the line it starts on (the header is line 1) and its cells by column name."""

    line: int
    cells: dict[str, str]


def check_input_file(path: Path, flag: str) -> None:
    """An existing, readable regular file; InputError otherwise (named by its flag and path)."""
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a directory, not a CSV file")
    if not path.exists():
        raise InputError(f"{flag} {path}: no such file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{flag} {path}: not readable (permission denied)")


def check_output_path(output: Path, inputs: dict[str, Path]) -> None:
    """Refuse an output that is a directory or any of the inputs (same inode, whatever the spelling)."""
    if output.is_dir():
        raise InputError(f"--output {output}: is a directory; give a file path")
    for flag, path in inputs.items():
        same = output.exists() and path.exists() and os.path.samefile(output, path)
        if same or output.resolve() == path.resolve():
            raise InputError(f"--output {output} is the same file as {flag} {path}; refusing to overwrite an input")
    parent = output.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"--output {output}: {parent} is not a directory")


def _lines(path: Path, flag: str) -> Iterator[str]:
    """The file's physical lines as text, decoded as UTF-8; InputError names the first bad line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"{flag} {path} line {number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at "
                                 f"column {err.start + 1}); save the file as UTF-8") from None
            if "\x00" in text:
                raise InputError(f"{flag} {path} line {number}: contains a NUL byte at column "
                                 f"{text.index(chr(0)) + 1}; this is not a CSV text file")
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield text


def iter_rows(path: str | Path, required: Sequence[str], flag: str) -> tuple[list[str], Iterator[Row]]:
    """(header, rows) of a CSV; header names are stripped and lower-cased; blank lines are skipped.

    Raises InputError for an empty file, a missing column, a duplicated column, or (while
    iterating) an undecodable line, a NUL byte or a ragged row.
    """
    path = Path(path)
    check_input_file(path, flag)
    reader = csv.reader(_lines(path, flag))
    try:
        header = [c.strip().lower() for c in next(reader)]
    except StopIteration:
        raise InputError(f"{flag} {path}: the file is empty; it needs a header with {list(required)}") from None
    except csv.Error as err:
        raise InputError(f"{flag} {path} line 1: {err}") from None
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise InputError(f"{flag} {path} line 1: column(s) {dupes} appear more than once")
    lacking = [c for c in required if c not in header]
    if FORMULA in lacking and CIF in header:
        lacking.remove(FORMULA)
    if lacking:
        raise InputError(f"{flag} {path}: the file lacks column(s) {lacking}; it has {header}")

    def rows() -> Iterator[Row]:
        start = reader.line_num + 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise InputError(f"{flag} {path} line {start}: {err}") from None
            if fields and len(fields) != len(header):
                raise InputError(f"{flag} {path} line {start}: {len(fields)} field(s) but the header has "
                                 f"{len(header)} ({','.join(header)}); quote cells that contain commas")
            if fields and any(f.strip() for f in fields):
                yield Row(start, dict(zip(header, fields)))
            start = reader.line_num + 1

    return header, rows()


def chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    """Consecutive lists of at most ``size`` rows."""
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def count_lines(path: Path) -> int:
    """Newlines in the file (an upper bound of its records; for a progress bar's total)."""
    total = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            total += block.count(b"\n")
    return total


@contextmanager
def atomic_text(path: Path) -> Iterator[IO[str]]:
    """A text file at ``path`` that appears only when the block succeeds (temp sibling + fsync + rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".csv", dir=path.parent)
    except OSError as err:
        raise InputError(f"--output {path}: cannot write in {path.parent} ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["Row", "atomic_text", "check_input_file", "check_output_path", "chunks", "count_lines", "iter_rows"]
