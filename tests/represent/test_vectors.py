"""The representation of a set of real shards: its leakage rule, its vectors, and learners reading them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from metalearn import schema as S
from metalearn.ingest.snapshot import read_table
from metalearn.layout import WorkDir
from metalearn.learn.learners import load_learner, uses_representation
from metalearn.learn.sampling import TaskSampler
from metalearn.learn.stage import LearnerConfig, train_learner
from metalearn.represent.rows import MATERIAL_KEY, training_rows
from metalearn.represent.transfer import TransferConfig, TransferRepresentation
from metalearn.represent.vectors import Vectors, leakage_rule, represent_shards, snapshot_of_shards
from metalearn.shards.store import read_index, read_task_rows

SMALL = TransferConfig(n_estimators=15, n_folds=3, max_rows_per_dataset=400, min_member_rows=30)


@pytest.fixture(scope="module")
def represented(small_shards):
    work = WorkDir.resolve(small_shards.parents[3])
    snapshot = snapshot_of_shards(work, small_shards)
    return work, snapshot, represent_shards(work, snapshot, small_shards, SMALL)


def test_test_families_are_left_out_and_held_out_materials_never_trained_on(small_shards, represented):
    _, snapshot, out = represented
    index = read_index(small_shards)
    test_families = set(index.loc[index[S.SPLIT] == S.META_TEST_PROPERTY, S.FAMILY])
    assert test_families and set(out.excluded_families) == test_families
    rep = TransferRepresentation.load(out.representation_dir)
    assert not {m.family for m in rep.members_} & test_families
    _, held, _ = leakage_rule(small_shards)
    # No member was fitted on a held-out (family, material) pair: the OOF table holds every training row.
    trained = rep.oof_.merge(pd.DataFrame({S.DATASET_ID: [m.dataset_id for m in rep.members_],
                                           S.FAMILY: [m.family for m in rep.members_]}), on=S.DATASET_ID)
    pairs = set(zip(trained[S.FAMILY], trained[MATERIAL_KEY]))
    assert held.empty or not pairs & set(zip(held[S.FAMILY], held[S.REDUCED_FORMULA]))
    # ...and those pairs were in the data: the rule removed something real.
    records, properties = read_table(snapshot, "records"), read_table(snapshot, "properties")
    rows, _ = training_rows(records, properties, exclude_families=out.excluded_families, min_rows=30)
    if not held.empty:
        assert set(zip(rows[S.FAMILY], rows[MATERIAL_KEY])) & set(zip(held[S.FAMILY], held[S.REDUCED_FORMULA]))
        assert out.n_held_out_materials > 0


def test_vectors_cover_every_shards_material_and_mask_a_tasks_own_family(small_shards, represented):
    _, _, out = represented
    vectors = Vectors.load(out.vectors_dir)
    sampler = TaskSampler(small_shards, 3, 3, 2, task_type="regression", vectors=vectors)
    tasks = [t for split in S.SPLITS for t in sampler.tasks(split, 1)]
    assert tasks and all(t.x.shape == (t.n_rows, vectors.n_features) and np.isfinite(t.x).all() for t in tasks)
    family = vectors.families[0]
    assert not vectors.mask_for(family)[0] and vectors.mask_for("no-such-family").all()
    with pytest.raises(KeyError, match="no representation vector"):
        vectors.matrix(["Xx9Zz"])


def test_a_rerun_loads_instead_of_fitting(small_shards, represented):
    work, snapshot, out = represented
    again = represent_shards(work, snapshot, small_shards, SMALL)
    assert not again.created and again.key == out.key and again.vectors_dir == out.vectors_dir


def test_meta_train_inputs_hide_the_own_family_member_and_meta_test_inputs_are_untouched(small_shards, represented):
    _, _, out = represented
    vectors = Vectors.load(out.vectors_dir)
    sampler = TaskSampler(small_shards, 3, 3, 2, task_type="regression", vectors=vectors)
    seen = 0
    for split in S.SPLITS:
        for task in sampler.tasks(split, 1):
            raw = vectors.matrix([reduced for reduced in _reduced(small_shards, task)])
            own = ~vectors.mask_for(task.family)
            if split in (S.META_TRAIN, S.META_VAL):
                assert (task.x[:, own] == 0).all()
                seen += int(own.any() and (raw[:, own] != 0).any())
            else:
                np.testing.assert_array_equal(task.x, raw)
            np.testing.assert_array_equal(task.x[:, ~own], raw[:, ~own])
    assert seen  # some meta-train task really had its own member's column, now zeroed


def _reduced(shards, task):
    """The reduced formulas of a task's rows, in the sampler's row order."""
    index = read_index(shards)
    key = index.loc[index[S.TASK_ID] == task.task_id, S.TASK_KEY].iloc[0]
    rows = read_task_rows(shards, [key])
    return rows[rows[S.TASK_KEY] == key].sort_values(S.RECORD_ID)[S.REDUCED_FORMULA].tolist()


@pytest.mark.parametrize("learner, task_type", [("fomaml_rep", "regression"), ("anil_rep", "regression"),
                                                ("metric_rep", "regression"), ("protonet_rep", "classification")])
def test_meta_learners_train_on_the_vectors_and_reload_under_their_name(small_shards, represented, tmp_path,
                                                                        learner, task_type):
    _, _, out = represented
    cfg = LearnerConfig.from_params({"n_support": 5, "n_query": 7, "max_steps": 4, "meta_batch_size": 2,
                                     "eval_every": 2, "n_val_batches": 1})
    with pytest.raises(ValueError, match="transfer representation"):
        train_learner(WorkDir.resolve(tmp_path), small_shards, learner, cfg)
    result = train_learner(WorkDir.resolve(tmp_path), small_shards, learner, cfg, vectors_dir=out.vectors_dir)
    vectors = Vectors.load(out.vectors_dir)
    assert result["task_type"] == task_type and result["n_features"] == vectors.n_features
    assert result["metrics"]["steps"] == 4 and result["vectors"] == str(out.vectors_dir)
    model = load_learner(result["checkpoint"])
    assert model.name == learner and uses_representation(model.name)
    task = TaskSampler(small_shards, 5, 7, 1, task_type=task_type, vectors=vectors).tasks(S.META_TRAIN, 12)[0]
    x = torch.from_numpy(task.x)
    y = torch.from_numpy(task.y.astype(np.float32))
    prediction = model.predict(model.adapt(x[:5], y[:5]), x[5:12]).mean
    assert prediction.shape == (7,) and torch.isfinite(prediction).all()
