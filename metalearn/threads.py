"""Thread counts, set deliberately for every stage: torch intra-op, BLAS/OpenMP, LightGBM/scikit-learn.

Why: on a shared 2-core worker, two threads per library ran 10-20x slower than one (LightGBM 43 s
vs 1.9 s for one model; a fomaml training 132 s vs 11 s), because every library sizes its pool to
the machine, not to what is free. Each stage entry point runs inside :func:`limited`, which caps
torch, the BLAS/OpenMP pools (through threadpoolctl) and reports the count that LightGBM and
scikit-learn must be given as ``n_jobs``.

The count comes from the argument, else ``$METALEARN_THREADS``, else 1 (the nightly's default; a
dedicated machine can raise it with ``threads`` in the flow parameters or ``--threads``).

Example:
    >>> with limited() as n:
    ...     booster = lightgbm.train({"num_threads": n, ...}, data)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_info, threadpool_limits

THREADS_ENV = "METALEARN_THREADS"


def configured_threads(n: int | None = None) -> int:
    """``n``, else ``$METALEARN_THREADS``, else 1; always >= 1."""
    if n is None:
        raw = os.environ.get(THREADS_ENV, "1")
        try:
            n = int(raw)
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={raw!r} is not a whole number of threads") from None
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    return n


@contextmanager
def limited(n: int | None = None) -> Iterator[int]:
    """Cap torch and every BLAS/OpenMP pool at ``configured_threads(n)`` for the block; yields the count."""
    count = configured_threads(n)
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield count
    finally:
        torch.set_num_threads(before)


def effective_threads() -> dict[str, int]:
    """What is in force now: torch intra-op threads and each BLAS/OpenMP pool (for tests and logs)."""
    pools = {f"{info['internal_api']}:{os.path.basename(info['filepath'])}": int(info["num_threads"])
             for info in threadpool_info()}
    return {"torch": torch.get_num_threads(), **pools}
