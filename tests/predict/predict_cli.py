"""Running the real console script ``metalearn predict`` in a subprocess (imported as ``predict_cli``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONSOLE = Path(sys.executable).parent / "metalearn"  # the console script installed in this environment


def cli_env(uri: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
           "OMP_NUM_THREADS": "1"}
    env["PATH"] = str(CONSOLE.parent) + os.pathsep + env.get("PATH", "")
    return env


def run_predict(uri: str, workdir: Path, *args: str | Path, cwd: Path | None = None,
                python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``metalearn predict --workdir W ARGS`` with MLFLOW_TRACKING_URI=uri; text output captured."""
    command = [str(CONSOLE), "predict", "--workdir", str(workdir), *map(str, args)]
    if python_flags:  # the console script is a Python file: run it under this interpreter with flags
        command = [sys.executable, *python_flags, *command]
    return subprocess.run(command, cwd=cwd or workdir.parent, env=cli_env(uri), capture_output=True, text=True,
                          timeout=300, check=False)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]
