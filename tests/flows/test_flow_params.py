"""Flow parameters: JSON-able, validated on the flow's first line, profiles ordered by size."""

from __future__ import annotations

import json

import pytest

from metalearn.config import deep_merge, from_dict
from metalearn.pipeline import PROFILES, RunConfig, resolve_stages


def test_profiles_quick_is_smaller_than_default():
    quick, default = PROFILES["quick"], PROFILES["default"]
    assert quick["ingest"]["max_rows_per_dataset"] < default["ingest"]["max_rows_per_dataset"]
    assert quick["train"]["train"]["max_steps"] < default["train"]["train"]["max_steps"]
    assert quick["evaluate"]["n_draws"] < default["evaluate"]["n_draws"]


def test_resolved_stages_are_json_round_trippable_and_overrides_merge():
    stages = resolve_stages(RunConfig(profile="quick", train={"train": {"max_steps": 7}},
                                      hyperparams={"fomaml": {"inner_steps": 2}}))
    assert json.loads(json.dumps(stages)) == stages
    assert stages["train"]["fomaml"]["train"]["max_steps"] == 7
    assert stages["train"]["fomaml"]["train"]["meta_batch_size"] == PROFILES["quick"]["train"]["train"]["meta_batch_size"]
    assert stages["train"]["fomaml"]["hyperparams"] == {"inner_steps": 2}
    assert stages["train"]["metric"]["hyperparams"] == {}
    assert "source" not in stages["ingest"] and stages["registry"]["model_name"] == "metalearn"


def test_deep_merge_keeps_sibling_keys():
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}}) == {"a": {"b": 5, "c": 2}, "d": 3}


@pytest.mark.parametrize(("params", "message"), [
    ({"profil": "quick"}, "unknown RunConfig parameter"),
    ({"profile": "huge"}, "unknown profile"),
    ({"source": "oqmd"}, "unknown source"),
    ({"gradient_learner": "protonet"}, "gradient_learner"),
    ({"ingest": {"source": "mp"}}, "`source` parameter"),
    ({"registry": {"tracking_uri": "x"}}, "MLFLOW_TRACKING_URI"),
    ({"hyperparams": {"maml": {}}}, "does not train"),
])
def test_run_config_rejects_bad_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        from_dict(RunConfig, params)


@pytest.mark.parametrize(("params", "message"), [
    ({"ingest": {"max_rows": 5}}, "unknown IngestConfig parameter"),
    ({"featurize": {"chunks": 5}}, "unknown FeaturizeConfig parameter"),
    ({"shards": {"min_rows": 5}}, "unknown ShardConfig parameter"),
    ({"train": {"steps": 5}}, "unknown ExperimentConfig parameter"),
    ({"train": {"train": {"max_stepz": 5}}}, "unknown TrainConfig parameter"),
    ({"hyperparams": {"fomaml": {"inner_stepz": 1}}}, "bad hyperparams for 'fomaml'"),
    ({"evaluate": {"draws": 5}}, "unknown EvalConfig parameter"),
    ({"registry": {"min_win": 0.5}}, "unknown RegistryConfig parameter"),
])
def test_unknown_stage_keys_fail_before_any_work(params, message):
    with pytest.raises(ValueError, match=message):
        resolve_stages(from_dict(RunConfig, params))


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


def test_cli_run_reports_an_unknown_key_and_exits_2(tmp_path):
    from flow_support import cli

    out = cli("run", "--workdir", str(tmp_path), "--profile", "quick",
              "--params", json.dumps({"train": {"train": {"max_stepz": 1}}}), timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "unknown TrainConfig parameter(s) ['max_stepz']" in out.stderr
    assert not (tmp_path / "raw").exists()
    out = cli("run", "--workdir", str(tmp_path), "--params", json.dumps({"profil": "quick"}), timeout=300)
    assert out.returncode == 2 and "profil" in out.stderr
