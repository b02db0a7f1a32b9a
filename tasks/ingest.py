"""Prefect tasks for the ingest stage: choose the source, resolve the MP key, pull a raw snapshot.

The Materials Project key is resolved here (``MP_API_KEY``, else a Prefect Secret block) and handed
straight to the library. It is never a task parameter or return value, so it never lands in
Prefect's recorded task inputs, cache keys, logs or artifacts.

Why no cache policy: ingest *is* the check for new data. The library makes an unchanged re-ingest
cheap (a fingerprint for the bundled data, an incremental listing for MP) and returns the existing
snapshot, whose content hash then keys every downstream task.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import requests
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from metalearn.ingest.mp import MPIngestError
from metalearn.ingest.snapshot import combine_snapshots
from metalearn.ingest.stage import IngestConfig, ingest
from metalearn.layout import WorkDir
from tasks._common import artifact_key, markdown_table


def resolve_mp_key(secret_block: str | None) -> str | None:
    """The MP key from ``$MP_API_KEY``, else the Prefect Secret block ``secret_block``, else None."""
    key = os.environ.get("MP_API_KEY")
    if key:
        return key
    if not secret_block:
        return None
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(secret_block).get())
    except ValueError:  # "Unable to find block document named ...": no key configured
        return None


def is_transient(task_obj: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry network trouble, not bad keys, bad configs or bad data.

    The library already retried each request; a Prefect retry waits minutes, for an outage rather
    than a blip. :class:`MPIngestError` says itself whether its cause is transient.
    """
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001  the failure could not be read back: be conservative, retry
        return True
    if isinstance(exc, (ConnectionError, TimeoutError, requests.exceptions.RequestException)):
        return True
    return isinstance(exc, MPIngestError) and exc.transient


@task(name="choose-source", cache_policy=NO_CACHE)
def choose_source(source: str, mp_secret_block: str | None) -> str:
    """"auto" -> "mp" when an MP key is configured, else "bundled"; explicit choices pass through."""
    if source != "auto":
        if source == "mp" and not resolve_mp_key(mp_secret_block):
            raise ValueError(f"source='mp' needs a key: set MP_API_KEY or create the Prefect Secret block "
                             f"{mp_secret_block!r}")
        return source
    chosen = "mp" if resolve_mp_key(mp_secret_block) else "bundled"
    get_run_logger().info("source=auto -> %s", chosen)
    return chosen


@task(name="ingest", task_run_name="ingest-{source}", cache_policy=NO_CACHE,
      retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=30), retry_jitter_factor=0.5,
      retry_condition_fn=is_transient)
def ingest_snapshot(workdir: str, source: str, ingest_cfg: IngestConfig,
                    mp_secret_block: str | None = None) -> dict[str, Any]:
    """Pull ``source`` into ``<workdir>/raw/<source>/<snapshot_id>/`` (or find it unchanged).

    Returns:
        {"path", "source", "content_hash", "created", "n_rows", "n_quarantined", "summary"}.
    """
    cfg = dataclasses.replace(ingest_cfg, source=source)
    logger = get_run_logger()
    api_key = resolve_mp_key(mp_secret_block) if source == "mp" else None

    def on_progress(*args: Any) -> None:  # bundled: (done, total); MP: (stage, done, total)
        if args and args[-1] and args[-2] == args[-1]:
            logger.info("ingest %s: %s", source, " ".join(map(str, args)))

    result = ingest(WorkDir.resolve(workdir), cfg, api_key=api_key, on_progress=on_progress)
    del api_key
    manifest = result.manifest
    logger.info(result.summary())
    _ingest_artifact(source, result.path, manifest, result.created, result.n_quarantined)
    return {"path": str(result.path), "source": source, "content_hash": manifest.content_hash,
            "created": result.created, "n_rows": manifest.n_rows, "n_quarantined": result.n_quarantined,
            "summary": result.summary()}


def _ingest_artifact(source: str, path: Path, manifest: Any, created: bool, n_quarantined: int) -> None:
    counts = manifest.counts
    reasons = counts.get("quarantine_reasons") or {}
    per_dataset = counts.get("per_dataset") or {}
    text = (
        f"# Ingest: {source}\n\n"
        f"- snapshot: `{path.name}` ({'new' if created else 'unchanged, nothing written'})\n"
        f"- records: **{manifest.n_rows}**, datasets: {counts.get('datasets', len(per_dataset))}, "
        f"quarantined: **{n_quarantined}**\n"
        f"- content hash: `{manifest.content_hash[:16]}`\n"
        f"- database version: {manifest.database_version or 'n/a'}\n\n"
        "## Quarantine reasons\n\n"
        + markdown_table([{"reason": r, "rows": n} for r, n in sorted(reasons.items())], ["reason", "rows"])
        + "\n## Records per dataset\n\n"
        + markdown_table([{"dataset_id": d, "records": n} for d, n in sorted(per_dataset.items())],
                         ["dataset_id", "records"])
    )
    create_markdown_artifact(markdown=text, key=artifact_key("ingest", source),
                             description=f"{source} snapshot counts and quarantine reasons")


@task(name="combine-snapshots", cache_policy=NO_CACHE)
def combine(workdir: str, snapshot_dirs: list[str]) -> dict[str, Any]:
    """One snapshot of every ingested source (e.g. bundled + Open Catalyst) for features and shards."""
    result = combine_snapshots(WorkDir.resolve(workdir), [Path(p) for p in snapshot_dirs])
    get_run_logger().info(result.summary())
    return {"path": str(result.path), "source": "combined", "content_hash": result.manifest.content_hash,
            "created": result.created, "n_rows": result.manifest.n_rows, "n_quarantined": result.n_quarantined,
            "summary": result.summary(), "inputs": list(snapshot_dirs)}
