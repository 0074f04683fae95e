"""Chat models from a spec string: providers, aliases and the no-LLM baselines.

Spec forms:
  openai:<model>                        OpenAI (OPENAI_API_KEY, optional OPENAI_BASE_URL)
  ollama:<model>                        Ollama (OLLAMA_HOST, default http://127.0.0.1:11434)
  openai-compatible:<model>@<base_url>  vLLM, llama.cpp, Groq, DeepInfra, DeepSeek ... (key from
                                        OPENAI_COMPATIBLE_API_KEY, or DEEPSEEK_API_KEY for DeepSeek)
  oracle | skyline | heuristic | random baselines that need no LLM (agents.baselines)
  local                                 llama.cpp on this machine (agents.local_llm)
  <alias>                               a name from model_aliases.json or $FEDAGENTBENCH_MODEL_ALIASES

Options follow a ``?``: ``ollama:qwen3:8b?reasoning=false`` switches Ollama's thinking off (``true``
asks for it; by default the model decides), ``openai:o4-mini?reasoning_effort=low`` sets an OpenAI
reasoning model's effort. Context windows (:mod:`agents.context`): ``ollama:qwq:32b?num_ctx=16384``
caps the window sent as ``num_ctx`` (default: the model's own, at most 32,768);
``openai-compatible:m@url?context_window=8192`` states a window the server does not report.
``max_tokens=N`` sets the reply budget (thinking included; default: a quarter of the window, 1,024-8,192).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agents.context import ContextWindow

ALIASES_FILE = Path(__file__).with_name("model_aliases.json")
BASELINES = ("oracle", "skyline", "heuristic", "random")


class ModelSettings(BaseModel):
    """Sampling settings, recorded with every run.

    ``temperature`` and ``seed`` go to every client: ChatOpenAI (openai, openai-compatible, local
    llama.cpp) and ChatOllama. The baselines ignore ``temperature``; ``random`` draws from ``seed``
    (the benchmark gives each repeat its own); the others are deterministic."""

    temperature: float = 0.0
    seed: int | None = 0
    #: the reply budget, thinking included (None: from the context window, see agents.context.output_limit)
    max_tokens: int | None = None
    #: one request's time limit; a request that exceeds it is retried like any transient error
    timeout_s: float = 120.0
    #: retries of a transient provider error (429, 5xx, timeout) before the run ends as failed
    retries: int = 5


class ModelInfo(BaseModel):
    """What a spec resolved to (recorded in results; never contains a key)."""

    spec: str
    resolved: str
    provider: str
    model: str
    base_url: str | None = None
    #: provider options from the spec's ``?key=value`` part
    options: dict[str, str] = {}
    settings: ModelSettings = ModelSettings()
    #: the context window the requests use (:func:`with_window`; None until discovered)
    window: ContextWindow | None = None


_windows: dict[tuple, ContextWindow] = {}
_windows_lock = threading.Lock()


def with_window(info: ModelInfo, timeout_s: float = 10.0) -> ModelInfo:
    """``info`` with its context window discovered (once per process, provider, host, model and options)."""
    from agents.context import discover_window

    if info.window is not None:
        return info
    key = (info.provider, info.base_url, info.model, tuple(sorted(info.options.items())), info.settings.max_tokens)
    with _windows_lock:
        window = _windows.get(key)
    if window is None:
        window = discover_window(info, timeout_s)
        with _windows_lock:
            _windows[key] = window
    return info.model_copy(update={"window": window})


def load_table(shipped: Path, variable: str) -> dict[str, Any]:
    """A JSON table shipped beside this module, extended by the file ``$variable`` names (same
    shape; its entries win). Keys starting with ``_`` are comments."""
    table = {k: v for k, v in json.loads(shipped.read_text("utf-8")).items() if not k.startswith("_")}
    extra = os.environ.get(variable)
    if extra:
        path = Path(extra).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{variable} points at {path}, which does not exist")
        table.update({k: v for k, v in json.loads(path.read_text("utf-8")).items() if not k.startswith("_")})
    return table


def load_aliases() -> dict[str, str]:
    return load_table(ALIASES_FILE, "FEDAGENTBENCH_MODEL_ALIASES")


def resolve_spec(spec: str, settings: ModelSettings | None = None) -> ModelInfo:
    """Parse ``spec`` (following aliases) without creating a client."""
    settings = settings or ModelSettings()
    original, seen = spec.strip(), set()
    aliases = load_aliases()
    spec = original
    while spec in aliases:
        if spec in seen:
            raise ValueError(f"alias loop at {spec!r}")
        seen.add(spec)
        spec = aliases[spec]
    spec, _, query = spec.partition("?")
    options = _options(query, original)
    if spec in BASELINES or spec == "local":
        return ModelInfo(spec=original, resolved=spec, provider=spec if spec == "local" else "baseline",
                         model=spec, settings=settings)
    provider, sep, rest = spec.partition(":")
    if not sep or not rest:
        known = ", ".join(sorted(aliases) + list(BASELINES) + ["local"])
        raise ValueError(f"unknown model {original!r}: use provider:model (openai, ollama, openai-compatible) "
                         f"or one of: {known}")
    allowed = {"ollama": {"reasoning", "num_ctx", "max_tokens"},
               "openai": {"reasoning_effort", "context_window", "max_tokens"},
               "openai-compatible": {"reasoning_effort", "context_window", "max_tokens"}}.get(provider, set())
    if unknown := sorted(set(options) - allowed):
        raise ValueError(f"option {unknown[0]!r} does not apply to {provider!r} models in {original!r}; "
                         f"it takes: {', '.join(sorted(allowed)) or 'no options'}")
    resolved = spec + (f"?{query}" if query else "")
    if "max_tokens" in options:
        settings = settings.model_copy(update={"max_tokens": int(options["max_tokens"])})
    if provider == "openai":
        return ModelInfo(spec=original, resolved=resolved, provider="openai", model=rest,
                         base_url=os.environ.get("OPENAI_BASE_URL"), options=options, settings=settings)
    if provider == "ollama":
        host = os.environ.get("OLLAMA_HOST", "http://127.0.0.1:11434")
        host = host if host.startswith(("http://", "https://")) else f"http://{host}"  # ollama accepts host:port
        return ModelInfo(spec=original, resolved=resolved, provider="ollama", model=rest, base_url=host,
                         options=options, settings=settings)
    if provider == "openai-compatible":
        model, at, url = rest.rpartition("@")
        if not at or not model or not url.startswith(("http://", "https://")):
            raise ValueError(f"openai-compatible spec must be openai-compatible:<model>@<http(s) base url>, got {spec!r}")
        return ModelInfo(spec=original, resolved=resolved, provider="openai-compatible", model=model, base_url=url,
                         options=options, settings=settings)
    raise ValueError(f"unknown provider {provider!r} in {original!r}; use openai, ollama or openai-compatible")


def _options(query: str, original: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq or not key or not value:
            raise ValueError(f"spec options are key=value pairs after '?', got {part!r} in {original!r}")
        options[key] = value
    if "reasoning" in options and options["reasoning"].lower() not in ("true", "false"):
        raise ValueError(f"reasoning takes true or false, got {options['reasoning']!r} in {original!r}")
    for name in ("num_ctx", "context_window", "max_tokens"):
        if name in options and (not options[name].isdigit() or int(options[name]) < 256):
            raise ValueError(f"{name} takes a number of tokens (at least 256), got {options[name]!r} in {original!r}")
    if "reasoning_effort" in options and options["reasoning_effort"] not in ("minimal", "low", "medium", "high"):
        raise ValueError(f"reasoning_effort takes minimal, low, medium or high, got {options['reasoning_effort']!r}")
    return options


def _api_key(info: ModelInfo) -> str:
    from agents.providers import key_variable, require_key

    require_key(info)  # a missing key is a ProviderError: the run stops with one line naming the variable
    return os.environ.get(key_variable(info.provider, info.base_url) or "", "") or "not-needed"


def make_chat_model(info: ModelInfo, context: dict[str, Any] | None = None):
    """A LangChain chat model for ``info``. ``context`` feeds the baselines (env dir, task id).

    Every request names its window and reply budget: Ollama's ``num_ctx`` and ``num_predict``, the
    OpenAI-style ``max_tokens`` (see :mod:`agents.context`)."""
    s = info.settings
    if info.provider == "baseline":
        from agents.baselines import make_baseline

        return make_baseline(info.model, context or {})
    info = with_window(info)
    window = info.window
    if info.provider in ("openai", "openai-compatible", "local"):
        from langchain_openai import ChatOpenAI

        base_url = info.base_url
        if info.provider == "local":
            from agents.local_llm import ensure_server

            base_url = ensure_server()
        return ChatOpenAI(
            model=info.model if info.provider != "local" else "local",
            base_url=base_url,
            api_key=_api_key(info) if info.provider != "local" else "not-needed",
            temperature=s.temperature,
            seed=s.seed,
            max_tokens=window.max_output,
            # llama.cpp on two CPU cores needs minutes for a long prompt, and serves one request at a time
            timeout=max(s.timeout_s, 600.0) if info.provider == "local" else s.timeout_s,
            max_retries=0,  # the agent runner retries with backoff and records failures
            stream_usage=True,
            **({"reasoning_effort": info.options["reasoning_effort"]} if "reasoning_effort" in info.options else {}),
        )
    if info.provider == "ollama":
        from langchain_ollama import ChatOllama

        reasoning = info.options.get("reasoning")
        return ChatOllama(model=info.model, base_url=info.base_url, temperature=s.temperature, seed=s.seed,
                          num_ctx=window.tokens, num_predict=window.max_output, client_kwargs={"timeout": s.timeout_s},
                          reasoning=None if reasoning is None else reasoning.lower() == "true")
    raise ValueError(f"no chat model for provider {info.provider!r}")
