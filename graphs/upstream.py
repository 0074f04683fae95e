"""Per-phase mode: what a perfect upstream would have handed to a phase, made from the answer key.

So that one early mistake does not hide how a model does later, any phase can start from these:
the key's approved clients and datasets, its clean files in the standard schema, its harmonised
target-class folders. Written into the run's private work area (see :func:`graphs.runtime.run_root`),
like an agent's output, where no other run can read them.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np


def flat_name(path: str) -> str:
    """A file name that keeps a source path unique once its folders are flattened."""
    stem = re.sub(r"\.(nii\.gz|[A-Za-z0-9]+)$", "", path)
    return re.sub(r"[\\/]+", "__", stem) + ".png"


def standardise(pixels: np.ndarray, size: int, mode: str) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(pixels)
    img = img.convert("RGB" if mode == "RGB" else "L").resize((size, size), Image.BILINEAR)
    return np.asarray(img)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    Image.fromarray(pixels).save(tmp, format="PNG")
    tmp.replace(path)  # never a half-written PNG under its final name


def _write_origins(folder: Path, origins: dict[str, str]) -> None:
    """The same provenance sidecar the tools keep (``<folder>.manifest.json``)."""
    from tools.sandbox import manifest_path

    manifest_path(folder).write_text(json.dumps({"step": "upstream_input", "origin": dict(sorted(origins.items()))},
                                                indent=1, ensure_ascii=False) + "\n", "utf-8")


def gold_cleaned(workspace: Path, out: Path, task_key, hospital: str) -> None:
    """The key's clean files of ``hospital`` as ``<out>/<dataset>/<local class>/*.png`` (two sources
    that flatten to one name, ``IM3.dcm`` and ``IM3.tif``, get ``IM3.png`` and ``IM3~2.png``)."""
    from environments.readers import read_image
    from tools.labels import claim_name

    shutil.rmtree(out, ignore_errors=True)
    schema = task_key.target_schema
    for dataset, files in task_key.clean_files.get(hospital, {}).items():
        prefix = f"datasets/{dataset}/"
        origins: dict[str, str] = {}
        taken: set[str] = set()
        for f in files:
            pixels = standardise(read_image(workspace / f.path), schema.image_size, schema.mode)
            rel = claim_name(f"{f.local_class}/{flat_name(f.path.removeprefix(prefix))}", taken)
            _write_png(out / dataset / rel, pixels)
            origins[rel] = f.path
        (out / dataset).mkdir(parents=True, exist_ok=True)
        _write_origins(out / dataset, origins)


def gold_harmonised(workspace: Path, out: Path, task_key, hospital: str) -> None:
    """The key's clean files of ``hospital`` in target-class folders ``<out>/<target>/*.png``."""
    from environments.readers import read_image
    from tools.labels import claim_name

    shutil.rmtree(out, ignore_errors=True)
    schema = task_key.target_schema
    for target in schema.classes:
        (out / target).mkdir(parents=True, exist_ok=True)
    origins: dict[str, str] = {}
    taken: set[str] = set()
    for dataset, files in task_key.clean_files.get(hospital, {}).items():
        for f in files:
            if f.target_class is None:
                continue
            pixels = standardise(read_image(workspace / f.path), schema.image_size, schema.mode)
            rel = claim_name(f"{f.target_class}/{dataset}__{flat_name(f.path.removeprefix(f'datasets/{dataset}/'))}", taken)
            _write_png(out / rel, pixels)
            origins[rel] = f.path
    _write_origins(out, origins)
