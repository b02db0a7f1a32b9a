"""The learner factory: presets pin their variant, early hyperparameter checks, the protocol, safe loading."""

from __future__ import annotations

import pytest
import torch
from learner_support import N_FEATURES

from metalearn.learn.learners import LEARNERS, build_learner, check_hyperparams, load_learner
from metalearn.learn.learners.base import Learner


def test_presets_name_and_pin_their_variant():
    assert build_learner("fomaml", N_FEATURES, "regression", hidden=(4,)).cfg.first_order is True
    assert build_learner("maml", N_FEATURES, "regression", hidden=(4,)).name == "maml"
    assert build_learner("metasgd", N_FEATURES, "regression", hidden=(4,)).cfg.variant == "metasgd"
    with pytest.raises(ValueError, match="fixes"):
        build_learner("fomaml", N_FEATURES, "regression", first_order=False)
    with pytest.raises(TypeError):
        build_learner("maml", N_FEATURES, "regression", inner_step=3)  # typo'd key fails at once


@pytest.mark.parametrize(
    "name,task_type",
    [(n, "regression") for n in ("maml", "fomaml", "metasgd", "anil", "metric")]
    + [("protonet", "classification")],
)
def test_every_meta_learner_follows_the_protocol(name, task_type):
    learner = build_learner(name, N_FEATURES, task_type, hidden=(4,), device="cpu")
    assert isinstance(learner, Learner) and learner.name == name and learner.meta_trainable


class NotATensor:
    pass


def test_load_refuses_arbitrary_pickles_unless_trusted(tmp_path):
    learner = build_learner("maml", N_FEATURES, "regression", hidden=(4,), device="cpu")
    torch.save(
        {"name": "maml", "state": {**learner.state_dict(), "extra": NotATensor()}}, tmp_path / "odd.pt"
    )
    with pytest.raises(ValueError, match="trusted=True"):
        load_learner(tmp_path / "odd.pt")
    assert load_learner(tmp_path / "odd.pt", trusted=True).name == "maml"


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names") as err:
        build_learner("reptile", N_FEATURES, "regression")
    for name in ("maml", "fomaml", "metasgd", "anil", "protonet", "metric", "mean", "knn", "rf", "mlp"):
        assert name in str(err.value) and name in LEARNERS


@pytest.mark.parametrize(
    "name,hyperparams,error",
    [
        ("maml", {"inner_step": 3}, TypeError),  # typo'd key
        ("fomaml", {"first_order": False}, ValueError),  # fights the preset
        ("maml", {"inner_steps": -1}, ValueError),  # out of range
        ("knn", {"k": 3}, TypeError),  # baselines too
        ("reptile", {}, ValueError),
    ],
)
def test_check_hyperparams_fails_as_building_would(name, hyperparams, error):
    with pytest.raises(error):
        check_hyperparams(name, hyperparams)
    if name in LEARNERS:
        with pytest.raises(error):
            build_learner(name, N_FEATURES, "regression", **hyperparams)


def test_check_hyperparams_accepts_what_builds():
    for name, hyperparams in [("metasgd", {"inner_steps": 2}), ("protonet", {"embed_dim": 8}), ("rf", {"seed": 1})]:
        check_hyperparams(name, hyperparams)
