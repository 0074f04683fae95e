"""The dry run before a launch (fl.preflight): one round of the chosen algorithm on synthetic data
of the federation's shape, in-process; a failure stops launch_training before any site trains."""

from __future__ import annotations

import json
import re
import time

import pytest

from fl import preflight as pf
from fl.runner import _hyperparameters


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test sees its own verdicts (one test breaks FedAvg in-process)."""
    pf.clear_cache()
    yield
    pf.clear_cache()


def _plan(algorithm: str, channels: int = 1, image_size: int = 64, n_classes: int = 2, sites: int = 2) -> dict:
    """A plan as fl.runner.resolve returns it, without data folders (the dry run needs none)."""
    name, hp = _hyperparameters(algorithm, {})
    return {"run_tag": "0", "algorithm": name, "hp": hp, "classes": [f"class_{k}" for k in range(n_classes)],
            "clients": [{"name": f"hospital_{i}", "data_dir": "/nowhere"} for i in range(sites)],
            "channels": channels, "image_size": image_size, "rounds": 5, "local_epochs": 1, "batch_size": 32,
            "lr": 0.01, "momentum": 0.9, "seed": 0, "val_fraction": 0.2, "max_images": None, "fraction_train": 1.0,
            "timeout_s": 3600.0, "out_dir": "/nowhere/out"}  # fmt: skip


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("algorithm", ["FedAvg", "SCAFFOLD", "FedProto", "Ditto"])
def test_real_algorithms_pass_the_dry_run(algorithm, channels):
    result = pf.preflight(_plan(algorithm, channels, image_size=32 if channels == 3 else 64, n_classes=3))
    assert result.ok, result.error
    assert result.algorithm == algorithm and not result.cached and result.seconds > 0


def test_a_second_identical_check_is_free_and_another_shape_is_not():
    first = pf.preflight(_plan("FedAvg"))
    start = time.perf_counter()
    again = pf.preflight({**_plan("FedAvg"), "out_dir": "/elsewhere", "rounds": 50})  # rounds: not in the key
    assert first.ok and again.ok and again.cached and time.perf_counter() - start < 0.05
    assert not pf.preflight(_plan("FedAvg", channels=3)).cached


def test_a_client_that_raises_fails_the_check_with_where_and_why(monkeypatch):
    from fl.algorithms import client_algorithm

    def broken(self, received, config):
        raise RuntimeError("local training exploded")

    monkeypatch.setattr(client_algorithm("FedAvg"), "train", broken)
    result = pf.preflight(_plan("FedAvg"))
    assert not result.ok and not pf._PASSED
    assert re.search(r"^the client code failed during training on synthetic site \d: ", result.error)
    assert "RuntimeError: local training exploded" in result.error and "tests/test_preflight.py" in result.error


def test_a_server_that_raises_fails_the_check(monkeypatch):
    import fl.strategies

    def broken(*args, **kwargs):
        raise ValueError("no round-1 arrays")

    monkeypatch.setattr(fl.strategies, "initial_arrays", broken)
    result = pf.preflight(_plan("SCAFFOLD"))
    assert not result.ok and result.error.startswith("the server side failed: ValueError: no round-1 arrays")


def test_the_dry_run_leaves_flowers_identity_of_a_running_serverapp_alone(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 77), ("_node_id", 5), ("_task_id", 9)):
        monkeypatch.setattr(TaskIdentity, name, value)
    assert pf.preflight(_plan("FedAvg")).ok
    assert (TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id) == (77, 5, 9)


def test_the_dry_run_leaves_torchs_global_generator_as_it_found_it():
    """The clients reseed it; a real plan in this process draws its starting weights from it."""
    import torch

    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    assert pf.preflight(_plan("Ditto")).ok
    assert torch.equal(torch.rand(4), expected)


# ---- launch_training ---------------------------------------------------------------------------


@pytest.fixture
def federation(tmp_path):
    from fl.testing import make_federation

    dirs, _ = make_federation(tmp_path / "data", n_clients=2, per_class=6)
    return {f"hospital_{i}": d for i, d in enumerate(dirs)}


def _launch(tmp_path, clients, algorithm: str = "FedAvg") -> tuple[str, dict | None]:
    from tools.training import build_training_tools

    launch = build_training_tools(tmp_path / "work", clients)[0]
    reply = launch.invoke({"algorithm": algorithm})
    path = tmp_path / "work" / "result.json"
    return reply, json.loads(path.read_text()) if path.is_file() else None


def test_a_broken_algorithm_stops_the_launch_before_any_site_trains(tmp_path, federation, monkeypatch):
    import tools.training
    from fl.algorithms import client_algorithm
    from graphs.phases import read_training_status

    def broken(self, received, config):
        raise RuntimeError("local training exploded")

    def never(*args, **kwargs):
        pytest.fail("the real training started although the dry run failed")

    monkeypatch.setattr(client_algorithm("FedAvg"), "train", broken)
    monkeypatch.setattr(tools.training, "_train", never)
    reply, result = _launch(tmp_path, federation)
    assert reply.startswith("error: the dry run of FedAvg failed before any site trained: the client code failed")
    assert "local training exploded" in reply
    assert result["status"] == "preflight_failed" and "local training exploded" in result["error"]
    assert result["clients"] == sorted(federation) and result["rounds"] == [] and result["preflight_s"] >= 0
    status = read_training_status(tmp_path / "work")
    assert status.status == "preflight_failed" and not status.completed and status.algorithm == "FedAvg"


def test_a_good_algorithm_goes_on_to_train_with_the_dry_runs_time(tmp_path, federation, monkeypatch):
    """The real training after a passing dry run is the workflow tests' (tests/test_workflow.py)."""
    import tools.training

    calls = []

    def fake_train(config, fingerprint):
        calls.append(config.algorithm)
        return {"status": "completed", "algorithm": "FedAvg", "rounds": [{}], "final": {"global": {"accuracy": 0.5}}}

    monkeypatch.setattr(tools.training, "_train", fake_train)
    reply, result = _launch(tmp_path, federation)
    assert calls == ["FedAvg"] and reply.startswith("training finished. status: completed")
    assert result["status"] == "completed" and result["preflight_s"] > 0

