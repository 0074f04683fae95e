"""Which catalogue cards each hospital hosts, and how each dataset is to be materialised.

The plan guarantees what the benchmark needs: every task has at least two hospitals with a fitting
dataset and at least one hospital without; at ``small`` scale and above the relevant datasets
cycle through every layout, format, label style and issue so each occurs in every environment.
Distractors are drawn from the same distributions (sizes, layouts, formats, label styles, namings,
injected issues): only what the relevance criterion is about may set them apart.
Cards the answer key could not judge the way the stated criterion does (see
:func:`environments.tasks.placeable`) are never placed; they stay in the catalogue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from environments.catalogue import DatasetCard
from environments.tasks import TaskSpec, placeable

LAYOUTS = ("class_folders", "flat_csv", "flat_json", "nested")
LABEL_STYLES = ("as_published", "abbreviation", "synonym", "numeric", "upper")
NAMINGS = ("plain", "plain", "spaces", "unicode")


@dataclass(frozen=True)
class ScaleSpec:
    hospitals: int | None  # None: as many as needed to host every card
    relevant_per_hospital: tuple[int, int]
    datasets_per_hospital: tuple[int, int]
    images_per_class: tuple[int, int]
    issue_rate: float  # fraction of a relevant dataset's images per injected issue kind


SCALES: dict[str, ScaleSpec] = {
    "tiny": ScaleSpec(3, (1, 1), (1, 2), (6, 9), 0.04),
    "small": ScaleSpec(5, (2, 2), (2, 4), (18, 30), 0.05),
    "full": ScaleSpec(None, (1, 3), (1, 4), (18, 30), 0.05),
    # hundreds of images per site, as many as the real pools allow (the pool budget scales them down)
    "real": ScaleSpec(4, (2, 2), (2, 3), (150, 300), 0.04),
}


@dataclass
class DatasetPlan:
    card: DatasetCard
    relevant_to: list[str]
    layout: str = "class_folders"
    formats: list[str] = field(default_factory=lambda: ["png"])
    label_style: str = "as_published"
    naming: str = "plain"
    #: issues to inject: kind -> count (every dataset, relevant or not)
    issues: dict[str, int] = field(default_factory=dict)
    images_per_class: int = 8
    #: planned image count before injection (``images_per_class`` x a drawn class count)
    images: int = 16


@dataclass
class HospitalPlan:
    name: str
    datasets: list[DatasetPlan] = field(default_factory=list)


def plan_environment(
    cards: list[DatasetCard], tasks: list[TaskSpec], scale: str, rng: np.random.Generator, grey_formats: bool
) -> list[HospitalPlan]:
    """Hospitals with their datasets for one environment at ``scale``."""
    spec = SCALES[scale]
    relevant = [c for c in cards if c.has_real_pixels and any(t.is_relevant(c) for t in tasks)]
    distractors = [c for c in cards if c not in relevant]
    if len(relevant) < 2:
        raise ValueError(f"{tasks[0].environment}: the catalogue has fewer than two relevant cards")
    order = list(rng.permutation(len(relevant)))
    relevant = [relevant[i] for i in order]
    # cards that are not placeable are dropped after the draw, so a seed's other draws stay as they were
    distractors = [distractors[i] for i in rng.permutation(len(distractors)) if placeable(distractors[i], tasks)]

    if spec.hospitals is None:  # full: every card somewhere
        n_rel = max(2, math.ceil(len(relevant) / 2))
        n_dis = max(1, math.ceil(max(0, len(distractors) - n_rel) / 3))
    else:
        n_rel, n_dis = spec.hospitals - 1, 1
    hospitals = [HospitalPlan(f"hospital_{i + 1:02d}") for i in range(n_rel + n_dis)]
    rel_hospitals, dis_hospitals = hospitals[:n_rel], hospitals[n_rel:]
    coverage = {t.task_id: set() for t in tasks}

    def place(card: DatasetCard, hospital: HospitalPlan) -> None:
        fits = [t.task_id for t in tasks if t.is_relevant(card)]
        if fits and not card.has_real_pixels:  # placeable() rules this out; materialising would fail
            raise ValueError(f"{card.name} fits {fits} but has no labelled pixels for every class")
        hospital.datasets.append(DatasetPlan(card, fits))
        for task_id in fits:
            coverage[task_id].add(hospital.name)

    pool = list(relevant)
    # the first hospital gets the card that fits the most tasks, the others a random fitting card,
    # so that hospitals differ in which tasks they can serve
    for i, hospital in enumerate(rel_hospitals):
        if not pool:
            break
        card = max(pool, key=lambda c: sum(t.is_relevant(c) for t in tasks)) if i == 0 else pool[0]
        pool.remove(card)
        place(card, hospital)
    # then random extra relevant cards up to the scale's allowance (all of them at full scale)
    for hospital in rel_hospitals:
        extra = int(rng.integers(spec.relevant_per_hospital[0], spec.relevant_per_hospital[1] + 1)) - 1
        if spec.hospitals is None:
            extra = max(extra, math.ceil(len(pool) / max(1, len(rel_hospitals))))
        for _ in range(min(extra, len(pool), spec.datasets_per_hospital[1] - len(hospital.datasets))):
            place(pool.pop(0), hospital)
    for task in tasks:  # every task needs at least two hospitals that fit it
        for hospital in rel_hospitals:
            if len(coverage[task.task_id]) >= 2:
                break
            if hospital.name in coverage[task.task_id]:
                continue
            fitting = [c for c in pool if task.is_relevant(c)]
            if not fitting:  # a multi-centre dataset: another site holds other images of the same set
                fitting = [c for c in relevant if task.is_relevant(c)
                           and all(d.card is not c for d in hospital.datasets)]
            if fitting and len(hospital.datasets) < spec.datasets_per_hospital[1]:
                if fitting[0] in pool:
                    pool.remove(fitting[0])
                place(fitting[0], hospital)
        if len(coverage[task.task_id]) < 2:
            raise ValueError(f"cannot place two hospitals fitting task {task.task_id}")
    # distractors: at least one at every hospital of a small or larger build; rest of slots random
    for hospital in hospitals:
        low = 1 if hospital in dis_hospitals or scale != "tiny" else 0
        target = int(rng.integers(max(low, spec.datasets_per_hospital[0]), spec.datasets_per_hospital[1] + 1))
        want = max(low, target - len(hospital.datasets))
        if spec.hospitals is None and hospital in dis_hospitals:
            want = spec.datasets_per_hospital[1]
        for _ in range(min(want, len(distractors))):
            place(distractors.pop(0), hospital)
    _assign_styles(hospitals, spec, rng, grey_formats)
    return [h for h in hospitals if h.datasets]


def _assign_styles(hospitals: list[HospitalPlan], spec: ScaleSpec, rng: np.random.Generator, grey: bool) -> None:
    """Cycle layouts, formats, label styles, namings, sizes and issues over every dataset.

    Relevant datasets and distractors each run through their own copy of the same cycles, with the
    same size and issue draws: nothing but what the criterion is about (modality, organ, species, task
    type, classes) may tell them apart, or a card count or a file list would give the answer away
    (issue 22). Sizes are ``images_per_class`` times a class count drawn from the relevant cards of the
    environment, not the card's own, so that the number of classes does not set the image count."""
    formats = ["png", "jpeg", "dicom", "tiff"] + (["nifti"] if grey else [])
    every = [d for h in hospitals for d in h.datasets]
    relevant = [d for d in every if d.relevant_to]
    distractors = [d for d in every if not d.relevant_to]
    class_counts = [len(d.card.classes) for d in relevant] or [2]
    for group in (relevant, distractors):
        cycles = {
            "layout": list(rng.permutation(LAYOUTS)),
            "format": list(rng.permutation(formats)),
            "style": list(rng.permutation(LABEL_STYLES)),
            "naming": list(rng.permutation(NAMINGS)),
        }
        for i, plan in enumerate(group):
            plan.layout = str(cycles["layout"][i % len(LAYOUTS)])
            primary = str(cycles["format"][i % len(formats)])
            plan.formats = [primary]
            if i % 2 == 0:  # every other dataset mixes in a second format
                plan.formats.append(str(rng.choice([f for f in formats if f != primary and f != "nifti"])))
            plan.label_style = str(cycles["style"][i % len(LABEL_STYLES)])
            plan.naming = str(cycles["naming"][i % len(NAMINGS)])
            plan.images_per_class = int(rng.integers(spec.images_per_class[0], spec.images_per_class[1] + 1))
            plan.images = plan.images_per_class * int(rng.choice(class_counts))
            k = max(1, round(spec.issue_rate * plan.images))
            plan.issues = {
                "duplicate": k,
                "off_topic": k,
                "label_error": k,
                "corrupt": 1,
                "truncated": 1,
                "zero_byte": 1 if i % 2 == 0 else 0,
                "non_image": int(rng.integers(2, 5)),
            }
        if group and not any("dicom" in plan.formats for plan in group):
            # every environment has DICOM among its relevant data (small scale and above cycle through it
            # anyway); distractors follow the same rule
            group[0].formats = ["dicom", *group[0].formats[:1]]
