"""Leave-family-out k-shot benchmark: transfer heads vs what a scientist does alone (RF on Magpie).

Every regression property family takes a turn as unseen: the representation used for its tasks
has no member of that family (``TransferRepresentation.subset(exclude_families=[family])``, which
is exactly the representation refitted without it, since each member learns from its own dataset
only). Each regression dataset of the family is a task; per task and draw a query set of
``--n-query`` rows is fixed and supports of each k are drawn from the rest (seeded by
(seed, dataset, draw[, k]), as in ``metalearn.evaluate.protocol``); every learner sees the same
draws. Score: MAE / MAD of the query targets, in the property's unit.

Two disjoint protocols (materials split in halves by a hash of the reduced formula):
``--protocol val`` (seed 1, half 1) is where choices are made; ``--protocol test`` (seed 0,
half 0) is what is reported. Heads receive targets in the property's unit and choose their own
transform; baselines get the dataset's curated transform (log10 for moduli), as in the project's
protocol, which only makes them stronger.

Threads: one everywhere (LightGBM, BLAS, torch); two threads on the shared 2-core box run 10-20x
slower. The representation (~10 min the first time) is cached under ``<workdir>/representations``.

Usage:
    .venv/bin/python bench/leave_family_out.py --workdir /tmp/lfo-work             # full (~25 min)
    .venv/bin/python bench/leave_family_out.py --workdir /tmp/lfo-work --quick     # 3 draws, k=10
    .venv/bin/python bench/leave_family_out.py --protocol val --learners meta_huber,transfer_auto+ensemble=2,rf
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lfo_report import markdown_report

# Named variants (chosen on --protocol val): name -> spec "base+key=value+...".
ALIASES = {
    "meta_huber": "meta_auto+head=huber",  # the product learner: meta-learned feature weights + penalty, Huber ridge
    "meta_huber_loo": "meta_auto+head=huber+meta_alpha=0",  # the previous product: penalty by support LOO
    "meta_auto3": "meta_auto+ensemble=3",
    "transfer_auto3": "transfer_auto+ensemble=3+candidates=ridge/huber/gp/knn",
}
DEFAULT_LEARNERS = ("meta_huber", "meta_huber_loo", "meta_auto3", "transfer_huber", "transfer_auto3", "transfer_ridge",
                    "mean", "median", "knn", "rf", "rf_rep")
PROTOCOLS = {"test": (0, 0), "val": (1, 1)}  # name -> (seed, material half)


def _rng(seed: int, dataset_id: str, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(dataset_id.encode()), *more])


def _half(keys: np.ndarray) -> np.ndarray:
    return np.fromiter((zlib.crc32(f"half:{k}".encode()) % 2 for k in keys), dtype=int, count=len(keys))


def _value(text: str):
    if text == "None":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return tuple(text.split("/")) if "/" in text else text


def build_learners(names, n_rep: int, n_magpie: int, meta_relevance: np.ndarray | None, gamma: float,
                   meta_alpha_by_k: list | None = None):
    """name -> (learner, input kind "rep"|"magpie", target kind "raw"|"curated").

    ``meta_auto`` variants get MetaTransferHead's meta-learned weights (at their gamma) and, unless
    ``meta_alpha=0``, its meta-learned ridge penalty per support size ``meta_alpha_by_k``."""
    from metalearn.learn.learners import build_learner
    from metalearn.learn.learners.transfer_heads import TransferHead

    out = {}
    for name in names:
        base, *opts = ALIASES.get(name, name).split("+")  # variants: "transfer_auto+ensemble=2+clip=0.5"
        kw = {key: _value(v) for key, v in (o.split("=") for o in opts)}
        if base.startswith("transfer_"):
            out[name] = (TransferHead(n_rep, head=base.removeprefix("transfer_"), **kw), "rep", "raw")
        elif base == "meta_auto":  # MetaTransferHead's weights at this variant's gamma
            w = meta_relevance ** float(kw.pop("gamma", gamma))
            w = (w / w.mean()).tolist()
            alpha_by_k = meta_alpha_by_k if kw.pop("meta_alpha", 1) else None
            out[name] = (TransferHead(n_rep, **{"head": "auto", **kw}, feature_weights=w, alpha_by_k=alpha_by_k),
                         "rep", "raw")
        elif name == "median":
            out[name] = (None, "magpie", "raw")
        elif name == "rf_rep":
            out[name] = (build_learner("rf", n_rep, "regression"), "rep", "curated")
        else:
            out[name] = (build_learner(name, n_magpie, "regression"), "magpie", "curated")
    return out


def _run_one(learner, x_s, y_s, x_q, kind: str, transform: str) -> np.ndarray:
    import torch

    from metalearn.evaluate.protocol import normalise_support
    from metalearn.learn.sampling import forward_transform, inverse_transform

    if learner is None:  # support median
        return np.full(len(x_q), np.median(y_s))
    xs, xq = torch.as_tensor(x_s, dtype=torch.float32), torch.as_tensor(x_q, dtype=torch.float32)
    if kind == "raw":
        state = learner.adapt(xs, torch.as_tensor(y_s, dtype=torch.float64))
        return learner.predict(state, xq).mean.double().numpy()
    y_t = torch.as_tensor(forward_transform(y_s, transform), dtype=torch.float32)
    y_norm, mean, std = normalise_support(y_t)
    pred = learner.predict(learner.adapt(xs, y_norm), xq).mean.double() * std.double() + mean.double()
    return inverse_transform(pred.numpy(), transform)


def meta_train_tasks(rep, rows: pd.DataFrame, family: str, n_rows: int = 400):
    """Meta-train tasks of one fold for :class:`MetaTransferHead`: every dataset of another family,
    ``n_rows`` rows of the *validation* material half (disjoint from the test half's materials),
    targets in the property's unit (what the heads see), with the column mask that hides members
    of the task's own family."""
    from metalearn.represent.stage import composition_features

    fam = np.array([m.family for m in rep.members_])
    for dataset_id, part in rows[(rows["family"] != family) & (rows["task_type"] == "regression")
                                 ].groupby("dataset_id"):
        part = part[_half(part["material_key"].to_numpy()) == 1]
        part = part.iloc[_rng(7, dataset_id).permutation(len(part))[:n_rows]]
        keys = part["material_key"].to_numpy()
        z = rep.standardise(rep.represent(keys, composition_features(keys).loc[keys].to_numpy()))
        yield z, part["y_raw"].to_numpy(), fam != part["family"].iat[0]


def run(args) -> pd.DataFrame:
    import torch
    from threadpoolctl import threadpool_limits

    from metalearn.ingest.bundled import load_bundled
    from metalearn.represent.rows import training_rows
    from metalearn.represent.stage import build_representation, composition_features
    from metalearn.represent.transfer import TransferConfig

    threadpool_limits(1)
    torch.set_num_threads(1)
    seed, half = PROTOCOLS[args.protocol]
    t0 = time.perf_counter()
    records, properties = load_bundled(max_rows_per_dataset=None)
    log = (lambda s: print(f"[{time.perf_counter() - t0:7.1f}s] {s}", file=sys.stderr, flush=True))
    res = build_representation(args.workdir, records, properties, TransferConfig(), log=log)
    log(f"representation {res.key}: {len(res.representation.members_)} members, "
        f"{res.size_bytes / 1e6:.1f} MB, {'fitted' if res.created else 'loaded'} in {res.seconds:.0f}s")
    rows, _ = training_rows(records, properties)
    del records
    transforms = properties.set_index("dataset_id")["transform"]
    reg = rows[rows["task_type"] == "regression"]
    families = sorted(reg["family"].unique()) if args.families == "all" else args.families.split(",")
    k_max = max(args.ks)
    scores = []
    for family in families:
        rep = res.representation.subset(exclude_families=[family])
        assert family not in rep.families
        meta_rel = meta_alpha = None
        if any(ALIASES.get(name, name).startswith("meta_auto") for name in args.learners):
            from metalearn.learn.learners.meta_transfer import MetaTransferHead

            meta = MetaTransferHead(len(rep.members_)).meta_fit(meta_train_tasks(rep, rows, family))
            meta_rel = meta.relevance_sum_ / np.maximum(meta.relevance_count_, 1)
            meta_alpha = meta.hyperparams["alpha_by_k"]
            log(f"{family}: meta-learned ridge penalty per k {meta_alpha}")
        for dataset_id, part in reg[reg["family"] == family].groupby("dataset_id"):
            part = part[_half(part["material_key"].to_numpy()) == half].reset_index(drop=True)
            if len(part) < k_max + args.n_query:
                log(f"skip {dataset_id}: {len(part)} rows < {k_max + args.n_query}")
                continue
            draws = []
            for draw in range(args.draws):
                perm = _rng(seed, dataset_id, draw).permutation(len(part))
                query, pool = perm[: args.n_query], perm[args.n_query:]
                draws.append((draw, query, {k: _rng(seed, dataset_id, draw, k).choice(pool, k, replace=False)
                                            for k in args.ks}))
            used = np.unique(np.concatenate([np.concatenate([q, *s.values()]) for _, q, s in draws]))
            keys = part["material_key"].to_numpy()[used]
            magpie = composition_features(keys).loc[keys].to_numpy()
            x_rep = np.full((len(part), len(rep.members_)), np.nan)
            x_mag = np.full((len(part), magpie.shape[1]), np.nan)
            x_rep[used] = rep.standardise(rep.represent(keys, magpie))
            mu, sd = np.nanmean(magpie, 0), np.nanstd(magpie, 0)
            x_mag[used] = np.nan_to_num((magpie - mu) / np.where(sd > 0, sd, 1.0))
            y = part["y_raw"].to_numpy()
            learners = build_learners(args.learners, len(rep.members_), magpie.shape[1], meta_rel, args.gamma,
                                      meta_alpha)
            t_ds = time.perf_counter()
            for draw, query, supports in draws:
                yq = y[query]
                mad = np.mean(np.abs(yq - yq.mean()))
                for k, support in supports.items():
                    for name, (learner, inputs, kind) in learners.items():
                        x = x_rep if inputs == "rep" else x_mag
                        pred = _run_one(learner, x[support], y[support], x[query], kind, transforms[dataset_id])
                        scores.append((family, dataset_id, k, draw, name, float(np.mean(np.abs(pred - yq)) / mad)))
            log(f"{family}/{dataset_id}: {len(part)} rows, {time.perf_counter() - t_ds:.0f}s")
    return pd.DataFrame(scores, columns=["family", "dataset_id", "k", "draw", "learner", "mae_mad"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=os.environ.get("METALEARN_HOME", ".metalearn"))
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="test")
    p.add_argument("--ks", default="5,10,20")
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--n-query", type=int, default=100)
    p.add_argument("--families", default="all", help="comma-separated families, or 'all'")
    p.add_argument("--learners", default=",".join(DEFAULT_LEARNERS))
    p.add_argument("--primary", default="meta_huber", help="the product learner the targets are checked on")
    p.add_argument("--gamma", type=float, default=1.0, help="meta feature-weight exponent (chosen on val)")
    p.add_argument("--quick", action="store_true", help="3 draws, k=10 only")
    p.add_argument("--scores", default=None, help="write per-draw scores CSV here")
    args = p.parse_args(argv)
    args.ks = (10,) if args.quick else tuple(int(k) for k in args.ks.split(","))
    args.draws = 3 if args.quick else args.draws
    args.learners = tuple(args.learners.split(","))
    started = time.perf_counter()
    scores = run(args)
    if args.scores:
        scores.to_csv(args.scores, index=False)
    print(markdown_report(scores, primary=args.primary, protocol=args.protocol,
                          seconds=time.perf_counter() - started, argv=sys.argv[1:]))


if __name__ == "__main__":
    main()
