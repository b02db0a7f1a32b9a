"""Prefect fixtures for the task tests: the session's one test harness (see tests/flows/support.py)."""

from __future__ import annotations

from flow_support import _mlflow_uri_restored, prefect_harness  # noqa: F401  (fixtures)
