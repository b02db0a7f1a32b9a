"""Adapt on a task's support rows, predict its query rows: featurize, standardise, adapt, predict.

:class:`Predictor` featurizes formulas exactly as the shards did (the featurizer the model carries,
meta-train standardisation, NaN -> 0), adapts a learner on the support rows once
(:meth:`Predictor.adapt`, regression targets normalised by *support* statistics in float64, so
targets beyond float32 such as 1e39 stay finite) and predicts query rows in chunks of bounded
size (:meth:`AdaptedTask.predict_rows`). A query formula the features stage would have refused
(``Og``: missing element data) is refused here with the same reason, and a prediction is never
non-finite: such a row is an error naming it. No mlflow here (see local_model.py, registry.py).

Example:
    >>> p = Predictor.from_files("regressor.pt", "classifier.pt", "feature_stats.parquet", "featurizer.json")
    >>> p.predict_table(table)          # DataFrame: formula, prediction (+ uncertainty), one row per query row
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metalearn import io
from metalearn.chemistry import reduced_formula
from metalearn.features.composition import FEATURE_SET_VERSION
from metalearn.features.structure import featurize_structures
from metalearn.predict.featurizer import TABLES_FILE, CarriedFeaturizer, stage_featurize
from metalearn.predict.table import FORMULA, InputError, Task, check_table, choose_task_type

PREDICT_BATCH = 256  # query rows per learner call, padded to exactly this: same shapes, same bits
CHUNK_ROWS = 80 * PREDICT_BATCH  # query rows featurized and predicted at once: bounds memory for any query size
MEMO_ROWS = 50_000  # standardised feature rows remembered across chunks (~30 MB)
_SCALE_ABOVE = 1e150  # support targets this large are scaled before their variance is taken

Where = Callable[[int], str]


def _load_cpu(path: str | Path) -> Any:
    import torch

    from metalearn.learn.learners import load_learner  # deferred: torch (1-2 s); bad input fails before it

    hyper = torch.load(path, map_location="cpu", weights_only=False)["state"].get("hyperparams", {})
    # trusted: the file is an artifact of the model being loaded, which already runs this package's code
    return load_learner(path, trusted=True, **({"device": "cpu"} if "device" in hyper else {}))


def reads_representation(learner: Any) -> bool:
    """Whether ``learner`` reads the transfer representation's vectors (heads, ``<meta-learner>_rep``)."""
    if learner is None:
        return False
    from metalearn.learn.learners import uses_representation  # deferred: torch, as in _load_cpu

    return uses_representation(learner.name)


def support_stats64(y: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Mean, std (ddof 0, floored) and the normalised targets of a support set, in float64.

    Targets up to float64's limit (1.8e308) stay finite: beyond 1e150 they are scaled before the
    variance is taken and before the mean is subtracted.
    """
    from metalearn.learn.sampling import STD_FLOOR  # deferred: torch (1-2 s), as in _load_cpu

    scale = float(np.max(np.abs(y)))
    if scale <= _SCALE_ABOVE:
        mean, std = float(np.mean(y)), max(float(np.std(y)), STD_FLOOR)
        return mean, std, (y - mean) / std
    z = y / scale
    mean_z = float(np.mean(z))
    std_z = max(float(np.std(z)), STD_FLOOR / scale, float(np.finfo(np.float64).tiny))  # a constant support too
    return mean_z * scale, std_z * scale, (z - mean_z) / std_z


@dataclass
class AdaptedTask:
    """A learner adapted to one support set; predicts query feature rows in the property's unit."""

    learner: Any
    state: Any
    task_type: str
    transform: str
    mean: float = 0.0  # support statistics of the (transformed) regression targets
    std: float = 1.0
    y_max: float = 0.0

    def predict(self, x_query: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """x_query (q, F) float32 -> prediction (q,) and uncertainty (q,) or None, float64.

        The learner sees batches of exactly PREDICT_BATCH rows (the last one padded with zeros):
        BLAS picks its kernels by shape, so a row's value then depends only on its position modulo
        PREDICT_BATCH, and chunks that start at multiples of it give bit-identical results.
        """
        import torch

        mus, sds = [], []
        for start in range(0, len(x_query), PREDICT_BATCH):
            block = x_query[start:start + PREDICT_BATCH]
            n = len(block)
            if n < PREDICT_BATCH:
                block = np.concatenate([block, np.zeros((PREDICT_BATCH - n, block.shape[1]), block.dtype)])
            pred = self.learner.predict(self.state, torch.as_tensor(block))
            mus.append(pred.mean.detach().cpu().double().numpy()[:n])
            sds.append(None if pred.std is None else pred.std.detach().cpu().double().numpy()[:n])
        mu = np.concatenate(mus) if mus else np.empty(0)
        sd = None if not sds or sds[0] is None else np.concatenate(sds)
        if self.task_type == "classification":
            return mu, sd
        with np.errstate(over="ignore", invalid="ignore"):
            mu = mu * self.std + self.mean
            sd = None if sd is None else sd * self.std
            if self.transform == "log10":  # back to the unit; the std by the delta method
                mu = np.power(10.0, mu)
                sd = None if sd is None else mu * (np.log(10.0) * sd)
        return mu, sd

    def check_finite(self, mu: np.ndarray, sd: np.ndarray | None, formulas: Sequence[str], where: Where) -> None:
        """InputError naming the first query row whose prediction or uncertainty is not finite."""
        bad = ~np.isfinite(mu) if sd is None else ~(np.isfinite(mu) & np.isfinite(sd))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            what = "prediction" if not math.isfinite(mu[i]) else "uncertainty"
            raise InputError(f"{where(i)}: the {what} for {formulas[i]!r} is not finite (it overflows float64: "
                             f"the support targets reach {self.y_max:.3g}); express the targets in a unit "
                             "that keeps them smaller")


class Predictor:
    """Adapt-and-predict with a regression and an optional classification learner.

    Args:
        regressor: a regression Learner (targets arrive support-normalised).
        classifier: a classification Learner (0/1 targets, predicts P(y=1)), or None.
        feature_stats: DataFrame feature, mean, std (the shards' meta-train standardisation).
        featurizer: the featurizer the model carries; None: the features stage's own (matminer).
        representation: the transfer representation, for a regressor that reads its vectors
            (``learner.name`` in REPRESENTATION_LEARNERS): a formula's vector is its members'
            out-of-fold value where it was a training material, else their prediction; standardised.
    """

    def __init__(self, regressor: Any, classifier: Any | None, feature_stats: pd.DataFrame,
                 featurizer: CarriedFeaturizer | None = None, representation: Any | None = None) -> None:
        self.regressor, self.classifier, self.featurizer = regressor, classifier, featurizer
        self.representation = representation
        for role, learner in (("regressor", regressor), ("classifier", classifier)):
            if reads_representation(learner) and representation is None:
                raise ValueError(f"{role} {learner.name!r} reads the transfer representation, which the model "
                                 "does not carry")
        self.feature_names: list[str] = feature_stats["feature"].tolist()
        self.mean_ = feature_stats["mean"].to_numpy(np.float64)
        self.std_ = feature_stats["std"].to_numpy(np.float64)
        if featurizer is not None and featurizer.feature_names != self.feature_names:
            raise ValueError("the model's featurizer.json and feature_stats.parquet list different features")
        self._memo: OrderedDict[tuple, np.ndarray] = OrderedDict()

    @classmethod
    def from_files(cls, regressor: str | Path, classifier: str | Path | None, feature_stats: str | Path,
                   featurizer: str | Path | None = None, tables: str | Path | None = None,
                   representation: str | Path | None = None) -> Predictor:
        """Rebuild from save_learner files, feature_stats.parquet, the carried featurizer and representation."""
        carried = None
        if featurizer is not None and (tables is not None or Path(featurizer).with_name(TABLES_FILE).exists()):
            carried = CarriedFeaturizer.from_files(featurizer, tables)
        elif featurizer is not None:
            _check_version(Path(featurizer))
        rep = None
        if representation is not None:
            # deferred: lightgbm, needed only by a model whose regressor is a head on the representation
            from metalearn.represent.transfer import TransferRepresentation

            rep = TransferRepresentation.load(representation)
        return cls(_load_cpu(regressor), _load_cpu(classifier) if classifier else None,
                   io.read_parquet(Path(feature_stats)), carried, rep)

    # --- features ---

    def _raw(self, formulas: list[str], cifs: list[str | None] | None, where: Where) -> np.ndarray:
        """Unstandardised features (n, F) of distinct rows; InputError names a row the stage would refuse."""
        if self.featurizer is not None:
            values, errors = self.featurizer.featurize(formulas)
            names = self.featurizer.names
        else:
            values, errors, names = stage_featurize(formulas)
        if errors:
            i, reason, detail = errors[0]
            raise InputError(f"{where(i)}: formula {formulas[i]!r} cannot be used: {reason} ({detail})")
        frame = pd.DataFrame(values, columns=names)
        missing = [n for n in self.feature_names if n not in frame.columns]
        if missing:
            frame = pd.concat([frame, self._structure(cifs, len(formulas), missing, where)], axis=1)
        return frame[self.feature_names].to_numpy(np.float32)  # shards store float32

    def _structure(self, cifs: list[str | None] | None, n: int, names: list[str], where: Where) -> pd.DataFrame:
        """Structure features from CIFs where given; NaN rows elsewhere (as the shards have for no structure)."""
        if not cifs or not any(cifs):
            return pd.DataFrame(np.nan, index=range(n), columns=names)
        from pymatgen.core import Structure

        jsons = [Structure.from_str(c, fmt="cif").to_json() if c else None for c in cifs]
        frame, errors = featurize_structures(jsons)
        if len(errors):
            i = int(errors.index[0])
            raise InputError(f"{where(i)}: the structure cannot be featurized: {errors.at[i, 'reason']} "
                             f"({errors.at[i, 'detail']})")
        return frame[names]

    def features(self, formulas: Sequence[str], cifs: Sequence[str | None] | None = None,
                 where: Where | None = None) -> np.ndarray:
        """Standardised features (n, F) float32, each distinct (formula, cif) featurized once."""
        where = where or (lambda i: f"row {i + 1} (1-based)")
        keys = [(f, cifs[i] if cifs is not None else None) for i, f in enumerate(formulas)]
        out = np.empty((len(keys), len(self.feature_names)), dtype=np.float32)
        todo: dict[tuple, list[int]] = {}
        for i, key in enumerate(keys):
            row = self._memo.get(key)
            if row is not None:
                out[i] = row
            else:
                todo.setdefault(key, []).append(i)
        if todo:
            first = [rows[0] for rows in todo.values()]
            new_cifs = [k[1] for k in todo] if cifs is not None else None
            raw = self._raw([k[0] for k in todo], new_cifs, lambda j: where(first[j]))
            std = np.nan_to_num((raw.astype(np.float64) - self.mean_) / self.std_, nan=0.0).astype(np.float32)
            for (key, rows), row in zip(todo.items(), std):
                out[rows] = row
                self._memo[key] = row
            while len(self._memo) > MEMO_ROWS:
                self._memo.popitem(last=False)
        return out

    def inputs(self, learner: Any, formulas: Sequence[str], cifs: Sequence[str | None] | None = None,
               where: Where | None = None) -> np.ndarray:
        """What ``learner`` reads for these rows: its representation vectors, or the standardised features."""
        if not reads_representation(learner):
            return self.features(formulas, cifs, where)
        where = where or (lambda i: f"row {i + 1} (1-based)")
        distinct = list(dict.fromkeys(formulas))
        first = {f: i for i, f in reversed(list(enumerate(formulas)))}
        raw = self._raw(distinct, None, lambda j: where(first[distinct[j]]))  # refuses what the stage refuses
        rep = self.representation
        names = rep.feature_names_
        x = pd.DataFrame(raw, columns=self.feature_names)[names].to_numpy(np.float64)
        keys = [reduced_formula(f) for f in distinct]
        z = rep.standardise(rep.represent(keys, x)).astype(np.float32)
        at = {f: j for j, f in enumerate(distinct)}
        return z[[at[f] for f in formulas]]

    # --- adapt and predict ---

    def adapt(self, task: Task, task_type: str | None = None, transform: str = "none",
              where: Where | None = None) -> AdaptedTask:
        """Adapt the right learner on the task's support rows (once; query rows follow in chunks)."""
        import torch

        from metalearn.learn.sampling import forward_transform  # deferred: torch (1-2 s), as in _load_cpu

        if transform not in ("none", "log10"):
            raise InputError(f"transform {transform!r} is not one of ('none', 'log10')")
        chosen = choose_task_type(task.y_support, task_type or task.task_type, self.classifier is not None)
        named = where or (lambda i: f"support row {i + 1} (1-based)")
        rows = task.support_rows or list(range(len(task.support_formulas)))

        def where(i: int) -> str:  # a kept support row, named by its place in the input
            return named(rows[i])

        learner = self.classifier if chosen == "classification" else self.regressor
        x_s = torch.as_tensor(self.inputs(learner, task.support_formulas, task.support_cifs, where))  # (k, F)
        if chosen == "classification":
            state = self.classifier.adapt(x_s, torch.as_tensor(task.y_support, dtype=torch.float32))
            return AdaptedTask(self.classifier, state, chosen, "none")
        if transform == "log10" and np.any(task.y_support <= 0):
            i = int(np.flatnonzero(task.y_support <= 0)[0])
            raise InputError(f"{where(i)}: target {task.y_support[i]:g} is not positive; the log10 transform needs "
                             "strictly positive targets")
        if getattr(self.regressor, "wants_raw_targets", False):  # a head takes the unit and picks its own transform
            state = self.regressor.adapt(x_s, torch.as_tensor(np.asarray(task.y_support, np.float64)))
            return AdaptedTask(self.regressor, state, chosen, "none", 0.0, 1.0, float(np.max(np.abs(task.y_support))))
        y = np.asarray(forward_transform(task.y_support, transform), dtype=np.float64)
        mean, std, y_norm = support_stats64(y)
        y_norm = torch.as_tensor(y_norm, dtype=torch.float32)
        state = self.regressor.adapt(x_s, y_norm)
        return AdaptedTask(self.regressor, state, chosen, transform, mean, std, float(np.max(np.abs(task.y_support))))

    def predict_rows(self, adapted: AdaptedTask, formulas: Sequence[str], cifs: Sequence[str | None] | None,
                     where: Where) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions (q,) and uncertainties (q,) or None for one chunk of query rows, all finite.

        A chunk should start at a multiple of PREDICT_BATCH (see :func:`aligned_chunk`).
        """
        x_q = self.inputs(adapted.learner, formulas, cifs, where)
        mu, sd = adapted.predict(x_q)
        adapted.check_finite(mu, sd, formulas, where)
        return mu, sd

    def predict_table(self, table: pd.DataFrame, task_type: str | None = None, transform: str = "none",
                      chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
        """Query-row predictions in input order: ``formula``, ``prediction`` (+ ``uncertainty``).

        Args:
            table: role/formula/cif/target/task_type rows (see metalearn.predict.table).
            task_type: overrides the table's task_type column; None -> column, else 0/1 detection.
            transform: "none" | "log10": the property's target transform (regression only).
            chunk_rows: query rows per featurize+predict step (the result does not depend on it).
        """
        task = check_table(table)
        adapted = self.adapt(task, task_type, transform)
        chunk_rows = aligned_chunk(chunk_rows)
        mus, sds = [], []
        for start in range(0, len(task.query_formulas), chunk_rows):
            stop = start + chunk_rows
            cifs = task.query_cifs[start:stop] if task.query_cifs is not None else None
            mu, sd = self.predict_rows(adapted, task.query_formulas[start:stop], cifs,
                                       lambda i, s=start: f"query row {s + i + 1} (1-based)")
            mus.append(mu)
            sds.append(sd)
        out = pd.DataFrame({FORMULA: task.query_formulas, "prediction": np.concatenate(mus)})
        if sds[0] is not None:
            out["uncertainty"] = np.concatenate(sds)
        return out


def aligned_chunk(chunk_rows: int) -> int:
    """``chunk_rows`` rounded up to a multiple of PREDICT_BATCH, so chunking never changes a result."""
    return max(1, -(-int(chunk_rows) // PREDICT_BATCH)) * PREDICT_BATCH


def _check_version(featurizer: Path) -> None:
    carried = json.loads(featurizer.read_text())["version"]
    if carried != FEATURE_SET_VERSION:
        raise ValueError(f"the model was trained on feature set {carried!r}; this metalearn computes "
                         f"{FEATURE_SET_VERSION!r}: install the matching metalearn version")


__all__ = ["CHUNK_ROWS", "PREDICT_BATCH", "AdaptedTask", "Predictor", "aligned_chunk", "support_stats64"]
