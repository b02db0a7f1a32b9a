"""Champion/challenger: the paired gate a new model version must pass to take the ``champion`` alias.

Pure decisions on score tables; no mlflow here. registry.py fetches the versions and their
scores.csv artifacts, calls :func:`compare_versions` and moves the alias on a pass.

The gate compares two learners on the *same* meta-test draws (task, setting, k, draw): the
candidate passes when the median over tasks of its per-task metric improves on the reference's by
at least ``min_improvement`` (relative) and it wins at least ``min_win_rate`` of the tasks (ties
half). Two versions' draws are the same when their :func:`eval_protocol` hashes match.

Example:
    >>> gate = paired_gate(scores, "fomaml", "mean", RegistryConfig(metric="mae_mad", n_support=5))
    >>> gate["passed"], gate["reason"]
    (True, 'median mae_mad 0.41 vs 0.62 (+33.9%, need >= 1.0%); wins 88% of 40 tasks (need >= 50%)')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from metalearn import io
from metalearn.config import flatten
from metalearn.evaluate.report import HIGHER_IS_BETTER, UNIT_FREE, paired_comparison, per_task

DRAW_KEYS = ["task_id", "setting", "k", "draw", "metric"]


@dataclass(frozen=True)
class RegistryConfig:
    """Where runs go and how a new version earns ``champion``.

    Args:
        tracking_uri: None -> ``$MLFLOW_TRACKING_URI``, else SQLite under the work directory.
        experiment: MLflow experiment of the training runs.
        model_name: registered model name.
        metric / n_support: the paired comparison (``metric`` of the k-shot protocol, at this
            support size).
        min_improvement: relative improvement of the median per-task metric the candidate needs.
        min_win_rate: share of tasks (ties count half) the candidate must win.
        baseline: learner in the scores that the first model ever must beat.
    """

    tracking_uri: str | None = None
    experiment: str = "metalearn"
    model_name: str = "metalearn"
    metric: str = "mae_mad"
    n_support: int = 10
    min_improvement: float = 0.01
    min_win_rate: float = 0.5
    baseline: str = "mean"

    def __post_init__(self) -> None:
        if self.metric not in UNIT_FREE:  # a median of raw MAE over properties would mix units
            raise ValueError(f"registry.metric {self.metric!r} is not one of the unit-free metrics {sorted(UNIT_FREE)}")


def eval_protocol(shards_hash: str, eval_config: Any) -> str:
    """Hash of what fixes the meta-test draws (shards, eval seed and query size): equal -> paired."""
    cfg = flatten("", eval_config) if eval_config is not None else {}
    return io.hash_json({"shards": shards_hash, "seed": cfg.get("seed"), "n_query": cfg.get("n_query")})[:16]


def same_draws(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``a`` and ``b`` (already renamed) restricted to the (task, k, draw, metric) keys both have."""
    common = a[DRAW_KEYS].drop_duplicates().merge(b[DRAW_KEYS].drop_duplicates(), on=DRAW_KEYS)
    return pd.concat([a.merge(common, on=DRAW_KEYS), b.merge(common, on=DRAW_KEYS)], ignore_index=True)


def paired_gate(scores: pd.DataFrame, candidate: str, reference: str, cfg: RegistryConfig) -> dict[str, Any]:
    """The promotion test on a long score table holding both learners on the same draws.

    The candidate passes when the median over tasks of its per-task metric improves on the
    reference's by at least ``cfg.min_improvement`` (relative) and it wins at least
    ``cfg.min_win_rate`` of the tasks (paired, ties half).
    """
    numbers: dict[str, Any] = {"metric": cfg.metric, "n_support": cfg.n_support, "n_tasks": 0}
    at_k = scores[(scores["metric"] == cfg.metric) & (scores["k"] == cfg.n_support)]
    present = set(at_k["learner"])
    if not {candidate, reference} <= present:
        return {**numbers, "passed": False,
                "reason": f"no {cfg.metric} scores at k={cfg.n_support} for {sorted({candidate, reference} - present)}"}
    cmp = paired_comparison(at_k, candidate, reference, cfg.metric, cfg.n_support)
    if cmp.n_tasks == 0:
        return {**numbers, "passed": False, "reason": "no task with finite scores for both on the same draws"}
    table = per_task(at_k)
    wide = table.pivot_table(index="task_id", columns="learner", values="value").loc[cmp.differences.index]
    med_c, med_r = float(np.median(wide[candidate])), float(np.median(wide[reference]))
    sign = 1.0 if HIGHER_IS_BETTER[cfg.metric] else -1.0
    rel = sign * (med_c - med_r) / max(abs(med_r), 1e-12)
    numbers.update(n_tasks=cmp.n_tasks, win_rate=cmp.win_rate, mean_improvement=cmp.mean_improvement,
                   median_candidate=med_c, median_reference=med_r, relative_improvement=rel)
    passed = rel >= cfg.min_improvement and cmp.win_rate >= cfg.min_win_rate
    reason = (f"median {cfg.metric} {med_c:.4g} vs {med_r:.4g} ({rel:+.1%}, need >= {cfg.min_improvement:.1%}); "
              f"wins {cmp.win_rate:.0%} of {cmp.n_tasks} tasks (need >= {cfg.min_win_rate:.0%})")
    return {**numbers, "passed": bool(passed), "reason": reason}


def _scores_learner(version: Any) -> str | None:
    return version.tags.get("metalearn.scores_learner") or version.tags.get("metalearn.learner")


def compare_versions(cand: Any, champ: Any | None, cfg: RegistryConfig,
                     scores_of: Callable[[Any], pd.DataFrame | None]) -> dict[str, Any]:
    """Gate numbers for the candidate version against the champion version (or, with none, the baseline).

    Args:
        cand / champ: registered model versions: anything with ``.version`` and ``.tags`` (the
            ``metalearn.*`` tags log_training_run sets); ``champ`` None when there is no champion.
        scores_of: a version's long score table (its scores.csv artifact), or None if it has none.

    Returns:
        ``{"passed", "compared_to", "reason", ...}`` plus :func:`paired_gate`'s numbers when the
        comparison could be made.
    """
    cand_scores = scores_of(cand)
    if cand_scores is None:
        return {"passed": False, "compared_to": None, "reason": "candidate has no scores.csv artifact"}
    cand_name = _scores_learner(cand)
    ours = cand_scores[cand_scores["learner"] == cand_name].assign(learner="candidate")
    if ours.empty:
        return {"passed": False, "compared_to": None, "reason": f"candidate's scores.csv has no rows of {cand_name!r}"}
    if champ is None:
        compared_to = f"baseline {cfg.baseline}"
        theirs = cand_scores[cand_scores["learner"] == cfg.baseline].assign(learner="reference")
        if theirs.empty:
            return {"passed": False, "compared_to": compared_to,
                    "reason": f"no champion yet and the scores have no {cfg.baseline!r} baseline to beat"}
    else:
        compared_to = f"version {champ.version}"
        p_cand, p_champ = cand.tags.get("metalearn.eval_protocol"), champ.tags.get("metalearn.eval_protocol")
        if p_cand and p_champ and p_cand != p_champ:
            return {"passed": False, "compared_to": compared_to,
                    "reason": f"evaluation protocols differ ({p_cand} vs {p_champ}): the draws are not paired"}
        champ_scores = scores_of(champ)
        if champ_scores is None:
            return {"passed": False, "compared_to": compared_to, "reason": "champion has no scores.csv artifact"}
        theirs = champ_scores[champ_scores["learner"] == _scores_learner(champ)].assign(learner="reference")
    return {"compared_to": compared_to, **paired_gate(same_draws(ours, theirs), "candidate", "reference", cfg)}


def decision_record(cand_version: str, champ_version: str | None, gate: dict[str, Any], cfg: RegistryConfig
                    ) -> dict[str, Any]:
    """The JSON-able outcome of a gate (minus ``model_name``/``version``), as promote returns and tags it."""
    gate = dict(gate)
    decision = "promoted" if gate.pop("passed") else "rejected"
    return {"decision": decision, **gate,
            "champion": cand_version if decision == "promoted" else champ_version,
            "previous_champion": champ_version, "min_improvement": cfg.min_improvement,
            "min_win_rate": cfg.min_win_rate}


def choose_candidate(summary: list[dict[str, Any]], regressors: list[str], cfg: RegistryConfig
                     ) -> tuple[str, dict[str, Any]]:
    """The regressor with the best mean (over meta-test settings) of its median gate metric.

    Args:
        summary: the evaluate stage's summary rows (setting, learner, k, metric, median, ...).
        regressors: candidate names, in order of preference for ties.
    """
    sign = -1.0 if HIGHER_IS_BETTER.get(cfg.metric, False) else 1.0  # lower is better after signing
    evidence: dict[str, float] = {}
    for name in regressors:
        values = [row["median"] for row in summary
                  if row["learner"] == name and row["k"] == cfg.n_support and row["metric"] == cfg.metric
                  and row.get("median") is not None and np.isfinite(row["median"])]
        if values:
            evidence[name] = float(np.mean(values))
    if not evidence:
        return regressors[0], {"reason": f"no {cfg.metric} at n_support={cfg.n_support} in the evaluation; "
                                         "first learner chosen"}
    best = min(evidence, key=lambda n: (sign * evidence[n], regressors.index(n)))
    return best, {"metric": cfg.metric, "n_support": cfg.n_support, "median_by_learner": evidence}
