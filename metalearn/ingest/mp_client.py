"""Fetch the MP ``materials/summary`` through the real mp-api client, incrementally, into a raw snapshot.

A run:
1. resolves the API key (argument, else ``$MP_API_KEY``) and checks its shape locally;
2. reads ``<endpoint>heartbeat`` for the database version (through our session: the client's own
   heartbeat is cached per process and has no timeout, so a version bump would go unseen);
3. lists ``material_id`` + ``last_updated`` of every match (a cheap pass: the API has no
   "changed since" filter);
4. compares with the previous snapshot's ``summary`` table (same endpoint and criteria): ids that are
   new or have a newer ``last_updated`` are fetched in full via ``material_ids=``; ids no longer
   listed are dropped; the rest is reused (latest wins);
5. melts the merged table into records and calls ``write_snapshot`` (``tables={"summary": ...}``).
   Nothing is written before step 5, and a run with nothing new writes nothing.

Faults: every request goes through one ``requests.Session`` whose urllib3 ``Retry`` retries HTTP
429/500/502/503/504 and connection errors at most ``cfg.max_retries`` times, waiting
``backoff_base * 2**(n-1)`` s (Retry-After honoured, both capped at ``backoff_max``), with
``cfg.timeout`` per request. A missing/invalid key, a spent retry budget or a malformed page ends in
:class:`MPIngestError` naming the cause, with ``transient`` saying whether a later retry may help
(429/5xx past the budget, connection failures, timeouts, truncated pages) or not (key, malformed
data, bad request, no matches). The key never appears in messages, logs or manifests:
errors from the HTTP layer are re-raised as fresh exceptions, without a chained cause (requests'
exceptions carry the request, headers included).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
from collections.abc import Callable
from json import JSONDecodeError
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from metalearn import io
from metalearn.ingest.mp import (
    LAST_UPDATED,
    LISTING_FIELDS,
    MATERIAL_ID,
    SOURCE,
    SUMMARY_FIELDS,
    MPConfig,
    MPIngestError,
    normalise_summary,
    parse_last_updated,
    quarantine_nonpositive_log,
    summary_frame,
    to_records,
)
from metalearn.ingest.snapshot import (
    VALIDATION_KEY,
    SnapshotResult,
    latest_verified_snapshot,
    read_table,
    write_snapshot,
)
from metalearn.ingest.validate import VALIDATION_VERSION
from metalearn.layout import WorkDir

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_ALL_PAGES = 10**9  # an explicit num_chunks keeps the client on REST (no-filter searches go to S3)
Progress = Callable[[str, int, int], None]


class _Secret:
    """Holds the key; its repr is opaque, so tracebacks that print arguments don't show it."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


class _CappedRetry(Retry):
    """urllib3 Retry whose Retry-After waits are capped at ``backoff_max``: the budget stays bounded."""

    def get_retry_after(self, response):  # type: ignore[override]
        value = super().get_retry_after(response)
        return None if value is None else min(value, self.backoff_max)


class _TimeoutAdapter(HTTPAdapter):
    """Applies one timeout to every request (mp-api passes its own fixed 20 s otherwise)."""

    def __init__(self, timeout: float, **kwargs: Any) -> None:
        self._timeout = timeout
        super().__init__(**kwargs)

    def send(self, request, *args, **kwargs):  # type: ignore[override]
        kwargs["timeout"] = self._timeout
        return super().send(request, *args, **kwargs)


def resolve_api_key(api_key: Any = None) -> str:
    """The key from the argument (str or a SecretStr-like), else ``$MP_API_KEY``; shape-checked."""
    if hasattr(api_key, "get_secret_value"):
        api_key = api_key.get_secret_value()
    key = (api_key if api_key is not None else os.environ.get("MP_API_KEY", "")) or ""
    key = str(key).strip()
    if not key:
        raise MPIngestError("no Materials Project API key: pass api_key=... or set MP_API_KEY "
                            "(keys come from https://next-gen.materialsproject.org/api)")
    if len(key) != 32:
        raise MPIngestError(f"the Materials Project API key is malformed: it has {len(key)} characters, "
                            "valid keys have 32")
    return key


def build_session(cfg: MPConfig, api_key: str) -> requests.Session:
    """A session with the key header, bounded exponential-backoff retries and a per-request timeout."""
    retry = _CappedRetry(
        total=cfg.max_retries, connect=cfg.max_retries, read=cfg.max_retries, status=cfg.max_retries,
        other=0, allowed_methods=frozenset({"GET"}), status_forcelist=RETRY_STATUSES,
        backoff_factor=cfg.backoff_base, backoff_max=cfg.backoff_max, respect_retry_after_header=True,
        raise_on_status=True,
    )
    session = requests.Session()
    session.headers.update({"x-api-key": api_key, "user-agent": _user_agent()})
    adapter = _TimeoutAdapter(cfg.timeout, max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _user_agent() -> str:
    parts = []
    for name in ("metalearn", "mp-api"):
        try:
            parts.append(f"{name}/{importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(name)
    return " ".join(parts)


def _public_url(url: str) -> str:
    """The endpoint without user-info or query string: safe to write into a manifest."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _scrub(text: str, key: _Secret) -> str:
    return text.replace(key.value, "***") if key.value else text


def _explain(exc: BaseException, stage: str, cfg: MPConfig) -> tuple[str, bool]:
    """(a specific, human-readable cause, whether it is transient) for a failure of the HTTP layer or client.

    mp-api re-raises most transport failures as ``MPRestError`` text, so the status code and the
    urllib3 cause are read from the message where the exception type is gone.
    """
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MPIngestError):
        return str(exc), exc.transient
    if isinstance(exc, requests.exceptions.RetryError) or (match := re.search(r"too many (\d+) error", text)):
        code = match.group(1) if match else "429/5xx"
        return (f"{stage}: HTTP {code} persisted after {cfg.max_retries} retries with exponential backoff "
                f"(retry budget exhausted): {text}"), True
    if match := re.search(r"status code (401|403)", text):
        return f"{stage}: the Materials Project API rejected the API key (HTTP {match.group(1)}): {text}", False
    if match := re.search(r"status code (\d{3})", text):
        code = int(match.group(1))
        return f"{stage}: the API answered HTTP {code}: {text}", code == 429 or code >= 500
    if isinstance(exc, JSONDecodeError):
        if exc.pos >= len(exc.doc):  # the body ends mid-document (or is empty): cut off in transit
            return f"{stage}: truncated response page (truncated JSON, the body ends mid-document): {text}", True
        return f"{stage}: malformed response page (invalid JSON): {text}", False
    if any(s in text for s in ("IncompleteRead", "ChunkedEncodingError", "Connection broken", "ProtocolError")):
        return f"{stage}: truncated response page (the connection closed mid-body): {text}", True
    if isinstance(exc, (KeyError, TypeError, AttributeError)):
        return f"{stage}: malformed response page (unexpected shape): {text}", False
    if isinstance(exc, requests.exceptions.Timeout) or re.search(r"timed out|timeout", text, re.IGNORECASE):
        return f"{stage}: request timed out (limit {cfg.timeout} s per request): {text}", True
    if "Max retries exceeded" in text or isinstance(exc, (requests.exceptions.ConnectionError, ConnectionError)):
        return f"{stage}: cannot reach the API after {cfg.max_retries} retries: {text}", True
    return f"{stage}: {text}", False


def _guarded(stage: str, cfg: MPConfig, key: _Secret, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn``; on failure raise MPIngestError with a scrubbed message and *no* chained exception."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 -- every failure becomes one specific, key-free error below
        message, transient = _explain(exc, stage, cfg)
        message = _scrub(message, key)
    raise MPIngestError(message, transient=transient)  # outside the handler: no __context__ that could hold the key


def fetch_heartbeat(session: requests.Session, endpoint: str) -> dict[str, Any]:
    """``GET <endpoint>heartbeat`` -> {"db_version": ..., "version": ...} (raises on anything else)."""
    response = session.get(endpoint + "heartbeat")
    if response.status_code != 200:
        code = response.status_code
        raise MPIngestError(f"heartbeat: {endpoint}heartbeat answered HTTP {code}",
                            transient=code == 429 or code >= 500)
    body = response.json()
    if not isinstance(body, dict) or not isinstance(body.get("db_version"), str):
        raise MPIngestError(f"heartbeat: malformed heartbeat response (no db_version): {str(body)[:200]}")
    return body


def _open_summary(session: requests.Session, endpoint: str, key: _Secret, cache_dir: Path) -> Any:
    """The real client's ``materials.summary`` rester, on our session, returning plain dicts."""
    from mp_api.client import MPRester  # deferred: importing mp-api takes seconds; only an MP ingest needs it

    client = MPRester(api_key=key.value, endpoint=endpoint, session=session, use_document_model=False,
                      mute_progress_bars=True, local_dataset_cache=cache_dir)
    summary = client.materials.summary
    summary.available_fields  # noqa: B018 -- instantiates the lazy rester here, inside the error guard
    return summary


def _listing(summary: Any, cfg: MPConfig) -> pd.DataFrame:
    docs = summary.search(**dict(cfg.criteria), fields=list(LISTING_FIELDS), chunk_size=cfg.chunk_size,
                          num_chunks=_ALL_PAGES)
    rows = []
    for doc in docs:
        if not isinstance(doc, dict) or not isinstance(doc.get(MATERIAL_ID), str):
            raise MPIngestError(f"listing: malformed document without a material_id: {str(doc)[:200]}")
        rows.append({MATERIAL_ID: doc[MATERIAL_ID], LAST_UPDATED: parse_last_updated(doc.get(LAST_UPDATED))})
    frame = pd.DataFrame(rows, columns=[MATERIAL_ID, LAST_UPDATED])
    duplicated = frame[MATERIAL_ID][frame[MATERIAL_ID].duplicated()].tolist()
    if duplicated:
        raise MPIngestError(f"listing: material ids listed more than once: {duplicated[:5]}")
    return frame


def _fetch(summary: Any, ids: list[str], cfg: MPConfig, on_progress: Progress | None) -> pd.DataFrame:
    docs: list[dict] = []
    for start in range(0, len(ids), cfg.id_batch_size):
        batch = ids[start:start + cfg.id_batch_size]
        got = summary.search(material_ids=batch, fields=list(SUMMARY_FIELDS), chunk_size=cfg.chunk_size)
        returned = {d.get(MATERIAL_ID) for d in got if isinstance(d, dict)}
        missing, extra = set(batch) - returned, returned - set(batch)
        if missing or extra or len(got) != len(batch):
            raise MPIngestError(f"fetch: asked for {len(batch)} documents, got {len(got)} (missing "
                                f"{sorted(missing)[:5]}, unexpected {sorted(map(str, extra))[:5]})")
        docs.extend(got)
        if on_progress:
            on_progress("fetch", len(docs), len(ids))
    return summary_frame(docs)


def _previous(work: WorkDir, query: dict, full_refresh: bool) -> tuple[Path | None, pd.DataFrame | None]:
    """The latest intact snapshot and its summary table, if it answered the same endpoint and criteria.

    A corrupt latest snapshot is moved aside (see ``latest_verified_snapshot``): the run then
    fetches in full, or from the newest intact snapshot before it.
    """
    path = latest_verified_snapshot(work, SOURCE)
    if path is None or full_refresh or not (path / "summary.parquet").exists():
        return path, None
    old = io.read_manifest(path).query
    if old.get("endpoint") != query["endpoint"] or old.get("criteria") != query["criteria"]:
        return path, None
    return path, normalise_summary(read_table(path, "summary"))


def _changed(listing: pd.DataFrame, previous: pd.DataFrame | None) -> tuple[list[str], set[str]]:
    """(ids to fetch, ids to drop): new ids, ids with a newer or unknown last_updated; ids gone."""
    if previous is None:
        return sorted(listing[MATERIAL_ID]), set()
    before = dict(zip(previous[MATERIAL_ID], previous[LAST_UPDATED]))
    fetch = []
    for material_id, stamp in zip(listing[MATERIAL_ID], listing[LAST_UPDATED]):
        old = before.get(material_id, "missing")
        if old == "missing" or old is None or stamp is None or pd.Timestamp(stamp) > pd.Timestamp(old):
            fetch.append(material_id)
    return sorted(fetch), set(before) - set(listing[MATERIAL_ID])


def ingest_mp(work: WorkDir, cfg: MPConfig, api_key: Any = None,
              on_progress: Progress | None = None) -> SnapshotResult:
    """Fetch the MP summary for ``cfg.criteria`` (only what changed) and write an ``mp`` raw snapshot.

    Args:
        work: the work directory (snapshots go to ``work.raw("mp")/<id>/``, mp-api's dataset cache
            to ``work.mp_cache()``).
        cfg: endpoint, criteria, paging and retry settings.
        api_key: the MP key (str or SecretStr-like); None -> ``$MP_API_KEY``. Never stored or logged.
        on_progress: called as ``on_progress(stage, done, total)`` with stage "list", "fetch", "write".
    Returns:
        SnapshotResult; ``created=False`` (and the previous path) when nothing changed.
    Raises:
        MPIngestError: missing/invalid key, retry budget exhausted, malformed or truncated page,
            no matches; ``.transient`` says whether retrying later may help.

    Example:
        >>> ingest_mp(WorkDir.resolve("work"), MPConfig(criteria={"elements": ["Si", "O"]}))  # doctest: +SKIP
    """
    key = _Secret(resolve_api_key(api_key))
    endpoint = cfg.resolved_endpoint()
    query = {"endpoint": _public_url(endpoint), "criteria": cfg.criteria_json(), "fields": list(SUMMARY_FIELDS),
             "listing_fields": list(LISTING_FIELDS), "chunk_size": cfg.chunk_size}
    previous_path, previous = _previous(work, query, cfg.full_refresh)

    session = build_session(cfg, key.value)
    try:
        beat = _guarded("heartbeat", cfg, key, fetch_heartbeat, session, endpoint)
        summary = _guarded("client setup", cfg, key, _open_summary, session, endpoint, key,
                           work.mp_cache())
        listing = _guarded("listing", cfg, key, _listing, summary, cfg)
        if on_progress:
            on_progress("list", len(listing), len(listing))
        to_fetch, removed = _changed(listing, previous)
        logger.info("MP ingest: %d listed, %d to fetch, %d removed (db_version %s)",
                    len(listing), len(to_fetch), len(removed), beat["db_version"])
        unchanged = previous is not None and previous_path is not None and not to_fetch and not removed
        manifest = io.read_manifest(previous_path) if unchanged else None
        if manifest is not None and manifest.extra.get(VALIDATION_KEY) == VALIDATION_VERSION:
            return SnapshotResult(previous_path, manifest, created=False,
                                  n_quarantined=int(manifest.counts.get("quarantined", 0)))
        fresh = _guarded("fetch", cfg, key, _fetch, summary, to_fetch, cfg, on_progress)
    finally:
        session.close()

    parts = [fresh]
    if previous is not None:
        parts.insert(0, previous[~previous[MATERIAL_ID].isin(set(to_fetch) | removed)])
    merged = normalise_summary(pd.concat([p for p in parts if len(p)], ignore_index=True)
                               if any(len(p) for p in parts) else fresh)
    if merged.empty:
        raise MPIngestError(f"the criteria {query['criteria']} matched no materials at {query['endpoint']}")
    records, properties = to_records(merged)
    records, quarantine = quarantine_nonpositive_log(records, properties)
    if on_progress:
        on_progress("write", 0, len(records))
    stamps = merged[LAST_UPDATED].dropna()
    extra = {
        "db_version": beat["db_version"], "server_version": beat.get("version"),
        "max_last_updated": max(stamps, key=pd.Timestamp) if len(stamps) else None,
        "mode": "incremental" if previous is not None else "full",
        "n_listed": len(listing), "n_fetched": len(to_fetch), "n_removed": len(removed),
        "n_reused": len(merged) - len(fresh),
        "previous_snapshot": previous_path.name if previous is not None and previous_path else None,
    }
    result = write_snapshot(work, SOURCE, records, properties, quarantine=quarantine, query=query,
                            versions={"mp_api_server": str(beat.get("version") or "unknown")},
                            database_version=beat["db_version"], extra=extra, tables={"summary": merged})
    if on_progress:
        on_progress("write", len(records), len(records))
    logger.info("MP ingest: %s", result.summary())
    return result
