"""Baselines that need no LLM, as chat models that emit tool calls through the same graph.

* ``oracle``    reads the answer key. It exists to prove the scorer right: it must score 100 %.
* ``skyline``   key-blind: the tools used as well as they can be (:mod:`agents.skyline`). It proves
                every sub-task achievable without the key.
* ``heuristic`` rules over only what an LLM would see (the prompts and the tool outputs).
* ``random``    random choices among what it sees: the floor.

Each is a :class:`PolicyChatModel`: it reads its role and client from the system prompt
(``Agent C2 at client hospital_01``), looks at the conversation so far, and returns the next
message (tool calls, or the final answer in the role's protocol format).
"""

from __future__ import annotations

import json
import os
import random as _random
import re
import time
import uuid
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict

from agents.skyline_knowledge import MODALITIES  # the six environments' names, without the builder's tables

_ROLE = re.compile(r"^Agent (S\d|C\d)(?: at client (\S+?))?[: ]")
CUE_WORDS: tuple[tuple[str, str], ...] = (
    ("different proportions", "label_skew"), ("imbalance", "label_skew"), ("majority class", "label_skew"),
    ("scanners", "feature_shift"), ("cameras", "feature_shift"), ("appearance differs", "feature_shift"),
    ("its own model", "personalisation"), ("own patients", "personalisation"),
    ("new hospitals", "unseen_site"), ("take no part", "unseen_site"),
    ("unreliable", "stragglers"), ("slow", "stragglers"),
    ("different network architectures", "heterogeneous_architectures"),
    ("standard", "baseline"), ("broadly similar", "baseline"),
)


def _call(name: str, **args: Any) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:12]}",
                                              "type": "tool_call"}])


def _answer(text: str) -> AIMessage:
    return AIMessage(content=text)


class Turn:
    """What a policy knows at this point of the conversation."""

    def __init__(self, messages: list[BaseMessage]) -> None:
        system = next((m for m in messages if isinstance(m, SystemMessage)), None)
        match = _ROLE.match(str(system.content) if system else "")
        self.role = match.group(1) if match else "?"
        self.client = match.group(2) if match and match.group(2) else None
        self.user = next((str(m.content) for m in messages if m.type == "human"), "")
        self.tool_results: list[tuple[str, str]] = []
        #: the tool calls this agent made so far, in order: (name, args)
        self.calls: list[tuple[str, dict]] = []
        names = {}
        for m in messages:
            if isinstance(m, AIMessage):
                for c in m.tool_calls:
                    names[c["id"]] = c["name"]
                    self.calls.append((c["name"], dict(c.get("args") or {})))
            if isinstance(m, ToolMessage):
                self.tool_results.append((names.get(m.tool_call_id, "?"), str(m.content)))
        self.calls_made = [n for n, _ in self.tool_results]

    def last(self, tool: str) -> str | None:
        for name, text in reversed(self.tool_results):
            if name == tool:
                return text
        return None


def _json_from_tool(text: str | None) -> Any:
    if not text:
        return None
    start = min([i for i in (text.find("["), text.find("{")) if i >= 0], default=-1)
    if start < 0:
        return None
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError:
        return None


class PolicyChatModel(BaseChatModel):
    """A chat model whose replies come from a policy (see module docstring)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    policy: Any
    name_: str = "policy"

    @property
    def _llm_type(self) -> str:
        return f"fedagentbench-{self.name_}"

    def bind_tools(self, tools: Any, **kwargs: Any) -> "PolicyChatModel":
        return self

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        delay = float(os.environ.get("FEDAGENTBENCH_BASELINE_DELAY_S", "0") or 0)
        if delay > 0:  # stands in for model latency in benchmarks of the harness itself
            time.sleep(delay)
        turn = Turn(messages)
        message = self.policy.act(turn)
        return ChatResult(generations=[ChatGeneration(message=message)])


def make_baseline(name: str, context: dict[str, Any]) -> PolicyChatModel:
    from agents.policies import HeuristicPolicy, OraclePolicy, RandomPolicy

    policies: dict[str, Any] = {"oracle": OraclePolicy, "heuristic": HeuristicPolicy, "random": RandomPolicy}
    if name == "skyline":
        from agents.skyline import SkylinePolicy

        policies["skyline"] = SkylinePolicy
    if name not in policies:
        raise ValueError(f"unknown baseline {name!r}; choose from oracle, skyline, heuristic, random")
    return PolicyChatModel(policy=policies[name](context), name_=name)


def request_facts(text: str) -> dict[str, Any]:
    """Modality, target classes and requirement cue as plain rules read them from a request."""
    from agents.results import normalise_modality

    modality = normalise_modality(text)
    if modality not in MODALITIES:
        modality = ""
    m = re.search(r"target classes \[([^\]]+)\]", text) or re.search(
        r"\b(?:classes|class names|labels|label set|categories)(?: are| is)?: ([^.]+)\.", text, re.IGNORECASE)
    targets = [t.strip() for t in m.group(1).split(",")] if m else []
    low = text.lower()
    cue = next((c for word, c in CUE_WORDS if word in low), "baseline")
    return {"modality": modality, "targets": targets, "cue": cue}


def _first(pattern: str, text: str, default: str = "") -> str:
    m = re.search(pattern, text)
    return m.group(1).strip() if m else default


def _names(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def broadcast_facts(text: str) -> dict[str, Any]:
    """What C1's broadcast (agents.roles._c1) says: modality, organ, target classes and the task note.
    Every scripted baseline reads the prompt through this one reader (a test checks it against the
    prompts the roles write)."""
    return {"modality": _first(r" on (\S+) images", text),
            "organ": _first(r" images of the (.+?) with target classes", text) or None,
            "targets": _names(_first(r"target classes (.+?)\.\n", text)),
            "note": _first(r"Task note: (.*)", text)}


def harmonisation_facts(text: str) -> dict[str, Any]:
    """What C3's prompt (agents.roles._c3) says: input and output folders, targets, note, organ."""
    return {"source": _first(r" in (\S+) \(one folder per dataset\)", text, "work/cleaned"),
            "dest": _first(r"write the result to (\S+)/<target class>", text, "work/harmonised"),
            "targets": _names(_first(r"onto the target classes \[([^\]]+)\]", text)),
            "note": _first(r"Task note: (.*)", text),
            "organ": _first(r"cleaned datasets \((.+?) images\)", text) or None}


def env_workspace(context: dict[str, Any], client: str | None) -> Path:
    root = Path(context["env_dir"])
    return root / "clients" / client if client else root / "server"


def agent_path(context: dict[str, Any], client: str | None, rel: str) -> Path:
    """Where a workspace-relative path of this agent lies on disk (``work/``: the run's own area)."""
    parts = Path(rel).parts
    if parts[:1] == ("work",) and context.get("run_root"):
        side = Path(context["run_root"]) / ("clients" if client else "server")
        return (side / client if client else side).joinpath(*parts[1:])
    return env_workspace(context, client) / rel


def rng_for(context: dict[str, Any], turn: Turn) -> _random.Random:
    return _random.Random(f"{context.get('seed', 0)}|{context.get('task_id')}|{turn.role}|{turn.client}|"
                          f"{len(turn.tool_results)}")
