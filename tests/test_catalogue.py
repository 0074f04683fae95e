"""The dataset catalogue: 201 validated cards, relevant candidates and distractors in every environment."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from environments.catalogue import DATA_DIR, Catalogue, DatasetCard, load_catalogue
from environments.concepts import ENVIRONMENTS, vocabulary


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


def _valid_card(**overrides) -> dict:
    card = {
        "name": "Test-Card",
        "environment": "dermatoscopy",
        "modality": "dermatoscopy",
        "species": "human",
        "body_part": "skin",
        "task_types": ["classification"],
        "classes": ["mel", "nv"],
        "class_concepts": {"mel": "melanoma", "nv": "naevus"},
        "layout": "flat_csv",
        "file_format": "jpeg",
        "image_count": 100,
        "description": "Dermoscopic images with labels in labels.csv, column dx.",
        "source": "test",
    }
    card.update(overrides)
    return card


# --- the shipped catalogue -----------------------------------------------------------------------


def test_one_file_per_environment():
    assert sorted(p.stem for p in DATA_DIR.glob("*.json")) == sorted(ENVIRONMENTS)
    for env in ENVIRONMENTS:
        entries = json.loads((DATA_DIR / f"{env}.json").read_text(encoding="utf-8"))
        assert isinstance(entries, list)
        assert all(entry["environment"] == env for entry in entries), env


def test_exactly_201_cards(catalogue):
    assert len(catalogue.cards) == 201


def test_every_environment_present_with_25_to_45_cards(catalogue):
    assert {c.environment for c in catalogue.cards} == set(ENVIRONMENTS)
    for env in ENVIRONMENTS:
        assert 25 <= len(catalogue.for_environment(env)) <= 45, env


def test_names_unique_case_insensitively(catalogue):
    names = [c.name.lower() for c in catalogue.cards]
    assert len(names) == len(set(names))


def test_by_name(catalogue):
    assert catalogue.by_name("HAM10000").environment == "dermatoscopy"
    with pytest.raises(KeyError):
        catalogue.by_name("no-such-dataset")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_at_least_eight_relevant_candidates(catalogue, env):
    relevant = [c for c in catalogue.for_environment(env) if c.has_real_pixels]
    assert len(relevant) >= 8, [c.name for c in relevant]
    # relevant candidates cover more than one granularity (e.g. binary and fine-grained)
    assert len({len(c.classes) for c in relevant}) >= 2


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_distractor_kind_present(catalogue, env):
    cards = catalogue.for_environment(env)
    other_modality = [c for c in cards if c.modality != env]
    animal = [c for c in cards if c.species != "human"]
    segmentation_only = [c for c in cards if c.task_types == ["segmentation"]]
    registration_or_unlabelled = [c for c in cards if {"registration", "unlabelled"} & set(c.task_types)]
    assert other_modality, "no card of another modality"
    assert animal, "no animal card"
    assert segmentation_only, "no segmentation-only card"
    assert registration_or_unlabelled, "no registration or unlabelled card"
    assert not any(c.has_real_pixels for c in other_modality + animal + segmentation_only)
    distractors = [c for c in cards if not c.has_real_pixels]
    assert len(distractors) >= 12


def test_other_modality_cards_carry_no_concepts(catalogue):
    for card in catalogue.cards:
        if card.modality != card.environment:
            assert card.concepts == set(), card.name


def test_unlabelled_and_segmentation_only_cards_have_no_classes(catalogue):
    for card in catalogue.cards:
        if set(card.task_types) <= {"segmentation", "registration", "unlabelled", "detection"}:
            assert card.classes == [], card.name


def test_classification_cards_have_two_classes(catalogue):
    for card in catalogue.cards:
        if card.is_classification:
            assert len(card.classes) >= 2, card.name


def test_known_class_concepts(catalogue):
    ham = catalogue.by_name("HAM10000")
    assert ham.class_concepts["akiec"] == "actinic_keratosis"
    assert ham.class_concepts["bkl"] == "seborrhoeic_keratosis"
    assert ham.class_concepts["df"] == "dermatofibroma"
    assert catalogue.by_name("BUSI").classes == ["normal", "benign", "malignant"]
    assert catalogue.by_name("APTOS2019").class_concepts["4"] == "dr_grade_4"
    assert catalogue.by_name("Kermany-Chest-XRay-Pneumonia").class_concepts == {
        "NORMAL": "normal_chest",
        "PNEUMONIA": "pneumonia",
    }
    assert catalogue.by_name("Brain-Tumor-MRI-Sartaj").class_concepts["no_tumor"] == "no_tumour"
    assert catalogue.by_name("Shenzhen-TB").class_concepts["1"] == "tuberculosis"
    assert not catalogue.by_name("FIRE").has_real_pixels


def test_relevant_cards_use_only_pooled_concepts(catalogue):
    for card in catalogue.cards:
        if card.has_real_pixels:
            vocab = vocabulary(card.environment)
            assert all(vocab.has_pixels(c) for c in card.class_concepts.values()), card.name


# --- the validator rejects malformed cards ---------------------------------------------------------


def test_valid_card_accepted():
    card = DatasetCard(**_valid_card())
    assert card.has_real_pixels


def test_duplicate_class_rejected():
    with pytest.raises(ValidationError):
        DatasetCard(**_valid_card(classes=["mel", "mel"], class_concepts={"mel": "melanoma"}))


def test_unknown_concept_rejected():
    with pytest.raises(ValidationError):
        DatasetCard(**_valid_card(class_concepts={"mel": "melanoma", "nv": "not_a_concept"}))


def test_concept_of_other_environment_rejected():
    with pytest.raises(ValidationError):
        DatasetCard(**_valid_card(class_concepts={"mel": "melanoma", "nv": "glioma"}))


def test_unknown_modality_rejected():
    with pytest.raises(ValidationError):
        DatasetCard(**_valid_card(modality="sonar"))


def test_unknown_environment_rejected():
    with pytest.raises(ValidationError):
        DatasetCard(**_valid_card(environment="pet_scan"))


def test_class_concept_mismatch_rejected():
    with pytest.raises(ValidationError):
        DatasetCard(**_valid_card(class_concepts={"mel": "melanoma"}))


def test_other_modality_with_concepts_rejected():
    with pytest.raises(ValidationError):
        DatasetCard(**_valid_card(modality="clinical_photography"))


def test_single_class_classification_rejected():
    with pytest.raises(ValidationError):
        DatasetCard(**_valid_card(classes=["mel"], class_concepts={"mel": "melanoma"}))


def test_bad_name_and_extra_key_rejected():
    with pytest.raises(ValidationError):
        DatasetCard(**_valid_card(name="has space"))
    with pytest.raises(ValidationError):
        DatasetCard(**_valid_card(label_file="labels.csv"))


def test_duplicate_name_rejected():
    with pytest.raises(ValidationError):
        Catalogue(cards=[_valid_card(name="Same-Name"), _valid_card(name="same-name")])
