"""Context windows: how big a model's is, how much of it each request uses, and one policy that
keeps a long agent conversation inside it.

A score must be the model's, not its serving stack's defaults. Ollama gives a request that names no
``options.num_ctx`` its server default (2,048-4,096 tokens) and silently drops what does not fit from
the start of the conversation (the system prompt and the task first); vLLM and llama.cpp refuse an
over-long request with HTTP 400. So:

- :func:`discover_window` reads the window where the server states it (Ollama ``/api/show``
  ``<arch>.context_length``, vLLM ``max_model_len`` in ``/v1/models``, llama.cpp ``/props``), else a
  spec option, else the published figure (``model_prices.json``). For Ollama the window we send as
  ``num_ctx`` is the model's, capped at ``?num_ctx=`` (default :data:`DEFAULT_NUM_CTX`, room for a
  reasoning model's thinking).
- :class:`ContextPolicy` is the one, model-independent policy: before a call whose estimated prompt
  would not leave :attr:`ContextWindow.max_output` tokens for the reply, the oldest tool results are
  replaced by a visible note (as LangChain's ``ContextEditingMiddleware``/``ClearToolUsesEdit`` do),
  keeping the newest :data:`KEEP_TOOL_RESULTS`. It works on a plain list of LangChain messages, so it
  moves into an agent middleware unchanged.
- An overflow that still happens (:func:`overflow_error`, :func:`reply_overflow`) is its own failure
  class, ``context_overflow``: never retried, never "unparseable".

Token counts before a call are estimates (:func:`estimate_tokens`: ~4 characters a token, as
``count_tokens_approximately``), calibrated by the provider's own prompt count after each call.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

#: the window sent to Ollama when the spec names none (the model's own if smaller)
DEFAULT_NUM_CTX = 32768
#: the most a reply may generate (thinking included) when the spec names no max_tokens
DEFAULT_MAX_OUTPUT = 8192
#: the least a reply must be allowed, whatever the window: below it a model cannot think and answer
MIN_OUTPUT = 1024
#: tool results the policy never elides (the newest ones)
KEEP_TOOL_RESULTS = 2
ELIDED_NOTE = ("[earlier tool output elided to keep the conversation inside the model's context window "
               "({chars} characters); call the tool again if you need it]")


class ContextWindow(BaseModel):
    """The window a run uses, and where the figure came from (recorded with every result)."""

    #: tokens of prompt + reply the model gets (None: unknown, nothing is checked against it)
    tokens: int | None = None
    #: what the server or publisher says the model supports, when known
    model_max: int | None = None
    #: the most one reply may generate (``num_predict`` / ``max_tokens``)
    max_output: int = DEFAULT_MAX_OUTPUT
    #: "ollama /api/show", "vllm max_model_len", "llama.cpp /props", "spec option", "published", "unknown" ...
    source: str = "unknown"

    @property
    def prompt_limit(self) -> int | None:
        """The most prompt tokens a request may carry and still leave room for the reply."""
        return None if self.tokens is None else max(0, self.tokens - self.max_output)


def output_limit(window: int | None, asked: int | None) -> int:
    """The reply budget: the spec's ``max_tokens`` if set, else a quarter of the window, within
    [:data:`MIN_OUTPUT`, :data:`DEFAULT_MAX_OUTPUT`]."""
    if asked:
        return int(asked)
    if window is None:
        return DEFAULT_MAX_OUTPUT
    return max(MIN_OUTPUT, min(DEFAULT_MAX_OUTPUT, window // 4))


# -- discovering the window ------------------------------------------------------------------------

def _int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _ollama_window(info: Any, timeout_s: float) -> tuple[int | None, str]:
    import httpx

    response = httpx.post(f"{info.base_url.rstrip('/')}/api/show", json={"model": info.model}, timeout=timeout_s)
    if response.status_code != 200:
        return None, "ollama /api/show did not answer"
    model_info = response.json().get("model_info") or {}
    arch = model_info.get("general.architecture")
    found = _int(model_info.get(f"{arch}.context_length")) if arch else None
    if found is None:  # some builds name the key after another architecture string
        found = next((_int(v) for k, v in model_info.items() if k.endswith(".context_length")), None)
    return found, "ollama /api/show"


def _openai_compatible_window(info: Any, timeout_s: float) -> tuple[int | None, str]:
    import httpx

    from agents.providers import auth_headers

    base = info.base_url.rstrip("/")
    headers = auth_headers(info)
    try:
        listing = httpx.get(f"{base}/models", headers=headers, timeout=timeout_s)
        if listing.status_code == 200:
            for entry in listing.json().get("data", []):
                if entry.get("id") == info.model and _int(entry.get("max_model_len")):
                    return _int(entry["max_model_len"]), "vllm max_model_len"
    except (httpx.HTTPError, ValueError):
        pass
    root = re.sub(r"/v1$", "", base)
    try:
        props = httpx.get(f"{root}/props", headers=headers, timeout=timeout_s)
        if props.status_code == 200:
            body = props.json()
            n_ctx = _int((body.get("default_generation_settings") or {}).get("n_ctx")) or _int(body.get("n_ctx"))
            if n_ctx:
                return n_ctx, "llama.cpp /props"
    except (httpx.HTTPError, ValueError):
        pass
    return None, "not stated by the server"


def discover_window(info: Any, timeout_s: float = 10.0) -> ContextWindow:
    """The context window ``info``'s requests will use. Never raises for a server that does not say:
    the window is then the spec option, the published figure, or unknown."""
    from agents.pricing import published

    asked_output = info.settings.max_tokens
    if info.provider == "baseline":
        return ContextWindow(tokens=None, max_output=output_limit(None, asked_output), source="baseline (no LLM)")
    if info.provider == "local":
        from agents.local_llm import local_context_size

        n_ctx = local_context_size()
        return ContextWindow(tokens=n_ctx, model_max=n_ctx, max_output=output_limit(n_ctx, asked_output),
                             source="local llama.cpp n_ctx")
    stated, where = None, "unknown"
    try:
        if info.provider == "ollama":
            stated, where = _ollama_window(info, timeout_s)
        elif info.provider == "openai-compatible":
            stated, where = _openai_compatible_window(info, timeout_s)
    except Exception:  # noqa: BLE001 - an unreachable server is the preflight's to report
        stated, where = None, "server did not answer"
    option = _int(info.options.get("num_ctx") or info.options.get("context_window"))
    if info.provider == "ollama":
        cap = option or DEFAULT_NUM_CTX
        tokens = min(cap, stated) if stated else cap
        source = (f"{where}: model {stated}, num_ctx {tokens}" if stated
                  else f"num_ctx {tokens} ({'spec option' if option else 'default'}; the model's window is not stated)")
        return ContextWindow(tokens=tokens, model_max=stated, max_output=output_limit(tokens, asked_output),
                             source=source)
    publisher = published(info)
    model_max = stated or publisher
    if option:
        tokens = min(option, model_max) if model_max else option
        source = f"spec option ({where}: {stated})" if stated else "spec option"
    elif stated:
        tokens, source = stated, where
    elif publisher:
        tokens, source = publisher, "published"
    else:
        tokens, source = None, "unknown (set ?context_window=N in the spec)"
    return ContextWindow(tokens=tokens, model_max=model_max, max_output=output_limit(tokens, asked_output),
                         source=source)


# -- counting --------------------------------------------------------------------------------------

def tool_schemas(tools: list[Any]) -> list[dict[str, Any]]:
    """The tools as the OpenAI function schemas a provider receives (what the window pays for)."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    return [convert_to_openai_tool(t) for t in tools]


def schema_tokens(tools: list[Any]) -> int:
    """Tokens the tools' schemas take in a request (~4 characters a token)."""
    import json

    return len(json.dumps(tool_schemas(tools))) // 4 if tools else 0


def estimate_tokens(messages: list[Any], tools: list[Any] | None = None, tool_tokens: int | None = None) -> int:
    """Tokens of a request before it is sent: ~4 characters a token for messages and tool schemas
    (``tool_tokens``: the schemas' count, when the caller already has it)."""
    from langchain_core.messages.utils import count_tokens_approximately

    count = count_tokens_approximately(messages)
    return int(count + (schema_tokens(tools or []) if tool_tokens is None else tool_tokens))


class ContextEdit(BaseModel):
    """One application of the policy (recorded as a ``context`` event in the transcript)."""

    elided: int
    chars: int
    before: int
    after: int
    limit: int


class ContextPolicy:
    """Keep a conversation's prompt under ``limit`` tokens by eliding the oldest tool results.

    ``ratio`` calibrates the estimate with the provider's own counts (prompt tokens it reported /
    tokens we estimated for that request), so a tokenizer that splits paths and JSON finer than four
    characters a token does not push a request over the edge."""

    def __init__(self, limit: int | None, keep: int = KEEP_TOOL_RESULTS) -> None:
        self.limit = limit
        self.keep = keep
        self.ratio = 1.0
        self._schemas: dict[tuple[str, ...], int] = {}  # the same tool set every step: sized once

    def estimate(self, messages: list[Any], tools: list[Any] | None = None) -> int:
        key = tuple(t.name for t in tools or [])
        if key not in self._schemas:
            self._schemas[key] = schema_tokens(list(tools or []))
        return int(estimate_tokens(messages, tool_tokens=self._schemas[key]) * self.ratio)

    def calibrate(self, estimated: int, reported: int | None) -> None:
        """Learn from the provider's prompt count (never below 1: only ever more cautious)."""
        if reported and estimated > 0:
            self.ratio = max(1.0, min(3.0, reported / (estimated / self.ratio)))

    def apply(self, messages: list[Any], tools: list[Any] | None = None) -> tuple[bool, ContextEdit | None, int]:
        """Elide in place until the prompt fits; ``(fits, edit or None, estimated prompt tokens)``."""
        from langchain_core.messages import ToolMessage

        before = now = self.estimate(messages, tools)
        if self.limit is None or now <= self.limit:
            return True, None, now
        results = [i for i, m in enumerate(messages) if isinstance(m, ToolMessage)]
        candidates = [i for i in results[:max(0, len(results) - self.keep)]
                      if not str(messages[i].content).startswith("[earlier tool output elided")]
        elided = chars = 0
        for i in candidates:
            old = str(messages[i].content)
            messages[i] = messages[i].model_copy(update={"content": ELIDED_NOTE.format(chars=len(old))})
            elided, chars = elided + 1, chars + len(old)
            now = self.estimate(messages, tools)
            if now <= self.limit:
                break
        edit = ContextEdit(elided=elided, chars=chars, before=before, after=now, limit=self.limit) if elided else None
        return now <= self.limit, edit, now


# -- overflow --------------------------------------------------------------------------------------

_CONTEXT_ERROR = re.compile(
    r"context[_ ]length|context window|context size|maximum context|max_model_len|n_ctx|too many tokens|"
    r"prompt is too long|exceed\w* (?:the )?(?:available )?context|context_length_exceeded|input is too long",
    re.IGNORECASE)


def overflow_error(exc: BaseException) -> bool:
    """A provider's refusal of a request that is longer than the window (vLLM, llama.cpp, OpenAI)."""
    from agents.providers import status_code

    code = status_code(exc)
    return (code in (400, 413, 422, None) or code >= 500) and bool(_CONTEXT_ERROR.search(str(exc)))


def reply_overflow(reply: Any, window: ContextWindow, sent_estimate: int) -> str | None:
    """Why a reply shows the window was overrun, or None: generation stopped for length (Ollama
    ``done_reason``, OpenAI ``finish_reason``) without a complete tool call, or the provider counted
    far fewer prompt tokens than an over-long request carried (Ollama's silent truncation)."""
    meta = getattr(reply, "response_metadata", None) or {}
    usage = getattr(reply, "usage_metadata", None) or {}
    prompt = int(usage.get("input_tokens", 0) or 0)
    produced = int(usage.get("output_tokens", 0) or 0)
    stop = meta.get("done_reason") or meta.get("finish_reason")
    if stop == "length" and not getattr(reply, "tool_calls", None):
        if window.tokens and prompt + produced >= 0.95 * window.tokens:
            return (f"the conversation filled the {window.tokens}-token context window "
                    f"({prompt} prompt + {produced} generated tokens)")
        return f"the reply was cut at the output limit of {window.max_output} tokens ({produced} generated)"
    if window.tokens and sent_estimate > window.tokens and 0 < prompt < 0.8 * sent_estimate:
        return (f"the request (~{sent_estimate} tokens) was longer than the {window.tokens}-token window and the "
                f"server read only {prompt} of it")
    return None


# -- the fixed part of every role ------------------------------------------------------------------

#: a representative run's inputs, to size each role's fixed prompt before anything is built
_EXAMPLE_CTX: dict[str, Any] = {
    "task_id": "xray-pneumonia", "title": "pneumonia detection", "body_part": "chest", "modality": "X-ray",
    "task_type": "classification", "target_classes": ["normal", "pneumonia", "covid-19", "tuberculosis"],
    "class_note": "bacterial and viral pneumonia both count as pneumonia; drop classes that fit no target",
    "request": "Train a chest X-ray classifier that tells normal lungs from pneumonia, COVID-19 and tuberculosis "
               "across our hospitals; the sites use scanners from different vendors, so expect feature shift.",
    "replies": {f"hospital_{i}": "**Dataset Name** : Chest-Xray-Pneumonia-Site-Collection" for i in range(6)},
    "datasets": ["Chest-Xray-Pneumonia-Site-Collection", "Tuberculosis-Screening-Archive"],
    "output_path": "work/cleaned", "scratch_path": "work/raw", "image_size": 64, "mode": "L",
    "input_path": "work/cleaned", "clients": [f"hospital_{i}" for i in range(6)],
    "stats_paths": [f"hospital_{i}/statistics.json" for i in range(6)], "algorithm": "FedAvg", "rounds": 3,
}


def fixed_part_tokens(guidance: str = "fine", submit_tool: bool = True) -> dict[str, int]:
    """Tokens of each role's fixed part: system prompt, tool schemas and task, before any turn."""
    import tempfile
    from pathlib import Path

    from langchain_core.messages import HumanMessage, SystemMessage

    import tools as toolkit
    from agents.roles import ROLES, answer_tool, system_prompt, user_prompt
    from tools.training import build_training_tools

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "client").mkdir()
        (root / "server").mkdir()
        client_tools = toolkit.build_client_tools(root / "client", work_dir=root / "client-work")
        server_tools = toolkit.build_server_tools(root / "server", {}, guidance=guidance, work_dir=root / "server-work")
        server_tools += build_training_tools(root / "train", {"hospital_0": root / "client-work"})
        sizes = {}
        for name, role in ROLES.items():
            available = client_tools if role.side == "client" else server_tools
            bound = [t for t in available if t.name in role.tools]
            if submit_tool and role.schema is not None:
                bound.append(answer_tool(role))
            messages = [SystemMessage(system_prompt(role, guidance, "hospital_0" if role.side == "client" else None,
                                                    submit_tool=submit_tool)),
                        HumanMessage(user_prompt(role, guidance, _EXAMPLE_CTX))]
            sizes[name] = estimate_tokens(messages, bound)
    return sizes


def minimum_window(max_output: int = MIN_OUTPUT) -> tuple[int, str]:
    """The smallest window that holds the largest role's fixed part and a ``max_output`` reply:
    ``(tokens, role)``. Both guidance styles count; the fine-grained prompts are the longer."""
    sizes = {f"{role} ({style})": n for style in ("fine", "goal") for role, n in fixed_part_tokens(style).items()}
    role = max(sizes, key=sizes.__getitem__)
    return sizes[role] + max_output, role
