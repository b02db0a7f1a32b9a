"""Prefect task for the k-shot evaluation of the trained learners against the baselines."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from metalearn import io
from metalearn.evaluate.stage import evaluate_learners
from tasks._common import ProgressArtifact, artifact_key, content_of, manifest_cache_key

_HEADLINE = re.compile(r"^(?P<setting>[^.]+)\.(?P<learner>.+)\.k(?P<k>\d+)\.(?P<metric>.+)_(?P<stat>mean|median)$")


def evaluation_dir(workdir: str | Path, shards_dir: str | Path, checkpoints: dict[str, str],
                   eval_cfg: dict[str, Any]) -> Path:
    """``<workdir>/evaluations/<shards hash>/<hash of learners' contents + config>``: the result's cache key."""
    key = io.hash_json({"checkpoints": content_of(checkpoints), "config": eval_cfg})[:12]
    return Path(workdir) / "evaluations" / io.read_manifest(Path(shards_dir)).content_hash[:12] / key


@task(name="evaluate", cache_key_fn=manifest_cache_key("shards_dir", "checkpoints"), persist_result=True)
def evaluate(shards_dir: str, checkpoints: dict[str, str], eval_cfg: dict[str, Any],
             workdir: str) -> dict[str, Any]:
    """k-shot protocol on both meta-test settings for ``checkpoints`` (name -> learner.pt) plus baselines.

    Returns:
        evaluate_learners' dict ({"scores_csv", "summary_md", "plot_png", "headline", "cached"}) plus
        "path" (the output directory) and "table" (headline rows).
    """
    out_dir = evaluation_dir(workdir, shards_dir, checkpoints, eval_cfg)
    progress = ProgressArtifact(artifact_key("evaluate-progress"), "evaluation episodes scored")
    result = evaluate_learners(Path(shards_dir), checkpoints, eval_cfg, out_dir,
                               on_progress=lambda done, total: progress.update(done, total))
    progress.done()
    table = headline_rows(result["headline"])
    get_run_logger().info("evaluation: %d headline rows -> %s", len(table), out_dir)
    summary_md = Path(result["summary_md"])
    create_markdown_artifact(
        markdown=f"# k-shot evaluation\n\nlearners: {', '.join(sorted(checkpoints))}; "
                 f"outputs in `{out_dir}`\n\n" + (summary_md.read_text() if summary_md.exists() else ""),
        key=artifact_key("evaluation"), description="per setting, learner and k: mean/median with CIs and "
                                                    "paired win rates vs baselines")
    create_table_artifact(table=table, key=artifact_key("evaluation-table"),
                          description="median over meta-test tasks, per setting, k, metric and learner")
    return {**result, "path": str(out_dir), "table": table}


def headline_rows(headline: dict[str, float]) -> list[dict[str, Any]]:
    """``<setting>.<learner>.k<k>.<metric>_<stat>`` keys -> rows {setting, k, metric, learner, mean, median}."""
    rows: dict[tuple, dict[str, Any]] = {}
    for key, value in headline.items():
        match = _HEADLINE.match(key)
        if not match:
            continue
        ident = (match["setting"], int(match["k"]), match["metric"], match["learner"])
        row = rows.setdefault(ident, dict(zip(("setting", "k", "metric", "learner"), ident)))
        row[match["stat"]] = round(float(value), 6)
    return [rows[k] for k in sorted(rows)]
