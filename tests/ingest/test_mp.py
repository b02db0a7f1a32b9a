"""MP ingest: the real mp-api client against the loopback MP API (tests/mp_server.py), no mocks.

Covers pagination and field selection, incremental re-runs (only changed documents fetched, nothing
new -> no new snapshot), 429 then success, 5xx past the retry budget, truncated pages, bad keys, and
that the API key never shows up in logs, output, exceptions or files.
"""

from __future__ import annotations

import json
import logging
import time
import traceback

import pandas as pd
import pytest
from mp_server import TEST_KEY  # found by path through tests/conftest.py

from metalearn import io
from metalearn import schema as S
from metalearn.ingest.mp import (
    MP_PROPERTIES,
    SUMMARY_FIELDS,
    MPConfig,
    MPIngestError,
    flatten_summary_doc,
    quarantine_nonpositive_log,
    summary_frame,
    to_records,
)
from metalearn.ingest.mp_client import ingest_mp
from metalearn.ingest.snapshot import latest_snapshot, list_snapshots, read_table, verify_snapshot
from metalearn.layout import WorkDir

pytestmark = pytest.mark.usefixtures("offline_home")
OTHER_KEY = "Zz9yXx8wVv7uTt6sRr5qPp4oNn3mLl2k"  # well-formed (32 chars) but not the server's key


def _cfg(server, **overrides) -> MPConfig:
    settings = {"endpoint": server.url, "chunk_size": 7, "max_retries": 2, "backoff_base": 0.01,
                "backoff_max": 0.05, "timeout": 10}
    settings.update(overrides)
    return MPConfig(**settings)


def _summary_params(server) -> list[dict]:
    return [r["params"] for r in server.summary_requests()]


def _fetched_ids(server) -> set[str]:
    """Material ids requested with the full field list (not the cheap listing pass)."""
    ids: set[str] = set()
    for params in _summary_params(server):
        if "structure" in params.get("_fields", "").split(","):
            ids |= set(params["material_ids"].split(","))
    return ids


def _assert_nothing_written(work: WorkDir) -> None:
    assert latest_snapshot(work, "mp") is None
    leftovers = [p for p in work.root.rglob("*") if p.name.startswith(io.TMP_PREFIX)]
    assert leftovers == []
    assert not work.raw("mp").exists() or not any(work.raw("mp").iterdir())


def test_first_run_pages_through_the_api_with_an_explicit_field_list(mp_server, work):
    result = ingest_mp(work, _cfg(mp_server), api_key=TEST_KEY)

    assert result.created
    params = _summary_params(mp_server)
    listing = [p for p in params if p["_fields"] == "material_id,last_updated"]
    full = [p for p in params if p not in listing]
    assert len(listing) == 5 and len(full) == 5  # 30 docs, chunk_size 7 -> 5 pages each
    assert sorted(int(p.get("_skip", 0)) for p in listing) == [0, 7, 14, 21, 28]
    assert all(p["_fields"].split(",") == list(SUMMARY_FIELDS) for p in full)
    assert not any("_all_fields" in p for p in params)
    assert all(r["has_key"] for r in mp_server.summary_requests())

    summary = read_table(result.path, "summary")
    assert len(summary) == len(mp_server.docs) and summary["material_id"].is_unique
    assert verify_snapshot(result.path, deep=True) == []  # the content hash is that of the files (summary too)
    manifest = io.read_manifest(result.path)
    assert manifest.database_version == mp_server.db_version
    assert manifest.extra["max_last_updated"] == "2017-02-01T00:00:00+00:00"
    assert manifest.query["endpoint"] == mp_server.url and manifest.query["criteria"] == {}

    records = read_table(result.path, "records")
    assert list(records.columns) == [f.name for f in S.RECORDS_SCHEMA]
    assert records["record_id"].is_unique
    from pymatgen.core import Structure

    for row in records.sample(10, random_state=0).itertuples(index=False):
        doc = mp_server.docs[row.material_id]
        key = row.dataset_id.split(":", 1)[1]
        prop = next(p for p in MP_PROPERTIES if p.key == key)
        assert row.target == pytest.approx(doc[prop.path[0]])
        structure = Structure.from_dict(json.loads(row.structure_json))
        assert structure.composition.reduced_formula == row.formula == doc["formula_pretty"]
    first = summary.set_index("material_id").loc[min(mp_server.docs)]
    assert first["spacegroup_number"] == mp_server.docs[min(mp_server.docs)]["symmetry"]["number"]


def test_incremental_run_fetches_only_changed_documents(mp_server, work):
    cfg = _cfg(mp_server)
    first = ingest_mp(work, cfg, api_key=TEST_KEY)
    ids = sorted(mp_server.docs)
    changed, dropped = ids[3], ids[5]
    mp_server.modify(changed, band_gap=9.75)
    mp_server.remove(dropped)
    mp_server.add({**mp_server.docs[ids[0]], "material_id": "mp-3000001", "band_gap": 1.25})
    mp_server.db_version = "2026.01.01"
    mp_server.requests.clear()

    second = ingest_mp(work, cfg, api_key=TEST_KEY)

    assert second.created and second.path != first.path
    assert _fetched_ids(mp_server) == {changed, "mp-3000001"}
    summary = read_table(second.path, "summary").set_index("material_id")
    assert dropped not in summary.index and len(summary) == 30
    assert summary.at[changed, "band_gap_ev"] == 9.75 and summary.at["mp-3000001", "band_gap_ev"] == 1.25
    manifest = io.read_manifest(second.path)
    assert manifest.database_version == "2026.01.01"
    assert manifest.extra["n_fetched"] == 2 and manifest.extra["n_removed"] == 1
    assert manifest.extra["previous_snapshot"] == first.path.name
    assert manifest.extra["max_last_updated"] > "2025"

    # The merged snapshot equals a from-scratch fetch of the same server state.
    fresh = ingest_mp(WorkDir.resolve(work.root / "fresh"), cfg, api_key=TEST_KEY)
    assert fresh.manifest.content_hash == manifest.content_hash

    mp_server.requests.clear()
    mp_server.db_version = "2026.02.02"  # a release that changed none of our documents
    third = ingest_mp(work, cfg, api_key=TEST_KEY)
    assert not third.created and third.path == second.path
    assert _fetched_ids(mp_server) == set()
    assert len(list_snapshots(work, "mp")) == 2


def test_criteria_are_sent_and_a_new_criteria_set_is_fetched_in_full(mp_server, work):
    first = ingest_mp(work, _cfg(mp_server, criteria={"elements": ["O"]}), api_key=TEST_KEY)
    oxides = {m for m, d in mp_server.docs.items() if "O" in d["elements"]}
    assert 0 < len(oxides) < len(mp_server.docs)
    assert set(read_table(first.path, "summary")["material_id"]) == oxides
    assert all(p.get("elements") == "O" for p in _summary_params(mp_server) if "material_ids" not in p)
    mp_server.requests.clear()
    second = ingest_mp(work, _cfg(mp_server), api_key=TEST_KEY)
    assert second.created and _fetched_ids(mp_server) == set(mp_server.docs)
    assert second.manifest.extra["mode"] == "full"


def test_rate_limit_is_retried_then_succeeds(mp_server, work, monkeypatch):
    monkeypatch.setenv("MP_API_KEY", TEST_KEY)  # the key from the environment this time
    mp_server.fail_429 = 2
    mp_server.retry_after = "60"  # capped at backoff_max, so the test stays fast
    start = time.monotonic()
    result = ingest_mp(work, _cfg(mp_server), api_key=None)
    assert time.monotonic() - start < 20
    assert result.created
    statuses = [r["status"] for r in mp_server.summary_requests()]
    assert statuses[:3] == [429, 429, 200] and set(statuses[3:]) == {200}


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_past_the_retry_budget_fail_clearly_and_write_nothing(mp_server, work, status):
    mp_server.fail_status = status
    start = time.monotonic()
    with pytest.raises(MPIngestError, match=rf"HTTP {status}.*after 2 retries.*budget exhausted"):
        ingest_mp(work, _cfg(mp_server, max_retries=2), api_key=TEST_KEY)
    assert time.monotonic() - start < 20
    assert len(mp_server.summary_requests()) == 3  # one try + max_retries
    _assert_nothing_written(work)


@pytest.mark.parametrize("mode,match", [("json", "truncated JSON"), ("transport", "truncated response")])
def test_truncated_page_fails_clearly_and_writes_nothing(mp_server, work, mode, match):
    mp_server.truncate_page, mp_server.truncate_mode = 2, mode
    with pytest.raises(MPIngestError, match=match):
        ingest_mp(work, _cfg(mp_server), api_key=TEST_KEY)
    _assert_nothing_written(work)


def test_failure_after_a_good_snapshot_keeps_the_old_one(mp_server, work):
    cfg = _cfg(mp_server)
    good = ingest_mp(work, cfg, api_key=TEST_KEY)
    mp_server.modify(min(mp_server.docs), band_gap=3.5)
    mp_server.truncate_page = 0
    with pytest.raises(MPIngestError):
        ingest_mp(work, cfg, api_key=TEST_KEY)
    assert list_snapshots(work, "mp") == [good.path]
    assert not [p for p in work.root.rglob("*") if p.name.startswith(io.TMP_PREFIX)]


def test_missing_or_malformed_key_fails_before_any_request(mp_server, work):
    with pytest.raises(MPIngestError, match="no Materials Project API key"):
        ingest_mp(work, _cfg(mp_server), api_key=None)
    with pytest.raises(MPIngestError, match="malformed: it has 5 characters"):
        ingest_mp(work, _cfg(mp_server), api_key="short")
    assert mp_server.requests == []
    _assert_nothing_written(work)


def _all_text(exc: BaseException) -> str:
    """Everything a logger or Prefect could show: message, repr, args, chain and formatted traceback."""
    parts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    parts += traceback.format_exception(exc)
    return "\n".join(parts)


def test_the_key_never_appears_anywhere(mp_server, work, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    errors = []
    # A server that echoes a rejected key into its error detail.
    mp_server.echo_key_in_errors = True
    with pytest.raises(MPIngestError, match=r"rejected the API key \(HTTP 403\)") as bad_key:
        ingest_mp(work, _cfg(mp_server), api_key=OTHER_KEY)
    errors.append(bad_key.value)
    assert "***" in str(bad_key.value)  # the echoed key was scrubbed, not the message dropped
    mp_server.fail_status = 502
    with pytest.raises(MPIngestError) as spent:
        ingest_mp(work, _cfg(mp_server), api_key=TEST_KEY)
    errors.append(spent.value)
    mp_server.fail_status = None
    result = ingest_mp(work, _cfg(mp_server), api_key=TEST_KEY)

    out, err = capsys.readouterr()
    texts = [out, err, caplog.text, result.manifest.to_json(), repr(result), *map(_all_text, errors)]
    for key in (TEST_KEY, OTHER_KEY):
        assert not any(key in text for text in texts)
        for path in work.root.rglob("*"):
            if path.is_file():
                assert key.encode() not in path.read_bytes(), path
    assert all(e.__cause__ is None and e.__context__ is None for e in errors)


# --- MPIngestError.transient: what an orchestrator may retry later, decided by the library ---------

@pytest.mark.parametrize("fault,match", [
    ({"fail_status": 503}, r"HTTP 503 persisted.*budget exhausted"),
    ({"fail_status": 502}, r"HTTP 502 persisted.*budget exhausted"),
    ({"fail_429": 100}, r"HTTP 429 persisted.*budget exhausted"),
    ({"truncate_page": 1, "truncate_mode": "json"}, "truncated JSON"),
    ({"truncate_page": 0, "truncate_mode": "transport"}, "truncated response"),
    ({"delay_s": 2.0}, "timed out"),
])
def test_transient_failures_say_so(mp_server, work, fault, match):
    for name, value in fault.items():
        setattr(mp_server, name, value)
    with pytest.raises(MPIngestError, match=match) as caught:
        ingest_mp(work, _cfg(mp_server, max_retries=1, timeout=0.5), api_key=TEST_KEY)
    assert caught.value.transient is True
    _assert_nothing_written(work)


def test_an_unreachable_api_is_transient(mp_server, work):
    url = mp_server.url
    mp_server.stop()  # nothing listens on the port any more: connection refused
    with pytest.raises(MPIngestError, match="cannot reach") as caught:
        ingest_mp(work, MPConfig(endpoint=url, max_retries=1, backoff_base=0.01, timeout=5), api_key=TEST_KEY)
    assert caught.value.transient is True


def test_permanent_failures_say_so(mp_server, work):
    def fails(api_key=TEST_KEY, **overrides) -> MPIngestError:
        with pytest.raises(MPIngestError) as caught:
            ingest_mp(work, _cfg(mp_server, **overrides), api_key=api_key)
        return caught.value

    assert "no Materials Project API key" in str(bad := fails(api_key=None)) and not bad.transient
    assert "malformed: it has 5 characters" in str(bad := fails(api_key="short")) and not bad.transient
    assert "rejected the API key (HTTP 403)" in str(bad := fails(api_key=OTHER_KEY)) and not bad.transient
    assert "matched no materials" in str(bad := fails(criteria={"elements": ["Og"]})) and not bad.transient
    mp_server.truncate_page, mp_server.truncate_mode = 0, "garbage"
    assert "malformed response page (invalid JSON)" in str(bad := fails()) and not bad.transient
    mp_server.truncate_page = None
    mp_server.modify(min(mp_server.docs), band_gap="abc")
    assert "band_gap='abc' is not a number" in str(bad := fails()) and not bad.transient
    _assert_nothing_written(work)


def test_transient_survives_pickling():
    """Prefect persists a failed task's exception; the flag must come back with it."""
    import pickle

    again = pickle.loads(pickle.dumps(MPIngestError("fetch: cannot reach the API", transient=True)))
    assert again.transient is True and str(again) == "fetch: cannot reach the API"
    assert MPIngestError("no key").transient is False


# --- corruption: a damaged previous snapshot is moved aside and the run recomputes ----------------

def test_corrupt_previous_snapshot_is_moved_aside_and_fetched_in_full(mp_server, work):
    cfg = _cfg(mp_server)
    first = ingest_mp(work, cfg, api_key=TEST_KEY)
    summary = first.path / "summary.parquet"
    summary.write_bytes(summary.read_bytes()[: summary.stat().st_size // 2])
    mp_server.requests.clear()

    second = ingest_mp(work, cfg, api_key=TEST_KEY)  # nothing changed upstream, but the old copy is broken

    assert second.created and second.path != first.path and not first.path.exists()
    assert second.manifest.content_hash == first.manifest.content_hash
    assert second.manifest.extra["mode"] == "full" and _fetched_ids(mp_server) == set(mp_server.docs)
    (moved,) = [p for p in work.raw("mp").iterdir() if p.name.startswith(first.path.name + io.CORRUPT_MARK)]
    assert "summary.parquet" in (moved / "verify-problems.json").read_text()
    assert list_snapshots(work, "mp") == [second.path]


def test_to_records_flattens_nested_values_and_quarantines_nonpositive_log_targets():
    docs = [
        {"material_id": "mp-1", "formula_pretty": "Si", "band_gap": 0.6, "bulk_modulus": {"voigt": 90, "reuss": 88,
         "vrh": 89.0}, "shear_modulus": {"vrh": -2.0}, "symmetry": {"number": 227, "symbol": "Fd-3m",
         "crystal_system": "Cubic"}, "last_updated": {"$date": "2024-03-01T12:00:00Z"}},
        {"material_id": "mp-2", "formula_pretty": "NaCl", "band_gap": None, "bulk_modulus": 25.0,
         "last_updated": "2024-03-02T00:00:00"},
    ]
    frame = summary_frame(docs)
    assert frame["k_vrh_gpa"].tolist() == [89.0, 25.0]
    assert frame["spacegroup_number"].tolist()[0] == 227
    assert frame["last_updated"].tolist() == ["2024-03-01T12:00:00+00:00", "2024-03-02T00:00:00+00:00"]
    records, properties = to_records(frame)
    assert sorted(records["dataset_id"]) == ["mp_summary:band_gap_ev", "mp_summary:g_vrh_gpa",
                                             "mp_summary:k_vrh_gpa", "mp_summary:k_vrh_gpa"]
    assert set(properties["dataset_id"]) == set(records["dataset_id"])
    assert properties.set_index("property_key").at["k_vrh_gpa", "transform"] == "log10"
    assert properties.set_index("property_key").at["band_gap_ev", "family"] == "band_gap"
    kept, quarantined = quarantine_nonpositive_log(records, properties)
    assert quarantined["record_id"].tolist() == ["mp_summary:g_vrh_gpa:mp-1"]
    assert len(kept) == 3 and list(quarantined.columns) == [f.name for f in S.QUARANTINE_SCHEMA]


def test_malformed_documents_raise():
    with pytest.raises(MPIngestError, match="without a material_id"):
        flatten_summary_doc({"formula_pretty": "Si"})
    with pytest.raises(MPIngestError, match="band_gap='abc' is not a number"):
        flatten_summary_doc({"material_id": "mp-1", "band_gap": "abc"})
    with pytest.raises(MPIngestError, match="more than once"):
        summary_frame([{"material_id": "mp-1"}, {"material_id": "mp-1"}])


def test_config_validation_and_endpoint_resolution(monkeypatch):
    with pytest.raises(ValueError, match="may not set"):
        MPConfig(criteria={"fields": ["band_gap"]})
    with pytest.raises(ValueError, match="1..1000"):
        MPConfig(chunk_size=5000)
    monkeypatch.setenv("MP_API_ENDPOINT", "http://127.0.0.1:9")
    assert MPConfig().resolved_endpoint() == "http://127.0.0.1:9/"
    assert MPConfig(endpoint="http://127.0.0.1:8/x/").resolved_endpoint() == "http://127.0.0.1:8/x/"
    assert pd.Series(MPConfig(criteria={"elements": ("Si",)}).criteria_json()["elements"]).tolist() == ["Si"]


def test_cli_ingest_mp_against_the_loopback_server(mp_server, tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("MP_API_KEY", TEST_KEY)
    code = main(["ingest", "--source", "mp", "--workdir", str(tmp_path), "--mp-endpoint", mp_server.url])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "mp:" in out.out and "rows" in out.out and "quarantined" in out.out
    assert latest_snapshot(WorkDir(tmp_path), "mp") is not None
    assert TEST_KEY not in out.out + out.err
