"""The scripts are modules of the ``scripts`` package, run from the repository root as
``python -m scripts.<name>``: each one imports and answers ``--help``, none edits ``sys.path`` or
imports from the tests, and no test reaches a script through ``sys.path`` or its file path."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from .conftest import REPO

SCRIPTS = sorted(p.stem for p in (REPO / "scripts").glob("*.py") if p.stem != "__init__")
#: editing the import path, in any form (written so that this file does not match itself)
PATH_EDIT = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend)\b|\+?=)")

#: every script's main under ``--help``, in one interpreter (their imports are shared: a few seconds)
HELP_ALL = """
import contextlib, io, runpy, sys
for name in sys.argv[1:]:
    sys.argv, out, code = [name, "--help"], io.StringIO(), "returned"
    sys.modules.pop(f"scripts.{name}", None)  # imported by another script: run it afresh
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_module(f"scripts.{name}", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code
    print(name, code, out.getvalue().lstrip().startswith("usage:"), flush=True)
"""


def test_every_script_answers_help_as_a_module():
    assert len(SCRIPTS) >= 10, SCRIPTS
    proc = subprocess.run([sys.executable, "-c", HELP_ALL, *SCRIPTS], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:-1] == [f"{name} 0 True" for name in SCRIPTS], proc.stdout + proc.stderr[-3000:]


def test_a_script_module_runs_with_python_m():
    proc = subprocess.run([sys.executable, "-m", "scripts.check_leaks", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "answer key" in proc.stdout, proc.stdout + proc.stderr


def _imports(source: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    return names


def test_no_script_edits_the_import_path_or_imports_the_tests():
    for name in SCRIPTS:
        source = (REPO / "scripts" / f"{name}.py").read_text("utf-8")
        assert not PATH_EDIT.search(source), f"scripts/{name}.py edits sys.path"
        bad = [m for m in _imports(source) if m.split(".")[0] in ("tests", "conftest") or m.startswith("test_")]
        assert not bad, f"scripts/{name}.py imports from the tests: {bad}"


def test_no_test_reaches_a_script_by_path():
    for path in sorted((REPO / "tests").glob("*.py")):
        source = path.read_text("utf-8")
        assert not PATH_EDIT.search(source), f"{path.name} edits sys.path"
        assert not re.search(r"spec_from_file_location\([^)]*scripts", source), f"{path.name} loads a script by path"
        bad = [m for m in _imports(source) if m.split(".")[0] in SCRIPTS]
        assert not bad, f"{path.name}: import scripts as `from scripts import ...`, not {bad}"
