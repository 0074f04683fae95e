"""Simulation attached to a running Ray cluster (``--ray-address`` / FEDAGENTBENCH_RAY_ADDRESS)
instead of a Ray of its own."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from fl.deploy import MARKER, free_port, marked_pids
from fl.runner import TrainConfig, resolve
from fl.simulation import RAY_ADDRESS_ENV, backend_config, simulate
from fl.telemetry import QUIET_ENV
from fl.testing import make_federation


def test_backend_config_attaches_only_when_an_address_is_given(monkeypatch):
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    local = backend_config(4, workers=2)["init_args"]
    assert "address" not in local and local["num_cpus"] == 2  # default: a local Ray of its own, sized here
    monkeypatch.setenv(RAY_ADDRESS_ENV, "10.0.0.5:6379")
    from_env = backend_config(4, workers=2)["init_args"]
    assert from_env["address"] == "10.0.0.5:6379"
    assert not {"num_cpus", "num_gpus", "object_store_memory"} & set(from_env)  # Ray refuses these when attaching
    assert backend_config(4, ray_address="127.0.0.1:7000")["init_args"]["address"] == "127.0.0.1:7000"


def _stop_cluster(marker: str) -> list[int]:
    """End the head's processes (GCS, raylet, workers...) by PID: ``ray stop`` would end every Ray
    on the machine, other users' included."""
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        for pid in marked_pids(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while marked_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
    return marked_pids(marker)


@pytest.mark.slow
def test_simulation_runs_on_the_given_ray_cluster(tmp_path, monkeypatch):
    import ray

    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    dirs, _ = make_federation(tmp_path / "data", n_clients=2, per_class=12)
    clients = [{"name": f"hospital_{i}", "data_dir": d} for i, d in enumerate(dirs)]
    plan = resolve(TrainConfig(clients=clients, algorithm="FedAvg", rounds=1, out_dir=tmp_path / "run"))

    marker = uuid.uuid4().hex
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    ports = {f"--{name}": str(free_port()) for name in (
        "node-manager-port", "object-manager-port", "ray-client-server-port", "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")}  # fmt: skip
    address = f"127.0.0.1:{port}"
    env = {**os.environ, **QUIET_ENV, MARKER: marker}
    seen: dict = {}

    def on_progress(event: dict) -> None:
        """Runs in the simulation's driver while Ray is connected: which cluster is it? (The server
        app's thread may report 'start' before the backend has connected: rounds come after.)"""
        if not ray.is_initialized():
            return
        nodes = [n for n in ray.nodes() if n["Alive"]]
        seen.update(gcs=ray.get_runtime_context().gcs_address, cpus=ray.cluster_resources().get("CPU"),
                    node_ports=[n["NodeManagerPort"] for n in nodes])  # fmt: skip

    try:
        started = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}", "--num-cpus=1",
             "--disable-usage-stats", "--include-dashboard=false",
             f"--temp-dir={temp_dir}", *(f"{k}={v}" for k, v in ports.items())],
            check=False, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr
        results = simulate([plan], [(c["name"], c["data_dir"]) for c in plan["clients"]], on_progress,
                           workers=2, ray_address=address)  # fmt: skip
    finally:
        if ray.is_initialized():
            ray.shutdown()
        left = _stop_cluster(marker)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert left == [], "a Ray process of the test cluster survived"
    assert results[0]["status"] == "completed", results[0].get("error")
    assert sorted(results[0]["final"]["clients"]) == ["hospital_0", "hospital_1"]
    # the run's driver saw our head (its GCS port, its one raylet, its 1 CPU), not a Ray of its own
    # (which would have its own ports and 2 CPUs: workers=2)
    assert seen["gcs"].endswith(f":{port}")
    assert seen["node_ports"] == [int(ports["--node-manager-port"])] and seen["cpus"] == 1
