"""Every class name the builder writes can be read: a published name, or a code with a visible legend.

A name is *published* when it is the card's own class name (any letter case: the public dataset's
spelling), or a :class:`environments.concepts.Term` of the class's concept (a name a public dataset,
an ontology or common clinical usage gives it, with its source). Anything else must be explained by a
legend the agent can read: the data card, a label-file header or a file in the dataset folder.

The names are decided by the plan (no images needed), so every dataset of every environment is
checked under every label style over many seeds; one tiny build per environment checks the legends
where an agent reads them.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from environments.builder import build_environment
from environments.catalogue import load_catalogue
from environments.concepts import ENVIRONMENTS, Term, vocabulary
from environments.materialise import local_class_names
from environments.planner import LABEL_STYLES, plan_environment
from environments.tasks import tasks_for

SEEDS = range(1000, 1024)  # 24 seeds


def _published(local: str, published: str, concept: str | None, environment: str) -> str | None:
    """Why ``local`` needs no legend (its source), or None."""
    if local.casefold() == published.casefold():
        return "the card's own class name"
    if concept is None:
        return None
    for term in vocabulary(environment).concept(concept).terms:
        if term == local and isinstance(term, Term) and term.source.strip():
            return term.source
    return None


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_planned_label_is_published_or_a_numeric_code(environment):
    """Over 24 seeds, every dataset (relevant or not) under every label style writes only published
    names, except the numeric style's codes (whose legend the build test checks)."""
    cards = load_catalogue().for_environment(environment)
    tasks = tasks_for(environment)
    checked, styles_seen = 0, set()
    for seed in SEEDS:
        rng = np.random.default_rng([seed, ENVIRONMENTS.index(environment), 1])
        plan = plan_environment(cards, tasks, "tiny", rng, grey_formats=True)
        for hospital in plan:
            for ds in hospital.datasets:
                styles_seen.add(ds.label_style)
                if not (ds.card.is_classification and ds.card.classes):
                    continue
                for style in LABEL_STYLES:
                    names = local_class_names(replace(ds, label_style=style))
                    assert sorted(names) == sorted(ds.card.classes)
                    for published, local in names.items():
                        concept = ds.card.class_concepts[published]
                        why = _published(local, published, concept, environment)
                        if why is None:
                            assert style == "numeric" and re.fullmatch(r"\d+", local), (
                                f"{environment} seed {seed}: {ds.card.name} writes {local!r} for {published!r} "
                                f"({concept}) in style {style}: neither published nor a legend-backed code")
                        checked += 1
    assert checked > 200
    assert len(styles_seen) >= 3  # the plan itself varies the style


def test_every_published_term_has_a_source_and_no_two_concepts_share_one():
    for environment in ENVIRONMENTS:
        owner: dict[str, str] = {}
        for concept in vocabulary(environment).concepts.values():
            for term in concept.terms:
                assert isinstance(term, Term) and term.source.strip(), (environment, concept.name, term)
                assert owner.setdefault(str(term), concept.name) == concept.name, (
                    f"{environment}: {term!r} names both {owner[str(term)]} and {concept.name}")


def test_every_catalogue_card_records_its_source():
    for card in load_catalogue().cards:
        assert len(card.source.strip()) >= 4, card.name


def _legends(workspace: Path, ds: dict, card: dict) -> str:
    """Every text an agent can read that may explain the dataset's labels."""
    root = workspace / ds["path"]
    texts = [card.get("dataset description", "")]
    for path in root.rglob("*"):
        if path.is_file() and path.suffix.lower() in (".txt", ".md", ".json", ".csv", ".tsv"):
            if path.suffix.lower() in (".csv", ".tsv"):
                with path.open(encoding="utf-8", errors="replace") as fh:
                    texts += [line for _, line in zip(range(5), fh)]  # header and comments
            else:
                texts.append(path.read_text("utf-8", errors="replace")[:20000])
    return "\n".join(texts)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab_envs")
    for environment in ENVIRONMENTS:
        build_environment(environment, "tiny", 1017, out, data_dir=None)
    return out


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_written_code_has_a_legend_the_agent_can_read(built, environment):
    env_dir = built / environment
    key = json.loads((env_dir / "answer_key" / "environment.json").read_text("utf-8"))
    for ds in key["datasets"]:
        workspace = env_dir / "clients" / ds["hospital"]
        cards = json.loads((workspace / "data_cards.json").read_text("utf-8"))
        card = next(c for c in cards if c["dataset name"] == ds["name"])
        assert card["classes"] == ds["local_classes"]
        legend = None
        for local, published in ds["local_to_published"].items():
            if _published(local, published, ds["local_to_concept"][local], environment):
                continue
            legend = legend if legend is not None else _legends(workspace, ds, card)
            explained = re.search(rf"(?<![\w.]){re.escape(local)}\s*[:=]\s*{re.escape(published)}\b", legend) or \
                re.search(rf"(?<![\w.]){re.escape(published)}\s*[:=]\s*{re.escape(local)}\b", legend)
            assert explained, f"{environment}/{ds['name']}: {local!r} ({published!r}) is explained nowhere visible"
