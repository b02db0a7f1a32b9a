"""Prefect fixtures for the flow tests: one test harness per session (shared with tests/tasks).

The fixtures live in tests/flows/support.py (``flow_support``, found by tests/conftest.py).
"""

from __future__ import annotations

from flow_support import _mlflow_uri_restored, prefect_harness  # noqa: F401  (fixtures)
