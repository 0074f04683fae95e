"""A dry run of a training plan before any hospital spends compute on it.

Like NVIDIA AgenticFL's preflight: the chosen algorithm runs ONE round end to end — the server's
strategy, round-1 arrays, ``configure_train`` / ``aggregate_train`` / evaluation, exactly as
``fl.server.run_plan`` does them, and every client's training and validation through
``fl.client.respond`` — on synthetic tensors of the plan's shape (classes, channels, image size),
in this process: an in-memory :class:`DryRunGrid` hands each message straight to the client code,
with no Ray, no SuperLink and no network. A broken algorithm (or a shape it cannot handle) fails
here in about a second, with its reason, instead of in round 1 at every site.

Passing checks are remembered per process for the plan's shape and settings, so a second identical
check is free. Importing this module is cheap (pydantic only); torch and Flower load on a check.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from flwr.app import Message

    from fl.data import LocalData

#: the synthetic sites' node ids (any ids work: strategies tell replies apart by them)
FIRST_NODE = 1001
#: synthetic hospitals when a plan names none
DEFAULT_SITES = 2
#: validation images per class on each synthetic site
VAL_PER_CLASS = 1

_PASSED: dict[str, PreflightResult] = {}
_LOCK = threading.Lock()
#: threads running a dry run: Flower's per-round INFO lines from them are dropped (see _quiet)
_QUIET_THREADS: set[int] = set()


class PreflightResult(BaseModel):
    """The dry run's verdict: ``error`` says what failed and where, for the agent and the log."""

    ok: bool
    algorithm: str
    seconds: float
    error: str | None = None
    #: an identical check passed earlier in this process (nothing ran)
    cached: bool = False


class _SiteFailure(Exception):
    """A synthetic site's client code raised; carries which site and which step."""

    def __init__(self, site: str, phase: str) -> None:
        super().__init__(f"{site} failed during {phase}")
        self.site, self.phase = site, phase


def synthetic_data(n_classes: int, channels: int, image_size: int, seed: int = 0) -> LocalData:
    """One site's tensors in [0, 1] like fl.data's, each class in both splits; enough training
    images per class (fl.algorithms.base.MIN_CLASS_EXAMPLES) that class statistics are sent."""
    import torch

    from fl.algorithms.base import MIN_CLASS_EXAMPLES
    from fl.data import LocalData

    g = torch.Generator().manual_seed(seed)

    def images(per_class: int) -> tuple[Any, Any]:
        y = torch.arange(n_classes).repeat_interleave(per_class)
        x = torch.rand(len(y), channels, image_size, image_size, generator=g) * 0.5
        x += 0.5 * (y.float() / max(1, n_classes - 1)).view(-1, 1, 1, 1)  # a learnable class signal
        return x, y

    train_x, train_y = images(MIN_CLASS_EXAMPLES)
    val_x, val_y = images(VAL_PER_CLASS)
    return LocalData(train_x, train_y, val_x, val_y, [f"class_{k}" for k in range(n_classes)])


def _grid_class() -> type:
    """DryRunGrid, built on first use so that importing this module does not import Flower."""
    from flwr.app import Context, RecordDict
    from flwr.serverapp import Grid
    from flwr.supercore.run import Run

    from fl.client import respond

    class DryRunGrid(Grid):
        """A Grid whose nodes are synthetic sites in this process: ``send_and_receive`` calls the
        ClientApp's own handler code (fl.client.respond) on each message, in order."""

        def __init__(self, sites: list[tuple[str, LocalData]]) -> None:
            self._sites = {FIRST_NODE + i: site for i, site in enumerate(sites)}
            self._contexts = {node: Context(run_id=0, node_id=node, node_config={}, state=RecordDict(), run_config={})
                              for node in self._sites}  # a node's state lives from training to evaluation
            self._run = Run.create_empty(run_id=0)
            self._replies: dict[str, Message] = {}

        def set_run(self, run: Run) -> None:
            self._run = run

        @property
        def run(self) -> Run:
            return self._run

        def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                           ttl: float | None = None) -> Message:
            from flwr.app import Message

            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self) -> Iterable[int]:
            return list(self._sites)

        def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
            ids = []
            for msg in messages:
                node = msg.metadata.dst_node_id
                name, data = self._sites[node]
                train = msg.metadata.message_type.split(".")[0] == "train"
                try:
                    reply = respond(msg, self._contexts[node], name, data, train)
                except Exception as exc:
                    raise _SiteFailure(name, "training" if train else "evaluation") from exc
                ids.append(f"{node}.{len(self._replies)}")
                self._replies[ids[-1]] = reply
            return ids

        def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
            return [self._replies.pop(i) for i in message_ids if i in self._replies]

        def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
            return self.pull_messages(self.push_messages(messages))

    return DryRunGrid


def _server_identity() -> None:
    """Flower makes a strategy's messages with the running ServerApp's identity; outside one (the
    agent's process before its first training) give it the simulation's dummy one. An identity
    already set (a warm simulation in this process) is left alone."""
    from flwr.supercore.task_identity import TaskIdentity

    if TaskIdentity._run_id is None or TaskIdentity._node_id is None or TaskIdentity._task_id is None:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 0, 0


class _QuietFilter:
    """Drops Flower's INFO records logged by a thread that runs a dry run (its "Sampled 2 nodes"
    would read like a real round); other threads' records, and warnings, pass."""

    def filter(self, record: Any) -> bool:
        return record.levelno >= 30 or record.thread not in _QUIET_THREADS


_FILTER = _QuietFilter()


def _quiet() -> None:
    import logging

    flwr_logger = logging.getLogger("flwr")
    if _FILTER not in flwr_logger.filters:
        flwr_logger.addFilter(_FILTER)


def _key(plan: dict[str, Any]) -> str:
    """What a dry run's outcome depends on: algorithm and hyper-parameters, the data's shape, the
    number of sites and the local schedule (not the data, the paths or the number of rounds)."""
    keys = ("algorithm", "hp", "channels", "image_size", "fraction_train", "local_epochs", "batch_size", "lr",
            "momentum", "seed")  # fmt: skip
    shape = {k: plan.get(k) for k in keys} | {"classes": len(plan["classes"]), "sites": _n_sites(plan)}
    return json.dumps(shape, sort_keys=True, default=str)


def _n_sites(plan: dict[str, Any]) -> int:
    """As many synthetic sites as the plan has hospitals: strategies wait for all of them."""
    return len(plan.get("clients") or []) or DEFAULT_SITES


def _dry_plan(plan: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """The plan for one round on synthetic sites, written to a scratch folder."""
    from fl.runner import TrainConfig, _hyperparameters

    defaults = TrainConfig.model_fields
    hp = plan["hp"] if "hp" in plan else _hyperparameters(plan["algorithm"], {})[1]
    filled = {name: plan.get(name, defaults[field].default) for name, field in (
        ("local_epochs", "local_epochs"), ("batch_size", "batch_size"), ("lr", "lr"), ("momentum", "momentum"),
        ("seed", "seed"), ("val_fraction", "val_fraction"), ("fraction_train", "fraction_train"))}  # fmt: skip
    sites = [{"name": f"synthetic site {i + 1}", "data_dir": ""} for i in range(_n_sites(plan))]
    return {**plan, **filled, "hp": hp, "run_tag": "preflight", "rounds": 1, "clients": sites, "max_images": None,
            "timeout_s": 600.0, "out_dir": out_dir}  # fmt: skip


def _describe(exc: BaseException) -> str:
    """``Type: message (at file:line)``, the line being the innermost frame of this repository."""
    repo = Path(__file__).resolve().parents[1]
    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename)
        if path.is_relative_to(repo) and ".venv" not in path.parts:
            where = f" (at {path.relative_to(repo)}:{frame.lineno})"
            break
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300] or '(no message)'}{where}"


def _dry_run(plan: dict[str, Any]) -> None:
    """One round of ``plan`` through fl.server.run_plan on a DryRunGrid of synthetic sites; raises.
    Holds fl.server.SEEDED and restores torch's generator: the clients reseed it, and a real plan
    starting in this process (the warm simulation's ServerApp) draws its weights from it."""
    import torch

    from fl.server import SEEDED, run_plan

    _server_identity()
    _quiet()
    me = threading.get_ident()
    _QUIET_THREADS.add(me)
    try:
        with SEEDED, torch.random.fork_rng(devices=[]):
            result = _one_round(plan, run_plan)
    finally:
        _QUIET_THREADS.discard(me)
    if result.get("status") != "completed":
        raise RuntimeError(f"the round ended with status {result.get('status')!r}")


def _one_round(plan: dict[str, Any], run_plan: Any) -> dict[str, Any]:
    """run_plan on synthetic sites, writing to a scratch folder that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fedagentbench-preflight-") as scratch:
        dry = _dry_plan(plan, scratch)
        shape = (len(dry["classes"]), int(dry["channels"]), int(dry["image_size"]))
        sites = [(site["name"], synthetic_data(*shape, seed=int(dry["seed"]) + i))
                 for i, site in enumerate(dry["clients"])]  # fmt: skip
        return run_plan(_grid_class()(sites), dry)


def preflight(plan: dict[str, Any]) -> PreflightResult:
    """Run one round of ``plan``'s algorithm on synthetic data of its shape (see the module's doc);
    never raises: a failure is ``ok=False`` with the reason. ``plan`` is ``fl.runner.resolve``'s."""
    start = time.perf_counter()
    algorithm = str(plan.get("algorithm"))
    try:
        key = _key(plan)
        with _LOCK:
            passed = _PASSED.get(key)
        if passed is not None:
            return passed.model_copy(update={"seconds": time.perf_counter() - start, "cached": True})
        _dry_run(plan)
    except _SiteFailure as exc:
        error = f"the client code failed during {exc.phase} on {exc.site}: {_describe(exc.__cause__ or exc)}"
        return PreflightResult(ok=False, algorithm=algorithm, seconds=time.perf_counter() - start, error=error)
    except Exception as exc:  # noqa: BLE001 - any failure stops the launch with its reason
        error = f"the server side failed: {_describe(exc)}"
        return PreflightResult(ok=False, algorithm=algorithm, seconds=time.perf_counter() - start, error=error)
    verdict = PreflightResult(ok=True, algorithm=algorithm, seconds=time.perf_counter() - start)
    with _LOCK:
        _PASSED[key] = verdict
    return verdict


def clear_cache() -> None:
    """Forget passed checks (tests that change an algorithm's code in-process)."""
    with _LOCK:
        _PASSED.clear()
