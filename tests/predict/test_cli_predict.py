"""``metalearn predict`` as users run it: the real console script in a subprocess, a real SQLite registry.

Exit codes matter here: bad input is exit 2 with one line naming the file, line and reason, no
traceback; an input is never overwritten; the second call does not open the registry at all.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest
from predict_cli import error_lines, run_predict


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


SUPPORT = "formula,target\nFe2O3,1.5\nNaCl,0.2\nMgO,3.0\nZnO,2.5\nGaAs,1.4\nLiF,9.0\n"
QUERY = "formula\nSiO2\nTiO2\nCuO\n"


@pytest.fixture(scope="module")
def warm(registry_store, tmp_path_factory) -> dict:
    """A work directory whose model cache already holds the champion (one real first call)."""
    root = tmp_path_factory.mktemp("cli")
    work = root / "work"
    support, query = write(root / "support.csv", SUPPORT), write(root / "query.csv", QUERY)
    proc = run_predict(registry_store["uri"], work, "--support", support, "--query", query,
                       "--output", root / "first.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"uri": registry_store["uri"], "work": work, "support": support, "query": query, "root": root}


def assert_one_error_line(proc, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = error_lines(proc)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith("metalearn predict: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_second_call_reads_the_cached_copy_and_never_opens_the_registry(store_copy, tmp_path):
    db, uri, work = store_copy["db"], store_copy["uri"], tmp_path / "work"
    support, query = write(tmp_path / "s.csv", SUPPORT), write(tmp_path / "q.csv", QUERY)
    first = run_predict(uri, work, "--support", support, "--query", query, "--output", tmp_path / "1.csv")
    assert first.returncode == 0, first.stderr[-3000:]
    assert list((work / "cache" / "models").rglob("MLmodel")), "the first call caches the model"
    result = pd.read_csv(tmp_path / "1.csv")
    assert list(result.columns) == ["formula", "prediction", "uncertainty"] and list(result["formula"]) == [
        "SiO2", "TiO2", "CuO"]
    assert np.isfinite(result[["prediction", "uncertainty"]].to_numpy()).all()

    # The store is gone: the cached version still answers, says so, and nothing recreates the database.
    away = db.rename(db.with_suffix(".away"))
    second = run_predict(uri, work, "--support", support, "--query", query, "--output", tmp_path / "2.csv",
                         python_flags=("-X", "importtime"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert not db.exists(), "the registry database was opened (SQLite recreated it)"
    assert "note: the tracking store" in second.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in second.stderr.splitlines() if line.startswith("import time:")]
    assert len(imported) > 100 and "torch" in imported  # -X importtime did report
    assert not [m for m in imported if m.split(".")[0] in ("mlflow", "matminer", "prefect", "sqlalchemy")]
    assert (tmp_path / "2.csv").read_bytes() == (tmp_path / "1.csv").read_bytes()

    # The store is back but read-only: still served from the cache, and the file is untouched.
    away.rename(db)
    before = db.stat()
    os.chmod(db, stat.S_IRUSR | stat.S_IRGRP)
    os.chmod(db.parent, stat.S_IRUSR | stat.S_IXUSR)
    try:
        third = run_predict(uri, work, "--support", support, "--query", query, "--output", tmp_path / "3.csv")
    finally:
        os.chmod(db.parent, stat.S_IRWXU)
        os.chmod(db, stat.S_IRUSR | stat.S_IWUSR)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "note:" not in third.stderr
    assert (db.stat().st_mtime_ns, db.stat().st_size) == (before.st_mtime_ns, before.st_size)
    assert (tmp_path / "3.csv").read_bytes() == (tmp_path / "1.csv").read_bytes()


@pytest.mark.parametrize("big", ["1e39", "1e308"])
def test_targets_beyond_float32_give_finite_predictions_or_fail(warm, tmp_path, big):
    support = write(tmp_path / "big.csv", SUPPORT.replace("9.0", big))
    proc = run_predict(warm["uri"], warm["work"], "--support", support, "--query", warm["query"],
                       "--output", tmp_path / "out.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = pd.read_csv(tmp_path / "out.csv")
    assert len(result) == 3 and np.isfinite(result[["prediction", "uncertainty"]].to_numpy()).all()


def test_the_output_may_not_be_an_input_in_any_spelling(warm, tmp_path):
    support = write(tmp_path / "support.csv", SUPPORT)
    query = write(tmp_path / "query.csv", QUERY)
    (tmp_path / "link.csv").symlink_to(query)
    (tmp_path / "sub").mkdir()
    before = support.read_bytes(), query.read_bytes()
    for output, flag in ((support, "--support"), (tmp_path / "sub" / ".." / "support.csv", "--support"),
                         (tmp_path / "link.csv", "--query")):
        proc = run_predict(warm["uri"], warm["work"], "--support", support, "--query", query, "--output", output)
        assert_one_error_line(proc, f"is the same file as {flag}", "refusing to overwrite an input")
    proc = run_predict(warm["uri"], warm["work"], "--support", "support.csv", "--query", query,
                       "--output", "./support.csv", cwd=tmp_path)
    assert_one_error_line(proc, "is the same file as --support")
    assert (support.read_bytes(), query.read_bytes()) == before


def test_directories_as_output_or_support_are_one_line(warm, tmp_path):
    proc = run_predict(warm["uri"], warm["work"], "--support", warm["support"], "--query", warm["query"],
                       "--output", tmp_path)
    assert_one_error_line(proc, f"--output {tmp_path}: is a directory")
    proc = run_predict(warm["uri"], warm["work"], "--support", tmp_path, "--query", warm["query"],
                       "--output", tmp_path / "out.csv")
    assert_one_error_line(proc, f"--support {tmp_path}: is a directory")


@pytest.mark.parametrize("name, support, query, fragments", [
    ("NaCl0", SUPPORT, "formula\nSiO2\nNaCl0\n", ["q.csv line 3", "'NaCl0' cannot be used: unparseable_formula (zero amount of Cl"]),
    ("conflict", SUPPORT + "NaCl,5\nNaCl,1\n", QUERY, ["s.csv line 8", "same material as", "line 3",
                                                        "different target (5 vs 0.2)"]),
    ("injection", SUPPORT, "formula\nSiO2\n=HYPERLINK(1)\n", ["q.csv line 3", "starts with '='", "CSV injection"]),
    ("tab", SUPPORT, "formula\nSiO2\n\"\tNaCl\"\n", ["q.csv line 3", "starts with '\\t'"]),
    ("undecodable", b"formula,target\nFe2O3,1\nCaF\xe92,3\n", QUERY, ["s.csv line 3", "not UTF-8 text",
                                                                     "byte 0xe9"]),
    ("ragged", SUPPORT + "NiO,1,2\n", QUERY, ["s.csv line 8", "3 field(s) but the header has 2"]),
    ("ragged-query", SUPPORT, "formula\nSiO2\nNiO,1\n", ["q.csv line 3", "2 field(s)"]),
    ("no-target", "formula,value\nFe2O3,1\n", QUERY, ["s.csv", "lacks column(s) ['target']"]),
])
def test_bad_input_is_exit_2_with_one_line(warm, tmp_path, name, support, query, fragments):
    s, q = write(tmp_path / "s.csv", support), write(tmp_path / "q.csv", query)
    proc = run_predict(warm["uri"], warm["work"], "--support", s, "--query", q, "--output", tmp_path / "o.csv")
    assert_one_error_line(proc, *fragments)
    assert not (tmp_path / "o.csv").exists()


def test_og_is_refused_with_the_features_stage_reason(warm, tmp_path):
    from metalearn.features.composition import featurize_compositions

    _, errors = featurize_compositions(["Og"])
    q = write(tmp_path / "q.csv", "formula\nSiO2\nOg\n")
    proc = run_predict(warm["uri"], warm["work"], "--support", warm["support"], "--query", q,
                       "--output", tmp_path / "o.csv")
    assert_one_error_line(proc, "q.csv line 3", f"'Og' cannot be used: missing_element_data ({errors['detail'].iat[0]})")
    assert not (tmp_path / "o.csv").exists()


def test_identical_support_repeats_warn_and_count_once(warm, tmp_path):
    s = write(tmp_path / "s.csv", SUPPORT + "NaCl,0.2\n")
    proc = run_predict(warm["uri"], warm["work"], "--support", s, "--query", warm["query"],
                       "--output", tmp_path / "o.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in error_lines(proc) if "warning" in line]
    assert len(warnings) == 1 and "line 8 repeats" in warnings[0] and "used once" in warnings[0]
    assert (tmp_path / "o.csv").read_bytes() == (warm["root"] / "first.csv").read_bytes()


def test_an_unknown_model_is_one_line(warm, tmp_path):
    proc = run_predict(warm["uri"], warm["work"], "--model", "models:/nosuch@champion", "--support", warm["support"],
                       "--query", warm["query"], "--output", tmp_path / "o.csv")
    assert_one_error_line(proc, "models:/nosuch@champion")


def test_a_long_query_streams_in_chunks_with_a_progress_bar_and_the_same_rows(warm, tmp_path):
    from servers import FORMULAS

    rows = [FORMULAS[i % len(FORMULAS)] for i in range(700)]
    q = write(tmp_path / "q.csv", "formula\n" + "\n".join(rows) + "\n")
    whole = run_predict(warm["uri"], warm["work"], "--support", warm["support"], "--query", q,
                        "--output", tmp_path / "whole.csv")
    chunked = run_predict(warm["uri"], warm["work"], "--support", warm["support"], "--query", q,
                          "--output", tmp_path / "chunked.csv", "--chunk-rows", "256")
    assert whole.returncode == chunked.returncode == 0, chunked.stderr[-3000:]
    assert "predict:" in chunked.stderr and "row" in chunked.stderr  # tqdm's bar, on stderr
    assert "700 predictions" in chunked.stdout
    assert (tmp_path / "whole.csv").read_bytes() == (tmp_path / "chunked.csv").read_bytes()
