"""Shared test setup: quiet, single-threaded, and the real image pools when they are present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedagentbench_cli import quiet_environment

quiet_environment()
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """FEDAGENTBENCH_DATA, else ../shared/datasets beside the checkout; None when neither exists."""
    chosen = os.environ.get("FEDAGENTBENCH_DATA")
    candidates = [Path(chosen)] if chosen else [REPO.parent / "shared" / "datasets"]
    for path in candidates:
        if (path / "SHA256SUMS").is_file():
            return path.resolve()
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path | None:
    return real_data_dir()


@pytest.fixture(scope="session")
def small_envs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path | None) -> Path:
    """All six environments at small scale, seed 0, built once per test session."""
    from environments.builder import build_environment
    from environments.concepts import ENVIRONMENTS

    out = tmp_path_factory.mktemp("small_envs")
    for env in ENVIRONMENTS:
        build_environment(env, "small", 0, out, data_dir)
    return out


@pytest.fixture(scope="session")
def tiny_envs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path | None) -> Path:
    """All six environments at tiny scale, seed 0, built once per test session."""
    from environments.builder import build_environment
    from environments.concepts import ENVIRONMENTS

    out = tmp_path_factory.mktemp("tiny_envs")
    for env in ENVIRONMENTS:
        build_environment(env, "tiny", 0, out, data_dir)
    return out
