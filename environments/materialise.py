"""Write one planned dataset to disk as a hospital would hold it, and record every file in the key.

Layouts: class folders; flat ``images/`` with ``labels.csv``; flat with ``labels.json``; nested
``<patient>/<study>/`` folders with ``metadata.csv``. Issues injected into every dataset,
relevant or not (distractors must not be told apart by their files): non-image files, corrupt / truncated / zero-byte images, near-duplicates, off-topic images of
another modality and wrong labels. Class names follow the dataset's label style. After injection the
image list is shuffled, so an injected file's name, label-file row and nested path are random with
respect to its issue; broken files take the same formats as clean ones, corrupt files about the
size of a real encoding.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from environments import formats
from environments.answer_key import DatasetKey, FileRecord, SiteProfile
from environments.concepts import ENVIRONMENTS, vocabulary
from environments.planner import DatasetPlan
from environments.pools import ImagePool
from environments.site import apply_profile, average_hash, to_mode

#: which generator draws distractor images of a modality that has no environment of its own
MODALITY_GENERATOR: dict[str, str] = {e: e for e in ENVIRONMENTS} | {
    "ct": "mri", "oct": "ultrasound", "clinical_photography": "dermatoscopy", "endoscopy": "fundus",
    "microscopy": "histopathology", "mammography": "xray", "pet": "mri",
}
#: the environment whose generator provides off-topic images for each environment
OFF_TOPIC_SOURCE: dict[str, str] = {
    "dermatoscopy": "xray", "ultrasound": "fundus", "fundus": "mri",
    "histopathology": "xray", "mri": "dermatoscopy", "xray": "histopathology",
}
FIRST_NAMES = ("Anna", "Ben", "Clara", "David", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kaito",
               "Lena", "Mateo", "Nora", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tara", "Umar", "Vera")
LAST_NAMES = ("Schmidt", "Rossi", "Garcia", "Novak", "Okafor", "Tanaka", "Larsen", "Dubois", "Kowalski",
              "Haddad", "Murphy", "Silva", "Yilmaz", "Nguyen", "Fischer", "Moreau", "Ivanova", "Singh")
EXT = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm", "nifti": ".nii.gz", "tiff": ".tif"}


@dataclass
class BuildContext:
    """What the dataset writer needs from the environment build."""

    environment: str
    hospital: str
    institution: str
    workspace: Path
    profile: SiteProfile
    pool: ImagePool
    rng: np.random.Generator
    uid_seed: str
    patients: list[dict] = field(default_factory=list)
    #: pool class -> share of the planned count the pool can afford (1.0: all of it)
    pool_budget: dict[int, float] = field(default_factory=dict)


@dataclass
class _Image:
    pixels: np.ndarray
    site_label: str | None
    true_label: str | None
    issue: str = "none"
    duplicate_of: int | None = None
    #: an off-topic image whose own modality is grey
    source_grey: bool = False
    fmt: str = "png"
    relpath: str = ""


def local_class_names(plan: DatasetPlan) -> dict[str, str]:
    """Published class name -> the name this site uses, in the dataset's label style."""
    card, style = plan.card, plan.label_style
    vocab = vocabulary(card.environment)
    names: dict[str, str] = {}
    for i, published in enumerate(card.classes):
        concept = card.class_concepts.get(published)
        entry = vocab.concepts.get(concept) if concept else None
        if style == "numeric":
            names[published] = str(i)
        elif style == "upper":
            names[published] = published.upper()
        elif style == "abbreviation" and entry and entry.abbreviations:
            names[published] = entry.abbreviations[0]
        elif style == "synonym" and entry and entry.synonyms:
            names[published] = entry.synonyms[0]
        else:
            names[published] = published
    if len({n.lower() for n in names.values()}) != len(names):  # a style that merges classes is not used
        return {c: c for c in card.classes}
    return names


def _file_stem(plan: DatasetPlan, rng: np.random.Generator, index: int) -> str:
    prefix = "".join(ch for ch in plan.card.name.split("-")[0] if ch.isalnum())[:8] or "img"
    number = index * 7 + int(rng.integers(0, 7))
    if plan.naming == "spaces":
        return f"{prefix} scan {number:05d}"
    if plan.naming == "unicode":
        return f"{prefix}_Aufnahme_Nr_{number:05d}_é"
    return f"{prefix}_{number:07d}"


def _class_counts(plan: DatasetPlan, classes: list[str], rng: np.random.Generator) -> dict[str, int]:
    """Label-distribution skew: Dirichlet proportions with a floor, so every class appears. The same
    draw for relevant datasets and distractors (their image counts must not tell them apart)."""
    total = plan.images
    p = 0.6 * rng.dirichlet(np.full(len(classes), 0.8)) + 0.4 / len(classes)
    return {c: max(3, int(round(total * q))) for c, q in zip(classes, p)}


def _draw_pixels(ctx: BuildContext, plan: DatasetPlan, published: str, n: int) -> np.ndarray:
    card = plan.card
    if plan.relevant_to or card.has_real_pixels:
        concept = vocabulary(card.environment).concept(card.class_concepts[published])
        chunks, remaining = [], n
        for i, pool_class in enumerate(ctx.rng.permutation(list(concept.pool_classes))):
            left = len(concept.pool_classes) - i
            share = remaining if left == 1 else int(round(remaining / left))
            have = ctx.pool.available(int(pool_class))
            share = share if have is None else min(share, have)
            if share:
                chunks.append(ctx.pool.take(int(pool_class), share))
            remaining -= share
        if not chunks:
            raise ValueError(f"{card.environment} pool is exhausted for {card.name}/{published}")
        return np.concatenate(chunks)
    generator = MODALITY_GENERATOR[card.modality]
    n_classes = len(vocabulary(generator).pool_class_names)
    label = int(ctx.rng.integers(0, n_classes))
    return ctx.pool.generate(label, n, environment=generator)


def materialise_dataset(ctx: BuildContext, plan: DatasetPlan) -> DatasetKey:
    """Write ``plan`` under ``<workspace>/datasets/<card name>`` and return its key."""
    card, rng = plan.card, ctx.rng
    root_rel = f"datasets/{card.name}"
    root = ctx.workspace / root_rel
    root.mkdir(parents=True, exist_ok=True)
    colour = ctx.pool.colour if card.modality == card.environment else None
    records: list[FileRecord] = []
    errata: list[str] = []

    labelled = card.is_classification and bool(card.classes)
    names = local_class_names(plan) if labelled else {}
    images: list[_Image] = []
    counts: dict[str, int] = {}
    if labelled:
        wanted = _class_counts(plan, list(card.classes), rng)
        vocab = vocabulary(card.environment)
        for published in wanted:
            if card.has_real_pixels:
                pool_classes = vocab.concept(card.class_concepts[published]).pool_classes
                share = min(ctx.pool_budget.get(c, 1.0) for c in pool_classes)
            else:  # procedural pixels need no budget, but get the same cut as the real ones
                share = _typical_share(ctx.pool_budget)
            wanted[published] = max(3, int(round(wanted[published] * share)))
        for published, n in wanted.items():
            pixels = _draw_pixels(ctx, plan, published, n)
            counts[names[published]] = len(pixels)
            images += [_Image(p, names[published], names[published]) for p in pixels]
    else:
        n = max(3, int(round(plan.images * _typical_share(ctx.pool_budget))))
        images = [_Image(p, None, None) for p in _draw_pixels(ctx, plan, "", n)]
    if colour is None:
        colour = images[0].pixels.ndim == 3
    images = [_Image(to_mode(im.pixels, colour), im.site_label, im.true_label) for im in images]
    order = rng.permutation(len(images))
    images = [images[i] for i in order]

    aux = _aux_rng(ctx, plan)
    # injected images are made from raw pool pixels and go through the site's acquisition profile with
    # the clean ones, so their noise, sharpness and file sizes are the dataset's own (issue 22)
    injected = _inject_issues(ctx, plan, images, list(names.values()), colour, aux)
    for im in images:
        if im.issue == "off_topic" and im.source_grey and colour:
            # another modality's grey image: the site's resolution, intensity curve, blur and noise, but
            # no colour cast from its camera (it was not taken with it); grey stays grey, which is content
            grey = apply_profile(to_mode(im.pixels, colour=False), ctx.profile, rng)
            im.pixels = to_mode(grey, colour=True)
        elif im.issue != "duplicate":
            im.pixels = apply_profile(im.pixels, ctx.profile, rng)
    _copy_duplicates(images, rng)
    for im in images:  # each image's format is an independent draw, so drawing it before the shuffle tells nothing
        im.fmt = plan.formats[0] if len(plan.formats) == 1 or rng.random() < 0.7 else plan.formats[1]
        if im.fmt == "nifti" and im.pixels.ndim == 3:
            im.pixels = to_mode(im.pixels, colour=False)
    images = _shuffle(images, aux)  # injected files take random names, rows and paths, like clean ones

    layout = plan.layout if labelled else ("flat" if "segmentation" not in card.task_types else "segmentation")
    label_file = _place_and_write(ctx, plan, root, root_rel, images, layout, records, aux)
    if not labelled:
        _write_file_list(plan, root, root_rel, images, records, aux)
    injected["non_image"] = _write_junk(ctx, plan, root, root_rel, records)

    legend = None
    if plan.label_style == "numeric" and labelled:
        legend = "classes.txt"
        (root / legend).write_text("".join(f"{names[c]}: {c}\n" for c in card.classes), encoding="utf-8")
        records.append(FileRecord(path=f"{root_rel}/{legend}", kind="legend"))
    errata += _pick_errata(plan, rng)
    records.sort(key=lambda r: r.path)
    _set_times(root, aux)
    return DatasetKey(
        hospital=ctx.hospital,
        name=card.name,
        card=card.name,
        path=root_rel,
        pixels="real" if (ctx.pool.is_real and (plan.relevant_to or card.has_real_pixels)) else "procedural",
        relevant_to=plan.relevant_to,
        layout=layout,
        formats=sorted({im.fmt for im in images}),
        label_file=label_file,
        label_style=plan.label_style if labelled else "none",
        naming=plan.naming,
        local_classes=[names[c] for c in card.classes] if labelled else [],
        local_to_concept={names[c]: card.class_concepts[c] for c in card.classes} if labelled else {},
        local_to_published={names[c]: c for c in card.classes} if labelled else {},
        class_counts=counts,
        injected={k: v for k, v in injected.items() if v},
        card_errata=errata,
        files=records,
    )


def _aux_rng(ctx: BuildContext, plan: DatasetPlan) -> np.random.Generator:
    """A second random stream for one dataset, for the draws that hide injected files (their order,
    broken files' content and sizes). Kept apart from ``ctx.rng`` so that every other draw of a
    seed's build (pixels, profiles, styles) stays where it was."""
    digest = hashlib.sha256(f"{ctx.uid_seed}/{plan.card.name}/aux".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _inject_issues(ctx: BuildContext, plan: DatasetPlan, images: list[_Image], classes: list[str], colour: bool,
                   aux: np.random.Generator) -> dict[str, int]:
    """Add duplicates, off-topic images, wrong labels and broken files to the (raw) image list in place.

    Near-duplicates get their pixels in :func:`_copy_duplicates`, after the acquisition profile: a
    copy of the original file as the site stored it, re-exported with a slight intensity change."""
    rng, done = ctx.rng, {}
    if not plan.issues or not images:
        return done
    clean = [i for i, im in enumerate(images) if im.issue == "none"]
    picks = list(rng.permutation(clean))
    if len(classes) >= 2:
        for _ in range(min(plan.issues.get("label_error", 0), len(picks) - 1)):
            im = images[picks.pop()]
            im.site_label = str(rng.choice([c for c in classes if c != im.true_label]))
            im.issue = "label_error"
            done["label_error"] = done.get("label_error", 0) + 1
    for _ in range(min(plan.issues.get("duplicate", 0), len(picks))):
        src = picks.pop()
        images.append(_Image(images[src].pixels, images[src].site_label, images[src].true_label, "duplicate",
                             duplicate_of=src))
        done["duplicate"] = done.get("duplicate", 0) + 1
    size = images[0].pixels.shape[0]
    source_env = OFF_TOPIC_SOURCE[plan.card.environment]
    label = (lambda: str(rng.choice(classes))) if classes else (lambda: None)
    for _ in range(plan.issues.get("off_topic", 0)):
        other = ctx.pool.generate(int(rng.integers(0, 2)), 1, environment=source_env)[0]
        from PIL import Image

        grey_source = other.ndim == 2
        other = np.asarray(Image.fromarray(to_mode(other, colour)).resize((size, size), Image.BILINEAR))
        images.append(_Image(other, label(), None, "off_topic", source_grey=grey_source))
        done["off_topic"] = done.get("off_topic", 0) + 1
    for kind in ("corrupt", "truncated", "zero_byte"):
        for _ in range(plan.issues.get(kind, 0)):
            # another acquisition of a random image: a truncated file shares no byte prefix with a kept one
            base = images[int(aux.integers(0, len(images)))].pixels.astype(np.float32)
            pixels = np.clip(base * aux.uniform(0.96, 1.04), 0, 255)
            images.append(_Image(pixels.round().astype(np.uint8), label(), None, kind))
            done[kind] = done.get(kind, 0) + 1
    return done


def _copy_duplicates(images: list[_Image], rng: np.random.Generator) -> None:
    """Give each near-duplicate its original's stored pixels with a slight gain and offset change
    (another export of the same acquisition): what a duplicate detector is meant to catch."""
    for im in images:
        if im.issue == "duplicate" and im.duplicate_of is not None:
            orig = images[im.duplicate_of].pixels.astype(np.float32)
            near = orig * rng.uniform(0.96, 1.04) + rng.uniform(-3.0, 3.0)
            im.pixels = np.clip(near, 0, 255).round().astype(np.uint8)


def _typical_share(budget: dict[int, float]) -> float:
    """The pool-budget cut a dataset without real pixels takes: the mean of the real classes' cuts."""
    return float(np.mean(list(budget.values()))) if budget else 1.0


#: modification times: every file of a dataset gets a time drawn on its own within this window after a
#: per-dataset start, so that neither write order nor injection shows in ``ls -t`` (issue 22)
_TIME_ORIGIN = 1_640_995_200  # 2022-01-01 UTC
_TIME_SPAN = 2 * 365 * 86_400
_TIME_WINDOW = 30 * 86_400


def _set_times(root: Path, aux: np.random.Generator) -> None:
    """Seeded modification times for every file and folder under ``root``, in path order."""
    import os

    start = _TIME_ORIGIN + float(aux.uniform(0, _TIME_SPAN))
    paths = sorted(root.rglob("*"), key=lambda p: p.as_posix())
    for path in [*paths, root]:
        t = start + float(aux.uniform(0, _TIME_WINDOW))
        os.utime(path, (t, t))


def _shuffle(images: list[_Image], rng: np.random.Generator) -> list[_Image]:
    """The image list in random order, ``duplicate_of`` re-pointed to the originals' new positions.

    Injection appends its files at the end; names, label-file rows and nested paths all follow list
    order, so without this the highest-numbered files would be the injected ones."""
    order = [int(i) for i in rng.permutation(len(images))]
    position = {old: new for new, old in enumerate(order)}
    shuffled = [images[i] for i in order]
    for im in shuffled:
        if im.duplicate_of is not None:
            im.duplicate_of = position[im.duplicate_of]
    return shuffled


def _place_and_write(ctx: BuildContext, plan: DatasetPlan, root: Path, root_rel: str, images: list[_Image],
                     layout: str, records: list[FileRecord], aux: np.random.Generator) -> str | None:
    """Choose each image's path for the layout, write images and the label file; return its name."""
    rng = ctx.rng
    rows: list[dict] = []
    corrupt: list[tuple[Path, str, bytes]] = []
    patients = max(2, len(images) // 3)
    for i, im in enumerate(images):
        stem = _file_stem(plan, rng, i)
        ext = EXT[im.fmt]
        if layout == "class_folders":
            rel = f"{im.site_label}/{stem}{ext}"
        elif layout == "nested":
            p = int(rng.integers(0, patients))
            rel = f"P{p:04d}/study_{int(rng.integers(1, 3))}/IM{i % 5 + 1:04d}{ext}"
        elif layout == "segmentation":
            rel = f"images/{stem}{ext}"
        else:
            rel = f"images/{stem}{ext}"
        while any(r.relpath == rel for r in images[:i]):  # nested names may collide: next instance number
            rel = rel.replace("/IM", "/IMX", 1)
        im.relpath = rel
        rows.append({"file": rel, "label": im.site_label})
    for i, im in enumerate(images):
        path = root / im.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        garbage = _write_image(ctx, plan, path, im, i, aux)
        if garbage is not None:
            corrupt.append((path, im.fmt, garbage))
        is_image = im.issue not in ("corrupt", "truncated", "zero_byte")
        records.append(FileRecord(
            path=f"{root_rel}/{im.relpath}",
            kind="image" if is_image else "corrupt",
            issue=im.issue,  # type: ignore[arg-type]
            format=im.fmt,
            site_label=im.site_label,
            true_label=im.true_label if im.issue not in ("off_topic",) and is_image else None,
            duplicate_of=f"{root_rel}/{images[im.duplicate_of].relpath}" if im.duplicate_of is not None else None,
            ahash=average_hash(im.pixels) if is_image else None,
        ))
        if layout == "segmentation":
            mask_rel = f"masks/{Path(im.relpath).stem.removesuffix('.nii')}_mask.png"
            (root / "masks").mkdir(exist_ok=True)
            grey = to_mode(im.pixels, colour=False)
            formats.write_png(root / mask_rel, ((grey > grey.mean()) * 255).astype(np.uint8))
            records.append(FileRecord(path=f"{root_rel}/{mask_rel}", kind="mask", format="png"))
    _write_corrupt(corrupt, [(root / im.relpath, im.fmt) for im in images
                             if im.issue not in ("corrupt", "truncated", "zero_byte")], aux)
    return _write_label_file(plan, root, root_rel, layout, rows, records, rng)


def _write_corrupt(corrupt: list[tuple[Path, str, bytes]], written: list[tuple[Path, str]],
                   aux: np.random.Generator) -> None:
    """Corrupt files: garbage about as long as the dataset's real files of the same format, so that
    their size alone does not give them away."""
    sizes: dict[str, list[int]] = {}
    for path, fmt in written:
        sizes.setdefault(fmt, []).append(path.stat().st_size)
    every = [n for ns in sizes.values() for n in ns]
    for path, fmt, garbage in corrupt:
        typical = float(np.median(sizes.get(fmt) or every or [len(garbage)]))
        n = max(64, int(typical * aux.uniform(0.85, 1.15)))
        extra = aux.integers(0, 256, max(0, n - len(garbage)), dtype=np.uint8).tobytes()
        path.write_bytes((garbage + extra)[:n])


def _write_file_list(plan: DatasetPlan, root: Path, root_rel: str, images: list[_Image], records: list[FileRecord],
                     aux: np.random.Generator) -> None:
    """An unlabelled dataset's export list (file, study date, device; no labels), in the planned
    layout's table format, so that it carries side files as often as a labelled one does (issue 22)."""
    if plan.layout == "class_folders":
        return
    rows = [{"file": im.relpath, "study_date": f"20{int(aux.integers(10, 25))}-{int(aux.integers(1, 13)):02d}-15",
             "device": str(aux.choice(["A", "B", "C"]))} for im in images]
    if plan.layout == "flat_json":
        name = "file_list.json"
        (root / name).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        name = "file_list.csv" if plan.layout == "flat_csv" else "metadata.csv"
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["file", "study_date", "device"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (root / name).write_text(buf.getvalue(), encoding="utf-8")
    records.append(FileRecord(path=f"{root_rel}/{name}", kind="junk", issue="non_image"))


def _write_label_file(plan: DatasetPlan, root: Path, root_rel: str, layout: str, rows: list[dict],
                      records: list[FileRecord], rng: np.random.Generator) -> str | None:
    if layout == "flat_csv":
        key_col, label_col = [("image_id", "dx"), ("filename", "label"), ("file", "diagnosis")][int(rng.integers(0, 3))]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([key_col, label_col])
        for row in rows:
            name = row["file"].removeprefix("images/")
            writer.writerow([name.rsplit(".", 2)[0] if key_col == "image_id" else name, row["label"]])
        name = "labels.csv"
        (root / name).write_text(buf.getvalue(), encoding="utf-8")
    elif layout == "flat_json":
        name = "labels.json"
        if rng.random() < 0.5:
            payload: object = {r["file"].removeprefix("images/"): r["label"] for r in rows}
        else:
            payload = [{"file": r["file"], "label": r["label"]} for r in rows]
        (root / name).write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    elif layout == "nested":
        name = "metadata.csv"
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["patient_id", "study", "path", "diagnosis"])
        for row in rows:
            patient, study = row["file"].split("/")[:2]
            writer.writerow([patient, study, row["file"], row["label"]])
        (root / name).write_text(buf.getvalue(), encoding="utf-8")
    else:
        return None
    records.append(FileRecord(path=f"{root_rel}/{name}", kind="label_file"))
    return name


def _patient(ctx: BuildContext) -> formats.Patient:
    rng = ctx.rng
    patient = formats.Patient(
        name=f"{rng.choice(LAST_NAMES)}^{rng.choice(FIRST_NAMES)}",
        patient_id=f"{ctx.hospital[-2:]}{int(rng.integers(10**6, 10**7))}",
        birth_date=f"{int(rng.integers(1935, 2010))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        sex=str(rng.choice(["F", "M"])),
    )
    ctx.patients.append({"name": patient.name, "patient_id": patient.patient_id, "birth_date": patient.birth_date})
    return patient


def _write_image(ctx: BuildContext, plan: DatasetPlan, path: Path, im: _Image, index: int,
                 aux: np.random.Generator) -> bytes | None:
    """Encode ``im`` in its format; broken files are a real encoding, cut, or garbage. For a corrupt
    file, return its garbage (the caller sizes and writes it once the real files are on disk)."""
    if im.issue == "zero_byte":
        path.write_bytes(b"")
        return None
    if im.issue == "corrupt":
        garbage = ctx.rng.integers(0, 256, int(ctx.rng.integers(200, 2000)), dtype=np.uint8).tobytes()
        path.write_bytes(garbage)
        return garbage
    p = ctx.profile
    if im.fmt == "png":
        formats.write_png(path, im.pixels)
    elif im.fmt == "jpeg":
        formats.write_jpeg(path, im.pixels, p.jpeg_quality)
    elif im.fmt == "tiff":
        formats.write_tiff(path, im.pixels, compress=p.dicom_compression != "none")
    elif im.fmt == "nifti":
        formats.write_nifti(path, im.pixels, tuple(p.nifti_voxel_mm), ctx.rng)  # type: ignore[arg-type]
    elif im.fmt == "dicom":
        style = formats.DicomStyle(p.dicom_photometric, p.dicom_compression, p.dicom_bits,
                                   p.dicom_rescale_intercept, p.dicom_explicit_vr)
        formats.write_dicom(
            path, im.pixels, patient=_patient(ctx), style=style,
            modality=formats.DICOM_MODALITY.get(MODALITY_GENERATOR[plan.card.modality], "OT"),
            institution=ctx.institution, body_part=plan.card.body_part,
            uid_seed=f"{ctx.uid_seed}/{plan.card.name}/{index}", study_date=f"20{int(ctx.rng.integers(10, 25))}0{int(ctx.rng.integers(1, 10))}15",
            series_description=f"{plan.card.name} export",
        )
    else:
        raise ValueError(f"unknown format {im.fmt}")
    if im.issue == "truncated":  # the first 30-60 % of a real encoding
        data = path.read_bytes()
        path.write_bytes(data[: max(16, int(len(data) * aux.uniform(0.3, 0.6)))])
    return None


_JUNK: tuple[tuple[str, bytes], ...] = (
    ("README.txt", b""),
    (".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(64)),
    ("Thumbs.db", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(120)),
    ("radiology_report_2021.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"),
    ("export_statistics.xlsx", b"PK\x03\x04\x14\x00\x06\x00" + bytes(80)),
    ("preprocess.py", b"import os\nfor f in os.listdir('.'):\n    print(f)\n"),
    ("notes.docx", b"PK\x03\x04\x14\x00\x08\x00" + bytes(60)),
    ("._IMG_0001.png", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X" + bytes(40)),
)


def _write_junk(ctx: BuildContext, plan: DatasetPlan, root: Path, root_rel: str, records: list[FileRecord]) -> int:
    n = plan.issues.get("non_image", 0)
    picks = ctx.rng.choice(len(_JUNK), size=min(n, len(_JUNK)), replace=False)
    subdirs = sorted({p.parent.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"."})
    for k in picks:
        name, content = _JUNK[int(k)]
        if name == "README.txt":
            content = f"{plan.card.name}\n\n{plan.card.description}\n\nSource: {plan.card.source}\n".encode()
        where = "" if (not subdirs or ctx.rng.random() < 0.6) else str(ctx.rng.choice(subdirs)) + "/"
        (root / f"{where}{name}").write_bytes(content)
        records.append(FileRecord(path=f"{root_rel}/{where}{name}", kind="junk", issue="non_image"))
    return len(picks)


def _pick_errata(plan: DatasetPlan, rng: np.random.Generator) -> list[str]:
    """Where the steward's card will be wrong or incomplete about this dataset."""
    options = ["image_count_off", "label_file_omitted"]
    if len(plan.formats) > 1:
        options.append("format_incomplete")
    return sorted(str(e) for e in rng.choice(options, size=int(rng.integers(0, 2)), replace=False))


def pool_budget(pool: ImagePool, plans: list[DatasetPlan]) -> dict[int, float]:
    """Scale planned counts down where the real pool cannot supply them (with room for label skew)."""
    if not pool.is_real:
        return {}
    demand: dict[int, float] = {}
    for plan in plans:
        if not plan.card.has_real_pixels:
            continue
        vocab = vocabulary(plan.card.environment)
        for published in plan.card.classes:
            classes = vocab.concept(plan.card.class_concepts[published]).pool_classes
            for c in classes:
                demand[c] = demand.get(c, 0.0) + plan.images / len(plan.card.classes) / len(classes)
    return {c: min(1.0, 0.6 * (pool.available(c) or 0) / d) for c, d in demand.items() if d}
