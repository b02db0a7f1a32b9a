"""The Prefect task layer: cache keys, artifacts, retries of transient MP failures, the MP key's handling."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from prefect import flow
from prefect.states import Failed

from metalearn.ingest.mp import MPIngestError
from metalearn.ingest.stage import IngestConfig
from tasks import ingest as ingest_tasks
from tasks._common import artifact_key, manifest_cache_key, markdown_table
from tasks.evaluate import summary_table


def test_artifact_keys_are_what_prefect_accepts():
    assert artifact_key("ingest", "mp_summary:Band Gap") == "metalearn-ingest-mp-summary-band-gap"
    assert artifact_key("train", "fomaml") == "metalearn-train-fomaml"


def test_markdown_table_escapes_pipes_and_formats_floats():
    text = markdown_table([{"a": "x|y", "b": 0.123456}])
    assert "x\\|y" in text and "0.1235" in text and text.startswith("| a | b |")
    assert markdown_table([]) == "_(none)_\n"


def test_summary_table_shows_n_support_and_rounds():
    rows = [{"setting": "meta-test-property", "learner": "fomaml", "k": 5, "metric": "mae_mad", "n_tasks": 3,
             "mean": 1.0000001234, "median": 0.9, "median_lo": 0.8, "median_hi": 1.1, "win_rate_vs_mean": 0.5}]
    table = summary_table(rows)
    assert table == [{"setting": "meta-test-property", "n_support": 5, "metric": "mae_mad", "learner": "fomaml",
                      "n_tasks": 3, "mean": 1.0, "median": 0.9, "median_lo": 0.8, "median_hi": 1.1}]

def _snapshot(tmp_path: Path, content_hash: str) -> Path:
    from metalearn import io
    from metalearn.schema import Manifest

    path = tmp_path / "snap"
    path.mkdir(exist_ok=True)
    io.write_manifest(path, Manifest(stage="raw", source="bundled", content_hash=content_hash, n_rows=1,
                                     created="now"))
    return path


def test_manifest_cache_key_follows_content_not_timestamps(tmp_path):
    class Ctx:
        class task:
            name = "t"

    key = manifest_cache_key("snapshot_dir")
    snap = _snapshot(tmp_path, "aaa")
    first = key(Ctx, {"snapshot_dir": str(snap), "cfg": {"x": 1}})
    assert key(Ctx, {"snapshot_dir": str(snap), "cfg": {"x": 1}}) == first
    assert key(Ctx, {"snapshot_dir": str(snap), "cfg": {"x": 2}}) != first
    _snapshot(tmp_path, "bbb")
    assert key(Ctx, {"snapshot_dir": str(snap), "cfg": {"x": 1}}) != first


@pytest.mark.parametrize(("exc", "transient"), [
    (MPIngestError("fetch: cannot reach the API after 3 retries: ConnectionError", transient=True), True),
    (MPIngestError("list: HTTP 503 persisted after 3 retries (retry budget exhausted)", transient=True), True),
    (MPIngestError("fetch: HTTP 503 persisted (the message alone decides nothing)"), False),
    (MPIngestError("no Materials Project API key: pass api_key=... or set MP_API_KEY"), False),
    (MPIngestError("list: the Materials Project API rejected the API key (HTTP 401)"), False),
    (ValueError("unknown source 'x'"), False),
    (ConnectionError("reset"), True),
])
def test_only_transient_failures_are_retried(exc, transient):
    assert ingest_tasks.is_transient(None, None, Failed(data=exc)) is transient


def test_mp_key_from_env_wins(monkeypatch):
    monkeypatch.setenv("MP_API_KEY", "k" * 32)
    assert ingest_tasks.resolve_mp_key("no-such-block") == "k" * 32
    monkeypatch.delenv("MP_API_KEY")
    assert ingest_tasks.resolve_mp_key(None) is None


def test_mp_key_from_secret_block_and_source_choice(prefect_harness, monkeypatch):
    from prefect.blocks.system import Secret

    @flow
    def choose(source: str, block: str) -> str:
        return ingest_tasks.choose_source(source, block)

    monkeypatch.delenv("MP_API_KEY", raising=False)
    assert ingest_tasks.resolve_mp_key("missing-block") is None
    assert choose("auto", "missing-block") == "bundled"
    with pytest.raises(ValueError, match="needs a key"):
        choose("mp", "missing-block")
    Secret(value="s" * 32).save("mp-key-test", overwrite=True)
    assert ingest_tasks.resolve_mp_key("mp-key-test") == "s" * 32
    assert choose("auto", "mp-key-test") == "mp"


def _read(kind: str, flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        if kind == "artifacts":
            return client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        if kind == "task_runs":  # states arrive asynchronously: wait until each is final (<= 30 s)
            deadline = time.monotonic() + 30
            while True:
                runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
                if all(r.state is not None and r.state.is_final() for r in runs) or time.monotonic() > deadline:
                    return runs
                time.sleep(0.5)
        return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


@pytest.mark.slow
def test_mp_ingest_task_keeps_the_key_out_of_prefect(prefect_harness, tmp_path, monkeypatch):
    """A real MP pull (loopback API): the key comes from a Secret block and appears in no task
    parameter, result, log or artifact; the counts artifact is written."""
    import mp_server as mp  # tests/mp_server.py, found by path through tests/conftest.py
    from prefect.blocks.system import Secret

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("MP_API_KEY", "MP_API_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    server = mp.MPServer(mp.build_documents(5)).start()
    try:
        Secret(value=mp.TEST_KEY).save("mp-key-ingest-test", overwrite=True)

        @flow
        def pull(workdir: str) -> dict:
            return ingest_tasks.ingest_snapshot(workdir, "mp", IngestConfig(mp_endpoint=server.url),
                                                "mp-key-ingest-test")

        state = pull(str(tmp_path / "work"), return_state=True)
        result = state.result()
    finally:
        server.stop()
    assert result["source"] == "mp" and result["n_rows"] > 0 and Path(result["path"]).exists()
    flow_run_id = state.state_details.flow_run_id
    artifacts = _read("artifacts", flow_run_id)
    assert [a.key for a in artifacts] == ["metalearn-ingest-mp"]
    assert "Quarantine reasons" in artifacts[0].data
    haystack = json.dumps([str(a.data) for a in artifacts] + [log.message for log in _read("logs", flow_run_id)]
                          + [str(t.task_inputs) for t in _read("task_runs", flow_run_id)] + [json.dumps(result)])
    assert mp.TEST_KEY not in haystack
    assert os.environ.get("MP_API_KEY") is None


@pytest.mark.slow
def test_unreachable_mp_is_retried_then_fails_with_the_cause(prefect_harness, tmp_path, monkeypatch):
    key = "r" * 32
    monkeypatch.setenv("MP_API_KEY", key)
    monkeypatch.setenv("HOME", str(tmp_path))
    endpoint = f"http://127.0.0.1:{_free_port()}/"  # nothing listens there: connection refused
    retrying = ingest_tasks.ingest_snapshot.with_options(retries=1, retry_delay_seconds=0)

    @flow
    def pull(workdir: str) -> dict:
        return retrying(workdir, "mp", IngestConfig(mp_endpoint=endpoint), None)

    state = pull(str(tmp_path / "work"), return_state=True)
    assert state.is_failed()
    with pytest.raises(MPIngestError, match="cannot reach") as caught:
        state.result()
    assert key not in str(caught.value)
    (run,) = [t for t in _read("task_runs", state.state_details.flow_run_id) if t.name == "ingest-mp"]
    assert run.run_count == 2  # the first attempt and one Prefect retry


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
