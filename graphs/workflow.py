"""The workflow graph: four phase subgraphs and an evaluation node.

  selection      S1 -> C1 at every client (Send fan-out) -> S2
  (each agent is itself a subgraph: prepare -> model <-> tools -> finish, see graphs.agents)
  preprocessing  start -> C2 at every approved client
  harmonisation  start -> C3 at every approved client
  training       start -> S3 -> S4
  evaluate       usage, timing, scores

On a deployment (``remote=True``, a run whose ``runtime`` is "deployment") the client nodes C1-C3
send their task to the hospital's site service, where the same agent subgraph runs (graphs.remote):
the same graph, another transport for the client nodes.

Subgraphs are compiled without a checkpointer and inherit the parent's, so every super-step of
every phase is checkpointed. ``langgraph.json`` loads :mod:`graphs.studio`, which compiles the same
builders with no checkpointer at all (the LangGraph server supplies persistence).
"""

from __future__ import annotations

import functools
from typing import Any

from langgraph.graph import END, START, StateGraph

from graphs import phases
from graphs.agents import agent_graph
from graphs.phases import ClientTask
from graphs.remote import remote_client_node
from graphs.state import WorkflowState


def _client_node(g: StateGraph, role: str, remote: bool) -> None:
    if remote:
        g.add_node(role, functools.partial(remote_client_node, role), input_schema=ClientTask)
    else:
        g.add_node(role, agent_graph(role))


def selection_builder(remote: bool = False) -> StateGraph:
    g = StateGraph(WorkflowState)
    g.add_node("S1", agent_graph("S1"))
    _client_node(g, "C1", remote)
    g.add_node("S2", agent_graph("S2"))
    g.add_edge(START, "S1")
    g.add_conditional_edges("S1", phases.fan_out_c1, ["C1"])
    g.add_edge("C1", "S2")
    g.add_edge("S2", END)
    return g


def _client_phase(start: Any, fan_out: Any, agent: str, remote: bool) -> StateGraph:
    g = StateGraph(WorkflowState)
    g.add_node("start", start)
    _client_node(g, agent, remote)
    g.add_edge(START, "start")
    g.add_conditional_edges("start", fan_out, [agent])
    g.add_edge(agent, END)
    return g


def preprocessing_builder(remote: bool = False) -> StateGraph:
    return _client_phase(phases.preprocessing_start, phases.fan_out_c2, "C2", remote)


def harmonisation_builder(remote: bool = False) -> StateGraph:
    return _client_phase(phases.harmonisation_start, phases.fan_out_c3, "C3", remote)


def training_builder(remote: bool = False) -> StateGraph:
    g = StateGraph(WorkflowState)
    g.add_node("start", phases.training_start)
    g.add_node("S3", agent_graph("S3"))
    g.add_node("S4", agent_graph("S4"))
    g.add_edge(START, "start")
    g.add_edge("start", "S3")
    g.add_edge("S3", "S4")
    g.add_edge("S4", END)
    return g


PHASE_BUILDERS = {
    "selection": selection_builder,
    "preprocessing": preprocessing_builder,
    "harmonisation": harmonisation_builder,
    "training": training_builder,
}


@functools.lru_cache(maxsize=8)
def workflow_builder(scorer: Any = None, remote: bool = False) -> StateGraph:
    """The whole workflow's graph, built once per process, scorer and transport (type-hint resolution
    makes building it cost more than a short run's own work); each run compiles it with its own
    checkpointer. ``scorer(state) -> scores`` is what the evaluation node adds (eval's)."""
    g = StateGraph(WorkflowState)
    previous = START
    for name, build in PHASE_BUILDERS.items():
        g.add_node(name, build(remote).compile())
        g.add_edge(previous, name)
        previous = name
    g.add_node("evaluate", functools.partial(phases.evaluate_node, scorer=scorer))
    g.add_edge(previous, "evaluate")
    g.add_edge("evaluate", END)
    return g


def compile_workflow(checkpointer: Any = None, scorer: Any = None, remote: bool = False):
    """The full workflow, checkpointed by ``checkpointer`` (a SqliteSaver for CLI runs); ``remote``:
    the client agents run at the hospitals' site services."""
    return workflow_builder(scorer, remote).compile(checkpointer=checkpointer)
