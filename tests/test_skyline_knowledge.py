"""The skyline's clinical knowledge: key-blind by construction, and in agreement with every answer key."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from agents import skyline_knowledge as sk
from environments.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("environments", "eval", "graphs", "answer_key")


def _load_check_script():
    spec = importlib.util.spec_from_file_location("check_skyline_knowledge",
                                                  ROOT / "scripts" / "check_skyline_knowledge.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check():
    return _load_check_script()


@pytest.fixture(scope="module", params=["request", "broadcast"])
def validation(request, check):
    """The comparison with every key: knowing the user request, or only what C1 / C3 are told."""
    return check, check.validate(mode=request.param)


def test_module_imports_nothing_from_the_environments_or_the_key():
    tree = ast.parse((ROOT / "agents" / "skyline_knowledge.py").read_text("utf-8"))
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.append(node.module or "")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "__import__", "import_module"):
            pytest.fail("no dynamic imports in the knowledge module")
    for name in imported:
        top = name.split(".")[0]
        assert top not in FORBIDDEN and "answer_key" not in name, f"forbidden import {name}"
        assert top in {"__future__", "itertools", "json", "re", "unicodedata", "collections", "dataclasses", "functools",
                       "typing"}, f"unexpected import {name}"
    source = (ROOT / "agents" / "skyline_knowledge.py").read_text("utf-8")
    assert "answer_key/" not in source and "task_id" not in source


def test_map_class_agrees_with_every_key_on_eligible_cards(validation):
    _check, results = validation
    mismatches = [(r.task_id, m) for r in results for m in r.map_mismatches]
    assert not mismatches, mismatches[:10]
    assert sum(r.map_total for r in results) > 5000


def test_map_class_on_ineligible_cards_only_disagrees_where_listed(check):
    """Knowing the modality too (request mode), even cards no criterion selects map as their key says."""
    results = check.validate(mode="request")
    mismatches = [(r.task_id, m) for r in results for m in r.other_mismatches]
    assert not mismatches, mismatches[:10]


def test_dataset_matches_agrees_with_the_criterion_everywhere(validation):
    check, results = validation
    mismatches = [(r.task_id, m) for r in results for m in r.match_mismatches]
    assert not mismatches, mismatches[:10]
    assert check.mismatch_count(results) == 0


def test_known_ambiguities_are_still_real(validation):
    """Every listed ambiguity still occurs (a stale entry would hide a regression)."""
    check, results = validation
    seen = " ".join(k for r in results for k in r.known)
    listed = dict(check.KNOWN_AMBIGUITIES)
    for card, published in listed:
        if published is None:
            assert f"dataset_matches {card}:" in seen, card
        else:
            assert f"map_class {card} " + ("" if published == "*" else repr(published)) in seen, (card, published)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.task_id)
@pytest.mark.parametrize("guidance", ["fine", "goal"])
def test_parse_request_recovers_the_task(task, guidance):
    text = task.request(guidance)
    as_tool = json.dumps({"task_id": task.task_id, "environment": task.environment, "request": text})
    wrapped = f"User request (task id {task.task_id}):\n{text}\nSteps: 1. Call read_task to read the full request."
    for variant in (text, as_tool, wrapped):
        got = sk.parse_request(variant)
        assert got["modality"] == task.environment
        assert got["task_type"] == "classification"
        assert got["target_classes"] == task.target_classes
        assert got["requirement"] == task.requirement
        assert got["class_note"] == task.class_note
    both = json.dumps({"task_id": task.task_id, "environment": task.environment,
                       "request": {"fine": task.request("fine"), "goal": task.request("goal")}})
    assert sk.parse_request(both)["target_classes"] == task.target_classes


def test_numeric_codes_are_read_through_the_legend_and_the_description():
    card = {"dataset name": "Figshare-Brain-Tumor-Cheng", "modality": "mri", "species": "human",
            "body_part": "brain", "task_type": "classification, segmentation", "classes": ["0", "1", "2"],
            "dataset description": "Slices with a label (1 meningioma, 2 glioma, 3 pituitary tumour). "
                                   "Classes are coded as numbers (0 = 1, 1 = 2, 2 = 3); see classes.txt."}
    targets = ["glioma", "meningioma", "pituitary", "no_tumour"]
    assert [sk.map_class(c, card, targets, "") for c in card["classes"]] == ["meningioma", "glioma", "pituitary"]
    assert not sk.dataset_matches(card, "mri", targets, "")  # no tumour-free class
    assert sk.dataset_matches(card, "MRI", ["glioma", "meningioma"], "", body_part="brain")


def test_note_rules_regroup_classes():
    derm = {"modality": "dermatoscopy", "body_part": "skin", "classes": ["mel", "nv", "bcc", "akiec", "bkl"],
            "species": "human", "task_type": "classification", "dataset description": "Dermoscopy."}
    note = "Lesions that are neither melanoma nor naevus are left out."
    assert [sk.map_class(c, derm, ["melanoma", "naevus"], note) for c in derm["classes"]] == [
        "melanoma", "naevus", None, None, None]
    note = "Melanoma and actinic keratosis count as malignant; naevi and benign keratoses as benign."
    assert [sk.map_class(c, derm, ["benign", "malignant"], note) for c in derm["classes"]] == [
        "malignant", "benign", "malignant", "malignant", "benign"]
    fundus = {"modality": "fundus", "classes": ["0", "1", "2", "3", "4"], "dataset description":
              "APTOS 2019: diagnosis (0 no DR ... 4 proliferative DR)."}
    note = "Grades 0-1 are non_referable, grades 2-4 referable."
    assert [sk.map_class(c, fundus, ["non_referable", "referable"], note) for c in fundus["classes"]] == [
        "non_referable", "non_referable", "referable", "referable", "referable"]
    assert sk.map_class("nrDR", fundus, ["no_dr", "dr"], "'non-referable' labels are left out.") is None
    assert sk.map_class("Non-Glaucoma", {"modality": "fundus"}, ["no_dr", "dr"], "") is None
