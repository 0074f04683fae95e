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

import zlib

import numpy as np
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

#: how a requirement reads in a user's request: many phrasings per cue, as clinicians, data stewards and FL
#: engineers write them (one is drawn per task and seed; none repeats a fixed template)
REQUIREMENT_PHRASINGS: dict[str, tuple[str, ...]] = {
    "baseline": (
        "The hospitals' data are broadly similar and nobody has special requirements; a standard, well-understood approach is preferred.",
        "Nothing unusual about the sites: comparable patients, comparable equipment, so the plain textbook method will do.",
        "We have no special constraints here; please stick with the conventional approach.",
        "All participating centres have similar case mixes and similar imaging, so keep it simple and use the default algorithm.",
        "The partners are homogeneous enough that a vanilla setup should be fine.",
        "Our radiologists see the sites as interchangeable; just go with the classic, well-established method.",
        "No site-specific needs have been raised, so the simplest standard federated setup is what we want.",
        "Data at the three sites look alike (roughly IID), so there is no reason for anything fancy.",
        "This is a pilot: nothing special is required, the standard baseline algorithm is preferred.",
        "The clinics are comparable in population and equipment; a default, well-understood aggregation is enough.",
        "Keep to the standard method; the sites' data are similar and we have no extra requirements.",
        "We just need a straightforward, conventional federated model; the hospitals are alike.",
    ),
    "label_skew": (
        "The hospitals see very different proportions of each class (some have almost no positive cases), and we want one shared model that is not biased towards the majority class.",
        "Case mix differs a lot between sites: one is a referral centre full of positives, the others see mostly negatives.",
        "Class prevalence is highly imbalanced across hospitals, and the shared model must not simply learn the majority class.",
        "Some clinics have only a handful of positive cases while others have hundreds; the label distribution is skewed per site.",
        "Expect strong class imbalance that varies by hospital; we need one global model that copes with it.",
        "The proportion of each diagnosis differs sharply from site to site, and a few sites barely see the rare class.",
        "Our label distributions are non-IID: every hospital has its own class ratio, some extremely skewed.",
        "One site is a screening programme (mostly normal), another a specialist clinic (mostly disease); the class balance could not be more different.",
        "Please account for label skew across centres: the minority class is rare at most of them.",
        "Prevalence ranges from a few percent to over half depending on the hospital, and we want a single model that is fair to the minority class.",
        "The sites' class distributions differ strongly, so a naive average would lean towards whatever class dominates.",
        "Positives are scarce at some hospitals and common at others; the shared model has to handle that imbalance.",
    ),
    "feature_shift": (
        "Each hospital uses different scanners/cameras and acquisition settings, so image appearance differs between sites; each site may keep its own normalisation statistics.",
        "The sites run devices from different vendors with different acquisition protocols, so the images look noticeably different.",
        "Image appearance varies between hospitals (contrast, brightness, resolution) because the equipment is not the same.",
        "Every centre has its own imaging hardware and settings; expect a domain shift in the pixels, not in the labels.",
        "Our partners use different machines from different manufacturers, which gives each site's images a distinct look.",
        "Intensity and colour characteristics differ from site to site because of different acquisition devices; local batch-norm statistics are fine.",
        "The images come from several scanner models with different protocols, so there is a clear feature shift across sites.",
        "Expect a device effect: each hospital's images carry the signature of its own camera or scanner.",
        "Acquisition differs per hospital (different vendors, different settings), so the input distribution shifts between sites.",
        "The pixels look different at every site because of their equipment and protocols, while the diagnoses mean the same thing.",
        "Different imaging devices and acquisition settings across sites change the appearance of the images considerably.",
        "Site-level differences are mostly technical: vendor, resolution, exposure and post-processing all vary by hospital.",
    ),
    "personalisation": (
        "Each hospital wants its own model, tuned to its own patients, while still benefiting from the others.",
        "Every site would like a personalised model adapted to its local population rather than one global model.",
        "The clinicians at each hospital want a model tailored to their own patients, with the federation only helping.",
        "We do not need one shared model: each centre should end up with its own local model that still learns from the others.",
        "Please deliver a site-specific model for every hospital; their patient populations are too different for one-size-fits-all.",
        "Each participating hospital asks for a customised model of its own, personalised to its caseload.",
        "The goal is per-hospital models: collaborative training, but every site keeps a version fitted to its own data.",
        "Every partner wants a model that performs best on its own patients, not an average model.",
        "Personalised federated learning is wanted: one model per site, each adapted locally.",
        "The hospitals will each deploy their own personal model, tuned locally, after learning together.",
        "Local performance matters most to each site, so each should get a model tailored to itself.",
        "Each clinic wants its own fine-tuned version, personalised to its patients, rather than a single global model.",
    ),
    "unseen_site": (
        "The final model must work at new hospitals that take no part in training.",
        "The model will be rolled out to other clinics later that never contribute data, so it has to generalise to unseen sites.",
        "We plan to deploy at hospitals outside the federation, so out-of-distribution robustness to new sites is essential.",
        "It must perform at centres it has never seen; those sites will not be part of training.",
        "Generalisation to new hospitals is the priority: the model will be used at external sites with no training data.",
        "After training, the model goes to additional sites that did not participate, and it has to hold up there.",
        "Please optimise for unseen hospitals: the real test is at external centres joining after training.",
        "Future partner sites will only use the model, never train it, so it must generalise beyond the training hospitals.",
        "We need domain generalisation: the model will be evaluated at a held-out site not involved in training.",
        "The model is meant for new centres that will never send data, so it has to work out of the box there.",
        "What matters is how well the model transfers to hospitals that were not in the federation.",
        "Deployment targets include new sites outside the consortium; the model must generalise to them.",
    ),
    "stragglers": (
        "Some hospitals have slow, unreliable machines that often finish only part of their local training in a round.",
        "A few sites run on old hardware and frequently drop out or time out before finishing a round.",
        "Compute is limited and unreliable at some hospitals, so their updates are often partial or late.",
        "Several clinics have weak GPUs and flaky connections; they regularly return incomplete local work.",
        "Expect stragglers: some sites are slow and only complete a fraction of their local epochs per round.",
        "Two partners have intermittent connectivity and underpowered servers, so local training is often cut short.",
        "Some participants are unreliable: their machines are slow and may only do part of the local steps before the deadline.",
        "Hardware varies a lot; the slowest hospitals often cannot finish their local updates in time.",
        "Network and compute at some sites are poor, so clients frequently disconnect or send partial updates.",
        "Some sites can only spare a little compute each round and often stop early.",
        "The federation must tolerate slow clients that finish only some of their local iterations.",
        "Some hospitals' workstations are old and overloaded, so their local training regularly times out halfway.",
    ),
    "heterogeneous_architectures": (
        "The hospitals run different network architectures and cannot share model weights directly.",
        "Each site has its own model design (one a ResNet, another a small CNN), so weight averaging is impossible.",
        "The partners use heterogeneous models with different backbones; parameters cannot be exchanged one-to-one.",
        "Every hospital insists on its own architecture, so the federation has to work without sharing weights.",
        "Model heterogeneity is a given here: different networks at different sites, no common parameter space.",
        "The sites' models differ in structure and size, so we can only exchange knowledge, not weights.",
        "Local models are not the same architecture anywhere, so a method that shares predictions or prototypes is needed.",
        "Some hospitals have vendor-supplied networks of their own design that cannot be swapped for a common model.",
        "The participating centres deploy different neural network designs and cannot align their weights.",
        "Because each site keeps its own network type, plain parameter averaging is ruled out.",
        "Architectures differ across hospitals (CNNs of various depths), so a shared set of weights does not exist.",
        "Each partner trains a different kind of model; whatever we do must work across heterogeneous architectures.",
    ),
}

#: the first phrasing of each cue (what a federation's own request states; see federation/run.py)
REQUIREMENT_TEXT: dict[str, str] = {cue: texts[0] for cue, texts in REQUIREMENT_PHRASINGS.items()}

#: how a request names each environment's modality (clinicians' and engineers' words)
MODALITY_PHRASINGS: dict[str, tuple[str, ...]] = {
    "dermatoscopy": ("dermatoscopy", "dermoscopy", "dermoscopic", "dermatoscopic", "dermoscopic skin-lesion"),
    "ultrasound": ("ultrasound", "breast ultrasound", "sonography", "sonographic", "B-mode ultrasound"),
    "fundus": ("fundus", "colour fundus", "retinal fundus", "fundus photography", "fundus camera"),
    "histopathology": ("histopathology", "H&E histopathology", "histology", "histological", "H&E-stained histology"),
    "mri": ("MRI", "brain MRI", "magnetic resonance", "magnetic resonance imaging", "T1-weighted MRI"),
    "xray": ("X-ray", "chest X-ray", "radiograph", "chest radiograph", "CXR"),
}

#: goal-style openings: {title}, {modality}, {organ}
GOAL_OPENINGS: tuple[str, ...] = (
    "I want to train a {title} model on {modality} images of the {organ}",
    "We would like a {title} model trained on {modality} images of the {organ}",
    "Please build a {title} model from {modality} images of the {organ}",
    "Our hospitals need a {title} model for {modality} images of the {organ}",
    "Set up federated training of a {title} model on {modality} images of the {organ}",
    "Could you train a {title} model using {modality} images of the {organ}",
)
#: how the target classes are introduced (the list itself is always the exact class names)
CLASS_LEADS: tuple[str, ...] = (
    " with classes: {targets}.",
    "; the classes are: {targets}.",
    ", predicting these classes: {targets}.",
    ". Output classes: {targets}.",
    ". Use exactly these class names: {targets}.",
    ", with the label set: {targets}.",
)


def _phrasing_rng(task_id: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(task_id.encode("utf-8")), 7])

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

    def request(self, guidance: str, seed: int = 0) -> str:
        """The user request T in the ``fine`` (step by step) or ``goal`` (goal only) style.

        Its words are drawn from many phrasings by ``seed`` (the environment's): the modality's name, the
        opening, how the classes are introduced and how the requirement is put. Both styles of one task
        and seed share the draw; the class names, the organ and the note are always stated exactly.
        """
        if guidance not in ("fine", "goal"):
            raise ValueError(f"guidance must be 'fine' or 'goal', not {guidance!r}")
        rng = _phrasing_rng(self.task_id, seed)
        modality = str(rng.choice(MODALITY_PHRASINGS[self.environment]))
        need = str(rng.choice(REQUIREMENT_PHRASINGS[self.requirement]))
        opening = str(rng.choice(GOAL_OPENINGS))
        lead = str(rng.choice(CLASS_LEADS))
        targets = ", ".join(self.target_classes)
        note = f" {self.class_note}" if self.class_note else ""
        if guidance == "goal":
            head = opening.format(title=self.title, modality=modality, organ=self.body_part)
            return f"{head}{lead.format(targets=targets)}{note} {need}"
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
