"""The layer rules of DESIGN.md, enforced on the source tree's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", files("metalearn"), ids=lambda p: str(p.relative_to(REPO)))
def test_library_imports_no_prefect_and_mlflow_only_in_registry(path):
    roots = imported_roots(path)
    assert "prefect" not in roots and "prefect_dask" not in roots
    assert "tasks" not in roots and "flows" not in roots
    if path.name != "registry.py":
        assert "mlflow" not in roots


@pytest.mark.parametrize("path", files("metalearn/learners") + [REPO / "metalearn" / m for m in
                         ("models.py", "sampling.py", "train.py", "evaluate.py")],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_learning_core_has_no_sources_imports(path):
    if path.exists():
        assert "mp_api" not in imported_roots(path)


@pytest.mark.parametrize("path", files("tasks"), ids=lambda p: str(p.relative_to(REPO)))
def test_tasks_do_not_import_flows(path):
    assert "flows" not in imported_roots(path)


@pytest.mark.parametrize("path", files("flows"), ids=lambda p: str(p.relative_to(REPO)))
def test_flows_compose_tasks_without_torch_or_mlflow(path):
    roots = imported_roots(path)
    assert "torch" not in roots and "mlflow" not in roots
