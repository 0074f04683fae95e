"""The LangGraph workflow end to end: phases, both modes, checkpoints and resume, privacy, Studio."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage

from environments.concepts import ENVIRONMENTS
from environments.tasks import tasks_for
from eval.runs import run_task
from eval.scoring import SUBTASKS
from graphs import runtime
from graphs.state import RunConfig

from .conftest import REPO


@pytest.fixture(autouse=True)
def _training_cache(tmp_path_factory, monkeypatch):
    """Identical trainings (same harmonised bytes and settings) run once per test session."""
    cache = tmp_path_factory.getbasetemp() / "training_cache"
    monkeypatch.setenv("FEDAGENTBENCH_TRAINING_CACHE", str(cache))


def _config(env_dir: Path, task: str, **kw: Any) -> RunConfig:
    return RunConfig(env_dir=str(env_dir), task_id=task, **kw)


def _passed(state: dict) -> dict[str, bool]:
    return {k: v["passed"] for k, v in state["scores"]["subtasks"].items()}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_oracle_completes_every_environment_end_to_end(env, tiny_envs, tmp_path):
    task = tasks_for(env)[0].task_id
    state = run_task(_config(tiny_envs / env, task, model="oracle", guidance="fine", run_id=f"t-{env}"),
                     tmp_path / "cp.sqlite")
    assert _passed(state) == dict.fromkeys(SUBTASKS, True), \
        json.dumps(state["scores"]["subtasks"], indent=1, default=str)[:3000]
    assert state["training"].completed and state["training"].final_metrics
    assert state["privacy"] == []


@pytest.mark.parametrize("guidance", ["fine", "goal"])
@pytest.mark.parametrize("mode", ["e2e", "phase"])
def test_both_guidance_styles_and_modes(guidance, mode, tiny_envs, tmp_path):
    task = tasks_for("mri")[1].task_id
    state = run_task(_config(tiny_envs / "mri", task, model="oracle", guidance=guidance, mode=mode,
                             run_id=f"gm-{guidance}-{mode}"), tmp_path / "cp.sqlite")
    assert all(_passed(state).values()), json.dumps(state["scores"]["subtasks"], default=str)[:3000]
    roles = {a["role"] for a in state["agents"]}
    assert roles == set(SUBTASKS)  # one agent role per sub-task


def test_per_phase_mode_isolates_an_early_mistake(tiny_envs, tmp_path):
    """The random model fails selection; in per-phase mode training still gets the key's data."""
    config = _config(tiny_envs / "xray", "xray-pneumonia", model="random", mode="phase", run_id="iso")
    state = run_task(config, tmp_path / "cp.sqlite")
    key = runtime.task_key(config)
    trained = {n for n, c in state["clients"].items() if c.training_input}
    assert trained == set(key.approved_hospitals)


class _Scripted(FakeMessagesListChatModel):
    def bind_tools(self, tools: Any, **kwargs: Any) -> "_Scripted":
        return self


def test_auditor_catches_a_planted_leak_and_none_in_normal_runs(tiny_envs, tmp_path, monkeypatch):
    from langchain_core.tools import StructuredTool

    import tools as toolkit
    from environments.answer_key import load_environment_key

    # an environment whose DICOM files carry patient identifiers (which ones do depends on the build)
    env = next(e for e in ENVIRONMENTS if load_environment_key(tiny_envs / e).patients)
    patient = load_environment_key(tiny_envs / env).patients[0]
    real_builder = toolkit.build_client_tools

    def leaky_builder(workspace, work_dir=None):
        leak = StructuredTool.from_function(func=lambda: f"first DICOM header: PatientName={patient.name}",
                                            name="read_data_cards", description="reads the data cards (leaky)")
        return [leak] + [t for t in real_builder(workspace, work_dir) if t.name != "read_data_cards"]

    monkeypatch.setattr(toolkit, "build_client_tools", leaky_builder)
    script = [AIMessage(content="Modality: xray\nTarget classes: normal, pneumonia\nRequirement: baseline")]
    for _ in range(3):
        script += [AIMessage(content="", tool_calls=[{"name": "read_data_cards", "args": {}, "id": "c",
                                                       "type": "tool_call"}]),
                   AIMessage(content="no dataset")]
    script.append(AIMessage(content="Approved: none"))
    monkeypatch.setitem(runtime.MODEL_OVERRIDES, "leaky-test", lambda config: _Scripted(responses=script))
    from graphs.workflow import PHASE_BUILDERS

    graph = PHASE_BUILDERS["selection"]().compile()
    out = graph.invoke({"config": _config(tiny_envs / env, tasks_for(env)[0].task_id, model="leaky-test").model_dump()})
    kinds = {v["kind"] for v in out["privacy"]}
    assert kinds == {"patient_identifier"} and all(v["where"].startswith("model input of C1@") for v in out["privacy"])
    assert patient.name not in json.dumps(out["privacy"])  # the report masks the identifier


def _run_cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedagentbench_cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _snapshot(db: Path, thread: str) -> dict:
    from graphs.checkpoint import sqlite_checkpointer
    from graphs.workflow import compile_workflow

    with sqlite_checkpointer(db) as saver:
        return dict(compile_workflow(saver).get_state({"configurable": {"thread_id": thread}}).values)


def test_sigkill_mid_phase_then_resume_matches_an_uninterrupted_run(tiny_envs, tmp_path):
    env_dir = tiny_envs / "ultrasound"
    task = tasks_for("ultrasound")[0].task_id
    base = ["run", "--env", str(env_dir), "--task", task, "--model", "oracle", "--guidance", "fine"]
    env = {**os.environ, "FEDAGENTBENCH_BASELINE_DELAY_S": "0.3"}
    db = tmp_path / "cp.sqlite"
    proc = _run_cli([*base, "--run-id", "killed", "--thread-id", "killed", "--db", str(db)], env)
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until preprocessing is under way, then kill the whole group
        time.sleep(0.5)
        if db.exists():
            try:
                clients = _snapshot(db, "killed").get("clients", {})
            except Exception:
                continue
            if any(c.status == "approved" for c in clients.values()):
                break
    assert proc.poll() is None, proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = _run_cli([*base, "--run-id", "killed", "--thread-id", "killed", "--db", str(db)],
                       {**os.environ})
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    clean = _run_cli([*base, "--run-id", "clean", "--thread-id", "clean", "--db", str(db)], {**os.environ})
    out2, _ = clean.communicate(timeout=600)
    assert clean.returncode == 0, out2
    a, b = _snapshot(db, "killed"), _snapshot(db, "clean")
    assert _passed(a) == _passed(b) and all(_passed(a).values())
    assert a["algorithm"] == b["algorithm"]
    for name in a["clients"]:
        ca, cb = a["clients"][name], b["clients"][name]
        assert (ca.status, ca.selected_datasets, ca.label_mappings, ca.stats) == \
               (cb.status, cb.selected_datasets, cb.label_mappings, cb.stats)
        if ca.harmonised_path:  # same files, nothing half-written or duplicated
            ws = env_dir / "clients" / name
            files_a = sorted(p.relative_to(ws / ca.harmonised_path).as_posix()
                             for p in (ws / ca.harmonised_path).rglob("*") if p.is_file())
            files_b = sorted(p.relative_to(ws / cb.harmonised_path).as_posix()
                             for p in (ws / cb.harmonised_path).rglob("*") if p.is_file())
            assert files_a == files_b
            assert not list((ws / "work").rglob("*.tmp"))
    assert len([x for x in a["agents"] if x["role"] == "C2"]) == len(
        [x for x in b["agents"] if x["role"] == "C2"])


def test_per_phase_inputs_hold_every_clean_file_of_the_key(tiny_envs, tmp_path):
    """The gold upstream of per-phase mode loses no file, also where two sources flatten to one name
    (``IM0003.dcm`` and ``IM0003.tif`` in one folder: dermatoscopy at tiny scale, seed 0)."""
    import shutil

    from environments.answer_key import load_task_key
    from graphs.upstream import gold_cleaned, gold_harmonised
    from tools.labels import claim_name
    from tools.sandbox import load_origins

    taken: set[str] = set()
    assert [claim_name("a/IM3.png", taken), claim_name("a/im3.png", taken), claim_name("a/IM3.png", taken)] == \
           ["a/IM3.png", "a/im3~2.png", "a/IM3~3.png"]
    for env in ENVIRONMENTS:
        for task in tasks_for(env):
            key = load_task_key(tiny_envs / env, task.task_id)
            for hospital in key.approved_hospitals:
                ws = tiny_envs / env / "clients" / hospital
                out = tmp_path / "gold" / env / task.task_id / hospital
                try:
                    gold_cleaned(ws, out / "cleaned", key, hospital)
                    gold_harmonised(ws, out / "harmonised", key, hospital)
                    clean = key.clean_files.get(hospital, {})
                    got = [src for d in clean for src in load_origins(out / "cleaned" / d).values()]
                    assert sorted(got) == sorted(f.path for fs in clean.values() for f in fs)
                    assert len(got) == sum(1 for _ in (out / "cleaned").rglob("*.png"))
                    placed = load_origins(out / "harmonised")
                    assert sorted(placed.values()) == sorted(f.path for fs in clean.values() for f in fs
                                                             if f.target_class is not None)
                    assert len(placed) == sum(1 for _ in (out / "harmonised").rglob("*.png"))
                finally:
                    shutil.rmtree(out, ignore_errors=True)


def test_checkpointer_waits_out_sqlite_lock_errors_that_skip_the_busy_timeout(tmp_path, monkeypatch):
    """Parallel bench runs opening one new checkpoint file can meet "database is locked" at once
    (a journal-mode switch, two transactions upgrading to write); opening retries, then works. Another
    error, or a lock that never clears, still surfaces."""
    import sqlite3
    import threading

    from langgraph.checkpoint.sqlite import SqliteSaver

    from graphs.checkpoint import sqlite_checkpointer

    real_setup, calls = SqliteSaver.setup, []

    def flaky_setup(self):
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return real_setup(self)

    monkeypatch.setattr(SqliteSaver, "setup", flaky_setup)
    with sqlite_checkpointer(tmp_path / "cp.sqlite") as saver:
        assert list(saver.list(None, limit=1)) == [] and len(calls) >= 3  # two refusals, then set up

    monkeypatch.setattr(SqliteSaver, "setup", lambda self: (_ for _ in ()).throw(sqlite3.OperationalError("no such table: x")))
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        with sqlite_checkpointer(tmp_path / "other.sqlite"):
            pass
    monkeypatch.setattr(SqliteSaver, "setup", real_setup)

    errors: list[str] = []  # and for real: threads opening one fresh file at the same moment
    for trial in range(5):
        barrier = threading.Barrier(8)

        def open_it(path=tmp_path / f"race{trial}.sqlite", barrier=barrier):
            barrier.wait()
            try:
                with sqlite_checkpointer(path) as s:
                    list(s.list(None, limit=1))
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(exc))

        threads = [threading.Thread(target=open_it) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
