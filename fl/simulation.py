"""Flower's simulation runtime (Ray), sized for this machine and kept quiet and offline."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from fl.telemetry import QUIET_ENV

#: telemetry off, and Ray's logs as they come
SIMULATION_ENV = {
    **QUIET_ENV,
    "RAY_DEDUP_LOGS": "0",
    # actors that reserve no GPU still see the machine's GPUs (clients train on "auto"/"cuda"; Ray
    # would otherwise hide them), and Ray's FutureWarning about that default stays quiet
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


#: Ray starts its workers at nice 15, so on a shared machine the clients' training (the actual
#: workload) yields to every other process; measured: local epochs 30-60 % slower under load
WORKER_ENV = {"RAY_worker_niceness": "0"}


def quiet_environment() -> None:
    """Telemetry and update checks off, workers at normal priority, one torch thread (unless the
    user chose otherwise)."""
    for key, value in {**SIMULATION_ENV, **WORKER_ENV}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


#: the Ray cluster simulations attach to when no address is passed (unset: start a local Ray)
RAY_ADDRESS_ENV = "FEDAGENTBENCH_RAY_ADDRESS"


def resolve_ray_address(ray_address: str | None = None) -> str | None:
    """The Ray cluster to attach to: ``ray_address``, else ``$FEDAGENTBENCH_RAY_ADDRESS``, else None."""
    return ray_address or os.environ.get(RAY_ADDRESS_ENV) or None


def backend_config(n_clients: int, workers: int | None = None, ray_address: str | None = None) -> dict[str, Any]:
    """One CPU per client actor; as many actors as cores and clients (or ``workers``), no dashboard.

    Each actor imports torch and MONAI once (seconds on a small machine), so for tiny federations
    one worker that serves the clients in turn can finish sooner than several.

    With a ``ray_address`` (or ``$FEDAGENTBENCH_RAY_ADDRESS``) Flower attaches to that cluster
    instead of starting one: Ray then refuses sizing arguments, and Flower makes one actor per
    CPU the cluster has, so ``workers`` does not apply.
    """
    client_resources = {"num_cpus": 1, "num_gpus": 0.0}
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address := resolve_ray_address(ray_address):
        return {"client_resources": client_resources, "init_args": {"address": address, **quiet}}
    n_cpus = max(1, min(n_clients, os.cpu_count() or 1, workers or n_clients))
    return {
        "client_resources": client_resources,
        "init_args": {
            "num_cpus": n_cpus,
            "num_gpus": 0,
            "include_dashboard": False,
            "object_store_memory": 256 * 1024 * 1024,
            **quiet,
        },
    }


def simulate(
    plans: list[dict[str, Any]],
    clients: list[tuple[str, str]],
    progress: Callable[[dict[str, Any]], None] | None = None,
    verbose: bool = False,
    workers: int | None = None,
    ray_address: str | None = None,
) -> list[dict[str, Any]]:
    """Run the plans in one Flower simulation with one virtual SuperNode per client, on a Ray of its
    own or, given ``ray_address`` (or ``$FEDAGENTBENCH_RAY_ADDRESS``), on that running cluster."""
    import sys

    quiet_environment()
    if "fl.service" in sys.modules:  # one Ray per process: this run's shutdown would kill the warm one
        sys.modules["fl.service"].close_shared()
    import torch
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from fl.client import make_client_app
    from fl.server import run_plans

    torch.set_num_threads(1)
    results: list[dict[str, Any]] = []
    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        results.extend(run_plans(grid, plans, progress))

    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)
    try:
        run_simulation(
            server_app=app,
            client_app=make_client_app(clients),
            num_supernodes=len(clients),
            backend_config=backend_config(len(clients), workers, ray_address),
            verbose_logging=verbose,
        )
    finally:
        flwr_logger.setLevel(level)
    if len(results) != len(plans):
        raise RuntimeError("the Flower simulation ended before every run finished")
    return results
