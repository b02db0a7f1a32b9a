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
from metalearn.layout import WorkDir
from metalearn.worklock import WorkDirLock


def _add_workdir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default=None,
                        help="work directory for all outputs (default: $METALEARN_HOME, else ./.metalearn)")


def cmd_ingest(args: argparse.Namespace) -> int:
    from metalearn.ingest.stage import IngestConfig, ingest  # deferred: pandas/pymatgen, not torch

    cfg = IngestConfig(source=args.source, max_rows_per_dataset=args.max_rows_per_dataset or None,
                       seed=args.seed, mp_endpoint=args.mp_endpoint)
    result = ingest(WorkDir.resolve(args.workdir), cfg, on_progress=progress_bar("ingest"))
    print(result.summary())
    reasons = result.manifest.counts.get("quarantine_reasons") or {}
    for reason, count in sorted(reasons.items()):
        print(f"  quarantined {count:>6}  {reason}")
    return 0


# --- run / deploy: Prefect ------------------------------------------------------------------------

def _embedded_prefect(work) -> None:
    """Before Prefect is imported: embedded (ephemeral) Prefect keeps its database under the workdir.

    A configured server (``PREFECT_API_URL``) or an explicit ``PREFECT_HOME`` wins.
    """
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str(work.prefect_home()))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # pitfall P1 on 2 cores
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _json_arg(text: str | None) -> dict:
    """``--params``: a JSON object, or ``@file.json``."""
    import json

    if not text:
        return {}
    source = f"--params file {text[1:]}" if text.startswith("@") else "--params"
    try:
        value = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{source} must be a JSON object, got {type(value).__name__}")  # noqa: TRY004
    return value


def run_params(args: argparse.Namespace, workdir: Path) -> dict:
    """``--params`` merged with the flags; a flag and a --params key that disagree are an error."""
    params = _json_arg(args.params)
    for flag in ("profile", "source"):
        given = getattr(args, flag)
        if given is not None and flag in params and params[flag] != given:
            raise ValueError(f"--{flag} {given!r} conflicts with --params {flag}={params[flag]!r}; give one")
        if given is not None:
            params[flag] = given
    if "workdir" in params and params["workdir"] != args.workdir:
        raise ValueError("give the work directory with --workdir, not inside --params")
    return {**params, "workdir": str(workdir)}


def cmd_run(args: argparse.Namespace) -> int:
    # Deferred imports in the subcommands: each loads only its own heavy dependencies (prefect for
    # run/deploy, torch and scikit-learn for the stages), so `metalearn predict` and `metalearn
    # ingest` start in a fraction of the time.
    from metalearn.pipeline import RunConfig, resolve_stages  # deferred: torch, scikit-learn

    work = WorkDir.resolve(args.workdir)
    params = run_params(args, work.root)
    resolve_stages(RunConfig.from_params(params))  # fail on a bad parameter before starting Prefect
    # The work directory's lock first: the embedded Prefect database lives under it.
    with WorkDirLock(work.lock_file(), wait_s=args.wait_lock, on_wait=lambda msg: print(msg, file=sys.stderr)):
        _embedded_prefect(work)
        os.environ.setdefault("METALEARN_PROGRESS", "1")  # tasks also draw terminal progress bars
        from prefect.exceptions import ParameterBindError, SignatureMismatchError

        from flows.nightly import with_runner  # deferred: prefect

        try:
            result = with_runner(args.task_runner, args.dask_address)(**params)
        except (ParameterBindError, SignatureMismatchError) as exc:  # an unknown top-level key in --params
            raise ValueError(str(exc)) from None
    for key in ("source", "snapshot", "features", "shards", "evaluation", "candidate", "model_version",
                "decision", "champion", "tracking_uri", "train_flow_run"):
        if result.get(key) is not None:
            print(f"{key:>14}: {result[key]}")
    seconds = result.get("stage_seconds") or {}
    total = sum(seconds.values())
    for stage, wall in seconds.items():
        print(f"{'stage ' + stage:>14}: {wall:8.1f} s  ({wall / total:.0%} of the stages)" if total else
              f"{'stage ' + stage:>14}: {wall:8.1f} s")
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
    from flows.cli_stages import featurize  # deferred: torch, scikit-learn

    features = featurize(args)
    print(f"features: {features}")
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from flows.cli_stages import shards  # deferred: torch, scikit-learn

    return shards(args)


def cmd_train(args: argparse.Namespace) -> int:
    from flows.cli_stages import train  # deferred: torch, scikit-learn

    return train(args)


def cmd_verify(args: argparse.Namespace) -> int:
    from flows.cli_verify import cmd_verify as verify  # deferred: pandas, pyarrow

    return verify(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from flows.cli_stages import evaluate  # deferred: torch, scikit-learn

    return evaluate(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metalearn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the whole nightly flow in-process (embedded Prefect unless "
                                     "PREFECT_API_URL is set)")
    _add_workdir(run)
    run.add_argument("--profile", choices=["quick", "default"], default=None, help="default: default")
    run.add_argument("--source", choices=["auto", "bundled", "mp"], default=None,
                     help="default auto: Materials Project when MP_API_KEY (or the Secret block) is set")
    run.add_argument("--task-runner", choices=["default", "dask"], default="default")
    run.add_argument("--dask-address", default=None, help="scheduler of a running Dask cluster (tcp://...)")
    run.add_argument("--wait-lock", type=float, default=0, metavar="SECONDS",
                     help="when another run holds the work directory, wait this long for it (default: fail "
                          "at once, naming that run)")
    run.add_argument("--params", default=None,
                     help="more flow parameters as a JSON object or @file.json, e.g. "
                          "'{\"train\": {\"max_steps\": 100}}'")
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
    train.add_argument("--learner", "--algorithm", dest="learner", required=True,
                       choices=["maml", "fomaml", "metasgd", "anil", "protonet", "metric"],
                       help="the learner to meta-train (--algorithm: the old spelling, still accepted)")
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
    verify = sub.add_parser("verify", help="check every snapshot, feature table and shards directory against "
                                           "its manifest (read only; exit 1 when any does not match)")
    _add_workdir(verify)
    verify.add_argument("--deep", action="store_true", help="recompute snapshot content hashes from the tables")
    verify.add_argument("--verbose", action="store_true", help="also list the outputs that are fine")
    verify.set_defaults(func=cmd_verify)

    deploy = sub.add_parser("deploy", help="register deployments/prefect.yaml with the server at PREFECT_API_URL")
    deploy.set_defaults(func=cmd_deploy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, LookupError, OSError, RuntimeError) as exc:
        print(f"metalearn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
