"""The scripted servers in tests/llm_servers.py against the real clients: ChatOpenAI and ChatOllama."""

from __future__ import annotations

import socket

import httpx
import ollama
import openai
import pytest
from langchain_core import exceptions as lc_exc
from langchain_core.tools import tool
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI

from tests.llm_servers import OllamaServer, OpenAICompatibleServer, Reply


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _chat_openai(srv: OpenAICompatibleServer, **kw) -> ChatOpenAI:
    kw = {"model": "m", "api_key": "k", "max_retries": 0, **kw}
    return ChatOpenAI(base_url=srv.base_url, **kw)


@pytest.fixture
def dead_port() -> int:
    """A port that was bound and then closed: nothing listens there."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- OpenAI-compatible ------------------------------------------------------------------------------

@pytest.mark.parametrize("streaming", [False, True])
def test_openai_content_usage_and_dropped_reasoning(streaming):
    reply = Reply(content="Hi <think>x</think> there", reasoning="ponder", usage=(10, 4), reasoning_tokens=3)
    with OpenAICompatibleServer([reply]) as srv:
        msg = _chat_openai(srv, streaming=streaming, stream_usage=streaming).invoke("hello")
    assert msg.content == "Hi <think>x</think> there"  # inline think tags pass through
    assert "reasoning_content" not in msg.additional_kwargs  # ChatOpenAI drops the non-standard field
    assert "ponder" not in str(msg)
    assert msg.usage_metadata["input_tokens"] == 10 and msg.usage_metadata["output_tokens"] == 4
    assert msg.usage_metadata["total_tokens"] == 14
    assert msg.usage_metadata["output_token_details"] == {"reasoning": 3}
    (request,) = srv.requests
    assert request["model"] == "m" and request["messages"] == [{"role": "user", "content": "hello"}]
    if streaming:
        assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    else:
        assert msg.response_metadata["finish_reason"] == "stop"


@pytest.mark.parametrize("streaming", [False, True])
def test_openai_tool_calls(streaming):
    calls = [{"name": "add", "args": {"a": 1, "b": 2}}, {"name": "add", "args": {"a": 3, "b": 40}}]
    with OpenAICompatibleServer([Reply(tool_calls=calls)]) as srv:
        msg = _chat_openai(srv, streaming=streaming).bind_tools([add]).invoke("add")
    assert [(c["name"], c["args"], c["id"]) for c in msg.tool_calls] == [
        ("add", {"a": 1, "b": 2}, "call_1"), ("add", {"a": 3, "b": 40}, "call_2")]
    assert msg.invalid_tool_calls == []
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    assert srv.requests[0]["tools"][0]["function"]["name"] == "add"


def test_openai_stream_arrives_in_chunks():
    with OpenAICompatibleServer([Reply(content="one two three four")]) as srv:
        chunks = list(_chat_openai(srv).stream("count", stream_usage=True))
    text = [c.content for c in chunks if c.content]
    assert len(text) == 4 and "".join(text) == "one two three four"
    assert sum(c.usage_metadata["output_tokens"] for c in chunks if c.usage_metadata) >= 1


def test_openai_reply_queue_repeats_last_and_callable_script():
    with OpenAICompatibleServer([Reply(content="first"), Reply(content="again")]) as srv:
        model = _chat_openai(srv)
        assert [model.invoke("x").content for _ in range(3)] == ["first", "again", "again"]

    def echo(body):
        return Reply(content=body["messages"][-1]["content"].upper())

    with OpenAICompatibleServer(echo) as srv:
        assert _chat_openai(srv).invoke("shout").content == "SHOUT"


def test_openai_models_endpoint():
    with OpenAICompatibleServer([Reply()], models=["a", "b"], api_key="k") as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
        assert [m.id for m in client.models.list()] == ["a", "b"]


def test_openai_bad_key_is_authentication_error():
    with OpenAICompatibleServer([Reply(content="ok")], api_key="right") as srv:
        with pytest.raises(openai.AuthenticationError) as info:
            _chat_openai(srv, api_key="wrong").invoke("x")
        assert _chat_openai(srv, api_key="right").invoke("x").content == "ok"
    assert isinstance(info.value, lc_exc.ModelAuthenticationError)
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    assert len(srv.requests) == 2  # the rejected request is recorded too


def test_openai_unknown_model_is_not_found():
    with OpenAICompatibleServer([Reply()], models=["m"]) as srv, pytest.raises(openai.NotFoundError) as info:
        _chat_openai(srv, model="nope").invoke("x")
    assert isinstance(info.value, lc_exc.ModelNotFoundError)
    assert info.value.body == {"message": "The model `nope` does not exist", "type": "invalid_request_error",
                               "param": None, "code": "model_not_found"}


def test_openai_rate_limit_exposes_retry_after():
    reply = Reply(status=429, headers={"Retry-After": "0"}, error="slow down")
    with OpenAICompatibleServer([reply]) as srv, pytest.raises(openai.RateLimitError) as info:
        _chat_openai(srv).invoke("x")
    assert isinstance(info.value, lc_exc.ModelRateLimitError)
    assert info.value.response.headers["retry-after"] == "0"
    assert info.value.body["message"] == "slow down"


@pytest.mark.parametrize("status", [500, 503])
def test_openai_server_error(status):
    reply = Reply(status=status)
    with OpenAICompatibleServer([reply]) as srv, pytest.raises(openai.InternalServerError) as info:
        _chat_openai(srv).invoke("x")
    assert info.value.status_code == status and isinstance(info.value, lc_exc.ModelAPIError)


def test_openai_timeout():
    late = Reply(content="late", delay_s=10)  # the server wakes early when it stops
    with OpenAICompatibleServer([late]) as srv, pytest.raises(openai.APITimeoutError) as info:
        _chat_openai(srv, timeout=0.3).invoke("x")
    assert isinstance(info.value, lc_exc.ModelTimeoutError)


def test_openai_unreachable(dead_port):
    model = ChatOpenAI(model="m", base_url=f"http://127.0.0.1:{dead_port}/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.APIConnectionError) as info:
        model.invoke("x")
    assert isinstance(info.value, lc_exc.ModelConnectionError)


# --- Ollama ------------------------------------------------------------------------------------------

THINKING = Reply(content="Hello <think>a</think> world", reasoning="ponder deep", usage=(7, 3))


@pytest.mark.parametrize(("reasoning", "think_sent"), [(True, True), (False, False), (None, "absent")])
def test_ollama_content_thinking_and_think_flag(reasoning, think_sent):
    with OllamaServer([THINKING]) as srv:
        msg = ChatOllama(model="m", base_url=srv.base_url, reasoning=reasoning).invoke("x")
    assert msg.content == "Hello <think>a</think> world"
    if reasoning:
        assert msg.additional_kwargs["reasoning_content"] == "ponder deep"
    else:  # sent by the server, dropped by langchain_ollama
        assert "reasoning_content" not in msg.additional_kwargs
    assert msg.usage_metadata == {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    assert msg.response_metadata["done_reason"] == "stop"
    (request,) = srv.requests
    assert request["stream"] is True and request["model"] == "m"  # ChatOllama always streams
    assert request.get("think", "absent") == think_sent


def test_ollama_tool_calls():
    with OllamaServer([Reply(tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}}])]) as srv:
        msg = ChatOllama(model="m", base_url=srv.base_url).bind_tools([add]).invoke("add")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("add", {"a": 1, "b": 2})]
    assert msg.tool_calls[0]["id"]  # langchain_ollama makes up a uuid
    assert srv.requests[0]["tools"][0]["function"]["name"] == "add"


def test_ollama_stream_arrives_in_chunks():
    with OllamaServer([Reply(content="one two three", reasoning="hm hm")]) as srv:
        chunks = list(ChatOllama(model="m", base_url=srv.base_url, reasoning=True).stream("x"))
    assert [c.content for c in chunks if c.content] == ["one ", "two ", "three"]
    assert "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks) == "hm hm"
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk  # the done line's counts; langchain_core appends an empty chunk_position="last"
    assert total.usage_metadata["input_tokens"] >= 1 and total.usage_metadata["output_tokens"] >= 1


def test_ollama_native_client_non_stream_list_show_version():
    with OllamaServer([THINKING], models=["m:latest"]) as srv:
        client = ollama.Client(host=srv.base_url)
        resp = client.chat(model="m", messages=[{"role": "user", "content": "x"}], think=True)
        assert (resp.message.content, resp.message.thinking) == (THINKING.content, "ponder deep")
        assert resp.done is True and resp.eval_count == 3
        assert srv.requests[0]["stream"] is False and srv.requests[0]["think"] is True
        assert [m.model for m in client.list().models] == ["m:latest"]
        assert "thinking" in client.show("m").capabilities
        assert httpx.get(f"{srv.base_url}/api/version").json() == {"version": OllamaServer.VERSION}


def test_ollama_unknown_model_is_response_error_404():
    with OllamaServer([Reply()], models=["m"]) as srv, pytest.raises(ollama.ResponseError) as info:
        ChatOllama(model="nope", base_url=srv.base_url).invoke("x")
    assert info.value.status_code == 404
    assert info.value.error == 'model "nope" not found, try pulling it first'


def test_ollama_api_key():
    with OllamaServer([Reply(content="ok")], api_key="k") as srv:
        with pytest.raises(ollama.ResponseError) as info:
            ChatOllama(model="m", base_url=srv.base_url).invoke("x")
        assert (info.value.status_code, info.value.error) == (401, "unauthorized")
        headers = {"Authorization": "Bearer k"}
        authed = ChatOllama(model="m", base_url=srv.base_url, client_kwargs={"headers": headers})
        assert authed.invoke("x").content == "ok"


def test_ollama_rate_limit_retry_after_is_on_the_context():
    reply = Reply(status=429, headers={"Retry-After": "0"}, error="slow down")
    with OllamaServer([reply]) as srv, pytest.raises(ollama.ResponseError) as info:
        ChatOllama(model="m", base_url=srv.base_url).invoke("x")
    assert (info.value.status_code, info.value.error) == (429, "slow down")
    assert isinstance(info.value.__context__, httpx.HTTPStatusError)
    assert info.value.__context__.response.headers["retry-after"] == "0"


def test_ollama_timeout():
    with OllamaServer([Reply(content="late", delay_s=10)]) as srv, pytest.raises(httpx.ReadTimeout):
        ChatOllama(model="m", base_url=srv.base_url, client_kwargs={"timeout": 0.3}).invoke("x")


def test_ollama_unreachable(dead_port):
    url = f"http://127.0.0.1:{dead_port}"
    with pytest.raises(httpx.ConnectError):  # ChatOllama streams: ollama does not translate this one
        ChatOllama(model="m", base_url=url).invoke("x")
    with pytest.raises(ConnectionError):  # non-streaming ollama.Client calls raise the builtin
        ollama.Client(host=url).list()
