"""One agent as a LangGraph subgraph: its conversation lives in the subgraph's own checkpointed state.

    model ──tool calls──▶ (approve) ──▶ tools ──▶ model …
      │ no tool call                       │ submit_answer, budget spent
      ▼                                    ▼
    answer ──unreadable, once──▶ model    done
      └──────────────▶ done

Every step is a node, so a checkpointer records the agent after each model call and each tool step:
Studio shows the calls, a killed run resumes at the last finished step, and ``approve`` can pause
for a person (a LangGraph interrupt) before a tool that changes data runs.

Why our own nodes and not ``langchain.agents.create_agent``: its tool node runs every tool call of
one reply as a separate parallel task, so a reply that copies a dataset and then removes files from
it would run both at once, in no fixed order; a benchmark must run a model's calls in the order it
wrote them. The guards are the ones a benchmark needs and no middleware provides as such: a step
budget with a last-calls notice and a forced ``submit_answer``, thinking kept out of the answer,
tool calls written as text, retries that honour ``Retry-After`` and a provider's rate limit, the
context window, the run's deadline, the privacy audit of every model input, transcripts and the
response cache. Runtime objects (model, tools, auditor) are rebuilt from the state by ``setup_of``;
only plain values are checkpointed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from pydantic import BaseModel, Field

from agents.results import ParseError
from agents.runner import (
    CONTEXT_OVERFLOW,
    LAST_CALLS,
    LAST_CALLS_NOTE,
    LAST_CALLS_NOTE_TOOL,
    REPEAT_NOTE,
    RUN_TIMEOUT_ERROR,
    SUBMIT,
    AgentOutcome,
    RunTimeout,
    ToolCallRecord,
    UsageRecord,
    _call_before,
    _content_text,
    _invoke_tool,
    _wait_seconds,
    _without_thinking,
    merge_by_id,
    reply_parts,
)


@dataclass
class AgentSetup:
    """What one agent runs with (runtime objects, rebuilt per step, never checkpointed)."""

    role: str
    model: Any
    parse: Callable[[str], BaseModel]
    tools: Sequence[Any] = ()
    client: str | None = None
    budget: int = 12
    retries: int = 5
    auditor: Any | None = None
    first_tool: str | None = None
    output_cap: int = 6000
    answer_tool: Any | None = None
    transcript: Callable[[dict[str, Any]], None] | None = None
    cache: Any | None = None
    provider_key: str | None = None
    describe_provider: Callable[[str, BaseException], str] | None = None
    window: Any | None = None
    deadline: float | None = None
    #: tools a person approves before they run: name -> what the call would do, in words
    gates: dict[str, Callable[[dict[str, Any]], str]] = field(default_factory=dict)
    #: a stable name for this agent run (approval records, transcripts)
    run_id: str = ""
    #: why the model or the tools could not be built: the agent fails with it, the run goes on
    broken: str | None = None

    @property
    def where(self) -> str:
        return f"{self.role}@{self.client}" if self.client else self.role

    def emit(self, kind: str, step: int, **fields: Any) -> None:
        if self.transcript is None:
            return
        if self.auditor is not None and fields.get("content"):
            # the same label as model inputs: a text seen both ways is one violation, not two
            self.auditor.check(str(fields["content"]), f"model input of {self.where}")
        self.transcript({"ts": time.time(), "role": self.role, "client": self.client, "step": step, "kind": kind,
                         **fields})

    def violations(self) -> list[dict[str, Any]]:
        return [v.model_dump() for v in getattr(self.auditor, "violations", [])]


class AgentLoop(BaseModel):
    """The agent's own state: its conversation and counters (plain values, checkpointed per step)."""

    messages: Annotated[list[AnyMessage], add_messages] = Field(default_factory=list)
    #: model calls made so far
    step: int = 0
    reminded: bool = False
    repeats: int = 0
    #: (tool, arguments) -> a digest of its last output, to notice calls that learn nothing new
    earlier: dict[str, str] = Field(default_factory=dict)
    usage: dict[str, Any] = Field(default_factory=dict)
    calls: list[dict[str, Any]] = Field(default_factory=list)
    #: seconds inside the model, inside tools, and in all steps together
    timers: dict[str, float] = Field(default_factory=dict)
    #: the context policy's calibration (provider's prompt count / our estimate)
    context_ratio: float = 1.0
    #: set by the step that ends the agent: ok, text, result, error, steps, answered_by
    ending: dict[str, Any] | None = None
    #: the finished agent (:class:`agents.runner.AgentOutcome` as a dict), written by ``done``
    outcome: dict[str, Any] | None = None
    #: ids of gated tool calls a person approved (or edited): the tool step may run them
    cleared: list[str] = Field(default_factory=list)
    #: a person's decisions on gated tool calls
    approvals: Annotated[list[dict[str, Any]], merge_by_id] = Field(default_factory=list)
    privacy: Annotated[list[dict[str, Any]], merge_by_id] = Field(default_factory=list)


def opening(setup: AgentSetup, system: str, user: str) -> dict[str, Any]:
    """The first state of an agent: its instructions (recorded in the transcript)."""
    setup.emit("system", 0, content=system)
    setup.emit("user", 0, content=user)
    return {"messages": [SystemMessage(system), HumanMessage(user)],
            "usage": UsageRecord(role=setup.role, client=setup.client).model_dump(), "step": 0, "reminded": False,
            "repeats": 0, "earlier": {}, "calls": [], "context_ratio": 1.0, "ending": None, "outcome": None,
            "timers": {"_end": time.perf_counter(), "_pid": float(os.getpid())}}


def _end(ok: bool, steps: int, text: str = "", result: BaseModel | dict | None = None, error: str | None = None,
         answered_by: str | None = None) -> dict[str, Any]:
    if isinstance(result, BaseModel):
        result = result.model_dump()
    return {"ok": ok, "text": text, "result": result, "error": error, "steps": steps, "answered_by": answered_by}


def _timed(state: AgentLoop, started: float, count_gap: bool = True, **extra: float) -> dict[str, float]:
    """The agent's timers after a step that began at ``started`` (``perf_counter``): ``total`` is its
    wall time, the steps and the graph's work between them (checkpoint writes) alike; the time a
    killed run lay dead, or a person took to answer, is left out."""
    timers = dict(state.timers)
    now = time.perf_counter()
    same_process = timers.get("_pid") == os.getpid() and "_end" in timers
    gap = started - timers["_end"] if same_process and count_gap else 0.0
    timers["total"] = timers.get("total", 0.0) + now - started + max(0.0, gap)
    for k, v in extra.items():
        timers[k] = timers.get(k, 0.0) + v
    timers["_end"], timers["_pid"] = now, float(os.getpid())
    return timers


_SCHEMA_SIZES: dict[tuple[str, ...], int] = {}


def _policy(setup: AgentSetup, ratio: float):
    from agents.context import ContextPolicy, ContextWindow

    window = setup.window or ContextWindow()
    policy = ContextPolicy(window.prompt_limit)
    policy.ratio = ratio
    policy._schemas = _SCHEMA_SIZES  # tool schemas are sized once per tool set, not per step
    return window, policy


def model_step(state: AgentLoop, setup: AgentSetup) -> dict[str, Any]:
    """One model call with every guard; the reply (thinking left out) joins the conversation."""
    from agents.context import overflow_error, reply_overflow
    from agents.limits import provider_limit
    from agents.providers import ProviderError, ProviderUnavailable, classify, status_code
    from agents.text_tools import parse_text_tool_calls

    started = time.perf_counter()
    step, budget, answer_tool = state.step, setup.budget, setup.answer_tool
    usage = UsageRecord.model_validate(state.usage or {"role": setup.role, "client": setup.client})
    new: list[Any] = []

    def stop(error: str, steps: int, model_s: float = 0.0, text: str = "") -> dict[str, Any]:
        return {"messages": new, "usage": usage.model_dump(), "ending": _end(False, steps, text=text, error=error),
                "timers": _timed(state, started, model=model_s), "privacy": setup.violations()}

    if setup.broken:
        return stop(setup.broken, step)
    if step >= budget:
        return stop(f"step budget of {budget} model calls exhausted", budget)
    if setup.deadline is not None and time.time() >= setup.deadline:
        setup.emit("note", step, content="the run's time limit has passed")
        return stop(RUN_TIMEOUT_ERROR, step)
    tools = list(setup.tools)
    by_name = {t.name for t in tools}
    offered = tools + ([answer_tool] if answer_tool is not None else [])
    if offered and step == budget - LAST_CALLS and step > 0:
        text = (LAST_CALLS_NOTE_TOOL if answer_tool is not None else LAST_CALLS_NOTE).format(n=LAST_CALLS)
        new.append(HumanMessage(text))
        setup.emit("user", step, content=text)
    messages = list(state.messages) + new
    if setup.auditor is not None:
        for m in messages:
            setup.auditor.check(_content_text(m), f"model input of {setup.where}")
    last_call = step == budget - 1 and step > 0  # must answer: no role tools (some providers ignore "none")
    bound, bound_tools, choice = setup.model, [], None
    if hasattr(setup.model, "bind_tools"):
        if (last_call or state.reminded) and answer_tool is not None:  # the answer's last chance: forced
            bound_tools, choice = [answer_tool], SUBMIT
        elif offered and not last_call:
            bound_tools = offered
            choice = setup.first_tool if (step == 0 and setup.first_tool in by_name) else None
        if bound_tools:
            bound = (setup.model.bind_tools(bound_tools, tool_choice=choice) if choice
                     else setup.model.bind_tools(bound_tools))
    window, policy = _policy(setup, state.context_ratio)
    before = list(messages)
    fits, edit, sent = policy.apply(messages, bound_tools)
    new += [m for m, old in zip(messages, before, strict=True) if m is not old and m not in new]  # elided: replaced
    if edit is not None:
        usage.context_edits += 1
        setup.emit("note", step, content=(f"context policy: {edit.elided} oldest tool result(s) elided "
                                          f"(~{edit.before} -> ~{edit.after} prompt tokens; limit {edit.limit})"),
                   policy="elide oldest tool results", **edit.model_dump())
    if not fits:
        error = (f"{CONTEXT_OVERFLOW}: the conversation needs ~{sent} prompt tokens and the {window.tokens}-token "
                 f"window leaves {window.prompt_limit} beside a {window.max_output}-token reply, even with old "
                 "tool results elided")
        setup.emit("note", step, content=error)
        return stop(error, step)
    limit = provider_limit(setup.provider_key)
    reply = setup.cache.get(messages, bound_tools, choice) if setup.cache is not None else None
    cached = reply is not None
    model_s, t0 = 0.0, time.perf_counter()
    for attempt in range(setup.retries + 1):
        if reply is not None:
            break
        t0 = time.perf_counter()
        try:
            def call(bound: Any = bound, messages: list[Any] = messages) -> Any:
                if limit is None:
                    return bound.invoke(messages)
                with limit.slot():
                    return bound.invoke(messages)

            reply = _call_before(call, setup.deadline)
            model_s += time.perf_counter() - t0
            if limit is not None:
                limit.succeeded()
            break
        except RunTimeout:
            model_s += time.perf_counter() - t0
            setup.emit("note", step, content="the run's time limit passed while waiting for the model")
            return stop(RUN_TIMEOUT_ERROR, step + 1, model_s)
        except Exception as exc:
            model_s += time.perf_counter() - t0
            kind = classify(exc)
            message = f"{type(exc).__name__}: {str(exc)[:300]}"
            if overflow_error(exc):  # the server refused a request longer than its window: not transient
                setup.emit("note", step, content=f"{CONTEXT_OVERFLOW}: {message}")
                return stop(f"{CONTEXT_OVERFLOW}: the provider refused the request: {message}", step + 1, model_s)
            if kind in ("auth", "not_found"):
                setup.emit("note", step, content=f"provider error, not retried: {message}")
                raise ProviderError(setup.describe_provider(kind, exc) if setup.describe_provider else message) \
                    from exc
            if kind == "other":  # the provider refused this request: the agent's failure
                setup.emit("note", step, content=f"model call refused: {message}")
                return stop(f"model call refused: {message}", step + 1, model_s)
            if attempt == setup.retries:
                setup.emit("note", step, content=f"provider error after {setup.retries + 1} attempts: {message}")
                if kind == "unreachable":
                    raise ProviderError(setup.describe_provider(kind, exc) if setup.describe_provider
                                        else message) from exc
                raise ProviderUnavailable(f"{setup.where}: model call failed after {setup.retries + 1} attempts: "
                                          f"{message}") from exc
            wait = _wait_seconds(exc, attempt)
            if limit is not None and (status_code(exc) == 429 or "RateLimitError" in type(exc).__name__):
                limit.rate_limited(wait)  # every request to this provider waits, and fewer go at once
            setup.emit("note", step, content=f"retry {attempt + 1}/{setup.retries} in {wait:.1f} s after {message}")
            if setup.deadline is not None and time.time() + wait >= setup.deadline:
                setup.emit("note", step, content="the run's time limit passes before the retry")
                return stop(RUN_TIMEOUT_ERROR, step + 1, model_s)
            time.sleep(wait)
    if setup.cache is not None and not cached:
        setup.cache.put(messages, bound_tools, choice, reply)
    usage.model_calls += 1
    usage.cached_calls += int(cached)
    meta = getattr(reply, "usage_metadata", None) or {}
    reported = int(meta.get("input_tokens", 0) or 0)
    if not cached:
        policy.calibrate(sent, reported)
    usage.peak_prompt_tokens = max(usage.peak_prompt_tokens, reported or sent)
    usage.input_tokens += reported
    usage.output_tokens += int(meta.get("output_tokens", 0) or 0)
    answer, thinking = reply_parts(reply)
    reasoning = int(((meta.get("output_token_details") or {}).get("reasoning")) or 0)
    if not reasoning and thinking:
        reasoning = max(1, len(thinking) // 4)
    usage.reasoning_tokens += reasoning
    tool_calls = list(getattr(reply, "tool_calls", None) or [])
    invalid = list(getattr(reply, "invalid_tool_calls", None) or [])
    written = None
    if not tool_calls and not invalid and bound_tools:  # no tool parser on the serving stack?
        parsed, rest, written = parse_text_tool_calls(answer, {t.name for t in bound_tools})
        if parsed:
            tool_calls = [{**c, "id": f"text_{step}_{i}", "type": "tool_call"} for i, c in enumerate(parsed)]
            usage.text_tool_calls += len(tool_calls)
            answer = rest
            reply = reply.model_copy(update={"tool_calls": tool_calls, "content": rest})
    overflow = None if cached else reply_overflow(reply, window, sent)
    setup.emit("assistant", step, content=answer, reasoning=thinking, cached=cached,
               seconds=round(time.perf_counter() - t0, 4) if not cached else 0.0,
               tool_calls=[{"id": c.get("id") or "", "name": c.get("name"), "args": c.get("args") or {}}
                           for c in tool_calls] + [{"id": b.get("id") or "", "name": b.get("name"),
                                                    "args": {"_invalid": str(b.get("args"))[:500]}} for b in invalid],
               usage={"input_tokens": reported, "output_tokens": int(meta.get("output_tokens", 0) or 0),
                      "reasoning_tokens": reasoning},
               context={"estimated_prompt_tokens": sent, "window": window.tokens},
               **({"tool_calls_written_as": written} if written else {}))
    update: dict[str, Any] = {"step": step + 1, "usage": usage.model_dump(), "context_ratio": policy.ratio,
                              "timers": _timed(state, started, model=model_s), "privacy": setup.violations()}
    if overflow is not None:
        setup.emit("note", step, content=f"{CONTEXT_OVERFLOW}: {overflow}")
        return {**update, "messages": new, "ending": _end(False, step + 1, text=answer,
                                                          error=f"{CONTEXT_OVERFLOW}: {overflow}")}
    kept = _without_thinking(reply, answer)
    if not getattr(kept, "id", None):
        kept.id = f"{setup.run_id or setup.where}-reply-{step}"
    return {**update, "messages": new + [kept]}


def _last_reply(messages: list[Any]) -> tuple[AIMessage | None, set[str]]:
    """The last model reply and the ids of the tool calls already answered after it."""
    answered: set[str] = set()
    for m in reversed(messages):
        if isinstance(m, AIMessage):
            return m, answered
        if isinstance(m, ToolMessage):
            answered.add(m.tool_call_id)
    return None, answered


def _pending(state: AgentLoop) -> tuple[AIMessage | None, list[dict[str, Any]], list[dict[str, Any]]]:
    reply, answered = _last_reply(state.messages)
    if reply is None:
        return None, [], []
    calls = [c for c in reply.tool_calls if (c.get("id") or c["name"]) not in answered]
    invalid = [b for b in (reply.invalid_tool_calls or []) if (b.get("id") or "invalid") not in answered]
    return reply, calls, invalid


def _waits_for_approval(call: dict[str, Any], state: AgentLoop, setup: AgentSetup) -> bool:
    return call["name"] in setup.gates and (call.get("id") or call["name"]) not in state.cleared


def tool_step(state: AgentLoop, setup: AgentSetup) -> dict[str, Any]:
    """Run the reply's tool calls in the order the model wrote them, up to a call a person must
    approve first (``approve`` asks, then this step goes on); every failure becomes a message."""
    started = time.perf_counter()
    step = state.step - 1
    _, pending, invalid = _pending(state)
    calls = list(state.calls)
    earlier = dict(state.earlier)
    new: list[Any] = []
    tool_s = 0.0
    for bad in invalid:
        text = f"error: malformed tool call {bad.get('name')!r}: {bad.get('error') or 'arguments are not valid JSON'}"
        calls.append(ToolCallRecord(role=setup.role, client=setup.client, tool=str(bad.get("name")), ok=False,
                                    kind="argument_error", output=text).model_dump())
        new.append(ToolMessage(text, tool_call_id=bad.get("id") or "invalid"))
        setup.emit("tool", step, tool=str(bad.get("name")), tool_call_id=bad.get("id"), ok=False, content=text)
    by_name = {t.name: t for t in setup.tools}
    submitted, repeated = None, []
    for call in pending:
        if _waits_for_approval(call, state, setup):  # the calls before it have run: ask about it now
            break
        t0 = time.perf_counter()
        if setup.answer_tool is not None and call.get("name") == SUBMIT:
            try:
                submitted = setup.parse(json.dumps(call.get("args") or {}))
                output, kind = "answer received", "ok"
            except ParseError as exc:
                output, kind = f"error: the answer was not accepted: {exc}", "argument_error"
        else:
            output, kind = _invoke_tool(by_name, call, setup.output_cap)
        took = time.perf_counter() - t0
        tool_s += took
        calls.append(ToolCallRecord(role=setup.role, client=setup.client, tool=call["name"], ok=kind == "ok",
                                    kind=kind, args=call.get("args") or {}, output=output[:500]).model_dump())
        new.append(ToolMessage(output, tool_call_id=call.get("id") or call["name"], name=call["name"]))
        setup.emit("tool", step, tool=call["name"], tool_call_id=call.get("id"), ok=kind == "ok", content=output,
                   seconds=round(took, 4))
        key = json.dumps([call.get("name"), call.get("args") or {}], sort_keys=True, default=str)
        digest = hashlib.sha1(output.encode("utf-8", "replace")).hexdigest()
        if earlier.get(key) == digest:
            repeated.append(str(call.get("name")))
        earlier[key] = digest
    update: dict[str, Any] = {"calls": calls, "earlier": earlier, "privacy": setup.violations()}
    reply, _ = _last_reply(state.messages)
    if submitted is not None:
        text = (_content_text(reply) if reply is not None else "") or json.dumps(submitted.model_dump())
        update["ending"] = _end(True, state.step, text=text, result=submitted, answered_by="tool")
    else:
        update["repeats"] = state.repeats + len(repeated)
        if repeated:  # a separate turn: the tool's own output stays exactly what the tool said
            note = REPEAT_NOTE.format(tools=", ".join(sorted(set(repeated))))
            new.append(HumanMessage(note))
            setup.emit("user", step, content=note)
    return {**update, "messages": new, "timers": _timed(state, started, tool=tool_s)}


def answer_step(state: AgentLoop, setup: AgentSetup) -> dict[str, Any]:
    """Read the reply as the answer; an unreadable one is sent back once with the reason."""
    started = time.perf_counter()
    reply, _ = _last_reply(state.messages)
    answer = _content_text(reply) if reply is not None else ""
    step = state.step - 1
    try:
        return {"ending": _end(True, state.step, text=answer, result=setup.parse(answer), answered_by="text"),
                "timers": _timed(state, started)}
    except ParseError as exc:
        if state.reminded or step == setup.budget - 1:
            error = "empty answer" if not answer.strip() else f"unparseable answer: {exc}"
            return {"ending": _end(False, state.step, text=answer, error=error), "timers": _timed(state, started)}
        note = f"Your answer could not be read: {exc}. Answer again in that format."
        setup.emit("user", step, content=note)
        return {"reminded": True, "messages": [HumanMessage(note)], "timers": _timed(state, started)}


def approve_step(state: AgentLoop, setup: AgentSetup) -> dict[str, Any]:
    """Ask a person about the first gated call the tool step stopped at (a checkpointed interrupt:
    it survives a restart). The calls before it have run, so what it would do is described now.

    The answer is ``approve``, ``reject`` or ``edit`` (with new arguments), as a string or as
    ``{"action": ..., "args": {...}, "note": "..."}``. A rejected call is answered with the
    reviewer's refusal instead of running; an edited one runs with the new arguments."""
    from langgraph.types import interrupt

    reply, pending, _ = _pending(state)
    call = next((c for c in pending if _waits_for_approval(c, state, setup)), None)
    if reply is None or call is None:
        return {}
    args = call.get("args") or {}
    call_id = call.get("id") or call["name"]
    try:
        what = setup.gates[call["name"]](args)
    except Exception as exc:  # noqa: BLE001 - a question that cannot be described is still asked
        what = f"{call['name']} with these arguments (not described: {type(exc).__name__}: {exc})"
    decision = interrupt({"agent": setup.where, "tool": call["name"], "args": args, "what": what,
                          "why": _content_text(reply).strip()[:600]})
    if not isinstance(decision, dict):
        decision = {"action": decision if isinstance(decision, str) else ("approve" if decision is True else "reject")}
    action = str(decision.get("action", "reject")).lower()
    note = str(decision.get("note") or "")
    record = {"id": hashlib.sha1(f"{setup.run_id}|{setup.where}|{call_id}".encode()).hexdigest()[:16],
              "agent": setup.where, "tool": call["name"], "args": args, "decision": action, "note": note}
    update: dict[str, Any] = {"approvals": [record]}
    if action == "edit" and isinstance(decision.get("args"), dict):
        record["edited_args"] = decision["args"]
        calls = [{**c, "args": decision["args"]} if (c.get("id") or c["name"]) == call_id else c
                 for c in reply.tool_calls]
        update["messages"] = [reply.model_copy(update={"tool_calls": calls})]  # same id: replaces the reply
        update["cleared"] = [*state.cleared, call_id]
    elif action == "approve":
        update["cleared"] = [*state.cleared, call_id]
    else:
        record["decision"] = "reject"
        refusal = (f"rejected by the reviewer{': ' + note if note else ''}. The call did not run; do not repeat "
                   "it. Continue without it, or give your final answer.")
        update["messages"] = [ToolMessage(refusal, tool_call_id=call_id, name=call["name"])]
    setup.emit("note", state.step - 1, content=f"reviewer: {record['decision']} {call['name']} {json.dumps(args)}"
               + (f" -> {json.dumps(record['edited_args'])}" if "edited_args" in record else "")
               + (f" ({note})" if note else ""))
    update["timers"] = _timed(state, time.perf_counter(), count_gap=False)  # not the person's time
    return update


def done_step(state: AgentLoop, setup: AgentSetup) -> dict[str, Any]:
    """The finished agent as an :class:`AgentOutcome` (and its transcript event, whose failure class
    the reader derives from the error, repeated calls and failed tool-call kinds)."""
    end = state.ending or _end(False, state.step, error="the agent stopped without an answer")
    usage = UsageRecord.model_validate(state.usage or {"role": setup.role, "client": setup.client})
    timers = state.timers
    outcome = AgentOutcome(role=setup.role, client=setup.client, ok=end["ok"], text=(end.get("text") or "")[:4000],
                           result=end.get("result"), error=end.get("error"), steps=end.get("steps", 0),
                           seconds=round(timers.get("total", 0.0), 4), model_seconds=round(timers.get("model", 0.0), 4),
                           tool_seconds=round(timers.get("tool", 0.0), 4),
                           tool_calls=[ToolCallRecord.model_validate(c) for c in state.calls], usage=usage,
                           repeated_calls=state.repeats, answered_by=end.get("answered_by"))
    setup.emit("outcome", outcome.steps, ok=outcome.ok, error=outcome.error, result=outcome.result,
               seconds=outcome.seconds, repeated_calls=outcome.repeated_calls,
               tool_error_kinds=outcome.tool_error_kinds(), usage=usage.model_dump(exclude={"id", "role", "client"}))
    return {"outcome": outcome.model_dump(), "privacy": setup.violations()}


def _after_model(state: Any) -> str:
    if state.ending is not None:
        return "done"
    _, pending, invalid = _pending(state)
    return "tools" if pending or invalid else "answer"


def _after_tools(state: Any) -> str:
    if state.ending is not None:
        return "done"
    _, pending, _ = _pending(state)
    return "approve" if pending else "model"  # the tool step stopped at a call to approve


def _ended_or(next_node: str) -> Callable[[Any], str]:
    def route(state: Any) -> str:
        return "done" if state.ending is not None else next_node
    return route


def add_agent_loop(graph: StateGraph, setup_of: Callable[[Any], AgentSetup], entry: str | None, exit: str) -> None:
    """Add the agent's nodes to ``graph``: ``entry`` (None: the caller wires it) leads into the first
    model call, ``done`` to ``exit``."""
    def node(step: Callable[[Any, AgentSetup], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
        return lambda state: step(state, setup_of(state))

    graph.add_node("model", node(model_step))
    graph.add_node("approve", node(approve_step))
    graph.add_node("tools", node(tool_step))
    graph.add_node("answer", node(answer_step))
    graph.add_node("done", node(done_step))
    if entry is not None:
        graph.add_edge(entry, "model")
    graph.add_conditional_edges("model", _after_model, ["tools", "answer", "done"])
    graph.add_edge("approve", "tools")
    graph.add_conditional_edges("tools", _after_tools, ["model", "approve", "done"])
    graph.add_conditional_edges("answer", _ended_or("model"), ["model", "done"])
    graph.add_edge("done", exit)


def compile_agent(setup: AgentSetup, checkpointer: Any = None):
    """A stand-alone agent graph for ``setup`` (input: :func:`opening`)."""
    graph = StateGraph(AgentLoop)
    add_agent_loop(graph, lambda state: setup, START, END)
    return graph.compile(checkpointer=checkpointer)


def recursion_limit(budget: int) -> int:
    """Graph steps an agent of ``budget`` model calls may take (model, tools and, per gated call,
    approve and tools again), with room for the workflow's own steps."""
    return max(200, 8 * budget + 40)
