"""Dataset statistics a client shares with the server: aggregate numbers only.

Exchange location (the one channel from client to server): the client tool writes
``work/stats.json`` in its workspace; the server tool ``read_client_statistics`` reads exactly
that file from each client workspace it was built with, validates it against
:class:`ClientStatistics` (unknown fields dropped, so nothing else can travel) and never opens
anything else there. Each report replaces the previous one.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from environments.readers import ImageReadError, image_format, read_image
from tools.labels import is_image_name
from tools.sandbox import ToolError, Workspace, cap_list, walk_files, write_atomic

STATS_NAME = "stats.json"
#: as the client agent sees it
STATS_FILE = f"work/{STATS_NAME}"


class ClientStatistics(BaseModel):
    """What crosses from a hospital to the server about its prepared dataset."""

    model_config = ConfigDict(extra="ignore")

    hospital: str = Field(max_length=100)
    dataset_path: str = Field(max_length=300)
    classes: dict[str, int]
    total_images: int
    formats: dict[str, int]
    sizes_WxH: dict[str, int]
    channels: dict[str, int]
    intensity_mean: list[float] = Field(max_length=3)
    intensity_std: list[float] = Field(max_length=3)
    unreadable: int = 0


def compute_statistics(ws: Workspace, path: str) -> tuple[ClientStatistics, list[str]]:
    """The statistics that cross to the server (counts only), and the unreadable files with their
    reasons (for the hospital's own agent; they stay local)."""
    root = ws.resolve(path)
    if not root.is_dir():
        raise ToolError(f"{path!r} is not a folder")
    classes = {d.name: [f for f in walk_files(d) if is_image_name(f)]
               for d in sorted(root.iterdir()) if d.is_dir() and not d.is_symlink()}
    if not any(classes.values()):
        raise ToolError(f"{ws.rel(root)} has no class folders with images; organise it first")
    sizes: Counter[str] = Counter()
    channels: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    sums, sq, count = np.zeros(3), np.zeros(3), 0
    failures: list[str] = []
    for files in classes.values():
        for f in files:
            try:
                img = read_image(f)
            except ImageReadError as exc:
                failures.append(f"{f.relative_to(root).as_posix()}: {str(exc).split(': ', 1)[-1][:160]}")
                continue
            formats[image_format(f) or "?"] += 1
            sizes[f"{img.shape[1]}x{img.shape[0]}"] += 1
            channels["RGB" if img.ndim == 3 else "grey"] += 1
            px = (img.reshape(-1, 3) if img.ndim == 3 else img.reshape(-1, 1)).astype(np.float64) / 255.0
            px = np.repeat(px, 3, axis=1) if px.shape[1] == 1 else px
            sums += px.mean(0)
            sq += (px ** 2).mean(0)
            count += 1
    mean = sums / max(count, 1)
    std = np.sqrt(np.maximum(sq / max(count, 1) - mean ** 2, 0))
    return ClientStatistics(
        hospital=ws.root.name, dataset_path=ws.rel(root), classes={c: len(v) for c, v in classes.items()},
        total_images=sum(len(v) for v in classes.values()), formats=dict(formats), sizes_WxH=dict(sizes.most_common(5)),
        channels=dict(channels), intensity_mean=[round(float(v), 4) for v in mean],
        intensity_std=[round(float(v), 4) for v in std], unreadable=len(failures),
    ), failures


def report_statistics(ws: Workspace, path: str) -> dict:
    """Compute the statistics of a prepared dataset and publish them in work/stats.json."""
    stats, failures = compute_statistics(ws, path)
    target = ws.work / STATS_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, json.dumps(stats.model_dump(), indent=1, ensure_ascii=False) + "\n")
    out = {"written_to": STATS_FILE, "statistics": stats.model_dump()}
    if failures:  # for this hospital's agent only: stats.json (what the server sees) holds the count
        out["unreadable_files"] = cap_list(failures, 15)
    return out
