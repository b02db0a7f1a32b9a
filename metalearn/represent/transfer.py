"""Transfer representation: a formula becomes the vector of its predicted bundled properties.

One LightGBM regressor (classifier for 0/1 datasets) per training dataset (*member*), fitted on the
149 composition features of that dataset's materials. A new material's vector is the members'
predictions, ``(n, P)``. A training material gets *out-of-fold* values instead: each member is
also fitted K times on K-1 folds (folds by a seeded hash of the material key), and every training
row gets the prediction of the fold model that did not see it, so no transfer feature is ever
fitted on the row it describes.

Because each member learns from its own dataset only, dropping the members of a family is exactly
the representation retrained without that family (:meth:`TransferRepresentation.subset`).

Rows per dataset are capped at ``max_rows_per_dataset`` by a seeded sample (the key-hash order);
rows over the cap are not training rows of that member, so they get its full-model prediction.

Example:
    >>> rep = TransferRepresentation(TransferConfig(n_estimators=50)).fit(features, rows)
    >>> rep.transform(x_new).shape          # (n, P) for new materials
    >>> rep.represent(keys, x)              # out-of-fold where a key is a training row
    >>> rep.save(path); TransferRepresentation.load(path)
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metalearn import io
from metalearn import schema as S
from metalearn.config import from_dict
from metalearn.represent.rows import MATERIAL_KEY, Y, member_target_rule

FORMAT_VERSION = 1
MODELS_FILE = "members.json.gz"  # config, member table, LightGBM model strings
OOF_FILE = "oof.parquet"  # (dataset_id, material_key, value): out-of-fold value of each training row


@dataclass(frozen=True)
class TransferConfig:
    """Member models and their out-of-fold scheme. Defaults: ~8 min for the bundled set on one thread."""

    n_estimators: int = 300
    learning_rate: float = 0.08
    num_leaves: int = 31
    min_child_samples: int = 10
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    n_folds: int = 5  # out-of-fold predictions for training rows
    max_rows_per_dataset: int | None = 40_000  # seeded cap (time budget); None: every row
    skew_threshold: float = 1.0  # member_target_rule: log1p when non-negative and skew > this
    min_member_rows: int = 300  # a dataset with fewer (deduplicated) training rows gets no member
    n_jobs: int = 1  # more than one thread on a loaded 2-core box is 10-20x slower
    seed: int = 0


@dataclass(frozen=True)
class Member:
    """One column of the representation."""

    dataset_id: str
    family: str
    task_type: str
    target_rule: str  # "none" | "log1p": the space the member predicts in
    n_rows: int  # deduplicated rows of the dataset
    n_train: int  # rows fitted on (after the cap)
    oof_mae: float  # out-of-fold MAE in the member's target space (quality of the column)


def _key_hash(keys: np.ndarray, seed: int) -> np.ndarray:
    return np.fromiter((zlib.crc32(f"{seed}:{k}".encode()) for k in keys), dtype=np.int64, count=len(keys))


def _params(cfg: TransferConfig, task_type: str) -> dict[str, Any]:
    return {
        "objective": "binary" if task_type == "classification" else "regression",
        "learning_rate": cfg.learning_rate,
        "num_leaves": cfg.num_leaves,
        "min_child_samples": cfg.min_child_samples,
        "bagging_fraction": cfg.subsample,
        "bagging_freq": 1 if cfg.subsample < 1 else 0,
        "feature_fraction": cfg.colsample_bytree,
        "num_threads": cfg.n_jobs,
        "seed": cfg.seed,
        "verbosity": -1,
        "deterministic": True,
        "force_row_wise": True,
    }


class TransferRepresentation:
    """Cross-property transfer features. Fitted state ends in ``_``.

    Attributes (after fit/load):
        members_: list[Member], one per column.
        boosters_: list[lightgbm.Booster], full-data model per member.
        feature_names_: composition feature names the boosters expect, in order.
        output_mean_, output_std_: (P,) statistics of the out-of-fold training values per column
            (for standardising the vector; computed on each member's own rows only).
    """

    def __init__(self, config: TransferConfig | None = None) -> None:
        self.config = config or TransferConfig()

    # --- fitting ---
    def fit(self, features: pd.DataFrame, rows: pd.DataFrame, *, log=None) -> TransferRepresentation:
        """Fit one member per dataset in ``rows``.

        Args:
            features: (n_materials, F) composition features indexed by material key (NaN allowed).
            rows: training rows (``metalearn.represent.rows.ROW_COLUMNS``), already filtered by the
                caller's leakage rule (``training_rows(exclude_families=...)``).
            log: optional callable(str) for progress lines.
        """
        import lightgbm as lgb

        cfg = self.config
        missing = set(rows[MATERIAL_KEY]) - set(features.index)
        if missing:
            raise ValueError(f"{len(missing)} training materials have no feature row, e.g. {sorted(missing)[:3]}")
        self.feature_names_ = [str(c) for c in features.columns]
        self.members_, self.boosters_, oof_frames = [], [], []
        for dataset_id, part in rows.groupby(S.DATASET_ID, sort=True):
            keys = part[MATERIAL_KEY].to_numpy(dtype=object)
            h = _key_hash(keys, cfg.seed)
            if cfg.max_rows_per_dataset is not None and len(keys) > cfg.max_rows_per_dataset:
                take = np.sort(np.argsort(h, kind="stable")[: cfg.max_rows_per_dataset])
            else:
                take = np.arange(len(keys))
            keys, h = keys[take], h[take]
            task_type = part[S.TASK_TYPE].iat[0]
            y = part[Y].to_numpy(dtype=float)[take]
            rule = member_target_rule(y, task_type, cfg.skew_threshold)
            y_fit = np.log1p(y) if rule == "log1p" else y
            x = features.loc[keys].to_numpy(dtype=np.float64)
            params = _params(cfg, task_type)
            full = lgb.Dataset(x, y_fit, params={**params, "max_bin": 255, "feature_pre_filter": False},
                               free_raw_data=False).construct()
            fold = (h // 7) % cfg.n_folds  # //7: decorrelate from the cap order, which sorts by h
            oof = np.empty(len(keys))
            for f in range(cfg.n_folds):
                inside = np.flatnonzero(fold != f)
                booster = lgb.train(params, full.subset(inside), num_boost_round=cfg.n_estimators)
                oof[fold == f] = booster.predict(x[fold == f], num_threads=cfg.n_jobs)
            booster = lgb.train(params, full, num_boost_round=cfg.n_estimators)
            self.boosters_.append(booster)
            mae = float(np.mean(np.abs(oof - y_fit)))
            self.members_.append(Member(dataset_id, part[S.FAMILY].iat[0], task_type, rule, len(part), len(keys), mae))
            oof_frames.append(pd.DataFrame({S.DATASET_ID: dataset_id, MATERIAL_KEY: keys, "value": oof}))
            if log:
                log(f"member {dataset_id}: {len(keys)} rows, rule={rule}, oof_mae={mae:.4g}")
        self._set_oof(pd.concat(oof_frames, ignore_index=True))
        return self

    def _set_oof(self, oof: pd.DataFrame) -> None:
        self.oof_ = oof
        self._oof_maps = {d: pd.Series(g["value"].to_numpy(), index=g[MATERIAL_KEY].to_numpy())
                          for d, g in oof.groupby(S.DATASET_ID, sort=False)}
        self.output_mean_ = np.array([self._oof_maps[m.dataset_id].mean() for m in self.members_])
        std = np.array([self._oof_maps[m.dataset_id].std(ddof=0) for m in self.members_])
        self.output_std_ = np.where(std > 1e-12, std, 1.0)

    # --- using ---
    @property
    def dataset_ids(self) -> list[str]:
        return [m.dataset_id for m in self.members_]

    @property
    def families(self) -> set[str]:
        return {m.family for m in self.members_}

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, F) composition features of new materials -> (n, P) float64 member predictions."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names_):
            raise ValueError(f"x has shape {x.shape}; need (n, {len(self.feature_names_)}) composition features")
        out = np.empty((x.shape[0], len(self.members_)))
        for j, booster in enumerate(self.boosters_):
            out[:, j] = booster.predict(x, num_threads=self.config.n_jobs)
        return out

    def oof(self, keys) -> np.ndarray:
        """(n,) material keys -> (n, P) out-of-fold values; NaN where a key is not a member's training row."""
        keys = pd.Index(np.asarray(keys, dtype=object))
        return np.column_stack([self._oof_maps[m.dataset_id].reindex(keys).to_numpy(dtype=float)
                                for m in self.members_])

    def represent(self, keys, x: np.ndarray) -> np.ndarray:
        """The vector to learn from: out-of-fold where the key is a training row, else :meth:`transform`."""
        out = self.oof(keys)
        todo = np.isnan(out)
        if todo.any():
            rows = np.flatnonzero(todo.any(axis=1))
            fresh = self.transform(np.asarray(x)[rows])
            out[rows] = np.where(todo[rows], fresh, out[rows])
        return out

    def standardise(self, z: np.ndarray) -> np.ndarray:
        """(n, P) vectors -> standardised with the out-of-fold training statistics of each column."""
        return (z - self.output_mean_) / self.output_std_

    def subset(self, *, exclude_families=(), datasets=None) -> TransferRepresentation:
        """A representation with only the allowed members (identical to refitting without the others)."""
        drop = set(exclude_families)
        allow = None if datasets is None else set(datasets)
        idx = [j for j, m in enumerate(self.members_)
               if m.family not in drop and (allow is None or m.dataset_id in allow)]
        if not idx:
            raise ValueError(f"no member left after exclude_families={sorted(drop)}, datasets={datasets}")
        new = TransferRepresentation(self.config)
        new.feature_names_ = self.feature_names_
        new.members_ = [self.members_[j] for j in idx]
        new.boosters_ = [self.boosters_[j] for j in idx]
        kept = {m.dataset_id for m in new.members_}
        new._set_oof(self.oof_[self.oof_[S.DATASET_ID].isin(kept)])
        return new

    # --- persistence ---
    def save(self, path: str | Path) -> Path:
        """Write a directory: members.json.gz (config, members, model strings) + oof.parquet; atomic."""
        path = Path(path)
        blob = {
            "format_version": FORMAT_VERSION,
            "config": asdict(self.config),
            "feature_names": self.feature_names_,
            "members": [asdict(m) for m in self.members_],
            "models": [b.model_to_string() for b in self.boosters_],
        }
        with io.staged_dir(path) as tmp:
            io.write_bytes_atomic(tmp / MODELS_FILE, gzip.compress(json.dumps(blob).encode(), compresslevel=6))
            io.write_parquet_atomic(tmp / OOF_FILE, self.oof_)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TransferRepresentation:
        import lightgbm as lgb

        path = Path(path)
        blob = json.loads(gzip.decompress((path / MODELS_FILE).read_bytes()))
        if blob.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: representation format {blob.get('format_version')}; need {FORMAT_VERSION}")
        rep = cls(from_dict(TransferConfig, blob["config"]))
        rep.feature_names_ = list(blob["feature_names"])
        rep.members_ = [Member(**m) for m in blob["members"]]
        rep.boosters_ = [lgb.Booster(model_str=s) for s in blob["models"]]
        rep._set_oof(pd.read_parquet(path / OOF_FILE))
        return rep


def size_on_disk(path: str | Path) -> int:
    """Bytes of a saved representation directory."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
