"""Clinical concept vocabularies, one per environment.

A dataset card names its classes the way the public dataset spells them ("mel", "NV", "1"); each
class is tied to one *concept* from this vocabulary. The other names a site may use for a concept
(synonyms, abbreviations) are published ones only, each with its source (:class:`Term`): a label the
builder writes is either one of those, the card's own name, or a numeric code with a legend. Concepts are what tasks map to target classes
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


class Term(str):
    """A class name a site may use for a concept, with where it is published.

    A plain ``str`` to every reader (the builder writes it as a label); ``source`` names the public
    dataset, ontology or clinical usage that defines it, so an agent meeting it needs no legend.
    """

    source: str

    def __new__(cls, text: str, source: str) -> "Term":
        if not source.strip():
            raise ValueError(f"term {text!r} needs a source")
        term = super().__new__(cls, text)
        term.source = source
        return term


def _t(text: str, source: str) -> Term:
    return Term(text, source)


@dataclass(frozen=True)
class Concept:
    """One clinical concept: the pool labels that depict it and the published names sites use for it.

    ``synonyms`` and ``abbreviations`` hold only :class:`Term` s, names a public dataset, an ontology or
    common clinical usage gives the concept; the builder writes the first of each for the "synonym"
    and "abbreviation" label styles. A concept with no published abbreviation keeps its card's name.
    """

    name: str
    pool_classes: tuple[int, ...] = ()
    synonyms: tuple[Term, ...] = ()
    abbreviations: tuple[Term, ...] = ()

    def __post_init__(self) -> None:
        for term in self.synonyms + self.abbreviations:
            if not isinstance(term, Term):
                raise TypeError(f"{self.name}: {term!r} has no source (use Term)")

    @property
    def terms(self) -> tuple[Term, ...]:
        return self.synonyms + self.abbreviations


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


# sources, cited once
HAM = "HAM10000 (Tschandl et al., Sci Data 2018)"
ISIC17 = "ISIC 2017 challenge (Codella et al., ISBI 2018)"
ISIC19 = "ISIC 2019 challenge ground truth (Combalia et al. 2019)"
ISIC16 = "ISIC 2016 challenge part 3 (Gutman et al. 2016)"
SNOMED = "SNOMED CT preferred term"
CLINICAL = "common clinical abbreviation"
BUSI = "BUSI (Al-Dhabyani et al., Data in Brief 2020)"
ABUS = "TDSC-ABUS 2023 challenge labels B / M"
ICDR = "International Clinical DR severity scale (Wilkinson et al., Ophthalmology 2003)"
APTOS = "APTOS 2019 blindness detection (diagnosis 0-4: No DR, Mild, Moderate, Severe, Proliferative DR)"
RDR = "referable DR (Gulshan et al., JAMA 2016)"
BREAKHIS = "BreakHis (Spanhol et al., IEEE TBME 2016): class names and file-name codes"
IDC = "Breast Histopathology IDC (Janowczyk & Madabhushi, J Pathol Inform 2016)"
CHENG = "Figshare brain tumour (Cheng et al., PLoS ONE 2015)"
SARTAJ = "Brain Tumor Classification MRI (Bhuvaji et al. 2020)"
NICKPARVAR = "Brain Tumor MRI Dataset (Nickparvar 2021)"
BR35H = "Br35H brain tumour detection (Hamada 2020): folders yes / no"
KERMANY = "Kermany et al., Cell 2018 (NORMAL / PNEUMONIA; bacteria / virus in file names)"
NIH = "ChestX-ray14 (Wang et al., CVPR 2017)"
COVIDX = "COVIDx (Wang et al., Sci Rep 2020)"
CRD = "COVID-19 Radiography Database (Chowdhury et al., IEEE Access 2020)"

VOCABULARIES: dict[str, Vocabulary] = {
    # ISIC 2017 part 3 pool: 0 = not melanoma (naevus or seborrhoeic keratosis), 1 = melanoma.
    # Other malignant lesion types draw from the malignant pool, other benign ones from the benign.
    "dermatoscopy": _vocab(
        "dermatoscopy",
        ("not_melanoma", "melanoma"),
        Concept("melanoma", (1,), (_t("melanoma", ISIC17), _t("malignant melanoma", SNOMED)),
                (_t("mel", HAM), _t("MEL", ISIC19), _t("MM", CLINICAL + " (malignant melanoma)"))),
        Concept("naevus", (0,), (_t("nevus", ISIC17), _t("melanocytic nevus", HAM), _t("naevus", SNOMED + " (UK)")),
                (_t("nv", HAM), _t("NV", ISIC19))),
        Concept("seborrhoeic_keratosis", (0,), (_t("seborrheic keratosis", ISIC17),
                                                _t("benign keratosis", ISIC19)),
                (_t("bkl", HAM), _t("BKL", ISIC19), _t("SK", CLINICAL + " (seborrhoeic keratosis; Derm7pt)"))),
        Concept("basal_cell_carcinoma", (1,), (_t("basal cell carcinoma", ISIC19),),
                (_t("bcc", HAM), _t("BCC", ISIC19))),
        Concept("actinic_keratosis", (1,), (_t("actinic keratosis", ISIC19),
                                            _t("intraepithelial carcinoma", HAM + ": akiec")),
                (_t("akiec", HAM), _t("AK", ISIC19))),
        Concept("squamous_cell_carcinoma", (1,), (_t("squamous cell carcinoma", ISIC19),),
                (_t("SCC", ISIC19),)),
        Concept("dermatofibroma", (0,), (_t("dermatofibroma", ISIC19),), (_t("df", HAM), _t("DF", ISIC19))),
        Concept("vascular_lesion", (0,), (_t("vascular lesion", ISIC19), _t("angioma", HAM + ": vasc")),
                (_t("vasc", HAM), _t("VASC", ISIC19))),
        Concept("benign_lesion", (0,), (_t("benign", ISIC16), _t("non-malignant", SNOMED + " (benign neoplasm)"))),
        Concept("malignant_lesion", (1,), (_t("malignant", ISIC16), _t("skin cancer", SNOMED + " (malignant neoplasm of skin)"))),
        Concept("unknown_lesion"),
        Concept("inflammatory_dermatosis"),
    ),
    # BreastMNIST pool (from BUSI): 0 = malignant, 1 = normal or benign.
    "ultrasound": _vocab(
        "ultrasound",
        ("malignant", "normal_or_benign"),
        Concept("malignant_breast_lesion", (0,), (_t("malignant", BUSI), _t("carcinoma", SNOMED)), (_t("M", ABUS),)),
        Concept("benign_breast_lesion", (1,), (_t("benign", BUSI), _t("benign mass", SNOMED)), (_t("B", ABUS),)),
        Concept("normal_breast", (1,), (_t("normal", BUSI), _t("no lesion", "BrEaST-Lesions-USG (Pawlowska et al., Sci Data 2024)"))),
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
        Concept("dr_grade_0", (0,), (_t("No DR", APTOS), _t("no apparent retinopathy", ICDR),
                                     _t("No_DR", "Diabetic Retinopathy 224x224 Gaussian filtered (Kaggle)")),
                (_t("0", ICDR),)),
        Concept("dr_grade_1", (1,), (_t("mild NPDR", ICDR), _t("Mild", APTOS)), (_t("1", ICDR),)),
        Concept("dr_grade_2", (2,), (_t("moderate NPDR", ICDR), _t("Moderate", APTOS)), (_t("2", ICDR),)),
        Concept("dr_grade_3", (3,), (_t("severe NPDR", ICDR), _t("Severe", APTOS)), (_t("3", ICDR),)),
        Concept("dr_grade_4", (4,), (_t("proliferative DR", ICDR), _t("Proliferative DR", APTOS),
                                     _t("Proliferate_DR", "Diabetic Retinopathy 224x224 Gaussian filtered (Kaggle)")),
                (_t("4", ICDR), _t("PDR", CLINICAL + " (proliferative diabetic retinopathy)"))),
        Concept("dr_non_referable", (0, 1), (_t("non-referable DR", RDR),)),
        Concept("dr_referable", (2, 3, 4), (_t("referable DR", RDR),), (_t("RDR", RDR),)),
        Concept("dr_any", (1, 2, 3, 4), (_t("diabetic retinopathy", SNOMED),), (_t("DR", CLINICAL),)),
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
        Concept("benign_breast_tissue", (0,), (_t("benign", BREAKHIS), _t("non-malignant", SNOMED + " (benign neoplasm)")),
                (_t("B", BREAKHIS),)),
        Concept("malignant_breast_tissue", (1,), (_t("malignant", BREAKHIS), _t("carcinoma", SNOMED)),
                (_t("M", BREAKHIS),)),
        Concept("adenosis", (0,), (_t("adenosis", BREAKHIS),), (_t("A", BREAKHIS),)),
        Concept("fibroadenoma", (0,), (_t("fibroadenoma", BREAKHIS),), (_t("F", BREAKHIS),)),
        Concept("phyllodes_tumour", (0,), (_t("phyllodes tumor", BREAKHIS),), (_t("PT", BREAKHIS),)),
        Concept("tubular_adenoma", (0,), (_t("tubular adenoma", BREAKHIS),), (_t("TA", BREAKHIS),)),
        Concept("ductal_carcinoma", (1,), (_t("ductal carcinoma", BREAKHIS), _t("invasive ductal carcinoma", IDC)),
                (_t("DC", BREAKHIS), _t("IDC", IDC))),
        Concept("lobular_carcinoma", (1,), (_t("lobular carcinoma", BREAKHIS),), (_t("LC", BREAKHIS),)),
        Concept("mucinous_carcinoma", (1,), (_t("mucinous carcinoma", BREAKHIS),), (_t("MC", BREAKHIS),)),
        Concept("papillary_carcinoma", (1,), (_t("papillary carcinoma", BREAKHIS),), (_t("PC", BREAKHIS),)),
        Concept("colorectal_tissue_class"),
        Concept("lung_tissue_class"),
        Concept("lymph_node_metastasis"),
        Concept("prostate_grade"),
    ),
    # Brain tumour MRI pool: 0 glioma, 1 meningioma, 2 no tumour, 3 pituitary.
    "mri": _vocab(
        "mri",
        ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"),
        Concept("glioma", (0,), (_t("glioma", CHENG), _t("glioma tumor", SARTAJ))),
        Concept("meningioma", (1,), (_t("meningioma", CHENG), _t("meningioma tumor", SARTAJ))),
        Concept("no_tumour", (2,), (_t("no tumor", SARTAJ), _t("notumor", NICKPARVAR)), (_t("no", BR35H),)),
        Concept("pituitary_tumour", (3,), (_t("pituitary tumor", CHENG), _t("pituitary", NICKPARVAR))),
        Concept("any_brain_tumour", (0, 1, 3), (_t("brain tumor", "Brain Tumor Dataset (Viradiya, Kaggle)"),),
                (_t("yes", BR35H),)),
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
        Concept("normal_chest", (0,), (_t("normal", KERMANY), _t("No Finding", NIH))),
        Concept("pneumonia", (1,), (_t("pneumonia", KERMANY),), (_t("PNA", CLINICAL + " (pneumonia)"),)),
        Concept("bacterial_pneumonia", (1,), (_t("bacterial pneumonia", KERMANY), _t("bacteria", KERMANY))),
        Concept("viral_pneumonia", (1,), (_t("viral pneumonia", CRD), _t("virus", KERMANY))),
        Concept("covid19_pneumonia", (1,), (_t("COVID-19", COVIDX),), (_t("COVID", CRD),)),
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
