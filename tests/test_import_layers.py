"""The packages import in one direction: environments and fl at the bottom, then tools, agents,
graphs, then eval and federation, then the entry points (the CLI modules and the Studio graphs).

Every import counts, the ones inside functions included: a function-local import still ties the
layers together, it only hides it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

LAYERS = {"environments": 0, "fl": 0, "tools": 1, "agents": 2, "graphs": 3, "eval": 4, "federation": 4}
ENTRY = 9
#: entry points sit above every layer: the command line and what ``langgraph dev`` loads
ENTRY_MODULES = {"fedagentbench_cli", "fedagentbench_settings", "graphs.studio"}


def layer(module: str) -> int | None:
    if module in ENTRY_MODULES or module.split(".")[0] in ENTRY_MODULES or module.rsplit(".", 1)[-1].endswith("cli"):
        return ENTRY
    return LAYERS.get(module.split(".")[0])


def imports(path: Path) -> list[tuple[str, int]]:
    """Every absolute import in ``path`` (module level and inside functions), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def violations(root: Path = REPO) -> list[str]:
    bad = []
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            mine = layer(module)
            for name, line in imports(path):
                theirs = layer(name)
                if theirs is not None and mine is not None and theirs > mine:
                    bad.append(f"{path.relative_to(root)}:{line}: {module} (layer {mine}) imports {name} "
                               f"(layer {theirs})")
    return sorted(set(bad))


def test_no_module_imports_a_layer_above_its_own():
    assert violations() == []


def test_the_check_sees_function_local_imports(tmp_path):
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "x.py").write_text("def f():\n    from eval.scoring import score_run\n")
    (tmp_path / "graphs").mkdir()
    (tmp_path / "graphs" / "cli.py").write_text("import eval.bench\n")  # an entry point may
    assert violations(tmp_path) == [
        "agents/x.py:2: agents.x (layer 2) imports eval.scoring (layer 4)",
        "agents/x.py:2: agents.x (layer 2) imports eval.scoring.score_run (layer 4)"]
