"""A logged metalearn model from its local files, without MLflow: the pyfunc's core and the fast loader.

:class:`MetalearnModel` is what the MLflow pyfunc wraps (the wrapper lives in the model's own code
file, written by registry.py, which adds only MLflow's error type): ``predict(table, params)``
returns ``formula, prediction`` (+ ``uncertainty``) for the table's query rows. It is built from the
model's artifacts: the learners, ``feature_stats.parquet`` and the featurizer the model carries.

:func:`cached_model_dir` finds a ``models:/`` or ``runs:/`` URI in the cache of
:mod:`metalearn.predict.model_cache` without opening the registry (a directory is itself); on a
miss, ``metalearn.registry.fetch_model_copy`` (MLflow) fills the cache. Reading a cached copy
imports no MLflow at all.

Example:
    >>> path, note = cached_model_dir("models:/metalearn@champion", workdir="/data/metalearn")
    >>> path = path or registry.fetch_model_copy("models:/metalearn@champion", workdir="/data/metalearn")
    >>> load_local_model(path).predict(table)      # DataFrame: formula, prediction, uncertainty
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from metalearn.layout import WorkDir
from metalearn.predict.featurizer import FEATURIZER_FILE, TABLES_FILE
from metalearn.predict.model_cache import ModelCache, parse_model_uri, resolve_tracking_uri
from metalearn.predict.predictor import CHUNK_ROWS, Predictor
from metalearn.predict.table import InputError

MLMODEL = "MLmodel"
PARAMS = ("task_type", "transform")


class MetalearnModel:
    """Adapt on a table's support rows, predict its query rows (the pyfunc's behaviour, no MLflow).

    Args:
        predictor: the :class:`Predictor` built from the model's artifacts.
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    @classmethod
    def from_artifacts(cls, artifacts: Mapping[str, str]) -> MetalearnModel:
        """From the pyfunc's artifact paths: regressor, classifier (optional), feature_stats, featurizer(_tables)."""
        return cls(Predictor.from_files(artifacts["regressor"], artifacts.get("classifier"),
                                        artifacts["feature_stats"], artifacts.get("featurizer"),
                                        artifacts.get("featurizer_tables"), artifacts.get("representation")))

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike) -> MetalearnModel:
        """From a model directory as MLflow writes it (``MLmodel`` names the artifacts' paths)."""
        return cls.from_artifacts(artifact_paths(model_dir))

    def predict(self, table: pd.DataFrame, params: Mapping[str, Any] | None = None,
                chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
        """``formula, prediction`` (+ ``uncertainty``) per query row; InputError for bad input or params."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise InputError(f"unknown parameter(s) {unknown}; this model takes {list(PARAMS)}")
        task_type = params.get("task_type") or None
        return self.predictor.predict_table(table, task_type=None if task_type == "auto" else task_type,
                                            transform=params.get("transform") or "none", chunk_rows=chunk_rows)


def artifact_paths(model_dir: str | os.PathLike) -> dict[str, str]:
    """Artifact name -> absolute path, read from the model directory's ``MLmodel`` file."""
    import yaml

    root = Path(model_dir)
    try:
        text = (root / MLMODEL).read_text()
    except OSError as err:
        raise FileNotFoundError(f"{root} is not a model directory (no readable {MLMODEL}: {err.strerror})") from None
    config = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    flavor = (config.get("flavors") or {}).get("python_function") or {}
    artifacts = flavor.get("artifacts") or {}
    paths = {name: str(root / spec["path"]) for name, spec in artifacts.items()}
    if "regressor" not in paths or "feature_stats" not in paths:
        raise ValueError(f"{root / MLMODEL} is not a metalearn model (artifacts: {sorted(paths)})")
    tables = Path(paths.get("featurizer", root / "artifacts" / FEATURIZER_FILE)).with_name(TABLES_FILE)
    if "featurizer_tables" not in paths and tables.is_file():
        paths["featurizer_tables"] = str(tables)
    return paths


def cached_model_dir(uri: str, tracking_uri: str | None = None, workdir: str | os.PathLike | None = None
                     ) -> tuple[Path | None, str | None]:
    """(local directory holding ``uri`` or None on a cache miss, a note for the user or None).

    Never opens the registry: a directory is returned as it is, a ``models:/`` or ``runs:/`` URI
    only if the cache under the work directory holds it (see model_cache for when an alias is
    trusted). Raises FileNotFoundError for a path that is not a model directory.
    """
    if parse_model_uri(uri) is None:
        path = Path(uri.removeprefix("file://")).expanduser()
        if not (path / MLMODEL).is_file():
            raise FileNotFoundError(f"--model {uri}: not a models:/ or runs:/ URI and not a model directory")
        return path, None
    store = resolve_tracking_uri(tracking_uri, workdir)
    return ModelCache(WorkDir.resolve(workdir).model_cache()).lookup(store, uri)


def load_local_model(model_dir: str | os.PathLike) -> MetalearnModel:
    """The model in a local directory (a cached copy, a downloaded or saved model)."""
    return MetalearnModel.from_dir(model_dir)


__all__ = ["MLMODEL", "MetalearnModel", "artifact_paths", "cached_model_dir", "load_local_model"]
