"""Prefect fixtures for the task tests: the session's one test harness (see tests/flows/support.py)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def load_support():
    if "flow_support" not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "flows" / "support.py"
        spec = importlib.util.spec_from_file_location("flow_support", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["flow_support"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules["flow_support"]


support = load_support()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    support.harness_start()
    yield
    support.harness_stop()


@pytest.fixture(autouse=True)
def _mlflow_uri_restored() -> Iterator[None]:
    with support.kept_env("MLFLOW_TRACKING_URI"):
        yield
