"""Reading tools: small text files, folder summaries, label-file previews.

They only read, and never more than a bounded prefix of a file: a 2 GB file or a DICOM cannot
flood the model's context. Binary files are refused (a NUL byte or invalid UTF-8 in the prefix).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

from tools.labels import FILE_HINTS, LABEL_HINTS, is_image_name
from tools.sandbox import WORK, ToolError, Workspace, walk_files

READ_LIMIT = 64_000
TEXT_CAP = 4500


def _read_prefix(path: Path, limit: int = READ_LIMIT) -> tuple[str, int]:
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw = fh.read(limit)
    if b"\x00" in raw[:8192]:
        raise ToolError(f"{path.name} is a binary file ({size} bytes); only text files can be read. "
                        "Use summarise_images for images")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(raw) - 4:  # not just a multi-byte character cut at the limit
            raise ToolError(f"{path.name} is not a UTF-8 text file ({size} bytes); refused") from None
        text = raw[: exc.start].decode("utf-8")
    return text, size


def read_text_file(ws: Workspace, path: str, max_chars: int = TEXT_CAP, offset: int = 0) -> str:
    """A window of a text file (data cards, README, classes.txt, label files) from ``offset``."""
    target = ws.resolve(path)
    if target.is_dir():
        raise ToolError(f"{path!r} is a folder; use list_folder")
    if is_image_name(target):
        raise ToolError(f"{path!r} is an image; use summarise_images (pixels are never shown)")
    offset = max(0, min(int(offset), 10_000_000))
    text, size = _read_prefix(target, READ_LIMIT + offset)
    max_chars = max(100, min(int(max_chars), TEXT_CAP))
    window = text[offset: offset + max_chars]
    note = ""
    if offset + len(window) < len(text) or size > len(text.encode("utf-8")):
        note = (f"\n[... truncated: characters {offset}-{offset + len(window)} of a {size}-byte file; "
                f"read on with offset={offset + len(window)}]")
    return f"{ws.rel(target)} ({size} bytes)\n---\n{window}{note}"


def _ext(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    if name.startswith("._"):
        return "._ (AppleDouble)"
    return path.suffix.lower() or name


def list_folder(ws: Workspace, path: str = ".", depth: int = 2) -> str:
    """Tree summary: per folder the number of files by extension, a few names, sub-folders."""
    root = ws.resolve(path)
    if not root.is_dir():
        raise ToolError(f"{path!r} is not a folder")
    depth = max(1, min(int(depth), 4))
    lines: list[str] = []

    def describe(folder: Path, level: int) -> None:
        files = list(walk_files(folder))
        if ws.mounted and folder == ws.root:  # the run's own work/ is mounted from elsewhere
            files = [f for f in files if f.relative_to(folder).parts[0] != WORK] + list(walk_files(ws.work))
        counts = Counter(_ext(f) for f in files)
        summary = ", ".join(f"{n} {e}" for e, n in counts.most_common(8)) or "empty"
        pad = "  " * level
        name = WORK if folder == ws.work else folder.name
        lines.append(f"{pad}{name if level else ws.rel(folder)}/  ({len(files)} files: {summary})")
        if level + 1 > depth:
            return
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
        if ws.mounted and folder == ws.root:
            children = sorted([p for p in children if p.name != WORK] + [ws.work], key=lambda p: ws.rel(p))
        links = sorted(p.name for p in folder.iterdir() if p.is_symlink())
        direct = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.is_symlink())
        if direct:
            shown = ", ".join(direct[:8]) + (f", ... (+{len(direct) - 8} more)" if len(direct) > 8 else "")
            lines.append(f"{pad}  files here: {shown}")
        if links:
            lines.append(f"{pad}  symbolic links (not followed): {', '.join(links[:5])}")
        for child in children[:25]:
            describe(child, level + 1)
        if len(children) > 25:
            lines.append(f"{pad}  ... and {len(children) - 25} more folders")

    describe(root, 0)
    return "\n".join(lines)


def preview_label_file(ws: Workspace, path: str, rows: int = 5) -> dict:
    """Columns, row count, first rows and value counts of the likely label column (CSV/TSV/JSON)."""
    target = ws.resolve(path)
    if target.is_dir():
        raise ToolError(f"{path!r} is a folder")
    text, size = _read_prefix(target, 2_000_000)
    rows = max(1, min(int(rows), 20))
    suffix = target.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ToolError(f"{target.name} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if isinstance(data, dict):
            items = list(data.items())
            labels = Counter(str(v) for v in data.values() if isinstance(v, (str, int)))
            return {"file": ws.rel(target), "structure": "object {file: label}", "entries": len(items),
                    "first": dict(items[:rows]), "label_counts": dict(labels.most_common(30))}
        if isinstance(data, list):
            keys = list(dict.fromkeys(k for r in data if isinstance(r, dict) for k in r))
            label_key = next((k for h in LABEL_HINTS for k in keys if h in k.lower()), None)
            counts = Counter(str(r.get(label_key)) for r in data if isinstance(r, dict)) if label_key else {}
            return {"file": ws.rel(target), "structure": "list of objects", "entries": len(data), "keys": keys,
                    "first": data[:rows], "label_counts": dict(Counter(counts).most_common(30))}
        raise ToolError(f"{target.name}: JSON holds neither an object nor a list")
    if suffix in (".csv", ".tsv", ".txt"):
        dialect = "excel-tab" if suffix == ".tsv" or "\t" in text.split("\n", 1)[0] else "excel"
        table = list(csv.reader(io.StringIO(text), dialect=dialect))
        if not table:
            raise ToolError(f"{target.name} is empty")
        header, body = table[0], [r for r in table[1:] if r]
        out: dict = {"file": ws.rel(target), "columns": header, "rows": len(body), "first": body[:rows]}
        for i, col in enumerate(header):
            values = Counter(r[i] for r in body if i < len(r))
            low = col.lower()
            if any(h in low for h in LABEL_HINTS) or (len(values) <= 20 and not any(h in low for h in FILE_HINTS)):
                out.setdefault("value_counts", {})[col] = dict(values.most_common(20))
        if size > len(text.encode("utf-8")):
            out["note"] = "file is larger than 2 MB; counts cover the first 2 MB"
        return out
    raise ToolError(f"{target.name}: preview supports .csv, .tsv, .txt and .json; use read_text_file otherwise")



def read_data_cards(ws: Workspace) -> str:
    """The hospital's data cards (data_cards.json), compact: one entry per local dataset."""
    import json

    target = ws.resolve("data_cards.json")
    text, _ = _read_prefix(target, READ_LIMIT)
    try:
        cards = json.loads(text)
    except ValueError:
        return read_text_file(ws, "data_cards.json")  # not valid JSON: show it as text
    return json.dumps(cards, ensure_ascii=False, separators=(",", ":"))
