"""The workflow graph: four phase subgraphs and an evaluation node.

  selection      S1 -> C1 at every client (Send fan-out) -> S2
  (each agent is itself a subgraph: prepare -> model <-> tools -> finish, see graphs.agents)
  preprocessing  start -> C2 at every approved client
  harmonisation  start -> C3 at every approved client
  training       start -> S3 -> S4
  evaluate       usage, timing, scores

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
from graphs.state import WorkflowState


def selection_builder() -> StateGraph:
    g = StateGraph(WorkflowState)
    g.add_node("S1", agent_graph("S1"))
    g.add_node("C1", agent_graph("C1"))
    g.add_node("S2", agent_graph("S2"))
    g.add_edge(START, "S1")
    g.add_conditional_edges("S1", phases.fan_out_c1, ["C1"])
    g.add_edge("C1", "S2")
    g.add_edge("S2", END)
    return g


def _client_phase(start: Any, fan_out: Any, agent: str) -> StateGraph:
    g = StateGraph(WorkflowState)
    g.add_node("start", start)
    g.add_node(agent, agent_graph(agent))
    g.add_edge(START, "start")
    g.add_conditional_edges("start", fan_out, [agent])
    g.add_edge(agent, END)
    return g


def preprocessing_builder() -> StateGraph:
    return _client_phase(phases.preprocessing_start, phases.fan_out_c2, "C2")


def harmonisation_builder() -> StateGraph:
    return _client_phase(phases.harmonisation_start, phases.fan_out_c3, "C3")


def training_builder() -> StateGraph:
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


@functools.lru_cache(maxsize=4)
def workflow_builder(scorer: Any = None) -> StateGraph:
    """The whole workflow's graph, built once per process and scorer (type-hint resolution makes
    building it cost more than a short run's own work); each run compiles it with its own
    checkpointer. ``scorer(state) -> scores`` is what the evaluation node adds (eval's)."""
    g = StateGraph(WorkflowState)
    previous = START
    for name, build in PHASE_BUILDERS.items():
        g.add_node(name, build().compile())
        g.add_edge(previous, name)
        previous = name
    g.add_node("evaluate", functools.partial(phases.evaluate_node, scorer=scorer))
    g.add_edge(previous, "evaluate")
    g.add_edge("evaluate", END)
    return g


def compile_workflow(checkpointer: Any = None, scorer: Any = None):
    """The full workflow, checkpointed by ``checkpointer`` (a SqliteSaver for CLI runs)."""
    return workflow_builder(scorer).compile(checkpointer=checkpointer)
