"""An agent's records, its guard-rail wording and the helpers of its steps; :func:`run_agent` runs one
agent as a one-off graph.

The steps themselves (model call, tool calls, answer, approval) are nodes of a LangGraph subgraph in
:mod:`agents.loop`, so the workflow checkpoints an agent after every step. An agent's own failures
come back as an :class:`AgentOutcome`; only provider failures raise (:mod:`agents.providers`),
because they are not the agent's.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from agents.results import split_reasoning

Parser = Callable[[str], BaseModel]


class UsageRecord(BaseModel):
    """Tokens one agent used (from the provider's usage metadata)."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    role: str
    client: str | None = None
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    #: the part of ``output_tokens`` spent thinking (the provider's figure; else estimated from the
    #: thinking text at four characters a token)
    reasoning_tokens: int = 0
    #: model calls answered from the response cache
    cached_calls: int = 0
    #: the largest prompt one call carried (the provider's count where it gave one, else estimated)
    peak_prompt_tokens: int = 0
    #: tool calls the model wrote as text in its reply (no tool parser on the serving stack)
    text_tool_calls: int = 0
    #: times the context policy elided old tool results to stay inside the window
    context_edits: int = 0


class ToolCallRecord(BaseModel):
    role: str
    client: str | None = None
    tool: str
    ok: bool
    #: "ok", or what went wrong: unknown_tool, argument_error, bad_path, tool_error
    kind: str = "ok"
    args: dict[str, Any] = Field(default_factory=dict)
    output: str = ""


class AgentOutcome(BaseModel):
    """What an agent achieved; ``ok`` False carries the reason in ``error``."""

    role: str
    client: str | None = None
    ok: bool
    text: str = ""
    result: dict[str, Any] | None = None
    error: str | None = None
    steps: int = 0
    seconds: float = 0.0
    #: time inside the model and inside tools; the rest of ``seconds`` is the harness itself
    model_seconds: float = 0.0
    tool_seconds: float = 0.0
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    #: calls that repeated an earlier call with the same arguments and got the same output
    repeated_calls: int = 0
    #: how the answer arrived: "text" (protocol lines or JSON), "tool" (submit_answer) or None
    answered_by: str | None = None
    usage: UsageRecord

    def tool_error_kinds(self) -> dict[str, int]:
        """Failed tool calls by kind (unknown_tool, argument_error, bad_path, tool_error)."""
        kinds: dict[str, int] = {}
        for call in self.tool_calls:
            if not call.ok:
                kinds[call.kind] = kinds.get(call.kind, 0) + 1
        return kinds


class Auditor:
    """Interface of the privacy auditor (graphs.privacy); the default records nothing."""

    def check(self, text: str, where: str) -> None:  # pragma: no cover - interface
        return None


Transcript = Callable[[dict[str, Any]], None]

#: model calls left when the agent is told to stop calling tools and answer (one notice per agent);
#: the very last call is then made without tools (or with only ``submit_answer``, forced)
LAST_CALLS = 2
LAST_CALLS_NOTE = ("You have {n} model calls left. Stop calling tools and give your final answer now, "
                   "in the format the instructions ask for.")
LAST_CALLS_NOTE_TOOL = ("You have {n} model calls left. Stop calling tools and give your final answer now: "
                        "call submit_answer, or answer in the format the instructions ask for.")

#: said when a call repeats an earlier one with the same arguments and gets the same output
REPEAT_NOTE = ("You called {tools} again with the same arguments and got the same result as before. "
               "Use that result: call a different tool, or give your final answer.")

SUBMIT = "submit_answer"

#: errors that are their own failure classes (eval.taxonomy reads these prefixes)
CONTEXT_OVERFLOW = "context overflow"
RUN_TIMEOUT_ERROR = "run time limit reached"


def _retry_base() -> float:
    return float(os.environ.get("FEDAGENTBENCH_RETRY_BASE_S", "1.0"))


class RunTimeout(Exception):
    """The run's wall-clock limit (``--run-timeout``) passed during this agent."""


def _call_before(fn: Callable[[], Any], deadline: float | None) -> Any:
    """``fn()``, or :class:`RunTimeout` when ``deadline`` (``time.time()``) passes first. A call that
    outlives the deadline is abandoned to its own request timeout; the run does not wait for it."""
    if deadline is None:
        return fn()
    remaining = deadline - time.time()
    if remaining <= 0:
        raise RunTimeout()
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="model-call", daemon=True).start()
    if not done.wait(remaining):
        raise RunTimeout()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _content_text(message: Any) -> str:
    """The message's text; reasoning content blocks (OpenAI, Anthropic shapes) are left out."""
    content = getattr(message, "content", "")
    if isinstance(content, list):  # content blocks
        return "".join(part.get("text", "") if isinstance(part, dict) and part.get("type", "text") == "text"
                       else (part if isinstance(part, str) else "") for part in content)
    return str(content or "")


def reply_parts(message: Any) -> tuple[str, str]:
    """``(answer, thinking)`` of a model reply: ``<think>`` blocks in the text, the provider's
    reasoning fields (DeepSeek ``reasoning_content``, Ollama ``thinking``, OpenAI reasoning items)."""
    answer, thinking = split_reasoning(_content_text(message))
    extra = []
    kwargs = getattr(message, "additional_kwargs", None) or {}
    for field in ("reasoning_content", "thinking", "reasoning"):
        value = kwargs.get(field)
        if isinstance(value, dict):  # OpenAI Responses: {"summary": [{"text": ...}]}
            value = " ".join(s.get("text", "") for s in value.get("summary", []) if isinstance(s, dict))
        if isinstance(value, str) and value.strip():
            extra.append(value.strip())
    content = getattr(message, "content", "")
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("reasoning", "thinking"):
                text = part.get("thinking") or part.get("reasoning") or part.get("text") or ""
                if not text and isinstance(part.get("summary"), list):
                    text = " ".join(s.get("text", "") for s in part["summary"] if isinstance(s, dict))
                if text.strip():
                    extra.append(text.strip())
    return answer, "\n".join(extra + ([thinking] if thinking else []))


def _without_thinking(reply: Any, answer: str) -> Any:
    """The reply as it goes back into the conversation: thinking left out (DeepSeek refuses
    ``reasoning_content`` in its input, and old drafts only confuse later turns)."""
    kwargs = {k: v for k, v in (getattr(reply, "additional_kwargs", None) or {}).items()
              if k not in ("reasoning_content", "thinking", "reasoning")}
    try:
        return reply.model_copy(update={"content": answer, "additional_kwargs": kwargs})
    except Exception:  # pragma: no cover - a message type without model_copy
        return reply


def _wait_seconds(exc: BaseException, attempt: int) -> float:
    from agents.providers import retry_after

    backoff = _retry_base() * (2 ** attempt)
    asked = retry_after(exc)
    return max(backoff, asked) if asked is not None else backoff


def run_agent(*, system: str, user: str, **setup: Any) -> AgentOutcome:
    """Run one agent to a parsed result, within ``budget`` model calls, as a one-off graph
    (:mod:`agents.loop`; the workflow runs the same steps as checkpointed subgraphs).

    ``setup`` are the fields of :class:`agents.loop.AgentSetup`: ``role``, ``model``, ``tools``,
    ``parse``, ``budget``, ``retries``, ``auditor``, ``first_tool``, ``answer_tool`` (``submit_answer``,
    offered beside the role's tools and forced on the last call), ``transcript`` (receives every
    message, tool call and result), ``cache``, ``window`` (the model's context window: an overflow
    ends the agent as ``context overflow``), ``deadline`` (``time.time()``) and the provider's key
    and error wording. Provider failures that no retry fixes raise
    :class:`agents.providers.ProviderError`; transient ones that outlast ``retries`` raise
    :class:`agents.providers.ProviderUnavailable`: infrastructure is never scored as an answer."""
    from agents.loop import AgentSetup, compile_agent, opening, recursion_limit

    agent = AgentSetup(**setup)
    final = compile_agent(agent).invoke(opening(agent, system, user),
                                        {"recursion_limit": recursion_limit(agent.budget)})
    return AgentOutcome.model_validate(final["outcome"])


def merge_by_id(left: list | None, right: list | None) -> list:
    """Append records whose ``id`` is new (idempotent under replays and subgraph hand-backs)."""
    out = list(left or [])
    seen = {_record_id(r) for r in out}
    for record in right or []:
        if _record_id(record) not in seen:
            out.append(record)
            seen.add(_record_id(record))
    return out


def _record_id(record: Any) -> str:
    return record["id"] if isinstance(record, dict) else record.id


_BAD_PATH = ("outside the workspace", "does not exist", "no such file", "cannot be resolved", "not a folder",
             "is not a directory", "not found")


def _invoke_tool(by_name: dict[str, Any], call: dict[str, Any], cap: int) -> tuple[str, str]:
    """Run one tool call: ``(output, kind)``; every failure becomes a message for the model."""
    tool = by_name.get(call.get("name", ""))
    if tool is None:
        return (f"error: there is no tool named {call.get('name')!r}; available: {', '.join(sorted(by_name))}",
                "unknown_tool")
    try:
        output = tool.invoke(call.get("args") or {})
    except Exception as exc:  # argument validation errors and tool bugs alike
        kind = "argument_error" if type(exc).__name__ in ("ValidationError", "TypeError", "ToolException") \
            else "tool_error"
        return f"error: {call['name']} failed: {type(exc).__name__}: {str(exc)[:400]}", kind
    text = output if isinstance(output, str) else str(output)
    kind = "ok"
    if text.lower().startswith("error"):
        lowered = text.lower()
        kind = ("argument_error" if "invalid arguments" in lowered
                else "bad_path" if any(m in lowered for m in _BAD_PATH) else "tool_error")
    if len(text) > cap:
        text = text[:cap] + f"\n[... output truncated at {cap} characters]"
    return text, kind
