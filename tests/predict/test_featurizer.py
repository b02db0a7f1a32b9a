"""The featurizer a model carries equals the features stage's, and loading it needs no matminer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from metalearn.features.composition import composition_feature_names, featurize_compositions
from metalearn.io import repo_data_dir
from metalearn.predict.featurizer import CarriedFeaturizer, export_featurizer

EDGE = ["Og", "He", "Ne", "OgNa", "Pu2O3", "D2O", "Xx2O", "Fe2O3)", "", "H", "Zr3(Cu2Ge)2", "Hg0.7Cd0.3Te",
        "NaCl", "Na2Cl2", "LiCoO2", "Cs", "Fr2O", "NaCl0", "Na(Cl0)2"]


@pytest.fixture(scope="module")
def carried(tmp_path_factory) -> CarriedFeaturizer:
    files = export_featurizer(composition_feature_names(), tmp_path_factory.mktemp("fz"))
    return CarriedFeaturizer.from_files(files["featurizer"])


def bundled_formulas(per_file: int = 150) -> list[str]:
    files = sorted((repo_data_dir() / "composition").glob("*/*.csv.gz"))
    assert files, "the bundled composition data is missing"
    return pd.concat([pd.read_csv(p, keep_default_na=False, usecols=["formula"])["formula"]
                      .sample(frac=1.0, random_state=0).head(per_file) for p in files]).tolist()


def test_carried_values_and_errors_equal_the_features_stage(carried):
    formulas = bundled_formulas() + EDGE
    values, errors = carried.featurize(formulas)
    frame, stage_errors = featurize_compositions(formulas)
    assert carried.names == list(frame.columns) == composition_feature_names()
    np.testing.assert_array_equal(values, frame.to_numpy())  # bit for bit, NaN pattern included
    assert errors == [(int(i), stage_errors.at[i, "reason"], stage_errors.at[i, "detail"]) for i in stage_errors.index]
    assert {r for _, r, _ in errors} == {"missing_element_data", "unknown_element", "unparseable_formula"}


def test_the_carried_feature_names_equal_the_featurizers(carried, shards):
    stats = pd.read_parquet(shards / "feature_stats.parquet")
    assert carried.feature_names == composition_feature_names() == stats["feature"].tolist()


def test_featurizing_from_carried_files_imports_no_matminer(carried, tmp_path):
    export_featurizer(composition_feature_names(), tmp_path)
    code = ("import sys\n"
            "from metalearn.predict.featurizer import CarriedFeaturizer\n"
            f"fz = CarriedFeaturizer.from_files({str(tmp_path / 'featurizer.json')!r})\n"
            "values, errors = fz.featurize(['Fe2O3', 'Og'])\n"
            "assert values.shape == (2, 149) and errors[0][:2] == (1, 'missing_element_data'), errors\n"
            "assert not [m for m in sys.modules if m.startswith(('matminer', 'mlflow', 'torch'))]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_model_of_another_feature_set_version_is_refused(tmp_path):
    import json

    files = export_featurizer(composition_feature_names(), tmp_path)
    config = json.loads((tmp_path / "featurizer.json").read_text())
    (tmp_path / "featurizer.json").write_text(json.dumps({**config, "version": "v0"}))
    with pytest.raises(ValueError, match="trained on feature set 'v0'"):
        CarriedFeaturizer.from_files(files["featurizer"])
