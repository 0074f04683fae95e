"""Client agents at the hospitals: the workflow's client nodes when a run's ``runtime`` is "deployment".

The graph is the same graph; only the client nodes' transport differs. On the coordinator a client
node sends the agent's task (the run config and the broadcast, as in simulation) to the hospital's
site service and merges what comes back (statuses, paths, counts, label mappings, the agent's
summary) into the workflow state. At the site, :func:`run_client_agent_here` runs the same agent
subgraph on the site's own folders, checkpointed in the site's own SQLite file: a coordinator that
restarts and asks again gets the finished agent's answer, or resumes it where it stopped.

How a request reaches a site (Flower's Message API, see federation.relay) is a :class:`SiteTransport`
installed per environment with :func:`use_transport`; nothing of it is in the checkpointed state.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from graphs import runtime
from graphs.phases import AGENTS, ClientTask, record
from graphs.state import RunConfig

#: what a site service answers (federation.site_service) and the coordinator understands
PROTOCOL = 1


class SiteUnavailable(RuntimeError):
    """A site did not answer (stopped, unreachable, timed out): the run goes on without it."""


class SiteTransport(Protocol):
    """Requests to the hospitals' site services, by site name."""

    def ask(self, site: str, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """The site's JSON reply to ``request``; :class:`SiteUnavailable` if it does not answer."""

    def train(self, plan: dict[str, Any]) -> dict[str, Any]:
        """Run a training plan on the sites named in it; the result dictionary of fl.server.run_plan."""


_lock = threading.Lock()
_transports: dict[str, SiteTransport] = {}


def _key(env_dir: str | Path) -> str:
    return str(Path(env_dir).resolve())


@contextmanager
def use_transport(env_dir: str | Path, transport: SiteTransport) -> Iterator[SiteTransport]:
    """Runs on ``env_dir`` reach their sites through ``transport`` while the block runs."""
    with _lock:
        _transports[_key(env_dir)] = transport
    try:
        yield transport
    finally:
        with _lock:
            _transports.pop(_key(env_dir), None)


def transport_for(config: RunConfig) -> SiteTransport:
    with _lock:
        transport = _transports.get(_key(config.env_dir))
    if transport is None:
        raise RuntimeError(f"this run's client agents run at the hospitals' sites, and no deployment is connected "
                           f"for {config.env_dir}: run it again with --deployment")
    return transport


# --- the coordinator's side ----------------------------------------------------------------------------

def agent_request(role: str, task: ClientTask) -> dict[str, Any]:
    """What crosses to the site: the role, the client's task and, for a practitioner's federation,
    the request as a task (the site has no copy of the server's files)."""
    request: dict[str, Any] = {"kind": "agent", "protocol": PROTOCOL, "role": role,
                               "task": task.model_dump(mode="json")}
    if runtime.is_federation(task.config):
        request["task_spec"] = runtime.task_spec(task.config).model_dump(mode="json")
    return request


def remote_client_node(role: str, task: ClientTask) -> dict[str, Any]:
    """A client node of a deployment: the agent runs at the site; its hand-back is merged here."""
    from agents.providers import ProviderUnavailable
    from graphs.agents import AgentOutputs

    started = time.perf_counter()
    try:
        reply = transport_for(task.config).ask(task.client, agent_request(role, task))
    except SiteUnavailable as exc:
        return _failed(role, task, f"site {task.client} did not answer: {exc}", time.perf_counter() - started)
    if reply.get("provider_error"):  # the site's model provider is down: the run stops as in simulation
        raise ProviderUnavailable(f"{role}@{task.client}: {reply['provider_error']}")
    if reply.get("error"):
        return _failed(role, task, f"site {task.client}: {reply['error']}", time.perf_counter() - started)
    outputs = AgentOutputs.model_validate(reply.get("outputs") or {})
    if reply.get("published_stats"):  # what the site's agent published for the server agents to read
        try:
            _receive_stats(task, reply["published_stats"])
        except ValueError:  # not statistics (pydantic's ValidationError): the server sees none, as if unpublished
            pass
    return {name: getattr(outputs, name) for name in AgentOutputs.model_fields}


def _receive_stats(task: ClientTask, published: dict[str, Any]) -> None:
    """Keep a site's published statistics where the server's ``read_client_statistics`` reads them
    (validated: aggregate numbers only, tools.stats.ClientStatistics)."""
    from tools.stats import STATS_NAME, ClientStatistics

    stats = ClientStatistics.model_validate(published)
    folder = runtime.client_work(task.config, task.client)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{STATS_NAME}.tmp"
    tmp.write_text(stats.model_dump_json(indent=1), "utf-8")
    tmp.replace(folder / STATS_NAME)


def _failed(role: str, task: ClientTask, error: str, seconds: float) -> dict[str, Any]:
    """The update of an agent that could not run: recorded as the agent's failure, as in simulation."""
    from agents.runner import AgentOutcome, UsageRecord

    outcome = AgentOutcome(role=role, client=task.client, ok=False, error=error, seconds=round(seconds, 3),
                           usage=UsageRecord(role=role, client=task.client))
    return {**record(task.config, outcome, []), **AGENTS[role].finish(task, outcome)}


def ask_all(transport: SiteTransport, requests: dict[str, dict[str, Any]],
            timeout: float | None = None) -> dict[str, dict[str, Any]]:
    """Each site's reply to its request, asked in parallel (a site that does not answer: ``error``)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(site: str) -> dict[str, Any]:
        try:
            return transport.ask(site, requests[site], timeout)
        except SiteUnavailable as exc:
            return {"error": f"no answer: {exc}"}

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(requests)))) as pool:
        return dict(zip(requests, pool.map(one, requests)))


def site_reference(config: RunConfig, client: str, rel: str) -> str:
    """A client's workspace-relative path (``work/harmonised``) as the path inside the site's folder
    that the site resolves itself (its folder has the same layout as an environment's)."""
    return runtime.client_path(config, client, rel).relative_to(Path(config.env_dir).resolve()).as_posix()


class SiteTraining:
    """S4's training on a deployment (tools.training.RemoteTraining): each site describes its
    harmonised data (class counts, channels, image size: aggregate numbers), the plan is resolved
    from those descriptions, and the sites train on their own folders."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def resolve(self, train_config: Any) -> dict[str, Any]:
        import uuid

        from fl import CLIENT_MODELS_DIR
        from fl.runner import DataShape, resolve

        replies = ask_all(transport_for(self.config), {
            c.name: {"kind": "data_shape", "protocol": PROTOCOL, "path": str(c.data_dir)} for c in train_config.clients})
        shapes = {}
        for name, reply in replies.items():
            if reply.get("error"):
                raise ValueError(f"site {name}: {reply['error']}")
            shapes[name] = DataShape.model_validate(reply["shape"])
        plan = resolve(train_config, run_tag=uuid.uuid4().hex[:12], shapes=shapes)
        env = Path(self.config.env_dir).resolve()
        plan["export_dir"] = (Path(plan["out_dir"]) / CLIENT_MODELS_DIR).relative_to(env).as_posix()
        return plan

    def run(self, plan: dict[str, Any]) -> dict[str, Any]:
        return transport_for(self.config).train(plan)


# --- the site's side -----------------------------------------------------------------------------------

def _thread(role: str, task: ClientTask) -> str:
    """One checkpoint thread per (run attempt, agent, input): a repeated request finds it finished."""
    raw = json.dumps({"role": role, **task.model_dump(mode="json", exclude={"config": {"env_dir", "transcript_path",
                                                                                        "cache_dir"}})},
                     sort_keys=True)
    return f"{role}.{task.client}.{hashlib.sha256(raw.encode()).hexdigest()[:24]}"


def run_client_agent_here(role: str, task: ClientTask, db: Path) -> dict[str, Any]:
    """Run (or resume, or read back) client agent ``role`` on this site's folders; its hand-back as JSON."""
    from agents.loop import recursion_limit
    from graphs.agents import AgentOutputs, agent_builder
    from graphs.checkpoint import sqlite_checkpointer

    if AGENTS[role].side != "client":
        raise ValueError(f"{role} is not a client agent")
    cfg = {"configurable": {"thread_id": _thread(role, task)},
           "recursion_limit": max(200, recursion_limit(task.config.budget))}
    with sqlite_checkpointer(db) as saver:
        graph = agent_builder(role).compile(checkpointer=saver, name=role)
        snapshot = graph.get_state(cfg)
        if not (snapshot.values and not snapshot.next):
            graph.invoke(None if snapshot.values else task, cfg, durability="sync")
            snapshot = graph.get_state(cfg)
        values = snapshot.values
    outputs = AgentOutputs.model_validate({k: values.get(k) for k in AgentOutputs.model_fields if k in values})
    return outputs.model_dump(mode="json")
