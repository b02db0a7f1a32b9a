"""Flow parameters: the flows mirror RunConfig (names and defaults); bad parameters fail before any work."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest

from metalearn.pipeline import RunConfig


def test_flow_parameters_are_run_config_fields_with_its_defaults():
    from flows.nightly import _D, nightly, retrain, retrain_fields

    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    signature = inspect.signature(nightly.fn).parameters
    assert list(signature) == list(fields)
    for name, param in signature.items():
        default = fields[name].default
        if default is not dataclasses.MISSING and not isinstance(default, tuple):
            assert param.default == default, name
        else:  # dict and list fields: None in the flow means "the RunConfig default"
            assert param.default is None
    retrain_params = inspect.signature(retrain.fn).parameters
    assert set(retrain_fields()) == set(retrain_params) - {"shards_dir", "snapshot", "features"}
    for name in retrain_fields():
        assert retrain_params[name].default == signature[name].default
    assert _D == RunConfig()


def test_the_flow_fails_at_once_on_an_unknown_key(prefect_harness, tmp_path):
    from prefect.exceptions import ParameterBindError

    from flows.nightly import nightly

    state = nightly(workdir=str(tmp_path), ingest={"nope": 1}, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="unknown IngestConfig parameter"):
        state.result()
    assert not (tmp_path / "raw").exists()  # nothing was ingested
    with pytest.raises(ParameterBindError, match="bogus"):
        nightly(workdir=str(tmp_path), bogus=1)


@pytest.mark.parametrize(("args", "message"), [
    (["--profile", "quick", "--params", json.dumps({"train": {"max_stepz": 1}})], "unknown train parameter"),
    (["--params", json.dumps({"profil": "quick"})], "profil"),
    (["--profile", "quick", "--params", json.dumps({"profile": "huge"})], "--profile 'quick' conflicts"),
    (["--params", json.dumps({"ingest": {"max_rows_per_dataset": -5}})], "max_rows_per_dataset"),
    (["--params", json.dumps({"ingest": {"max_rows_per_dataset": "many"}})], "must be int or None"),
    (["--params", "{not json"], "--params is not valid JSON"),
])
def test_cli_run_reports_a_bad_parameter_in_one_line_and_exits_2(tmp_path, args, message):
    from flow_support import cli

    out = cli("run", "--workdir", str(tmp_path), *args, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "raw").exists() and not (tmp_path / "prefect").exists()


def test_cli_run_names_an_unusable_work_directory(tmp_path):
    from flow_support import cli

    a_file = tmp_path / "file"
    a_file.write_text("x")
    out = cli("run", "--workdir", str(a_file), "--profile", "quick", timeout=300)
    assert out.returncode == 2 and str(a_file) in out.stderr and "not a directory" in out.stderr
    assert "Traceback" not in out.stderr
