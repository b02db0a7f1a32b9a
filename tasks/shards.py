"""Prefect task for the shards stage: cut the featurized snapshot into few-shot tasks and splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from metalearn import schema as S
from metalearn.layout import WorkDir
from metalearn.shards.define import ShardConfig
from metalearn.shards.stage import build_shards
from metalearn.shards.store import read_index
from tasks._common import artifact_key, markdown_table, stamp

INDEX_COLUMNS = [S.TASK_ID, S.SPLIT, S.N_ROWS, S.PROPERTY_KEY, S.GROUP, S.TASK_TYPE, S.FAMILY]


# No Prefect cache: the library's no-op path verifies the existing shards against their manifest
# (a cached result would keep serving a corrupted directory) and costs a fraction of a second.
@task(name="build-shards", cache_policy=NO_CACHE)
def build_task_shards(snapshot_dir: str, features_dir: str, workdir: str,
                      shard_cfg: ShardConfig) -> dict[str, Any]:
    """Build (or find) the task shards of one snapshot + feature set + config.

    Returns:
        {"path", "content_hash", "created", "counts", "summary"}.
    """
    result = build_shards(Path(snapshot_dir), Path(features_dir), WorkDir.resolve(workdir), shard_cfg)
    get_run_logger().info(result.summary())
    out = {"path": str(result.path), "content_hash": result.manifest.content_hash,
           "created": result.created, "counts": result.manifest.counts, "summary": result.summary()}
    publish_shards(out)
    return stamp(out)


def publish_shards(result: dict[str, Any]) -> None:
    """The shards and tasks-index artifacts (also republished for a cached result)."""
    path, counts = Path(result["path"]), result["counts"]
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
    rows = index[columns].astype({S.N_ROWS: int}).to_dict("records")
    create_table_artifact(table=rows, key=artifact_key("tasks-index"), description="one row per task")
