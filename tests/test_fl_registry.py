"""The algorithm registry: the paper's 40 entries, schema, the cue sets the environments' answer keys use."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from environments.tasks import REQUIREMENT_ALGORITHMS
from fl.algorithms import implemented
from fl.registry import (
    REGISTRY_PATH,
    Category,
    Cue,
    load_registry,
    parse_registry,
    query,
)

#: the paper's registry, in its order (reference/original-fedagentbench.md, section C)
PAPER_NAMES = [
    "FedAvg", "FedAvgM", "FedProx", "SCAFFOLD", "MOON", "FedDyn", "FedLC", "FedGen", "CCVR", "FedOpt",
    "pFedSim", "Local-Only", "FedMD", "APFL", "LG-FedAvg", "FedBN", "FedPer", "FedRep", "Per-FedAvg",
    "pFedMe", "FedEM", "Ditto", "pFedHN", "pFedLA", "CFL", "FedFomo", "FedBABU", "FedAP", "kNN-Per",
    "MetaFed", "FedRoD", "FedProto", "FedPAC", "FedALA", "FLUTE", "FedAS", "pFedFDA", "FedSR", "ADCOL",
    "FedIIR",
]  # fmt: skip

#: acceptable answers per cue, as the environments' answer keys take them
CUE_SETS = {cue: set(names) for cue, names in REQUIREMENT_ALGORITHMS.items()}

def raw() -> dict:
    return json.loads(REGISTRY_PATH.read_text())


def test_the_papers_forty_algorithms_come_first_with_exact_names():
    registry = load_registry()
    assert registry.names()[: len(PAPER_NAMES)] == PAPER_NAMES


@pytest.mark.parametrize("cue", sorted(CUE_SETS))
def test_cue_sets_match_answer_keys(cue):
    assert {a.name for a in query(cue=cue)} == CUE_SETS[cue]


def test_every_cue_and_category_is_known_and_used():
    registry = load_registry()
    used = {c for a in registry.algorithms for c in a.cues}
    assert used <= set(Cue)
    assert {a.category for a in registry.algorithms} == set(Category)
    counts = {c: sum(1 for a in query(category=c.value) if a.name in PAPER_NAMES) for c in Category}
    assert counts == {Category.traditional: 10, Category.personalised: 27, Category.domain_generalisation: 3}


def test_executable_algorithms_cover_all_categories():
    executable = query(executable=True)
    assert {a.name for a in executable} == implemented()  # flagged executable exactly when a client exists
    assert {a.category for a in executable} == set(Category)


def test_every_algorithm_is_executable_as_the_cli_lists_them():
    """``fedagentbench algorithms --json`` (run as users run it) lists the registry, every entry
    executable, so any of them can be an acceptable S3 answer."""
    import subprocess
    import sys

    from fl.registry import REGISTRY_PATH

    out = subprocess.run([sys.executable, "-m", "fedagentbench_cli", "algorithms", "--json"], capture_output=True,
                         text=True, check=True, cwd=REGISTRY_PATH.parents[1])  # fmt: skip
    listed = json.loads(out.stdout)
    assert [a["name"] for a in listed] == load_registry().names()
    assert all(a["executable"] for a in listed), [a["name"] for a in listed if not a["executable"]]
    assert {a["name"] for a in listed} == implemented()
    for requirement, names in REQUIREMENT_ALGORITHMS.items():
        assert {a.name for a in query(cue=requirement, executable=True)} == set(names), requirement


def test_lookup_by_variant_and_case():
    registry = load_registry()
    assert registry.get("fedadam").name == "FedOpt"
    assert registry.get("FEDBN").name == "FedBN"
    assert registry.get("FedOpt").variants == ["FedAdam", "FedYogi", "FedAdagrad"]
    with pytest.raises(ValueError, match="unknown algorithm"):
        registry.get("FedMagic")


def test_entries_carry_selection_text_and_defaults():
    for a in load_registry().algorithms:
        assert len(a.key_idea) > 20 and len(a.choose_when) > 20
        assert isinstance(a.hyperparameters, dict)
    assert load_registry().get("FedProx").hyperparameters["mu"] == 0.01
    assert load_registry().get("MOON").hyperparameters == {"tau": 0.5, "mu": 5.0}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["algorithms"][0].update(category="federated"), "category"),
        (lambda d: d["algorithms"][0].update(cues=["label_skew", "nonsense"]), "cues"),
        (lambda d: d["algorithms"][0].update(cues=["baseline", "baseline"]), "duplicate cue"),
        (lambda d: d["algorithms"][0].pop("key_idea"), "key_idea"),
        (lambda d: d["algorithms"][0].update(surprise=1), "surprise"),
        (lambda d: d["algorithms"][1].update(name="FedAvg"), "duplicate algorithm names"),
        (lambda d: d["algorithms"][0].update(hyperparameters={"mu": [1, 2]}), "hyperparameters"),
    ],
)
def test_bad_entries_are_rejected(mutate, message):
    data = raw()
    mutate(data)
    with pytest.raises((ValidationError, ValueError), match=message):
        parse_registry(data)


def test_a_registry_missing_one_of_the_papers_algorithms_is_rejected():
    data = raw()
    data["algorithms"].pop()
    with pytest.raises(ValueError, match="at least the paper's 40 algorithms"):
        parse_registry(data)


def test_cli_algorithms_json(capsys):
    from fedagentbench_cli import main

    assert main(["algorithms", "--cue", "feature_shift", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [a["name"] for a in listed] == ["FedBN", "FedAP", "pFedFDA"]
    assert main(["algorithms", "--category", "domain_generalisation"]) == 0
    out = capsys.readouterr().out
    assert "FedSR" in out and "ADCOL" in out and "FedAvg" not in out
