"""The local model cache: keyed by store + name + version, aliases re-checked without opening the store."""

from __future__ import annotations

import json
import shutil

import pytest

from metalearn.predict.local_model import MetalearnModel, cached_model_dir, load_local_model
from metalearn.predict.model_cache import ModelCache, parse_model_uri, store_key
from metalearn.registry import fetch_model_copy


def local_model_dir(uri: str, tracking_uri: str, workdir):
    """What ``metalearn predict`` does: the cached copy, else fetch it (the only step that opens the store)."""
    path, note = cached_model_dir(uri, tracking_uri, workdir)
    return (path, note) if path is not None else (fetch_model_copy(uri, tracking_uri, workdir), None)


@pytest.mark.parametrize("uri, kind, name, version, alias", [
    ("models:/metalearn@champion", "alias", "metalearn", None, "champion"),
    ("models:/metalearn/3", "version", "metalearn", "3", None),
    ("models:/metalearn/latest", "alias", "metalearn", None, "latest"),
    ("models:/m-0123abcd", "logged", "m-0123abcd", None, None),
    ("runs:/abc123/model", "run", "abc123", None, None),
])
def test_model_uris_parse(uri, kind, name, version, alias):
    ref = parse_model_uri(uri)
    assert (ref.kind, ref.name, ref.version, ref.alias) == (kind, name, version, alias)
    assert ref.mutable == (kind == "alias")
    assert parse_model_uri("/some/dir") is None


def test_one_cache_entry_per_store_whatever_its_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert store_key("sqlite:///store/mlflow.db") == store_key(f"sqlite:///{tmp_path}/store/../store/mlflow.db")
    cache = ModelCache(tmp_path / "cache")
    ref = parse_model_uri("models:/metalearn/1")
    assert cache.entry("sqlite:///a.db", ref) != cache.entry("sqlite:///b.db", ref)


def test_a_moved_alias_is_followed_and_each_version_is_copied_once(store_copy, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri, work = store_copy["uri"], tmp_path / "work"
    first, note = local_model_dir("models:/metalearn@champion", uri, work)
    assert note is None and first.name == f"v{store_copy['version']}" and (first / "MLmodel").is_file()
    assert json.loads((first / "metalearn-source.json").read_text())["uri"] == f"models:/metalearn/{store_copy['version']}"
    assert cached_model_dir("models:/metalearn@champion", uri, work) == (first, None)  # a hit: no fetch

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # create_model_version checks the source in the tracking store
    client = MlflowClient(uri, registry_uri=uri)
    old = client.get_model_version("metalearn", store_copy["version"])
    new = client.create_model_version("metalearn", old.source, run_id=old.run_id)
    client.set_registered_model_alias("metalearn", "champion", new.version)
    assert cached_model_dir("models:/metalearn@champion", uri, work) == (None, None)  # the store file changed
    moved, _ = local_model_dir("models:/metalearn@champion", uri, work)
    assert moved.name == f"v{new.version}" and moved != first and first.is_dir()
    pinned, _ = local_model_dir(f"models:/metalearn/{store_copy['version']}", uri, work)
    assert pinned == first  # an explicit version is immutable: served from its copy
    model = load_local_model(str(moved))
    assert isinstance(model, MetalearnModel) and model.predictor.feature_names


def test_a_server_store_alias_is_trusted_for_a_while(registry_store, tmp_path, monkeypatch):
    """Resolve/download callables as the registry's would behave, for a store without a file to stat."""
    from metalearn.predict import model_cache

    cache = ModelCache(tmp_path / "cache")
    source = registry_store["root"] / "copy"
    resolved = []

    def resolve(uri, store):
        resolved.append(uri)
        return "7"

    def download(uri, store, dst):
        assert uri == "models:/metalearn/7"
        shutil.copytree(source, dst, dirs_exist_ok=True)

    local_model_dir(f"models:/metalearn/{registry_store['version']}", registry_store["uri"], tmp_path / "w")
    src = next((tmp_path / "w" / "cache" / "models").rglob("MLmodel")).parent
    shutil.copytree(src, source)
    store = "http://127.0.0.1:5000"
    assert cache.lookup(store, "models:/metalearn@champion") == (None, None)
    path = cache.fill(store, "models:/metalearn@champion", resolve, download)
    assert cache.lookup(store, "models:/metalearn@champion") == (path, None) and resolved == ["models:/metalearn@champion"]
    monkeypatch.setattr(model_cache, "ALIAS_TTL_S", 0.0)
    assert cache.lookup(store, "models:/metalearn@champion") == (None, None)  # expired: resolve again


def test_a_model_directory_is_used_as_it_is_and_a_bad_path_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a models:/ or runs:/ URI and not a model directory"):
        cached_model_dir(str(tmp_path / "nothing"))
