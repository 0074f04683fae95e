"""The seven agents as subgraphs of their phases: ``prepare`` -> the agent's own steps -> ``finish``.

    prepare ─▶ model ⇄ (approve) tools / answer ─▶ done ─▶ finish

The agent's conversation (``messages``) and counters live only in its subgraph's state, which the
workflow's checkpointer records after every step: Studio shows each model call and tool call, and
a run killed mid-agent resumes at the agent's last finished step. What the subgraph hands back to
the workflow is ``finish``'s update: statuses, paths and aggregate numbers, never the conversation.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field

from agents.loop import AgentLoop, AgentSetup, add_agent_loop, opening
from agents.roles import ROLES, answer_tool, system_prompt, user_prompt
from agents.runner import AgentOutcome, UsageRecord, merge_by_id
from graphs import runtime
from graphs.phases import AGENTS, AgentSpec, ClientTask, Skip, _tools, record
from graphs.state import PhaseTiming, RunError, WorkflowState, merge_client_updates


class AgentOutputs(BaseModel):
    """What a client agent's subgraph hands back to its phase (the keys of the workflow state)."""

    #: the changes to this client's record, as field dicts (see graphs.state.client_update)
    clients: Annotated[dict[str, dict[str, Any]], merge_client_updates] = Field(default_factory=dict)
    agents: Annotated[list[dict[str, Any]], merge_by_id] = Field(default_factory=list)
    timings: Annotated[list[PhaseTiming], merge_by_id] = Field(default_factory=list)
    errors: Annotated[list[RunError], merge_by_id] = Field(default_factory=list)
    privacy: Annotated[list[dict[str, Any]], merge_by_id] = Field(default_factory=list)
    approvals: Annotated[list[dict[str, Any]], merge_by_id] = Field(default_factory=list)


class ClientAgentState(ClientTask, AgentLoop, AgentOutputs):
    """A client agent's subgraph: its task, its conversation, what it hands back."""

    skipped: str | None = None


class ServerAgentState(WorkflowState, AgentLoop):
    """A server agent's subgraph: the workflow's state plus its own conversation."""

    skipped: str | None = None


def _setup(spec: AgentSpec, state: Any) -> AgentSetup:
    """The agent's runtime objects, rebuilt from the checkpointed state (cached where costly)."""
    from agents.providers import ProviderUnavailable

    config = state.config
    client = getattr(state, "client", None) if spec.side == "client" else None
    role = ROLES[spec.role]
    setup = AgentSetup(role=spec.role, client=client, model=None, parse=role.parse, budget=config.budget,
                       retries=config.retries, first_tool=role.first_tool, run_id=config.run_id)
    try:
        setup.model = runtime.chat_model(config, agent=setup.where)
        setup.tools = _tools(spec.role, config, client, spec.extra_tools(state) if spec.extra_tools else None)
        setup.parse = spec.parse(state) if spec.parse else role.parse
        setup.answer_tool = answer_tool(role) if config.submit_tool and role.schema is not None else None
        setup.auditor = runtime.privacy_auditor(config)
        setup.transcript = runtime.transcript_writer(config)
        setup.cache = runtime.response_cache(config)
        setup.provider_key = runtime.provider_key(config)
        setup.describe_provider = runtime.provider_message(config)
        setup.window = runtime.context_window(config)
        setup.deadline = runtime.deadline(config)
        setup.gates = spec.gates(state) if spec.gates and config.approve else {}
    except Exception as exc:  # building the model or tools failed: a recorded failure, never a crash
        if type(exc).__name__ in ("ProviderError", "ProviderUnavailable"):
            raise
        if type(exc).__name__ == "LocalModelError":  # llama.cpp would not start: the machine's failure
            raise ProviderUnavailable(f"{setup.where}: {exc}") from exc
        setup.broken = f"{type(exc).__name__}: {exc}"
    return setup


def _prepare(spec: AgentSpec, state: Any) -> dict[str, Any]:
    ctx = spec.prepare(state)  # a client agent's state is its ClientTask and more
    if isinstance(ctx, Skip):
        return {"skipped": ctx.why}
    setup = _setup(spec, state)
    role = ROLES[spec.role]
    system = system_prompt(role, state.config.guidance, setup.client, submit_tool=state.config.submit_tool)
    return opening(setup, system, user_prompt(role, state.config.guidance, ctx))


def _finish(spec: AgentSpec, state: Any) -> dict[str, Any]:
    if state.skipped:
        return spec.finish(state, None, skipped=state.skipped)
    client = getattr(state, "client", None) if spec.side == "client" else None
    outcome = (AgentOutcome.model_validate(state.outcome) if state.outcome else
               AgentOutcome(role=spec.role, client=client, ok=False, error="the agent did not finish",
                            usage=UsageRecord(role=spec.role, client=client)))
    return {**record(state.config, outcome, list(state.privacy)), **spec.finish(state, outcome)}


@functools.lru_cache(maxsize=None)
def agent_graph(role: str):
    """The compiled subgraph of agent ``role`` (no checkpointer: it inherits the workflow's)."""
    return agent_builder(role).compile(name=role)


def agent_builder(role: str) -> StateGraph:
    """Agent ``role``'s graph, uncompiled: a site service compiles a client agent's with its own
    checkpointer (graphs.remote)."""
    spec = AGENTS[role]
    client = spec.side == "client"
    g = StateGraph(ClientAgentState if client else ServerAgentState,
                   input_schema=ClientTask if client else WorkflowState,
                   output_schema=AgentOutputs if client else WorkflowState)
    g.add_node("prepare", functools.partial(_prepare, spec))
    g.add_node("finish", functools.partial(_finish, spec))
    g.add_edge(START, "prepare")
    g.add_conditional_edges("prepare", lambda state: "finish" if state.skipped else "model", ["model", "finish"])
    add_agent_loop(g, functools.partial(_setup, spec), None, "finish")
    g.add_edge("finish", END)
    return g
