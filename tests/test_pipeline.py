"""Run configuration: one source of defaults, one validation at the edge, typed stage configs."""

from __future__ import annotations

import json
import warnings

import pytest

from metalearn.config import deep_merge
from metalearn.evaluate.protocol import EvalConfig
from metalearn.learn.stage import LearnerConfig
from metalearn.pipeline import PROFILES, RunConfig, Stages, resolve_stages


def test_profiles_quick_is_smaller_than_default():
    quick, default = PROFILES["quick"], PROFILES["default"]
    q, d = quick["ingest"].get("max_rows_per_dataset"), default["ingest"].get("max_rows_per_dataset")
    assert q is not None and (d is None or q < d)
    assert quick["train"]["max_steps"] < default["train"]["max_steps"]
    assert quick["evaluate"]["n_draws"] < default["evaluate"]["n_draws"]


def test_stages_are_typed_and_overrides_merge_key_by_key():
    stages = resolve_stages(RunConfig(profile="quick", train={"max_steps": 7},
                                      hyperparams={"fomaml": {"inner_steps": 2}}))
    assert isinstance(stages, Stages) and isinstance(stages.evaluate, EvalConfig)
    fomaml = stages.learners["fomaml"]
    assert isinstance(fomaml, LearnerConfig)
    assert fomaml.loop.max_steps == 7
    assert fomaml.loop.meta_batch_size == PROFILES["quick"]["train"]["meta_batch_size"]
    assert fomaml.hyperparams == {"inner_steps": 2} and stages.learners["metric"].hyperparams == {}
    assert stages.registry.model_name == "metalearn" and stages.ingest.source == "bundled"
    assert json.loads(json.dumps(stages.logged())) == stages.logged()


def test_old_spellings_still_work_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match='train=\\{"train"'):
        old = resolve_stages(RunConfig(profile="quick", train={"train": {"max_steps": 9}, "n_support": 3}))
    new = resolve_stages(RunConfig(profile="quick", train={"max_steps": 9, "n_support": 3}))
    assert old.learners == new.learners
    with pytest.warns(DeprecationWarning, match="evaluate.ks"):
        assert resolve_stages(RunConfig(evaluate={"ks": [5, 10]})).evaluate.n_support == (5, 10)
    with pytest.warns(DeprecationWarning, match="registry.k"):
        assert resolve_stages(RunConfig(registry={"k": 5})).registry.n_support == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_stages(RunConfig(profile="quick"))  # the profiles themselves use no old spelling


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
    ({"promote": "yes"}, "RunConfig.promote must be bool"),
    ({"transfer_learners": ["fomaml"]}, "not regression learners on the representation"),
    ({"transfer_learners": ["protonet_rep"]}, "not regression learners on the representation"),
    ({"ingest": []}, "RunConfig.ingest must be dict"),
])
def test_run_config_rejects_bad_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_params(params)


@pytest.mark.parametrize(("params", "message"), [
    ({"ingest": {"max_rows": 5}}, "parameter ingest: unknown IngestConfig parameter"),
    ({"ingest": {"max_rows_per_dataset": "many"}}, "IngestConfig.max_rows_per_dataset must be int or None"),
    ({"featurize": {"chunks": 5}}, "parameter featurize: unknown FeaturizeConfig parameter"),
    ({"featurize": {"chunk_size": 0}}, "chunk_size must be >= 1"),
    ({"shards": {"min_rows": 5}}, "parameter shards: unknown ShardConfig parameter"),
    ({"train": {"steps": 5}}, "unknown train parameter"),
    ({"train": {"max_steps": 0}}, "max_steps must be >= 1"),
    ({"train": {"n_support": "ten"}}, "n_support"),
    ({"hyperparams": {"fomaml": {"inner_stepz": 1}}}, "parameter hyperparams.fomaml"),
    ({"evaluate": {"draws": 5}}, "parameter evaluate: unknown EvalConfig parameter"),
    ({"evaluate": {"n_support": [1]}}, "n_support must be non-empty ints >= 2"),
    ({"registry": {"min_win": 0.5}}, "parameter registry: unknown RegistryConfig parameter"),
])
def test_bad_stage_settings_fail_before_any_work_naming_the_parameter(params, message):
    with pytest.raises(ValueError, match=message):
        resolve_stages(RunConfig.from_params(params))


def test_meta_learners_on_the_representation_are_selectable():
    run = RunConfig.from_params({"transfer_learners": ["meta_transfer", "fomaml_rep", "metric_rep"],
                                 "classifier_learner": "protonet_rep"})
    assert {"fomaml_rep", "metric_rep", "protonet_rep"} <= set(resolve_stages(run).learners)


def test_classifier_null_means_no_classifier():
    run = RunConfig.from_params({"classifier_learner": None, "registry": None})
    assert run.classifier_learner is None and "protonet" not in run.learners
    assert "protonet" not in resolve_stages(run).learners
