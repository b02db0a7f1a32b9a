"""Prefect task for meta-training one learner, with a live progress artifact.

Why no ``.submit`` in parallel for two learners: the training loop seeds torch's *global* RNG, so two
trainings in threads of one process would interleave their random streams. The flow runs them one
after the other; on a GPU work pool each gets the device to itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from metalearn.layout import WorkDir
from metalearn.learn.stage import LearnerConfig, train_learner
from tasks._common import ProgressArtifact, artifact_key, manifest_cache_key


@task(name="meta-train", task_run_name="meta-train-{learner}",
      cache_key_fn=manifest_cache_key("shards_dir", "vectors_dir"), persist_result=True)
def meta_train(workdir: str, shards_dir: str, learner: str, learner_cfg: LearnerConfig,
               vectors_dir: str | None = None) -> dict[str, Any]:
    """Meta-train ``learner`` on the shards' meta-train tasks (skipped when already trained).

    Returns:
        train_learner's dict ({"checkpoint", "history", "metrics", "cached", ...}) plus "path"
        (the checkpoint).
    """
    logger = get_run_logger()
    max_steps = learner_cfg.loop.max_steps
    progress = ProgressArtifact(artifact_key("train", learner), f"{learner}: outer-loop steps done of {max_steps}")
    last: dict[str, Any] = {}

    def on_step(step: int, logs: dict[str, float]) -> None:
        last.update(logs)
        progress.update(step, max_steps)
        if "val_loss" in logs:
            logger.info("%s step %d: %s", learner, step,
                        ", ".join(f"{k}={v:.4g}" for k, v in logs.items() if isinstance(v, (int, float))))

    result = train_learner(WorkDir.resolve(workdir), Path(shards_dir), learner, learner_cfg, on_step=on_step,
                           vectors_dir=Path(vectors_dir) if vectors_dir else None)
    progress.done()
    metrics = result.get("metrics", {})
    logger.info("%s: %s (%s)", learner, metrics, "found finished run" if result.get("cached") else "trained")
    return {**result, "path": result["checkpoint"]}
