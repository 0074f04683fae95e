"""The three baseline policies, one method per agent role (see :mod:`agents.baselines`).

The heuristic sees only what an LLM sees: the prompts and its tool outputs. The oracle also reads
the answer key (that is its purpose). The random policy chooses at random among what it sees.
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.messages import AIMessage

from agents.baselines import (
    Turn,
    _answer,
    _call,
    _json_from_tool,
    agent_path,
    broadcast_facts,
    harmonisation_facts,
    request_facts,
    rng_for,
)

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


class _HeuristicRoles(_Policy):
    """Plain rules over the prompts and tool outputs."""

    def act_S1(self, turn: Turn) -> AIMessage:
        facts = request_facts(turn.user)
        return _answer(f"Modality: {facts['modality']}\nTask type: classification\n"
                       f"Target classes: {', '.join(facts['targets'])}\nRequirement: {facts['cue']}")

    def act_C1(self, turn: Turn) -> AIMessage:
        cards = self._cards(turn)
        if isinstance(cards, AIMessage):
            return cards
        facts = broadcast_facts(turn.user)
        modality_name, target_list = facts["modality"], facts["targets"]
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


class _OracleRoles(_HeuristicRoles):
    """Reads the answer key: the ceiling, and the proof that every task is solvable."""

    def __init__(self, context: dict[str, Any]) -> None:
        super().__init__(context)
        from pathlib import Path

        from environments.answer_key import load_task_key

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


class _RandomRoles(_Policy):
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

    def act_S4(self, turn: Turn) -> AIMessage:
        """Launches training with an algorithm drawn from the registry (the handed one among them), or
        stops without launching: the floor, so that S4 is not passed by every policy alike."""
        from fl.registry import query

        rng = rng_for(self.context, turn)
        if "launch_training" not in turn.calls_made:
            if rng.random() < 0.25:
                return _answer("Status: not started")
            return _call("launch_training", algorithm=rng.choice([a.name for a in query()]))
        return super().act_S4(turn)


# --- C2 and C3: the preprocessing and harmonisation pipelines ------------------------------------------

def _c2_context(text: str) -> dict[str, Any]:
    datasets = re.search(r"Clean these local datasets: (.+?)\.\n", text)
    out = re.search(r"Write the cleaned data under (\S+)/<dataset name>", text)
    raw = re.search(r"Use (\S+)/ for intermediate copies", text)
    size = re.search(r"PNG, (\d+)x\d+, (RGB|greyscale)", text)
    return {"datasets": [d.strip() for d in datasets.group(1).split(",")] if datasets else [],
            "out": out.group(1) if out else "work/cleaned", "raw": raw.group(1) if raw else "work/raw",
            "size": int(size.group(1)) if size else 64, "mode": "RGB" if size and size.group(2) == "RGB" else "L"}


def _mapping_lines(turn: Turn) -> list[str]:
    """The mappings this agent applied, as the protocol lines C3 answers with."""
    return [f"{k} -> {v or 'drop'}" for name, args in turn.calls if name == "apply_label_mapping"
            for k, v in (args.get("mapping") or {}).items()]


def _card_for(cards: list[dict], name: str) -> dict:
    return next((c for c in cards if c.get("dataset name") == name), {"dataset_path": f"datasets/{name}"})


def _organise_call(card: dict, name: str, raw: str) -> AIMessage:
    source = card.get("dataset_path", f"datasets/{name}")
    if "one sub-folder per class" in card.get("dataset description", ""):
        return _call("copy_dataset", source=source, destination=f"{raw}/{name}")
    return _call("organise_by_label_file", source=source, destination=f"{raw}/{name}",
                 label_file=f"{source}/{card['label_file']}" if card.get("label_file") else None)


class _PipelinePolicy:
    """Shared C2 / C3 step sequences; subclasses choose how to clean and how to map."""

    removal_steps = 2  # calls per dataset for the removal part

    def act_C2(self, turn: Turn) -> AIMessage:
        cards = self._cards(turn)
        if isinstance(cards, AIMessage):
            return cards
        ctx = _c2_context(turn.user)
        per_dataset = 3 + self.removal_steps
        step = len(turn.tool_results) - 1  # after read_data_cards
        index, sub = divmod(step, per_dataset)
        if index < len(ctx["datasets"]):
            name = ctx["datasets"][index]
            raw, out = f"{ctx['raw']}/{name}", f"{ctx['out']}/{name}"
            if sub == 0:
                return _organise_call(_card_for(cards, name), name, ctx["raw"])
            if sub == 1:
                return _call("remove_non_image_files", path=raw)
            if sub == 2:
                return _call("convert_images", source=raw, destination=out, size=ctx["size"], mode=ctx["mode"])
            return self.removal(turn, name, out, sub - 3)
        if "report_dataset_statistics" not in turn.calls_made:
            return _call("report_dataset_statistics", path=ctx["out"])
        return _answer(f"Output path: {ctx['out']}\nData Cleaning Complete")

    def removal(self, turn: Turn, name: str, out: str, sub: int) -> AIMessage:
        if sub == 0:
            return _call("detect_data_issues", path=out)
        flags = re.search(r'"flags_file":\s*"([^"]+)"', turn.tool_results[-1][1])
        return _call("remove_flagged_files", flags_file=flags.group(1) if flags else f"{out}.flags.json")

    def act_C3(self, turn: Turn) -> AIMessage:
        cards = self._cards(turn)
        if isinstance(cards, AIMessage):
            return cards
        ctx = harmonisation_facts(turn.user)
        src_root, target_list = ctx["source"], ctx["targets"]
        names = self.c3_datasets(turn, cards, src_root)
        step = len(turn.tool_results) - 1
        index, sub = divmod(step, 2)
        if index < len(names):
            name = names[index]
            if sub == 0:
                return _call("list_class_folders", path=f"{src_root}/{name}")
            listing = _json_from_tool(turn.tool_results[-1][1]) or {}
            local = list((listing.get("class_folders") or {}).keys())
            mapping = self.mapping(turn, cards, name, local, target_list)
            return _call("apply_label_mapping", source=f"{src_root}/{name}", mapping=mapping,
                         destination=ctx["dest"], merge=index > 0)
        return _answer("\n".join(_mapping_lines(turn) + [f"Output path: {ctx['dest']}"]))

    def c3_datasets(self, turn: Turn, cards: list[dict], src_root: str) -> list[str]:
        return [c["dataset name"] for c in cards if _in_cleaned(self.context, turn.client, src_root, c["dataset name"])]


def _in_cleaned(context: dict[str, Any], client: str | None, src_root: str, name: str) -> bool:
    """Whether the C2 output holds this dataset (what list_folder on the input would show)."""
    return (agent_path(context, client, src_root) / name).is_dir()


def _legend(card: dict) -> dict[str, str]:
    m = re.search(r"coded as numbers \(([^)]+)\)", card.get("dataset description", ""))
    if not m:
        return {}
    return dict(part.split(" = ", 1) for part in m.group(1).split(", ") if " = " in part)


class HeuristicPipeline(_PipelinePolicy):
    def mapping(self, turn: Turn, cards: list[dict], name: str, local: list[str], targets: list[str]) -> dict:
        legend = _legend(_card_for(cards, name))
        return {c: match_target(legend.get(c, c), targets) for c in local}


class OraclePipeline(_PipelinePolicy):
    removal_steps = 1

    def removal(self, turn: Turn, name: str, out: str, sub: int) -> AIMessage:
        from tools.sandbox import load_origins

        keep = {c.path for c in self.key.clean_files.get(turn.client or "", {}).get(name, [])}
        origins = load_origins(agent_path(self.context, turn.client, out))
        files = sorted(f"{out}/{rel}" for rel, source in origins.items() if source not in keep)
        return _call("remove_files", paths=files, reason="answer key: duplicates, off-topic images, wrong labels")

    def mapping(self, turn: Turn, cards: list[dict], name: str, local: list[str], targets: list[str]) -> dict:
        gold = self.key.label_mappings.get(turn.client or "", {}).get(name, {})
        return {c: gold.get(c) for c in local}

    def c3_datasets(self, turn: Turn, cards: list[dict], src_root: str) -> list[str]:
        return list(self.key.relevant_datasets.get(turn.client or "", []))


class RandomPipeline:
    def act_C2(self, turn: Turn) -> AIMessage:
        cards = self._cards(turn)
        if isinstance(cards, AIMessage):
            return cards
        ctx = _c2_context(turn.user)
        step = len(turn.tool_results) - 1
        if step < len(ctx["datasets"]):
            name = ctx["datasets"][step]
            return _call("copy_dataset", source=_card_for(cards, name).get("dataset_path", f"datasets/{name}"),
                         destination=f"{ctx['out']}/{name}")
        return _answer(f"Output path: {ctx['out']}\nData Cleaning Complete")

    def act_C3(self, turn: Turn) -> AIMessage:
        rng = rng_for(self.context, turn)
        ctx = harmonisation_facts(turn.user)
        src_root = ctx["source"]
        source = agent_path(self.context, turn.client, src_root)
        names = sorted(p.name for p in source.iterdir() if p.is_dir()) if source.is_dir() else []
        step = len(turn.tool_results)
        index, sub = divmod(step, 2)
        if index < len(names):
            if sub == 0:
                return _call("list_class_folders", path=f"{src_root}/{names[index]}")
            listing = _json_from_tool(turn.tool_results[-1][1]) or {}
            choices = ctx["targets"] + [None]
            mapping = {c: rng.choice(choices) for c in (listing.get("class_folders") or {})}
            return _call("apply_label_mapping", source=f"{src_root}/{names[index]}", mapping=mapping,
                         destination=ctx["dest"], merge=index > 0)
        return _answer("\n".join(_mapping_lines(turn) + [f"Output path: {ctx['dest']}"]))


class HeuristicPolicy(HeuristicPipeline, _HeuristicRoles):
    """Plain rules over the prompts and tool outputs."""


class OraclePolicy(OraclePipeline, _OracleRoles):
    """Reads the answer key: the ceiling, and the proof that every task is solvable with the tools."""


class RandomPolicy(RandomPipeline, _RandomRoles):
    """Random choices among what it sees: the floor."""
