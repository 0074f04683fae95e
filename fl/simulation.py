"""Flower's simulation runtime (Ray), sized for this machine and kept quiet and offline."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silences a FutureWarning; we never use GPUs
}


#: Ray starts its workers at nice 15, so on a shared machine the clients' training (the actual
#: workload) yields to every other process; measured: local epochs 30-60 % slower under load
WORKER_ENV = {"RAY_worker_niceness": "0"}


def quiet_environment() -> None:
    """Telemetry and update checks off, workers at normal priority, one torch thread (unless the
    user chose otherwise)."""
    for key, value in {**QUIET_ENV, **WORKER_ENV}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def backend_config(n_clients: int, workers: int | None = None) -> dict[str, Any]:
    """One CPU per client actor; as many actors as cores and clients (or ``workers``), no dashboard.

    Each actor imports torch and MONAI once (seconds on a small machine), so for tiny federations
    one worker that serves the clients in turn can finish sooner than several.
    """
    n_cpus = max(1, min(n_clients, os.cpu_count() or 1, workers or n_clients))
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": n_cpus,
            "num_gpus": 0,
            "include_dashboard": False,
            "object_store_memory": 256 * 1024 * 1024,
            "logging_level": logging.ERROR,
            "log_to_driver": False,
        },
    }


def simulate(
    plans: list[dict[str, Any]],
    clients: list[tuple[str, str]],
    progress: Callable[[dict[str, Any]], None] | None = None,
    verbose: bool = False,
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """Run the plans in one Flower simulation with one virtual SuperNode per client."""
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
            backend_config=backend_config(len(clients), workers),
            verbose_logging=verbose,
        )
    finally:
        flwr_logger.setLevel(level)
    if len(results) != len(plans):
        raise RuntimeError("the Flower simulation ended before every run finished")
    return results
