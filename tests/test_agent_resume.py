"""A run killed in the middle of an agent resumes at that agent's last finished step.

The model is the skyline behind a scripted OpenAI-compatible server on 127.0.0.1 that keeps every
request it answered; the run is ``fedagentbench run`` as a subprocess, killed with SIGKILL while
C2 at one hospital waits for its third model call, then started again with the same command (no
``--cache``: nothing but the checkpoints can spare a call).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

from .llm_servers import OpenAICompatibleServer, Reply
from .test_real_models import _env, _messages
from .test_workflow import _passed, _run_cli, _snapshot

TASK = "xray-pneumonia"
VICTIM = "Agent C2 at client hospital_01"
STOP_AT = 3  # the victim's third model call never gets its answer before the kill


def _conversation(body: dict) -> str:
    return json.dumps(body.get("messages", []), sort_keys=True)


def test_sigkill_mid_agent_resumes_at_the_last_finished_step(tiny_envs, tmp_path, tmp_path_factory):
    from agents.baselines import make_baseline

    brain = make_baseline("skyline", {})
    answered: list[str] = []  # every conversation the server answered, in order
    lock = threading.Lock()
    blocked = threading.Event()
    state = {"victim_calls": 0, "kill_done": False}

    def script(body: dict) -> Reply:
        system = body["messages"][0]["content"]
        with lock:
            if system.startswith(VICTIM) and not state["kill_done"]:
                state["victim_calls"] += 1
                if state["victim_calls"] == STOP_AT:
                    state["blocked_request"] = _conversation(body)
                    blocked.set()
                    return Reply(content="", delay_s=120)  # the process dies while it waits
        reply = brain.invoke(_messages(body))
        with lock:
            answered.append(_conversation(body))
        return Reply(content=str(reply.content or ""),
                     tool_calls=[{"name": c["name"], "args": c["args"]} for c in reply.tool_calls])

    db = tmp_path / "cp.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDAGENTBENCH_CACHE")}
    # identical trainings run once per session (the model calls are what is counted, not the training)
    env["FEDAGENTBENCH_TRAINING_CACHE"] = str(tmp_path_factory.getbasetemp() / "training_cache")
    with OpenAICompatibleServer(script, models=["m"]) as server:
        base = ["run", "--env", str(_env(tiny_envs, tmp_path)), "--task", TASK, "--guidance", "fine",
                "--model", f"openai-compatible:m@{server.base_url}", "--db", str(db), "--retries", "0"]
        proc = _run_cli([*base, "--run-id", "killed", "--thread-id", "killed"], env)
        assert blocked.wait(240), proc.stdout.read() if proc.poll() is not None else "C2 never reached its call"
        settled = len(answered)
        while True:  # let the other hospital's cleaner finish or wait too, then kill the whole group
            time.sleep(2)
            with lock:
                if len(answered) == settled:
                    break
                settled = len(answered)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        with lock:
            before = list(answered)
            state["kill_done"] = True

        resumed = _run_cli([*base, "--run-id", "killed", "--thread-id", "killed"], env)
        out, _ = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, out
        with lock:
            after = answered[len(before):]
        victim_after = [c for c in after if json.loads(c)[0]["content"].startswith(VICTIM)]
        # the victim's first call after the restart is exactly the one that was cut off ...
        assert victim_after and victim_after[0] == state["blocked_request"]
        assert len(json.loads(victim_after[0])) > 2  # (mid-agent: not its opening instructions)
        # ... and no conversation answered before the kill is asked again
        assert not set(after) & set(before)

        clean = _run_cli([*base, "--run-id", "clean", "--thread-id", "clean"], env)
        out2, _ = clean.communicate(timeout=600)
        assert clean.returncode == 0, out2

    killed, uninterrupted = _snapshot(db, "killed"), _snapshot(db, "clean")
    assert _passed(killed) == _passed(uninterrupted) and sum(_passed(killed).values()) >= 5

    def calls(final: dict) -> dict:
        return {(a["role"], a["client"]): (a["model_calls"], a["tool_calls"], a["ok"]) for a in final["agents"]}

    assert calls(killed) == calls(uninterrupted)  # the resumed C2 counts the calls it made before the kill
