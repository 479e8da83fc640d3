"""The ASR plugin's modules import one way: each imports alone in a fresh interpreter, and
the graph of imports between them (lazy ones inside functions included) has no cycle."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "plugins" / "kdtool_asr"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _imports_of(module: str) -> set[str]:
    """The sibling modules ``module`` imports anywhere in its source (TYPE_CHECKING included)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                out.update(a.name for a in node.names)
            elif node.level == 0 and (node.module or "").startswith("kdtool_asr."):
                out.add(node.module.split(".")[1])  # type: ignore[union-attr]
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("kdtool_asr."))
    return out & set(MODULES)


def test_modules_are_found() -> None:
    assert {"task", "subnets", "models", "decoding"} <= set(MODULES)


def test_imports_between_asr_modules_have_no_cycle() -> None:
    graph = {m: _imports_of(m) for m in MODULES}
    assert "task" not in graph["subnets"], "subnets imports task: the subnet tools must not need the task"
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle in kdtool_asr: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "plugins"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", f"import kdtool_asr.{module}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"import kdtool_asr.{module} failed alone:\n{done.stderr[-2000:]}"
