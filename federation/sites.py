"""A practitioner's site folders: what they hold (data cards drafted from contents) and their copy
into a federation folder the workflow runs on.

A site folder holds either one dataset (class folders, or images with a label file at its top) or
several, one per sub-folder. Nothing here reads pixels, and nothing that identifies a patient goes
into a data card: DICOM headers are read only for Modality and Body Part Examined (and, kept apart
under ``.private/`` for the privacy auditor, the patient name and ID, so that a leak can be caught).
Sources are read, never written; symbolic links are not followed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from environments.readers import image_format
from tools.labels import find_label_file, read_label_rows

#: words in a dataset's folder or class names -> a modality / body part guess for a drafted card
#: (DICOM headers, where there are some, come first; the practitioner reviews every card)
MODALITY_WORDS = {"xray": ("xray", "x-ray", "cxr", "radiograph", "pneumonia", "tuberculosis"),
                  "mri": ("mri", "t1", "t2", "flair"), "ct": ("ct_", "_ct", "computed"),
                  "ultrasound": ("ultrasound", "sonograph", "_us"), "fundus": ("fundus", "retina", "retinopathy"),
                  "dermatoscopy": ("derm", "skin", "melanoma", "naevus", "nevus"),
                  "histopathology": ("histo", "patho", "h&e", "slide")}
BODY_WORDS = {"chest": ("chest", "cxr", "lung", "pneumonia", "thorax"), "knee": ("knee", "menisc"),
              "brain": ("brain", "glioma", "tumour", "tumor"), "breast": ("breast", "mammo"),
              "skin": ("skin", "derm", "melanoma"), "eye": ("fundus", "retina", "eye")}
#: DICOM Modality codes -> the modality names the agents use
DICOM_MODALITIES = {"CR": "xray", "DX": "xray", "RG": "xray", "MR": "mri", "US": "ultrasound", "CT": "ct",
                    "OP": "fundus", "XC": "dermatoscopy", "SM": "histopathology", "MG": "mammography"}
PRIVATE = ".private"


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """(regular files, symbolic links) under ``root``, links never followed."""
    files, links = [], []
    for folder, dirs, names in os.walk(root, followlinks=False):
        base = Path(folder)
        for d in list(dirs):
            if (base / d).is_symlink():
                links.append(base / d)
                dirs.remove(d)
        for n in sorted(names):
            p = base / n
            (links if p.is_symlink() else files).append(p)
        dirs.sort()
    return files, links


def datasets_of(site: Path) -> dict[str, Path]:
    """Dataset name -> folder: the site itself when it is one dataset, else its sub-folders."""
    subdirs = sorted(p for p in site.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    loose_images = [p for p in site.iterdir() if p.is_file() and image_format(p)]
    if find_label_file(site) is not None or loose_images or not subdirs:
        return {site.name: site}
    class_like = all(any(image_format(f) for f in d.iterdir() if f.is_file()) for d in subdirs)
    nested = any(find_label_file(d) is not None or any(x.is_dir() and not x.is_symlink() for x in d.iterdir())
                 for d in subdirs)
    if class_like and not nested:  # sub-folders of images only: one dataset in class folders
        return {site.name: site}
    return {d.name: d for d in subdirs}


def _dicom_tags(files: list[Path], limit: int = 5) -> tuple[Counter, Counter, set[str]]:
    """Modality and body part of a few DICOM headers; patient identifiers apart (never in a card)."""
    import pydicom

    modalities: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    identifiers: set[str] = set()
    for f in [f for f in files if image_format(f) == "dicom"][:limit]:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True,
                                 specific_tags=["Modality", "BodyPartExamined", "PatientName", "PatientID"])
        except Exception:  # noqa: BLE001 - an unreadable header tells nothing; the file is listed elsewhere
            continue
        if ds.get("Modality"):
            modalities[str(ds.Modality)] += 1
        if ds.get("BodyPartExamined"):
            parts[str(ds.BodyPartExamined).lower()] += 1
        for tag in ("PatientName", "PatientID"):
            value = str(ds.get(tag) or "").strip()
            if value:
                identifiers.update({value, value.replace("^", " ")})
    return modalities, parts, identifiers


def draft_card(name: str, folder: Path, site: Path) -> tuple[dict[str, Any], list[str], set[str]]:
    """(data card, problems, patient identifiers) of one dataset, from its files and names."""
    files, links = _walk(folder)
    images = [f for f in files if image_format(f)]
    problems = [f"{p.relative_to(site).as_posix()}: symbolic link, not followed" for p in links]
    classes: list[str] = []
    label_file = find_label_file(folder)
    if label_file is not None:
        try:
            classes = sorted({label for _, label in read_label_rows(label_file)})
        except Exception as exc:  # noqa: BLE001 - the card says what is wrong with it
            problems.append(f"{label_file.relative_to(site).as_posix()}: label file unreadable ({str(exc)[:120]})")
    else:
        classes = sorted(d.name for d in folder.iterdir()
                         if d.is_dir() and not d.is_symlink() and any(image_format(f) for f in _walk(d)[0]))
    if not images:
        problems.append(f"{folder.relative_to(site).as_posix() or '.'}: no image files")
    formats = Counter(image_format(f) for f in images)
    modalities, parts, identifiers = _dicom_tags(images)
    words = " ".join([name, *classes]).lower()
    modality = DICOM_MODALITIES.get(modalities.most_common(1)[0][0], modalities.most_common(1)[0][0].lower()) \
        if modalities else guess(words, MODALITY_WORDS)
    body_part = parts.most_common(1)[0][0] if parts else guess(words, BODY_WORDS)
    source = f"labels in {label_file.name}" if label_file else ("images in one sub-folder per class" if classes else "no labels found")
    card = {
        "dataset name": name,
        "dataset description": (f"{len(images)} images ({', '.join(f'{n} {k}' for k, n in formats.most_common())}); "
                                f"{source}. Drafted by `fedagentbench federate init` from the folder's contents: "
                                "review modality, body part and species."),
        "dataset_path": f"datasets/{name}",
        "modality": modality,
        "species": "human",
        "body_part": body_part,
        "task_type": "classification" if len(classes) >= 2 else "unknown",
        "classes": classes,
        "file_format": formats.most_common(1)[0][0] if formats else "none",
        "image_count": len(images),
    }
    if label_file is not None:
        card["label_file"] = label_file.relative_to(folder).as_posix()
    legend = readme_legend(folder)
    if legend:
        card["dataset description"] += f" Label legend (from {legend[0]}): {legend[1]}."
    return card, problems, identifiers


#: a bracketed list of codes a steward explains: "(N = normal, P = pneumonia)", "[0: no DR; 1: mild]"
_LEGEND = re.compile(r"[(\[]\s*[A-Za-z0-9]{1,4}\s*[=:][^()\[\]]{1,300}[)\]]")


def readme_legend(folder: Path) -> tuple[str, str] | None:
    """(file name, legend) of the first README at the dataset's top that explains its label codes:
    only the legend reaches the card (and so an agent), never the rest of the file."""
    for readme in sorted(folder.glob("[Rr][Ee][Aa][Dd][Mm][Ee]*")):
        if not readme.is_file() or readme.is_symlink() or readme.stat().st_size > 64_000:
            continue
        text = readme.read_text("utf-8", errors="replace")
        match = next((m for m in _LEGEND.finditer(text) if len(re.findall(r"[=:]", m.group(0))) >= 2), None)
        if match:
            return readme.name, " ".join(match.group(0).split())
    return None


def guess(words: str, table: dict[str, tuple[str, ...]]) -> str:
    return next((value for value, keys in table.items() if any(k in words for k in keys)), "unknown")


def draft_site(site: Path) -> tuple[list[dict[str, Any]], list[str], set[str]]:
    """Every dataset's card, the site's problems and its patient identifiers."""
    cards, problems, identifiers = [], [], set()
    if not any(site.iterdir()):
        return [], ["the site folder is empty"], set()
    for name, folder in datasets_of(site).items():
        card, found, ids = draft_card(name, folder, site)
        cards.append(card)
        problems += found
        identifiers |= ids
    return cards, problems, identifiers


def sha256_tree(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file (links not followed): to show sources unchanged."""
    out = {}
    for f in _walk(root)[0]:
        digest = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        out[f.relative_to(root).as_posix()] = digest.hexdigest()
    return out


def copy_site(site: Path, cards: list[dict[str, Any]], dest: Path) -> None:
    """Copy each dataset's regular files into ``dest/datasets/<name>/`` and write ``data_cards.json``."""
    folders = datasets_of(site)
    for card in cards:
        name = card["dataset name"]
        src = folders.get(name)
        if src is None:
            continue
        out = dest / "datasets" / name
        for f in _walk(src)[0]:
            target = out / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "data_cards.json").write_text(json.dumps(cards, indent=1, ensure_ascii=False) + "\n", "utf-8")


__all__ = ["BODY_WORDS", "DICOM_MODALITIES", "MODALITY_WORDS", "PRIVATE", "copy_site", "datasets_of", "draft_card",
           "draft_site", "guess", "sha256_tree"]
