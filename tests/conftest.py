"""Shared test setup: quiet, single-threaded, and the real image pools when they are present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedagentbench_cli import quiet_environment
from fl.telemetry import QUIET_ENV

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


@pytest.fixture(scope="session")
def flower_env(tmp_path_factory: pytest.TempPathFactory):
    """Flower's home in a temporary folder; telemetry and update checks off."""
    values = {**QUIET_ENV, "FLWR_HOME": str(tmp_path_factory.mktemp("flwr_home"))}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield values
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


#: what ``algorithm_runs`` trains: every executable algorithm, and FedOpt's other two variants
def trained_algorithms() -> list[str]:
    from fl.registry import query

    return [a.name for a in query(executable=True)] + ["FedYogi", "FedAdagrad"]


@pytest.fixture(scope="session")
def algorithm_runs(tmp_path_factory: pytest.TempPathFactory, flower_env) -> dict:
    """Every executable algorithm, two rounds on the same 4 tiny hospitals, in ONE Flower simulation
    (Ray start-up and the clients' imports cost more than the trainings), with a plan whose clients
    fail in the middle. Returns run tag -> TrainResult, plus ``"_clients"`` -> the hospitals."""
    from fl.runner import TrainConfig, TrainResult, resolve
    from fl.simulation import simulate
    from fl.testing import make_federation

    root = tmp_path_factory.mktemp("algorithms")
    dirs, source = make_federation(root / "data", n_clients=4, per_class=20)
    print(f"federation source: {source}")
    clients = [{"name": f"hospital_{i}", "data_dir": d} for i, d in enumerate(dirs)]
    plans = [
        resolve(TrainConfig(clients=clients, algorithm=name, rounds=2, batch_size=16, out_dir=root / "runs" / name),
                run_tag=name)
        for name in trained_algorithms()
    ]  # fmt: skip
    broken = {**plans[0], "run_tag": "broken", "classes": ["class_0", "no_such_class"],
              "out_dir": str(root / "runs" / "broken")}  # fmt: skip
    plans.insert(len(plans) // 2, broken)
    raw = simulate(plans, [(c["name"], c["data_dir"]) for c in plans[0]["clients"]], workers=1)
    runs: dict = {plan["run_tag"]: TrainResult.model_validate(r) for plan, r in zip(plans, raw)}
    runs["_clients"] = clients
    return runs


def _builds_something(fixturedef) -> bool:
    """A module- or session-wide fixture that writes files (environments, federations, Flower homes)."""
    return fixturedef.scope in ("module", "package", "session") and "tmp_path_factory" in fixturedef.argnames


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that needs a shared fixture which builds something (environments, a
    federation, the all-algorithms simulation), so ``make check`` (``-m "not slow"``) leaves it to
    ``make test`` without anyone having to remember the mark."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = [d for name in getattr(item, "fixturenames", ()) for d in (info.name2fixturedefs.get(name, ()) if info else ())]
        if any(_builds_something(d) for d in defs):
            item.add_marker(pytest.mark.slow)
