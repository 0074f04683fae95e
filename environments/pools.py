"""Image pools: where a hospital's pixels come from.

A pool hands out images of one environment by pool class (the label values of the real arrays).
Real pools read the arrays in the data directory (``--data-dir`` or ``FEDAGENTBENCH_DATA``) after
checking ``SHA256SUMS``; each real image is handed out at most once per environment build, so no
image is shared by two hospitals or two datasets. Where the real file is absent or fails its
checksum, a procedural pool of the same shape takes over and the reason is recorded.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from environments import procedural
from environments.concepts import vocabulary

#: environment -> (file in the data directory, native size, colour)
REAL_POOL_FILES: dict[str, tuple[str, int, bool]] = {
    "dermatoscopy": ("dermatoscopy_isic2017_melanoma_64.npz", 64, True),
    "ultrasound": ("ultrasound_breastmnist_28.npz", 28, False),
    "fundus": ("fundus_retinamnist_28.npz", 28, True),
    "mri": ("mri_brain_tumor_sartaj_64.npz", 64, False),
    "xray": ("xray_pneumoniamnist_28.npz", 28, False),
}
#: other pool files an environment can use, in order, when its first one is absent (same classes,
#: size and colour; installed by ``fedagentbench data fetch``)
ALTERNATIVE_POOL_FILES: dict[str, tuple[str, ...]] = {
    "dermatoscopy": ("dermatoscopy_dermamnist_melanoma_64.npz",),
}
#: native size and colour of pools without a real file
PROCEDURAL_ONLY: dict[str, tuple[int, bool]] = {"histopathology": (64, True)}

DATA_ENV_VAR = "FEDAGENTBENCH_DATA"


def native_shape(environment: str) -> tuple[int, bool]:
    """(side length, is colour) of the environment's pool images."""
    if environment in REAL_POOL_FILES:
        _, size, colour = REAL_POOL_FILES[environment]
        return size, colour
    return PROCEDURAL_ONLY[environment]


def pool_files(environment: str) -> list[str]:
    """The real pool files ``environment`` can use, preferred first."""
    if environment not in REAL_POOL_FILES:
        return []
    return [REAL_POOL_FILES[environment][0], *ALTERNATIVE_POOL_FILES.get(environment, ())]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The data directory from the argument, else the environment variable, else the pools that
    ``fedagentbench data fetch`` keeps in the user's cache; None when there are none."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_ENV_VAR)
    if not chosen:
        from environments.fetch import default_data_dir

        fetched = default_data_dir()
        return fetched if (fetched / "SHA256SUMS").is_file() else None
    return Path(chosen).expanduser().resolve()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_real_file(data_dir: Path, filename: str) -> str | None:
    """None when ``filename`` exists and matches SHA256SUMS, else the reason it cannot be used."""
    path = data_dir / filename
    sums = data_dir / "SHA256SUMS"
    if not data_dir.is_dir():
        return f"data directory {data_dir} does not exist"
    if not path.is_file():
        return f"{filename} is missing from {data_dir}"
    if not sums.is_file():
        return f"{data_dir} has no SHA256SUMS to verify {filename} against"
    expected = None
    for line in sums.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == filename:
            expected = parts[0].lower()
    if expected is None:
        return f"SHA256SUMS in {data_dir} lists no checksum for {filename}"
    actual = _sha256(path)
    if actual != expected:
        return f"{filename} fails its checksum (expected {expected[:12]}…, got {actual[:12]}…): corrupt or altered"
    return None


@dataclass
class PoolInfo:
    """What a build used, for the manifest."""

    environment: str
    kind: str  # "real" or "procedural"
    source: str
    fallback_reason: str | None = None
    images_available: dict[int, int] = field(default_factory=dict)


class ImagePool:
    """Seeded, draw-without-replacement source of class-conditional images for one environment."""

    def __init__(self, environment: str, seed: int, data_dir: str | os.PathLike | None = None) -> None:
        self.environment = environment
        self.size, self.colour = native_shape(environment)
        self.n_classes = len(vocabulary(environment).pool_class_names)
        self._rng = np.random.default_rng([seed, 7919])
        self._seed = seed
        self._images: np.ndarray | None = None
        self._splits: np.ndarray | None = None
        self._queues: dict[int, list[int]] = {}
        self.info = self._load(resolve_data_dir(data_dir))

    def _load(self, data_dir: Path | None) -> PoolInfo:
        if self.environment not in REAL_POOL_FILES:
            return PoolInfo(self.environment, "procedural", "procedural generator (no real labelled pool exists)")
        candidates = pool_files(self.environment)
        filename = candidates[0]
        reason = "no real pools: none fetched (`fedagentbench data fetch`), no --data-dir, no FEDAGENTBENCH_DATA"
        if data_dir is not None:
            reasons = {name: verify_real_file(data_dir, name) for name in candidates}
            filename = next((name for name, why in reasons.items() if why is None), filename)
            reason = reasons[filename]
        if reason is None:
            try:
                images, labels, splits = _read_npz(data_dir / filename)
            except (OSError, ValueError, KeyError) as exc:
                reason = f"{filename} could not be read: {exc}"
            else:
                self._images, self._splits = images, splits
                distinct = _distinct(images)
                for cls in range(self.n_classes):
                    idx = np.flatnonzero((labels == cls) & distinct)
                    self._queues[cls] = list(self._rng.permutation(idx))
                return PoolInfo(self.environment, "real", filename,
                                images_available={c: len(q) for c, q in self._queues.items()})
        return PoolInfo(self.environment, "procedural", "procedural generator", fallback_reason=reason)

    @property
    def is_real(self) -> bool:
        return self._images is not None

    def available(self, pool_class: int) -> int | None:
        """Images left for ``pool_class``; None when unlimited (procedural)."""
        return len(self._queues[pool_class]) if self.is_real else None

    def take(self, pool_class: int, n: int) -> np.ndarray:
        """``n`` fresh images of ``pool_class`` (never handed out before in this pool)."""
        if self.is_real:
            queue = self._queues[pool_class]
            if n > len(queue):
                raise ValueError(
                    f"{self.environment} pool has {len(queue)} unused images of class {pool_class}, {n} requested"
                )
            picked, self._queues[pool_class] = queue[:n], queue[n:]
            return self._images[np.asarray(picked, dtype=int)]
        return self.generate(pool_class, n)

    def take_heldout(self, pool_class: int, n: int) -> np.ndarray:
        """``n`` images of ``pool_class`` for the server's held-out test set, taken after the hospitals
        drew theirs (so none of them holds one): the pool file's official test split first, then its
        validation split, then training images."""
        if not self.is_real:  # its own stream: holding out leaves the hospitals' procedural images as they were
            rng, self._rng = self._rng, np.random.default_rng([self._seed, 104729, pool_class])
            try:
                return self.generate(pool_class, n)
            finally:
                self._rng = rng
        queue = self._queues[pool_class]
        if n > len(queue):
            raise ValueError(f"{self.environment} pool has {len(queue)} unused images of class {pool_class}, {n} requested")
        rank = {"test": 0, "val": 1}
        order = sorted(range(len(queue)), key=lambda i: (rank.get(str(self._splits[queue[i]]), 2), i))
        chosen = set(order[:n])
        picked = [queue[i] for i in sorted(chosen)]
        self._queues[pool_class] = [q for i, q in enumerate(queue) if i not in chosen]
        return self._images[np.asarray(picked, dtype=int)]

    def generate(self, pool_class: int, n: int, environment: str | None = None) -> np.ndarray:
        """``n`` procedural images (of another environment when given: off-topic images)."""
        env = environment or self.environment
        size, colour = native_shape(env)
        out = [procedural.generate(env, pool_class, self._rng, 64) for _ in range(n)]
        if size != 64:
            out = [_resize(img, size) for img in out]
        shape = (n, size, size, 3) if colour else (n, size, size)
        return np.stack(out).reshape(shape) if out else np.zeros(shape, np.uint8)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All splits of a pool file concatenated: images uint8 (N,H,W[,3]), labels int (N,), and the
    split each image came from (N,) ("train", "val", "test")."""
    with np.load(path, allow_pickle=False) as data:
        splits = sorted({k.rsplit("_", 1)[0] for k in data.files if k.endswith("_images")})
        if not splits:
            raise ValueError("no *_images arrays")
        images = np.concatenate([data[f"{s}_images"] for s in splits])
        labels = np.concatenate([data[f"{s}_labels"].reshape(-1) for s in splits]).astype(int)
        names = np.concatenate([np.full(len(data[f"{s}_labels"].reshape(-1)), s) for s in splits])
    return images, labels, names


def _distinct(images: np.ndarray, min_corr: float = 0.99, block: int = 1024) -> np.ndarray:
    """Mask of the images to use: the first of each group of near-identical images. Real pools hold
    the same scan more than once (the brain MRI sets do); two such "clean" files in one site would
    be indistinguishable from an injected duplicate pair, so the key could not call them clean."""
    grey = images.astype(np.float32)
    if grey.ndim == 4:
        grey = grey.mean(axis=-1)
    n, size = grey.shape[0], grey.shape[1]
    k = max(1, size // 16)
    side = size // k
    thumbs = grey[:, : side * k, : side * k].reshape(n, side, k, side, k).mean(axis=(2, 4)).reshape(n, -1)
    thumbs -= thumbs.mean(axis=1, keepdims=True)
    thumbs /= np.linalg.norm(thumbs, axis=1, keepdims=True) + 1e-8
    keep = np.ones(n, dtype=bool)
    for start in range(0, n, block):
        corr = thumbs[start:start + block] @ thumbs.T  # (b, n)
        for row, i in enumerate(range(start, min(n, start + block))):
            if keep[i]:
                later = np.flatnonzero(corr[row, i + 1:] >= min_corr) + i + 1
                keep[later] = False
    return keep


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def fallback_line(fallbacks: dict[str, str]) -> str | None:
    """One visible line naming the environments built from procedural instead of real images."""
    if not fallbacks:
        return None
    reasons = sorted(set(fallbacks.values()))
    return (f"warning: procedural images, not real ones, for {', '.join(sorted(fallbacks))} "
            f"({'; '.join(reasons)}); get the real pools with `fedagentbench data fetch`")


def manifest_fallbacks(env_dirs: list[Path]) -> dict[str, str]:
    """Environment -> why its build fell back to procedural pixels (from the build manifests)."""
    import json

    out = {}
    for env_dir in env_dirs:
        manifest = env_dir / "environment.json"
        if manifest.is_file():
            pool = json.loads(manifest.read_text("utf-8")).get("pool") or {}
            if pool.get("fallback_reason"):
                out[env_dir.name] = pool["fallback_reason"]
    return out
