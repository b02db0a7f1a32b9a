"""Prefect fixtures for the flow tests: one test harness per session (shared with tests/tasks)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def load_support():
    """tests/ is not a package: load tests/flows/support.py by path, once."""
    if "flow_support" not in sys.modules:
        spec = importlib.util.spec_from_file_location("flow_support", Path(__file__).with_name("support.py"))
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["flow_support"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules["flow_support"]


support = load_support()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect database and server for the session (~10 s once, then ~1 s per flow)."""
    support.harness_start()
    yield
    support.harness_stop()


@pytest.fixture(autouse=True)
def _mlflow_uri_restored() -> Iterator[None]:
    with support.kept_env("MLFLOW_TRACKING_URI"):
        yield
