"""The representation stage: records -> (cached) transfer representation; formulas -> vectors.

The cache key is the content hash of the training rows (dataset, material, target) plus the
config and the composition feature-set version, so a rerun with the same inputs loads the saved
representation instead of fitting; a different ``exclude_families`` gives different rows and
therefore its own entry. Entries live under ``WorkDir.representations()/<key>/`` and are
written atomically (a killed fit leaves only a ``.tmp-*`` directory).

Example:
    >>> result = build_representation(work, records, properties, exclude_families=("band_gap",))
    >>> result.representation.dataset_ids       # no band-gap dataset
    >>> z, errors = formula_vectors(result.representation, ["Fe2O3", "NaCl"])   # (2, P)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metalearn import io
from metalearn import schema as S
from metalearn.chemistry import UNPARSEABLE
from metalearn.features.composition import FEATURE_SET_VERSION, MISSING_DATA, featurize_compositions
from metalearn.layout import WorkDir
from metalearn.represent.rows import MATERIAL_KEY, Y, material_keys, training_rows
from metalearn.represent.transfer import TransferConfig, TransferRepresentation, size_on_disk
from metalearn.schema import REASON
from metalearn.threads import limited

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RepresentationResult:
    representation: TransferRepresentation
    path: Path
    key: str
    created: bool  # False: loaded from the cache
    seconds: float
    size_bytes: int


def representation_key(rows: pd.DataFrame, cfg: TransferConfig) -> str:
    """Content hash of the training rows + config + feature-set version (first 16 hex digits)."""
    content = io.hash_frame(rows[[S.DATASET_ID, MATERIAL_KEY, S.TASK_TYPE, Y]])
    return io.hash_json({"rows": content, "config": asdict(cfg), "features": FEATURE_SET_VERSION})[:16]


def composition_features(keys, *, with_errors: bool = False):
    """(n, 149) composition features indexed by material key (reduced formulas are valid formulas).

    Rows with missing elemental data keep their NaNs: LightGBM routes missing values itself.
    With ``with_errors`` also returns the featurizer's errors (formula, reason, detail) by key.
    """
    keys = pd.Index(pd.unique(np.asarray(keys, dtype=object)))
    feats, errors = featurize_compositions(pd.Series(keys.to_numpy(), dtype=object))
    feats.index = keys
    errors.index = keys[errors.index.to_numpy(dtype=int)] if len(errors) else keys[:0]
    return (feats, errors) if with_errors else feats


def build_representation(workdir, records: pd.DataFrame, properties: pd.DataFrame,
                         cfg: TransferConfig | None = None, *, exclude_families=(), datasets=None,
                         min_rows: int = 300, features: pd.DataFrame | None = None, log=None
                         ) -> RepresentationResult:
    """Fit (or load from the cache) the representation allowed by ``exclude_families`` / ``datasets``.

    Args:
        workdir: a WorkDir or path.
        records, properties: raw snapshot tables.
        cfg: member model settings.
        exclude_families: no dataset of these families is learned from (leakage control).
        datasets: explicit allow-list of dataset ids.
        features: precomputed composition features indexed by material key (else computed here).
        log: optional callable(str).
    """
    cfg = cfg or TransferConfig()
    rows, _dropped = training_rows(records, properties, exclude_families=exclude_families,
                                   datasets=datasets, min_rows=min_rows)
    extra = {"exclude_families": sorted(exclude_families), "datasets": None if datasets is None else sorted(datasets)}
    return fit_or_load(WorkDir.resolve(workdir), rows, cfg, features=features, log=log, extra=extra)


def fit_or_load(work: WorkDir, rows: pd.DataFrame, cfg: TransferConfig, *, features: pd.DataFrame | None = None,
                log=None, extra: dict | None = None) -> RepresentationResult:
    """The representation of exactly these training rows: loaded from the cache, else fitted and saved."""
    started = time.perf_counter()
    key = representation_key(rows, cfg)
    path = work.representations() / key
    if (path / MANIFEST).exists():
        rep = TransferRepresentation.load(path)
        return RepresentationResult(rep, path, key, False, time.perf_counter() - started, size_on_disk(path))
    if features is None:
        features = composition_features(rows[MATERIAL_KEY].unique())
    with limited(cfg.n_jobs):
        rep = TransferRepresentation(cfg).fit(features, rows, log=log)
    io.clean_stale_tmp(path.parent)
    rep.save(path)
    seconds = time.perf_counter() - started
    io.write_json_atomic(path / MANIFEST, {
        "key": key, "config": asdict(cfg), "feature_set": FEATURE_SET_VERSION, **(extra or {}),
        "members": [asdict(m) for m in rep.members_], "n_rows": len(rows), "fit_seconds": seconds,
    })
    return RepresentationResult(rep, path, key, True, seconds, size_on_disk(path))


def formula_vectors(rep: TransferRepresentation, formulas) -> tuple[np.ndarray, pd.DataFrame]:
    """A consumer's formulas -> ((n, P) vectors, errors). Unparseable formulas get NaN rows and an error.

    Known training materials get their out-of-fold values (the same distribution the few-shot heads
    were evaluated on); new ones the full members' predictions.
    """
    formulas = pd.Series(list(formulas), dtype=object)
    keys = material_keys(formulas)
    reasons = pd.Series(np.where(keys.isna(), UNPARSEABLE, ""), dtype=object)
    out = np.full((len(formulas), len(rep.members_)), np.nan)
    if keys.notna().any():
        feats, feat_errors = composition_features(keys.dropna(), with_errors=True)
        fatal = feat_errors[feat_errors[REASON] != MISSING_DATA][REASON]  # missing data: LightGBM copes
        reasons[keys.isin(fatal.index).to_numpy()] = keys[keys.isin(fatal.index)].map(fatal)
        ok = (reasons == "").to_numpy()
        if ok.any():
            x = feats.loc[keys[ok].to_numpy()].to_numpy(dtype=np.float64)
            out[ok] = rep.represent(keys[ok].to_numpy(), x)
    bad = (reasons != "").to_numpy()
    errors = pd.DataFrame({S.FORMULA: formulas[bad].to_numpy(), REASON: reasons[bad].to_numpy()})
    return out, errors
