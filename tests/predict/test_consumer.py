"""metalearn.predict.consumer: CSV checks that name the file, line and reason; the Predictor behind the pyfunc."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from servers import FORMULAS, make_shards, tiny_learners

from metalearn.predict.consumer import Predictor, check_table, choose_task_type, predict_csv, read_inputs


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    shards = make_shards(tmp_path_factory.mktemp("consumer") / "shards")
    stats = pd.read_parquet(shards / "feature_stats.parquet")
    reg, cls = tiny_learners(len(stats))
    return Predictor(reg, cls, stats)


class PyfuncLike:
    """What an MLflow pyfunc looks like to the consumer: ``predict(table, params=...)``."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor, self.calls = predictor, []

    def predict(self, table: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        self.calls.append((table.copy(), dict(params or {})))
        task_type = (params or {}).get("task_type", "auto")
        return self.predictor.predict_table(table, None if task_type == "auto" else task_type,
                                            (params or {}).get("transform", "none"))


def write(path, text: str):
    path.write_text(text)
    return path


def never_load():
    raise AssertionError("the model must not be loaded when the inputs are invalid")


@pytest.fixture
def files(tmp_path):
    support = write(tmp_path / "support.csv", "formula,target\nFe2O3,1.5\nNaCl,0.2\nMgO,3.0\nZnO,2.5\n")
    query = write(tmp_path / "query.csv", "formula\nGaAs\nLiF\nSiO2\n")
    return support, query, tmp_path / "predictions.csv"


def test_regression_output_has_formula_prediction_uncertainty_in_query_order(predictor, files):
    support, query, out = files
    model = PyfuncLike(predictor)
    result = predict_csv(model, support, query, out)
    assert list(result.columns) == ["formula", "prediction", "uncertainty"]
    assert list(result["formula"]) == ["GaAs", "LiF", "SiO2"]
    assert np.isfinite(result[["prediction", "uncertainty"]].to_numpy()).all() and (result["uncertainty"] > 0).all()
    pd.testing.assert_frame_equal(pd.read_csv(out), result, check_dtype=False)
    table, params = model.calls[0]
    assert list(table["role"]) == ["support"] * 4 + ["query"] * 3 and table["target"].iloc[4:].isna().all()
    assert params == {"task_type": "auto", "transform": "none"}
    expected = predictor.predict_table(table)
    np.testing.assert_allclose(result["prediction"], expected["prediction"])


def test_zero_one_targets_choose_classification(predictor, tmp_path, files):
    _, query, out = files
    labels = write(tmp_path / "labels.csv", "formula,target\nFe2O3,1\nNaCl,0\nMgO,0\nZnO,1\n")
    result = predict_csv(PyfuncLike(predictor), labels, query, out)
    assert list(result.columns) == ["formula", "prediction"]  # ProtoNet gives probabilities, no std
    assert ((result["prediction"] > 0) & (result["prediction"] < 1)).all()
    as_numbers = predict_csv(PyfuncLike(predictor), labels, query, out, task_type="regression")
    assert "uncertainty" in as_numbers.columns


def test_a_loader_is_called_only_after_the_inputs_validate(predictor, tmp_path, files):
    support, query, out = files
    bad = write(tmp_path / "bad.csv", "formula,target\nFe2O3,1\nXx2O,2\n")
    with pytest.raises(ValueError):
        predict_csv(never_load, bad, query, out)
    assert not out.exists()
    loaded = []
    result = predict_csv(lambda: loaded.append(1) or PyfuncLike(predictor), support, query, out)
    assert loaded == [1] and len(result) == 3


@pytest.mark.parametrize("support_text, query_text, expected", [
    ("formula,value\nFe2O3,1\nNaCl,2\n", "formula\nGaAs\n", r"support\.csv: the support file lacks column\(s\) \['target'\]"),
    ("formula,target\nFe2O3,1\nNaCl,2\n", "name\nGaAs\n", r"query\.csv: the query file lacks column\(s\) \['formula'\]"),
    ("formula,target\nFe2O3,1\nNaCl,2\nXx2O,3\n", "formula\nGaAs\n", r"support\.csv line 4: formula 'Xx2O' .*unknown_element"),
    ("formula,target\nFe2O3,1\nNaCl,2\n", "formula\nGaAs\nFe2O3)\n", r"query\.csv line 3: formula 'Fe2O3\)' .*unparseable_formula"),
    ("formula,target\nFe2O3,1\n", "formula\nGaAs\n", r"support\.csv: 1 support row\(s\); adapting needs at least 2"),
    ("formula,target\n", "formula\nGaAs\n", r"0 support row"),
    ("formula,target\nFe2O3,1\nNaCl,abc\n", "formula\nGaAs\n", r"support\.csv line 3: target 'abc' is not a number"),
    ("formula,target\nFe2O3,1\nNaCl,\n", "formula\nGaAs\n", r"support\.csv line 3: the target is missing"),
    ("formula,target\nFe2O3,1\n,2\n", "formula\nGaAs\n", r"support\.csv line 3: empty formula"),
    ("formula,target\nFe2O3,1\nNaCl,2\n", "formula\n", r"query\.csv: no query rows"),
    ("", "formula\nGaAs\n", r"support\.csv: the support file is empty"),
])
def test_bad_inputs_fail_with_file_line_and_reason(tmp_path, support_text, query_text, expected):
    support = write(tmp_path / "support.csv", support_text)
    query = write(tmp_path / "query.csv", query_text)
    with pytest.raises(ValueError, match=expected):
        predict_csv(never_load, support, query, tmp_path / "out.csv")


def test_explicit_classification_needs_zero_one_targets(files):
    support, query, out = files
    with pytest.raises(ValueError, match="all 0 or 1"):
        predict_csv(never_load, support, query, out, task_type="classification")
    with pytest.raises(ValueError, match="is not one of"):
        predict_csv(never_load, support, query, out, task_type="ranking")


@pytest.mark.filterwarnings("ignore::UserWarning")  # pymatgen comments on the CIFs
def test_cif_rows_use_the_structure_composition(predictor, tmp_path):
    from pymatgen.core import Lattice, Structure

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    support = pd.DataFrame({"formula": ["Fe2O3", "", "MgO"], "cif": ["", nacl.to(fmt="cif"), ""],
                            "target": [1.0, 2.0, 3.0]})
    support.to_csv(tmp_path / "support.csv", index=False)
    write(tmp_path / "query.csv", "formula\nNaCl\n")
    table = read_inputs(tmp_path / "support.csv", tmp_path / "query.csv")
    assert list(table["formula"]) == ["Fe2O3", "NaCl", "MgO", "NaCl"]
    result = predict_csv(PyfuncLike(predictor), tmp_path / "support.csv", tmp_path / "query.csv", tmp_path / "o.csv")
    assert len(result) == 1 and np.isfinite(result["prediction"]).all()
    write(tmp_path / "bad.csv", 'formula,cif,target\nFe2O3,,1\n,"data_x\nnot a cif",2\n')
    with pytest.raises(ValueError, match=r"bad\.csv line 3: the CIF cannot be parsed"):
        read_inputs(tmp_path / "bad.csv", tmp_path / "query.csv")


def test_table_checks_for_the_pyfunc_path(predictor):
    good = pd.DataFrame({"role": ["support", "support", "query"], "formula": ["Fe2O3", "NaCl", "MgO"],
                         "target": [1.0, 2.0, np.nan]})
    roles, formulas, _, y = check_table(good)
    assert formulas == ["Fe2O3", "NaCl", "MgO"]
    assert list(roles) == ["support", "support", "query"] and list(y) == [1.0, 2.0]
    with pytest.raises(ValueError, match="needs columns 'role' and 'formula'"):
        check_table(good.drop(columns="role"))
    with pytest.raises(ValueError, match="input row 2: role 'train'"):
        check_table(good.assign(role=["support", "support", "train"]))
    with pytest.raises(ValueError, match="1 support row"):
        check_table(good.assign(role=["support", "query", "query"]))
    with pytest.raises(ValueError, match="input row 1: the target is missing"):
        check_table(good.assign(target=[1.0, np.nan, np.nan]))
    with pytest.raises(ValueError, match="several values"):
        predictor.predict_table(good.assign(task_type=["regression", "classification", None]))
    log10 = predictor.predict_table(good.assign(target=[10.0, 1000.0, np.nan]), transform="log10")
    assert (log10["prediction"] > 0).all()


def test_zero_one_targets_without_a_classifier_ask_for_task_type():
    with pytest.raises(ValueError, match="task_type='regression'"):
        choose_task_type(np.array([0.0, 1.0, 1.0]), None, has_classifier=False)
    assert choose_task_type(np.array([0.0, 1.0, 1.0]), "regression", has_classifier=False) == "regression"
    assert choose_task_type(np.array([0.0, 2.0]), None) == "regression"


def test_support_only_formulas_from_the_bundle_featurize_without_nan(predictor):
    x = predictor.features(FORMULAS)
    assert x.shape == (len(FORMULAS), len(predictor.feature_names)) and np.isfinite(x).all()


def test_the_predictor_and_table_checks_are_still_importable_from_consumer():
    from metalearn.predict import consumer, predictor

    for name in ("Predictor", "check_table", "choose_task_type", "featurizer_config", "resolve_formulas",
                 "FEATURIZER_FILE", "ROLE", "SUPPORT", "QUERY"):
        assert getattr(consumer, name) is getattr(predictor, name), name
    assert all(hasattr(consumer, name) for name in consumer.__all__)
