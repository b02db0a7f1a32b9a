"""``metalearn featurize | shards | train | evaluate``: one stage at a time, straight through the library.

No Prefect here (fast to start, nothing to serve): the same library calls the tasks make, with
tqdm progress bars on stderr. Stage settings come from the run profile (metalearn.pipeline.PROFILES)
and are validated once, by :func:`metalearn.pipeline.resolve_stages`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from flows.progress import progress_bar
from metalearn import io
from metalearn.evaluate.stage import evaluate_learners
from metalearn.features.stage import build_features
from metalearn.ingest.snapshot import latest_snapshot
from metalearn.layout import WorkDir
from metalearn.learn.stage import RESULT, train_learner
from metalearn.pipeline import RunConfig, Stages, learner_config, resolve_stages
from metalearn.shards.stage import build_shards
from metalearn.shards.store import latest_shards, read_index


def _stages(args: argparse.Namespace) -> Stages:
    """The profile's stage configs, validated the way a flow run validates them."""
    return resolve_stages(RunConfig.from_params({"profile": args.profile}))


def find_snapshot(work: WorkDir, snapshot_id: str | None, source: str) -> Path:
    """The snapshot ``snapshot_id`` (any source), else the newest snapshot of ``source``."""
    if snapshot_id:
        found = [p for p in work.raw_root().glob(f"*/{snapshot_id}") if (p / io.MANIFEST).exists()]
        if not found:
            raise FileNotFoundError(f"no complete snapshot {snapshot_id!r} under {work.raw_root()}")
        return found[0]
    latest = latest_snapshot(work, source)
    if latest is None:
        raise FileNotFoundError(f"no {source} snapshot under {work.raw_root()}; run `metalearn ingest` first")
    return latest


def featurize(args: argparse.Namespace) -> Path:
    work = WorkDir.resolve(args.workdir)
    snapshot = find_snapshot(work, args.snapshot, args.source)
    return build_features(snapshot, work, _stages(args).featurize, on_progress=progress_bar("featurize"))


def shards(args: argparse.Namespace) -> int:
    features = featurize(args)
    work = WorkDir.resolve(args.workdir)
    snapshot = find_snapshot(work, args.snapshot, args.source)
    result = build_shards(snapshot, features, work, _stages(args).shards)
    counts = result.manifest.counts
    print(result.summary())
    print("tasks per split: " + ", ".join(f"{k} {v}" for k, v in counts.get("tasks_per_split", {}).items()))
    print(f"rows: {counts.get('rows')}  properties: {counts.get('properties')}  families: "
          f"{counts.get('families')}  groups: {counts.get('groups')}  excluded: {counts.get('excluded')}")
    if args.list:
        index = read_index(result.path)
        columns = [c for c in ("task_id", "split", "n_rows", "property_key", "unit", "group", "task_type")
                   if c in index.columns]
        with pd.option_context("display.max_rows", None, "display.width", 200):
            print(index[columns].to_string(index=False))
    return 0


def _shards_dir(args: argparse.Namespace) -> Path:
    if args.shards:
        return Path(args.shards)
    found = latest_shards(WorkDir.resolve(args.workdir))
    if found is None:
        raise FileNotFoundError("no task shards in the work directory; run `metalearn shards` first")
    return found


def train(args: argparse.Namespace) -> int:
    overrides = {"train": {"max_steps": args.max_steps}} if args.max_steps else {}
    cfg = learner_config(RunConfig.from_params({"profile": args.profile, **overrides}), args.learner)
    max_steps = cfg.loop.max_steps
    bar = progress_bar(f"train {args.learner}")
    result = train_learner(WorkDir.resolve(args.workdir), _shards_dir(args), args.learner, cfg,
                           on_step=lambda step, logs: bar(step, max_steps) if step < max_steps else None)
    bar(max_steps, max_steps)
    print(json.dumps({k: result[k] for k in ("learner", "checkpoint", "metrics", "stopped", "cached")}, indent=2))
    return 0


def trained_learners(work: WorkDir, shards_dir: Path) -> dict[str, str]:
    """Every learner trained on these shards (the newest per learner): name -> checkpoint."""
    root = work.models(io.read_manifest(shards_dir).content_hash[:12])
    found: dict[str, tuple[float, str]] = {}
    for result in root.glob(f"*/{RESULT}"):
        info = json.loads(result.read_text())
        mtime = result.stat().st_mtime
        if info["learner"] not in found or mtime > found[info["learner"]][0]:
            found[info["learner"]] = (mtime, info["checkpoint"])
    return {name: path for name, (_, path) in sorted(found.items())}


def evaluate(args: argparse.Namespace) -> int:
    work = WorkDir.resolve(args.workdir)
    shards_dir = _shards_dir(args)
    if args.learner:
        pairs = [item.split("=", 1) for item in args.learner]
        bad = [item for item, pair in zip(args.learner, pairs) if len(pair) != 2]
        if bad:
            raise ValueError(f"--learner takes NAME=CHECKPOINT, got {bad}")
        checkpoints = dict(pairs)
    else:
        checkpoints = trained_learners(work, shards_dir)
        if not checkpoints:
            raise FileNotFoundError(f"no trained learner for {shards_dir}; run `metalearn train` first")
    result = evaluate_learners(work, shards_dir, checkpoints, _stages(args).evaluate,
                               on_progress=progress_bar("evaluate"))
    print(Path(result["summary_md"]).read_text())
    print(f"scores: {result['scores_csv']}\nplot: {result['plot_png']}", file=sys.stderr)
    return 0
