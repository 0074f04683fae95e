"""Scripted LLM servers for tests: real provider wire formats on 127.0.0.1, an OS-chosen port.

``OpenAICompatibleServer`` speaks ``/v1/chat/completions`` (JSON and SSE), ``/v1/models`` and
``/v1/models/<id>``;
``OllamaServer`` speaks Ollama's own ``/api/chat`` (JSON and NDJSON), ``/api/tags``, ``/api/show``
and ``/api/version``. Each answers from a script (a function of the request body, or a queue of
``Reply``) and keeps every POST body it receives, rejected ones included, in ``requests``::

    with OllamaServer([Reply(content="hi", reasoning="hmm")]) as srv:
        ChatOllama(model="m", base_url=srv.base_url, reasoning=True).invoke("x")
        assert srv.requests[0]["think"] is True

What the clients do with these answers (langchain-openai 1.7.4, openai 3.57, langchain-ollama 1.1.0,
ollama 0.6.3; checked by tests/test_llm_servers.py):

ChatOpenAI (Chat Completions)
  reasoning text    ``message.reasoning_content`` is dropped, invoke and stream alike (official
                    OpenAI schema only); ``<think>`` inline in content passes through untouched.
  reasoning tokens  ``usage.completion_tokens_details.reasoning_tokens`` ->
                    ``usage_metadata["output_token_details"]["reasoning"]``.
  errors            raised as langchain_openai subclasses of both the openai class and the
                    langchain_core.exceptions.Model* class:
                    401 openai.AuthenticationError (ModelAuthenticationError),
                    404 openai.NotFoundError (ModelNotFoundError),
                    429 openai.RateLimitError (ModelRateLimitError),
                    5xx openai.InternalServerError (ModelAPIError),
                    unreachable openai.APIConnectionError (ModelConnectionError),
                    timeout openai.APITimeoutError (ModelTimeoutError; also an APIConnectionError).
  Retry-After       ``exc.response.headers["retry-after"]`` (also ``exc.status_code``, ``exc.body``).

ChatOllama (always streams /api/chat, even for invoke)
  reasoning text    ``message.thinking`` -> ``additional_kwargs["reasoning_content"]`` only when
                    ``reasoning`` is truthy; with None/False it is dropped. The request carries
                    ``think: true/false`` for True/False and no ``think`` key for None.
  reasoning tokens  none: usage_metadata is only prompt_eval_count/eval_count.
  errors            any HTTP status: ollama.ResponseError (``.status_code``, ``.error`` = the JSON
                    "error" text); not wrapped by langchain.
                    unreachable: httpx.ConnectError from ChatOllama (streaming path);
                    builtin ConnectionError from non-streaming ollama.Client calls (list, chat).
                    timeout (``client_kwargs={"timeout": s}``): httpx.ReadTimeout.
  Retry-After       not on ResponseError; ``exc.__context__`` is the httpx.HTTPStatusError
                    (raised ``from None``), so ``exc.__context__.response.headers["retry-after"]``.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar


@dataclass
class Reply:
    """One scripted answer."""

    content: str = ""
    reasoning: str | None = None  # OpenAI-compatible: message.reasoning_content; Ollama: message.thinking
    tool_calls: list[dict] = field(default_factory=list)  # [{"name": str, "args": dict}]
    status: int = 200  # an HTTP error to return instead
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""  # error message for status != 200
    delay_s: float = 0.0  # sleep before answering
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens; default: a rough count
    reasoning_tokens: int | None = None  # OpenAI-compatible usage.completion_tokens_details


Script = Callable[[dict], Reply] | list[Reply]


def _rough_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _pieces(text: str) -> list[str]:
    """Word-sized stream pieces whose concatenation is ``text``."""
    return re.findall(r"\s*\S+\s*|\s+", text)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: bodies end with the connection

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve(None)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        self._serve(body if isinstance(body, dict) else {"_body": body})

    def _serve(self, body: dict | None) -> None:
        try:
            self.server.owner._route(self, body)  # type: ignore[attr-defined]
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (timeout tests)

    # -- writing helpers used by the servers --
    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def send_text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def write(self, text: str) -> None:
        self.wfile.write(text.encode())
        self.wfile.flush()


class _ScriptedServer:
    """Shared machinery: script, request log, auth and model checks, thread lifecycle."""

    def __init__(self, script: Script, models: list[str] | None = None, api_key: str | None = None):
        if not callable(script):
            script = list(script)
            if not script:
                raise ValueError("a reply queue needs at least one Reply")
        self._script = script
        self.models = list(models) if models is not None else None
        self.api_key = api_key
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self._call_ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --
    def start(self) -> _ScriptedServer:
        self._stopping.clear()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in delay_s
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    # -- helpers --
    def _record(self, body: dict) -> None:
        with self._lock:
            self.requests.append(body)

    def _next_reply(self, body: dict) -> Reply:
        if callable(self._script):
            return self._script(body)
        with self._lock:
            return self._script.pop(0) if len(self._script) > 1 else self._script[0]

    def _authorized(self, handler: _Handler) -> bool:
        return self.api_key is None or handler.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _known(self, model: str) -> bool:
        return self.models is None or model in self.models

    def _wait(self, reply: Reply) -> None:
        if reply.delay_s > 0:
            self._stopping.wait(reply.delay_s)

    def _usage(self, body: dict, reply: Reply) -> tuple[int, int]:
        if reply.usage is not None:
            return reply.usage
        produced = reply.content + (reply.reasoning or "") + json.dumps(reply.tool_calls)
        return _rough_tokens(json.dumps(body.get("messages", []))), _rough_tokens(produced)

    def _route(self, handler: _Handler, body: dict | None) -> None:
        raise NotImplementedError


class OpenAICompatibleServer(_ScriptedServer):
    """``POST /v1/chat/completions`` (JSON or SSE) and ``GET /v1/models``, OpenAI's wire format.

    ``max_model_len`` adds vLLM's field to every ``/v1/models`` entry; ``n_ctx`` serves llama.cpp's
    ``GET /props`` (``default_generation_settings.n_ctx``)."""

    def __init__(self, script: Script, models: list[str] | None = None, api_key: str | None = None,
                 max_model_len: int | None = None, n_ctx: int | None = None):
        super().__init__(script, models, api_key)
        self.max_model_len = max_model_len
        self.n_ctx = n_ctx

    #: status -> OpenAI's error "type" and default "code"; other statuses are "server_error"
    _ERROR_KINDS: ClassVar[dict[int, tuple[str, str | None]]] = {
        400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
        403: ("invalid_request_error", None), 404: ("invalid_request_error", None),
        429: ("requests", "rate_limit_exceeded"),
    }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _error(self, handler: _Handler, status: int, message: str = "", code: str | None = None,
               headers: dict[str, str] | None = None) -> None:
        kind, default_code = self._ERROR_KINDS.get(status, ("server_error", None))
        error = {"message": message or HTTPStatus(status).phrase, "type": kind, "param": None,
                 "code": code or default_code}
        handler.send_json(status, {"error": error}, headers)

    def _route(self, handler: _Handler, body: dict | None) -> None:
        path = handler.path.split("?")[0].rstrip("/")
        if body is not None:
            self._record(body)
        if not self._authorized(handler):
            key = (handler.headers.get("Authorization") or "").removeprefix("Bearer ")
            return self._error(handler, 401, f"Incorrect API key provided: {key[:3]}***.")
        if handler.command == "GET" and path == "/props" and self.n_ctx:
            return handler.send_json(200, {"default_generation_settings": {"n_ctx": self.n_ctx}, "total_slots": 1})
        if handler.command == "GET" and path == "/v1/models":
            extra = {"max_model_len": self.max_model_len} if self.max_model_len else {}
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "scripted", **extra}
                    for m in self.models or []]
            return handler.send_json(200, {"object": "list", "data": data})
        if handler.command == "GET" and path.startswith("/v1/models/"):  # OpenAI: retrieve one model
            model = path.removeprefix("/v1/models/")
            if not self._known(model):
                return self._error(handler, 404, f"The model `{model}` does not exist", "model_not_found")
            return handler.send_json(200, {"id": model, "object": "model", "created": 0, "owned_by": "scripted"})
        if handler.command == "POST" and path == "/v1/chat/completions":
            return self._chat(handler, body or {})
        self._error(handler, 404, f"Unknown request URL: {handler.command} {handler.path}", "unknown_url")

    def _chat(self, handler: _Handler, body: dict) -> None:
        model = body.get("model", "")
        if not self._known(model):
            return self._error(handler, 404, f"The model `{model}` does not exist", "model_not_found")
        reply = self._next_reply(body)
        self._wait(reply)
        if reply.status != 200:
            return self._error(handler, reply.status, reply.error, headers=reply.headers)
        n = next(self._ids)
        head = {"id": f"chatcmpl-{n}", "created": int(time.time()), "model": model,
                "system_fingerprint": None}
        calls = [{"id": tc.get("id") or f"call_{next(self._call_ids)}", "type": "function",
                  "function": {"name": tc["name"], "arguments": json.dumps(tc.get("args", {}))}}
                 for tc in reply.tool_calls]
        finish = "tool_calls" if calls else "stop"
        prompt, completion = self._usage(body, reply)
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion}
        if reply.reasoning_tokens is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": reply.reasoning_tokens}
        if not body.get("stream"):
            content = reply.content or (None if calls else "")  # OpenAI sends null beside tool calls
            message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
            if reply.reasoning is not None:
                message["reasoning_content"] = reply.reasoning
            if calls:
                message["tool_calls"] = calls
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            return handler.send_json(200, {**head, "object": "chat.completion", "choices": [choice],
                                           "usage": usage}, reply.headers)
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        handler.start_stream("text/event-stream; charset=utf-8", reply.headers)
        for delta, finish_reason in self._deltas(reply, calls, finish):
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            chunk = {**head, "object": "chat.completion.chunk", "choices": [choice]}
            if with_usage:
                chunk["usage"] = None
            handler.write(f"data: {json.dumps(chunk)}\n\n")
        if with_usage:
            last = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            handler.write(f"data: {json.dumps(last)}\n\n")
        handler.write("data: [DONE]\n\n")

    @staticmethod
    def _deltas(reply: Reply, calls: list[dict], finish: str) -> Iterator[tuple[dict, str | None]]:
        """OpenAI's delta sequence: role, reasoning, content, tool calls (id+name, then arguments), finish."""
        yield {"role": "assistant", "content": "", "refusal": None}, None
        for piece in _pieces(reply.reasoning or ""):
            yield {"reasoning_content": piece}, None
        for piece in _pieces(reply.content):
            yield {"content": piece}, None
        for index, call in enumerate(calls):
            fn = call["function"]
            yield {"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                   "function": {"name": fn["name"], "arguments": ""}}]}, None
            half = len(fn["arguments"]) // 2
            for part in (fn["arguments"][:half], fn["arguments"][half:]):
                if part:
                    yield {"tool_calls": [{"index": index, "function": {"arguments": part}}]}, None
        yield {}, finish


class OllamaServer(_ScriptedServer):
    """Ollama's own API: ``/api/chat`` (NDJSON or JSON), ``/api/tags``, ``/api/show``, ``/api/version``.

    ``context_length`` is the model's window as ``/api/show`` reports it (``<arch>.context_length``).
    With ``window_rules`` the server keeps Ollama's context rules: a request without
    ``options.num_ctx`` gets ``default_num_ctx``; tool schemas, messages and the generated tokens
    (thinking included) count against the window; a prompt that does not fit loses messages from the
    start, silently (the script sees only what was kept, ``prompt_eval_count`` counts only that); a
    generation that reaches the window or ``num_predict`` stops with ``done_reason: length``.
    ``overflows`` counts the requests whose prompt or generation did not fit."""

    VERSION = "0.12.6"

    def __init__(self, script: Script, models: list[str] | None = None, api_key: str | None = None,
                 context_length: int | None = None, window_rules: bool = False, default_num_ctx: int = 4096):
        super().__init__(script, models, api_key)
        self.context_length = context_length
        self.window_rules = window_rules
        self.default_num_ctx = default_num_ctx
        self.overflows = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _known(self, model: str) -> bool:
        return super()._known(model) or super()._known(f"{model}:latest")

    @staticmethod
    def _details() -> dict:
        return {"parent_model": "", "format": "gguf", "family": "scripted", "families": ["scripted"],
                "parameter_size": "1B", "quantization_level": "Q4_K_M"}

    def _route(self, handler: _Handler, body: dict | None) -> None:
        path = handler.path.split("?")[0].rstrip("/") or "/"
        if body is not None:
            self._record(body)
        if not self._authorized(handler):
            return handler.send_json(401, {"error": "unauthorized"})
        if handler.command == "GET" and path == "/":
            return handler.send_text(200, "Ollama is running")
        if handler.command == "GET" and path == "/api/version":
            return handler.send_json(200, {"version": self.VERSION})
        if handler.command == "GET" and path == "/api/tags":
            models = [{"name": m, "model": m, "modified_at": "2025-01-01T00:00:00Z", "size": 1,
                       "digest": "0" * 64, "details": self._details()} for m in self.models or []]
            return handler.send_json(200, {"models": models})
        if handler.command == "POST" and path == "/api/show":
            model = (body or {}).get("model", "")
            if not self._known(model):
                return handler.send_json(404, {"error": f"model '{model}' not found"})
            return handler.send_json(200, {
                "modelfile": "", "parameters": "", "template": "{{ .Prompt }}", "details": self._details(),
                "model_info": {"general.architecture": "scripted",
                               **({"scripted.context_length": self.context_length} if self.context_length else {})},
                "modified_at": "2025-01-01T00:00:00Z",
                "capabilities": ["completion", "tools", "thinking"]})
        if handler.command == "POST" and path == "/api/chat":
            return self._chat(handler, body or {})
        handler.send_text(404, "404 page not found")

    def _chat(self, handler: _Handler, body: dict) -> None:
        model = body.get("model", "")
        if not self._known(model):
            return handler.send_json(404, {"error": f'model "{model}" not found, try pulling it first'})
        stop = "stop"
        if self.window_rules:
            body, prompt = self._fit(body)
        reply = self._next_reply(body)
        self._wait(reply)
        if reply.status != 200:
            error = reply.error or HTTPStatus(reply.status).phrase
            return handler.send_json(reply.status, {"error": error}, reply.headers)
        if self.window_rules:
            reply, completion, stop = self._generate(body, reply, prompt)
        else:
            prompt, completion = self._usage(body, reply)
        calls = [{"function": {"name": tc["name"], "arguments": tc.get("args", {})}}
                 for tc in reply.tool_calls]

        def line(message: dict, done: bool = False) -> dict:
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            out = {"model": model, "created_at": now,
                   "message": {"role": "assistant", "content": "", **message}, "done": done}
            if done:
                out.update(done_reason=stop, total_duration=1_000_000, load_duration=100_000,
                           prompt_eval_count=prompt, prompt_eval_duration=200_000,
                           eval_count=completion, eval_duration=700_000)
            return out

        if not body.get("stream", True):
            message: dict[str, Any] = {"content": reply.content}
            if reply.reasoning is not None:
                message["thinking"] = reply.reasoning
            if calls:
                message["tool_calls"] = calls
            return handler.send_json(200, line(message, done=True), reply.headers)
        handler.start_stream("application/x-ndjson", reply.headers)
        parts = [{"thinking": p} for p in _pieces(reply.reasoning or "")]
        parts += [{"content": p} for p in _pieces(reply.content)]
        if calls:
            parts.append({"tool_calls": calls})
        for message in parts:
            handler.write(json.dumps(line(message)) + "\n")
        handler.write(json.dumps(line({}, done=True)) + "\n")

    # -- Ollama's context rules ------------------------------------------------------------------
    def _window(self, body: dict) -> int:
        return int((body.get("options") or {}).get("num_ctx") or self.default_num_ctx)

    def _fit(self, body: dict) -> tuple[dict, int]:
        """The request as the model sees it: messages dropped from the start until the prompt fits."""
        window = self._window(body)
        tools = _rough_tokens(json.dumps(body.get("tools") or [])) if body.get("tools") else 0
        messages = list(body.get("messages") or [])
        size = tools + _rough_tokens(json.dumps(messages))
        if size > window:
            with self._lock:
                self.overflows += 1
            while messages and tools + _rough_tokens(json.dumps(messages)) > window:
                messages.pop(0)
            size = tools + _rough_tokens(json.dumps(messages)) if messages else tools
        return {**body, "messages": messages}, min(size, window)

    def _generate(self, body: dict, reply: Reply, prompt: int) -> tuple[Reply, int, str]:
        """The reply cut where the window or ``num_predict`` ends it (thinking comes first)."""
        room = self._window(body) - prompt
        predict = (body.get("options") or {}).get("num_predict")
        if isinstance(predict, int) and predict > 0:
            room = min(room, predict)
        thinking = reply.reasoning or ""
        answer = reply.content + (json.dumps(reply.tool_calls) if reply.tool_calls else "")
        needed = (_rough_tokens(thinking) if thinking else 0) + (_rough_tokens(answer) if answer else 0)
        if needed <= room:
            return reply, needed, "stop"
        with self._lock:
            self.overflows += 1
        kept = thinking[:max(0, room) * 4]
        return Reply(content="", reasoning=kept), max(0, room), "length"
