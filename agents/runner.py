"""One agent's tool-calling loop, with the guard rails a benchmark needs.

Why not ``create_react_agent``: the benchmark must bound every agent by a step budget, retry
provider errors with backoff and then *record* the failure, return malformed tool calls to the
model as errors, audit every model input for privacy, force the first tool for small models, and
count tokens per role and client. A run never raises out of here.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, Field

from agents.results import ParseError

Parser = Callable[[str], BaseModel]


class UsageRecord(BaseModel):
    """Tokens one agent used (from the provider's usage metadata)."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    role: str
    client: str | None = None
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class ToolCallRecord(BaseModel):
    role: str
    client: str | None = None
    tool: str
    ok: bool
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
    usage: UsageRecord


class Auditor:
    """Interface of the privacy auditor (graphs.privacy); the default records nothing."""

    def check(self, text: str, where: str) -> None:  # pragma: no cover - interface
        return None


#: model calls left when the agent is told to stop calling tools and answer (one notice per agent);
#: the very last call is then made without tools
LAST_CALLS = 2
LAST_CALLS_NOTE = ("You have {n} model calls left. Stop calling tools and give your final answer now, "
                   "in the format the instructions ask for.")


#: said when a call repeats an earlier one with the same arguments and gets the same output
REPEAT_NOTE = ("You called {tools} again with the same arguments and got the same result as before. "
               "Use that result: call a different tool, or give your final answer.")


def _retry_base() -> float:
    return float(os.environ.get("FEDAGENTBENCH_RETRY_BASE_S", "1.0"))


def _content_text(message: Any) -> str:
    content = getattr(message, "content", "")
    if isinstance(content, list):  # content blocks
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content or "")


def run_agent(
    *,
    role: str,
    model: Any,
    tools: Sequence[Any],
    system: str,
    user: str,
    parse: Parser,
    client: str | None = None,
    budget: int = 12,
    retries: int = 3,
    auditor: Auditor | None = None,
    first_tool: str | None = None,
    output_cap: int = 6000,
) -> AgentOutcome:
    """Run one agent to a parsed result, within ``budget`` model calls."""
    from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage

    started = time.perf_counter()
    usage = UsageRecord(role=role, client=client)
    calls: list[ToolCallRecord] = []
    by_name = {t.name: t for t in tools}
    messages: list[Any] = [SystemMessage(system), HumanMessage(user)]
    where = f"{role}@{client}" if client else role
    reminded = False
    earlier: dict[str, str] = {}  # (tool, arguments) -> its last output, to notice calls that learn nothing new
    timers = {"model": 0.0, "tool": 0.0}

    def outcome(ok: bool, text: str = "", result: BaseModel | None = None, error: str | None = None, steps: int = 0):
        return AgentOutcome(role=role, client=client, ok=ok, text=text[:4000],
                            result=result.model_dump() if result is not None else None, error=error, steps=steps,
                            seconds=round(time.perf_counter() - started, 4), model_seconds=round(timers["model"], 4),
                            tool_seconds=round(timers["tool"], 4), tool_calls=calls, usage=usage)

    for step in range(budget):
        if tools and step == budget - LAST_CALLS and step > 0:
            messages.append(HumanMessage(LAST_CALLS_NOTE.format(n=LAST_CALLS)))
        if auditor is not None:
            for m in messages:
                auditor.check(_content_text(m), f"model input of {where}")
        bound = model
        last_call = step == budget - 1 and step > 0  # must answer: no tools offered (some providers ignore "none")
        if tools and hasattr(model, "bind_tools") and not last_call:
            force = first_tool if (step == 0 and first_tool in by_name) else None
            bound = model.bind_tools(list(tools), tool_choice=force) if force else model.bind_tools(list(tools))
        reply, last_error = None, None
        for attempt in range(retries + 1):
            t0 = time.perf_counter()
            try:
                reply = bound.invoke(messages)
                timers["model"] += time.perf_counter() - t0
                break
            except Exception as exc:  # provider errors, timeouts, rate limits: retried, then recorded
                timers["model"] += time.perf_counter() - t0
                last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                if attempt < retries:
                    time.sleep(_retry_base() * (2 ** attempt))
        if reply is None:
            return outcome(False, error=f"model call failed after {retries + 1} attempts: {last_error}", steps=step + 1)
        usage.model_calls += 1
        meta = getattr(reply, "usage_metadata", None) or {}
        usage.input_tokens += int(meta.get("input_tokens", 0) or 0)
        usage.output_tokens += int(meta.get("output_tokens", 0) or 0)
        messages.append(reply)

        tool_calls = list(getattr(reply, "tool_calls", None) or [])
        invalid = list(getattr(reply, "invalid_tool_calls", None) or [])
        if tool_calls or invalid:
            for bad in invalid:
                text = f"error: malformed tool call {bad.get('name')!r}: {bad.get('error') or 'arguments are not valid JSON'}"
                calls.append(ToolCallRecord(role=role, client=client, tool=str(bad.get("name")), ok=False, output=text))
                messages.append(ToolMessage(text, tool_call_id=bad.get("id") or "invalid"))
            repeated = []
            for call in tool_calls:
                t0 = time.perf_counter()
                output, ok = _invoke_tool(by_name, call, output_cap)
                timers["tool"] += time.perf_counter() - t0
                calls.append(ToolCallRecord(role=role, client=client, tool=call["name"], ok=ok,
                                            args=call.get("args") or {}, output=output[:500]))
                messages.append(ToolMessage(output, tool_call_id=call.get("id") or call["name"]))
                key = json.dumps([call.get("name"), call.get("args") or {}], sort_keys=True, default=str)
                if earlier.get(key) == output:
                    repeated.append(str(call.get("name")))
                earlier[key] = output
            if repeated:  # a separate turn: the tool's own output stays exactly what the tool said
                messages.append(HumanMessage(REPEAT_NOTE.format(tools=", ".join(sorted(set(repeated))))))
            continue

        text = _content_text(reply)
        try:
            return outcome(True, text=text, result=parse(text), steps=step + 1)
        except ParseError as exc:
            if reminded or step == budget - 1:
                return outcome(False, text=text, error=f"unparseable answer: {exc}", steps=step + 1)
            reminded = True
            messages.append(HumanMessage(f"Your answer could not be read: {exc}. Answer again in that format."))
    return outcome(False, error=f"step budget of {budget} model calls exhausted", steps=budget)


def _invoke_tool(by_name: dict[str, Any], call: dict[str, Any], cap: int) -> tuple[str, bool]:
    """Run one tool call; every failure becomes a message for the model."""
    tool = by_name.get(call.get("name", ""))
    if tool is None:
        return f"error: there is no tool named {call.get('name')!r}; available: {', '.join(sorted(by_name))}", False
    try:
        output = tool.invoke(call.get("args") or {})
    except Exception as exc:  # argument validation errors and tool bugs alike
        return f"error: {call['name']} failed: {type(exc).__name__}: {str(exc)[:400]}", False
    text = output if isinstance(output, str) else str(output)
    ok = not text.lower().startswith("error")
    if len(text) > cap:
        text = text[:cap] + f"\n[... output truncated at {cap} characters]"
    return text, ok
