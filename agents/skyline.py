"""The key-blind ``skyline`` baseline: the tools used as well as they can be, without the answer key.

It sees exactly what an LLM agent sees — the prompts and the tool outputs — and nothing else: it
imports nothing of the environment builder or the answer key and never reads the file system
itself. Its clinical knowledge (what class names mean, how a task note maps them) lives in
:mod:`agents.skyline_knowledge`. It exists to prove that every sub-task is achievable without the
key: if the skyline cannot pass a sub-task, the task or its criterion is wrong.

Per role: S1 parses the request; C1 applies the stated criterion to each data card; S2 approves
the hospitals that reported a dataset; C2 organises, converts, and removes what the duplicate and
off-topic detectors flag (not the label-error flags, whose precision is too low to act on); C3 maps
each class folder it finds; S3 takes the first trainable registry entry for the requirement; S4
launches training.
"""

from __future__ import annotations

import json
import re
from typing import Any

from langchain_core.messages import AIMessage

from agents.baselines import (
    Turn,
    _answer,
    _call,
    _json_from_tool,
    broadcast_facts,
    harmonisation_facts,
)
from agents.skyline_knowledge import dataset_matches, map_class, parse_request

#: detectors whose flags the skyline acts on (their measured precision is high; see README)
TRUSTED_CHECKS = ["duplicates", "off_topic"]


def _cards_from(turn: Turn) -> list[dict] | None:
    cards = _json_from_tool(turn.last("read_data_cards"))
    if isinstance(cards, dict):
        cards = cards.get("datasets") or cards.get("cards") or []
    return cards if isinstance(cards, list) else None


def _card(cards: list[dict], name: str) -> dict:
    return next((c for c in cards if c.get("dataset name") == name), {"dataset name": name})


def _line(pattern: str, text: str, default: str = "") -> str:
    m = re.search(pattern, text)
    return m.group(1).strip() if m else default


class SkylinePolicy:
    """One method per role; each returns the next message given what the agent has seen so far."""

    def __init__(self, context: dict[str, Any]) -> None:
        self.context = context  # only the run's identity; the skyline reads nothing from it

    def act(self, turn: Turn) -> AIMessage:
        handler = getattr(self, f"act_{turn.role}", None)
        return handler(turn) if handler else _answer(f"I cannot play role {turn.role}.")

    # -- server ------------------------------------------------------------------------------------
    def act_S1(self, turn: Turn) -> AIMessage:
        if "read_task" not in turn.calls_made:
            task_id = _line(r"task id ([^)\s]+)\)", turn.user) or None
            return _call("read_task", task_id=task_id)
        text = turn.last("read_task") or turn.user
        facts = parse_request(text if "request" in text else turn.user)
        return _answer(f"Modality: {facts['modality']}\nTask type: {facts['task_type']}\n"
                       f"Target classes: {', '.join(facts['target_classes'])}\nRequirement: {facts['requirement']}")

    def act_S2(self, turn: Turn) -> AIMessage:
        approved = [m.group(1) for m in re.finditer(r"^- (\S+): \*\*Dataset Name\*\*", turn.user, re.MULTILINE)]
        return _answer(f"Approved: {', '.join(approved) if approved else 'none'}")

    def act_S3(self, turn: Turn) -> AIMessage:
        requirement = parse_request(turn.user)["requirement"]
        if "query_algorithm_registry" not in turn.calls_made:
            return _call("query_algorithm_registry", cue=requirement, executable_only=True)
        listing = _json_from_tool(turn.last("query_algorithm_registry"))
        names = _registry_names(listing)
        if not names:
            return _answer(f"Algorithm Name: FedAvg\nReason: no trainable registry entry for {requirement}.")
        return _answer(f"Algorithm Name: {names[0]}\nReason: a trainable algorithm whose key idea addresses "
                       f"{requirement}.")

    def act_S4(self, turn: Turn) -> AIMessage:
        if "launch_training" not in turn.calls_made:
            algorithm = _line(r"with algorithm (\S+) on", turn.user, "FedAvg")
            return _call("launch_training", algorithm=algorithm)
        result = turn.last("launch_training") or ""
        status = "completed" if "status: completed" in result else "failed"
        return _answer(f"Status: {status}\n{result[:300]}")

    # -- client ------------------------------------------------------------------------------------
    def act_C1(self, turn: Turn) -> AIMessage:
        if "read_data_cards" not in turn.calls_made:
            return _call("read_data_cards")
        cards = _cards_from(turn) or []
        facts = broadcast_facts(turn.user)
        chosen = [c["dataset name"] for c in cards
                  if dataset_matches(c, facts["modality"], facts["targets"], facts["note"], body_part=facts["organ"])]
        if not chosen:
            return _answer("no dataset: no local dataset holds labelled images of this modality whose classes "
                           "cover every target class")
        return _answer("\n".join(f"**Dataset Name** : {name}" for name in chosen))

    def act_C2(self, turn: Turn) -> AIMessage:
        if "read_data_cards" not in turn.calls_made:
            return _call("read_data_cards")
        cards = _cards_from(turn) or []
        datasets = [d.strip() for d in _line(r"Clean these local datasets: (.+?)\.\n", turn.user).split(",") if d.strip()]
        out = _line(r"under (\S+)/<dataset name>", turn.user, "work/cleaned")
        raw = _line(r"Use (\S+)/ for intermediate copies", turn.user, "work/raw")
        size = int(_line(r"PNG, (\d+)x\d+", turn.user, "64"))
        mode = "RGB" if re.search(r"PNG, \d+x\d+, RGB", turn.user) else "L"
        done = [name for name, _ in turn.calls[1:]]  # after read_data_cards
        step, per_dataset = len(done), 4
        index, sub = divmod(step, per_dataset)
        if index < len(datasets):
            name = datasets[index]
            card = _card(cards, name)
            source = card.get("dataset_path", f"datasets/{name}")
            if sub == 0:
                if "one sub-folder per class" in str(card.get("dataset description", "")):
                    return _call("copy_dataset", source=source, destination=f"{raw}/{name}")
                return _call("organise_by_label_file", source=source, destination=f"{raw}/{name}",
                             label_file=_label_file(card))
            if sub == 1:
                return _call("convert_images", source=f"{raw}/{name}", destination=f"{out}/{name}", size=size, mode=mode)
            if sub == 2:
                return _call("detect_data_issues", path=f"{out}/{name}", checks=TRUSTED_CHECKS)
            flags = _line(r'"flags_file":\s*"([^"]+)"', turn.tool_results[-1][1], f"{out}/{name}.flags.json")
            return _call("remove_flagged_files", flags_file=flags, kinds=TRUSTED_CHECKS)
        return _answer(f"Output path: {out}\nData Cleaning Complete")

    def act_C3(self, turn: Turn) -> AIMessage:
        facts = harmonisation_facts(turn.user)
        source, dest, targets, note, organ = (facts[k] for k in ("source", "dest", "targets", "note", "organ"))
        if not turn.calls:  # the input's top level: one folder per dataset
            return _call("list_class_folders", path=source)
        top = _json_from_tool(turn.tool_results[0][1]) or {}
        names = sorted((top.get("class_folders") or {}).keys())
        if "read_data_cards" not in turn.calls_made:
            return _call("read_data_cards")
        cards = _cards_from(turn) or []
        step = len(turn.calls) - 2
        index, sub = divmod(step, 2)
        if index < len(names):
            name = names[index]
            if sub == 0:
                return _call("list_class_folders", path=f"{source}/{name}")
            listing = _json_from_tool(turn.tool_results[-1][1]) or {}
            local = list((listing.get("class_folders") or {}).keys())
            mapping = {c: map_class(c, _card(cards, name), targets, note, body_part=organ) for c in local}
            return _call("apply_label_mapping", source=f"{source}/{name}", mapping=mapping, destination=dest,
                         merge=index > 0)
        lines = [f"{k} -> {v or 'drop'}" for tool, args in turn.calls if tool == "apply_label_mapping"
                 for k, v in (args.get("mapping") or {}).items()]
        return _answer("\n".join(lines + [f"Output path: {dest}"]))


def _label_file(card: dict) -> str | None:
    """The label file the card names (its field, or the description's 'labels in <file>')."""
    source = card.get("dataset_path", "")
    name = card.get("label_file") or _line(r"labels in (\S+?\.(?:csv|tsv|json))\b", str(card.get("dataset description", "")))
    return f"{source}/{name}" if name else None


def _registry_names(listing: Any) -> list[str]:
    """Algorithm names, in the registry's order, from a query_algorithm_registry answer."""
    if isinstance(listing, dict):
        listing = listing.get("algorithms") or listing.get("results") or [listing]
    if isinstance(listing, list):
        return [str(a.get("name")) for a in listing if isinstance(a, dict) and a.get("name")]
    return re.findall(r'"name":\s*"([^"]+)"', json.dumps(listing))
