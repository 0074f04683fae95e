"""Clinical knowledge of the key-blind skyline baseline, as pure functions.

The skyline agent sees what an LLM agent sees (the user request, the data cards as
``read_data_cards`` returns them, class-folder names) and decides as an expert would. This module is
that expert's knowledge, written by hand: how radiologists, dermatologists, pathologists and
ophthalmologists name the classes of public datasets (HAM10000 / ISIC abbreviations, BUSI, the DR
grading scales, BreakHis subtypes, the brain-tumour MRI sets, Kermany and the COVID compilations),
what numeric codes mean when a card explains them, and how a user's class note regroups them.

A local class name is first read as a clinical *finding* (tags such as ``malignant``/``melanoma``,
or a set of diabetic-retinopathy grades on the international scale), then the finding is assigned
to a target class from the target's own meaning and the note's rules ("X count as T", "X are left
out", "Grades 0-1 are non_referable").

Its vocabulary is published vocabulary: every whole-label code (:data:`PUBLISHED_CODES`) names the
dataset paper, grading scale or clinical usage that defines it, and coded labels a card explains are
read through the card's legend, as an LLM would read them. Codes that no source publishes and no
legend explains stay unknown: the environment must explain them, the skyline does not guess.

Nothing here reads the answer key or imports the environment builder (a test checks the imports).
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

MODALITIES: tuple[str, ...] = ("dermatoscopy", "ultrasound", "fundus", "histopathology", "mri", "xray")
REQUIREMENTS: tuple[str, ...] = ("baseline", "label_skew", "feature_shift", "personalisation", "unseen_site",
                                 "stragglers", "heterogeneous_architectures")

# ------------------------------------------------------------------------------------------------
# request parsing
# ------------------------------------------------------------------------------------------------

_MODALITY_WORDS: tuple[tuple[str, str], ...] = (
    (r"dermatoscop\w*|dermoscop\w*", "dermatoscopy"),
    (r"ultrasound|sonograph\w*|ultrasonograph\w*", "ultrasound"),
    (r"fundus|fundoscop\w*|retinal photograph\w*", "fundus"),
    (r"histopatholog\w*|histolog\w*|h&e", "histopathology"),
    (r"mri|mr imag\w*|magnetic resonance", "mri"),
    (r"x-?ray|radiograph\w*|cxr", "xray"),
)

#: domain words that express each FL requirement, as clinicians and FL engineers use them (regular
#: expressions over lower-case text). Written from the vocabulary of the FL literature (non-IID label
#: skew, feature / domain shift, personalisation, domain generalisation, stragglers, model heterogeneity),
#: not from any request template; a request's cue is the one whose words it uses most.
_REQUIREMENT_CUES: dict[str, tuple[str, ...]] = {
    "baseline": (r"\bstandard\b", r"\bconventional\b", r"\bvanilla\b", r"\bdefault\b", r"\bplain\b",
                 r"\btextbook\b", r"\bclassic\b", r"\bwell[- ](?:understood|established|known)\b",
                 r"\bsimplest\b", r"\bkeep (?:it|the setup) (?:simple|standard)\b", r"\busual\b",
                 r"\bno (?:special|particular|extra)\b", r"\bnothing (?:special|unusual|out of the ordinary)\b",
                 r"\b(?:similar|alike|comparable|homogeneous|interchangeable|equivalent)\b", r"\biid\b",
                 r"\bfederated averaging\b|\bfedavg\b", r"\bstraightforward\b"),
    "label_skew": (r"\bimbalanc\w*|\bunbalanc\w*", r"\bskew\w*", r"\bprevalence\b", r"\bproportions?\b",
                   r"\bclass (?:distribution|balance|ratio|frequenc)\w*", r"\blabel (?:distribution|skew)\w*",
                   r"\bcase[- ]mix\b", r"\brare\b|\bscarce\b|\bhandful of\b", r"\bmajority class\b|\bminority\b",
                   r"\bpositives?\b(?! (?:and|or) negatives)", r"\bnon[- ]iid\b", r"\buneven\b",
                   r"\bshare of (?:disease|positive)\b", r"\bcommon class\b|\bdominat\w*",
                   r"\bnumbers? of cases per class\b|\bcases per class\b", r"\bdistribution of diagnoses\b",
                   r"\bclasses almost absent\b|\balmost absent\b"),
    "feature_shift": (r"\bscanners?\b", r"\bvendors?\b(?![- ]supplied)", r"\bcameras?\b", r"\bdevices?\b",
                      r"\bacquisition\b", r"\bprotocols?\b", r"\bequipment\b|\bhardware\b(?= and settings)",
                      r"\bmanufacturers?\b", r"\bappearance\b|\blook (?:noticeably )?(?:different|alike)\b",
                      r"\bbrightness\b|\bcontrast\b|\bcolou?r (?:balance|characteristics)\b|\bintensity\b",
                      r"\bstain\w*", r"\b(?:domain|feature|covariate) shift\b", r"\bimage statistics\b",
                      r"\bnormali[sz]ation statistics\b|\bbatch[- ]?norm\w*", r"\bexposure\b|\bresolution\b",
                      r"\bpixels?\b"),
    "personalisation": (r"\bpersonali[sz]\w*|\bpersonal models?\b", r"\btheir own (?:personal |local )?models?\b",
                        r"\btuned locally\b|\blocally tuned\b", r"\bits own (?:model|personal|local|fine)", r"\bown (?:local )?model\b",
                        r"\bmodel of its own\b|\bmodel for every hospital\b", r"\btailor\w*", r"\bcustomi[sz]\w*",
                        r"\bsite[- ]specific model\b|\bper[- ](?:hospital|site|clinic) models?\b",
                        r"\bone model per (?:site|hospital)\b", r"\b(?:locally|individually) (?:tuned|adapted)\b",
                        r"\badapted (?:to|for) (?:its|their|each)\b|\badapted locally\b",
                        r"\brather than (?:one|a|an) (?:single |shared |common )?(?:global|shared|common|average)",
                        r"\bbest on its own\b|\bfits its patients\b|\blocal performance\b"),
    "unseen_site": (r"\bunseen\b|\bnever (?:seen|trained on)\b", r"\bgenerali[sz]\w*", r"\bnew (?:hospitals?|sites?|centres?|centers?|clinics?)\b",
                    r"\bexternal (?:sites?|centres?|centers?|hospitals?)\b",
                    r"\b(?:take|took|takes) no part in training\b|\bnot (?:part of|involved in|in) (?:the )?(?:training|federation|this project)",
                    r"\b(?:never|not) (?:contribute|send|train)\b|\bcontribute no training data\b|\bno training data\b",
                    r"\bout[- ]of[- ]distribution\b", r"\bheld[- ]out site\b", r"\bdid not participate\b",
                    r"\btransfer\w* to\b", r"\bfuture (?:partner )?sites?\b|\bother (?:hospitals|clinics) (?:will|later)\b",
                    r"\boutside (?:the|this) (?:federation|consortium|project)\b", r"\brolled out\b|\badopt the model\b"),
    "stragglers": (r"\bstragglers?\b", r"\bslow\w*\b", r"\bunreliable\b|\bflaky\b|\bintermittent\b",
                   r"\bdrop(?:s|ping)? out\b|\bdisconnect\w*", r"\btimes? out\b|\btimeouts?\b|\bin time\b|\bdeadline\b",
                   r"\bpartial\b|\bincomplete\b|\bpart of (?:their|its) local\b|\bfraction of (?:their|its) local\b",
                   r"\bold hardware\b|\boutdated\b|\bunderpowered\b|\bweak (?:gpus?|compute|hardware)\b|\boverloaded\b",
                   r"\bcompute\b", r"\bcut short\b|\bstop early\b|\binterrupted\b|\bhalfway\b|\blag behind\b",
                   r"\bfail to finish\b|\bcannot finish\b|\bfinish only\b|\bonly (?:do|complete) (?:part|some)\b"),
    "heterogeneous_architectures": (r"\barchitectures?\b", r"\bmodel heterogeneity\b|\bheterogeneous models?\b",
                                    r"\b(?:cannot|can't|can not|not) (?:share|exchange|align|simply be averaged)\b.{0,20}\b(?:weights|parameters)\b",
                                    r"\bweights? (?:cannot|can't|is not possible)\b|\bsharing weights is not possible\b",
                                    r"\bbackbones?\b", r"\bresnets?\b|\bcnns?\b|\btransformers?\b",
                                    r"\b(?:network|model) (?:design|type|structure)s?\b|\bdesigns?\b|\bstructures?\b",
                                    r"\bweight averaging is impossible\b|\bparameter averaging is ruled out\b",
                                    r"\bprototypes?\b|\bshares? predictions\b|\bdistillation\b",
                                    r"\bdifferent (?:kind of|deep learning|neural) (?:models?|networks?)\b|\bkind of (?:model|neural network)\b",
                                    r"\bno common (?:model|parameter)\b"),
}
_CUE_PATTERNS: dict[str, tuple[re.Pattern[str], ...]] = {
    cue: tuple(re.compile(p) for p in patterns) for cue, patterns in _REQUIREMENT_CUES.items()
}

_BODY_PART_WORDS: tuple[tuple[str, str], ...] = (
    (r"breast|mamma", "breast"),
    (r"skin|melanom|naev|nevus|nevi\b|dermat|keratos", "skin"),
    (r"brain|gliom|meningiom|pituitar|intracranial|cerebr", "brain"),
    (r"retin|fundus|diabetic|\bdr\b|referable|grade_\d", "retina"),
    (r"chest|lung|pneumon|thora|pulmonar|tubercul", "chest"),
    (r"thyroid", "thyroid"),
    (r"prostat", "prostate"),
)
_DEFAULT_BODY_PART = {"dermatoscopy": "skin", "fundus": "retina"}

#: body-part names a card may use for the same organ
_BODY_PART_GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"breast", "mammary gland", "mammary"}),
    frozenset({"skin", "face"}),
    frozenset({"brain", "head"}),
    frozenset({"chest", "thorax", "lung", "lungs"}),
    frozenset({"retina", "eye", "fundus"}),
)


def normalise_modality(text: str) -> str | None:
    """One of :data:`MODALITIES` named in ``text`` (first match), or None."""
    low = (text or "").lower()
    found = []
    for pattern, modality in _MODALITY_WORDS:
        m = re.search(rf"(?<![a-z]){pattern}(?![a-z])", low)
        if m:
            found.append((m.start(), modality))
    return min(found)[1] if found else None


def requirement_of(text: str) -> str | None:
    """The FL requirement cue a requirement sentence expresses (most phrases matched), or None."""
    low = (text or "").lower()
    scores = {cue: sum(bool(p.search(low)) for p in patterns) for cue, patterns in _CUE_PATTERNS.items()}
    best = max(scores.values())
    if best == 0:
        return None
    return next(cue for cue in REQUIREMENTS if scores[cue] == best)


def infer_body_part(modality: str | None, targets: Iterable[str], title: str = "", note: str = "") -> str | None:
    """The organ a task is about: from its title, else its target names or note, else the modality."""
    for text in (title, " ".join(targets), note):
        low = (text or "").lower()
        for pattern, part in _BODY_PART_WORDS:
            if re.search(pattern, low):
                return part
    return _DEFAULT_BODY_PART.get(modality or "")


def _request_text(text: str) -> tuple[str, str | None]:
    """The request string inside ``text`` (plain, or read_task's JSON) and an environment hint."""
    stripped = (text or "").strip()
    hint = None
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            hint = data.get("environment") if isinstance(data.get("environment"), str) else None
            request = data.get("request", "")
            if isinstance(request, dict):
                request = request.get("fine") or request.get("goal") or next(iter(request.values()), "")
            return str(request), hint
    return text or "", hint


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z'\"(])", text.strip()) if s.strip()]


def parse_request(text: str) -> dict[str, Any]:
    """Modality, task type, target classes, requirement cue and class note of a user request.

    ``text`` is the request in the fine (numbered steps) or goal style, or read_task's JSON reply.
    Extra keys: ``title`` (what the model is for) and ``body_part`` (the organ, when it can be told).
    """
    request, hint = _request_text(text)
    title_m = re.search(r"\ban? (.+?) model (?:on|from|for|using|trained on)\b", request)
    title = title_m.group(1).strip() if title_m else ""
    modality_m = re.search(r"model (?:on|from|for|using|trained on) ([\w\-& ]+?) images", request)
    modality = normalise_modality(modality_m.group(1)) if modality_m else None
    modality = modality or normalise_modality(request) or normalise_modality(hint or "")

    targets: list[str] = []
    note = ""
    need = ""
    fine = re.search(r"target classes \[([^\]]*)\]\.?([^\n]*)", request)
    if fine:
        targets = [t.strip() for t in fine.group(1).split(",") if t.strip()]
        note = fine.group(2).strip()
        need_m = re.search(r"fits this requirement:\s*([^\n]+)", request)
        need = need_m.group(1).strip() if need_m else ""
    else:
        goal = re.search(r"\b(?:classes|class names|labels|label set|categories)(?: are| is)?:\s*([^.\n]+)\.([^\n]*)",
                         request, re.IGNORECASE)
        if goal:
            targets = [t.strip() for t in goal.group(1).split(",") if t.strip()]
            sentences = _sentences(goal.group(2))
            tail: list[str] = []
            while sentences and requirement_of(sentences[-1]):
                tail.insert(0, sentences.pop())
            note = " ".join(sentences).strip()
            need = " ".join(tail)
    requirement = requirement_of(need) or requirement_of(request) or "baseline"
    return {
        "modality": modality,
        "task_type": "classification",
        "target_classes": targets,
        "requirement": requirement,
        "class_note": note,
        "title": title,
        "body_part": infer_body_part(modality, targets, title, note),
    }


# ------------------------------------------------------------------------------------------------
# clinical findings
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """What a class label says about an image: clinical tags, and DR grades (international scale)."""

    tags: frozenset[str]
    grades: frozenset[int] | None = None

    @property
    def other(self) -> bool:
        """A finding outside every target vocabulary (another disease, a mixture, ungradable...)."""
        return "other" in self.tags


def _f(*tags: str, grades: Iterable[int] | None = None) -> Finding:
    return Finding(frozenset(tags), frozenset(grades) if grades is not None else None)


OTHER = _f("other")
NEUTRAL = None  # a word that says nothing about the class ("other", "lesions", "scans")

# skin lesions (dermatoscopy and clinical photographs). AK / AKIEC (actinic keratosis and
# intraepithelial carcinoma, Bowen's disease) is grouped with the malignant lesions, as ISIC does.
_MEL = _f("lesion", "malignant", "melanocytic", "melanoma")
_NAEVUS = _f("lesion", "benign", "melanocytic", "naevus")
_SK = _f("lesion", "benign", "keratinocytic", "seborrhoeic_keratosis")
_BCC = _f("lesion", "malignant", "carcinoma", "basal_cell_carcinoma")
_SCC = _f("lesion", "malignant", "carcinoma", "squamous_cell_carcinoma")
_AK = _f("lesion", "malignant", "premalignant", "actinic_keratosis")
_DF = _f("lesion", "benign", "dermatofibroma")
_VASC = _f("lesion", "benign", "vascular_lesion")
_LENTIGO = _f("lesion", "benign", "solar_lentigo")
_SKIN_CARCINOMA = _f("lesion", "malignant", "carcinoma")
_BENIGN = _f("lesion", "benign")
_MALIGNANT = _f("lesion", "malignant")
_NORMAL = _f("normal")
_NONMALIGNANT = _f("nonmalignant")

# breast histology
_H_BENIGN = _f("benign")
_H_MALIGNANT = _f("malignant")
_H_CARCINOMA = _f("malignant", "carcinoma")
_ADENOSIS = _f("benign", "adenosis")
_FIBROADENOMA = _f("benign", "fibroadenoma")
_PHYLLODES = _f("benign", "phyllodes_tumour")
_TUBULAR = _f("benign", "tubular_adenoma")
_DUCTAL = _f("malignant", "carcinoma", "ductal_carcinoma")
_DCIS = _f("malignant", "carcinoma", "ductal_carcinoma", "in_situ")
_LOBULAR = _f("malignant", "carcinoma", "lobular_carcinoma")
_MUCINOUS = _f("malignant", "carcinoma", "mucinous_carcinoma")
_PAPILLARY = _f("malignant", "carcinoma", "papillary_carcinoma")
_IN_SITU = _f("malignant", "carcinoma", "in_situ")
_INVASIVE = _f("malignant", "carcinoma", "invasive")
_ATYPIA = _f("other", "atypia")  # FEA / ADH: high-risk, neither benign nor carcinoma

# brain MRI
_TUMOUR = _f("tumour")
_GLIOMA = _f("tumour", "glioma")
_MENINGIOMA = _f("tumour", "meningioma")
_PITUITARY = _f("tumour", "pituitary")
_OTHER_TUMOUR = _f("tumour", "other_tumour_type")

# chest X-ray
_PNEUMONIA = _f("pneumonia")
_BACTERIAL = _f("pneumonia", "bacterial")
_VIRAL = _f("pneumonia", "viral")
_COVID = _f("pneumonia", "viral", "covid")
_FUNGAL = _f("pneumonia", "fungal")
_OPACITY = _f("lung_opacity")  # resolved against the card: the positive class of a pneumonia set


def _grade(*grades: int) -> Finding:
    return _f("dr", grades=grades)


_ANY_DR = _grade(1, 2, 3, 4)
#: a normal (healthy) fundus shows no retinopathy: DR grade 0. A class that only rules out another
#: disease ("non-glaucoma", "no AMD", "hypertensive retinopathy absent") says nothing about DR.
_NORMAL_FUNDUS = _f("dr", "normal", grades=(0,))

Term = tuple[str, "Finding | None | Callable[[re.Match[str]], Finding | None]"]

# sources of the published codes below, cited once
_HAM = "HAM10000 (Tschandl et al., Sci Data 2018)"
_ISIC19 = "ISIC 2019 challenge (Combalia et al. 2019)"
_PAD = "PAD-UFES-20 (Pacheco et al., Data in Brief 2020)"
_DERM7PT = "Derm7pt (Kawahara et al., IEEE JBHI 2019)"
_DERMOFIT = "Dermofit Image Library (Ballerini et al. 2013)"
_CLIN = "common clinical abbreviation"
_ABUS = "TDSC-ABUS 2023 challenge (B / M)"
_ICDR = "International Clinical DR severity scale (Wilkinson et al. 2003)"
_AIROGS = "AIROGS (de Vente et al., IEEE TMI 2023): referable / no referable glaucoma"
_BREAKHIS = "BreakHis (Spanhol et al., IEEE TBME 2016)"
_BRACS = "BRACS (Brancati et al., Database 2022)"
_IDC = "Breast Histopathology IDC (Janowczyk & Madabhushi 2016)"
_BR35H = "Br35H / Brain MRI Images for Brain Tumor Detection: folders yes / no"
_ADNI = "ADNI diagnostic groups (adni.loni.usc.edu)"

#: whole-label codes as public datasets, ontologies and clinicians publish them, per domain:
#: (domain, code, finding, source). A label is looked up here (case-insensitively) before phrases.
#: Written from the sources named, never from the environment builder's tables.
PUBLISHED_CODES: tuple[tuple[str, str, Finding | None, str], ...] = (
    ("skin", "mel", _MEL, _HAM), ("skin", "nv", _NAEVUS, _HAM), ("skin", "bkl", _SK, _HAM),
    ("skin", "bcc", _BCC, _HAM), ("skin", "akiec", _AK, _HAM), ("skin", "df", _DF, _HAM),
    ("skin", "vasc", _VASC, _HAM), ("skin", "ak", _AK, _ISIC19), ("skin", "scc", _SCC, _ISIC19),
    ("skin", "unk", NEUTRAL, _ISIC19), ("skin", "mm", _MEL, _CLIN + " (malignant melanoma)"),
    ("skin", "nev", _NAEVUS, _PAD), ("skin", "sek", _SK, _PAD), ("skin", "ack", _AK, _PAD),
    ("skin", "sk", _SK, _DERM7PT), ("skin", "misc", NEUTRAL, _DERM7PT),
    ("skin", "ml", _NAEVUS, _DERMOFIT + " (melanocytic naevus)"), ("skin", "iec", _AK, _DERMOFIT),
    ("skin", "pyo", _VASC, _DERMOFIT + " (pyogenic granuloma)"),
    ("us", "b", _BENIGN, _ABUS), ("us", "m", _MALIGNANT, _ABUS),
    ("retina", "dr", _ANY_DR, _CLIN + " (diabetic retinopathy)"),
    ("retina", "npdr", _grade(1, 2, 3), _ICDR), ("retina", "pdr", _grade(4), _ICDR),
    ("retina", "rdr", _grade(2, 3, 4), "referable DR (Gulshan et al., JAMA 2016)"),
    ("retina", "rg", OTHER, _AIROGS), ("retina", "nrg", OTHER, _AIROGS),
    ("histo", "b", _H_BENIGN, _BREAKHIS), ("histo", "m", _H_MALIGNANT, _BREAKHIS),
    ("histo", "a", _ADENOSIS, _BREAKHIS), ("histo", "f", _FIBROADENOMA, _BREAKHIS),
    ("histo", "pt", _PHYLLODES, _BREAKHIS), ("histo", "ta", _TUBULAR, _BREAKHIS),
    ("histo", "dc", _DUCTAL, _BREAKHIS), ("histo", "lc", _LOBULAR, _BREAKHIS),
    ("histo", "mc", _MUCINOUS, _BREAKHIS), ("histo", "pc", _PAPILLARY, _BREAKHIS),
    ("histo", "idc", _DUCTAL, _IDC), ("histo", "n", _NORMAL, _BRACS), ("histo", "pb", _H_BENIGN, _BRACS),
    ("histo", "udh", _H_BENIGN, _BRACS), ("histo", "fea", _ATYPIA, _BRACS), ("histo", "adh", _ATYPIA, _BRACS),
    ("histo", "dcis", _DCIS, _BRACS), ("histo", "ic", _INVASIVE, _BRACS),
    ("brain", "yes", _TUMOUR, _BR35H), ("brain", "no", _NORMAL, _BR35H),
    ("brain", "cn", OTHER, _ADNI), ("brain", "mci", OTHER, _ADNI), ("brain", "ad", OTHER, _ADNI),
    ("chest", "pna", _PNEUMONIA, _CLIN + " (pneumonia)"), ("chest", "tb", OTHER, _CLIN + " (tuberculosis)"),
)

_EXACT: dict[str, dict[str, Finding | None]] = {}
for _domain, _code, _finding, _source in PUBLISHED_CODES:
    _EXACT.setdefault(_domain, {})[_code] = _finding

#: ODIR's one-letter diagnoses (ODIR-5K and its Kaggle re-releases)
_ODIR_LETTERS: dict[str, Finding] = {"n": _NORMAL_FUNDUS, "d": _ANY_DR, "g": OTHER, "c": OTHER, "a": OTHER, "h": OTHER,
                                     "m": OTHER, "o": OTHER}

_COMMON_TERMS: list[Term] = [
    (r"\bsuspect\w*|\bungradabl\w*|\bungraded\b|\bpossible\b|\bborderline\b|\bindeterminate\b|\buncertain\b",
     OTHER),
    ((r"\bothers?\b|\bmisc\w*|\bunknown\b|\bnone of the others\b|\brest\b|\blabels?\b|\bscans?\b|\bimages?\b"
     r"|\bcases?\b|\bpatches\b|\btypes?\b|\bsubtypes?\b"), NEUTRAL),
]

_PHRASES: dict[str, list[Term]] = {
    "skin": [
        (r"\blentigo maligna\w*", _MEL),
        (r"\bnon ?melanoma\w*|\bnot melanoma\b", OTHER),
        (r"\b(?:malignant )?melanomas?\b", _MEL),
        (r"\bn(?:a)?ev(?:us|i)\b|\bmoles?\b", _NAEVUS),
        (r"\bseborrh\w* keratos[ie]s\b|\b(?:pigmented )?benign keratos[ie]s\b|\blichen planus like keratos[ie]s\b",
         _SK),
        (r"\bbasal cell carcinomas?\b|\bbasaliomas?\b", _BCC),
        (r"\bsquamous cell carcinomas?\b", _SCC),
        (r"\b(?:actinic|solar) keratos[ie]s\b|\bintraepithelial carcinomas?\b|\bbowen\w*", _AK),
        (r"\bdermatofibromas?\b", _DF),
        ((r"\bvascular (?:lesions?|tumou?rs?)\b|\b(?:haem|hem)?angiomas?\b|\bangiokeratomas?\b"
         r"|\bpyogenic granulomas?\b"), _VASC),
        (r"\bsolar lentig\w*|\blentig\w*", _LENTIGO),
        (r"\bcarcinomas?\b", _SKIN_CARCINOMA),
        (r"\bnon ?malignant\b|\bbenign\b|\bharmless\b", _BENIGN),
        (r"\bmalignan\w*|\bcancers?\b", _MALIGNANT),
        ((r"\bnon ?neoplastic\b|\binflammat\w*|\bdermatitis\b|\beczema\b|\bacne\b|\bpsoriasis\b|\binfection\w*"
         r"|\bmonkeypox\b|\bmpox\b"), OTHER),
        (r"\blesions?\b", NEUTRAL),
    ],
    "us": [
        (r"\bno lesions?\b|\bwithout (?:a )?lesions?\b|\blesion ?free\b|\bnormal\b|\bhealthy\b", _NORMAL),
        ((r"\bbenign(?: mass(?:es)?| lesions?)?\b|\bfibroadenomas?\b|\b\w*cystadenomas?\b|\bteratomas?\b"
         r"|\b(?:simple |chocolate )?cysts?\b|\bendometriomas?\b|\btheca cell tumou?rs?\b|\bfibromas?\b"), _BENIGN),
        (r"\bmalignan\w*|\bcancers?\b|\b\w*carcinomas?\b|\bsarcomas?\b", _MALIGNANT),
        (r"\blesions?\b", NEUTRAL),
    ],
    "retina": [
        (r"\bblur\w*|\bpoor quality\b", OTHER),
        (r"\bhypertensi\w*(?: retinopathy)?\b", OTHER),
        (r"\bno (?:apparent )?(?:dr|(?:diabetic )?retinopathy)\b|\bno ?dr\b|\bwithout (?:dr|diabetic retinopathy)\b",
         _grade(0)),
        (r"\bnon ?referable(?: dr| diabetic retinopathy)?\b", _grade(0, 1)),
        (r"\breferable(?: dr| diabetic retinopathy)?\b", _grade(2, 3, 4)),
        (r"\bmild(?: npdr| non ?proliferative)?(?: dr| diabetic retinopathy)?\b", _grade(1)),
        (r"\bmoderate(?: npdr| non ?proliferative)?(?: dr| diabetic retinopathy)?\b", _grade(2)),
        (r"\bsevere(?: npdr| non ?proliferative)?(?: dr| diabetic retinopathy)?\b|\bmany lesions\b", _grade(3)),
        (r"\bnon ?proliferative(?: dr| diabetic retinopathy)?\b|\bnpdr\b", _grade(1, 2, 3)),
        (r"\bproliferat\w*(?: dr| diabetic retinopathy)?\b|\bpdr\b|\bneovessels?\b|\bneovasculari[sz]ation\b",
         _grade(4)),
        (r"\b(?:dr|grade|level) ?([0-4])\b", lambda m: _grade(int(m.group(1)))),
        (r"\bdiabetic retinopathy\b|\bdiabet\w*|\bdr present\b|\bdr\b", _ANY_DR),
        (r"\bnormal\b|\bhealthy\b|\bno findings?\b", _NORMAL_FUNDUS),
        ((r"\bglaucom\w*|\bcataract\w*|\bamd\b|\bmacular\w*|\bmyopi\w*|\bdrusen\b|\bretinal detachment\b"
         r"|\bretinitis\b|\boedema\b|\bedema\b|\bocclusion\b|\btoxoplasm\w*"), OTHER),
    ],
    "histo": [
        (r"\bnormal(?: breast)?(?: tissues?)?\b", _NORMAL),
        (r"\bidc ?neg\w*|\bnon ?idc\b", _NONMALIGNANT),
        (r"\bidc ?pos\w*", _DUCTAL),
        (r"\bductal carcinoma in situ\b|\bdcis\b", _DCIS),
        (r"\b(?:invasive )?ductal carcinomas?\b", _DUCTAL),
        (r"\b(?:invasive )?lobular carcinomas?\b", _LOBULAR),
        (r"\bmucinous carcinomas?\b|\bcolloid carcinomas?\b", _MUCINOUS),
        (r"\bpapillary carcinomas?\b", _PAPILLARY),
        (r"\bin ?situ(?: carcinomas?)?\b", _IN_SITU),
        (r"\binvasive(?: carcinomas?)?\b", _INVASIVE),
        (r"\bfibroadenomas?\b", _FIBROADENOMA),
        (r"\badenosis\b", _ADENOSIS),
        (r"\bphyllodes(?: tumou?rs?)?\b", _PHYLLODES),
        (r"\btubular adenomas?\b", _TUBULAR),
        (r"\batypi\w*", _ATYPIA),
        (r"\b(?:usual )?(?:ductal )?hyperplasia\b", _H_BENIGN),
        # the Nottingham grade (I-III) is given to invasive carcinomas only
        (r"\bgrade ?(?:[123]|i{1,3})\b", _DUCTAL),
        (r"\bcarcinomas?\b", _H_CARCINOMA),
        (r"\bnon ?malignant\b|\bnon ?cancer\w*|\bbenign\b", _H_BENIGN),
        (r"\bmalignan\w*|\bcancers?\b", _H_MALIGNANT),
        (r"\btumou?rs?\b|\blesions?\b", NEUTRAL),
    ],
    "brain": [
        (r"\bnon ?demented\b|\bdement\w*|\balzheimer\w*|\bcognitiv\w*", OTHER),
        (r"\bno ?tumou?rs?\b|\bnon ?tumou?r\w*|\btumou?r ?free\b|\bwithout (?:a )?tumou?rs?\b|\bhealthy\b|\bnormal\b",
         _NORMAL),
        (r"\b\w*gliom\w*|\bastroc[iy]tom\w*|\bglioblastom\w*|\bependymom\w*|\bependimom\w*|\bgbm\b", _GLIOMA),
        (r"\bmeningiom\w*", _MENINGIOMA),
        (r"\bpituitar\w*(?: tumou?rs?| adenomas?| macroadenomas?)?|\bprolactinom\w*", _PITUITARY),
        ((r"\bneuroc[iy]tom\w*|\bschwannom\w*|\bneurinom\w*|\bacoustic neuromas?\b|\bmetasta\w*|\blymphom\w*"
         r"|\bmedulloblastom\w*|\bcraniopharyngiom\w*"), _OTHER_TUMOUR),
        ((r"\babscess\w*|\bcysts?\b|\bcistos?\b|\bencephalopath\w*|\bencefalopat\w*|\blesions?\b|\blesoes\b"
         r"|\bstroke\b|\bmultiple sclerosis\b|\binfarct\w*|\bhaemorrhag\w*|\bhemorrhag\w*"), OTHER),
        (r"\bbrain tumou?rs?\b|\btumou?rs?(?: present)?\b|\btumorous\b|\btumoral\b", _TUMOUR),
    ],
    "chest": [
        (r"\bno lung opacity\b|\bnot normal\b|\babnormal\w*", OTHER),
        (r"\bnon ?covid\w*(?: ?19)?\b", NEUTRAL),
        (r"\bno findings?\b|\bnormal\b|\bhealthy\b|\bunremarkable\b|\bnon ?nodules?\b", _NORMAL),
        (r"\bcovid\w*(?: ?19)?\b|\bsars ?cov ?2\b|\bcorona\w*", _COVID),
        (r"\bbacteri\w*|\bstreptococc\w*|\bstaphylococc\w*|\bklebsiella\b|\bmycoplasma\b|\blegionella\b",
         _BACTERIAL),
        (r"\bvir(?:al|us|uses)\b|\bsars\b|\bmers(?: ?cov)?\b|\binfluenza\b", _VIRAL),
        (r"\bfung\w*|\bpneumocystis\b|\baspergill\w*", _FUNGAL),
        (r"\bpneumonias?\b|\bpnemonia\b|\bpneumonitis\b|\blung infections?\b|\bchest infections?\b", _PNEUMONIA),
        (r"\blung opacit\w*", _OPACITY),
        ((r"\btubercul\w*|\btb\b|\bnodules?\b|\bmass(?:es)?\b|\beffusion\w*|\bcardiomegal\w*|\batelecta\w*"
         r"|\bpneumothora\w*|\boedema\b|\bedema\b|\bemphysema\b|\bfibrosis\b|\bhernia\b|\bfractur\w*|\bcopd\b"
         r"|\btumou?rs?\b|\bsick\b|\bfindings?\b|\bdiseases?\b|\blesions?\b|\binfiltrat\w*|\bconsolidation\b"
         r"|\bpleural\w*|\bcardiomediastinum\b|\bsupport devices?\b"), OTHER),
    ],
}

#: a label read without any card or organ: only the words every specialty shares
_PHRASES["generic"] = [
    (r"\bno findings?\b|\bnormal\b|\bhealthy\b", _NORMAL),
    (r"\bnon ?malignant\b|\bbenign\b", _H_BENIGN),
    (r"\bmalignan\w*|\bcancers?\b|\bcarcinomas?\b", _H_MALIGNANT),
]

_DOMAIN_OF_MODALITY = {
    "dermatoscopy": "skin", "clinical_photography": "skin", "ultrasound": "us", "mammography": "us",
    "fundus": "retina", "oct": "retina", "histopathology": "histo", "microscopy": "histo", "mri": "brain",
    "ct": "brain", "xray": "chest",
}
_DOMAIN_OF_BODY_PART = {"skin": "skin", "breast": "us", "retina": "retina", "brain": "brain", "chest": "chest"}


def _normalise(text: str) -> str:
    """Lower case, accents stripped, CamelCase split, separators as single spaces."""
    text = unicodedata.normalize("NFKD", text or "")
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)
    text = text.lower()
    text = re.sub(r"[_\-/\\|:+]+", " ", text)
    text = re.sub(r"[^\w\s&'().,;]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _strip_index(name: str) -> str:
    """'0.3.DR1' -> 'DR1', '01_TUMOR' -> 'TUMOR' (numbered folder names)."""
    return re.sub(r"^\d+(?:\.\d+)*[._]\s*(?=[A-Za-z])", "", name.strip())


_COMPILED: dict[str, list[tuple[re.Pattern[str], Any]]] = {
    domain: [(re.compile(p), v) for p, v in terms + _COMMON_TERMS] for domain, terms in _PHRASES.items()
}


def _terms(text: str, domain: str) -> list[Finding | None]:
    """The findings the phrases in ``text`` name, most specific phrase first, no overlaps."""
    norm = _normalise(text)
    taken = [False] * len(norm)
    found: list[Finding | None] = []
    for pattern, value in _COMPILED.get(domain) or _COMPILED["generic"]:
        for m in pattern.finditer(norm):
            if any(taken[m.start():m.end()]):
                continue
            for i in range(m.start(), m.end()):
                taken[i] = True
            found.append(value(m) if callable(value) else value)
    return found


def _combine(findings: list[Finding | None]) -> Finding | None:
    """One finding for a label or phrase that names several: graded DR findings add up; nested
    findings give the most specific; siblings give what they share, or nothing when that is empty."""
    real = [f for f in findings if f is not None]
    if not real:
        return None
    if any(f.other for f in real):
        return OTHER
    if all(f.grades is not None for f in real):
        grades = frozenset().union(*(f.grades or frozenset() for f in real))
        return Finding(frozenset.intersection(*(f.tags for f in real)), grades)
    if any(f.grades is not None for f in real):
        return OTHER
    ordered = sorted(set(real), key=lambda f: len(f.tags))
    if all(a.tags <= b.tags for a, b in itertools.pairwise(ordered)):
        return ordered[-1]
    shared = frozenset.intersection(*(f.tags for f in real))
    return Finding(shared) if shared - {"lesion", "melanocytic", "keratinocytic"} else OTHER


@lru_cache(maxsize=4096)
def interpret_phrase(text: str, domain: str) -> Finding | None:
    """The finding a free-text phrase names in ``domain`` (skin, us, retina, histo, brain, chest)."""
    outside = re.sub(r"\([^)]*\)", " ", text)
    finding = _combine(_terms(outside, domain))
    if finding is None and outside != text:
        finding = _combine(_terms(text, domain))
    return finding


# ------------------------------------------------------------------------------------------------
# reading a data card
# ------------------------------------------------------------------------------------------------

_CODE = re.compile(r"^-?\d+(?:\.\d+)?[a-z]?$", re.IGNORECASE)

#: public datasets whose integer labels their card does not spell out (expert knowledge)
_KNOWN_CODES: tuple[tuple[str, dict[str, str]], ...] = (
    (r"shenzhen|montgomery", {"0": "normal", "1": "tuberculosis"}),  # NLM TB sets: file suffix _0 / _1
    (r"origa", {"0": "non-glaucoma", "1": "glaucoma"}),
    (r"patchcamelyon|pcam", {"0": "normal lymph node", "1": "metastasis"}),
)

_DR_GRADED = re.compile(r"diabetic[ -]retinopathy|\bicdr\b|retinopathy grade|\bnpdr\b|\bpdr\b|\bdr\b", re.IGNORECASE)


@dataclass
class _CardContext:
    name: str
    description: str  # without the numeric legend
    modality: str | None
    body_part: str | None
    species: str | None
    task_types: tuple[str, ...]
    classes: list[str]
    legend: dict[str, str]
    domain: str

    @property
    def published(self) -> list[str]:
        return [self.legend.get(c, c) for c in self.classes]

    @property
    def dr_graded(self) -> bool:
        return bool(_DR_GRADED.search(f"{self.name} {self.description}".replace("_", " ")))

    @property
    def odir_letters(self) -> bool:
        letters = [p for p in self.published if len(p) == 1 and p.lower() in _ODIR_LETTERS]
        return self.domain == "retina" and len(letters) >= 5


def _legend_span(text: str) -> tuple[int, int, str] | None:
    """The last bracketed list of codes that starts at 0 ("(0 = akiec, 1 = bcc, ...)", "[0: No DR; 1: Mild]"):
    its start, end and inside, brackets balanced (a class name may hold its own parentheses). The last,
    because a note on the local copy follows the description of the public dataset."""
    found = None
    for m in re.finditer(r"[(\[]\s*(?=0\s*[=:]\s*\S)", text):
        depth, i = 0, m.start()
        while i < len(text):
            depth += text[i] in "(["
            depth -= text[i] in ")]"
            if depth == 0:
                found = (m.start(), i + 1, text[m.end():i])
                break
            i += 1
    return found


def _letter_legend(text: str) -> dict[str, str]:
    """A legend of letter codes a steward wrote ("(N = normal, P = pneumonia)"): the last bracketed
    list of at least two short codes, each explained once; ``{}`` when there is none."""
    found: dict[str, str] = {}
    for m in re.finditer(r"[(\[]\s*(?=[A-Za-z][A-Za-z0-9]{0,3}\s*[=:]\s*\S)", text):
        close = text.find(")" if text[m.start()] == "(" else "]", m.end())
        if close < 0:
            continue
        body = text[m.end():close]
        starts = list(re.finditer(r"(?:^|[,;]\s*)([A-Za-z][A-Za-z0-9]{0,3})\s*[=:]\s*", body))
        entries = {s.group(1): body[s.end():(starts[i + 1].start() if i + 1 < len(starts) else len(body))].strip()
                   for i, s in enumerate(starts)}
        if len(starts) >= 2 and len(entries) == len(starts) and all(entries.values()):
            found = entries
    return found


def _parse_legend(description: str) -> tuple[str, dict[str, str]]:
    """The card description without its code legend, and the legend: local code -> name.

    A legend is what a steward writes to explain coded labels: a bracketed run "0 = name, 1 = name, ..."
    (or "0: name; 1: name"), codes consecutive from 0. The sentence around it is dropped with it, so the
    description's own numbers ("1 meningioma, 2 glioma") keep their meaning."""
    text = description or ""
    span = _legend_span(text)
    if span is None:
        return text, _letter_legend(text)
    begin, end, body = span
    starts = list(re.finditer(r"(?:^|[,;]\s*)(\d+)\s*[=:]\s*", body))
    run, expected = [], 0  # keep only a consecutive run 0, 1, 2, ... (a name may itself contain ", 3 = ")
    for s in starts:
        if int(s.group(1)) == expected:
            run.append(s)
            expected += 1
    if len(run) < 2:
        return text, {}
    legend = {}
    for i, s in enumerate(run):
        stop = run[i + 1].start() if i + 1 < len(run) else len(body)
        legend[s.group(1)] = body[s.end():stop].strip()
    sentence_start = max(text.rfind(". ", 0, begin) + 1, 0)
    sentence_end = text.find(". ", end)
    sentence_end = len(text) if sentence_end < 0 else sentence_end + 1
    return (text[:sentence_start] + text[sentence_end:]).strip(), legend


def _card_context(card: Mapping[str, Any] | None, domain_hint: str | None) -> _CardContext:
    card = card or {}
    description, legend = _parse_legend(str(card.get("dataset description") or card.get("description") or ""))
    modality = str(card.get("modality")) if card.get("modality") else None
    task_type = card.get("task_type") or card.get("task_types") or ""
    task_types = tuple(t.strip() for t in (task_type if isinstance(task_type, list) else
                                            re.split(r"[,;]", str(task_type))) if t.strip())
    domain = _DOMAIN_OF_MODALITY.get(modality or "") or domain_hint or "generic"
    return _CardContext(
        name=str(card.get("dataset name") or card.get("name") or ""),
        description=description,
        modality=modality,
        body_part=str(card.get("body_part")) if card.get("body_part") else None,
        species=str(card.get("species")) if card.get("species") else None,
        task_types=task_types,
        classes=[str(c) for c in card.get("classes") or []],
        legend=legend,
        domain=domain,
    )


@lru_cache(maxsize=4096)
def _code_glosses(description: str, code: str) -> tuple[str, ...]:
    """What a card description says an integer label means ("1 = tumour", "(1 meningioma, ...)")."""
    c = re.escape(code)
    lead = r"(?<![\w.\-/])"
    stop = r"(?=\s*(?:[,;)]|\.\.\.|\.(?:\s|$)|$|\band\b))"
    out = []
    out += re.findall(rf"{lead}{c}\s*(?:=|:)\s*([A-Za-z][^,;()]*?){stop}", description)
    out += re.findall(rf"(?:[(,;:]|\.\.\.|\bis)\s*{c}\s+([A-Za-z][^,;()]*?){stop}", description)
    out += re.findall(rf"{lead}{c}/\s*\(([^)]+)\)", description)
    for m in re.finditer(r"(\d+)\s*[-\u2013]\s*(\d+)\s+follows? the order\s+([^.]+)", description):
        lo, names = int(m.group(1)), [n.strip() for n in re.split(r",\s*|\s+and\s+", m.group(3)) if n.strip()]
        if code.isdigit() and 0 <= int(code) - lo < len(names):
            out.append(names[int(code) - lo])
    return tuple(out)


@lru_cache(maxsize=4096)
def _name_glosses(description: str, name: str) -> tuple[str, ...]:
    """What a card description says a class name means ("'malignant' here means melanoma")."""
    out = []
    for variant in {name, _strip_index(name)}:
        tokens = [re.escape(t) for t in re.split(r"[\s_\-]+", variant) if t]
        if not tokens:
            continue
        n = r"[\s_\-]+".join(tokens)
        verbs = r"(?:here\s+)?(?:means|is|are|covers|denotes|stands for)"
        for pattern in (rf"'{n}'\s+{verbs}\s+([^.;:]+)", rf"(?<![\w'\-])\b{n}\b\s+{verbs}\s+([^.;:]+)",
                        rf"(?<![\w'\-])\b{n}\b(?:\s+(?:images|scans|cases|patches))?\s*\(([^)]+)\)"):
            out += [g.rstrip(") ") for g in re.findall(pattern, description, re.IGNORECASE)]
    return tuple(out)


def _resolve_opacity(finding: Finding | None, ctx: _CardContext) -> Finding | None:
    """'Lung opacity' is the positive class of a pneumonia set (RSNA); elsewhere a generic finding."""
    if finding is not None and "lung_opacity" in finding.tags:
        text = f"{ctx.name} {ctx.description}".lower()
        return _PNEUMONIA if ("pneumonia" in text or "infection" in text) else OTHER
    return finding


def _read_code(code: str, ctx: _CardContext) -> Finding | None:
    glosses = _code_glosses(ctx.description, code)
    if glosses:
        return _combine([_read_name(g, ctx, allow_code=False) for g in glosses])
    for pattern, codes in _KNOWN_CODES:
        if re.search(pattern, ctx.name, re.IGNORECASE) and code in codes:
            return interpret_phrase(codes[code], ctx.domain)
    if ctx.domain == "retina" and ctx.dr_graded and code in {"0", "1", "2", "3", "4"}:
        return _grade(int(code))
    return None


def _read_name(name: str, ctx: _CardContext, allow_code: bool = True) -> Finding | None:
    name = name.strip().strip("'\"")
    if allow_code and _CODE.match(name):
        return _read_code(name, ctx)
    for gloss in _name_glosses(ctx.description, name):
        finding = interpret_phrase(gloss, ctx.domain)
        if finding is not None:
            return finding
    key = _strip_index(name).lower()
    if ctx.odir_letters and key in _ODIR_LETTERS:
        return _ODIR_LETTERS[key]
    exact = _EXACT.get(ctx.domain, {})
    if key in exact:
        return exact[key]
    return interpret_phrase(_strip_index(name), ctx.domain)


def read_class(local_name: str, card: Mapping[str, Any] | None, domain: str | None = None) -> Finding | None:
    """The clinical finding a site's class name stands for, read with its data card."""
    ctx = _card_context(card, domain)
    published = ctx.legend.get(local_name.strip(), local_name)
    return _resolve_opacity(_read_name(published, ctx), ctx)


# ------------------------------------------------------------------------------------------------
# target classes and the note's rules
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Pattern:
    """A set of findings: by required tags, by DR grades, exactly one label, or the complement."""

    tags: frozenset[str] = frozenset()
    any_tags: frozenset[str] = frozenset()
    grades_subset: frozenset[int] | None = None
    grades_exact: frozenset[int] | None = None
    exact: Finding | None = None
    negated: tuple[_Pattern, ...] = ()
    specific: bool = False

    def matches(self, f: Finding) -> bool:
        if f.other:
            return bool(self.negated) and not any(p.matches(f) for p in self.negated)
        if self.negated:
            return not any(p.matches(f) for p in self.negated)
        if self.exact is not None:
            return f == self.exact
        if not self.tags <= f.tags:
            return False
        if self.any_tags and not self.any_tags & f.tags:
            return False
        if self.grades_exact is not None and f.grades != self.grades_exact:
            return False
        if self.grades_subset is not None and (not f.grades or not f.grades <= self.grades_subset):
            return False
        return bool(self.tags or self.any_tags or self.grades_exact is not None or self.grades_subset is not None)

    @property
    def score(self) -> int:
        if self.exact is not None:
            return 100
        if self.negated:
            return 0
        return len(self.tags) + (10 if self.grades_exact is not None else 5 if self.grades_subset else 0)


def _grade_set(lo: int, hi: int) -> frozenset[int]:
    return frozenset(range(min(lo, hi), max(lo, hi) + 1))


_NOT_CANCER = frozenset({"benign", "normal", "nonmalignant"})
_TARGET_MEANINGS: dict[str, _Pattern] = {
    "malignant": _Pattern(tags=frozenset({"malignant"})),
    "malignancy": _Pattern(tags=frozenset({"malignant"})),
    "cancer": _Pattern(tags=frozenset({"malignant"})),
    # "benign" against "malignant": every non-cancer class, normal tissue included, unless the note
    # says otherwise (ultrasound notes leave normal scans out)
    "benign": _Pattern(any_tags=_NOT_CANCER),
    "non_malignant": _Pattern(any_tags=_NOT_CANCER),
    "nonmalignant": _Pattern(any_tags=_NOT_CANCER),
    "not_malignant": _Pattern(any_tags=_NOT_CANCER),
    "melanoma": _Pattern(tags=frozenset({"melanoma"}), specific=True),
    "naevus": _Pattern(tags=frozenset({"naevus"}), specific=True),
    "nevus": _Pattern(tags=frozenset({"naevus"}), specific=True),
    "normal": _Pattern(tags=frozenset({"normal"})),
    "healthy": _Pattern(tags=frozenset({"normal"})),
    "pneumonia": _Pattern(tags=frozenset({"pneumonia"})),
    "glioma": _Pattern(tags=frozenset({"glioma"}), specific=True),
    "meningioma": _Pattern(tags=frozenset({"meningioma"}), specific=True),
    "pituitary": _Pattern(tags=frozenset({"pituitary"}), specific=True),
    "pituitary_tumour": _Pattern(tags=frozenset({"pituitary"}), specific=True),
    "pituitary_tumor": _Pattern(tags=frozenset({"pituitary"}), specific=True),
    "tumour": _Pattern(tags=frozenset({"tumour"})),
    "tumor": _Pattern(tags=frozenset({"tumour"})),
    "no_tumour": _Pattern(tags=frozenset({"normal"})),
    "no_tumor": _Pattern(tags=frozenset({"normal"})),
    "notumor": _Pattern(tags=frozenset({"normal"})),
    # DR targets are grades on the international scale (a normal fundus is grade 0)
    "no_dr": _Pattern(grades_exact=frozenset({0})),
    "dr": _Pattern(grades_subset=_grade_set(1, 4)),
    "any_dr": _Pattern(grades_subset=_grade_set(1, 4)),
    "referable": _Pattern(grades_subset=_grade_set(2, 4)),
    "non_referable": _Pattern(grades_subset=_grade_set(0, 1)),
}


@lru_cache(maxsize=1024)
def _target_meaning(target: str, domain: str) -> _Pattern | None:
    key = re.sub(r"[\s\-]+", "_", target.strip().lower())
    if key in _TARGET_MEANINGS:
        return _TARGET_MEANINGS[key]
    m = re.fullmatch(r"(?:grade|r|level|dr)_?([0-4])", key)
    if m:
        return _Pattern(grades_exact=frozenset({int(m.group(1))}), specific=True)
    finding = interpret_phrase(target.replace("_", " "), domain)
    if finding is None or finding.other:
        return None
    if finding.grades is not None:
        return _Pattern(grades_exact=finding.grades, specific=True)
    return _Pattern(tags=finding.tags, specific=True)


_LEFT_OUT = re.compile(r"(?:\b(?:is|are)\s+)?\b(?:left out|dropped|excluded|ignored|discarded|not used)\b")
_VERB_END = re.compile(r"(?:\b(?:all|both)\s+)?\b(?:(?:counts?|counted)\s+as|are|is|as|(?:maps?|mapped|goe?s?|belongs?)"
                       r"\s+(?:to|into))\s*$")
_GRADE_END = re.compile(r"\bgrades?\s+\d\s*(?:-|\u2013|to|and)\s*\d\s*$", re.IGNORECASE)


def _split_top(text: str) -> list[str]:
    """Split a list phrase at commas / and / or / nor outside parentheses and quotes."""
    parts, depth, quote, start, i = [], 0, False, 0, 0
    while i < len(text):
        ch = text[i]
        if ch == "'" and (i == 0 or not text[i - 1].isalnum() or quote):
            quote = not quote
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif depth == 0 and not quote:
            m = re.match(r",\s*(?:and\s+|or\s+)?|\s+(?:and|or|nor)\s+", text[i:])
            if m:
                parts.append(text[start:i])
                i += m.end()
                start = i
                continue
        i += 1
    parts.append(text[start:])
    return [p.strip(" ,") for p in parts if p.strip(" ,")]


def _phrase_pattern(text: str, domain: str) -> _Pattern | None:
    finding = interpret_phrase(text, domain)
    if finding is None or finding.other:
        return None
    if finding.grades is not None:
        return _Pattern(grades_subset=finding.grades)
    return _Pattern(tags=finding.tags)


def _piece_patterns(piece: str, domain: str) -> list[_Pattern]:
    """The classes one item of a note's list names: a quoted label exactly, a grade range, a phrase."""
    quoted = re.findall(r"'([^']+)'", piece)
    if quoted:
        ctx = _card_context(None, domain)
        return [_Pattern(exact=f) for f in (_read_name(q, ctx) for q in quoted) if f is not None]
    piece = re.sub(r"\b(?:e\.g\.|i\.e\.|such as|including|included)", " ", piece)
    piece = re.sub(r"\s+(?:is|are)\s+.*$", "", piece)  # "a normal fundus is grade 0" -> "a normal fundus"
    low = piece.lower()
    ranges = [_grade_set(int(a), int(b)) for a, b in
              re.findall(r"\bgrades?\s+(?:from\s+)?(\d)\s*(?:-|\u2013|to|and)\s*(\d)", low)]
    ranges += [frozenset({int(a)}) for a in re.findall(r"\bgrade\s+(\d)\b(?!\s*(?:-|\u2013|to|and)\s*\d)", low)]
    if ranges:
        return [_Pattern(grades_subset=r) for r in ranges]
    pattern = _phrase_pattern(piece, domain)
    return [pattern] if pattern is not None else []


def _subject_patterns(subject: str, domain: str) -> list[_Pattern]:
    """The classes a note's subject phrase names ("Normal scans and benign lesions", "Grades 0-1")."""
    # keep "grades 0 and 1" / "grade from 1 to 4" in one piece when splitting the list
    subject = re.sub(r"\b(grades?\s+(?:from\s+)?\d)\s*(?:-|\u2013|and|to|or)\s*(\d)\b", r"\1-\2", subject,
                     flags=re.IGNORECASE)
    neither = re.search(r"\bneither\s+(.+?)\s+nor\s+(.+)$", subject)
    other_than = re.search(r"\b(?:other than|except(?: for)?|apart from|besides)\s+(.+)$", subject)
    if neither or other_than:  # everything but the named classes
        named = list(neither.groups()) if neither else _split_top(other_than.group(1)) if other_than else []
        inner = [p for g in named for p in _piece_patterns(g, domain)]
        return [_Pattern(negated=tuple(inner))] if inner else []
    patterns = []
    for part in _split_top(subject):
        main = re.sub(r"\([^)]*\)", " ", part)
        pieces = [main] + [p for inner in re.findall(r"\(([^)]*)\)", part) for p in _split_top(inner)]
        for piece in pieces:
            patterns += _piece_patterns(piece, domain)
    return patterns


def _scale_rules(segment: str, targets: list[str], domain: str) -> list[tuple[_Pattern, str | None]]:
    """A grading scale spelled out ("scale: 0 no DR (a normal fundus), 1 mild, ...") for grade targets."""
    m = re.search(r":\s*(?=[0-4]\s+[A-Za-z])", segment)
    if not m:
        return []
    by_grade = {}
    for t in targets:
        meaning = _target_meaning(t, domain)
        if meaning is not None and meaning.grades_exact is not None and len(meaning.grades_exact) == 1:
            by_grade[next(iter(meaning.grades_exact))] = t
    rules: list[tuple[_Pattern, str | None]] = []
    for item in _split_top(segment[m.end():]):
        entry = re.match(r"([0-4])\s+(.+)$", item.strip())
        if entry and int(entry.group(1)) in by_grade:
            target = by_grade[int(entry.group(1))]
            rules += [(p, target) for p in _subject_patterns(entry.group(2), domain)]
    return rules


def note_rules(note: str, targets: Iterable[str], domain: str) -> tuple[tuple[_Pattern, str | None], ...]:
    """The note's rules: (classes, target) for "X count as T", (classes, None) for "X are left out"."""
    return _note_rules(note or "", tuple(targets), domain)


@lru_cache(maxsize=256)
def _note_rules(note: str, targets: tuple[str, ...], domain: str) -> tuple[tuple[_Pattern, str | None], ...]:
    rules: list[tuple[_Pattern, str | None]] = []
    for segment in re.split(r";|(?<=\.)(?<!e\.g\.)(?<!i\.e\.)\s+", note or ""):
        segment = segment.strip().rstrip(".")
        if not segment:
            continue
        left = _LEFT_OUT.search(segment)
        if left:
            subject = re.sub(r"\b(?:is|are)\s+too\s+\w+\s+and\s*$", "", segment[:left.start()].strip())
            rules += [(p, None) for p in _subject_patterns(subject, domain)]
            continue
        rules += _scale_rules(segment, targets, domain)
        masked = re.sub(r"'[^']*'", lambda m: "#" * len(m.group(0)), segment)
        start = 0
        occurrences = []
        for target in targets:
            for m in re.finditer(rf"(?<![\w\-]){re.escape(target)}(?![\w\-])(?=\s*(?:,|$))", masked):
                occurrences.append((m.start(), m.end(), target))
        for begin, end, target in sorted(occurrences):
            if begin < start:
                continue
            before = segment[start:begin]
            verb = _VERB_END.search(before)
            if verb:
                subject = before[:verb.start()]
            elif _GRADE_END.search(before):
                subject = before
            else:
                continue
            rules += [(p, target) for p in _subject_patterns(subject.strip(" ,"), domain)]
            start = end
    return tuple(rules)


def _domain_for(card: Mapping[str, Any] | None, targets: list[str], modality: str | None,
                body_part: str | None) -> str:
    if card and card.get("modality") in _DOMAIN_OF_MODALITY:
        return _DOMAIN_OF_MODALITY[str(card["modality"])]
    if modality in _DOMAIN_OF_MODALITY:
        return _DOMAIN_OF_MODALITY[str(modality)]
    part = body_part or infer_body_part(None, targets)
    return _DOMAIN_OF_BODY_PART.get(part or "", "generic")


def _body_parts_agree(task_part: str | None, card_part: str | None) -> bool:
    if not task_part or not card_part:
        return True
    a, b = task_part.strip().lower(), card_part.strip().lower()
    if a == b:
        return True
    return any(a in group and b in group for group in _BODY_PART_GROUPS)


def assign(finding: Finding | None, targets: list[str], note: str, domain: str) -> str | None:
    """The target class a finding belongs to under the targets' meaning and the note, or None."""
    if finding is None or finding.other:
        return None
    rules = note_rules(note, targets, domain)
    if any(p.exact is not None and t is None and p.matches(finding) for p, t in rules):
        return None
    meanings = {t: _target_meaning(t, domain) for t in targets}
    specific = [t for t, m in meanings.items() if m is not None and m.specific and m.matches(finding)]
    if len(specific) == 1:
        return specific[0]
    matched = [(p.score, t) for p, t in rules if p.matches(finding)]
    if matched:
        best = max(s for s, _ in matched)
        choices = {t for s, t in matched if s == best}
        return choices.pop() if len(choices) == 1 else None
    broad = [t for t, m in meanings.items() if m is not None and not m.specific and m.matches(finding)]
    return broad[0] if len(broad) == 1 else None


# ------------------------------------------------------------------------------------------------
# the two decisions
# ------------------------------------------------------------------------------------------------

def map_class(local_name: str, card: dict | None, targets: list[str], note: str, *,
              modality: str | None = None, body_part: str | None = None) -> str | None:
    """The target class a site's local class name belongs to under this task's note, or None (drop).

    ``modality`` and ``body_part`` (from :func:`parse_request`) are optional: with them, classes of
    a card of another modality or organ (thyroid nodules for a breast task) are dropped too. Without
    ``body_part`` the organ is read from the target names and the note, when they name one.
    """
    modality = (normalise_modality(modality) or modality) if modality else None
    if card and modality and str(card.get("modality") or "").lower() != modality:
        return None
    part = body_part or infer_body_part(modality or (card or {}).get("modality"), targets, note=note)
    if card and not _body_parts_agree(part, card.get("body_part")):
        return None
    domain = _domain_for(card, targets, modality, part)
    return assign(read_class(local_name, card, domain), targets, note, domain)


def _is_classification(card: Mapping[str, Any]) -> bool:
    task_type = card.get("task_type") or card.get("task_types") or ""
    kinds = task_type if isinstance(task_type, list) else re.split(r"[,;]", str(task_type))
    return "classification" in {str(k).strip().lower() for k in kinds}


def dataset_matches(card: dict, modality: str, targets: list[str], note: str, *,
                    body_part: str | None = None) -> bool:
    """C1's criterion: images of ``modality`` from human patients, labelled for (single-label)
    classification, with classes that map onto every target class."""
    wanted = normalise_modality(modality) or modality
    if str(card.get("modality") or "").lower() != wanted:
        return False
    if str(card.get("species") or "human").strip().lower() != "human":
        return False
    if not _is_classification(card):
        return False
    classes = card.get("classes") or []
    covered = {map_class(str(c), card, targets, note, modality=wanted, body_part=body_part) for c in classes}
    return bool(targets) and set(targets) <= covered
