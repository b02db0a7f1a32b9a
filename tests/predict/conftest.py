"""Fixtures for the predict tests: real shards, tiny real learners, a real SQLite registry with a champion."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from servers import make_shards, tiny_learners


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("predict-shards") / "shards")


@pytest.fixture(scope="session")
def predictor(shards, tmp_path_factory):
    """A Predictor as a logged model has it: the learners and the featurizer the model carries."""
    from metalearn.predict.featurizer import CarriedFeaturizer, export_featurizer
    from metalearn.predict.predictor import Predictor

    stats = pd.read_parquet(shards / "feature_stats.parquet")
    reg, cls = tiny_learners(len(stats))
    files = export_featurizer(stats["feature"].tolist(), tmp_path_factory.mktemp("featurizer"))
    return Predictor(reg, cls, stats, CarriedFeaturizer.from_files(files["featurizer"]))


@pytest.fixture(scope="session")
def registry_store(shards, tmp_path_factory) -> dict:
    """A SQLite store whose model ``metalearn`` has a champion (logged and promoted for real)."""
    from score_tables import scores_table

    from metalearn import registry
    from metalearn.evaluate.gate import RegistryConfig

    root = tmp_path_factory.mktemp("predict-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    stats = pd.read_parquet(shards / "feature_stats.parquet")
    reg, cls = tiny_learners(len(stats))
    cfg = RegistryConfig(tracking_uri=uri, model_name="metalearn")
    scores = scores_table({"metric": [0.5] * 4, "mean": [1.0] * 4}, ks=(1, 5, 10))
    logged = registry.log_training_run(reg, shards, classifier=cls, scores=scores,
                                       configs={"eval": {"seed": 0, "n_query": 16}}, cfg=cfg)
    assert registry.promote(None, cfg)["decision"] == "promoted"
    return {"root": root, "uri": uri, "db": root / "mlflow.db", "version": logged["version"]}


@pytest.fixture
def store_copy(registry_store, tmp_path) -> dict:
    """A private copy of the registry database (artifacts stay shared): tests may move or lock it."""
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(registry_store["db"], db)
    return {**registry_store, "db": db, "uri": f"sqlite:///{db}"}
