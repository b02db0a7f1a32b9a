"""A competing load for the benchmarks: one busy-looping process per core, as on a shared worker.

Why: shared workers are never quiet; every bench script times its work with and without this load.
Imported by the scripts in this folder (run as ``python bench/<script>.py``, which puts it on the path).
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from contextlib import contextmanager


def _spin() -> None:
    while True:
        pass


@contextmanager
def competing(n: int) -> Iterator[None]:
    """``n`` busy-looping processes for the duration of the block."""
    procs = [mp.Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
