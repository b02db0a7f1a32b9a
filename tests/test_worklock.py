"""One run per work directory: real processes, a second one is refused or waits, kill -9 frees the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from metalearn.worklock import LockedError, WorkDirLock, held_here, holder_of

HOLD = textwrap.dedent("""
    import sys, time
    from metalearn.worklock import WorkDirLock
    with WorkDirLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def hold(lock: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    lock = tmp_path / ".lock"
    proc = hold(lock, 30)
    try:
        with pytest.raises(LockedError, match=f"pid {proc.pid} .*holds the work directory {tmp_path}"), \
                WorkDirLock(lock, wait_s=0):
            pass
        assert holder_of(lock)["pid"] == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_waiting_process_reports_and_gets_the_lock_when_the_holder_ends(tmp_path):
    lock = tmp_path / ".lock"
    proc = hold(lock, 1.5)
    messages: list[str] = []
    started = time.monotonic()
    with WorkDirLock(lock, wait_s=30, on_wait=messages.append, report_every=0.5):
        assert held_here(lock) and holder_of(lock)["pid"] == os.getpid()
    assert time.monotonic() - started >= 0.5
    assert messages and f"pid {proc.pid}" in messages[0]
    proc.wait()


def test_kill_9_of_the_holder_frees_the_lock_at_once(tmp_path):
    lock = tmp_path / ".lock"
    proc = hold(lock, 300)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with WorkDirLock(lock, wait_s=0):  # no stale lock: the kernel dropped the dead holder's flock
        assert holder_of(lock)["pid"] == os.getpid()


def test_the_lock_is_reentrant_within_one_process(tmp_path):
    lock = tmp_path / ".lock"
    with WorkDirLock(lock, wait_s=0), WorkDirLock(lock, wait_s=0):
        assert held_here(lock)
    assert not held_here(lock)
