"""Fixtures for the source tests: the loopback MP API and an environment that cannot reach the internet."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mp_server as mp_server_module  # tests/mp_server.py, found by path through tests/conftest.py
import pytest

from metalearn.layout import WorkDir


@pytest.fixture
def work(workdir: Path) -> WorkDir:
    """The test's work directory as the WorkDir every ingest function takes."""
    return WorkDir.resolve(workdir)


@pytest.fixture
def offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME (mp-api's dataset cache and ~/.mprester.log.yaml) in a temp dir; no key or endpoint from env."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("MP_API_KEY", "MP_API_ENDPOINT", "PMG_MAPI_KEY"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def mp_server(offline_home: Path) -> Iterator[mp_server_module.MPServer]:
    """A started loopback MP API with 30 real MP documents (10 per kind); stopped after the test."""
    server = mp_server_module.MPServer(mp_server_module.build_documents(10)).start()
    try:
        yield server
    finally:
        server.stop()
