"""Why a sub-task failed: every failed sub-task gets one class, from what its agents did.

The classes follow the failure modes the paper analyses by hand (tool-argument errors,
hallucinated paths, loops, premature stops), computed from each agent's record: its error, the
kinds of its failed tool calls, its repeated calls and its privacy violations. When several apply,
the first in :data:`CLASSES` wins (the one closest to the root cause).
"""

from __future__ import annotations

from typing import Any

from eval.scoring import SUBTASKS

#: failure classes, most decisive first
CLASSES: tuple[str, ...] = (
    "infrastructure_error",        # the provider or the harness failed: the run is not scored
    "privacy_violation",           # a model input or transcript carried pixels, identifiers or key content
    "run_timeout",                 # the run's wall-clock limit (--run-timeout) passed before the agent answered
    "context_overflow",            # the conversation outgrew the model's context window (refused, cut or truncated)
    "repeated_call_loop",          # the budget ran out while the agent repeated identical calls
    "budget_exhausted",            # the budget ran out without an answer
    "unparseable_or_empty_answer", # an answer came, in no readable form
    "unknown_tool",                # called a tool it does not have
    "bad_path",                    # a path outside the workspace or one that does not exist
    "tool_argument_error",         # malformed or invalid tool arguments
    "request_refused",             # the provider refused a request for another reason (HTTP 400 ...)
    "harness_error",               # the agent could not be started
    "not_reached",                 # the agent never ran: an earlier phase left it nothing to do
    "wrong_answer",                # the agent answered, readably, and the answer was wrong
)

#: which agents a sub-task's score depends on
SUBTASK_ROLE = {subtask: subtask for subtask in SUBTASKS}

_TOOL_KIND_CLASS = {"unknown_tool": "unknown_tool", "bad_path": "bad_path", "argument_error": "tool_argument_error"}


def agent_classes(agent: dict[str, Any]) -> list[str]:
    """Every class that applies to one agent's record (a summary from the workflow state)."""
    found: list[str] = []
    error = (agent.get("error") or "").lower()
    if agent.get("privacy_violations"):
        found.append("privacy_violation")
    if not agent.get("ok", False):
        if error.startswith("context overflow"):
            found.append("context_overflow")
        elif error.startswith("run time limit"):
            found.append("run_timeout")
        elif "step budget" in error:
            found.append("repeated_call_loop" if agent.get("repeated_calls", 0) >= 2 else "budget_exhausted")
        elif "unparseable answer" in error or "empty answer" in error:
            found.append("unparseable_or_empty_answer")
        elif "model call refused" in error:
            found.append("request_refused")
        else:
            found.append("harness_error")
    for kind in (agent.get("tool_error_kinds") or {}):
        if kind in _TOOL_KIND_CLASS:
            found.append(_TOOL_KIND_CLASS[kind])
    return found


def classify_subtask(subtask: str, agents: list[dict[str, Any]]) -> str:
    """The class of one failed sub-task, from the records of the agents that played its role."""
    mine = [a for a in agents if a.get("role") == SUBTASK_ROLE.get(subtask)]
    if not mine:
        return "not_reached"
    found = {c for a in mine for c in agent_classes(a)}
    for cls in CLASSES:
        if cls in found:
            return cls
    return "wrong_answer"


def classify_run(subtasks: dict[str, bool], agents: list[dict[str, Any]], failed: str | None = None) -> dict[str, str]:
    """``{sub-task: class}`` for every failed sub-task of a run."""
    if failed:
        return {name: "infrastructure_error" for name in subtasks}
    return {name: classify_subtask(name, agents) for name, passed in subtasks.items() if not passed}
