"""The representation of a set of real shards: its leakage rule, its vectors, and learners reading them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metalearn import schema as S
from metalearn.ingest.snapshot import read_table
from metalearn.layout import WorkDir
from metalearn.learn.sampling import TaskSampler
from metalearn.represent.rows import MATERIAL_KEY, training_rows
from metalearn.represent.transfer import TransferConfig, TransferRepresentation
from metalearn.represent.vectors import Vectors, leakage_rule, represent_shards, snapshot_of_shards
from metalearn.shards.store import read_index

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
