"""What one training run records: params, metric points, lineage tags, and the files it carries.

Everything here is computed before anything is logged, so it needs no mlflow: registry.py turns
these values into MLflow params, tags, metrics and artifacts. Secrets are scrubbed on the way (see
:mod:`metalearn.secrets`).

Example:
    >>> tags = lineage(io.read_manifest(shards_dir))      # {"lineage.shards_hash": ..., "git.commit": ...}
    >>> metric_points([{"step": 1, "train_loss": 0.5}], {"best_val_loss": 0.4}, None)
    [('train/train_loss', 0.5, 1), ('train/best_val_loss', 0.4, 0)]
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from metalearn import io
from metalearn import schema as S
from metalearn.config import flatten
from metalearn.evaluate.report import summarize
from metalearn.learn.learners import save_learner
from metalearn.learn.learners.base import Learner
from metalearn.predict.featurizer import FEATURIZER_FILE, export_featurizer
from metalearn.represent.transfer import MODELS_FILE, OOF_FILE
from metalearn.secrets import copy_scrubbed, redact

# --- lineage -------------------------------------------------------------------------------------

def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout holding this package, or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, timeout=10,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lineage(shards_manifest: Any) -> dict[str, str]:
    """Tags tying a run to its shards, features, snapshot, data source and code version."""
    extra = shards_manifest.extra or {}
    return {
        "lineage.shards_hash": shards_manifest.content_hash,
        "lineage.snapshot_hash": str(shards_manifest.inputs.get("snapshot", "unknown")),
        "lineage.features_hash": str(shards_manifest.inputs.get("features", "unknown")),
        "lineage.snapshot_id": str(extra.get("snapshot_id", "unknown")),
        "lineage.source": str(shards_manifest.source),
        "lineage.database_version": str(shards_manifest.database_version or "unknown"),
        "git.commit": git_commit(),
    }


# What the prediction path imports (torch, pandas, numpy, pyarrow, pymatgen, yaml; scikit-learn for
# the baseline learners), plus mlflow for the pyfunc. Never metalearn itself: the model carries its
# code (code_paths), and no index has the project.
_RUNTIME = ("torch", "mlflow", "pandas", "numpy", "pyarrow", "pymatgen", "scikit-learn", "PyYAML")


def pip_requirements(structure: bool = False, representation: bool = False) -> list[str]:
    """Exact pins of the published packages the model needs at load time (pitfall M4: explicit).

    Args:
        structure: the model uses structure features, whose featurizers are matminer's.
        representation: the model carries the transfer representation (LightGBM members).
    """
    def pin(dist: str) -> str:
        return f"{dist}=={importlib_metadata.version(dist).split('+')[0]}"  # torch 2.13.0+cpu -> 2.13.0

    extra = (("matminer",) if structure else ()) + (("lightgbm",) if representation else ())
    return [pin(d) for d in (*_RUNTIME, *extra)]


def content_key(artifacts: Mapping[str, str], shards_hash: str, configs: Mapping[str, Any],
                scores: pd.DataFrame | None, manifests: Mapping[str, str | Path] | None, model_name: str,
                scores_learner: str | None, register: bool) -> str:
    """What a training run records, by content: equal keys mean a rerun would log the same run.

    The learners' and representation's files, the shards, the scores, the configs, the upstream
    manifests and the registered model name. Not the run's name, tags or Prefect ids: a night with
    unchanged inputs must find yesterday's run, not add one.
    """
    files = {name: io.hash_bytes(Path(path).read_bytes()) for name, path in sorted(artifacts.items())
             if name in ("regressor", "classifier") and Path(path).is_file()}
    if "representation" in artifacts:
        files["representation"] = io.hash_bytes((Path(artifacts["representation"]) / MODELS_FILE).read_bytes())
    upstream = {}
    for stage, path in sorted((manifests or {}).items()):
        path = Path(path)
        manifest = path / io.MANIFEST if path.is_dir() else path
        upstream[stage] = io.hash_bytes(manifest.read_bytes()) if manifest.is_file() else str(path)
    return io.hash_json({"files": files, "shards": shards_hash, "configs": flatten("", dict(configs)),
                         "scores": io.hash_frame(scores) if scores is not None else None, "upstream": upstream,
                         "model_name": model_name, "scores_learner": scores_learner, "register": register})[:32]


def copy_representation(src: Path, dst: Path) -> Path:
    """The representation's model files only (not the vectors of the shards it was built for)."""
    dst.mkdir(parents=True)
    for name in (MODELS_FILE, OOF_FILE):
        shutil.copyfile(src / name, dst / name)
    return dst


def package_code(dst: Path) -> Path:
    """A clean copy of the ``metalearn`` package (sources only) at ``dst/metalearn``, for code_paths."""
    src = Path(__file__).resolve().parent
    shutil.copytree(src, dst / src.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    return dst / src.name


def learner_tags(reg_name: str, cls_name: str, scores_learner: str | None, protocol: str,
                 featurizer_file: str | Path) -> dict[str, str]:
    """``metalearn.*`` tags: the learners, their name in the scores, eval protocol, feature set version."""
    return {"metalearn.learner": reg_name, "metalearn.classifier": cls_name,
            "metalearn.scores_learner": scores_learner or reg_name, "metalearn.eval_protocol": protocol,
            "metalearn.feature_set_version": json.loads(Path(featurizer_file).read_text())["version"]}


# --- params and metrics --------------------------------------------------------------------------

def run_params(reg_name: str, cls_name: str, configs: Mapping[str, Any], regressor_file: str | Path
               ) -> dict[str, Any]:
    """Learner names, every stage config flattened as ``<stage>.<key>``, the learner's hyperparams."""
    params: dict[str, Any] = {"learner.name": reg_name, "classifier.name": cls_name or "none"}
    for stage, value in configs.items():
        params.update(flatten(stage, value))
    state = torch.load(regressor_file, map_location="cpu", weights_only=False)["state"]
    params.update(flatten("learner", state.get("hyperparams", {})))
    return params


def metric_key(key: str) -> str:
    """``key`` with characters MLflow rejects in metric names replaced by ``_``."""
    return re.sub(r"[^0-9A-Za-z_\-. /:]", "_", key)


def summary_metrics(scores: pd.DataFrame) -> dict[str, float]:
    """Every figure of evaluate.summarize as ``eval/<setting>/<metric>/k<k>/<learner>.<stat>``."""
    out = {}
    for row in summarize(scores).to_dict("records"):
        stem = f"eval/{row['setting']}/{row['metric']}/k{row['k']}/{row['learner']}"
        for stat, value in row.items():
            numeric = stat not in ("setting", "metric", "k", "learner") and isinstance(value, (int, float))
            if numeric and math.isfinite(value):
                out[metric_key(f"{stem}.{stat}")] = float(value)
    return out


def load_history(history: Iterable[Mapping[str, float]] | str | Path) -> list[Mapping[str, float]]:
    """A training curve given as entries or as the JSON file of them."""
    if isinstance(history, (str, Path)):
        return json.loads(Path(history).read_text())
    return list(history)


def metric_points(history: Iterable[Mapping[str, float]] | str | Path, figures: Mapping[str, float] | None,
                  scores: pd.DataFrame | None) -> list[tuple[str, float, int]]:
    """(key, value, step): training curves at their steps, then single figures and evaluation figures at 0."""
    out = [(metric_key(f"train/{key}"), float(value), int(entry["step"]))
           for entry in load_history(history) for key, value in entry.items()
           if key != "step" and value is not None and math.isfinite(float(value))]
    single = {metric_key(f"train/{k}"): float(v) for k, v in (figures or {}).items()
              if isinstance(v, (int, float)) and math.isfinite(float(v))}
    if scores is not None:
        single.update(summary_metrics(scores))
    return out + [(k, v, 0) for k, v in single.items()]


# --- files ---------------------------------------------------------------------------------------

def learner_file(learner: Learner | str | Path, dst: Path) -> tuple[Path, str]:
    """A save_learner file for ``learner`` (copied or written to ``dst``) and the learner's name."""
    if isinstance(learner, (str, Path)):
        blob = torch.load(learner, map_location="cpu", weights_only=False)
        shutil.copyfile(learner, dst)
        return dst, str(blob["name"])
    save_learner(learner, dst)
    return dst, learner.name


def model_artifacts(learner: Learner | str | Path, classifier: Learner | str | Path | None, shards_dir: Path,
                    tmp: Path, representation: str | Path | None = None) -> tuple[dict[str, str], str, str, bool]:
    """The files the pyfunc carries and the learners' names, and whether it uses structure features.

    Files: the learners, feature_stats.parquet, the featurizer (featurizer.json with the feature
    names and settings, featurizer_tables.npz with the elemental tables) and, for a head on the
    transfer representation, the representation (its LightGBM members and out-of-fold table), so a
    consumer's formula gets the same vector the head was evaluated on.
    """
    artifacts = {"feature_stats": str(shards_dir / S.FEATURE_STATS_FILE)}
    reg_path, reg_name = learner_file(learner, tmp / "regressor.pt")
    artifacts["regressor"] = str(reg_path)
    cls_name = ""
    if classifier is not None:
        cls_path, cls_name = learner_file(classifier, tmp / "classifier.pt")
        artifacts["classifier"] = str(cls_path)
    if representation is not None:
        artifacts["representation"] = str(copy_representation(Path(representation), tmp / "representation"))
    names = io.read_parquet(Path(artifacts["feature_stats"]))["feature"].tolist()
    artifacts.update(export_featurizer(names, tmp))
    structure = bool(json.loads((tmp / FEATURIZER_FILE).read_text())["structure_names"])
    return artifacts, reg_name, cls_name, structure


def stage_run_files(out: Path, shards_dir: Path, manifests: Mapping[str, str | Path] | None,
                    scores: pd.DataFrame | None, report_files: Iterable[str | Path], secrets: list[str]) -> None:
    """Stage ``manifests/<stage>.json`` and ``evaluation/*`` under ``out``, secrets scrubbed."""
    (out / "manifests").mkdir()
    for stage, path in {"shards": shards_dir, **(manifests or {})}.items():
        path = Path(path) / io.MANIFEST if Path(path).is_dir() else Path(path)
        text = json.dumps(redact(json.loads(path.read_text()), secrets), indent=2, sort_keys=True)
        (out / "manifests" / f"{stage}.json").write_text(text)
    (out / "evaluation").mkdir()
    if scores is not None:
        (out / "evaluation" / "scores.csv").write_text(redact(scores.to_csv(index=False), secrets))
    for path in map(Path, report_files):
        if path.name != "scores.csv" or scores is None:
            copy_scrubbed(path, out / "evaluation" / path.name, secrets)


__all__ = ["git_commit", "learner_file", "learner_tags", "lineage", "load_history", "metric_key",
           "metric_points", "model_artifacts", "package_code", "pip_requirements", "run_params",
           "stage_run_files", "summary_metrics"]
