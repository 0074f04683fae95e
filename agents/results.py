"""Structured results of the seven agents, and tolerant parsers for free-text answers.

Models without native structured output answer in text; the parsers accept a JSON object anywhere
in the answer, or the paper's protocol lines (``**Dataset Name** : ISIC2019``,
``Algorithm Name: FedBN``, ``Target classes: benign, malignant``, ``mel -> malignant``).
A parser raises :class:`ParseError` with what it expected, which goes back to the model once.

Reasoning models (QwQ, DeepSeek-R1, Qwen3) think aloud before answering, often drafting wrong
answers on the way. Thinking is never the answer: every parser first removes it
(:func:`split_reasoning`) and then reads the *last* JSON object or protocol line of what remains.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, Field, ValidationError


class ParseError(ValueError):
    """The answer does not contain the expected result."""


class TaskRequirementsResult(BaseModel):
    """S1: what the request asks for."""

    modality: str
    task_type: str = "classification"
    target_classes: list[str]
    requirement: str = ""


class DatasetSelection(BaseModel):
    """C1: the local datasets that fit, or none with a reason."""

    datasets: list[str] = Field(default_factory=list)
    reason: str = ""


class ApprovalResult(BaseModel):
    """S2: which clients take part."""

    approved: list[str] = Field(default_factory=list)


class CleaningReport(BaseModel):
    """C2: where the cleaned dataset is and what was done."""

    output_path: str = ""
    summary: str = ""


class HarmonisationReport(BaseModel):
    """C3: local class -> target class (None: dropped), and where the result is."""

    mapping: dict[str, str | None] = Field(default_factory=dict)
    output_path: str = ""


class AlgorithmChoice(BaseModel):
    """S3: the chosen FL algorithm."""

    algorithm: str
    reason: str = ""


class TrainingReport(BaseModel):
    """S4: the training outcome as the agent reports it."""

    status: str = ""
    summary: str = ""


#: tags reasoning models wrap their thinking in (QwQ, R1 and Qwen3 use ``think``)
_THINK_TAGS = ("think", "thinking", "reasoning", "thought")
_THINK_BLOCK = re.compile(rf"<({'|'.join(_THINK_TAGS)})>.*?</\1>", re.DOTALL | re.IGNORECASE)
_THINK_CLOSE = re.compile(rf"</(?:{'|'.join(_THINK_TAGS)})>", re.IGNORECASE)
_THINK_OPEN = re.compile(rf"<(?:{'|'.join(_THINK_TAGS)})>", re.IGNORECASE)


def split_reasoning(text: str) -> tuple[str, str]:
    """``(answer, thinking)``: ``<think>`` blocks taken out of ``text``.

    Handles the shapes servers produce: whole blocks anywhere; a closing tag with no opening one
    (chat templates that put ``<think>`` into the prompt), where everything before it is thinking;
    and an opening tag never closed (the model ran out of tokens while thinking), where everything
    after it is thinking and the answer is what came before."""
    thoughts: list[str] = []

    def keep(match: re.Match) -> str:
        thoughts.append(match.group(0)[len(match.group(1)) + 2: -(len(match.group(1)) + 3)])
        return ""

    answer = _THINK_BLOCK.sub(keep, text or "")
    closes = list(_THINK_CLOSE.finditer(answer))
    if closes:  # an unopened block: everything up to the last closing tag
        thoughts.insert(0, _THINK_CLOSE.sub("", answer[: closes[-1].start()]))
        answer = answer[closes[-1].end():]
    if opened := _THINK_OPEN.search(answer):  # an unclosed block: everything after it
        thoughts.append(answer[opened.end():])
        answer = answer[: opened.start()]
    return answer.strip(), "\n".join(t.strip() for t in thoughts if t.strip())


def answer_text(text: str) -> str:
    """``text`` without its thinking."""
    return split_reasoning(text)[0]


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every top-level JSON object in ``text`` (inside code fences or bare), in order."""
    found: list[dict[str, Any]] = []
    pos = 0
    while (start := text.find("{", pos)) != -1:
        depth, end, value = 0, None, None
        in_string = escaped = False
        for i in range(start, len(text)):
            ch = text[i]
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
                continue
            if ch == '"':
                in_string = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    end = i
                    break
        if end is not None:
            try:
                value = json.loads(text[start: end + 1])
            except json.JSONDecodeError:
                value = None
        if isinstance(value, dict):
            found.append(value)
            pos = end + 1  # type: ignore[operator]
        else:
            pos = start + 1
    return found


def _json_object(text: str, *keys: str) -> dict[str, Any] | None:
    """The last JSON object in ``text`` that has every one of ``keys``, if any."""
    for value in reversed(_json_objects(text)):
        if all(k in value for k in keys):
            return value
    return None


def _line_value(text: str, *labels: str) -> str | None:
    """The value of the last line ``<label>: <value>`` for the first label that occurs."""
    for label in labels:
        matches = re.findall(rf"(?im)^[\s*#>-]*\**{label}\**\s*[:=]\s*\**\s*(.+?)\s*\**\s*$", text)
        if matches:
            return matches[-1].strip().strip("`'\"")
    return None


def _split_list(value: str) -> list[str]:
    value = value.strip().strip("[]")
    return [v.strip().strip("`'\"") for v in re.split(r"[,;|]", value) if v.strip().strip("`'\"")]


def _validated(model: type[BaseModel], data: dict[str, Any]) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ParseError(f"the JSON answer does not fit {model.__name__}: {exc.errors()[0]['msg']}") from None


def parse_requirements(text: str) -> TaskRequirementsResult:
    text = answer_text(text)
    data = _json_object(text, "target_classes")
    if data is not None:
        if isinstance(data.get("target_classes"), str):
            data["target_classes"] = _split_list(data["target_classes"])
        return _validated(TaskRequirementsResult, data)  # type: ignore[return-value]
    modality = _line_value(text, "modality")
    targets = _line_value(text, "target classes", "target_classes", "classes")
    if not modality or not targets:
        raise ParseError("expected lines 'Modality: ...', 'Target classes: a, b', 'Task type: ...', 'Requirement: ...'")
    return TaskRequirementsResult(
        modality=modality,
        task_type=_line_value(text, "task type", "task_type") or "classification",
        target_classes=_split_list(targets),
        requirement=_line_value(text, "requirement", "requirements") or "",
    )


#: a whole answer (or one of its lines) that says no dataset fits
_NO_DATASET = re.compile(r"(?im)^[\s*#>`'\"-]*(?:\**dataset[ _]name\**\s*[:=]\s*\**\s*)?"
                         r"(?:no (?:suitable |matching |relevant )?datasets?|none)\b")


def parse_selection(text: str) -> DatasetSelection:
    text = answer_text(text)
    data = _json_object(text, "datasets")
    if data is not None:
        return _validated(DatasetSelection, data)  # type: ignore[return-value]
    text = text.replace("<end>", "")
    names = [m.strip().strip("`'\"*") for m in re.findall(r"(?im)\**\s*dataset[ _]name\s*\**\s*[:=]\s*(.+?)\s*$", text)]
    names = [n for n in names if n and not re.match(r"(?i)(none|no (suitable |matching |relevant )?datasets?)\b", n)]
    if names:
        return DatasetSelection(datasets=list(dict.fromkeys(names)))
    if _NO_DATASET.search(text):  # "none" must be the answer, not a word in a sentence
        return DatasetSelection(datasets=[], reason=text.strip()[:500])
    raise ParseError("expected one line '**Dataset Name** : <name>' per matching dataset, or 'no dataset' and a reason")


def parse_approval(text: str, clients: list[str]) -> ApprovalResult:
    text = answer_text(text)
    data = _json_object(text, "approved")
    if data is not None:
        result = _validated(ApprovalResult, data)
    else:
        value = _line_value(text, "approved", "approved clients", "approved hospitals")
        if value is None:
            raise ParseError("expected a line 'Approved: <client>, <client>' (or 'Approved: none')")
        result = ApprovalResult(approved=[] if value.lower() == "none" else _split_list(value))
    unknown = [c for c in result.approved if c not in clients]  # type: ignore[union-attr]
    if unknown:
        raise ParseError(f"unknown clients {unknown}; choose from {clients}")
    return result  # type: ignore[return-value]


def parse_cleaning(text: str) -> CleaningReport:
    text = answer_text(text)
    data = _json_object(text, "output_path")
    if data is not None:
        return _validated(CleaningReport, data)  # type: ignore[return-value]
    return CleaningReport(output_path=_line_value(text, "output path", "output_path", "output") or "",
                          summary=text.strip()[:1000])


def parse_harmonisation(text: str) -> HarmonisationReport:
    text = answer_text(text)
    data = _json_object(text, "mapping")
    if data is not None and isinstance(data.get("mapping"), dict):
        return _validated(HarmonisationReport, data)  # type: ignore[return-value]
    mapping: dict[str, str | None] = {}
    for src, dst in re.findall(r"(?m)^[\s*`'\"-]*(.+?)[`'\"]?\s*(?:->|→|=>)\s*[`'\"]?(.+?)[`'\"]?\s*$", text):
        # a later line for the same class wins: a corrected mapping replaces the draft
        mapping[src.strip()] = None if dst.strip().lower() in ("drop", "none", "exclude", "-") else dst.strip()
    if not mapping:
        raise ParseError("expected one line '<local class> -> <target class or drop>' per local class")
    return HarmonisationReport(mapping=mapping, output_path=_line_value(text, "output path", "output_path") or "")


def parse_algorithm(text: str) -> AlgorithmChoice:
    text = answer_text(text)
    data = _json_object(text, "algorithm")
    if data is not None:
        return _validated(AlgorithmChoice, data)  # type: ignore[return-value]
    name = _line_value(text, "algorithm name", "algorithm")
    if not name:
        raise ParseError("expected a line 'Algorithm Name: <name from the registry>'")
    return AlgorithmChoice(algorithm=name.split()[0].strip(".,;"), reason=text.strip()[:500])


def parse_training(text: str) -> TrainingReport:
    text = answer_text(text)
    return TrainingReport(status=_line_value(text, "status", "training status") or "", summary=text.strip()[:1000])


#: words that name each modality in free text (requests, S1 answers)
MODALITY_WORDS = {
    "dermatoscopy": ("dermatoscop", "dermoscop", "dermatolog", "skin"),
    "ultrasound": ("ultrasound", "sonograph", "echograph"),
    "fundus": ("fundus", "retina", "retinal"),
    "histopathology": ("histopath", "histolog", "h&e", "pathology"),
    "mri": ("mri", "magnetic resonance"),
    "xray": ("x-ray", "xray", "radiograph", "cxr", "x ray"),
}


def normalise_modality(text: str) -> str:
    low = text.lower()
    for modality, words in MODALITY_WORDS.items():
        if any(w in low for w in words):
            return modality
    return low.strip()
