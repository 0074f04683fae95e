"""LangGraph Studio's view of a run (issue 25): the real ``langgraph dev`` server, driven through
``langgraph-sdk``, keeps every agent's tool calls and their results in the thread's checkpoints.

How a client reads a nested subgraph's checkpoints (langgraph-sdk 0.4, langgraph-api 0.16):

* ``client.threads.get_history(thread_id, checkpoint={"checkpoint_ns": ns})`` lists the states of
  the (sub)graph run whose namespace is ``ns`` ("" is the root graph), newest first.
* A state's ``tasks`` are the steps it schedules next; a task that runs a compiled subgraph carries
  ``checkpoint = {"thread_id": ..., "checkpoint_ns": "<parent ns>|<node>:<task id>"}`` (for a node
  of the root graph simply ``"<node>:<task id>"``), e.g. ``"selection:<id>|S1:<id>"``. Following
  those links from the root reaches every subgraph's history.

The server finds a subgraph for a namespace only when it is a node of its parent graph (or a
compiled graph a function node names directly); a subgraph called from a function through a
lookup has no such link, and its history would be read with the parent's channels.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fl.telemetry import QUIET_ENV
from graphs.state import RunConfig

from .conftest import REPO

#: the most states one ``/threads/{id}/history`` request may return
HISTORY_PAGE = 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _langgraph_dev(workdir: Path, env: dict[str, str]) -> Iterator[str]:
    """``langgraph dev`` serving the repository's langgraph.json on a free port; yields its URL."""
    import httpx

    (workdir / "langgraph.json").write_text((REPO / "langgraph.json").read_text()
                                            .replace('"./graphs/', f'"{REPO}/graphs/')
                                            .replace('["."]', f'["{REPO}"]'))
    port = _free_port()
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(REPO), **env}
    log = workdir / "langgraph_dev.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("langgraph")), "dev", "--no-browser",
                                 "--no-reload", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                break
            try:
                if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("langgraph dev did not answer /ok:\n" + log.read_text()[-4000:])
        if proc.poll() is not None:
            pytest.fail("langgraph dev exited:\n" + log.read_text()[-4000:])
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_langgraph_dev_serves_every_phase_graph(tiny_envs, tmp_path):
    """`langgraph dev` loads langgraph.json; a tiny selection run goes through its REST API."""
    import httpx

    from .test_real_models import _env

    with _langgraph_dev(tmp_path, {}) as url:
        graphs = {a["graph_id"] for a in httpx.post(f"{url}/assistants/search", json={}, timeout=10).json()}
        assert {"workflow", "selection", "preprocessing", "harmonisation", "training"} <= graphs
        thread = httpx.post(f"{url}/threads", json={}, timeout=10).json()["thread_id"]
        config = RunConfig(env_dir=str(_env(tiny_envs, tmp_path)), task_id="xray-pneumonia", model="oracle",
                           run_id="selection").model_dump()
        final = httpx.post(f"{url}/threads/{thread}/runs/wait", json={"assistant_id": "selection",
                                                                       "input": {"config": config}}, timeout=120).json()
        assert final["requirements"]["target_classes"] == ["normal", "pneumonia"]
        state = httpx.get(f"{url}/threads/{thread}/state", timeout=10).json()
        assert state["next"] == [] and set(state["values"]["clients"]) == {"hospital_01", "hospital_02", "hospital_03"}
        assert len(httpx.post(f"{url}/threads/{thread}/history", json={"limit": 50}, timeout=10).json()) >= 3


def history(client: Any, thread_id: str, namespace: str = "") -> list[dict]:
    """Every state of the (sub)graph run at ``namespace`` ("" for the root), newest first."""
    states: list[dict] = []
    before = None
    while True:
        page = client.threads.get_history(thread_id, limit=HISTORY_PAGE, before=before,
                                          checkpoint={"checkpoint_ns": namespace})
        states += page
        if len(page) < HISTORY_PAGE:
            return states
        before = page[-1]["checkpoint"]


def subgraph_namespaces(state: dict) -> list[str]:
    """The namespaces of the subgraph runs a state's tasks start (tasks that are not subgraphs have none)."""
    return [task["checkpoint"]["checkpoint_ns"] for task in state["tasks"] if task.get("checkpoint")]


def all_histories(client: Any, thread_id: str) -> dict[str, list[dict]]:
    """The history of the root graph and of every subgraph run below it, nested to any depth, by namespace."""
    found: dict[str, list[dict]] = {}
    pending = [""]
    while pending:
        namespace = pending.pop(0)
        if namespace in found:
            continue
        found[namespace] = history(client, thread_id, namespace)
        pending += [ns for state in found[namespace] for ns in subgraph_namespaces(state) if ns not in found]
    return found


def node_path(namespace: str) -> tuple[str, ...]:
    """``"selection:<id>|S1:<id>"`` -> ``("selection", "S1")``."""
    return tuple(part.split(":")[0] for part in namespace.split("|") if part) if namespace else ()


def tool_exchanges(states: list[dict]) -> list[tuple[dict, dict]]:
    """Each tool call an AI message makes in these states' ``messages``, with the tool message that answers it."""
    messages = {m["id"] or repr(m): m for s in states for m in (s["values"] or {}).get("messages") or []}
    results = {m.get("tool_call_id"): m for m in messages.values() if m.get("type") == "tool"}
    return [(call, results[call["id"]]) for m in messages.values() if m.get("type") == "ai"
            for call in m.get("tool_calls") or [] if call.get("id") in results]


def test_studio_thread_history_holds_agent_tool_calls(tiny_envs, tmp_path_factory, tmp_path):
    """A tiny oracle workflow run through ``langgraph dev``: every agent is a subgraph of its phase, and
    the agent's checkpoints hold its tool calls (AI message) beside their results (tool message)."""
    from langgraph_sdk import get_sync_client

    from .test_real_models import _env

    config = RunConfig(env_dir=str(_env(tiny_envs, tmp_path)), task_id="xray-pneumonia", model="oracle",
                       run_id="studio").model_dump()
    cache = tmp_path_factory.getbasetemp() / "training_cache"  # shared with tests/test_workflow.py
    with _langgraph_dev(tmp_path, {"FEDAGENTBENCH_TRAINING_CACHE": str(cache)}) as url:
        client = get_sync_client(url=url, timeout=600)
        assert "workflow" in {a["graph_id"] for a in client.assistants.search(limit=100)}
        thread = client.threads.create()["thread_id"]
        final = client.runs.wait(thread, "workflow", input={"config": config}, raise_error=True)
        assert final["requirements"]["target_classes"] == ["normal", "pneumonia"]
        state = client.threads.get_state(thread)
        assert state["next"] == [] and state["values"]["requirements"]["target_classes"] == ["normal", "pneumonia"]
        assert state["values"]["training"]["completed"]

        histories = all_histories(client, thread)
    by_path: dict[tuple[str, ...], list[str]] = {}
    for ns in histories:
        by_path.setdefault(node_path(ns), []).append(ns)
    agents = {("selection", "S1"), ("selection", "C1"), ("selection", "S2"), ("preprocessing", "C2"),
              ("harmonisation", "C3"), ("training", "S3"), ("training", "S4")}
    assert agents <= set(by_path), sorted(by_path)
    assert len(by_path["selection", "C1"]) == 3, by_path["selection", "C1"]  # one C1 per hospital

    # a client agent (every hospital's C1) and a server agent (S4) each call a tool; the call and its
    # result both sit in that agent's own checkpoints, and a checkpoint stops before its tools step
    for path, tool in ((("selection", "C1"), "read_data_cards"), (("training", "S4"), "launch_training")):
        for ns in by_path[path]:
            states = histories[ns]
            calls = [(call, result) for call, result in tool_exchanges(states) if call["name"] == tool]
            assert calls, (ns, [(c["name"], r["content"][:80]) for c, r in tool_exchanges(states)])
            for call, result in calls:
                assert result["tool_call_id"] == call["id"] and result["content"] and result.get("status") != "error"
            assert any(s["next"] == ["tools"] for s in states), [s["next"] for s in states]
