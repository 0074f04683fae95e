"""The user requests T of each environment, in both guidance styles, with what decides the answers.

A task names its target classes and maps every concept of the environment's vocabulary either to
one target class or to nothing (dropped). A dataset is relevant to a task exactly when it meets the
criterion the agents are given (:meth:`TaskSpec.meets_criterion`): images of the environment's
modality from human patients, labelled for classification, with classes that map onto every target
class. The planner never places a card that meets the criterion but cannot be materialised with
labelled pixels for every class, nor one whose match depends on reading "labelled for
classification" loosely (a multi-label card), so the key and the criterion always agree. The
requirement cue decides the acceptable FL algorithms (names as in the algorithm registry,
``fl/registry.json``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from environments.catalogue import DatasetCard
from environments.concepts import vocabulary

#: requirement cue -> acceptable algorithm names (the registry's cues agree; a test checks it)
REQUIREMENT_ALGORITHMS: dict[str, tuple[str, ...]] = {
    "baseline": ("FedAvg",),
    "label_skew": ("FedLC", "FedAvgM", "SCAFFOLD", "MOON", "FedDyn", "CCVR"),
    "feature_shift": ("FedBN", "FedAP", "pFedFDA"),
    "personalisation": (
        "FedPer", "FedRep", "LG-FedAvg", "Ditto", "APFL", "FedBABU", "FedRoD", "pFedMe", "Per-FedAvg",
        "FedALA", "FedPAC", "pFedSim", "FedFomo", "FedAS", "FLUTE", "kNN-Per", "FedEM", "pFedHN",
        "pFedLA", "CFL", "MetaFed",
    ),
    "unseen_site": ("FedSR", "ADCOL", "FedIIR"),
    "stragglers": ("FedProx",),
    "heterogeneous_architectures": ("FedProto", "FedMD"),
}

#: the organ each environment's tasks are about, spelt as the data cards' ``body_part``
BODY_PART: dict[str, str] = {"dermatoscopy": "skin", "ultrasound": "breast", "fundus": "retina",
                             "histopathology": "breast", "mri": "brain", "xray": "chest"}

#: how a requirement reads in a user's request
REQUIREMENT_TEXT: dict[str, str] = {
    "baseline": "The hospitals' data are broadly similar and nobody has special requirements; a standard, well-understood approach is preferred.",
    "label_skew": "The hospitals see very different proportions of each class (some have almost no positive cases), and we want one shared model that is not biased towards the majority class.",
    "feature_shift": "Each hospital uses different scanners/cameras and acquisition settings, so image appearance differs between sites; each site may keep its own normalisation statistics.",
    "personalisation": "Each hospital wants its own model, tuned to its own patients, while still benefiting from the others.",
    "unseen_site": "The final model must work at new hospitals that take no part in training.",
    "stragglers": "Some hospitals have slow, unreliable machines that often finish only part of their local training in a round.",
    "heterogeneous_architectures": "The hospitals run different network architectures and cannot share model weights directly.",
}


class TaskSpec(BaseModel):
    """One user request of one environment."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    environment: str
    title: str
    task_type: str = "classification"
    target_classes: list[str] = Field(min_length=2)
    #: concept -> target class; concepts not listed are dropped
    concept_to_target: dict[str, str]
    requirement: str
    #: the organ the images show; part of the criterion (a thyroid ultrasound set does not fit a breast task)
    body_part: str
    image_size: int
    colour: bool
    #: a phrase that tells a reader how ambiguous classes map, part of both requests
    class_note: str = ""

    @property
    def acceptable_algorithms(self) -> list[str]:
        """The algorithms that fit the requirement and this benchmark can train (an untrainable
        choice could never be run by S4, so it is never an acceptable S3 answer)."""
        from fl.registry import query

        trainable = {a.name for a in query(executable=True)}
        return [a for a in REQUIREMENT_ALGORITHMS[self.requirement] if a in trainable]

    def target_of(self, concept: str | None) -> str | None:
        return None if concept is None else self.concept_to_target.get(concept)

    def covers_targets(self, card: DatasetCard) -> bool:
        """The card's classes can be mapped onto every target class."""
        covered = {self.target_of(c) for c in card.class_concepts.values()}
        return set(self.target_classes) <= covered

    def meets_criterion(self, card: DatasetCard) -> bool:
        """The criterion as the agents read it (C1's prompt, step 2 of the fine request): images of this
        modality from human patients, labelled for classification, classes that cover every target class."""
        return (card.is_classification and card.modality == self.environment and card.species == "human"
                and card.body_part == self.body_part and bool(card.classes) and self.covers_targets(card))

    def criterion_is_ambiguous(self, card: DatasetCard) -> bool:
        """A careful reader could argue either way: a human multi-label card of this modality whose
        labels cover every target class is "labelled for classification" in the loose sense only."""
        return (not self.meets_criterion(card) and "multi_label_classification" in card.task_types
                and card.modality == self.environment and card.species == "human"
                and card.body_part == self.body_part and self.covers_targets(card))

    def is_relevant(self, card: DatasetCard) -> bool:
        """The answer key's relevance: the stated criterion, nothing else (see :func:`placeable`)."""
        return self.meets_criterion(card)

    def gold_mapping(self, class_concepts: dict[str, str | None]) -> dict[str, str | None]:
        """Site class name -> target class (None: drop the class)."""
        return {name: self.target_of(concept) for name, concept in class_concepts.items()}

    def request(self, guidance: str) -> str:
        """The user request T in the ``fine`` (step by step) or ``goal`` (goal only) style."""
        modality = self.environment.replace("xray", "X-ray").replace("mri", "MRI")
        targets = ", ".join(self.target_classes)
        need = REQUIREMENT_TEXT[self.requirement]
        note = f" {self.class_note}" if self.class_note else ""
        if guidance == "goal":
            return (f"I want to train a {self.title} model on {modality} images of the {self.body_part}, "
                    f"with classes: {targets}.{note} {need}")
        if guidance != "fine":
            raise ValueError(f"guidance must be 'fine' or 'goal', not {guidance!r}")
        return (
            f"Goal: train a {self.title} model on {modality} images of the {self.body_part} with federated learning.\n"
            f"1. Extract the requirements: modality {modality}, task type classification, target classes "
            f"[{targets}].{note}\n"
            "2. Ask every hospital to read its data cards and report each local dataset that matches: "
            f"{modality} images of the {self.body_part} of human patients, labelled for classification with classes that cover {targets}. "
            "Segmentation, registration, unlabelled, animal and other-modality datasets do not match.\n"
            "3. Approve exactly the hospitals that reported at least one matching dataset; release the others.\n"
            "4. At each approved hospital, copy the matching datasets into the work area, organise them into one "
            "folder per class, remove non-image and corrupt files, convert every image to PNG at "
            f"{self.image_size}x{self.image_size} ({'RGB' if self.colour else 'greyscale'}), and remove "
            "near-duplicates, off-topic images and images with wrong labels.\n"
            f"5. Map each local class name to one of [{targets}] or drop it, and rebuild the dataset with exactly "
            "these class folders.\n"
            f"6. Choose the federated learning algorithm from the registry that fits this requirement: {need}\n"
            "7. Distribute the configuration, start federated training and report its metrics."
        )


def _task(environment: str, task_id: str, title: str, targets: dict[str, list[str]], requirement: str,
          class_note: str = "") -> TaskSpec:
    from environments.pools import native_shape

    size, colour = native_shape(environment)
    standard = {28: 32, 64: 64}[size]
    vocab = vocabulary(environment)
    mapping = {}
    for target, concepts in targets.items():
        for concept in concepts:
            vocab.concept(concept)
            mapping[concept] = target
    return TaskSpec(
        task_id=task_id,
        environment=environment,
        body_part=BODY_PART[environment],
        title=title,
        target_classes=list(targets),
        concept_to_target=mapping,
        requirement=requirement,
        image_size=standard,
        colour=colour,
        class_note=class_note,
    )


_DERM_MALIGNANT = ["melanoma", "basal_cell_carcinoma", "actinic_keratosis", "squamous_cell_carcinoma", "malignant_lesion"]
_DERM_BENIGN = ["naevus", "seborrhoeic_keratosis", "dermatofibroma", "vascular_lesion", "benign_lesion"]
_BREAK_BENIGN = ["benign_breast_tissue", "adenosis", "fibroadenoma", "phyllodes_tumour", "tubular_adenoma"]
_BREAK_MALIGNANT = ["malignant_breast_tissue", "ductal_carcinoma", "lobular_carcinoma", "mucinous_carcinoma", "papillary_carcinoma"]
_PNEUMONIA = ["pneumonia", "bacterial_pneumonia", "viral_pneumonia", "covid19_pneumonia"]
_HISTO_NOTE = ("Normal breast tissue, benign lesions and benign tumour subtypes (adenosis, fibroadenoma, phyllodes "
               "tumour, tubular adenoma) are benign, as are patches negative for carcinoma (e.g. IDC-negative); every "
               "carcinoma, in situ or invasive (ductal, lobular, mucinous, papillary), is malignant.")
_PNEUMONIA_NOTE = ("Bacterial, viral and COVID-19 pneumonia all count as pneumonia, as does a class the data card "
                   "describes as other (non-COVID) pneumonia or lung infection; normal (healthy, no finding) "
                   "chests are normal.")

TASKS: tuple[TaskSpec, ...] = (
    _task("dermatoscopy", "derm-skin-cancer", "binary skin-cancer detection",
          {"benign": _DERM_BENIGN, "malignant": _DERM_MALIGNANT}, "feature_shift",
          "Melanoma, basal and squamous cell carcinoma and actinic keratosis (with intraepithelial carcinoma) count "
          "as malignant; naevi (atypical naevi included), seborrhoeic and other benign keratoses, dermatofibromas "
          "and vascular lesions as benign. Classes labelled only 'benign' or 'malignant' keep that meaning."),
    _task("dermatoscopy", "derm-melanoma-naevus", "melanoma versus naevus",
          {"melanoma": ["melanoma"], "naevus": ["naevus"]}, "personalisation",
          "Atypical naevi count as naevus; a class labelled 'malignant' counts as melanoma only when its data card "
          "says it holds only melanomas. Every other class is left out: other lesion types, classes labelled only "
          "'benign' and other 'malignant' classes."),
    _task("dermatoscopy", "derm-melanoma-benign", "melanoma versus benign-lesion classification",
          {"melanoma": ["melanoma"], "benign": _DERM_BENIGN}, "label_skew",
          "Naevi (atypical naevi included), seborrhoeic and other benign keratoses, dermatofibromas, vascular "
          "lesions and classes labelled only 'benign' are benign. A class labelled 'malignant' counts as melanoma "
          "only when its data card says it holds only melanomas; otherwise it is left out, as are the other "
          "malignant lesions (basal and squamous cell carcinoma, actinic keratosis)."),
    _task("ultrasound", "us-breast-malignancy", "breast-malignancy detection",
          {"malignant": ["malignant_breast_lesion"], "non_malignant": ["benign_breast_lesion", "normal_breast"]},
          "feature_shift", "Normal scans and benign lesions both count as non_malignant."),
    _task("ultrasound", "us-benign-malignant", "benign versus malignant breast-lesion classification",
          {"benign": ["benign_breast_lesion"], "malignant": ["malignant_breast_lesion"]}, "label_skew",
          "Scans without a lesion (normal) are left out."),
    _task("ultrasound", "us-lesion-personal", "per-hospital breast-lesion classification",
          {"benign": ["benign_breast_lesion"], "malignant": ["malignant_breast_lesion"]}, "personalisation",
          "Scans without a lesion (normal) are left out."),
    _task("fundus", "fundus-dr-grading", "diabetic-retinopathy grading",
          {f"grade_{k}": [f"dr_grade_{k}"] + (["normal_fundus"] if k == 0 else []) for k in range(5)}, "label_skew",
          "Grades follow the international scale: 0 no DR (a normal fundus), 1 mild, 2 moderate, 3 severe "
          "non-proliferative, 4 proliferative."),
    _task("fundus", "fundus-referable-dr", "referable diabetic-retinopathy detection",
          {"non_referable": ["dr_grade_0", "normal_fundus", "dr_grade_1", "dr_non_referable"],
           "referable": ["dr_grade_2", "dr_grade_3", "dr_grade_4", "dr_referable"]}, "feature_shift",
          "Grades 0-1 (a normal fundus is grade 0) are non_referable, grades 2-4 and 'referable DR' are referable; "
          "a label that only says 'DR present' is too vague and is left out."),
    _task("fundus", "fundus-dr-screening", "diabetic-retinopathy screening",
          {"no_dr": ["dr_grade_0", "normal_fundus"], "dr": ["dr_grade_1", "dr_grade_2", "dr_grade_3", "dr_grade_4", "dr_any", "dr_referable"]},
          "unseen_site", "Grade 0 and a normal fundus are no_dr; any grade from 1 to 4, 'referable DR' and a label "
          "that only says 'DR present' count as dr; 'non-referable' labels mix grades 0 and 1 and are left out."),
    _task("histopathology", "histo-breast-cancer", "binary breast-cancer detection",
          {"benign": _BREAK_BENIGN, "malignant": _BREAK_MALIGNANT}, "feature_shift",
          _HISTO_NOTE),
    _task("histopathology", "histo-breast-cancer-personal", "per-hospital breast-cancer detection",
          {"benign": _BREAK_BENIGN, "malignant": _BREAK_MALIGNANT}, "personalisation",
          _HISTO_NOTE),
    _task("histopathology", "histo-breast-cancer-stragglers", "breast-cancer detection on unreliable sites",
          {"benign": _BREAK_BENIGN, "malignant": _BREAK_MALIGNANT}, "stragglers",
          _HISTO_NOTE),
    _task("mri", "mri-tumour-type", "brain-tumour classification",
          {"glioma": ["glioma"], "meningioma": ["meningioma"], "pituitary": ["pituitary_tumour"], "no_tumour": ["no_tumour"]},
          "feature_shift", "Scans without a tumour (normal, healthy) are no_tumour; a label that only says 'tumour' "
          "without its type is left out."),
    _task("mri", "mri-tumour-presence", "brain-tumour presence detection",
          {"tumour": ["glioma", "meningioma", "pituitary_tumour", "any_brain_tumour"], "no_tumour": ["no_tumour"]},
          "unseen_site", "Every tumour type, and a label that only says 'tumour' or 'yes', counts as tumour; scans "
          "without a tumour (normal, healthy, 'no') are no_tumour."),
    _task("mri", "mri-glioma-meningioma", "glioma versus meningioma",
          {"glioma": ["glioma"], "meningioma": ["meningioma"]}, "heterogeneous_architectures",
          "Other tumour types and tumour-free scans are left out."),
    _task("xray", "xray-pneumonia", "pneumonia detection",
          {"normal": ["normal_chest"], "pneumonia": _PNEUMONIA}, "baseline",
          _PNEUMONIA_NOTE),
    _task("xray", "xray-pneumonia-personal", "per-hospital pneumonia detection",
          {"normal": ["normal_chest"], "pneumonia": _PNEUMONIA}, "personalisation",
          _PNEUMONIA_NOTE),
    _task("xray", "xray-pneumonia-stragglers", "pneumonia detection on unreliable sites",
          {"normal": ["normal_chest"], "pneumonia": _PNEUMONIA}, "stragglers",
          _PNEUMONIA_NOTE),
)


def placeable(card: DatasetCard, tasks: list[TaskSpec]) -> bool:
    """Whether the planner may place ``card`` in an environment with ``tasks`` without the key and the
    criterion disagreeing: a card that meets the criterion for some task must be materialisable with
    real labelled pixels for every class, and no card may be ambiguous under the criterion."""
    if any(t.criterion_is_ambiguous(card) for t in tasks):
        return False
    return card.has_real_pixels or not any(t.meets_criterion(card) for t in tasks)


def tasks_for(environment: str) -> list[TaskSpec]:
    found = [t for t in TASKS if t.environment == environment]
    if not found:
        raise KeyError(f"no tasks for environment {environment!r}")
    return found


def task_by_id(task_id: str) -> TaskSpec:
    for task in TASKS:
        if task.task_id == task_id:
            return task
    raise KeyError(f"unknown task {task_id!r}")
