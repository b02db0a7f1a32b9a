"""The nightly's global concurrency slot: one run at a time, and a dead run never keeps the slot.

Two cases:

- **Embedded Prefect** (no ``PREFECT_API_URL``): the Prefect database lives under the work
  directory and the run already holds the work directory's OS lock (:mod:`metalearn.worklock`),
  so no other live run can be using this database. A slot still marked active was left by a run
  that died (kill -9: the ephemeral server keeps leases in memory and runs no repossessor), and is
  released before acquiring.
- **A Prefect server**: slots are leased for :data:`LEASE_S` seconds and renewed by the holder
  while it lives; the server's repossessor frees the slot of a dead holder when its lease lapses.

Either way a waiting run says, every :data:`REPORT_EVERY_S` seconds, what it waits for, since
when, and how to clear it, instead of waiting silently.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

NIGHTLY_LIMIT = "metalearn-nightly"  # global concurrency limit: one nightly run at a time
NIGHTLY_WAIT_S = 6 * 3600  # a run waiting longer than this for the slot fails instead of piling up
LEASE_S = 120.0  # renewed by a live holder; a dead holder's slot is free again this long after it died
REPORT_EVERY_S = 60.0


def ensure_global_limit(name: str = NIGHTLY_LIMIT, limit: int = 1) -> int:
    """Create the global concurrency limit ``name`` unless it exists; returns its active slots."""
    with get_client(sync_client=True) as client:
        try:
            return int(client.read_global_concurrency_limit_by_name(name).active_slots)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            except ObjectAlreadyExists:  # created by a run starting at the same moment
                pass
            return 0


def release_stale_slots(name: str = NIGHTLY_LIMIT) -> int:
    """Mark every slot of ``name`` free; only for a database no live run can be using. Returns how many."""
    with get_client(sync_client=True) as client:
        active = int(client.read_global_concurrency_limit_by_name(name).active_slots)
        if active:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
    return active


@contextmanager
def nightly_slot(log: Callable[[str], None], wait_s: float = NIGHTLY_WAIT_S, name: str = NIGHTLY_LIMIT,
                 embedded: bool | None = None) -> Iterator[None]:
    """Hold the nightly slot for the block; see the module docstring for how dead holders are handled."""
    embedded = not os.environ.get("PREFECT_API_URL") if embedded is None else embedded
    ensure_global_limit(name)
    if embedded:
        freed = release_stale_slots(name)
        if freed:
            log(f"released {freed} slot(s) of {name!r} left by a run that died (this run holds the work "
                "directory's lock, so no live run can hold them)")
    since = datetime.now(UTC).isoformat(timespec="seconds")
    deadline = time.monotonic() + wait_s
    with ExitStack() as stack:
        while True:
            remaining = deadline - time.monotonic()
            try:
                stack.enter_context(concurrency(name, occupy=1, timeout_seconds=max(min(REPORT_EVERY_S, remaining), 1),
                                                lease_duration=LEASE_S, strict=True))
                break
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"gave up waiting for the {name!r} slot after {wait_s:.0f} s "
                                       f"(waiting since {since})") from None
                log(f"waiting since {since} for the {name!r} slot held by another nightly run; a dead "
                    f"holder's slot frees within {LEASE_S:.0f} s of its death. To clear it by hand: "
                    f"`prefect gcl update {name} --active-slots 0`")
        yield
