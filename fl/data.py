"""Reading a client's harmonised dataset: ``<data_dir>/<class>/*.png``, through MONAI transforms.

Every hospital's folder has one level of class folders with the same names everywhere (the C2/C3
agents guarantee that). The images are small, so a client loads them once into tensors and keeps
them in a per-process cache: Flower calls the ClientApp once per round and the Ray actor (or the
SuperNode's ClientApp process) outlives the call.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
_CACHE: dict[tuple[Any, ...], LocalData] = {}


def scan_client_dir(data_dir: str | Path) -> dict[str, list[Path]]:
    """Class name -> sorted image files. Raises on a missing or empty dataset."""
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"client data directory does not exist: {root}")
    if not root.is_dir():
        raise ValueError(f"client data path is not a directory: {root}")
    classes: dict[str, list[Path]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in sub.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        classes[sub.name] = files
    if not classes:
        raise ValueError(f"client dataset {root} has no class folders (expected <dir>/<class>/*.png)")
    if not any(classes.values()):
        raise ValueError(f"client dataset {root} is empty: its class folders hold no images")
    return classes


def check_federation(data_dirs: list[str | Path]) -> list[str]:
    """Validate all clients and return the shared, sorted class names."""
    if not data_dirs:
        raise ValueError("at least one client data directory is needed")
    reference: list[str] | None = None
    for data_dir in data_dirs:
        classes = sorted(scan_client_dir(data_dir))
        if reference is None:
            reference = classes
        elif classes != reference:
            missing, extra = sorted(set(reference) - set(classes)), sorted(set(classes) - set(reference))
            raise ValueError(
                f"class folders differ between clients: {data_dir} lacks {missing} and adds {extra} "
                f"compared with {data_dirs[0]}; harmonise the labels first"
            )
    assert reference is not None
    if len(reference) < 2:
        raise ValueError(f"classification needs at least two classes, found {reference}")
    return reference


def detect_channels(data_dirs: list[str | Path], per_class: int = 3) -> int:
    """1 for greyscale, 3 if any sampled image is colour (grey images are then repeated)."""
    from PIL import Image

    for data_dir in data_dirs:
        for files in scan_client_dir(data_dir).values():
            for f in files[:per_class]:
                with Image.open(f) as im:
                    if im.mode not in GREY_MODES:
                        return 3
    return 1


def stratified_split(labels: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): each class with >= 2 images gives at least one to each side."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    train, val = [], []
    for y in sorted(by_class):
        idx = by_class[y][:]
        rng.shuffle(idx)
        n_val = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(val_fraction * len(idx))))
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def _subsample(items: list[tuple[Path, int]], limit: int, seed: int) -> list[tuple[Path, int]]:
    """Keep about ``limit`` items with the class proportions unchanged (at least 2 per class)."""
    if limit <= 0 or len(items) <= limit:
        return items
    rng = random.Random(seed)
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    kept: list[tuple[Path, int]] = []
    for y in sorted(by_class):
        group = by_class[y][:]
        rng.shuffle(group)
        kept += group[: max(2, round(limit * len(group) / len(items)))]
    return sorted(kept, key=lambda t: (t[1], str(t[0])))


def monai_transform(image_size: int, channels: int):
    """MONAI pipeline: file -> float tensor (channels, size, size) scaled to [0, 1]."""
    from monai.transforms import Compose, EnsureChannelFirst, Lambda, LoadImage, Resize, ScaleIntensity

    def fix_channels(img):
        c = img.shape[0]
        if c in (2, 4):  # drop alpha
            img = img[: c - 1]
        if img.shape[0] == 1 and channels == 3:
            img = img.repeat(3, 1, 1)
        elif img.shape[0] == 3 and channels == 1:
            img = img.mean(dim=0, keepdim=True)
        return img

    return Compose(
        [
            LoadImage(image_only=True, reader="PILReader"),
            EnsureChannelFirst(),
            Lambda(fix_channels),
            ScaleIntensity(),
            Resize(spatial_size=(image_size, image_size)),
        ]
    )


@dataclass
class LocalData:
    """One client's tensors: a stratified train / validation split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: list[str]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> list[int]:
        import torch

        return torch.bincount(self.train_y, minlength=self.n_classes).tolist()

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device: str | torch.device) -> LocalData:
        """The same split on ``device`` (this object itself when it is there already)."""
        import torch

        if self.train_x.device == torch.device(device):
            return self
        return LocalData(*(t.to(device) for t in (self.train_x, self.train_y, self.val_x, self.val_y)), self.classes)


def load_client_data(
    data_dir: str | Path,
    classes: list[str],
    image_size: int,
    channels: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_images: int | None = None,
    device: str | None = None,
) -> LocalData:
    """Load (once per process) a client's images through MONAI and split them; with a ``device``
    other than the CPU, a copy kept there too (moved once, not every round)."""
    key = (str(Path(data_dir).resolve()), tuple(classes), image_size, channels, val_fraction, seed, max_images)
    if device is not None and device != "cpu":
        if key + (device,) not in _CACHE:
            cpu = load_client_data(data_dir, classes, image_size, channels, val_fraction, seed, max_images)
            _CACHE[key + (device,)] = cpu.to(device)
        return _CACHE[key + (device,)]
    if key in _CACHE:
        return _CACHE[key]
    import torch
    from monai.data import MetaTensor

    found = scan_client_dir(data_dir)
    if sorted(found) != sorted(classes):
        raise ValueError(f"client {data_dir} has classes {sorted(found)}, the federation uses {classes}")
    items = [(f, classes.index(c)) for c in classes for f in found[c]]
    items = _subsample(items, max_images or 0, seed)
    transform = monai_transform(image_size, channels)
    images = []
    for path, _ in items:
        img = transform(str(path))
        images.append(img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img))
    x = torch.stack(images).float()
    y = torch.tensor([label for _, label in items], dtype=torch.long)
    train_idx, val_idx = stratified_split(y.tolist(), val_fraction, seed)
    data = LocalData(x[train_idx], y[train_idx], x[val_idx], y[val_idx], list(classes))
    if len(data.train_y) == 0 or len(data.val_y) == 0:
        raise ValueError(f"client {data_dir} has too few images for a train/validation split ({len(y)})")
    _CACHE[key] = data
    return data


def train_loader(data: LocalData, batch_size: int, seed: int):
    """Shuffled mini-batches of the training split (a fresh order per seed). Data on a GPU is sliced
    there by index batches drawn exactly as on the CPU (same seed, same order, no copy per sample)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(seed)
    if data.train_x.device.type == "cpu":
        return DataLoader(
            TensorDataset(data.train_x, data.train_y), batch_size=batch_size, shuffle=True, generator=generator
        )
    return _IndexedBatches(data, batch_size, generator)


class _IndexedBatches:
    """``train_loader`` for data on an accelerator: a DataLoader over indices only (its sampler and
    seed draws are those of the CPU path), each index batch gathered from the device tensors."""

    def __init__(self, data: LocalData, batch_size: int, generator: Any):
        from torch.utils.data import DataLoader

        self.data = data
        self.indices = DataLoader(range(len(data.train_y)), batch_size=batch_size, shuffle=True, generator=generator)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        for idx in self.indices:
            idx = idx.to(self.data.train_x.device)
            yield self.data.train_x[idx], self.data.train_y[idx]
