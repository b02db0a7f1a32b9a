"""The model's input table and the adapt-and-predict step behind it: featurize, standardise, adapt, predict.

The support/query table is the model's one input format (also the MLflow pyfunc signature, see
registry.py):

    role      "support" | "query"
    formula   str, any pymatgen-parseable formula (may be empty where ``cif`` is given)
    cif       str, optional: a CIF; its composition is used when ``formula`` is empty
    target    float, required on support rows, ignored on query rows (property unit; 0/1 labels)
    task_type optional: "regression" | "classification" (one value for the whole table)

:func:`check_table` validates it (errors name the row). :class:`Predictor` featurizes the formulas
exactly as the shards did (feature set version, meta-train standardisation, NaN -> 0), adapts a
learner on the support rows (regression targets normalised by *support* statistics) and predicts
the query rows. No mlflow here: registry.MetalearnModel wraps a Predictor; consumer.py reads CSVs.

Example:
    >>> p = Predictor.from_files("regressor.pt", "classifier.pt", "feature_stats.parquet", "featurizer.json")
    >>> p.predict_table(table)                    # DataFrame: prediction (+ uncertainty), one row per query row
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metalearn import io

ROLE, FORMULA, CIF, TARGET, TASK_TYPE = "role", "formula", "cif", "target", "task_type"
SUPPORT, QUERY = "support", "query"
TASK_TYPES = ("regression", "classification")
MIN_SUPPORT = 2
FEATURIZER_FILE = "featurizer.json"


# --- the table's checks (consumer.py's CSV path uses them too) ---------------------------------

def cell_text(value: Any) -> str:
    """A cell as stripped text; None and NaN -> ""."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()


def resolve_formulas(formulas: list[Any], cifs: list[Any] | None, where: Callable[[int], str]) -> list[str]:
    """One parseable formula per row (from the CIF where the formula is empty); ValueError names the row."""
    from metalearn.features.composition import parse_formula

    out = []
    for i, raw in enumerate(formulas):
        formula, cif = cell_text(raw), cell_text(cifs[i]) if cifs is not None else ""
        if not formula and cif:
            try:
                from pymatgen.core import Structure

                formula = Structure.from_str(cif, fmt="cif").composition.reduced_formula
            except Exception as err:  # noqa: BLE001  pymatgen raises many types on malformed CIFs
                raise ValueError(f"{where(i)}: the CIF cannot be parsed ({type(err).__name__}: {err})") from None
        if not formula:
            raise ValueError(f"{where(i)}: empty formula (give a formula or a cif)")
        parsed = parse_formula(formula)
        if parsed.reason is not None:
            raise ValueError(f"{where(i)}: formula {formula!r} cannot be used: {parsed.reason} ({parsed.detail})")
        out.append(formula)
    return out


def parse_targets(values: list[Any], where: Callable[[int], str]) -> np.ndarray:
    """Support targets as floats (n,); ValueError names the row of a missing, non-numeric or infinite one."""
    out = np.empty(len(values))
    for i, value in enumerate(values):
        if not cell_text(value):
            raise ValueError(f"{where(i)}: the target is missing; every support row needs one")
        try:
            out[i] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where(i)}: target {value!r} is not a number") from None
        if not math.isfinite(out[i]):
            raise ValueError(f"{where(i)}: target {value!r} is not finite")
    return out


def choose_task_type(y_support: np.ndarray, task_type: str | None, has_classifier: bool = True) -> str:
    """Explicit ``task_type``, else "classification" when every support target is 0 or 1."""
    if task_type is not None and task_type not in TASK_TYPES:
        raise ValueError(f"task_type {task_type!r} is not one of {TASK_TYPES}")
    binary = bool(np.isin(y_support, (0.0, 1.0)).all())
    if task_type == "classification" and not binary:
        raise ValueError("task_type 'classification' needs support targets that are all 0 or 1")
    chosen = task_type or ("classification" if binary else "regression")
    if chosen == "classification" and not has_classifier:
        hint = "" if task_type else " (all support targets are 0/1); pass task_type='regression' to treat them as numbers"
        raise ValueError(f"this model carries no classification learner{hint}")
    return chosen


def _table_task_type(table: pd.DataFrame) -> str | None:
    if TASK_TYPE not in table.columns:
        return None
    values = sorted({cell_text(v).lower() for v in table[TASK_TYPE]} - {""})
    if len(values) > 1:
        raise ValueError(f"the task_type column holds several values {values}; one table is one task")
    return values[0] if values else None


def check_table(table: pd.DataFrame, where: Callable[[int], str] | None = None
                ) -> tuple[np.ndarray, list[str], list[str] | None, np.ndarray]:
    """Validate a support/query table; returns (roles (n,), formulas (n,), cifs or None, support targets (k,))."""
    where = where or (lambda i: f"input row {i}")
    missing = [c for c in (ROLE,) if c not in table.columns]
    if missing or (FORMULA not in table.columns and CIF not in table.columns):
        raise ValueError(f"the input table needs columns 'role' and 'formula' (or 'cif'); it has {list(table.columns)}")
    roles = np.array([cell_text(r).lower() for r in table[ROLE]], dtype=object)
    bad = np.flatnonzero(~np.isin(roles, (SUPPORT, QUERY)))
    if len(bad):
        raise ValueError(f"{where(int(bad[0]))}: role {table[ROLE].iloc[bad[0]]!r} is not 'support' or 'query'")
    n_support, n_query = int((roles == SUPPORT).sum()), int((roles == QUERY).sum())
    if n_support < MIN_SUPPORT:
        raise ValueError(f"the table has {n_support} support row(s); adapting needs at least {MIN_SUPPORT}")
    if n_query == 0:
        raise ValueError("the table has no query rows to predict")
    if TARGET not in table.columns:
        raise ValueError("the table has no 'target' column; support rows need targets")
    cifs = table[CIF].tolist() if CIF in table.columns else None
    formulas = resolve_formulas(table[FORMULA].tolist() if FORMULA in table.columns else [""] * len(table), cifs, where)
    support_pos = np.flatnonzero(roles == SUPPORT)
    y_support = parse_targets(table[TARGET].iloc[support_pos].tolist(), lambda j: where(int(support_pos[j])))
    return roles, formulas, cifs, y_support


# --- the predictor -------------------------------------------------------------------------------

def featurizer_config(feature_stats_path: str | Path) -> dict[str, Any]:
    """What the model must featurize with: the feature set version and the features' names in order."""
    from metalearn.features.plan import FEATURE_SET_VERSION

    names = io.read_parquet(Path(feature_stats_path))["feature"].tolist()
    return {"version": FEATURE_SET_VERSION, "feature_names": names}


def _load_cpu(path: str | Path) -> Any:
    import torch

    from metalearn.learn.learners import load_learner

    hyper = torch.load(path, map_location="cpu", weights_only=False)["state"].get("hyperparams", {})
    # trusted: the file is an artifact of the model being loaded, which already runs this package's code
    return load_learner(path, trusted=True, **({"device": "cpu"} if "device" in hyper else {}))


class Predictor:
    """Adapt-and-predict on a support/query table with a regression and an optional classification learner.

    Args:
        regressor: a regression Learner (targets arrive support-normalised).
        classifier: a classification Learner (0/1 targets, predicts P(y=1)), or None.
        feature_stats: DataFrame feature, mean, std (the shards' meta-train standardisation).
    """

    def __init__(self, regressor: Any, classifier: Any | None, feature_stats: pd.DataFrame) -> None:
        from metalearn.features.plan import composition_feature_names

        self.regressor, self.classifier = regressor, classifier
        self.feature_names: list[str] = feature_stats["feature"].tolist()
        self.mean_ = feature_stats["mean"].to_numpy(np.float64)
        self.std_ = feature_stats["std"].to_numpy(np.float64)
        rest = set(self.feature_names) - set(composition_feature_names())
        self.uses_structure_ = bool(rest)
        if rest:  # only then: building matminer's structure featurizers costs seconds of imports
            from metalearn.features.plan import structure_feature_names

            unknown = sorted(rest - set(structure_feature_names()))
            if unknown:
                raise ValueError(f"feature_stats lists features this metalearn cannot compute: {unknown[:5]}")

    @classmethod
    def from_files(cls, regressor: str | Path, classifier: str | Path | None, feature_stats: str | Path,
                   featurizer: str | Path | None = None) -> Predictor:
        """Rebuild from save_learner files and feature_stats.parquet; checks the feature set version."""
        from metalearn.features.plan import FEATURE_SET_VERSION

        if featurizer is not None:
            carried = json.loads(Path(featurizer).read_text())
            if carried["version"] != FEATURE_SET_VERSION:
                raise ValueError(f"the model was trained on feature set {carried['version']!r}; this metalearn "
                                 f"computes {FEATURE_SET_VERSION!r}: install the matching metalearn version")
        return cls(_load_cpu(regressor), _load_cpu(classifier) if classifier else None,
                   io.read_parquet(Path(feature_stats)))

    def features(self, formulas: list[str], cifs: list[str] | None = None) -> np.ndarray:
        """Standardised features (n, F) float32, computed as the shards do (float32 storage, NaN -> 0)."""
        from metalearn.features.plan import featurize_compositions

        comp, errors = featurize_compositions(pd.Series(formulas, dtype=object))
        frames = [comp]
        if self.uses_structure_:
            frames.append(_structure_features(cifs, len(formulas)))
        table = pd.concat(frames, axis=1)
        failed = comp.isna().all(axis=1).to_numpy()
        if failed.any():
            i = int(np.flatnonzero(failed)[0])
            why = errors.loc[comp.index[i]] if comp.index[i] in errors.index else None
            detail = f"{why['reason']} ({why['detail']})" if why is not None else "no features"
            raise ValueError(f"row {i}: formula {formulas[i]!r} cannot be featurized: {detail}")
        raw = table[self.feature_names].to_numpy(np.float32).astype(np.float64)  # shards store float32
        return np.nan_to_num((raw - self.mean_) / self.std_, nan=0.0).astype(np.float32)

    def predict_table(self, table: pd.DataFrame, task_type: str | None = None, transform: str = "none"
                      ) -> pd.DataFrame:
        """Query-row predictions, in input order: ``prediction`` (+ ``uncertainty`` where the learner has one).

        Args:
            table: role/formula/cif/target/task_type rows (see the module docstring).
            task_type: overrides the table's task_type column; None -> column, else 0/1 detection.
            transform: "none" | "log10": the property's target transform (regression only).
        """
        import torch

        from metalearn.learn.sampling import forward_transform, support_stats

        roles, formulas, cifs, y_support = check_table(table)
        column = _table_task_type(table)
        chosen = choose_task_type(y_support, task_type or column, self.classifier is not None)
        x = torch.as_tensor(self.features(formulas, cifs))
        x_s, x_q = x[roles == SUPPORT], x[roles == QUERY]  # (k, F), (q, F)
        if chosen == "classification":
            state = self.classifier.adapt(x_s, torch.as_tensor(y_support, dtype=torch.float32))
            pred = self.classifier.predict(state, x_q)
            out = {"prediction": pred.mean.detach().cpu().double().numpy()}
            if pred.std is not None:
                out["uncertainty"] = pred.std.detach().cpu().double().numpy()
            return pd.DataFrame(out)
        y_s = torch.as_tensor(forward_transform(y_support, transform), dtype=torch.float32)
        mean, std = support_stats(y_s)
        state = self.regressor.adapt(x_s, (y_s - mean) / std)
        pred = self.regressor.predict(state, x_q)
        mu = (pred.mean.detach().double() * std.double() + mean.double()).cpu().numpy()
        sd = None if pred.std is None else (pred.std.detach().double() * std.double()).cpu().numpy()
        if transform == "log10":  # back to the unit; the std by the delta method
            mu = np.power(10.0, mu)
            sd = None if sd is None else np.log(10.0) * mu * sd
        return pd.DataFrame({"prediction": mu} if sd is None else {"prediction": mu, "uncertainty": sd})


def _structure_features(cifs: list[str] | None, n: int) -> pd.DataFrame:
    """Structure features from CIFs where given (NaN rows elsewhere, as the shards have for no structure)."""
    from pymatgen.core import Structure

    from metalearn.features.plan import featurize_structures

    jsons = [Structure.from_str(c, fmt="cif").to_json() if cell_text(c) else None for c in (cifs or [None] * n)]
    return featurize_structures(jsons)[0]


__all__ = ["CIF", "FEATURIZER_FILE", "FORMULA", "MIN_SUPPORT", "QUERY", "ROLE", "SUPPORT", "TARGET",
           "TASK_TYPE", "TASK_TYPES", "Predictor", "cell_text", "check_table", "choose_task_type",
           "featurizer_config", "parse_targets", "resolve_formulas"]
