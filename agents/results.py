"""Structured results of the seven agents, and tolerant parsers for free-text answers.

Models without native structured output answer in text; the parsers accept a JSON object anywhere
in the answer, or the paper's protocol lines (``**Dataset Name** : ISIC2019``,
``Algorithm Name: FedBN``, ``Target classes: benign, malignant``, ``mel -> malignant``).
A parser raises :class:`ParseError` with what it expected, which goes back to the model once.
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


def _json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (inside a code fence or bare), if any."""
    for match in re.finditer(r"\{", text):
        depth = 0
        for end in range(match.start(), len(text)):
            if text[end] == "{":
                depth += 1
            elif text[end] == "}":
                depth -= 1
                if depth == 0:
                    try:
                        value = json.loads(text[match.start(): end + 1])
                    except json.JSONDecodeError:
                        break
                    if isinstance(value, dict):
                        return value
                    break
    return None


def _line_value(text: str, *labels: str) -> str | None:
    for label in labels:
        m = re.search(rf"(?im)^[\s*#>-]*\**{label}\**\s*[:=]\s*\**\s*(.+?)\s*\**\s*$", text)
        if m:
            return m.group(1).strip().strip("`'\"")
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
    data = _json_object(text)
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


def parse_selection(text: str) -> DatasetSelection:
    data = _json_object(text)
    if data is not None and "datasets" in data:
        return _validated(DatasetSelection, data)  # type: ignore[return-value]
    text = text.replace("<end>", "")
    names = [m.strip().strip("`'\"*") for m in re.findall(r"(?im)\**\s*dataset[ _]name\s*\**\s*[:=]\s*(.+?)\s*$", text)]
    names = [n for n in names if n and n.lower() not in ("none", "no dataset")]
    if names:
        return DatasetSelection(datasets=list(dict.fromkeys(names)))
    if re.search(r"(?i)\bno (suitable |matching |relevant )?datasets?\b|\bnone\b", text):
        return DatasetSelection(datasets=[], reason=text.strip()[:500])
    raise ParseError("expected one line '**Dataset Name** : <name>' per matching dataset, or 'no dataset' and a reason")


def parse_approval(text: str, clients: list[str]) -> ApprovalResult:
    data = _json_object(text)
    if data is not None and "approved" in data:
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
    data = _json_object(text)
    if data is not None and "output_path" in data:
        return _validated(CleaningReport, data)  # type: ignore[return-value]
    return CleaningReport(output_path=_line_value(text, "output path", "output_path", "output") or "",
                          summary=text.strip()[:1000])


def parse_harmonisation(text: str) -> HarmonisationReport:
    data = _json_object(text)
    if data is not None and isinstance(data.get("mapping"), dict):
        return _validated(HarmonisationReport, data)  # type: ignore[return-value]
    mapping: dict[str, str | None] = {}
    for src, dst in re.findall(r"(?m)^[\s*`'\"-]*(.+?)[`'\"]?\s*(?:->|→|=>)\s*[`'\"]?(.+?)[`'\"]?\s*$", text):
        mapping[src.strip()] = None if dst.strip().lower() in ("drop", "none", "exclude", "-") else dst.strip()
    if not mapping:
        raise ParseError("expected one line '<local class> -> <target class or drop>' per local class")
    return HarmonisationReport(mapping=mapping, output_path=_line_value(text, "output path", "output_path") or "")


def parse_algorithm(text: str) -> AlgorithmChoice:
    data = _json_object(text)
    if data is not None and "algorithm" in data:
        return _validated(AlgorithmChoice, data)  # type: ignore[return-value]
    name = _line_value(text, "algorithm name", "algorithm")
    if not name:
        raise ParseError("expected a line 'Algorithm Name: <name from the registry>'")
    return AlgorithmChoice(algorithm=name.split()[0].strip(".,;"), reason=text.strip()[:500])


def parse_training(text: str) -> TrainingReport:
    return TrainingReport(status=_line_value(text, "status", "training status") or "", summary=text.strip()[:1000])
