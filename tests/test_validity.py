"""The benchmark measures the model: no leaks, nothing credited that the model did not produce.

* a model that never answers scores 0/7 in both modes;
* a cheating policy that goes after other runs' folders (the per-phase key material, another
  model's cleaned output) and the root's old ``work/`` folder is refused everywhere and gains nothing;
* C3 is scored on the files C2 delivered (a C2 mistake is not counted twice);
* S3 can only be credited with an algorithm S4 can train, and S4 only when that algorithm trained on
  every client it was handed.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage

from agents.baselines import PolicyChatModel, Turn, _answer, _call
from agents.policies import OraclePolicy
from eval.runs import run_task
from eval.scoring import SUBTASKS, score_s4
from graphs import runtime
from graphs.state import RunConfig

TASK = "xray-pneumonia"


@pytest.fixture(autouse=True)
def _training_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FEDAGENTBENCH_TRAINING_CACHE", str(tmp_path_factory.getbasetemp() / "training_cache"))


def _passed(state: dict) -> dict[str, bool]:
    return {k: v["passed"] for k, v in state["scores"]["subtasks"].items()}


class _DeadModel(BaseChatModel):
    """A provider that never answers (every call fails, as with a missing API key)."""

    @property
    def _llm_type(self) -> str:
        return "dead"

    def bind_tools(self, tools: Any, **kwargs: Any) -> _DeadModel:
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        raise ConnectionError("the provider did not answer")


class _MumblingModel(_DeadModel):
    """A model that answers every call, never usefully."""

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        from langchain_core.outputs import ChatGeneration, ChatResult

        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="I am not sure."))])


@pytest.mark.parametrize("mode", ["e2e", "phase"])
def test_a_model_that_never_answers_usefully_scores_zero(mode, tiny_envs, tmp_path, monkeypatch):
    monkeypatch.setitem(runtime.MODEL_OVERRIDES, "mumble", lambda config: _MumblingModel())
    config = RunConfig(env_dir=str(tiny_envs / "xray"), task_id=TASK, model="mumble", mode=mode,
                       run_id=f"mumble-{mode}")
    state = run_task(config, tmp_path / "cp.sqlite")
    assert _passed(state) == dict.fromkeys(SUBTASKS, False), json.dumps(state["scores"]["subtasks"], default=str)[:2000]
    assert not state["training"].started


def test_a_provider_that_never_answers_ends_the_run_unscored(tiny_envs, tmp_path, monkeypatch):
    """An unreachable provider is the machine's failure, not the model's: no score is made."""
    from agents.providers import ProviderError

    monkeypatch.setenv("FEDAGENTBENCH_RETRY_BASE_S", "0")
    monkeypatch.setitem(runtime.MODEL_OVERRIDES, "dead", lambda config: _DeadModel())
    config = RunConfig(env_dir=str(tiny_envs / "xray"), task_id=TASK, model="dead", run_id="dead", retries=1)
    with pytest.raises(ProviderError, match="did not answer"):
        run_task(config, tmp_path / "cp.sqlite")


class _Cheater:
    """Tries every leak path it knows, then answers with whatever it obtained."""

    def __init__(self, attempts: dict[str, list[tuple[str, dict]]]) -> None:
        self.attempts = attempts
        self.results: list[tuple[str, str, dict, str]] = []

    def act(self, turn: Turn) -> AIMessage:
        plan = self.attempts.get(turn.role, [])
        if turn.tool_results and len(turn.calls) <= len(plan):
            name, args = turn.calls[-1]
            self.results.append((turn.role, name, args, turn.tool_results[-1][1]))
        if len(turn.calls) < len(plan):
            name, args = plan[len(turn.calls)]
            return _call(name, **args)
        answers = {"S1": "Modality: xray\nTask type: classification\nTarget classes: normal, pneumonia\n"
                         "Requirement: baseline",
                   "C1": "no dataset", "S2": "Approved: none", "C2": "Output path: work/cleaned\nData Cleaning Complete",
                   "C3": "Output path: work/harmonised", "S3": "Algorithm Name: FedAvg"}
        return _answer(answers.get(turn.role, "done"))


def test_a_cheating_policy_reaches_no_other_run_and_gains_nothing(tiny_envs, tmp_path, monkeypatch):
    env = tiny_envs / "xray"
    victim = RunConfig(env_dir=str(env), task_id=TASK, model="oracle", mode="phase", run_id="victim")
    run_task(victim, tmp_path / "victim.sqlite")
    key = runtime.task_key(victim)
    hospital = key.approved_hospitals[0]
    dataset = key.relevant_datasets[hospital][0]
    gold = runtime.client_work(victim, hospital) / "input_cleaned"
    harmonised = runtime.client_work(victim, hospital) / "input_harmonised"
    assert (gold / dataset).is_dir() and harmonised.is_dir()  # the key's material exists, in the victim's area
    before = sorted(p.as_posix() for p in gold.rglob("*"))
    # an older layout kept runs inside the workspace: a planted copy there must be out of reach too
    legacy = env / "clients" / hospital / "work" / "old_run" / "cleaned" / dataset
    legacy.mkdir(parents=True)
    (legacy / "leak.txt").write_text("answer key material", "utf-8")

    rel_victim = f"../../runs/{TASK}/{runtime.run_name(victim)}/clients/{hospital}"
    leak_paths = [f"{rel_victim}/input_cleaned/{dataset}", str(gold / dataset),
                  f"work/../../../{runtime.run_name(victim)}/clients/{hospital}/input_cleaned/{dataset}",
                  PurePosixPath("datasets", "..", "work", "old_run", "cleaned", dataset).as_posix(),
                  PurePosixPath("work", "..", "work", "old_run", "cleaned", dataset).as_posix(),
                  str(legacy)]
    c2 = [("read_data_cards", {})]
    c2 += [("copy_dataset", {"source": p, "destination": f"work/cleaned/{dataset}", "overwrite": True}) for p in leak_paths]
    c2 += [("list_folder", {"path": p, "depth": 4}) for p in (".", "work", "..", "../..")]
    c2 += [("read_text_file", {"path": p}) for p in (f"{rel_victim}/input_harmonised.manifest.json",
                                                     str(harmonised.with_name("input_harmonised.manifest.json")))]
    c3 = [("list_class_folders", {"path": p}) for p in (f"{rel_victim}/input_harmonised", str(harmonised))]
    cheater = _Cheater({"C2": c2, "C3": c3})
    monkeypatch.setitem(runtime.MODEL_OVERRIDES, "cheater", lambda config: PolicyChatModel(policy=cheater))
    config = RunConfig(env_dir=str(env), task_id=TASK, model="cheater", mode="phase", run_id="thief")
    state = run_task(config, tmp_path / "thief.sqlite")

    leaks = [(role, name, args, text) for role, name, args, text in cheater.results if name != "read_data_cards"]
    assert {r[0] for r in leaks} == {"C2", "C3"} and len(leaks) >= len(c2) - 1 + len(c3)
    for role, name, args, text in leaks:
        if name == "list_folder" and args["path"] in (".", "work"):  # its own workspace: allowed, nothing else
            assert "victim" not in text and "old_run" not in text and "input_" not in text, text
        else:
            assert text.startswith("error"), (role, name, args, text[:300])
    passed = _passed(state)
    assert not passed["C2"] and not passed["C3"], state["scores"]["subtasks"]["C2"]
    assert sorted(p.as_posix() for p in gold.rglob("*")) == before  # nothing of the victim's changed


class _LossyOracle(OraclePolicy):
    """The oracle, except that C2 also deletes more clean images of each dataset than C2 allows."""

    def removal(self, turn: Turn, name: str, out: str, sub: int) -> AIMessage:
        message = super().removal(turn, name, out, sub)
        from agents.baselines import agent_path
        from tools.sandbox import load_origins

        keep = {c.path for c in self.key.clean_files.get(turn.client or "", {}).get(name, [])}
        origins = load_origins(agent_path(self.context, turn.client, out))
        clean = sorted(f"{out}/{rel}" for rel, source in origins.items() if source in keep)
        from eval.scoring import C2_MAX_LOST, C2_MIN_LOST

        lost = clean[: max(C2_MIN_LOST + 1, int(2 * C2_MAX_LOST * len(clean)) + 1)]  # more than C2 allows
        message.tool_calls[0]["args"]["paths"] = list(message.tool_calls[0]["args"]["paths"]) + lost
        return message


def test_c3_is_scored_on_what_c2_delivered(tiny_envs, tmp_path, monkeypatch):
    def make(config: RunConfig):
        context = {"env_dir": config.env_dir, "task_id": config.task_id, "seed": config.seed,
                   "run_root": str(runtime.run_root(config))}
        return PolicyChatModel(policy=_LossyOracle(context), name_="lossy")

    monkeypatch.setitem(runtime.MODEL_OVERRIDES, "lossy-oracle", make)
    config = RunConfig(env_dir=str(tiny_envs / "xray"), task_id=TASK, model="lossy-oracle", run_id="lossy")
    state = run_task(config, tmp_path / "cp.sqlite")
    passed = _passed(state)
    details = state["scores"]["subtasks"]
    assert not passed["C2"] and all(c["clean_lost"] > c["clean_lost_allowed"] for c in details["C2"]["metrics"]["clients"].values())
    assert passed["C3"], details["C3"]  # C3 mapped and placed every file it was given


def test_every_acceptable_algorithm_is_trainable():
    from environments.tasks import TASKS
    from fl.registry import query

    trainable = {a.name for a in query(executable=True)}
    for task in TASKS:
        assert task.acceptable_algorithms and set(task.acceptable_algorithms) <= trainable, task.task_id


def test_s4_needs_the_handed_algorithm_on_every_handed_client():
    plan = {"algorithm": "FedBN", "clients": ["hospital_01", "hospital_02"]}
    done = {"started": True, "completed": True, "algorithm": "FedBN", "clients": ["hospital_01", "hospital_02"],
            "status": "completed", "final_metrics": {"accuracy": 0.5, "loss": 0.7}}
    assert score_s4(done, plan)["passed"]
    assert not score_s4({**done, "algorithm": "FedAvg"}, plan)["passed"]
    assert not score_s4({**done, "clients": ["hospital_01"]}, plan)["passed"]
    assert not score_s4({**done, "final_metrics": {"loss": float("nan")}}, plan)["passed"]
    assert not score_s4({**done, "completed": False, "status": "failed"}, plan)["passed"]


@pytest.mark.parametrize("guidance", ["fine", "goal"])
def test_baselines_read_the_prompts_the_roles_write(guidance):
    """The scripted baselines' one reader parses C1's broadcast and C3's instruction as the workflow writes them
    (a reworded prompt must not silently turn a baseline into a dead model), for every task."""
    from agents.baselines import broadcast_facts, harmonisation_facts
    from agents.roles import ROLES, user_prompt
    from environments.tasks import TASKS
    from graphs.phases import _request_words

    for task in TASKS:
        modality = task.environment.replace("xray", "X-ray").replace("mri", "MRI")
        c1 = user_prompt(ROLES["C1"], guidance, {"modality": modality, "task_type": "classification",
                                                 "target_classes": task.target_classes, **_request_words(task)})
        facts = broadcast_facts(c1)
        assert (facts["modality"], facts["organ"], facts["targets"]) == (modality, task.body_part, task.target_classes)
        assert facts["note"] == task.class_note
        for source in ("work/cleaned", "work/input_cleaned"):
            c3 = user_prompt(ROLES["C3"], guidance, {"input_path": source, "output_path": "work/harmonised",
                                                     "target_classes": task.target_classes, **_request_words(task)})
            facts = harmonisation_facts(c3)
            assert (facts["source"], facts["dest"], facts["targets"], facts["organ"]) == \
                   (source, "work/harmonised", task.target_classes, task.body_part)
