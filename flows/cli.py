"""The ``metalearn`` console script: the top layer, so it may reach everything.

Subcommands import lazily so ``metalearn predict`` starts without importing Prefect, and
``metalearn ingest`` without torch. ``run`` and ``deploy`` go through Prefect; ``featurize``,
``shards``, ``train`` and ``evaluate`` call the library directly (flows/cli_stages.py), with
progress bars.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flows.cli_predict import add_predict_parser
from flows.progress import progress_bar


def _add_workdir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default=None,
                        help="work directory for all outputs (default: $METALEARN_HOME, else ./.metalearn)")


def cmd_ingest(args: argparse.Namespace) -> int:
    from metalearn.ingest.stage import IngestConfig, ingest

    cfg = IngestConfig(source=args.source, max_rows_per_dataset=args.max_rows_per_dataset or None,
                       seed=args.seed, mp_endpoint=args.mp_endpoint)
    result = ingest(Path(args.workdir) if args.workdir else None, cfg, on_progress=progress_bar("ingest"))
    print(result.summary())
    reasons = result.manifest.counts.get("quarantine_reasons") or {}
    for reason, count in sorted(reasons.items()):
        print(f"  quarantined {count:>6}  {reason}")
    return 0


# --- run / deploy: Prefect ------------------------------------------------------------------------

def _embedded_prefect(workdir: Path) -> None:
    """Before Prefect is imported: embedded (ephemeral) Prefect keeps its database under the workdir.

    A configured server (``PREFECT_API_URL``) or an explicit ``PREFECT_HOME`` wins.
    """
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str(workdir / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # pitfall P1 on 2 cores
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _json_arg(text: str | None) -> dict:
    """``--params``: a JSON object, or ``@file.json``."""
    import json

    if not text:
        return {}
    value = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    if not isinstance(value, dict):
        raise ValueError(f"--params must be a JSON object, got {type(value).__name__}")  # noqa: TRY004
    return value


def cmd_run(args: argparse.Namespace) -> int:
    from metalearn.io import resolve_workdir

    workdir = resolve_workdir(args.workdir)
    _embedded_prefect(workdir)
    params = {**_json_arg(args.params), "profile": args.profile, "workdir": str(workdir)}
    if args.source:
        params["source"] = args.source
    from metalearn.config import from_dict
    from metalearn.pipeline import RunConfig, resolve_stages

    resolve_stages(from_dict(RunConfig, params))  # fail on a bad key before starting Prefect
    from prefect.exceptions import ParameterBindError, SignatureMismatchError

    from flows.nightly import with_runner

    try:
        result = with_runner(args.task_runner, args.dask_address)(**params)
    except (ParameterBindError, SignatureMismatchError) as exc:  # an unknown top-level key in --params
        raise ValueError(str(exc)) from None
    for key in ("source", "snapshot", "features", "shards", "evaluation", "candidate", "model_version",
                "decision", "champion", "tracking_uri", "train_flow_run"):
        if result.get(key) is not None:
            print(f"{key:>14}: {result[key]}")
    return 0


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def ensure_work_pools(pools: dict[str, str]) -> list[str]:
    """Create the work pools (name -> type) that do not exist yet; returns the names created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    created = []
    with get_client(sync_client=True) as client:
        for name, kind in pools.items():
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=name, type=kind))
                created.append(name)
    return created


def cmd_deploy(args: argparse.Namespace) -> int:
    import subprocess

    if not os.environ.get("PREFECT_API_URL"):
        raise RuntimeError("no Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) "
                           "after `prefect server start`")
    created = ensure_work_pools({"cpu": "process", "gpu": "process"})
    if created:
        print(f"created work pools: {', '.join(created)}")
    root = repo_root()
    env = {**os.environ, "PWD": str(root)}  # prefect.yaml's pull step pins "{{ $PWD }}"
    out = subprocess.run([sys.executable, "-m", "prefect", "deploy", "--all", "--no-prompt",
                          "--prefect-file", str(root / "deployments" / "prefect.yaml")],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"prefect deploy failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    print(out.stdout.strip()[-3000:])
    return 0


# --- the stages one at a time: the library, no Prefect ----------------------------------------------

def cmd_featurize(args: argparse.Namespace) -> int:
    from flows.cli_stages import featurize

    features = featurize(args)
    print(f"features: {features}")
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from flows.cli_stages import shards

    return shards(args)


def cmd_train(args: argparse.Namespace) -> int:
    from flows.cli_stages import train

    return train(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from flows.cli_stages import evaluate

    return evaluate(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metalearn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the whole nightly flow in-process (embedded Prefect unless "
                                     "PREFECT_API_URL is set)")
    _add_workdir(run)
    run.add_argument("--profile", choices=["quick", "default"], default="default")
    run.add_argument("--source", choices=["auto", "bundled", "mp"], default=None,
                     help="default auto: Materials Project when MP_API_KEY (or the Secret block) is set")
    run.add_argument("--task-runner", choices=["default", "dask"], default="default")
    run.add_argument("--dask-address", default=None, help="scheduler of a running Dask cluster (tcp://...)")
    run.add_argument("--params", default=None,
                     help="more flow parameters as a JSON object or @file.json, e.g. '{\"train\": "
                          "{\"train\": {\"max_steps\": 100}}}'")
    run.set_defaults(func=cmd_run)

    ingest = sub.add_parser("ingest", help="pull a source into an immutable raw snapshot")
    _add_workdir(ingest)
    ingest.add_argument("--source", choices=["bundled", "mp", "oc"], default="bundled")
    ingest.add_argument("--mp-endpoint", default=os.environ.get("MP_API_ENDPOINT"),
                        help="Materials Project API base URL (default: $MP_API_ENDPOINT or the public API)")
    ingest.add_argument("--max-rows-per-dataset", type=int, default=3000,
                        help="seeded subsample per bundled dataset; 0 = all rows")
    ingest.add_argument("--seed", type=int, default=0)
    ingest.set_defaults(func=cmd_ingest)

    for name, helptext in (("featurize", "features of a snapshot (incremental: cached by material)"),
                           ("shards", "build the task shards; print tasks per split, rows, properties, groups")):
        stage = sub.add_parser(name, help=helptext)
        _add_workdir(stage)
        stage.add_argument("--snapshot", default=None, help="snapshot id (default: the newest of --source)")
        stage.add_argument("--source", choices=["bundled", "mp", "oc"], default="bundled")
        stage.add_argument("--profile", choices=["quick", "default"], default="default")
        if name == "shards":
            stage.add_argument("--list", action="store_true", help="print the tasks index")
        stage.set_defaults(func=cmd_featurize if name == "featurize" else cmd_shards)

    train = sub.add_parser("train", help="meta-train one learner on the newest shards")
    _add_workdir(train)
    train.add_argument("--algorithm", required=True,
                       choices=["maml", "fomaml", "metasgd", "anil", "protonet", "metric"])
    train.add_argument("--shards", default=None, help="shards directory (default: the newest)")
    train.add_argument("--profile", choices=["quick", "default"], default="default")
    train.add_argument("--max-steps", type=int, default=None)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="k-shot protocol on the meta-test tasks vs baselines")
    _add_workdir(evaluate)
    evaluate.add_argument("--shards", default=None, help="shards directory (default: the newest)")
    evaluate.add_argument("--learner", action="append", default=[], metavar="NAME=CHECKPOINT",
                          help="learner to score (default: every learner trained on these shards)")
    evaluate.add_argument("--profile", choices=["quick", "default"], default="default")
    evaluate.set_defaults(func=cmd_evaluate)

    add_predict_parser(sub, _add_workdir)

    deploy = sub.add_parser("deploy", help="register deployments/prefect.yaml with the server at PREFECT_API_URL")
    deploy.set_defaults(func=cmd_deploy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, LookupError, FileNotFoundError, RuntimeError) as exc:
        print(f"metalearn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
