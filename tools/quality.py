"""Data-quality tools: detect near-duplicates, off-topic images and label errors; remove them.

Detection writes its findings to a flags file (``<folder>.flags.json`` beside a work folder, or
``work/flags/<dataset>.flags.json`` for a source dataset) so that removal is a separate, auditable
step and nothing found is thrown away (the original tool discarded SelfClean's results). The
detectors themselves live in :mod:`tools.detectors` and are measured by
``scripts/bench_detectors.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tools import detectors
from tools.images import _prune_manifest, _remove_empty_dirs
from tools.labels import dataset_labels, is_image_name
from tools.sandbox import ToolError, Workspace, cap_list, walk_files, write_atomic

CHECKS = ("duplicates", "off_topic", "label_errors")


def flags_path(ws: Workspace, root: Path) -> Path:
    if root.is_relative_to(ws.work) and root != ws.work:
        return root.with_name(root.name + ".flags.json")
    return ws.work / "flags" / f"{root.name}.flags.json"


def detect_issues(ws: Workspace, path: str, checks: list[str] | None = None) -> dict:
    """Run the chosen detectors on every image under ``path`` and write a flags file."""
    root = ws.resolve(path)
    if not root.is_dir():
        raise ToolError(f"{path!r} is not a folder")
    checks = list(checks or CHECKS)
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ToolError(f"unknown checks {unknown}; choose from {list(CHECKS)}")
    files = [f for f in walk_files(root) if is_image_name(f)]
    if not files:
        raise ToolError(f"no image files under {ws.rel(root)}")
    data = detectors.load_images(files)
    rel = [ws.rel(f) for f in data.files]
    flags: dict = {"folder": ws.rel(root), "images_checked": len(data.files),
                   "unreadable": [ws.rel(f) for f in data.failed]}
    if "duplicates" in checks:
        flags["duplicates"] = [{"file": rel[d], "same_as": rel[k], "similarity": round(c, 4)}
                               for k, d, c in detectors.near_duplicates(data)]
    off = detectors.off_topic(data) if ("off_topic" in checks or "label_errors" in checks) else []
    if "off_topic" in checks:
        flags["off_topic"] = [{"file": rel[i], "score": s, "reason": why} for i, s, why in off]
    if "label_errors" in checks:
        flags["label_errors"] = _label_errors(root, data, rel, {i for i, _, _ in off})
    target = flags_path(ws, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, json.dumps(flags, indent=1, ensure_ascii=False) + "\n")
    out: dict = {"folder": flags["folder"], "images_checked": len(data.files), "flags_file": ws.rel(target)}
    if data.failed:
        out["unreadable_images"] = {"count": len(data.failed), "files": cap_list(flags["unreadable"], 10)}
    for kind in CHECKS:
        if kind in flags:
            out[kind] = {"count": len(flags[kind]), "files": cap_list([e["file"] for e in flags[kind]], 25)}
    if "label_errors" in checks:
        out["label_errors_note"] = ("label-error flags are uncertain (confident learning; about half of them "
                                   "are real errors): check the suggested classes before removing them")
    out["next"] = "remove_flagged_files with this flags_file removes them from a copy under work/"
    return out


def _label_errors(root: Path, data: detectors.Loaded, rel: list[str], skip: set[int]) -> list[dict]:
    try:
        labels, _ = dataset_labels(root)
    except ToolError:
        return []
    keep = [i for i in range(len(rel)) if i not in skip and data.files[i] in labels]
    if not keep:
        return []
    sub = detectors.Loaded([data.files[i] for i in keep], data.grey[keep], data.rgb[keep], {})
    found = detectors.label_errors(sub, [labels[data.files[i]] for i in keep])
    return [{"file": rel[keep[i]], "given": labels[data.files[keep[i]]], "suggested": s, "margin": m}
            for i, s, m in found]


def flagged_files(ws: Workspace, flags_file: str, kinds: list[str] | None = None) -> list[tuple[str, str]]:
    """``(file, kind)`` for what :func:`remove_flagged` would delete (a preview for a person to approve);
    empty when the flags file cannot be read (the removal itself then says why)."""
    try:
        flags = json.loads(ws.resolve(flags_file).read_text("utf-8"))
    except (ValueError, OSError, ToolError):
        return []
    return [(str(entry.get("file")), kind) for kind in (kinds or CHECKS) for entry in flags.get(kind, [])
            if isinstance(entry, dict)]


def remove_flagged(ws: Workspace, flags_file: str, kinds: list[str] | None = None) -> dict:
    """Delete the files a flags file lists (for the chosen kinds); only under work/."""
    target = ws.resolve(flags_file)
    if not target.is_file() or not target.name.endswith(".flags.json"):
        raise ToolError(f"{flags_file!r} is not a flags file (written by detect_data_issues, *.flags.json)")
    try:
        flags = json.loads(target.read_text("utf-8"))
    except (ValueError, OSError) as exc:
        raise ToolError(f"cannot read {flags_file!r}: {exc}") from None
    kinds = list(kinds or CHECKS)
    unknown = [k for k in kinds if k not in CHECKS]
    if unknown:
        raise ToolError(f"unknown kinds {unknown}; choose from {list(CHECKS)}")
    folder = ws.resolve(flags.get("folder", ""))
    if not (folder.is_relative_to(ws.work) and folder != ws.work):
        raise ToolError(f"these flags describe {ws.rel(folder)}, which is read-only; copy the dataset into "
                        "work/, run detect_data_issues on the copy, then remove")
    removed: dict[str, int] = {}
    missing: list[str] = []
    for kind in kinds:
        removed[kind] = 0
        for entry in flags.get(kind, []):
            path = ws.resolve(entry["file"], must_exist=False, write=True)
            if not path.is_relative_to(folder):
                raise ToolError(f"flags file lists {entry['file']!r} outside {ws.rel(folder)}; refused")
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed[kind] += 1
            else:
                missing.append(entry["file"])
    _remove_empty_dirs(folder)
    _prune_manifest(ws, folder)
    left = sum(1 for f in walk_files(folder) if is_image_name(f))
    return {"folder": ws.rel(folder), "removed": removed, "already_gone": len(missing), "images_left": left}



def remove_files(ws: Workspace, paths: list[str], reason: str = "") -> dict:
    """Delete the listed files (only under work/): for files the agent itself judges wrong."""
    from tools.sandbox import manifest_path

    if len(paths) > 5000:
        raise ToolError("at most 5000 files per call")
    targets = [ws.resolve(p, must_exist=False, write=True) for p in paths]  # every path checked before any delete
    removed, missing, folders = 0, [], set()
    for text, path in zip(paths, targets):
        if path == ws.work or path.is_dir():
            raise ToolError(f"{text!r} is a folder; name files")
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed += 1
            folders |= {a for a in path.parents if a.is_relative_to(ws.work) and a != ws.work
                        and manifest_path(a).is_file()}
        else:
            missing.append(text)
    for folder in folders:
        _remove_empty_dirs(folder)
        _prune_manifest(ws, folder)
    return {"removed": removed, "not_found": {"count": len(missing), "files": cap_list(missing, 10)},
            "reason": reason[:200]}
