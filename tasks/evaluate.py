"""Prefect task for the k-shot evaluation of the trained learners against the baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from metalearn.evaluate.protocol import EvalConfig
from metalearn.evaluate.stage import evaluate_learners
from metalearn.layout import WorkDir
from tasks._common import ProgressArtifact, artifact_key, manifest_cache_key, stamp

TABLE_COLUMNS = ("setting", "n_support", "metric", "learner", "n_tasks", "mean", "median", "median_lo", "median_hi")


@task(name="evaluate", cache_key_fn=manifest_cache_key("shards_dir", "checkpoints", "vectors_dir"),
      persist_result=True)
def evaluate(workdir: str, shards_dir: str, checkpoints: dict[str, str], eval_cfg: EvalConfig,
             vectors_dir: str | None = None) -> dict[str, Any]:
    """k-shot protocol on both meta-test settings for ``checkpoints`` (name -> learner.pt) plus baselines.

    Returns:
        evaluate_learners' dict ({"scores_csv", "summary_md", "plot_png", "summary", "out_dir",
        "cached"}) plus "path" (the output directory) and "table" (the artifact's rows).
    """
    progress = ProgressArtifact(artifact_key("evaluate-progress"), "evaluation episodes scored")
    result = evaluate_learners(WorkDir.resolve(workdir), Path(shards_dir), checkpoints, eval_cfg,
                               on_progress=lambda done, total: progress.update(done, total),
                               vectors_dir=Path(vectors_dir) if vectors_dir else None)
    progress.done()
    table = summary_table(result["summary"])
    out_dir = result["out_dir"]
    get_run_logger().info("evaluation: %d summary rows -> %s", len(table), out_dir)
    result = {**result, "path": out_dir, "table": table, "learners": sorted(checkpoints)}
    publish_evaluation(result)
    return stamp(result)


def summary_table(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Summary rows trimmed to the artifact's columns (``k`` shown as ``n_support``), values rounded."""
    rows = []
    for row in summary:
        out = {"n_support" if k == "k" else k: v for k, v in row.items()}
        rows.append({c: (round(out[c], 6) if isinstance(out.get(c), float) else out.get(c)) for c in TABLE_COLUMNS})
    return sorted(rows, key=lambda r: (r["setting"], r["n_support"], r["metric"], r["learner"]))


def publish_evaluation(result: dict[str, Any]) -> None:
    """The evaluation's Markdown and table artifacts (also republished for a cached evaluation)."""
    summary_md = Path(result["summary_md"])
    create_markdown_artifact(
        markdown=f"learners: {', '.join(result['learners'])}; outputs in `{result['out_dir']}`\n\n"
                 + (summary_md.read_text() if summary_md.exists() else ""),
        key=artifact_key("evaluation"), description="per setting, learner and n_support: mean/median with CIs "
                                                    "and paired win rates vs baselines")
    create_table_artifact(table=summary_table(result["summary"]), key=artifact_key("evaluation-table"),
                          description="median over meta-test tasks, per setting, n_support, metric and learner")
