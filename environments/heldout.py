"""The server's held-out test set: clean, correctly labelled images that no agent or tool can read.

It exists to score what the federation learned (``eval.outcome``), not only whether training ran.
The builder draws it from what the pool has left once every hospital has drawn its images (the
pool budget leaves at least 40 % of each class unused), so no test image sits in any hospital and
the hospitals get exactly what they got before the held-out set existed; among what is left, a
real pool gives its official test split first (then validation, then training images).
It is stored under ``answer_key/`` (outside every workspace; the tools refuse that name) as
``heldout.npz``: ``images`` uint8 ``(N, H, W[, 3])`` at the pool's native size and ``pool_labels``.
A task's test set is the subset whose pool class maps onto exactly one of its target classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from environments.concepts import vocabulary
from environments.pools import ImagePool
from environments.tasks import TaskSpec

HELDOUT_FILE = "heldout.npz"
#: held-out images per pool class, by scale (fewer where the pool has fewer to spare)
PER_CLASS: dict[str, int] = {"tiny": 40, "small": 60, "full": 80, "real": 300}


def draw_heldout(pool: ImagePool, scale: str) -> tuple[np.ndarray, np.ndarray]:
    """Take the held-out images out of ``pool``, after the hospitals have drawn theirs."""
    wanted = PER_CLASS[scale]
    images, labels = [], []
    for cls in range(pool.n_classes):
        available = pool.available(cls)
        n = wanted if available is None else min(wanted, available)
        if n <= 0:
            continue
        images.append(pool.take_heldout(cls, n))
        labels.append(np.full(n, cls, dtype=np.int64))
    if not images:
        raise ValueError(f"the {pool.environment} pool has no images to hold out")
    return np.concatenate(images), np.concatenate(labels)


def write_heldout(env_dir: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    path = Path(env_dir) / "answer_key" / HELDOUT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:  # np.savez_compressed on a path would append ".npz" to odd names
        np.savez_compressed(fh, images=images, pool_labels=labels)
    return path


def target_of_pool_class(task: TaskSpec) -> dict[int, str]:
    """Pool class -> the task's target class, for pool classes that map onto exactly one target."""
    vocab = vocabulary(task.environment)
    targets: dict[int, set[str]] = {}
    for concept, target in task.concept_to_target.items():
        for cls in vocab.concept(concept).pool_classes:
            targets.setdefault(cls, set()).add(target)
    return {cls: next(iter(t)) for cls, t in targets.items() if len(t) == 1}


def task_test_set(env_dir: Path, task: TaskSpec) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images, target-class indices, target classes) of ``task``'s held-out test set."""
    path = Path(env_dir) / "answer_key" / HELDOUT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: rebuild the environment (generator version 3 holds out a test set)")
    with np.load(path, allow_pickle=False) as data:
        images, pool_labels = data["images"], data["pool_labels"]
    classes = list(task.target_classes)
    mapping = target_of_pool_class(task)
    keep = np.array([int(c) in mapping for c in pool_labels], dtype=bool)
    y = np.array([classes.index(mapping[int(c)]) for c in pool_labels[keep]], dtype=np.int64)
    return images[keep], y, classes
