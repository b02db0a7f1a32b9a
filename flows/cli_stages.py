"""``metalearn featurize | shards | train | evaluate``: one stage at a time, straight through the library.

No Prefect here (fast to start, nothing to serve): the same library calls the tasks make, with
tqdm progress bars on stderr. Stage settings come from the run profile (metalearn.config.PROFILES).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flows.progress import progress_bar


def _profile(args: argparse.Namespace, stage: str) -> dict[str, Any]:
    from metalearn.pipeline import PROFILES

    return dict(PROFILES[args.profile].get(stage, {}))


def find_snapshot(workdir: Path, snapshot_id: str | None, source: str) -> Path:
    """The snapshot ``snapshot_id`` (any source), else the newest snapshot of ``source``."""
    from metalearn.ingest.snapshot import latest_snapshot

    if snapshot_id:
        found = [p for p in (workdir / "raw").glob(f"*/{snapshot_id}") if (p / "manifest.json").exists()]
        if not found:
            raise FileNotFoundError(f"no complete snapshot {snapshot_id!r} under {workdir / 'raw'}")
        return found[0]
    latest = latest_snapshot(workdir, source)
    if latest is None:
        raise FileNotFoundError(f"no {source} snapshot under {workdir / 'raw'}; run `metalearn ingest` first")
    return latest


def featurize(args: argparse.Namespace) -> Path:
    from metalearn.config import from_dict
    from metalearn.features.plan import FeaturizeConfig, build_features
    from metalearn.io import resolve_workdir

    workdir = resolve_workdir(args.workdir)
    snapshot = find_snapshot(workdir, args.snapshot, args.source)
    cfg = from_dict(FeaturizeConfig, _profile(args, "featurize"))
    return build_features(snapshot, workdir, cfg, on_progress=progress_bar("featurize"))


def shards(args: argparse.Namespace) -> int:
    from metalearn.config import from_dict
    from metalearn.io import resolve_workdir
    from metalearn.shards.define import ShardConfig, build_shards
    from metalearn.shards.store import read_index

    features = featurize(args)
    workdir = resolve_workdir(args.workdir)
    snapshot = find_snapshot(workdir, args.snapshot, args.source)
    result = build_shards(snapshot, features, workdir, from_dict(ShardConfig, _profile(args, "shards")))
    counts = result.manifest.counts
    print(result.summary())
    print("tasks per split: " + ", ".join(f"{k} {v}" for k, v in counts.get("tasks_per_split", {}).items()))
    print(f"rows: {counts.get('rows')}  properties: {counts.get('properties')}  families: "
          f"{counts.get('families')}  groups: {counts.get('groups')}  excluded: {counts.get('excluded')}")
    if args.list:
        import pandas as pd

        index = read_index(result.path)
        columns = [c for c in ("task_id", "split", "n_rows", "property_key", "unit", "group", "task_type")
                   if c in index.columns]
        with pd.option_context("display.max_rows", None, "display.width", 200):
            print(index[columns].to_string(index=False))
    return 0


def _shards_dir(args: argparse.Namespace) -> Path:
    from metalearn.io import resolve_workdir
    from metalearn.shards.store import latest_shards

    if args.shards:
        return Path(args.shards)
    found = latest_shards(resolve_workdir(args.workdir))
    if found is None:
        raise FileNotFoundError("no task shards in the work directory; run `metalearn shards` first")
    return found


def train(args: argparse.Namespace) -> int:
    from metalearn.config import deep_merge
    from metalearn.learn.stage import train_learner

    cfg = _profile(args, "train")
    if args.max_steps:
        cfg = deep_merge(cfg, {"train": {"max_steps": args.max_steps}})
    max_steps = cfg.get("train", {}).get("max_steps", 2000)
    bar = progress_bar(f"train {args.algorithm}")
    result = train_learner(_shards_dir(args), args.algorithm, cfg,
                           on_step=lambda step, logs: bar(step, max_steps) if step < max_steps else None)
    bar(max_steps, max_steps)
    print(json.dumps({k: result[k] for k in ("algorithm", "checkpoint", "metrics", "stopped", "cached")}, indent=2))
    return 0


def trained_learners(shards_dir: Path) -> dict[str, str]:
    """Every learner trained on these shards (the newest per algorithm): name -> checkpoint."""
    from metalearn.learn.stage import RESULT, ExperimentConfig, model_dir

    root = model_dir(shards_dir, "any", ExperimentConfig()).parent  # models/<shards hash>/
    found: dict[str, tuple[float, str]] = {}
    for result in root.glob(f"*/{RESULT}"):
        info = json.loads(result.read_text())
        mtime = result.stat().st_mtime
        if info["algorithm"] not in found or mtime > found[info["algorithm"]][0]:
            found[info["algorithm"]] = (mtime, info["checkpoint"])
    return {name: path for name, (_, path) in sorted(found.items())}


def evaluate(args: argparse.Namespace) -> int:
    from metalearn.evaluate.stage import evaluate_learners
    from metalearn.io import resolve_workdir
    from tasks.evaluate import evaluation_dir

    shards_dir = _shards_dir(args)
    if args.learner:
        pairs = [item.split("=", 1) for item in args.learner]
        bad = [item for item, pair in zip(args.learner, pairs) if len(pair) != 2]
        if bad:
            raise ValueError(f"--learner takes NAME=CHECKPOINT, got {bad}")
        checkpoints = dict(pairs)
    else:
        checkpoints = trained_learners(shards_dir)
        if not checkpoints:
            raise FileNotFoundError(f"no trained learner for {shards_dir}; run `metalearn train` first")
    from metalearn.config import from_dict, to_jsonable
    from metalearn.evaluate.protocol import EvalConfig

    cfg = to_jsonable(from_dict(EvalConfig, _profile(args, "evaluate")))
    out_dir = evaluation_dir(resolve_workdir(args.workdir), shards_dir, checkpoints, cfg)
    result = evaluate_learners(shards_dir, checkpoints, cfg, out_dir, on_progress=progress_bar("evaluate"))
    summary = Path(result["summary_md"])
    print(summary.read_text() if summary.exists() else json.dumps(result["headline"], indent=2))
    print(f"scores: {result['scores_csv']}\nplot: {result['plot_png']}", file=sys.stderr)
    return 0
