"""Tiny class-folder federations for tests and the benchmark script.

Clients get disjoint images from a real pool (``$FEDAGENTBENCH_DATA/<pool>.npz``) when it exists;
otherwise simple learnable synthetic images are drawn, and the returned ``source`` says so.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEFAULT_POOL = "xray_pneumoniamnist_28.npz"


def data_root() -> Path:
    """Where the real pools live: $FEDAGENTBENCH_DATA or ../shared/datasets next to the repo."""
    env = os.environ.get("FEDAGENTBENCH_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _synthetic(n: int, n_classes: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class k: a bright square in a class-specific quadrant, over noise."""
    labels = np.repeat(np.arange(n_classes), n // n_classes)
    images = rng.normal(60, 25, size=(len(labels), size, size)).clip(0, 255)
    half = size // 2
    for i, k in enumerate(labels):
        r0, c0 = (k // 2 % 2) * half, (k % 2) * half
        s = rng.integers(half // 2, half)
        r, c = r0 + rng.integers(0, half - s + 1), c0 + rng.integers(0, half - s + 1)
        images[i, r : r + s, c : c + s] += 120
    return images.clip(0, 255).astype(np.uint8), labels


def load_pool(pool: str = DEFAULT_POOL, n_classes: int = 2, size: int = 28, seed: int = 0):
    """(images, labels, source) from the real pool, or synthetic ones when it is absent."""
    path = data_root() / pool
    if path.exists():
        with np.load(path) as d:
            return d["train_images"], d["train_labels"].reshape(-1).astype(int), f"real:{pool}"
    rng = np.random.default_rng(seed)
    images, labels = _synthetic(4000, n_classes, size, rng)
    return images, labels, "synthetic"


def make_federation(
    out_dir: str | Path,
    n_clients: int = 4,
    per_class: int = 40,
    pool: str = DEFAULT_POOL,
    seed: int = 0,
    class_names: tuple[str, ...] | None = None,
) -> tuple[list[Path], str]:
    """Write ``out_dir/client_<i>/<class>/<j>.png`` with disjoint, class-balanced images."""
    from PIL import Image

    images, labels, source = load_pool(pool, seed=seed)
    classes = sorted(set(labels.tolist()))
    names = class_names or tuple(f"class_{c}" for c in classes)
    rng = np.random.default_rng(seed)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    dirs = []
    for i in range(n_clients):
        client = Path(out_dir) / f"client_{i}"
        for c, name in zip(classes, names):
            take = pools[c][i * per_class : (i + 1) * per_class]
            if len(take) < per_class:
                raise ValueError(f"pool {pool} has too few images of class {c} for {n_clients} clients")
            folder = client / name
            folder.mkdir(parents=True, exist_ok=True)
            for j, idx in enumerate(take):
                Image.fromarray(images[idx]).save(folder / f"{j:04d}.png")
        dirs.append(client)
    return dirs, source
