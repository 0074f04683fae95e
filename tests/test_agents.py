"""Agent machinery without the graph: parsers, the tool loop's guard rails, model specs, privacy."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import StructuredTool
from pydantic import Field

from agents import results
from agents.models import ModelSettings, resolve_spec
from agents.runner import run_agent
from graphs.privacy import PrivacyAuditor


class ScriptedModel(FakeMessagesListChatModel):
    """Replies from a list, in order; binds tools by returning itself."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedModel":
        return self


class FlakyModel(ScriptedModel):
    """Raises a provider-style error for the first ``failures`` calls."""

    failures: int = 2
    calls: int = 0

    def invoke(self, *args: Any, **kwargs: Any):
        self.calls += 1
        if self.calls <= self.failures:
            raise TimeoutError("provider timed out")
        return super().invoke(*args, **kwargs)


class RecordingModel(ScriptedModel):
    """Remembers the messages of every call."""

    seen: list = Field(default_factory=list)
    choices: list = Field(default_factory=list)

    def bind_tools(self, tools: Any, **kwargs: Any) -> "RecordingModel":
        self.choices.append(kwargs.get("tool_choice"))
        return self

    def invoke(self, messages: Any, *args: Any, **kwargs: Any):
        self.seen.append(list(messages))
        return super().invoke(messages, *args, **kwargs)


def _call(name: str, **args: Any) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"id_{name}", "type": "tool_call"}])


def _echo_tool():
    def echo(text: str) -> str:
        return f"echo: {text}"

    return StructuredTool.from_function(func=echo, name="echo", description="echo a text")


# --- parsers --------------------------------------------------------------------------------------

def test_parsers_accept_protocol_lines_and_json():
    sel = results.parse_selection("Here you go:\n**Dataset Name** : HAM10000\n**Dataset Name**: PH2 <end>")
    assert sel.datasets == ["HAM10000", "PH2"]
    assert results.parse_selection("no dataset: only CT scans here").datasets == []
    assert results.parse_selection('{"datasets": ["BUSI"], "reason": "fits"}').datasets == ["BUSI"]
    assert results.parse_algorithm("Algorithm Name: FedBN\n<end>").algorithm == "FedBN"
    req = results.parse_requirements("Modality: X-ray\nTask type: classification\nTarget classes: normal, pneumonia\n"
                                     "Requirement: baseline")
    assert req.target_classes == ["normal", "pneumonia"] and req.requirement == "baseline"
    h = results.parse_harmonisation("MEL -> malignant\nNV -> benign\nUNK -> drop\nOutput path: work/x")
    assert h.mapping == {"MEL": "malignant", "NV": "benign", "UNK": None} and h.output_path == "work/x"
    assert results.parse_approval("Approved: a, b", ["a", "b", "c"]).approved == ["a", "b"]
    with pytest.raises(results.ParseError):
        results.parse_approval("Approved: z", ["a"])
    with pytest.raises(results.ParseError):
        results.parse_algorithm("I like federated learning")


# --- the tool loop --------------------------------------------------------------------------------

def test_agent_calls_a_tool_then_answers():
    model = ScriptedModel(responses=[_call("echo", text="hi"), AIMessage(content="Algorithm Name: FedAvg")])
    out = run_agent(role="S3", model=model, tools=[_echo_tool()], system="Agent S3 on the server", user="choose",
                    parse=results.parse_algorithm)
    assert out.ok and out.result["algorithm"] == "FedAvg"
    assert [c.tool for c in out.tool_calls] == ["echo"] and out.tool_calls[0].ok
    assert out.usage.model_calls == 2


def test_malformed_and_unknown_tool_calls_go_back_to_the_model():
    bad = AIMessage(content="", invalid_tool_calls=[{"name": "echo", "args": "{not json", "id": "x1",
                                                      "error": "bad json", "type": "invalid_tool_call"}])
    unknown = _call("rm_rf", path="/")
    wrong_args = _call("echo", nonsense=1)
    model = ScriptedModel(responses=[bad, unknown, wrong_args, AIMessage(content="Algorithm Name: FedProx")])
    out = run_agent(role="S3", model=model, tools=[_echo_tool()], system="s", user="u", parse=results.parse_algorithm)
    assert out.ok and out.result["algorithm"] == "FedProx"
    assert [c.ok for c in out.tool_calls] == [False, False, False]
    assert "no tool named 'rm_rf'" in out.tool_calls[1].output


def test_provider_errors_are_retried_then_raised_as_infrastructure_failures(monkeypatch):
    from agents.providers import ProviderUnavailable

    monkeypatch.setenv("FEDAGENTBENCH_RETRY_BASE_S", "0")
    flaky = FlakyModel(responses=[AIMessage(content="Algorithm Name: FedAvg")], failures=2)
    out = run_agent(role="S3", model=flaky, tools=[], system="s", user="u", parse=results.parse_algorithm, retries=3)
    assert out.ok
    down = FlakyModel(responses=[AIMessage(content="x")], failures=99)
    with pytest.raises(ProviderUnavailable, match="failed after 3 attempts: TimeoutError"):
        run_agent(role="S3", model=down, tools=[], system="s", user="u", parse=results.parse_algorithm, retries=2)


def test_step_budget_and_unparseable_answers_end_as_failures():
    looping = ScriptedModel(responses=[_call("echo", text=str(i)) for i in range(10)])
    out = run_agent(role="C2", model=looping, tools=[_echo_tool()], system="s", user="u",
                    parse=results.parse_cleaning, budget=4)
    assert not out.ok and "budget of 4" in out.error and out.steps == 4
    recording = RecordingModel(responses=[_call("echo", text=str(i)) for i in range(10)])
    run_agent(role="C2", model=recording, tools=[_echo_tool()], system="s", user="u",
              parse=results.parse_cleaning, budget=4)
    notices = [i for i, msgs in enumerate(recording.seen) if "model calls left" in str(msgs[-1].content)]
    assert notices == [2]  # told once, before its last two calls
    assert recording.choices == [None, None, None]  # and the last call is made without tools
    repeating = RecordingModel(responses=[_call("echo", text="a"), _call("echo", text="b"), _call("echo", text="a"),
                                          AIMessage(content="Algorithm Name: FedAvg")])
    out = run_agent(role="S3", model=repeating, tools=[_echo_tool()], system="s", user="u",
                    parse=results.parse_algorithm, budget=8)
    assert out.ok and len(out.tool_calls) == 3
    last = [str(msgs[-1].content) for msgs in repeating.seen]
    assert ["same arguments" in text for text in last] == [False, False, False, True]  # after a's second call
    assert last[2] == "echo: b" and repeating.seen[3][-2].content == "echo: a"  # the tool's own output unchanged
    late = ScriptedModel(responses=[_call("echo", text="a"), _call("echo", text="b"), AIMessage(content="no format")])
    out = run_agent(role="S3", model=late, tools=[_echo_tool()], system="s", user="u",
                    parse=results.parse_algorithm, budget=3)
    assert not out.ok and out.error.startswith("unparseable answer") and out.steps == 3  # its answer, not the budget
    chatty = ScriptedModel(responses=[AIMessage(content="hmm"), AIMessage(content="still no format")])
    out = run_agent(role="S3", model=chatty, tools=[], system="s", user="u", parse=results.parse_algorithm)
    assert not out.ok and "unparseable" in out.error and out.steps == 2


def test_auditor_sees_every_model_input():
    auditor = PrivacyAuditor(["Rossi^Clara", "0312345678"])
    leaky = StructuredTool.from_function(func=lambda: "patient Rossi^Clara, id 0312345678", name="leak",
                                         description="leaks")
    model = ScriptedModel(responses=[_call("leak"), AIMessage(content="Algorithm Name: FedAvg")])
    run_agent(role="S3", model=model, tools=[leaky], system="s", user="u", parse=results.parse_algorithm,
              auditor=auditor)
    assert [v.kind for v in auditor.violations] == ["patient_identifier"]


# --- privacy auditor ------------------------------------------------------------------------------

def test_auditor_flags_pixels_blobs_identifiers_and_key_content():
    auditor = PrivacyAuditor(["Novak^Elif"])
    assert not auditor.check("cleaned 120 images into work/t/cleaned; classes MEL 40, NV 80", "ok")
    assert auditor.check(", ".join(str(i % 255) for i in range(400)), "pixels")[0].kind == "pixel_array"
    assert auditor.check("data:image/png;base64," + "iVBORw0KGgo" * 30, "b64")[0].kind == "base64"
    assert auditor.check("PatientName Novak^Elif", "phi")[0].kind == "patient_identifier"
    assert auditor.check('{"label_mappings": {}}', "key")[0].kind == "answer_key"
    assert auditor.check("raw \x00\x01 bytes", "bin")[0].kind == "binary"
    assert len(auditor.violations) == 5


# --- model specs ----------------------------------------------------------------------------------

def test_model_specs_and_aliases(monkeypatch, tmp_path):
    assert resolve_spec("qwq-32b").resolved == "ollama:qwq:32b"
    info = resolve_spec("openai-compatible:qwen@http://127.0.0.1:9/v1", ModelSettings(temperature=0.3, seed=7))
    assert (info.provider, info.model, info.base_url, info.settings.seed) == ("openai-compatible", "qwen",
                                                                               "http://127.0.0.1:9/v1", 7)
    assert resolve_spec("gpt-4.1").resolved == "openai:gpt-4.1"
    assert resolve_spec("oracle").provider == "baseline"
    for bad in ("nonsense", "foo:bar", "openai-compatible:noaddress"):
        with pytest.raises(ValueError):
            resolve_spec(bad)
    extra = tmp_path / "aliases.json"
    extra.write_text('{"my-vllm": "openai-compatible:llama@http://10.0.0.2:8000/v1"}')
    monkeypatch.setenv("FEDAGENTBENCH_MODEL_ALIASES", str(extra))
    assert resolve_spec("my-vllm").base_url == "http://10.0.0.2:8000/v1"


def test_openai_compatible_model_reports_usage_from_a_real_http_server():
    """ChatOpenAI against a local OpenAI-style endpoint: usage metadata reaches the runner."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from agents.models import make_chat_model

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            body = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "Algorithm Name: FedBN"}}],
                    "usage": {"prompt_tokens": 42, "completion_tokens": 5, "total_tokens": 47}}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        info = resolve_spec(f"openai-compatible:m@http://127.0.0.1:{server.server_port}/v1")
        out = run_agent(role="S3", model=make_chat_model(info), tools=[], system="s", user="u",
                        parse=results.parse_algorithm)
    finally:
        server.shutdown()
    assert out.ok and out.result["algorithm"] == "FedBN"
    assert (out.usage.input_tokens, out.usage.output_tokens) == (42, 5)
