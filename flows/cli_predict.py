"""``metalearn predict``: adapt a registered model on support rows and predict query rows.

No Prefect, no flows and, once the model version is in the local cache, no MLflow: a consumer's
call imports only what predicting needs. The first call for a version copies it from the registry
into ``<workdir>/cache/models``; later calls do not open the registry database.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metalearn.predict.consumer import predict_csv
from metalearn.predict.local_model import MetalearnModel, cached_model_dir
from metalearn.predict.predictor import CHUNK_ROWS
from metalearn.schema import TASK_TYPES


class _Bar:
    """A tqdm bar on stderr, drawn only for queries of more than one chunk; closed on any exit."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if done >= total:
                return
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="predict", unit="row", file=sys.stderr, leave=False)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_predict(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir) if args.workdir else None

    def load() -> MetalearnModel:
        path, note = cached_model_dir(args.model, None, workdir)
        if path is None:
            # deferred: metalearn.registry imports MLflow (seconds); only a cache miss needs it
            from metalearn.registry import fetch_model_copy

            path = fetch_model_copy(args.model, None, workdir)  # LookupError: no such model
        if note:
            print(f"metalearn predict: note: {note}", file=sys.stderr)
        return MetalearnModel.from_dir(path)

    bar = _Bar()
    try:
        summary = predict_csv(load, args.support, args.query, args.output, task_type=args.task_type,
                              transform=args.transform, chunk_rows=args.chunk_rows, on_progress=bar)
    except OSError as exc:  # FileNotFoundError is reported by the caller; the rest as one line too
        if isinstance(exc, FileNotFoundError):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        raise RuntimeError(f"{where}{exc.strerror or exc}") from None
    finally:
        bar.close()
    for warning in summary.warnings:
        print(f"metalearn predict: warning: {warning}", file=sys.stderr)
    print(f"{summary.n_predictions} predictions -> {summary.output}")
    return 0


def add_predict_parser(sub, add_workdir) -> None:
    predict = sub.add_parser("predict", help="adapt a registered model on support rows, predict query rows")
    add_workdir(predict)
    predict.add_argument("--model", default="models:/metalearn@champion",
                         help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/PATH or a model directory")
    predict.add_argument("--support", required=True, help="CSV with formula,target (optional cif)")
    predict.add_argument("--query", required=True, help="CSV with formula (optional cif)")
    predict.add_argument("--output", required=True, help="CSV to write (never one of the inputs)")
    predict.add_argument("--task-type", choices=list(TASK_TYPES), default=None)
    predict.add_argument("--transform", choices=["none", "log10"], default="none")
    predict.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS,
                         help="query rows featurized and predicted at once (bounds memory; rounded up to a multiple of 256)")
    predict.set_defaults(func=cmd_predict)
