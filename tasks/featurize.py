"""Prefect tasks for the features stage: plan, featurize one chunk (fanned out with ``.map``), assemble.

The plan is the check: when the snapshot's features already exist it says ``done`` and nothing
else runs, and it lists only materials missing from the feature cache, so a resumed flow redoes no
finished chunk. Assembling is keyed by the snapshot's content hash.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from metalearn import io
from metalearn.features.assemble import assemble_features
from metalearn.features.plan import FeaturePlan, FeaturizeConfig, featurize_chunk, plan_features
from metalearn.layout import WorkDir
from tasks._common import artifact_key, markdown_table, stamp


@task(name="plan-features", cache_policy=NO_CACHE)
def plan(snapshot_dir: str, workdir: str, featurize_cfg: FeaturizeConfig) -> dict[str, Any]:
    """Which materials of the snapshot still need features, as chunk files; JSON-able."""
    result = plan_features(Path(snapshot_dir), WorkDir.resolve(workdir), featurize_cfg)
    get_run_logger().info(
        "features: %s", "already built" if result.done else
        f"{result.n_materials} materials, {result.n_cached} cached, {result.n_pending} pending "
        f"in {len(result.chunks)} chunks")
    return asdict(result)


@task(name="featurize-chunk", cache_policy=NO_CACHE, retries=1)
def chunk(chunk_path: str, cache_dir: str) -> str:
    """Featurize one chunk into one cache shard (pure, idempotent); returns the shard path.

    No Prefect cache: the library already returns a finished shard at once, and only the shard on
    disk can say it still exists (a cached result could name a shard deleted since).
    """
    return str(featurize_chunk(Path(chunk_path), Path(cache_dir)))


# No Prefect cache: the library returns an existing output at once after checking it against its
# manifest, and only that check can see a corrupted output (a cached result would hide the repair).
@task(name="assemble-features", cache_policy=NO_CACHE)
def assemble(feature_plan: dict[str, Any]) -> dict[str, Any]:
    """Join the cache shards into the snapshot's features directory (a no-op when it exists).

    Returns:
        {"path", "content_hash", "counts", "n_feature_columns"}.
    """
    feature_plan = {**feature_plan}
    out = Path(feature_plan["output_dir"])
    if not feature_plan.get("done"):
        out = assemble_features(FeaturePlan(**feature_plan))
    manifest = io.read_manifest(out)
    counts = manifest.counts
    get_run_logger().info("features: %s -> %s", counts, out)
    result = {"path": str(out), "content_hash": manifest.content_hash, "counts": counts,
              "n_feature_columns": counts.get("n_feature_columns"),
              "plan": {k: feature_plan.get(k) for k in ("snapshot_dir", "n_pending", "n_cached")}}
    publish_features(result)
    return stamp(result)


def publish_features(result: dict[str, Any]) -> None:
    """The features artifact (also republished when a later run is served this result from the cache)."""
    out, counts, feature_plan = Path(result["path"]), result["counts"], result["plan"]
    scalar = [{"count": k, "value": v} for k, v in sorted(counts.items()) if not isinstance(v, dict)]
    nested = {k: v for k, v in counts.items() if isinstance(v, dict)}
    text = (f"# Features\n\n- features: `{out}`\n- snapshot: `{Path(feature_plan['snapshot_dir']).name}`\n"
            f"- this run: {feature_plan.get('n_pending', 0)} materials featurized, "
            f"{feature_plan.get('n_cached', 0)} from the cache\n\n"
            + markdown_table(scalar, ["count", "value"]))
    for name, table in nested.items():
        text += f"\n## {name}\n\n" + markdown_table([{"key": k, "value": v} for k, v in sorted(table.items())],
                                                    ["key", "value"])
    create_markdown_artifact(markdown=text, key=artifact_key("features"),
                             description="materials featurized, cached and failed (with reasons)")
