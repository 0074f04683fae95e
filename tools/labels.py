"""Label files and class folders: parse, organise, list, map.

Sites store labels as class folders, a CSV (``image_id`` without extension / ``filename`` /
``file`` / ``path`` columns next to ``dx`` / ``label`` / ``diagnosis``), a JSON dict
``{file: label}`` or list of ``{file, label}``, or a nested tree with ``metadata.csv`` paths.
:func:`read_label_file` reads all of them into one ``{relative image path: label}`` map, resolving
each reference against the files that really exist (exact path, under ``images/``, by name, or by
name without extension). Output names are made unique deterministically (:func:`unique_names`) so
that same-named files from different folders never overwrite each other.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from collections import Counter
from pathlib import Path

from environments.readers import image_format
from tools.sandbox import (
    ToolError,
    Workspace,
    cap_list,
    load_origins,
    walk_files,
    write_manifest,
)

LABEL_FILE_NAMES = ("labels.csv", "metadata.csv", "labels.json", "annotations.csv", "labels.tsv")
FILE_HINTS = ("path", "file", "filename", "image", "image_id", "img", "name", "id")
LABEL_HINTS = ("label", "dx", "diagnosis", "class", "target", "category", "grade", "finding")
MAX_LABEL_FILE = 20_000_000


def is_image_name(path: Path) -> bool:
    """An image by its name; AppleDouble ``._x.png`` and other hidden files are not."""
    return image_format(path) is not None and not path.name.startswith(".")


def image_stem(name: str) -> str:
    low = name.lower()
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".bmp"):
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def safe_class_name(label: object) -> str:
    """A label usable as a folder name (no separators, never '.', '..' or empty)."""
    text = str(label).strip().replace("/", "-").replace("\\", "-").replace("\x00", "")
    if text in ("", ".", ".."):
        raise ToolError(f"label {label!r} cannot be used as a folder name")
    return text[:100]


def find_label_file(root: Path) -> Path | None:
    """The dataset's label file: a known name at the top level, else the only CSV/JSON there."""
    for name in LABEL_FILE_NAMES:
        if (root / name).is_file() and not (root / name).is_symlink():
            return root / name
    found = sorted(p for p in root.iterdir() if p.suffix.lower() in (".csv", ".json", ".tsv") and p.is_file()
                   and not p.is_symlink())
    return found[0] if len(found) == 1 else None


def _pick(columns: list[str], hints: tuple[str, ...], chosen: str | None, what: str) -> str:
    if chosen:
        if chosen not in columns:
            raise ToolError(f"no column {chosen!r}; columns are {columns}")
        return chosen
    for hint in hints:
        for col in columns:
            if col.strip().lower() == hint:
                return col
    for hint in hints:
        for col in columns:
            if hint in col.strip().lower():
                return col
    raise ToolError(f"cannot tell which column holds the {what}; columns are {columns}; pass it explicitly")


def read_label_rows(path: Path, file_column: str | None = None, label_column: str | None = None) -> list[tuple[str, str]]:
    """(file reference, label) pairs from a CSV/TSV or JSON label file."""
    if path.stat().st_size > MAX_LABEL_FILE:
        raise ToolError(f"{path.name} is larger than {MAX_LABEL_FILE // 1_000_000} MB; not a label file")
    text = path.read_text("utf-8-sig", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ToolError(f"{path.name} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict) and all(isinstance(v, (str, int)) for v in data.values()):
            return [(str(k), str(v)) for k, v in data.items()]
        if isinstance(data, dict):  # {"images": [...]} and similar wrappers
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else data
        if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
            cols = list(dict.fromkeys(k for r in data for k in r))
            fcol = _pick(cols, FILE_HINTS, file_column, "file names")
            lcol = _pick([c for c in cols if c != fcol], LABEL_HINTS, label_column, "labels")
            return [(str(r[fcol]), str(r[lcol])) for r in data if fcol in r and lcol in r and r[lcol] is not None]
        raise ToolError(f"{path.name}: expected a {{file: label}} object or a list of {{file, label}} objects")
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" or ("\t" in text.split("\n", 1)[0]) else "excel"
    rows = list(csv.DictReader(io.StringIO(text), dialect=dialect))
    if not rows:
        raise ToolError(f"{path.name} has no data rows")
    cols = [c for c in rows[0] if c is not None]
    fcol = _pick(cols, FILE_HINTS, file_column, "file names")
    lcol = _pick([c for c in cols if c != fcol], LABEL_HINTS, label_column, "labels")
    return [(r[fcol].strip(), r[lcol].strip()) for r in rows if r.get(fcol) and r.get(lcol) not in (None, "")]


class FileIndex:
    """The image files under a dataset root, findable by path, by name and by name sans extension."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = [p for p in walk_files(root) if is_image_name(p)]
        self.by_rel = {p.relative_to(root).as_posix(): p for p in self.files}
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        for p in self.files:
            self.by_name.setdefault(p.name, []).append(p)
            self.by_stem.setdefault(image_stem(p.name), []).append(p)

    def find(self, ref: str) -> Path | None:
        ref = ref.strip().replace("\\", "/")
        while ref.startswith("./"):
            ref = ref[2:]
        for key in (ref, f"images/{ref}"):
            if key in self.by_rel:
                return self.by_rel[key]
        name = ref.rsplit("/", 1)[-1]
        for table, key in ((self.by_name, name), (self.by_stem, name), (self.by_stem, image_stem(name))):
            hits = table.get(key, [])
            if len(hits) == 1:
                return hits[0]
        return None


def dataset_labels(root: Path, label_file: Path | None = None, file_column: str | None = None,
                   label_column: str | None = None) -> tuple[dict[Path, str], dict[str, int | list[str]]]:
    """Image path -> label for a dataset, from its label file or else its class folders."""
    index = FileIndex(root)
    label_file = label_file or find_label_file(root)
    labels: dict[Path, str] = {}
    missing: list[str] = []
    if label_file is not None:
        for ref, label in read_label_rows(label_file, file_column, label_column):
            hit = index.find(ref)
            if hit is None:
                missing.append(ref)
            else:
                labels[hit] = label
        source = f"label file {label_file.name}"
    else:
        for p in index.files:
            parts = p.relative_to(root).parts
            if len(parts) >= 2:
                labels[p] = parts[0]
        source = "class folders"
    unlabelled = sorted(p.relative_to(root).as_posix() for p in index.files if p not in labels)
    return labels, {"source": source, "missing": missing, "unlabelled": unlabelled}  # type: ignore[dict-item]


def unique_names(files: list[Path], root: Path, prefix: dict[Path, str] | None = None) -> dict[Path, str]:
    """A distinct output name per file: its own name when unique, else its folder path joined by '__'.

    Decided from the whole set in sorted order, so the same input always gives the same names.
    """
    files = sorted(files)
    counts = Counter(p.name for p in files)
    out: dict[Path, str] = {}
    taken: set[str] = set()
    for p in files:
        name = p.name if counts[p.name] == 1 else "__".join(p.relative_to(root).parts)
        if prefix and counts[p.name] > 1 and p in prefix:
            name = f"{prefix[p]}__{name}"
        out[p] = claim_name(name, taken)
    return out


def claim_name(name: str, taken: set[str]) -> str:
    """``name``, or ``stem~2.ext``, ``stem~3.ext``… when that name (in any case) is already in ``taken``."""
    base, k = name, 2
    while name.lower() in taken:
        stem, dot, ext = base.partition(".")
        name, k = f"{stem}~{k}{dot}{ext}", k + 1
    taken.add(name.lower())
    return name


def organise_by_labels(ws: Workspace, source: str, destination: str, label_file: str | None = None,
                       file_column: str | None = None, label_column: str | None = None,
                       overwrite: bool = False) -> dict:
    """Copy every labelled image of ``source`` to ``destination/<label>/``."""
    src = ws.resolve(source)
    if not src.is_dir():
        raise ToolError(f"{source!r} is not a folder")
    lf = ws.resolve(label_file) if label_file else find_label_file(src)
    if lf is None:
        raise ToolError(f"no label file found at the top of {ws.rel(src)} (looked for {', '.join(LABEL_FILE_NAMES)}); "
                        "if the images already sit in class folders, use copy_dataset instead")
    if not lf.is_file() or not lf.is_relative_to(src):
        raise ToolError("label_file must be a file inside the source folder")
    labels, info = dataset_labels(src, lf, file_column, label_column)
    if not labels:
        raise ToolError(f"none of the entries of {lf.name} matches an image under {ws.rel(src)}")
    dest = ws.output_path(destination, overwrite=overwrite)
    by_class: dict[str, list[Path]] = {}
    for p, label in labels.items():
        by_class.setdefault(safe_class_name(label), []).append(p)
    origins: dict[str, str] = {}
    earlier = load_origins(src)
    renamed = 0
    failed: list[str] = []
    with ws.staged_output(dest) as stage:
        for cls, files in sorted(by_class.items()):
            (stage / cls).mkdir(parents=True, exist_ok=True)
            for p, name in unique_names(files, src).items():
                try:
                    shutil.copyfile(p, stage / cls / name)
                except OSError as exc:  # listed; the other files are copied
                    failed.append(f"{p.relative_to(src).as_posix()}: could not be read ({exc.strerror or exc})")
                    continue
                origins[f"{cls}/{name}"] = _origin(ws, src, p, earlier)
                renamed += name != p.name
    write_manifest(ws, dest, origins, "organise_by_label_file")
    return {
        "destination": ws.rel(dest), "label_file": ws.rel(lf), "copied": len(origins),
        "classes": {c: len(v) for c, v in sorted(by_class.items())},
        "renamed_to_avoid_clashes": renamed,
        "label_entries_without_file": {"count": len(info["missing"]), "examples": cap_list(list(info["missing"]), 10)},
        "images_without_label_not_copied": {"count": len(info["unlabelled"]),
                                            "examples": cap_list(list(info["unlabelled"]), 10)},
        "note": "only labelled image files were copied; the source is unchanged",
        **({"not_copied": {"count": len(failed), "files": cap_list(failed, 15)}} if failed else {}),
    }


def _origin(ws: Workspace, folder: Path, file: Path, earlier: dict[str, str]) -> str:
    """The original source of ``file`` (from ``folder``'s manifest, ``earlier``), else its own path."""
    return earlier.get(file.relative_to(folder).as_posix()) or ws.rel(file)


def class_folders(ws: Workspace, path: str) -> dict:
    """Immediate sub-folders of ``path`` with their image counts."""
    root = ws.resolve(path)
    if not root.is_dir():
        raise ToolError(f"{path!r} is not a folder")
    classes: dict[str, int] = {}
    other: dict[str, int] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        files = list(walk_files(d))
        classes[d.name] = sum(1 for f in files if is_image_name(f))
        if len(files) != classes[d.name]:
            other[d.name] = len(files) - classes[d.name]
    loose = [p.name for p in root.iterdir() if p.is_file()]
    out: dict = {"path": ws.rel(root), "class_folders": classes, "total_images": sum(classes.values())}
    if other:
        out["non_image_files_in_folders"] = other
    if loose:
        out["files_outside_class_folders"] = {"count": len(loose), "examples": cap_list(sorted(loose), 10)}
    return out


def _copy_mapped(ws: Workspace, src: Path, folders: list[Path], targets: dict[str, str | None],
                 dest: Path) -> tuple[dict[str, str], Counter[str], int]:
    """Copy each class folder's images into its target's folder under ``dest``; (origins, counts, renamed)."""
    earlier = load_origins(src)
    origins: dict[str, str] = {}
    counts: Counter[str] = Counter()
    renamed = 0
    for target in sorted({t for t in targets.values() if t}):
        out_dir = dest / target
        out_dir.mkdir(parents=True, exist_ok=True)
        files = [f for d in folders if targets[d.name] == target for f in walk_files(d) if is_image_name(f)]
        existing = {p.name.lower() for p in out_dir.iterdir()}
        names_for = unique_names(files, src)
        for f in sorted(files):
            name = names_for[f]
            if name.lower() in existing:  # merging a second dataset: prefix with its folder name
                name = f"{src.name}__{name}"
                k = 2
                while name.lower() in existing:
                    name = f"{src.name}__{k}__{names_for[f]}"
                    k += 1
            existing.add(name.lower())
            shutil.copyfile(f, out_dir / name)
            origins[f"{target}/{name}"] = _origin(ws, src, f, earlier)
            counts[target] += 1
            renamed += name != f.name
    return origins, counts, renamed


def apply_mapping(ws: Workspace, source: str, mapping: dict[str, str | None], destination: str,
                  merge: bool = False, overwrite: bool = False) -> dict:
    """Rebuild ``source``'s class folders under target classes; ``None`` drops a class."""
    src = ws.resolve(source)
    if not src.is_dir():
        raise ToolError(f"{source!r} is not a folder")
    folders = sorted(p for p in src.iterdir() if p.is_dir() and not p.is_symlink())
    if not folders:
        raise ToolError(f"{ws.rel(src)} has no class folders; organise it first")
    names = {p.name for p in folders}
    lookup = {str(k).strip(): v for k, v in mapping.items()}
    unknown = sorted(k for k in lookup if k not in names)
    unmapped = sorted(n for n in names if n not in lookup)
    if unknown:
        raise ToolError(f"mapping names classes that {ws.rel(src)} does not have: {unknown}; "
                        f"its class folders are {sorted(names)}")
    if unmapped:
        raise ToolError(f"every class folder needs an entry (use null to drop a class); missing: {unmapped}")
    targets = {n: (safe_class_name(v) if v not in (None, "", "null", "None", "drop") else None)
               for n, v in lookup.items()}
    if merge:  # adds to a folder that may already hold other datasets' files
        dest = ws.new_output(destination, overwrite=overwrite, merge=True)
        staging = contextlib.nullcontext(dest)
    else:  # built aside and moved into place whole
        dest = ws.output_path(destination, overwrite=overwrite)
        staging = ws.staged_output(dest)
    with staging as stage:
        origins, counts, renamed = _copy_mapped(ws, src, folders, targets, stage)
    dropped: Counter[str] = Counter()
    for d in folders:
        if targets[d.name] is None:
            dropped[d.name] = sum(1 for f in walk_files(d) if is_image_name(f))
    write_manifest(ws, dest, origins, "apply_label_mapping", merge=merge)
    final = {d.name: sum(1 for f in walk_files(d) if is_image_name(f)) for d in sorted(dest.iterdir()) if d.is_dir()}
    return {"destination": ws.rel(dest), "copied_per_target_class": dict(counts),
            "dropped_classes": dict(dropped), "renamed_to_avoid_clashes": renamed,
            "destination_class_counts": final, "note": "files were copied; the source folder is unchanged"}
