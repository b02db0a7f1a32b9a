"""A real ``mlflow models serve`` on loopback for the registry tests (imported as ``registry_serving``)."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from servers import free_port, stop_session, wait_ready


@contextmanager
def model_server(model_uri: str, bin_dir: Path, env: dict[str, str], cwd: Path, log: Path,
                 timeout: float = 180.0) -> Iterator[str]:
    """``<bin_dir>/mlflow models serve -m URI --env-manager local`` on 127.0.0.1; yields its URL.

    ``bin_dir`` goes first on PATH (the server execs ``uvicorn`` by name, pitfall M8). Started in its
    own session and stopped by PID: SIGTERM, then SIGKILL of that session after 20 s.
    """
    port = free_port()
    env = {**env, "PATH": str(bin_dir) + os.pathsep + env.get("PATH", "")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(proc, f"{url}/ping", log, timeout, "mlflow models serve")
            yield url
        finally:
            stop_session(proc)


def invoke(url: str, payload: dict, timeout: float = 60.0) -> tuple[int, str]:
    """POST /invocations (JSON); (status, body) for 2xx and 4xx alike."""
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def table_payload(support: list[tuple[str, float]], query: list[str], **params: str) -> dict:
    """A support/query table as MLflow's ``dataframe_split`` JSON (+ params)."""
    rows = [["support", f, t] for f, t in support] + [["query", f, None] for f in query]
    body: dict = {"dataframe_split": {"columns": ["role", "formula", "target"], "data": rows}}
    if params:
        body["params"] = params
    return body
