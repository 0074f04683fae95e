"""Clinical concept vocabularies, one per environment.

A dataset card names its classes the way the public dataset spells them ("mel", "NV", "1"); each
class is tied to one *concept* from this vocabulary. Concepts are what tasks map to target classes
and what image pools draw pixels for (``pool_classes``: the real pool's label values that depict
the concept). A concept with no pool classes has no labelled pixels here: datasets built on such
concepts are materialised with procedural images and can only ever be distractors.

This module is pure data plus lookups: no numpy, fast to import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ENVIRONMENTS: tuple[str, ...] = (
    "dermatoscopy",
    "ultrasound",
    "fundus",
    "histopathology",
    "mri",
    "xray",
)

#: image modalities a card may declare: the six environments plus the distractor modalities a real
#: catalogue mixes in (a CT set in the MRI catalogue, clinical photos among dermoscopy sets, ...)
KNOWN_MODALITIES: tuple[str, ...] = ENVIRONMENTS + (
    "ct",
    "oct",
    "clinical_photography",
    "endoscopy",
    "microscopy",
    "mammography",
    "pet",
)


@dataclass(frozen=True)
class Concept:
    """One clinical concept: the pool labels that depict it and the names sites use for it."""

    name: str
    pool_classes: tuple[int, ...] = ()
    synonyms: tuple[str, ...] = ()
    abbreviations: tuple[str, ...] = ()


@dataclass(frozen=True)
class Vocabulary:
    """The concepts of one environment and the real pool's class names."""

    environment: str
    pool_class_names: tuple[str, ...]
    concepts: dict[str, Concept] = field(default_factory=dict)

    def concept(self, name: str) -> Concept:
        try:
            return self.concepts[name]
        except KeyError:
            raise KeyError(f"unknown concept {name!r} for environment {self.environment!r}") from None

    def has_pixels(self, name: str) -> bool:
        return bool(self.concept(name).pool_classes)


def _vocab(environment: str, pool_class_names: tuple[str, ...], *concepts: Concept) -> Vocabulary:
    return Vocabulary(environment, pool_class_names, {c.name: c for c in concepts})


VOCABULARIES: dict[str, Vocabulary] = {
    # ISIC 2017 part 3 pool: 0 = not melanoma (naevus or seborrhoeic keratosis), 1 = melanoma.
    # Other malignant lesion types draw from the malignant pool, other benign ones from the benign.
    "dermatoscopy": _vocab(
        "dermatoscopy",
        ("not_melanoma", "melanoma"),
        Concept("melanoma", (1,), ("melanoma", "malignant melanoma", "MM"), ("mel", "MEL")),
        Concept("naevus", (0,), ("nevus", "naevus", "melanocytic nevus", "mole"), ("nv", "NV")),
        Concept("seborrhoeic_keratosis", (0,), ("seborrheic keratosis", "benign keratosis"), ("sk", "bkl", "BKL")),
        Concept("basal_cell_carcinoma", (1,), ("basal cell carcinoma",), ("bcc", "BCC")),
        Concept("actinic_keratosis", (1,), ("actinic keratosis", "intraepithelial carcinoma"), ("akiec", "AK")),
        Concept("squamous_cell_carcinoma", (1,), ("squamous cell carcinoma",), ("scc", "SCC")),
        Concept("dermatofibroma", (0,), ("dermatofibroma",), ("df", "DF")),
        Concept("vascular_lesion", (0,), ("vascular lesion", "angioma"), ("vasc", "VASC")),
        Concept("benign_lesion", (0,), ("benign", "non-malignant", "harmless"), ("ben", "B")),
        Concept("malignant_lesion", (1,), ("malignant", "cancer", "skin cancer"), ("mal", "M")),
        Concept("unknown_lesion"),
        Concept("inflammatory_dermatosis"),
    ),
    # BreastMNIST pool (from BUSI): 0 = malignant, 1 = normal or benign.
    "ultrasound": _vocab(
        "ultrasound",
        ("malignant", "normal_or_benign"),
        Concept("malignant_breast_lesion", (0,), ("malignant", "cancer", "carcinoma"), ("mal", "M")),
        Concept("benign_breast_lesion", (1,), ("benign", "benign mass", "fibroadenoma"), ("ben", "B")),
        Concept("normal_breast", (1,), ("normal", "no lesion", "healthy"), ("nor", "N")),
        Concept("thyroid_nodule"),
        Concept("liver_lesion"),
        Concept("fetal_plane"),
        Concept("cardiac_view"),
        Concept("kidney_finding"),
    ),
    # RetinaMNIST pool (from DeepDRiD): diabetic-retinopathy grade 0-4.
    "fundus": _vocab(
        "fundus",
        ("grade_0", "grade_1", "grade_2", "grade_3", "grade_4"),
        Concept("dr_grade_0", (0,), ("no DR", "no diabetic retinopathy", "No_DR"), ("0", "R0")),
        Concept("dr_grade_1", (1,), ("mild NPDR", "mild", "Mild"), ("1", "R1")),
        Concept("dr_grade_2", (2,), ("moderate NPDR", "moderate", "Moderate"), ("2", "R2")),
        Concept("dr_grade_3", (3,), ("severe NPDR", "severe", "Severe"), ("3", "R3")),
        Concept("dr_grade_4", (4,), ("proliferative DR", "proliferative", "Proliferate_DR"), ("4", "R4")),
        Concept("dr_non_referable", (0, 1), ("non-referable DR",), ("nrDR",)),
        Concept("dr_referable", (2, 3, 4), ("referable DR",), ("rDR",)),
        Concept("dr_any", (1, 2, 3, 4), ("diabetic retinopathy", "DR present"), ("DR",)),
        Concept("glaucoma"),
        Concept("cataract"),
        Concept("amd"),
        Concept("hypertensive_retinopathy"),
        Concept("normal_fundus"),
        Concept("other_retinal_disease"),
    ),
    # No real labelled pool: procedural H&E-like patches, 0 = benign, 1 = malignant.
    "histopathology": _vocab(
        "histopathology",
        ("benign", "malignant"),
        Concept("benign_breast_tissue", (0,), ("benign", "non-malignant", "normal tissue"), ("B", "ben")),
        Concept("malignant_breast_tissue", (1,), ("malignant", "carcinoma", "cancer"), ("M", "mal")),
        Concept("adenosis", (0,), ("adenosis",), ("A",)),
        Concept("fibroadenoma", (0,), ("fibroadenoma",), ("F",)),
        Concept("phyllodes_tumour", (0,), ("phyllodes tumor",), ("PT",)),
        Concept("tubular_adenoma", (0,), ("tubular adenoma",), ("TA",)),
        Concept("ductal_carcinoma", (1,), ("ductal carcinoma", "invasive ductal carcinoma"), ("DC", "IDC")),
        Concept("lobular_carcinoma", (1,), ("lobular carcinoma",), ("LC",)),
        Concept("mucinous_carcinoma", (1,), ("mucinous carcinoma",), ("MC",)),
        Concept("papillary_carcinoma", (1,), ("papillary carcinoma",), ("PC",)),
        Concept("colorectal_tissue_class"),
        Concept("lung_tissue_class"),
        Concept("lymph_node_metastasis"),
        Concept("prostate_grade"),
    ),
    # Brain tumour MRI pool: 0 glioma, 1 meningioma, 2 no tumour, 3 pituitary.
    "mri": _vocab(
        "mri",
        ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"),
        Concept("glioma", (0,), ("glioma", "glioma tumor"), ("gl", "G")),
        Concept("meningioma", (1,), ("meningioma", "meningioma tumor"), ("me", "M")),
        Concept("no_tumour", (2,), ("no tumor", "healthy", "normal"), ("no", "N")),
        Concept("pituitary_tumour", (3,), ("pituitary", "pituitary tumor", "pituitary adenoma"), ("pi", "P")),
        Concept("any_brain_tumour", (0, 1, 3), ("tumor", "tumour present", "yes"), ("T", "Y")),
        Concept("alzheimers_stage"),
        Concept("ms_lesion"),
        Concept("stroke_lesion"),
        Concept("knee_finding"),
        Concept("prostate_finding"),
        Concept("cardiac_finding"),
    ),
    # PneumoniaMNIST pool (Kermany): 0 normal, 1 pneumonia.
    "xray": _vocab(
        "xray",
        ("normal", "pneumonia"),
        Concept("normal_chest", (0,), ("normal", "no finding", "healthy"), ("N", "NOR")),
        Concept("pneumonia", (1,), ("pneumonia",), ("P", "PNA")),
        Concept("bacterial_pneumonia", (1,), ("bacterial pneumonia",), ("BAC",)),
        Concept("viral_pneumonia", (1,), ("viral pneumonia",), ("VIR",)),
        Concept("covid19_pneumonia", (1,), ("COVID-19", "covid"), ("COV",)),
        Concept("tuberculosis"),
        Concept("fracture"),
        Concept("thoracic_disease_other"),
        Concept("dental_finding"),
        Concept("knee_osteoarthritis_grade"),
    ),
}


def vocabulary(environment: str) -> Vocabulary:
    """The concept vocabulary of ``environment`` (one of :data:`ENVIRONMENTS`)."""
    try:
        return VOCABULARIES[environment]
    except KeyError:
        raise KeyError(f"unknown environment {environment!r}; known: {', '.join(ENVIRONMENTS)}") from None
