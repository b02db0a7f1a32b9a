"""Shared by the flow and task tests: a tiny slice of the bundled data, one Prefect test harness per
session, and starting/stopping real servers and workers on loopback by PID.

Imported as ``flow_support``, found by path through tests/conftest.py (tests/ is not a package); the
flow and task conftests import its fixtures.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Composition-only datasets (no CIFs to featurize), covering train, val and test families and both
# task types, 60 rows each: the whole pipeline runs in about a minute on 2 cores.
TINY_DATASETS = [
    "aflow__Egap", "OQMD_Bandgap", "CritExam__Ef", "OQMD_Formation_Enthalpy", "mp_e_hull",
    "aflow__ael_bulk_modulus_vrh", "OQMD_Volume_per_atom", "aflow__ael_shear_modulus_vrh", "mp_shear_modulus",
    "matbench_dielectric", "aflow__agl_thermal_conductivity_300K", "matbench_expt_is_metal", "matbench_glass",
]
# A permissive promotion gate: a 20-step model must still end as champion so the plumbing is checked
# end to end (the gate itself is the registry's own tests' business).
TINY: dict[str, Any] = {
    "profile": "quick",
    "ingest": {"max_rows_per_dataset": 60, "datasets": TINY_DATASETS},
    "shards": {"min_task_rows": 30},
    "train": {"max_steps": 20, "eval_every": 10},
    "registry": {"min_improvement": -1.0, "min_win_rate": 0.0},
}

_HARNESS: dict[str, Any] = {}


@contextmanager
def kept_env(*names: str) -> Iterator[None]:
    """Restore environment variables after the block.

    Why: ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI``, and the registry's
    ``_tracking`` context restores the *previous default* (``sqlite:///<cwd>/mlflow.db``) into it, so
    after one registry call every later flow in the same process would resolve that store instead of
    the work directory's. One flow per process (CLI, workers) is unaffected; tests run many.
    """
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def harness_start() -> None:
    """Enter prefect_test_harness once per session (both conftests share it)."""
    if "cm" not in _HARNESS:
        from prefect.testing.utilities import prefect_test_harness

        cm = prefect_test_harness(server_startup_timeout=120)
        cm.__enter__()
        _HARNESS["cm"] = cm


def harness_stop() -> None:
    cm = _HARNESS.pop("cm", None)
    if cm is not None:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect database and server for the session (~10 s once, then ~1 s per flow)."""
    harness_start()
    yield
    harness_stop()


@pytest.fixture(autouse=True)
def _mlflow_uri_restored() -> Iterator[None]:
    with kept_env("MLFLOW_TRACKING_URI"):
        yield


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_sigint() -> None:
    # Pitfall P5: a child of a shell that ignores SIGINT inherits "ignored", and Prefect's worker then
    # never stops on SIGTERM (its handler re-sends SIGINT). Restore the default before exec.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.Popen:
    handle = open(log, "ab")  # noqa: SIM115  closed with the process, in stop()
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            cwd=cwd, preexec_fn=_default_sigint)  # noqa: PLW1509  signal() only
    proc._log_handle = handle  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM by PID, then SIGKILL if it has not exited within ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    proc._log_handle.close()  # type: ignore[attr-defined]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the ``metalearn`` console script in a subprocess."""
    return subprocess.run([str(BIN / "metalearn"), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO, check=False)
