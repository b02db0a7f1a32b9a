"""metalearn.predict.consumer and the Predictor: real files, real tiny learners, the carried featurizer.

Every refusal names the file, line (or row) and reason; nothing is written unless every row is.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from servers import FORMULAS

from metalearn.predict.consumer import predict_csv, read_inputs
from metalearn.predict.featurizer import CarriedFeaturizer
from metalearn.predict.predictor import Predictor
from metalearn.predict.table import INJECTION_PREFIXES, InputError, check_table, choose_task_type


class PyfuncLike:
    """What an MLflow pyfunc looks like to the consumer: ``predict(table, params=...)``, nothing else."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor_, self.calls = predictor, []

    def predict(self, table: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        self.calls.append((table.copy(), dict(params or {})))
        task_type = (params or {}).get("task_type", "auto")
        return self.predictor_.predict_table(table, None if task_type == "auto" else task_type,
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
    summary = predict_csv(predictor, support, query, out)
    result = pd.read_csv(out)
    assert summary.n_predictions == 3 and summary.columns == ["formula", "prediction", "uncertainty"]
    assert list(result.columns) == summary.columns and list(result["formula"]) == ["GaAs", "LiF", "SiO2"]
    assert np.isfinite(result[["prediction", "uncertainty"]].to_numpy()).all() and (result["uncertainty"] > 0).all()
    table = read_inputs(support, query)
    assert list(table["role"]) == ["support"] * 4 + ["query"] * 3 and table["target"].iloc[4:].isna().all()
    expected = predictor.predict_table(table)
    np.testing.assert_allclose(result["prediction"], expected["prediction"], rtol=1e-12)
    # A foreign pyfunc (predict(table, params) only) gives the same rows.
    model = PyfuncLike(predictor)
    predict_csv(model, support, query, out.with_name("pyfunc.csv"))
    assert model.calls[0][1] == {"task_type": "auto", "transform": "none"}
    pd.testing.assert_frame_equal(pd.read_csv(out.with_name("pyfunc.csv")), result)


def test_zero_one_targets_choose_classification(predictor, tmp_path, files):
    _, query, out = files
    labels = write(tmp_path / "labels.csv", "formula,target\nFe2O3,1\nNaCl,0\nMgO,0\nZnO,1\n")
    assert predict_csv(predictor, labels, query, out).columns == ["formula", "prediction"]  # ProtoNet: no std
    result = pd.read_csv(out)
    assert ((result["prediction"] > 0) & (result["prediction"] < 1)).all()
    assert "uncertainty" in predict_csv(predictor, labels, query, out, task_type="regression").columns


def test_a_loader_is_called_only_after_the_inputs_validate(predictor, tmp_path, files):
    support, query, out = files
    bad = write(tmp_path / "bad.csv", "formula,target\nFe2O3,1\nXx2O,2\n")
    with pytest.raises(InputError):
        predict_csv(never_load, bad, query, out)
    bad_query = write(tmp_path / "badq.csv", "formula\nGaAs\nFe2O3)\n")
    with pytest.raises(InputError, match="line 3"):
        predict_csv(never_load, support, bad_query, out)
    assert not out.exists()
    loaded = []
    assert predict_csv(lambda: loaded.append(1) or predictor, support, query, out).n_predictions == 3
    assert loaded == [1]


@pytest.mark.parametrize("support_text, query_text, expected", [
    ("formula,value\nFe2O3,1\nNaCl,2\n", "formula\nGaAs\n", r"support\.csv: the file lacks column\(s\) \['target'\]"),
    ("formula,target\nFe2O3,1\nNaCl,2\n", "name\nGaAs\n", r"query\.csv: the file lacks column\(s\) \['formula'\]"),
    ("formula,target\nFe2O3,1\nNaCl,2\nXx2O,3\n", "formula\nGaAs\n", r"support\.csv line 4: formula 'Xx2O' .*unknown_element"),
    ("formula,target\nFe2O3,1\nNaCl,2\n", "formula\nGaAs\nFe2O3)\n", r"query\.csv line 3: formula 'Fe2O3\)' .*unparseable_formula"),
    ("formula,target\nFe2O3,1\n", "formula\nGaAs\n", r"1 distinct support row\(s\); adapting needs at least 2"),
    ("formula,target\n", "formula\nGaAs\n", r"support\.csv: no support rows"),
    ("formula,target\nFe2O3,1\nNaCl,abc\n", "formula\nGaAs\n", r"support\.csv line 3: target 'abc' is not a number"),
    ("formula,target\nFe2O3,1\nNaCl,\n", "formula\nGaAs\n", r"support\.csv line 3: the target is missing"),
    ("formula,target\nFe2O3,1\n,2\n", "formula\nGaAs\n", r"support\.csv line 3: empty formula"),
    ("formula,target\nFe2O3,1\nNaCl,2\n", "formula\n", r"query\.csv: no query rows"),
    ("", "formula\nGaAs\n", r"support\.csv: the file is empty"),
    ("formula,target\nFe2O3,1\nNaCl,inf\n", "formula\nGaAs\n", r"support\.csv line 3: target 'inf' is not finite"),
    ("formula,target\nFe2O3,1\nNaCl0,2\n", "formula\nGaAs\n", r"support\.csv line 3: formula 'NaCl0' cannot be used: unparseable_formula \(zero amount of Cl"),
    ("formula,target\nFe2O3,1\nNaCl,2\n", "formula\nGaAs\nNa0.0Cl\n", r"query\.csv line 3: formula 'Na0.0Cl' cannot be used: unparseable_formula \(zero amount of Na"),
    ("formula,target\nFe2O3,1\nNaCl,5\nMgO,2\nNaCl,1\n", "formula\nGaAs\n",
     r"support\.csv line 5: 'NaCl' is the same material as .*support\.csv line 3 \('NaCl'\) with a different target \(1 vs 5\)"),
    ("formula,target\nFe2O3,1\nNa2Cl2,5\nNaCl,1\n", "formula\nGaAs\n", r"line 4: 'NaCl' is the same material as .*line 3"),
    ("formula,target\nFe2O3,1\nNaCl,2,3\n", "formula\nGaAs\n", r"support\.csv line 3: 3 field\(s\) but the header has 2"),
    ("formula,target\nFe2O3,1\nNaCl,2\n", "formula\nGaAs\nLiF,2\n", r"query\.csv line 3: 2 field\(s\) but the header has 1"),
    ("formula,formula,target\nFe2O3,Fe2O3,1\n", "formula\nGaAs\n", r"support\.csv line 1: column\(s\) \['formula'\] appear more"),
])
def test_bad_inputs_fail_with_file_line_and_reason(tmp_path, support_text, query_text, expected):
    support = write(tmp_path / "support.csv", support_text)
    query = write(tmp_path / "query.csv", query_text)
    with pytest.raises(InputError, match=expected):
        predict_csv(never_load, support, query, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("prefix", INJECTION_PREFIXES)
def test_query_cells_a_spreadsheet_would_run_are_refused(tmp_path, files, prefix):
    support, _, out = files
    query = tmp_path / "query.csv"
    query.write_bytes(b"formula\nGaAs\n" + f'"{prefix}HYPERLINK(1)"\n'.encode())
    with pytest.raises(InputError, match=r"query\.csv line 3: cell .* starts with .*CSV injection"):
        predict_csv(never_load, support, query, out)
    query.write_bytes(b"formula\nGaAs\n" + f'" {prefix}1+2"\n'.encode())  # behind a space too
    with pytest.raises(InputError, match="CSV injection"):
        predict_csv(never_load, support, query, out)


def test_undecodable_bytes_and_nul_name_the_file_and_line(predictor, tmp_path, files):
    support, query, out = files
    latin = tmp_path / "latin1.csv"
    latin.write_bytes(b"formula,target\nFe2O3,1\nNaCl,2\nCaF\xe92,3\n")
    with pytest.raises(InputError, match=r"latin1\.csv line 4: not UTF-8 text \(byte 0xe9 at column 4\)"):
        predict_csv(never_load, latin, query, out)
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"formula\nGaAs\nLi\x00F\n")
    with pytest.raises(InputError, match=r"nul\.csv line 3: .*NUL"):
        predict_csv(never_load, support, nul, out)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfformula,target\nFe2O3,1\nNaCl,2\n")  # Excel's UTF-8: accepted
    assert predict_csv(predictor, bom, query, out).n_predictions == 3


def test_the_output_is_never_an_input_and_never_a_directory(predictor, tmp_path, files):
    support, query, _ = files
    before = support.read_bytes(), query.read_bytes()
    (tmp_path / "link.csv").symlink_to(support)
    os.link(query, tmp_path / "hard.csv")
    spellings = {"--support": [support, tmp_path / "." / "support.csv", tmp_path / "link.csv"],
                 "--query": [query, tmp_path / "sub" / ".." / "query.csv", tmp_path / "hard.csv"]}
    (tmp_path / "sub").mkdir()
    for flag, outputs in spellings.items():
        for output in outputs:
            with pytest.raises(InputError, match=f"is the same file as {flag}"):
                predict_csv(predictor, support, query, output)
    assert (support.read_bytes(), query.read_bytes()) == before
    with pytest.raises(InputError, match=r"--output .*: is a directory"):
        predict_csv(predictor, support, query, tmp_path)
    with pytest.raises(InputError, match=r"--support .*: is a directory"):
        predict_csv(predictor, tmp_path, query, tmp_path / "out.csv")
    with pytest.raises(InputError, match=r"--query .*: no such file"):
        predict_csv(predictor, support, tmp_path / "absent.csv", tmp_path / "out.csv")


def test_a_failure_in_a_late_chunk_writes_nothing_and_keeps_the_old_output(predictor, tmp_path, files):
    support, _, out = files
    out.write_text("old,content\n")
    rows = ["GaAs", "LiF"] * 150 + ["Og"]  # Og: refused only when featurized, in the second chunk
    query = write(tmp_path / "query.csv", "formula\n" + "\n".join(rows) + "\n")
    with pytest.raises(InputError, match=r"query\.csv line 302: formula 'Og' cannot be used: missing_element_data"):
        predict_csv(predictor, support, query, out, chunk_rows=256)
    assert out.read_text() == "old,content\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_og_is_refused_with_the_reason_the_features_stage_records(predictor, files, tmp_path):
    from metalearn.features.composition import featurize_compositions

    support, _, out = files
    _, errors = featurize_compositions(["Og"])
    reason = f"{errors['reason'].iat[0]} ({errors['detail'].iat[0]})"
    assert errors["reason"].iat[0] == "missing_element_data"
    query = write(tmp_path / "query.csv", "formula\nGaAs\nOg\n")
    with pytest.raises(InputError) as err:
        predict_csv(predictor, support, query, out)
    assert str(err.value) == f"--query {query} line 3: formula 'Og' cannot be used: {reason}"
    table = pd.DataFrame({"role": ["support", "support", "query"], "formula": ["NaCl", "MgO", "Og"],
                          "target": [1.0, 2.0, np.nan]})
    with pytest.raises(InputError, match=r"query row 1 \(1-based\): formula 'Og' cannot be used: missing_element"):
        predictor.predict_table(table)


@pytest.mark.parametrize("big", ["1e39", "1e308", "-1.7e308"])
def test_targets_beyond_float32_give_finite_predictions(predictor, tmp_path, files, big):
    _, query, out = files
    support = write(tmp_path / "big.csv", f"formula,target\nFe2O3,1.5\nNaCl,{big}\nMgO,3.0\nZnO,2.5\n")
    predict_csv(predictor, support, query, out)
    result = pd.read_csv(out)
    assert len(result) == 3 and np.isfinite(result[["prediction", "uncertainty"]].to_numpy()).all()
    assert result["prediction"].abs().max() > 1e30  # on the targets' scale, not collapsed to float32


def test_targets_at_the_float64_limit_stay_finite_and_a_non_finite_row_is_named(predictor, tmp_path, files):
    _, query, out = files
    support = write(tmp_path / "huge.csv", "formula,target\nFe2O3,1.79e308\nNaCl,-1.79e308\nMgO,1.79e308\n"
                                           "ZnO,1.79e308\n")
    predict_csv(predictor, support, query, out)
    assert np.isfinite(pd.read_csv(out)[["prediction", "uncertainty"]].to_numpy()).all()
    support.write_text("formula,target\nFe2O3,1.79e308\nNaCl,1.79e308\nMgO,1.5e308\nZnO,1e308\n")
    predict_csv(predictor, support, query, out, transform="log10")
    assert np.isfinite(pd.read_csv(out)[["prediction", "uncertainty"]].to_numpy()).all()
    # The last line of defence: a non-finite value is an error naming the row, never an empty cell.
    from metalearn.predict.predictor import AdaptedTask

    adapted = AdaptedTask(None, None, "regression", "none", y_max=1.79e308)
    with pytest.raises(InputError, match=r"--query q\.csv line 3: the prediction for 'LiF' is not finite"):
        adapted.check_finite(np.array([1.0, np.inf]), np.array([1.0, 1.0]), ["GaAs", "LiF"],
                             lambda i: f"--query q.csv line {i + 2}")


def test_identical_support_repeats_are_used_once_with_a_warning(predictor, tmp_path, files):
    support, query, out = files
    repeated = write(tmp_path / "rep.csv", "formula,target\nFe2O3,1.5\nNaCl,0.2\nMgO,3.0\nZnO,2.5\nNaCl,0.2\n")
    summary = predict_csv(predictor, repeated, query, out)
    assert len(summary.warnings) == 1 and "line 6 repeats" in summary.warnings[0] and "line 3" in summary.warnings[0]
    once = predict_csv(predictor, support, query, tmp_path / "once.csv")
    assert once.warnings == [] and (tmp_path / "once.csv").read_bytes() == out.read_bytes()


def test_chunked_prediction_equals_unchunked_row_for_row(predictor, tmp_path, files):
    support, _, _ = files
    rng = np.random.default_rng(0)
    rows = [FORMULAS[i] for i in rng.integers(0, len(FORMULAS), 700)]  # duplicates across chunks
    query = write(tmp_path / "query.csv", "formula\n" + "\n".join(rows) + "\n")
    whole, chunked = tmp_path / "whole.csv", tmp_path / "chunked.csv"
    predict_csv(predictor, support, query, whole)
    progress = []
    predict_csv(predictor, support, query, chunked, chunk_rows=200, on_progress=lambda d, t: progress.append((d, t)))
    assert whole.read_bytes() == chunked.read_bytes()  # bit for bit, not just close
    assert progress == [(256, 700), (512, 700), (700, 700)]  # 200 is rounded up to the 256-row batch
    table = read_inputs(support, query)
    pd.testing.assert_frame_equal(predictor.predict_table(table, chunk_rows=256), predictor.predict_table(table),
                                  check_exact=True)


def test_duplicate_formulas_are_featurized_once(predictor, shards, files, tmp_path):
    calls = []

    class Counting(CarriedFeaturizer):
        def featurize(self, formulas):
            calls.append(list(formulas))
            return super().featurize(formulas)

    fresh = Predictor(predictor.regressor, predictor.classifier, pd.read_parquet(shards / "feature_stats.parquet"),
                      Counting(**vars(predictor.featurizer)))
    support, _, out = files
    query = write(tmp_path / "query.csv", "formula\n" + "GaAs\nLiF\nGaAs\n" * 200)
    predict_csv(fresh, support, query, out, chunk_rows=256)  # three chunks
    featurized = [f for call in calls for f in call]
    assert sorted(featurized) == sorted(["Fe2O3", "NaCl", "MgO", "ZnO", "GaAs", "LiF"])
    assert len(pd.read_csv(out)) == 600


def test_explicit_classification_needs_zero_one_targets(files):
    support, query, out = files
    with pytest.raises(InputError, match="all 0 or 1"):
        predict_csv(never_load, support, query, out, task_type="classification")
    with pytest.raises(InputError, match="is not one of"):
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
    predict_csv(predictor, tmp_path / "support.csv", tmp_path / "query.csv", tmp_path / "o.csv")
    result = pd.read_csv(tmp_path / "o.csv")
    assert len(result) == 1 and np.isfinite(result["prediction"]).all()
    write(tmp_path / "bad.csv", 'formula,cif,target\nFe2O3,,1\n,"data_x\nnot a cif",2\n')
    with pytest.raises(InputError, match=r"bad\.csv line 3: the CIF cannot be parsed"):
        read_inputs(tmp_path / "bad.csv", tmp_path / "query.csv")


def test_table_checks_for_the_pyfunc_path_name_rows_as_the_user_sees_them(predictor):
    good = pd.DataFrame({"role": ["support", "support", "query"], "formula": ["Fe2O3", "NaCl", "MgO"],
                         "target": [1.0, 2.0, np.nan]})
    task = check_table(good)
    assert task.support_formulas == ["Fe2O3", "NaCl"] and task.query_formulas == ["MgO"]
    assert list(task.y_support) == [1.0, 2.0]
    with pytest.raises(InputError, match="needs columns 'role' and 'formula'"):
        check_table(good.drop(columns="role"))
    with pytest.raises(InputError, match=r"input row 3 \(1-based\): role 'train'"):
        check_table(good.assign(role=["support", "support", "train"]))
    with pytest.raises(InputError, match="1 support row"):
        check_table(good.assign(role=["support", "query", "query"]))
    with pytest.raises(InputError, match=r"support row 2 \(1-based\): the target is missing"):
        check_table(good.assign(target=[1.0, np.nan, np.nan]))
    with pytest.raises(InputError, match=r"query row 1 \(1-based\): cell '=1\+2'"):
        check_table(good.assign(formula=["Fe2O3", "NaCl", "=1+2"]))
    with pytest.raises(InputError, match="several values"):
        predictor.predict_table(good.assign(task_type=["regression", "classification", None]))
    result = predictor.predict_table(good)
    assert list(result.columns) == ["formula", "prediction", "uncertainty"] and list(result["formula"]) == ["MgO"]
    log10 = predictor.predict_table(good.assign(target=[10.0, 1000.0, np.nan]), transform="log10")
    assert (log10["prediction"] > 0).all()
    with pytest.raises(InputError, match=r"support row 1 \(1-based\): target -1 is not positive"):
        predictor.predict_table(good.assign(target=[-1.0, 1000.0, np.nan]), transform="log10")


def test_zero_one_targets_without_a_classifier_ask_for_task_type():
    with pytest.raises(InputError, match="task_type='regression'"):
        choose_task_type(np.array([0.0, 1.0, 1.0]), None, has_classifier=False)
    assert choose_task_type(np.array([0.0, 1.0, 1.0]), "regression", has_classifier=False) == "regression"
    assert choose_task_type(np.array([0.0, 2.0]), None) == "regression"


def test_support_only_formulas_from_the_bundle_featurize_without_nan(predictor):
    x = predictor.features(FORMULAS)
    assert x.shape == (len(FORMULAS), len(predictor.feature_names)) and np.isfinite(x).all()
