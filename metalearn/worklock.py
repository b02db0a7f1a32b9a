"""One run at a time per work directory: an OS-level lock that a dead run cannot keep.

Why an OS lock (``fcntl.flock``) and not a lock *file*: the kernel drops a flock when its holder
exits, however it exits (kill -9 included), so a crashed run never blocks the next one and
nothing has to guess whether a pid is still alive. The lock is taken before the embedded Prefect
database under the work directory is touched, so two runs started at once cannot both migrate it.
The holder writes who it is (pid, host, start time, command) into the lock file, so a second run
can say what it waits for.

Re-entrant within one process: the CLI takes the lock, and the flow it then runs (which also
takes it, for runs started by a Prefect worker) gets the same one.

Example:
    >>> with WorkDirLock(work.lock_file(), wait_s=0):   # LockedError at once if another run holds it
    ...     run_the_pipeline()
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

_HELD: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth) held by this process


class LockedError(RuntimeError):
    """Another live run holds the work directory."""


def holder_of(path: Path) -> dict[str, Any]:
    """What the current holder wrote into the lock file ({} when unknown)."""
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def describe(holder: dict[str, Any], path: Path) -> str:
    if not holder:
        return f"another run holds {path.parent}"
    return (f"another run (pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command')}) holds the work directory {path.parent}")


class WorkDirLock:
    """Context manager: hold ``path`` exclusively; wait up to ``wait_s`` seconds (0: fail at once).

    Args:
        path: the lock file (``WorkDir.lock_file()``).
        wait_s: how long to wait for another run to finish; None waits indefinitely.
        on_wait: called every ``report_every`` seconds while waiting with a one-line message.
    Raises:
        LockedError: the lock is still held by another process when the wait ends.
    """

    def __init__(self, path: Path, wait_s: float | None = 0, on_wait: Callable[[str], None] | None = None,
                 report_every: float = 30.0) -> None:
        self.path = Path(path)
        self.wait_s = wait_s
        self.on_wait = on_wait
        self.report_every = report_every

    def __enter__(self) -> Self:
        key = str(self.path.resolve())
        if key in _HELD:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth + 1)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        started = time.monotonic()
        last_report = started
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - started
                message = describe(holder_of(self.path), self.path)
                if self.wait_s is not None and waited >= self.wait_s:
                    os.close(fd)
                    hint = "wait for it (--wait-lock SECONDS), or stop that process" if not self.wait_s else \
                        f"gave up after {self.wait_s:.0f} s"
                    raise LockedError(f"{message}; {hint}") from None
                if self.on_wait and time.monotonic() - last_report >= self.report_every:
                    self.on_wait(f"waiting {waited:.0f} s: {message}")
                    last_report = time.monotonic()
                time.sleep(0.2)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(UTC).isoformat(timespec="seconds"), "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[key] = (fd, 1)
        return self

    def __exit__(self, *exc: object) -> None:
        key = str(self.path.resolve())
        fd, depth = _HELD[key]
        if depth > 1:
            _HELD[key] = (fd, depth - 1)
            return
        del _HELD[key]
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def held_here(path: Path) -> bool:
    """Whether this process holds the lock at ``path``."""
    return str(Path(path).resolve()) in _HELD
