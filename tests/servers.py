"""Helpers for the registry and consumer tests: a tiny shards directory, tiny learners, an MLflow server.

Imported as ``from servers import ...`` (pytest puts tests/ on sys.path through tests/conftest.py).
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
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from metalearn import io
from metalearn import schema as S

FORMULAS = ["Fe2O3", "NaCl", "MgO", "Al2O3", "SiO2", "TiO2", "ZnO", "CuO", "GaAs", "InP", "CdTe", "ZnS",
            "LiF", "KCl", "CaF2", "BaTiO3", "SrTiO3", "LiCoO2", "NiO", "Cr2O3", "MnO2", "V2O5", "WO3", "MoS2"]


def make_shards(directory: Path) -> Path:
    """A shards directory with what the model needs: manifest.json and feature_stats.parquet."""
    from metalearn.features.composition import featurize_compositions

    directory.mkdir(parents=True, exist_ok=True)
    features, _ = featurize_compositions(FORMULAS)
    values = features.to_numpy(np.float64)
    std = np.nanstd(values, axis=0)
    mean = np.nanmean(values, axis=0)
    stats = pd.DataFrame({"feature": list(features.columns),
                          "mean": np.where(np.isfinite(mean), mean, 0.0),
                          "std": np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)})
    io.write_parquet_atomic(directory / S.FEATURE_STATS_FILE, stats)
    manifest = S.Manifest(stage="shards", source="bundled", content_hash="shards" + "0" * 58, n_rows=len(FORMULAS),
                          created=datetime.now(UTC).isoformat(),
                          inputs={"snapshot": "snap" + "1" * 60, "features": "feat" + "2" * 60},
                          database_version="2025.09.25", extra={"snapshot_id": "bundled-test"})
    io.write_manifest(directory, manifest)
    return directory


def tiny_learners(n_features: int) -> tuple:
    """(regressor, classifier): an untrained deep-kernel GP (has a std) and a ProtoNet, small and on CPU."""
    from metalearn.learn.learners import build_learner

    reg = build_learner("metric", n_features, "regression", hidden=(16,), embed_dim=8, device="cpu", seed=1)
    cls = build_learner("protonet", n_features, "classification", hidden=(16,), embed_dim=8, device="cpu", seed=2)
    return reg, cls


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float, what: str,
               interval: float = 0.3) -> None:
    """Poll ``url`` until it answers 200; fail with the log's tail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout} s: {log.read_text()[-3000:]}")
        time.sleep(interval)


def stop_session(proc: subprocess.Popen) -> None:
    """SIGTERM by PID, then SIGKILL of its own session (the server and its workers only) after 20 s."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextmanager
def mlflow_server(root: Path, timeout: float = 120.0) -> Iterator[str]:
    """``mlflow server`` on loopback (1 worker, no job executor), SQLite + proxied artifacts in ``root``.

    Yields its URL; stopped by PID with SIGTERM (its children exit with it), SIGKILL after 20 s.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "DO_NOT_TRACK": "true",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")  # uvicorn is run by name (pitfall M8)
    log = open(root / "server.log", "wb")  # noqa: SIM115  closed in the finally below, after the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{url}/health", root / "server.log", timeout, "mlflow server", interval=0.5)
        yield url
    finally:
        stop_session(proc)
        log.close()
