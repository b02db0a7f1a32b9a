"""Constructed long score tables for the promotion and registry tests.

Imported as ``score_tables``, found by path through tests/conftest.py (tests/ is not a package).
"""

from __future__ import annotations

import pandas as pd

SETTING = "meta-test-property"


def scores_table(values: dict[str, list[float]], ks=(1, 5), draws: int = 2) -> pd.DataFrame:
    """Long scores: learner -> per-task mae_mad (same for every draw and k, plus a tiny draw jitter)."""
    rows = []
    for learner, per_task in values.items():
        for t, value in enumerate(per_task):
            for draw in range(draws):
                for k in ks:
                    rows.append((f"task{t}", SETTING, "band_gap", k, draw, learner, "mae_mad", value + 1e-4 * draw))
    return pd.DataFrame(rows, columns=["task_id", "setting", "family", "k", "draw", "learner", "metric", "value"])
