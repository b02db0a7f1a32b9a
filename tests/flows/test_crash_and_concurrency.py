"""Real processes: two runs on one work directory, and a run killed with SIGKILL while it holds the slot.

Before: a second run started 3 s after the first died after minutes with a 190-line traceback (two
processes migrating one embedded Prefect database), and a run killed while holding the
``metalearn-nightly`` slot blocked every later run silently for up to 6 hours.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from flow_support import BIN, REPO, TINY

pytestmark = pytest.mark.slow


def start_run(workdir, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "metalearn"), "run", "--workdir", str(workdir), "--params", json.dumps(TINY),
                             *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_a_second_run_is_refused_and_a_killed_run_blocks_nothing(tmp_path):
    first = start_run(tmp_path)
    try:
        wait_for(lambda: (tmp_path / ".lock").exists() and (tmp_path / ".lock").read_text().strip(), 120,
                 "the first run to take the work directory lock")
        second = subprocess.run([str(BIN / "metalearn"), "run", "--workdir", str(tmp_path), "--params",
                                 json.dumps(TINY)], cwd=REPO, capture_output=True, text=True, timeout=120,
                                check=False)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"another run (pid {first.pid}" in second.stderr and "holds the work directory" in second.stderr
        assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1

        # Kill the first run once it is inside the flow, holding the nightly slot (ingest has started).
        wait_for(lambda: (tmp_path / "raw").exists(), 300, "the first run to start ingesting")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()

    third = subprocess.run([str(BIN / "metalearn"), "run", "--workdir", str(tmp_path), "--params", json.dumps(TINY)],
                           cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "decision:" in third.stdout and "stage evaluate:" in third.stdout
    # The dead run's slot was found and freed at once (this run holds the lock, so it must be stale).
    assert "released 1 slot(s) of 'metalearn-nightly'" in third.stdout + third.stderr
