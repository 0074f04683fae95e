"""A Flower simulation kept warm across trainings: Ray, the client actors and their imports start once.

A fresh ``run_simulation`` costs 30-70 s of Ray and actor start-up on a small machine, more than a
tiny training itself; a benchmark matrix runs dozens of trainings. ``WarmSimulation`` starts one
simulation with ``slots`` virtual SuperNodes whose ServerApp waits for plans on a queue. Each plan
runs on a :class:`RosterGrid`: a view of the first ``len(clients)`` nodes, each bound to one
hospital's folder for that plan only (the roster travels in the round's config: names and paths,
never data). Plans run one at a time, in submission order.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, InvalidStateError
from typing import Any

from flwr.serverapp import Grid

#: virtual SuperNodes in a warm simulation (idle ones cost nothing: actors are per core, not per node)
DEFAULT_SLOTS = 12


class RosterGrid(Grid):
    """The warm simulation's grid restricted to one plan's clients; ``roster`` maps node id to hospital."""

    def __init__(self, grid: Grid, clients: list[tuple[str, str]], wait_s: float = 120.0) -> None:
        deadline = time.monotonic() + wait_s
        while len(nodes := sorted(grid.get_node_ids())) < len(clients) and time.monotonic() < deadline:
            time.sleep(0.2)  # the virtual SuperNodes register just after the ServerApp starts
        if len(clients) > len(nodes):
            raise ValueError(f"{len(clients)} clients but the warm simulation has {len(nodes)} slots")
        self._grid = grid
        self._nodes = nodes[: len(clients)]
        self.roster = {str(node): list(client) for node, client in zip(self._nodes, clients)}

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Any:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def push_messages(self, messages: Iterable[Any]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Any]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> Iterable[Any]:
        return self._grid.send_and_receive(messages, timeout=timeout)


def _settle(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Complete a future once; whoever comes second (the plan or the dying simulation) is ignored."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class WarmSimulation:
    """One long-lived Flower simulation in a background thread; ``submit`` runs a plan on it."""

    def __init__(self, slots: int = DEFAULT_SLOTS, workers: int | None = None) -> None:
        self.slots = slots
        self.workers = workers
        self._jobs: queue.Queue[tuple[dict[str, Any], list[tuple[str, str]], Future] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._current: Future | None = None  # the plan the ServerApp is running
        self._thread = threading.Thread(target=self._serve, name="flower-warm-simulation", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _serve(self) -> None:
        from fl.simulation import quiet_environment

        quiet_environment()
        import logging

        import torch
        from flwr.serverapp import ServerApp
        from flwr.simulation import run_simulation

        from fl.client import make_client_app
        from fl.server import run_plans
        from fl.simulation import backend_config

        torch.set_num_threads(1)
        app = ServerApp()

        @app.main()
        def main(grid: Grid, context: Any) -> None:
            while (job := self._jobs.get()) is not None:
                plan, clients, future = job
                if not future.set_running_or_notify_cancel():
                    continue
                self._current = future
                try:
                    _settle(future, result=run_plans(RosterGrid(grid, clients), [plan])[0])
                except BaseException as exc:  # noqa: BLE001 - handed to the submitter
                    _settle(future, error=exc)
                finally:
                    self._current = None

        logging.getLogger("flwr").setLevel(logging.ERROR)
        try:
            run_simulation(
                server_app=app, client_app=make_client_app(None), num_supernodes=self.slots,
                backend_config=backend_config(self.slots, self.workers), verbose_logging=False,
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - reported to every waiting submitter
            self._error = exc
        finally:
            stopped = self._error or RuntimeError("the warm Flower simulation stopped")
            if self._current is not None:
                _settle(self._current, error=stopped)
            self._fail_pending(stopped)
            self._jobs.put(None)  # a ServerApp thread that outlived the runtime returns instead of waiting

    def _fail_pending(self, exc: BaseException) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                _settle(job[2], error=exc)

    def submit(self, plan: dict[str, Any]) -> dict[str, Any]:
        """Run one plan (blocking); returns its result dictionary, as ``fl.server.run_plan`` writes it."""
        clients = [(c["name"], c["data_dir"]) for c in plan["clients"]]
        if len(clients) > self.slots:
            raise ValueError(f"{len(clients)} clients exceed the warm simulation's {self.slots} slots")
        future: Future = Future()
        self._jobs.put((plan, clients, future))
        while True:
            try:
                return future.result(timeout=1.0)
            except TimeoutError:
                if not self.alive:
                    _settle(future, error=self._error or RuntimeError("the warm Flower simulation stopped"))

    def close(self, timeout: float = 60.0) -> bool:
        """Let the ServerApp return, so Flower stops its actors and shuts Ray down; True once stopped."""
        if self.alive:
            self._jobs.put(None)
            self._thread.join(timeout)
        return not self.alive


_shared: WarmSimulation | None = None
_shared_lock = threading.Lock()
_exit_hook = False


def shared_simulation() -> WarmSimulation:
    """This process's warm simulation, started on first use (and restarted if it died); closed at exit."""
    global _shared, _exit_hook
    with _shared_lock:
        if _shared is None or not _shared.alive:
            if not _exit_hook:
                # before Python's own thread-pool shutdown (which would crash the running simulation)
                getattr(threading, "_register_atexit", atexit.register)(close_shared)
                _exit_hook = True
            _shared = WarmSimulation()
        return _shared


def close_shared() -> None:
    """Stop this process's warm simulation (waits for a running plan to finish)."""
    global _shared
    with _shared_lock:
        if _shared is not None:
            while not _shared.close():  # never let a second Ray start beside one still running
                pass
            _shared = None


def run_plan_warm(plan: dict[str, Any]) -> dict[str, Any]:
    """Run a plan on the shared warm simulation; one restart if the simulation died under it."""
    simulation = shared_simulation()
    try:
        return simulation.submit(plan)
    except RuntimeError:
        if simulation.alive:
            raise
        return shared_simulation().submit(plan)
