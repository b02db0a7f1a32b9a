"""``metalearn predict``: adapt a registered model on support rows and predict query rows.

No Prefect and no flows here: a consumer's call imports only what predicting needs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_predict(args: argparse.Namespace) -> int:
    from metalearn.predict.consumer import predict_csv

    workdir = Path(args.workdir) if args.workdir else None

    def load():
        from metalearn.registry import load_model, resolve_tracking_uri

        uri = resolve_tracking_uri(None, workdir)
        try:
            return load_model(args.model, uri)  # LookupError when the store has no such model
        except OSError as exc:
            raise RuntimeError(f"cannot load model {args.model!r} from {uri}: {exc}") from None

    out = predict_csv(load, args.support, args.query, args.output, task_type=args.task_type,
                      transform=args.transform)
    print(f"{len(out)} predictions -> {args.output}")
    return 0


def add_predict_parser(sub, add_workdir) -> None:
    predict = sub.add_parser("predict", help="adapt a registered model on support rows, predict query rows")
    add_workdir(predict)
    predict.add_argument("--model", default="models:/metalearn@champion")
    predict.add_argument("--support", required=True, help="CSV with formula,target (optional cif)")
    predict.add_argument("--query", required=True, help="CSV with formula (optional cif)")
    predict.add_argument("--output", required=True)
    predict.add_argument("--task-type", choices=["regression", "classification"], default=None)
    predict.add_argument("--transform", choices=["none", "log10"], default="none")
    predict.set_defaults(func=cmd_predict)
