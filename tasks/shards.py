"""Prefect task for the shards stage: cut the featurized snapshot into few-shot tasks and splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from metalearn.config import from_dict
from metalearn.shards.define import ShardConfig, build_shards
from tasks._common import artifact_key, manifest_cache_key, markdown_table

INDEX_COLUMNS = ["task_id", "split", "n_rows", "property_key", "group", "task_type", "family"]


@task(name="build-shards", cache_key_fn=manifest_cache_key("snapshot_dir", "features_dir"),
      persist_result=True)
def build_task_shards(snapshot_dir: str, features_dir: str, workdir: str,
                      shard_cfg: dict[str, Any]) -> dict[str, Any]:
    """Build (or find) the task shards of one snapshot + feature set + config.

    Returns:
        {"path", "content_hash", "created", "counts", "summary"}.
    """
    cfg = from_dict(ShardConfig, shard_cfg)
    result = build_shards(Path(snapshot_dir), Path(features_dir), Path(workdir), cfg)
    get_run_logger().info(result.summary())
    _shards_artifacts(result.path, result.manifest)
    return {"path": str(result.path), "content_hash": result.manifest.content_hash,
            "created": result.created, "counts": result.manifest.counts, "summary": result.summary()}


def _shards_artifacts(path: Path, manifest: Any) -> None:
    from metalearn.shards.store import read_index

    counts = manifest.counts
    splits = counts.get("tasks_per_split") or {}
    reasons = counts.get("excluded_reasons") or {}
    text = (
        "# Task shards\n\n"
        f"- tasks: **{counts.get('tasks', 0)}**, rows: **{counts.get('rows', 0)}**, "
        f"properties: {counts.get('properties', 'n/a')}, families: {counts.get('families', 0)}, "
        f"chemistry groups: {counts.get('groups', 0)}\n"
        f"- task types: {counts.get('task_types', {})}\n"
        f"- shards: `{path}`\n\n## Tasks per split\n\n"
        + markdown_table([{"split": s, "tasks": n} for s, n in splits.items()], ["split", "tasks"])
        + f"\n## Records excluded ({counts.get('excluded', 0)})\n\n"
        + markdown_table([{"reason": r, "records": n} for r, n in sorted(reasons.items())], ["reason", "records"])
    )
    create_markdown_artifact(markdown=text, key=artifact_key("shards"), description="task and split counts")
    index = read_index(path)
    columns = [c for c in INDEX_COLUMNS if c in index.columns]
    rows = index[columns].astype({"n_rows": int}).to_dict("records")
    create_table_artifact(table=rows, key=artifact_key("tasks-index"), description="one row per task")
