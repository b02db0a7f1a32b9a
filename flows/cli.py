"""The ``metalearn`` console script: the top layer, so it may reach everything.

Subcommands import lazily so ``metalearn predict`` starts without importing Prefect, and
``metalearn ingest`` without torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _add_workdir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default=None,
                        help="work directory for all outputs (default: $METALEARN_HOME, else ./.metalearn)")


def cmd_ingest(args: argparse.Namespace) -> int:
    from metalearn.ingest import IngestConfig, ingest

    cfg = IngestConfig(source=args.source, max_rows_per_dataset=args.max_rows_per_dataset or None,
                       seed=args.seed, mp_endpoint=args.mp_endpoint)
    result = ingest(Path(args.workdir) if args.workdir else None, cfg, on_progress=_progress_bar("ingest"))
    print(result.summary())
    reasons = result.manifest.counts.get("quarantine_reasons") or {}
    for reason, count in sorted(reasons.items()):
        print(f"  quarantined {count:>6}  {reason}")
    return 0


def _progress_bar(label: str):
    """An on_progress(done, total) callback drawing a tqdm bar on stderr (library code stays UI-free)."""
    from tqdm import tqdm

    state: dict[str, tqdm] = {}

    def on_progress(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc=label, unit="row", file=sys.stderr, leave=False)
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            state.pop("bar", None)

    return on_progress


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metalearn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="pull a source into an immutable raw snapshot")
    _add_workdir(ingest)
    ingest.add_argument("--source", choices=["bundled", "mp", "oc"], default="bundled")
    ingest.add_argument("--mp-endpoint", default=os.environ.get("MP_API_ENDPOINT"),
                        help="Materials Project API base URL (default: $MP_API_ENDPOINT or the public API)")
    ingest.add_argument("--max-rows-per-dataset", type=int, default=3000,
                        help="seeded subsample per bundled dataset; 0 = all rows")
    ingest.add_argument("--seed", type=int, default=0)
    ingest.set_defaults(func=cmd_ingest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"metalearn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
