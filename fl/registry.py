"""The federated-learning algorithms the agents choose from (S3), as validated data: the paper's 40
and any added since.

The registry is plain JSON (``registry.json``) so that an LLM agent can read it and the answer keys
of the environments can name the same algorithms; this module gives it a schema and a query API.
Only the standard library and pydantic are imported, so the CLI and the agents load it quickly.
"""

from __future__ import annotations

import json
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

REGISTRY_PATH = Path(__file__).with_name("registry.json")
#: the FedAgentBench paper's registry holds 40 algorithms; ours holds them all, and may hold more
PAPER_COUNT = 40


class Category(str, Enum):
    traditional = "traditional"
    personalised = "personalised"
    domain_generalisation = "domain_generalisation"


class Cue(str, Enum):
    """Task or data characteristics that make an algorithm a good choice."""

    baseline = "baseline"
    label_skew = "label_skew"
    feature_shift = "feature_shift"
    personalisation = "personalisation"
    unseen_site = "unseen_site"
    stragglers = "stragglers"
    partial_participation = "partial_participation"
    heterogeneous_architectures = "heterogeneous_architectures"
    low_communication = "low_communication"
    adaptive_server_optimiser = "adaptive_server_optimiser"
    fairness = "fairness"


HyperValue = bool | int | float | str


class Algorithm(BaseModel):
    """One registry entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=2)
    full_name: str = Field(min_length=2)
    category: Category
    venue: str
    key_idea: str = Field(min_length=10)
    choose_when: str = Field(min_length=10)
    cues: list[Cue] = Field(default_factory=list)
    hyperparameters: dict[str, HyperValue] = Field(default_factory=dict)
    executable: bool = False
    variants: list[str] = Field(default_factory=list)

    @field_validator("cues")
    @classmethod
    def _unique_cues(cls, cues: list[Cue]) -> list[Cue]:
        if len(set(cues)) != len(cues):
            raise ValueError("duplicate cue")
        return cues


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    algorithms: list[Algorithm]

    @model_validator(mode="after")
    def _unique_names(self) -> Registry:
        names = [a.name.lower() for a in self.algorithms]
        variants = [v.lower() for a in self.algorithms for v in a.variants]
        duplicates = {n for n in names + variants if (names + variants).count(n) > 1}
        if duplicates:
            raise ValueError(f"duplicate algorithm names: {sorted(duplicates)}")
        return self

    def get(self, name: str) -> Algorithm:
        """Look an algorithm up by name or variant name, case-insensitively."""
        key = name.strip().lower()
        for algo in self.algorithms:
            if algo.name.lower() == key or key in (v.lower() for v in algo.variants):
                return algo
        known = ", ".join(a.name for a in self.algorithms)
        raise ValueError(f"unknown algorithm {name!r}; known: {known}")

    def query(
        self,
        category: Category | str | None = None,
        cue: Cue | str | None = None,
        executable: bool | None = None,
    ) -> list[Algorithm]:
        """Algorithms matching every filter given (None = no filter)."""
        cat = Category(category) if category is not None else None
        cue_ = Cue(cue) if cue is not None else None
        return [
            a
            for a in self.algorithms
            if (cat is None or a.category == cat)
            and (cue_ is None or cue_ in a.cues)
            and (executable is None or a.executable == executable)
        ]

    def names(self) -> list[str]:
        return [a.name for a in self.algorithms]


def parse_registry(data: dict[str, Any], minimum: int | None = PAPER_COUNT) -> Registry:
    """Validate raw registry data; raises pydantic.ValidationError or ValueError."""
    registry = Registry.model_validate(data)
    if minimum is not None and len(registry.algorithms) < minimum:
        raise ValueError(f"registry must hold at least the paper's {minimum} algorithms, found {len(registry.algorithms)}")
    return registry


@lru_cache(maxsize=1)
def load_registry(path: str | None = None) -> Registry:
    """The registry shipped with the package (cached)."""
    source = Path(path) if path else REGISTRY_PATH
    return parse_registry(json.loads(source.read_text(encoding="utf-8")))


def get_algorithm(name: str) -> Algorithm:
    return load_registry().get(name)


def query(category: str | None = None, cue: str | None = None, executable: bool | None = None) -> list[Algorithm]:
    return load_registry().query(category=category, cue=cue, executable=executable)
