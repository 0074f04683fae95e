"""Provider failures: which end a run, which are retried and how long to wait, and a preflight.

A benchmark must never score a provider's outage as a model's failure. Errors fall in three kinds:

- **fatal** (:class:`ProviderError`): a missing or rejected key, an unknown model, a host nobody
  answers on. Nothing a retry can fix; ``run`` and ``bench`` stop with one line naming the fix
  (the environment variable, the host) and exit code 2.
- **transient** (HTTP 408/409/429/5xx, timeouts, dropped connections): retried with exponential
  backoff that honours the server's ``Retry-After``. When the retries run out the run ends as an
  infrastructure failure (:class:`ProviderUnavailable`): recorded as failed, not as a score, and
  run again by the next ``bench``.
- **context overflow** (HTTP 400 "maximum context length", llama.cpp's "exceeds the available context
  size"; :func:`agents.context.overflow_error`): its own failure class, never retried.
- everything else (a request the provider refused) is the agent's failure.

Classification reads status codes and exception names, so that no provider library is imported.
"""

from __future__ import annotations

import os
from typing import Any

#: the longest wait honoured from a Retry-After header (seconds)
MAX_RETRY_AFTER_S = 120.0


class ProviderError(RuntimeError):
    """A provider failure no retry can fix (authentication, unknown model, unreachable host)."""


class ProviderUnavailable(RuntimeError):
    """Transient provider errors outlasted the retries: an infrastructure failure of the run."""


def status_code(exc: BaseException) -> int | None:
    for value in (getattr(exc, "status_code", None), getattr(getattr(exc, "response", None), "status_code", None)):
        if isinstance(value, int):
            return value
    return None


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``Retry-After`` or ``retry-after-ms``), if it said.

    openai's errors carry the response; ollama's ``ResponseError`` does not, but it is raised
    while handling httpx's ``HTTPStatusError``, which does (``__context__``)."""
    headers = None
    for candidate in (exc, exc.__cause__, exc.__context__):
        headers = getattr(getattr(candidate, "response", None), "headers", None)
        if headers:
            break
    if not headers:
        return None
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return min(MAX_RETRY_AFTER_S, max(0.0, float(ms) / 1000))
        if (value := headers.get("retry-after")) is not None:
            return min(MAX_RETRY_AFTER_S, max(0.0, float(value)))
    except (TypeError, ValueError):  # an HTTP date: wait the default backoff instead
        return None
    return None


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def classify(exc: BaseException) -> str:
    """'auth', 'not_found', 'unreachable', 'transient' or 'other'."""
    names, code = _names(exc), status_code(exc)
    if code in (401, 403) or names & {"AuthenticationError", "PermissionDeniedError"}:
        return "auth"
    if code == 404 or "NotFoundError" in names:
        return "not_found"
    timeout = bool(names & {"APITimeoutError", "TimeoutException", "TimeoutError"})
    dropped = bool(names & {"ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError"})
    if names & {"APIConnectionError", "ConnectError", "ConnectionError"} and not timeout and not dropped:
        return "unreachable"
    if code in (408, 409, 425, 429) or (code is not None and code >= 500):
        return "transient"
    if names & {"APITimeoutError", "TimeoutException", "TimeoutError", "ReadTimeout", "ConnectTimeout",
                "RemoteProtocolError", "ReadError", "ConnectionResetError", "InternalServerError", "RateLimitError"}:
        return "transient"
    return "other"


def key_variable(provider: str, base_url: str | None) -> str | None:
    """The environment variable that holds the key for this provider, if it needs one."""
    if provider == "openai":
        return "OPENAI_API_KEY"
    if provider == "openai-compatible":
        return "DEEPSEEK_API_KEY" if base_url and "deepseek" in base_url else "OPENAI_COMPATIBLE_API_KEY"
    return None


def auth_headers(info: Any) -> dict[str, str]:
    """The Authorization header for an OpenAI-style server, when a key is exported."""
    key = os.environ.get(key_variable(info.provider, info.base_url) or "", "")
    return {"Authorization": f"Bearer {key}"} if key else {}


def fatal_message(kind: str, info: Any, exc: BaseException | None = None) -> str:
    """One line that names the fix."""
    where = info.base_url or ("https://api.openai.com/v1" if info.provider == "openai" else info.provider)
    detail = f" ({type(exc).__name__}: {str(exc)[:160]})" if exc is not None else ""
    if kind == "auth":
        var = key_variable(info.provider, info.base_url)
        fix = f"export a valid key in {var}" if var else "check the server's access settings"
        return f"{info.provider} at {where} rejected the credentials for {info.model!r}: {fix}{detail}"
    if kind == "not_found":
        fix = f"run `ollama pull {info.model}` on that host" if info.provider == "ollama" else "check the model name"
        return f"model {info.model!r} is not served at {where}: {fix}{detail}"
    host_var = {"ollama": "OLLAMA_HOST", "openai": "OPENAI_BASE_URL"}.get(info.provider)
    fix = f"start the server or set {host_var}" if host_var else "start the server or fix the base URL in the spec"
    return f"cannot reach {info.provider} at {where}: {fix}{detail}"


def require_key(info: Any) -> None:
    """Raise :class:`ProviderError` when the provider needs a key that is not exported."""
    var = key_variable(info.provider, info.base_url)
    needs = info.provider == "openai" or var == "DEEPSEEK_API_KEY"  # self-hosted servers usually need none
    if var and needs and not os.environ.get(var):
        raise ProviderError(f"{var} is not set: export your {info.provider} key as {var} to run {info.spec!r}")


def preflight(info: Any, timeout_s: float = 10.0) -> None:
    """Check key, host and model before a run builds anything; raise :class:`ProviderError`.

    Uses the providers' free listing endpoints (``/models``, Ollama's ``/api/tags``), never a
    paid completion. A server without a listing endpoint passes on reachability alone."""
    if info.provider == "baseline":
        return
    if info.provider == "local":  # llama.cpp and the model file, not a host: both must be at hand
        from agents.local_llm import LocalModelError, check_llama_cpp, model_path

        try:
            check_llama_cpp()
            model_path()
        except LocalModelError as exc:
            raise ProviderError(f"the local model cannot start: {exc}") from None
        return
    require_key(info)
    import httpx

    if info.provider == "ollama":
        url, headers = f"{info.base_url.rstrip('/')}/api/tags", {}
    else:
        base = (info.base_url or "https://api.openai.com/v1").rstrip("/")
        headers = auth_headers(info)
        url = f"{base}/models/{info.model}" if info.provider == "openai" else f"{base}/models"
    try:
        response = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.TimeoutException as exc:
        raise ProviderError(fatal_message("unreachable", info, exc)) from None
    except httpx.HTTPError as exc:
        raise ProviderError(fatal_message("unreachable", info, exc)) from None
    if response.status_code in (401, 403):
        raise ProviderError(fatal_message("auth", info))
    if info.provider == "openai" and response.status_code == 404:
        raise ProviderError(fatal_message("not_found", info))
    if info.provider == "ollama" and response.status_code == 200:
        try:
            served = {m.get("name") or m.get("model") for m in response.json().get("models", [])}
        except ValueError:
            return
        wanted = info.model if ":" in info.model else f"{info.model}:latest"
        if served and wanted not in served and info.model not in served:
            raise ProviderError(fatal_message("not_found", info) + f"; it serves: {', '.join(sorted(served))[:200]}")
