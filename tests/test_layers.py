"""The house rules of docs/DESIGN.md, read from the source tree's imports (lazy and TYPE_CHECKING ones too).

Every rule names the modules it governs; a module it names that does not exist fails the test, so a
rename cannot make a rule vacuous.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("metalearn", "tasks", "flows")

# The stage folders in the order the data flows: each may import only the leaves and earlier stages.
LEAVES = ("metalearn.config", "metalearn.schema", "metalearn.io", "metalearn.layout", "metalearn.chemistry",
          "metalearn.secrets", "metalearn.worklock", "metalearn.threads")
STAGES = ("metalearn.ingest", "metalearn.features", "metalearn.shards", "metalearn.represent",
          "metalearn.learn", "metalearn.evaluate", "metalearn.predict")
# Top-level modules above the stages, lowest first: pipeline knows every stage's config, run_record
# what a run carries, registry the MLflow side.
UPPER = ("metalearn.pipeline", "metalearn.run_record", "metalearn.registry")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


MODULES = source_files()


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at function level) for every import, resolved to a module of MODULES.

    A function-level import whose line (or the line above) says ``deferred`` is a documented
    exception (a heavy optional dependency loaded only where needed) and counts as not lazy.
    """
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        lazy, up = False, parents.get(node)
        while up is not None:
            lazy = lazy or isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef))
            up = parents.get(up)
        context = " ".join(lines[max(node.lineno - 2, 0):node.lineno])
        lazy = lazy and "deferred" not in context
        for name in names:
            target = name if name in MODULES else None
            if target is None and name.rsplit(".", 1)[0] in MODULES and "." in name:
                continue  # `from pkg.mod import symbol`: the module itself is also in names
            if target:
                found.append((target, node.lineno, lazy))
    return found


def third_party_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def rank(module: str) -> tuple[int, int]:
    """(layer, position): leaves 0, stages 1 in data-flow order, upper modules 2, tasks 3, flows 4."""
    if module.startswith("flows"):
        return 4, 0
    if module.startswith("tasks"):
        return 3, 0
    for i, name in enumerate(UPPER):
        if module == name:
            return 2, i
    for i, name in enumerate(STAGES):
        if module == name or module.startswith(name + "."):
            return 1, i
    return 0, 0


def test_every_named_module_exists():
    missing = [m for m in LEAVES + STAGES + UPPER if m not in MODULES]
    assert not missing, f"modules named by the layer rules do not exist: {missing}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("metalearn")))
def test_library_imports_no_prefect_and_mlflow_only_in_registry(module):
    roots = third_party_roots(MODULES[module])
    assert not roots & {"prefect", "prefect_dask", "tasks", "flows"}, roots
    if module != "metalearn.registry":
        assert "mlflow" not in roots


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(("metalearn.learn", "metalearn.evaluate",
                                                                              "metalearn.represent"))))
def test_learning_core_has_no_sources_imports(module):
    assert "mp_api" not in third_party_roots(MODULES[module])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_arrows_point_down(module):
    """A module imports only modules of a lower layer, an earlier stage, or its own stage folder."""
    mine = rank(module)
    for target, line, _ in imports_of(MODULES[module]):
        theirs = rank(target)
        same_stage = mine[0] == theirs[0] == 1 and mine[1] == theirs[1]
        same_layer_ok = mine[0] == theirs[0] and mine[0] in (0, 3, 4)  # leaves, tasks, flows among themselves
        assert theirs < mine or same_stage or same_layer_ok, \
            f"{module}:{line} imports {target}, which is not below it"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_level_imports_of_the_project(module):
    lazy = [(t, line) for t, line, is_lazy in imports_of(MODULES[module]) if is_lazy]
    assert not lazy, f"{module} imports project modules inside functions: {lazy}"


def test_no_import_circles():
    graph = {m: {t for t, _, _ in imports_of(p) if t != m} for m, p in MODULES.items()}
    # `from pkg import mod` makes pkg/__init__ an edge too: __init__ files here hold no imports.
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_the_cycle_detector_finds_a_planted_circle(tmp_path, monkeypatch):
    """The circle test must be able to fail: plant a two-module circle and run its detector."""
    pkg = tmp_path / "metalearn"
    pkg.mkdir()
    (pkg / "a.py").write_text("from metalearn import b\n")
    (pkg / "b.py").write_text("def f():\n    from metalearn.a import x\n")
    planted = {module_name_in(tmp_path, p): p for p in pkg.glob("*.py")}
    monkeypatch.setattr(__import__(__name__), "MODULES", planted)
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    with pytest.raises(AssertionError, match="import circles"):
        test_no_import_circles()


def module_name_in(root: Path, path: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("tasks")))
def test_tasks_do_not_import_flows(module):
    assert "flows" not in third_party_roots(MODULES[module])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("flows")))
def test_flows_compose_tasks_without_torch_or_mlflow(module):
    roots = third_party_roots(MODULES[module])
    assert "torch" not in roots and "mlflow" not in roots
