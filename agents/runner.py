"""One agent's tool-calling loop, with the guard rails a benchmark needs.

Why not ``create_react_agent``: the benchmark must bound every agent by a step budget, retry
provider errors with backoff (honouring ``Retry-After``), return malformed tool calls to the model
as errors, keep thinking out of the answer, offer a ``submit_answer`` tool beside the text protocol,
audit every model input for privacy, force the first tool for small models, write a transcript,
and count tokens per role and client. An agent's own failures come back as an
:class:`AgentOutcome`; only provider failures raise (:mod:`agents.providers`), because they are
not the agent's.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, Field

from agents.providers import status_code
from agents.results import ParseError, split_reasoning

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
    retries: int = 5,
    auditor: Auditor | None = None,
    first_tool: str | None = None,
    output_cap: int = 6000,
    answer_tool: Any | None = None,
    transcript: Transcript | None = None,
    cache: Any | None = None,
    provider_key: str | None = None,
    describe_provider: Callable[[str, BaseException], str] | None = None,
    window: Any | None = None,
    deadline: float | None = None,
) -> AgentOutcome:
    """Run one agent to a parsed result, within ``budget`` model calls.

    ``answer_tool`` (``submit_answer``, see :func:`agents.roles.answer_tool`) is offered beside the
    role's tools on every call and forced on the last one; its arguments go through ``parse`` like
    a JSON answer. ``transcript`` receives every message, tool call and result as an event.
    ``cache`` (:class:`agents.cache.ResponseCache`) answers a call it has seen before.
    ``window`` (:class:`agents.context.ContextWindow`) is the model's context window: the
    conversation is kept inside it (:class:`agents.context.ContextPolicy`) and an overflow ends the
    agent as ``context overflow``. ``deadline`` (``time.time()``) is the run's wall-clock limit.
    Provider failures that no retry fixes raise :class:`agents.providers.ProviderError`; transient
    ones that outlast ``retries`` raise :class:`agents.providers.ProviderUnavailable`: a run's
    infrastructure failure is never scored as the agent's answer."""
    from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage

    from agents.context import (
        ContextPolicy,
        ContextWindow,
        overflow_error,
        reply_overflow,
    )
    from agents.limits import provider_limit
    from agents.providers import ProviderError, ProviderUnavailable, classify
    from agents.text_tools import parse_text_tool_calls

    window = window or ContextWindow()
    policy = ContextPolicy(window.prompt_limit)
    limit = provider_limit(provider_key)
    started = time.perf_counter()
    usage = UsageRecord(role=role, client=client)
    calls: list[ToolCallRecord] = []
    tools = list(tools)
    by_name = {t.name: t for t in tools}
    offered = tools + ([answer_tool] if answer_tool is not None else [])
    messages: list[Any] = [SystemMessage(system), HumanMessage(user)]
    where = f"{role}@{client}" if client else role
    reminded = False
    earlier: dict[str, str] = {}  # (tool, arguments) -> its last output, to notice calls that learn nothing new
    timers = {"model": 0.0, "tool": 0.0}
    counters = {"repeats": 0}

    def emit(kind: str, step: int, **fields: Any) -> None:
        if transcript is not None:
            event = {"ts": time.time(), "role": role, "client": client, "step": step, "kind": kind, **fields}
            if auditor is not None and fields.get("content"):
                # the same label as model inputs: a text seen both ways is one violation, not two
                auditor.check(str(fields["content"]), f"model input of {where}")
            transcript(event)

    emit("system", 0, content=system)
    emit("user", 0, content=user)

    def outcome(ok: bool, text: str = "", result: BaseModel | None = None, error: str | None = None, steps: int = 0,
                answered_by: str | None = None):
        done = AgentOutcome(role=role, client=client, ok=ok, text=text[:4000],
                            result=result.model_dump() if result is not None else None, error=error, steps=steps,
                            seconds=round(time.perf_counter() - started, 4), model_seconds=round(timers["model"], 4),
                            tool_seconds=round(timers["tool"], 4), tool_calls=calls, usage=usage,
                            repeated_calls=counters["repeats"], answered_by=answered_by)
        if transcript is not None:
            from eval.taxonomy import agent_classes

            found = agent_classes({"ok": ok, "error": error, "repeated_calls": counters["repeats"],
                                   "tool_error_kinds": done.tool_error_kinds()})
            emit("outcome", steps, ok=ok, error=error, result=done.result, seconds=done.seconds,
                 failure=found[0] if found and not ok else None, usage=usage.model_dump(exclude={"id", "role", "client"}))
        return done

    def note(step: int, text: str) -> None:
        messages.append(HumanMessage(text))
        emit("user", step, content=text)

    for step in range(budget):
        if deadline is not None and time.time() >= deadline:
            emit("note", step, content="the run's time limit has passed")
            return outcome(False, error=RUN_TIMEOUT_ERROR, steps=step)
        if offered and step == budget - LAST_CALLS and step > 0:
            note(step, (LAST_CALLS_NOTE_TOOL if answer_tool is not None else LAST_CALLS_NOTE).format(n=LAST_CALLS))
        if auditor is not None:
            for m in messages:
                auditor.check(_content_text(m), f"model input of {where}")
        last_call = step == budget - 1 and step > 0  # must answer: no role tools (some providers ignore "none")
        bound, bound_tools, choice = model, [], None
        if hasattr(model, "bind_tools"):
            if (last_call or reminded) and answer_tool is not None:  # the answer's last chance: forced
                bound_tools, choice = [answer_tool], SUBMIT
            elif offered and not last_call:
                bound_tools = offered
                choice = first_tool if (step == 0 and first_tool in by_name) else None
            if bound_tools:
                bound = model.bind_tools(bound_tools, tool_choice=choice) if choice else model.bind_tools(bound_tools)
        fits, edit, sent = policy.apply(messages, bound_tools)
        if edit is not None:
            usage.context_edits += 1
            emit("note", step, content=(f"context policy: {edit.elided} oldest tool result(s) elided "
                                        f"(~{edit.before} -> ~{edit.after} prompt tokens; limit {edit.limit})"),
                 policy="elide oldest tool results", **edit.model_dump())
        if not fits:
            error = (f"{CONTEXT_OVERFLOW}: the conversation needs ~{sent} prompt tokens and the {window.tokens}-token "
                     f"window leaves {window.prompt_limit} beside a {window.max_output}-token reply, even with old "
                     "tool results elided")
            emit("note", step, content=error)
            return outcome(False, error=error, steps=step)
        reply, cached = None, False
        if cache is not None:
            reply = cache.get(messages, bound_tools, choice)
            cached = reply is not None
        for attempt in range(retries + 1):
            if reply is not None:
                break
            t0 = time.perf_counter()
            try:
                def call(bound: Any = bound, messages: list[Any] = messages) -> Any:
                    if limit is None:
                        return bound.invoke(messages)
                    with limit.slot():
                        return bound.invoke(messages)

                reply = _call_before(call, deadline)
                timers["model"] += time.perf_counter() - t0
                if limit is not None:
                    limit.succeeded()
                break
            except RunTimeout:
                timers["model"] += time.perf_counter() - t0
                emit("note", step, content="the run's time limit passed while waiting for the model")
                return outcome(False, error=RUN_TIMEOUT_ERROR, steps=step + 1)
            except Exception as exc:
                timers["model"] += time.perf_counter() - t0
                kind = classify(exc)
                message = f"{type(exc).__name__}: {str(exc)[:300]}"
                if overflow_error(exc):  # the server refused a request longer than its window: not transient
                    emit("note", step, content=f"{CONTEXT_OVERFLOW}: {message}")
                    return outcome(False, error=f"{CONTEXT_OVERFLOW}: the provider refused the request: {message}",
                                   steps=step + 1)
                if kind in ("auth", "not_found"):
                    emit("note", step, content=f"provider error, not retried: {message}")
                    raise ProviderError(describe_provider(kind, exc) if describe_provider else message) from exc
                if kind == "other":  # the provider refused this request (e.g. context too long): the agent's failure
                    emit("note", step, content=f"model call refused: {message}")
                    return outcome(False, error=f"model call refused: {message}", steps=step + 1)
                if attempt == retries:
                    emit("note", step, content=f"provider error after {retries + 1} attempts: {message}")
                    if kind == "unreachable":
                        raise ProviderError(describe_provider(kind, exc) if describe_provider else message) from exc
                    raise ProviderUnavailable(f"{where}: model call failed after {retries + 1} attempts: "
                                              f"{message}") from exc
                wait = _wait_seconds(exc, attempt)
                if limit is not None and (status_code(exc) == 429 or "RateLimitError" in type(exc).__name__):
                    limit.rate_limited(wait)  # every request to this provider waits, and fewer go at once
                emit("note", step, content=f"retry {attempt + 1}/{retries} in {wait:.1f} s after {message}")
                if deadline is not None and time.time() + wait >= deadline:
                    emit("note", step, content="the run's time limit passes before the retry")
                    return outcome(False, error=RUN_TIMEOUT_ERROR, steps=step + 1)
                time.sleep(wait)
        if cache is not None and not cached:
            cache.put(messages, bound_tools, choice, reply)
        usage.model_calls += 1
        usage.cached_calls += int(cached)
        meta = getattr(reply, "usage_metadata", None) or {}
        reported = int(meta.get("input_tokens", 0) or 0)
        if not cached:
            policy.calibrate(sent, reported)
        usage.peak_prompt_tokens = max(usage.peak_prompt_tokens, reported or sent)
        usage.input_tokens += int(meta.get("input_tokens", 0) or 0)
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
        emit("assistant", step, content=answer, reasoning=thinking, cached=cached,
             seconds=round(time.perf_counter() - t0, 4) if not cached else 0.0,
             tool_calls=[{"id": c.get("id") or "", "name": c.get("name"), "args": c.get("args") or {}}
                         for c in tool_calls] + [{"id": b.get("id") or "", "name": b.get("name"),
                                                  "args": {"_invalid": str(b.get("args"))[:500]}} for b in invalid],
             usage={"input_tokens": int(meta.get("input_tokens", 0) or 0),
                    "output_tokens": int(meta.get("output_tokens", 0) or 0), "reasoning_tokens": reasoning},
             context={"estimated_prompt_tokens": sent, "window": window.tokens},
             **({"tool_calls_written_as": written} if written else {}))
        if overflow is not None:
            emit("note", step, content=f"{CONTEXT_OVERFLOW}: {overflow}")
            return outcome(False, text=answer, error=f"{CONTEXT_OVERFLOW}: {overflow}", steps=step + 1)
        messages.append(_without_thinking(reply, answer))

        if tool_calls or invalid:
            submitted = None
            for bad in invalid:
                text = f"error: malformed tool call {bad.get('name')!r}: {bad.get('error') or 'arguments are not valid JSON'}"
                calls.append(ToolCallRecord(role=role, client=client, tool=str(bad.get("name")), ok=False,
                                            kind="argument_error", output=text))
                messages.append(ToolMessage(text, tool_call_id=bad.get("id") or "invalid"))
                emit("tool", step, tool=str(bad.get("name")), tool_call_id=bad.get("id"), ok=False, content=text)
            repeated = []
            for call in tool_calls:
                t0 = time.perf_counter()
                if answer_tool is not None and call.get("name") == SUBMIT:
                    try:
                        submitted = parse(json.dumps(call.get("args") or {}))
                        output, kind = "answer received", "ok"
                    except ParseError as exc:
                        output, kind = f"error: the answer was not accepted: {exc}", "argument_error"
                else:
                    output, kind = _invoke_tool(by_name, call, output_cap)
                timers["tool"] += time.perf_counter() - t0
                calls.append(ToolCallRecord(role=role, client=client, tool=call["name"], ok=kind == "ok", kind=kind,
                                            args=call.get("args") or {}, output=output[:500]))
                messages.append(ToolMessage(output, tool_call_id=call.get("id") or call["name"]))
                emit("tool", step, tool=call["name"], tool_call_id=call.get("id"), ok=kind == "ok", content=output,
                     seconds=round(time.perf_counter() - t0, 4))
                key = json.dumps([call.get("name"), call.get("args") or {}], sort_keys=True, default=str)
                if earlier.get(key) == output:
                    repeated.append(str(call.get("name")))
                earlier[key] = output
            if submitted is not None:
                return outcome(True, text=answer or json.dumps(submitted.model_dump()), result=submitted,
                               steps=step + 1, answered_by="tool")
            counters["repeats"] += len(repeated)
            if repeated:  # a separate turn: the tool's own output stays exactly what the tool said
                note(step, REPEAT_NOTE.format(tools=", ".join(sorted(set(repeated)))))
            continue

        try:
            return outcome(True, text=answer, result=parse(answer), steps=step + 1, answered_by="text")
        except ParseError as exc:
            if reminded or step == budget - 1:
                error = "empty answer" if not answer.strip() else f"unparseable answer: {exc}"
                return outcome(False, text=answer, error=error, steps=step + 1)
            reminded = True
            note(step, f"Your answer could not be read: {exc}. Answer again in that format.")
    return outcome(False, error=f"step budget of {budget} model calls exhausted", steps=budget)


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
