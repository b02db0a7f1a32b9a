"""Consumer speed (#12): ``metalearn predict`` cold and warm, 200k query rows, Python loading, REST latency.

Every measurement runs in a fresh process (what a consumer pays), with one thread per process
(OMP_NUM_THREADS=1), quiet and again under a competing load of one busy process per core:

* ``metalearn predict`` (10 support, 100 query): *first call* (empty model cache: resolves the
  alias, copies the model, imports MLflow), *cold cached* (model cached, but the venv's and the
  model's files evicted from the OS page cache with ``posix_fadvise(DONTNEED)``; pages that other
  running processes have mapped stay cached), *warm* (cached, files in the page cache);
* ``metalearn predict`` (10, 200,000): warm; wall time and peak RSS (``wait4``);
* Python: ``mlflow.pyfunc.load_model("models:/...@champion")`` + ``predict``, and the cached
  ``metalearn.predict.local_model.load_local_model`` + ``predict`` (load and predict timed inside);
* REST: ``mlflow models serve --env-manager local`` on loopback, p50/p95 over N requests of
  (10, 100) after one warm-up request.

The model: feature_stats from real bundled formulas, ``fomaml`` (regression) and ``protonet``
(classification) with their default hyperparameters, logged, registered and promoted through
``metalearn.registry`` into a SQLite store, exactly as the nightly flow does. Training does not
change what prediction computes, so the weights are left as initialised.

Usage:
    .venv/bin/python bench/predict.py --rows 200000 --requests 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def bundled(n: int, seed: int) -> pd.DataFrame:
    """n distinct (formula, target) rows from the bundled composition datasets, all featurizable.

    Formulas the features stage refuses (e.g. He2Ne1: missing element data) are left out: the
    consumer refuses them too, and one refused row fails the whole call.
    """
    from metalearn.features.composition import featurize_compositions

    files = sorted((REPO / "data" / "composition").glob("*/*.csv.gz"))
    frame = pd.concat([pd.read_csv(p, keep_default_na=False, usecols=["formula", "target"]) for p in files])
    frame = frame.drop_duplicates("formula").sample(frac=1.0, random_state=seed)
    pool = frame.head(int(n * 1.2) + 100)
    _, errors = featurize_compositions(pool["formula"].reset_index(drop=True))
    keep = np.ones(len(pool), dtype=bool)
    keep[errors.index.to_numpy(dtype=int)] = False
    return pool[keep].head(n).reset_index(drop=True)


def build_store(root: Path) -> str:
    """A SQLite registry whose ``metalearn`` champion is fomaml + protonet on real feature stats."""
    import torch

    torch.set_num_threads(1)
    from metalearn import io, registry
    from metalearn import schema as S
    from metalearn.evaluate.gate import RegistryConfig
    from metalearn.features.composition import featurize_compositions
    from metalearn.learn.learners import build_learner

    shards = root / "shards"
    shards.mkdir(parents=True)
    features, _ = featurize_compositions(bundled(5000, 1)["formula"].tolist())
    values = features.to_numpy()
    mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
    io.write_parquet_atomic(shards / S.FEATURE_STATS_FILE, pd.DataFrame({
        "feature": list(features.columns), "mean": np.where(np.isfinite(mean), mean, 0.0),
        "std": np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)}))
    io.write_manifest(shards, S.Manifest(stage="shards", source="bundled", content_hash="bench" + "0" * 59,
                                         n_rows=5000, created=datetime.now(UTC).isoformat()))
    n = len(features.columns)
    reg = build_learner("fomaml", n, "regression", device="cpu")
    cls = build_learner("protonet", n, "classification", device="cpu")
    rows = [(f"t{t}", "meta-test-property", "band_gap", k, d, learner, "mae_mad", v)
            for t in range(4) for k in (1, 5, 10) for d in range(2) for learner, v in (("fomaml", 0.5), ("mean", 1.0))]
    scores = pd.DataFrame(rows, columns=["task_id", "setting", "family", "k", "draw", "learner", "metric", "value"])
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = RegistryConfig(tracking_uri=uri, model_name="metalearn")
    registry.log_training_run(reg, shards, classifier=cls, scores=scores, configs={"eval": {"seed": 0}}, cfg=cfg)
    assert registry.promote(None, cfg)["decision"] == "promoted"
    return uri


def evict(paths: list[Path]) -> None:
    """Drop these files' clean, unmapped pages from the OS page cache (a cold start, for them)."""
    for top in paths:
        for path in [top] if top.is_file() else top.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def timed(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, stdout) of one child process; raises on failure.

    The peak comes from GNU time (``%M``): a child forked from this (large) process would report
    this process's size as its own maximum.
    """
    with tempfile.NamedTemporaryFile("r") as usage, tempfile.TemporaryFile("w+") as out, \
            tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        code = subprocess.call(["/usr/bin/time", "-f", "%M", "-o", usage.name, *cmd], env=env, cwd=cwd,
                               stdout=out, stderr=err)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if code:
            raise RuntimeError(f"{cmd} failed ({code}): {err.read()[-2000:]}")
        return wall, int(usage.read().split()[-1]) / 1024, out.read()


@contextmanager
def busy(n: int):
    """n processes spinning one core each, stopped by PID."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for p in procs:
            os.kill(p.pid, signal.SIGTERM)
            p.wait(timeout=10)


def predict_cmd(work: Path, support: Path, query: Path, out: Path) -> list[str]:
    return [str(BIN / "metalearn"), "predict", "--workdir", str(work), "--support", str(support),
            "--query", str(query), "--output", str(out)]


PY_MLFLOW = """
import json, sys, time
t0 = time.perf_counter()
import mlflow, pandas as pd
m = mlflow.pyfunc.load_model("models:/metalearn@champion")
t1 = time.perf_counter()
table = pd.read_csv(sys.argv[1])
m.predict(table)
t2 = time.perf_counter()
print(json.dumps({"load": t1 - t0, "predict": t2 - t1}))
"""

PY_LOCAL = """
import json, sys, time
t0 = time.perf_counter()
import pandas as pd
from metalearn.predict.local_model import cached_model_dir, load_local_model
path, _ = cached_model_dir("models:/metalearn@champion", workdir=sys.argv[2])
m = load_local_model(path)
t1 = time.perf_counter()
m.predict(pd.read_csv(sys.argv[1]))
t2 = time.perf_counter()
print(json.dumps({"load": t1 - t0, "predict": t2 - t1}))
"""


@contextmanager
def model_server(env: dict, cwd: Path, log: Path):
    from servers import free_port  # tests/servers.py: the same loopback helpers as the tests

    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", "models:/metalearn@champion",
                                 "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"{url}/ping", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None:
                        raise RuntimeError(log.read_text()[-2000:]) from None
                    time.sleep(0.3)
            yield url
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def rest_latency(url: str, body: bytes, n: int) -> tuple[float, float]:
    def once() -> float:
        request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as resp:
            resp.read()
            assert resp.status == 200
        return time.perf_counter() - start

    once()  # warm-up: the first request pays for lazy imports
    times = np.array([once() for _ in range(n)]) * 1000
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def run(rows: int, n_requests: int, loads: list[str]) -> list[dict]:
    sys.path.insert(0, str(REPO / "tests"))
    root = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    uri = build_store(root / "store")
    env = {**ENV, "MLFLOW_TRACKING_URI": uri}
    data = bundled(rows + 10, 2)
    support, small, big = root / "support.csv", root / "query100.csv", root / "query200k.csv"
    data.iloc[:10].to_csv(support, index=False)
    data.iloc[10:110][["formula"]].to_csv(small, index=False)
    data.iloc[10:10 + rows][["formula"]].to_csv(big, index=False)
    table = pd.concat([data.iloc[:10].assign(role="support"),
                       data.iloc[10:110][["formula"]].assign(role="query", target=np.nan)])[["role", "formula", "target"]]
    table.to_csv(root / "table.csv", index=False)
    body = json.dumps({"dataframe_split": {"columns": list(table.columns),
                                           "data": table.astype(object).where(table.notna(), None).values.tolist()}}).encode()
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    results = []
    for load in loads:
        with busy(os.cpu_count() or 2) if load == "loaded" else _nothing():
            row = {"load": load, "loadavg": [os.getloadavg()[0]]}
            work = root / f"work-{load}"
            evict([site, root])
            row["first call (10,100)"] = timed(predict_cmd(work, support, small, root / "o.csv"), env, root)
            evict([site, root])
            row["cold cached (10,100)"] = timed(predict_cmd(work, support, small, root / "o.csv"), env, root)
            timed(predict_cmd(work, support, small, root / "o.csv"), env, root)
            row["warm (10,100)"] = min((timed(predict_cmd(work, support, small, root / "o.csv"), env, root)
                                        for _ in range(3)), key=lambda r: r[0])
            row["import breakdown"] = import_breakdown(predict_cmd(work, support, small, root / "o.csv"), env, root)
            row[f"warm (10,{rows})"] = timed(predict_cmd(work, support, big, root / "o.csv"), env, root)
            assert len(pd.read_csv(root / "o.csv")) == rows
            _, _, out = timed([sys.executable, "-c", PY_MLFLOW, str(root / "table.csv")], env, root)
            row["mlflow.pyfunc.load_model + predict"] = json.loads(out)
            _, _, out = timed([sys.executable, "-c", PY_LOCAL, str(root / "table.csv"), str(work)], env, root)
            row["load_local_model (cached) + predict"] = json.loads(out)
            with model_server(env, root, root / f"serve-{load}.log") as url:
                row["REST p50/p95 ms"] = rest_latency(url, body, n_requests)
            row["loadavg"].append(os.getloadavg()[0])
            results.append(row)
    shutil.rmtree(root, ignore_errors=True)
    return results


def import_breakdown(cmd: list[str], env: dict, cwd: Path) -> dict[str, float]:
    """Seconds spent importing torch, torch._dynamo, pandas, mlflow and matminer in one warm call."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *cmd], env=env, cwd=cwd, capture_output=True,
                          text=True, check=True)
    out: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if line.startswith("import time:"):
            _, cumulative, name = (x.strip() for x in line[len("import time:"):].split("|"))
            if name in ("torch", "torch._dynamo", "pandas", "mlflow", "matminer", "pymatgen.core"):
                out[name] = out.get(name, 0.0) + int(cumulative) / 1e6
    return out


@contextmanager
def _nothing():
    yield


def table_md(results: list[dict], rows: int, n_requests: int) -> str:
    lines = ["| measurement | " + " | ".join(r["load"] for r in results) + " |",
             "|---|" + "---|" * len(results)]
    for key in ("first call (10,100)", "cold cached (10,100)", "warm (10,100)", f"warm (10,{rows})"):
        lines.append(f"| `metalearn predict` {key}: wall, peak RSS | "
                     + " | ".join(f"{r[key][0]:.2f} s, {r[key][1]:.0f} MB" for r in results) + " |")
    for key in ("mlflow.pyfunc.load_model + predict", "load_local_model (cached) + predict"):
        lines.append(f"| Python {key} (10,100) | "
                     + " | ".join(f"load {r[key]['load']:.2f} s + predict {r[key]['predict'] * 1000:.0f} ms"
                                  for r in results) + " |")
    lines.append(f"| REST p50 / p95 over {n_requests} requests (10,100) | "
                 + " | ".join(f"{r['REST p50/p95 ms'][0]:.0f} / {r['REST p50/p95 ms'][1]:.0f} ms" for r in results)
                 + " |")
    lines.append("| of a warm (10,100) call: import time of torch / torch._dynamo / pandas / pymatgen.core "
                 "/ mlflow / matminer | " + " | ".join(
                     " / ".join(f"{r['import breakdown'].get(m, 0.0):.2f}" for m in
                                ("torch", "torch._dynamo", "pandas", "pymatgen.core", "mlflow", "matminer")) + " s"
                     for r in results) + " |")
    lines.append("| machine load average (1 min) at start / end | "
                 + " | ".join(f"{r['loadavg'][0]:.1f} / {r['loadavg'][1]:.1f}" for r in results) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--loads", default="quiet,loaded", help="comma list of quiet, loaded")
    args = parser.parse_args()
    results = run(args.rows, args.requests, args.loads.split(","))
    print(table_md(results, args.rows, args.requests))


if __name__ == "__main__":
    main()
