"""The dataset catalogue: 201 cards modelled on real public medical-imaging datasets.

Cards are data (``catalogue_data/<environment>.json``), validated here. A card says what a public
dataset is: its modality, body part, task types, classes as the dataset spells them and the concept
each class stands for (see :mod:`environments.concepts`). The environment builder places cards in
hospitals; the answer key decides from the concepts which cards fit a task.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from environments.concepts import ENVIRONMENTS, KNOWN_MODALITIES, vocabulary

DATA_DIR = Path(__file__).with_name("catalogue_data")

TaskType = Literal[
    "classification",
    "multi_label_classification",
    "segmentation",
    "detection",
    "registration",
    "regression",
    "unlabelled",
]
Layout = Literal["class_folders", "flat_csv", "flat_json", "nested"]
FileFormat = Literal["png", "jpeg", "dicom", "nifti", "tiff"]


class DatasetCard(BaseModel):
    """One public dataset as a catalogue entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=2, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-+]*$")
    environment: Literal[ENVIRONMENTS]  # type: ignore[valid-type]
    modality: str
    species: str = "human"
    body_part: str
    task_types: list[TaskType] = Field(min_length=1)
    classes: list[str] = Field(default_factory=list)
    #: class name as the dataset spells it -> concept of the environment's vocabulary (None: none fits)
    class_concepts: dict[str, str | None] = Field(default_factory=dict)
    layout: Layout
    file_format: FileFormat
    image_count: int = Field(gt=0)
    description: str = Field(min_length=20)
    source: str = ""

    @field_validator("modality")
    @classmethod
    def _known_modality(cls, value: str) -> str:
        if value not in KNOWN_MODALITIES:
            raise ValueError(f"unknown modality {value!r}; known: {', '.join(KNOWN_MODALITIES)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "DatasetCard":
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"{self.name}: duplicate class names")
        if set(self.class_concepts) != set(self.classes):
            raise ValueError(f"{self.name}: class_concepts must have exactly one entry per class")
        vocab = vocabulary(self.environment)
        for cls_name, concept in self.class_concepts.items():
            if concept is not None and concept not in vocab.concepts:
                raise ValueError(f"{self.name}: class {cls_name!r} maps to unknown concept {concept!r} "
                                 f"for environment {self.environment!r}")
        labelled = {"classification", "multi_label_classification"} & set(self.task_types)
        if labelled and len(self.classes) < 2:
            raise ValueError(f"{self.name}: a classification card needs at least two classes")
        if self.modality != self.environment and any(self.class_concepts.values()):
            raise ValueError(f"{self.name}: a card of another modality cannot carry this environment's concepts")
        return self

    @property
    def is_classification(self) -> bool:
        return "classification" in self.task_types

    @property
    def concepts(self) -> set[str]:
        return {c for c in self.class_concepts.values() if c is not None}

    @property
    def has_real_pixels(self) -> bool:
        """True when every class has a concept with pool pixels (the card can be a relevant dataset)."""
        vocab = vocabulary(self.environment)
        return (
            self.is_classification
            and self.modality == self.environment
            and self.species == "human"
            and bool(self.classes)
            and all(c is not None and vocab.has_pixels(c) for c in self.class_concepts.values())
        )


class Catalogue(BaseModel):
    """All cards, with unique names."""

    cards: list[DatasetCard]

    @model_validator(mode="after")
    def _unique(self) -> "Catalogue":
        seen: set[str] = set()
        for card in self.cards:
            key = card.name.lower()
            if key in seen:
                raise ValueError(f"duplicate card name {card.name!r}")
            seen.add(key)
        return self

    def for_environment(self, environment: str) -> list[DatasetCard]:
        return [c for c in self.cards if c.environment == environment]

    def by_name(self, name: str) -> DatasetCard:
        for card in self.cards:
            if card.name == name:
                return card
        raise KeyError(f"no card named {name!r}")


@lru_cache(maxsize=1)
def load_catalogue(data_dir: Path = DATA_DIR) -> Catalogue:
    """Load and validate every ``catalogue_data/*.json`` file (each a JSON list of cards)."""
    cards: list[dict] = []
    files = sorted(data_dir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no catalogue files in {data_dir}")
    for path in files:
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name}: invalid JSON: {exc}") from exc
        cards.extend(entries)
    return Catalogue(cards=cards)
