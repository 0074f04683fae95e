"""Offline by default: the telemetry variables have one home (``fl.telemetry.QUIET_ENV``); the command
line and the Flower runtimes set them, and the Makefile and ``.ci/run`` (shell) export the same list."""

from __future__ import annotations

import os
import re

import pytest

from fl.telemetry import QUIET_ENV

from .conftest import REPO


def _exported(path) -> dict[str, str]:
    """The variables of the shell ``export`` statement that sets the first quiet variable (its
    continuation lines joined)."""
    first = next(iter(QUIET_ENV))
    for line in path.read_text("utf-8").replace("\\\n", " ").splitlines():
        words = line.split()
        if words[:1] == ["export"] and any(w.startswith(f"{first}=") for w in words):
            return dict(w.split("=", 1) for w in words[1:])
    return {}


@pytest.mark.parametrize("name", ["Makefile", ".ci/run"])
def test_the_shell_exports_exactly_the_quiet_variables(name):
    path = REPO / name
    assert _exported(path) == QUIET_ENV, f"{name}: make its telemetry export match fl/telemetry.py"
    text = path.read_text("utf-8")
    assert all(len(re.findall(rf"\b{key}\b", text)) == 1 for key in QUIET_ENV), f"{name} sets one twice"


def test_the_readme_lists_them():
    words = set((REPO / "README.md").read_text("utf-8").replace("`", " ").split())
    assert {f"{key}={value}" for key, value in QUIET_ENV.items()} <= words


def test_the_cli_and_the_flower_runtimes_set_every_one(monkeypatch):
    from fedagentbench_cli import quiet_environment
    from fl.deploy import FLWR_ENV
    from fl.simulation import SIMULATION_ENV

    for key in QUIET_ENV:
        monkeypatch.delenv(key, raising=False)
    quiet_environment()
    assert {key: os.environ.get(key) for key in QUIET_ENV} == QUIET_ENV
    assert QUIET_ENV.items() <= FLWR_ENV.items() and QUIET_ENV.items() <= SIMULATION_ENV.items()


def test_no_other_python_file_spells_them_out():
    pattern = re.compile("|".join(rf"\b{key}\b" for key in QUIET_ENV))
    paths = [p for p in REPO.rglob("*.py") if not {".venv", "runs", "out"} & set(p.relative_to(REPO).parts)]
    spelled = [str(p.relative_to(REPO)) for p in paths if pattern.search(p.read_text("utf-8"))]
    assert spelled == ["fl/telemetry.py"]
