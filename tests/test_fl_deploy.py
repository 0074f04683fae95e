"""The same apps on Flower's deployment runtime: SuperLink + one SuperNode per hospital, as separate
processes on 127.0.0.1 with ports picked at run time; every process started is stopped by PID."""

from __future__ import annotations

import os

import pytest

from fl.deploy import LocalDeployment, marked_pids
from fl.runner import TrainConfig, TrainResult, resolve
from fl.testing import make_federation


def _alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (already dead, waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_one_round_on_superlink_and_supernodes(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr_home"))
    dirs, _ = make_federation(tmp_path / "data", n_clients=2, per_class=20)
    clients = [{"name": f"hospital_{i}", "data_dir": d} for i, d in enumerate(dirs)]
    plan = resolve(TrainConfig(clients=clients, algorithm="FedBN", rounds=1, out_dir=tmp_path / "run"))
    deployment = LocalDeployment([(c["name"], c["data_dir"]) for c in plan["clients"]], tmp_path / "deploy")
    seen: set[int] = set()
    try:
        deployment.start()
        assert deployment.port not in (None, 2024)
        result = TrainResult.model_validate(deployment.run([plan], timeout=900)[0])
        seen = set(marked_pids(deployment.marker)) | deployment.started_pids  # incl. SuperExec, app processes
        assert len(deployment.started_pids) == 4  # superlink, 2 supernodes, flwr run
    finally:
        left = deployment.stop()
    assert left == []
    assert not [pid for pid in seen if _alive(pid)], "a deployment process survived stop()"
    assert result.status == "completed", result.error
    assert sorted(result.final.clients) == ["hospital_0", "hospital_1"]
    assert result.final.global_.accuracy is not None
    assert os.path.exists(result.result_path)
