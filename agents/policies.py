"""The three baseline policies, one method per agent role (see :mod:`agents.baselines`).

The heuristic sees only what an LLM sees: the prompts and its tool outputs. The oracle also reads
the answer key (that is its purpose). The random policy chooses at random among what it sees.
"""

from __future__ import annotations

import json
import re
from typing import Any

from langchain_core.messages import AIMessage

from agents.baselines import Turn, _answer, _call, _json_from_tool, env_workspace, request_facts, rng_for

#: words that tie a local class name to a target class, for rules that see only names
TARGET_WORDS: dict[str, tuple[str, ...]] = {
    "malignant": ("malignant", "melanoma", "mel", "carcinoma", "cancer", "bcc", "scc", "akiec", "mal", "tumor",
                  "tumour", "dc", "lc", "mc", "pc", "idc"),
    "benign": ("benign", "nevus", "naevus", "nv", "bkl", "keratosis", "dermatofibroma", "df", "vasc", "vascular",
               "ben", "adenosis", "fibroadenoma", "phyllodes", "tubular", "mole"),
    "melanoma": ("melanoma", "mel", "mm"),
    "naevus": ("nevus", "naevus", "nv", "mole"),
    "non_malignant": ("benign", "normal", "ben", "nor"),
    "normal": ("normal", "healthy", "no finding", "nor"),
    "pneumonia": ("pneumonia", "bacteria", "virus", "viral", "covid", "pna", "bac", "vir"),
    "glioma": ("glioma", "gl"),
    "meningioma": ("meningioma", "me"),
    "pituitary": ("pituitary", "pi"),
    "no_tumour": ("no_tumor", "no tumor", "no_tumour", "notumor", "no", "healthy", "normal"),
    "tumour": ("tumor", "tumour", "glioma", "meningioma", "pituitary", "yes"),
    "no_dr": ("no_dr", "no dr", "0", "r0"),
    "dr": ("dr", "mild", "moderate", "severe", "prolif", "1", "2", "3", "4"),
    "non_referable": ("0", "1", "no_dr", "mild", "nrdr", "non-referable"),
    "referable": ("2", "3", "4", "moderate", "severe", "prolif", "rdr", "referable"),
    "fibroadenoma": ("fibroadenoma", "f"),
    "ductal_carcinoma": ("ductal", "dc", "idc"),
    "other": (),
}


def match_target(local: str, targets: list[str]) -> str | None:
    """The target a class name plainly refers to: exact name first, then a word of TARGET_WORDS."""
    low = local.strip().lower().replace("-", "_")
    for t in targets:
        if low == t.lower():
            return t
    grade = re.fullmatch(r"(?:grade_?|r)?([0-4])", low)
    if grade and f"grade_{grade.group(1)}" in targets:
        return f"grade_{grade.group(1)}"
    tokens = set(re.split(r"[\s_/]+", low)) | {low}
    for t in targets:
        words = TARGET_WORDS.get(t, ())
        if any(w in tokens or (len(w) > 3 and w in low) for w in words):
            return t
    return None


class _Policy:
    def __init__(self, context: dict[str, Any]) -> None:
        self.context = context

    def act(self, turn: Turn) -> AIMessage:
        handler = getattr(self, f"act_{turn.role}", None)
        if handler is None:
            return _answer(f"I cannot play role {turn.role}.")
        return handler(turn)

    # -- shared steps ------------------------------------------------------------------------------
    def _cards(self, turn: Turn) -> list[dict] | AIMessage:
        if "read_data_cards" not in turn.calls_made:
            return _call("read_data_cards")
        cards = _json_from_tool(turn.last("read_data_cards"))
        if isinstance(cards, dict):
            cards = cards.get("datasets") or cards.get("cards") or []
        return cards or []

    def act_S2(self, turn: Turn) -> AIMessage:
        approved = [m.group(1) for m in re.finditer(r"^- (\S+): \*\*Dataset Name\*\*", turn.user, re.M)]
        return _answer(f"Approved: {', '.join(approved) if approved else 'none'}")

    def act_S4(self, turn: Turn) -> AIMessage:
        if "launch_training" not in turn.calls_made:
            algorithm = re.search(r"with algorithm (\S+) on", turn.user)
            return _call("launch_training", algorithm=algorithm.group(1) if algorithm else "FedAvg")
        result = turn.last("launch_training") or ""
        status = "completed" if "status: completed" in result else "failed"
        return _answer(f"Status: {status}\n{result[:300]}")


class HeuristicPolicy(_Policy):
    """Plain rules over the prompts and tool outputs."""

    def act_S1(self, turn: Turn) -> AIMessage:
        facts = request_facts(turn.user)
        return _answer(f"Modality: {facts['modality']}\nTask type: classification\n"
                       f"Target classes: {', '.join(facts['targets'])}\nRequirement: {facts['cue']}")

    def act_C1(self, turn: Turn) -> AIMessage:
        cards = self._cards(turn)
        if isinstance(cards, AIMessage):
            return cards
        modality = re.search(r"model on (\S+) images", turn.user)
        targets = re.search(r"target classes (.+?)\.\n", turn.user)
        modality_name = modality.group(1) if modality else ""
        target_list = [t.strip() for t in targets.group(1).split(",")] if targets else []
        chosen = []
        for card in cards:
            if card.get("modality") != modality_name or card.get("species", "human") != "human":
                continue
            if "classification" not in str(card.get("task_type", "")):
                continue
            covered = {match_target(str(c), target_list) for c in card.get("classes", [])}
            if set(target_list) <= covered:
                chosen.append(card["dataset name"])
        if not chosen:
            return _answer("no dataset: none of the local datasets matches the modality and the target classes")
        return _answer("\n".join(f"**Dataset Name** : {name}" for name in chosen))

    def act_S3(self, turn: Turn) -> AIMessage:
        cue = request_facts(turn.user)["cue"]
        if "query_algorithm_registry" not in turn.calls_made:
            return _call("query_algorithm_registry", cue=cue)
        listing = turn.last("query_algorithm_registry") or ""
        names = re.findall(r'"name":\s*"([^"]+)"', listing) or re.findall(r"^\s*[-*]?\s*([A-Za-z][\w-]+)\b", listing, re.M)
        return _answer(f"Algorithm Name: {names[0] if names else 'FedAvg'}\nReason: first registry match for {cue}.")


class OraclePolicy(HeuristicPolicy):
    """Reads the answer key: the ceiling, and the proof that every task is solvable."""

    def __init__(self, context: dict[str, Any]) -> None:
        super().__init__(context)
        from environments.answer_key import load_task_key
        from pathlib import Path

        self.key = load_task_key(Path(context["env_dir"]), context["task_id"])

    def act_S1(self, turn: Turn) -> AIMessage:
        r = self.key.requirements
        return _answer(f"Modality: {r.modality}\nTask type: {r.task_type}\n"
                       f"Target classes: {', '.join(r.target_classes)}\nRequirement: {r.requirement}")

    def act_C1(self, turn: Turn) -> AIMessage:
        cards = self._cards(turn)
        if isinstance(cards, AIMessage):
            return cards
        chosen = self.key.relevant_datasets.get(turn.client or "", [])
        if not chosen:
            return _answer("no dataset: no local dataset fits the task")
        return _answer("\n".join(f"**Dataset Name** : {name}" for name in chosen))

    def act_S2(self, turn: Turn) -> AIMessage:
        return _answer(f"Approved: {', '.join(self.key.approved_hospitals) or 'none'}")

    def act_S3(self, turn: Turn) -> AIMessage:
        from fl.registry import query

        acceptable = self.key.acceptable_algorithms
        executable = [a.name for a in query(executable=True)]
        choice = next((a for a in acceptable if a in executable), acceptable[0])
        if "query_algorithm_registry" not in turn.calls_made:
            return _call("query_algorithm_registry", cue=self.key.requirements.requirement)
        return _answer(f"Algorithm Name: {choice}\nReason: it addresses {self.key.requirements.requirement}.")


class RandomPolicy(_Policy):
    """Random choices among what it sees: the floor."""

    def act_S1(self, turn: Turn) -> AIMessage:
        rng = rng_for(self.context, turn)
        words = sorted(set(re.findall(r"[a-z_]{4,}", turn.user.lower())))
        from environments.concepts import ENVIRONMENTS

        cues = ["baseline", "label_skew", "feature_shift", "personalisation", "unseen_site", "stragglers"]
        return _answer(f"Modality: {rng.choice(ENVIRONMENTS)}\nTask type: classification\n"
                       f"Target classes: {', '.join(rng.sample(words, min(2, len(words))))}\n"
                       f"Requirement: {rng.choice(cues)}")

    def act_C1(self, turn: Turn) -> AIMessage:
        cards = self._cards(turn)
        if isinstance(cards, AIMessage):
            return cards
        rng = rng_for(self.context, turn)
        chosen = [c["dataset name"] for c in cards if rng.random() < 0.5]
        if not chosen:
            return _answer("no dataset: none chosen")
        return _answer("\n".join(f"**Dataset Name** : {n}" for n in chosen))

    def act_S2(self, turn: Turn) -> AIMessage:
        rng = rng_for(self.context, turn)
        clients = re.findall(r"^- (\S+):", turn.user, re.M)
        return _answer(f"Approved: {', '.join(c for c in clients if rng.random() < 0.5) or 'none'}")

    def act_S3(self, turn: Turn) -> AIMessage:
        from fl.registry import query

        rng = rng_for(self.context, turn)
        return _answer(f"Algorithm Name: {rng.choice([a.name for a in query()])}")
