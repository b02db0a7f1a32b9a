"""Transfer representation: out-of-fold values, leakage control, persistence, cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metalearn.represent.rows import training_rows
from metalearn.represent.stage import build_representation, composition_features
from metalearn.represent.transfer import TransferConfig, TransferRepresentation, _key_hash

CFG = TransferConfig(n_estimators=15, num_leaves=7, min_child_samples=5, n_folds=3, seed=0)


def _synthetic(n: int = 240, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    keys = [f"M{i}" for i in range(n)]
    x = pd.DataFrame(rng.normal(size=(n, 6)), index=keys, columns=[f"f{j}" for j in range(6)])
    frames = []
    for d, (fam, coef) in enumerate([("alpha", 1.0), ("beta", -2.0)]):
        y = coef * x["f0"].to_numpy() + x["f1"].to_numpy() ** 2 + 0.1 * rng.normal(size=n)
        frames.append(pd.DataFrame({"dataset_id": f"d{d}", "family": fam, "task_type": "regression",
                                    "material_key": keys, "y": y, "y_raw": y}))
    return x, pd.concat(frames, ignore_index=True)


def test_oof_value_never_sees_its_own_row():
    x, rows = _synthetic()
    base = TransferRepresentation(CFG).fit(x, rows)
    target = "M17"
    changed = rows.copy()
    changed.loc[(changed["material_key"] == target) & (changed["dataset_id"] == "d0"), "y"] += 50.0
    moved = TransferRepresentation(CFG).fit(x, changed)
    keys = np.array(x.index)
    oof_a, oof_b = base.oof(keys)[:, 0], moved.oof(keys)[:, 0]
    fold = (_key_hash(keys, CFG.seed) // 7) % CFG.n_folds
    own = fold == fold[keys == target][0]
    # its own out-of-fold value (and its fold-mates') come from a model that never saw the row ...
    np.testing.assert_array_equal(oof_a[own], oof_b[own])
    # ... while the other folds' models did see it and moved; the full model moved too
    assert np.any(oof_a[~own] != oof_b[~own])
    assert np.any(base.transform(x.to_numpy())[:, 0] != moved.transform(x.to_numpy())[:, 0])
    # the other dataset's member is untouched
    np.testing.assert_array_equal(base.oof(keys)[:, 1], moved.oof(keys)[:, 1])


def test_represent_uses_oof_for_training_rows_and_model_for_new_ones():
    x, rows = _synthetic()
    rep = TransferRepresentation(CFG).fit(x, rows)
    keys = np.array(["M3", "NEW"])
    feats = np.vstack([x.loc["M3"].to_numpy(), x.loc["M4"].to_numpy()])
    z = rep.represent(keys, feats)
    np.testing.assert_array_equal(z[0], rep.oof(["M3"])[0])
    np.testing.assert_array_equal(z[1], rep.transform(feats[1:])[0])
    assert np.isnan(rep.oof(["NEW"])).all()


def test_save_load_round_trip_is_identical(tmp_path):
    x, rows = _synthetic()
    rep = TransferRepresentation(CFG).fit(x, rows)
    rep.save(tmp_path / "rep")
    back = TransferRepresentation.load(tmp_path / "rep")
    feats = x.to_numpy()
    np.testing.assert_array_equal(rep.transform(feats), back.transform(feats))
    np.testing.assert_array_equal(rep.oof(x.index), back.oof(x.index))
    np.testing.assert_array_equal(rep.output_std_, back.output_std_)
    assert back.members_ == rep.members_ and back.config == rep.config


def test_subset_equals_refit_without_the_family():
    x, rows = _synthetic()
    full = TransferRepresentation(CFG).fit(x, rows)
    refit = TransferRepresentation(CFG).fit(x, rows[rows["family"] != "beta"])
    sub = full.subset(exclude_families=["beta"])
    assert sub.dataset_ids == refit.dataset_ids == ["d0"]
    np.testing.assert_array_equal(sub.transform(x.to_numpy()), refit.transform(x.to_numpy()))


@pytest.fixture(scope="module")
def bundled_slice():
    from metalearn.ingest.bundled import load_bundled

    return load_bundled(max_rows_per_dataset=400, datasets=[
        "matbench_expt_gap", "roost_expt_non_metals", "mp_bulk_modulus", "matbench_mp_e_form"])


def test_left_out_family_is_never_seen(bundled_slice, tmp_path):
    records, properties = bundled_slice
    res = build_representation(tmp_path, records, properties, CFG, exclude_families=("band_gap",))
    rep = res.representation
    assert "band_gap" not in rep.families and set(rep.dataset_ids) == {"mp_bulk_modulus", "matbench_mp_e_form"}
    # scrambling every band-gap target changes neither the cache key nor a single output
    gap = records["dataset_id"].isin(["matbench_expt_gap", "roost_expt_non_metals"])
    scrambled = records.assign(target=np.where(gap, -7.0 * records["target"] + 3.0, records["target"]))
    again = build_representation(tmp_path / "other", scrambled, properties, CFG, exclude_families=("band_gap",))
    assert again.key == res.key
    gap_keys = training_rows(records, properties)[0].query("family == 'band_gap'")["material_key"].unique()[:50]

    feats = composition_features(gap_keys).loc[gap_keys].to_numpy()
    np.testing.assert_array_equal(rep.represent(gap_keys, feats), again.representation.represent(gap_keys, feats))


def test_cache_loads_instead_of_fitting(bundled_slice, tmp_path):
    records, properties = bundled_slice
    first = build_representation(tmp_path, records, properties, CFG, datasets=["mp_bulk_modulus"])
    second = build_representation(tmp_path, records, properties, CFG, datasets=["mp_bulk_modulus"])
    assert first.created and not second.created and first.key == second.key
    other = build_representation(tmp_path, records, properties, CFG, datasets=["matbench_mp_e_form"])
    assert other.created and other.key != first.key
