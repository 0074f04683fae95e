"""Decode any image format a hospital stores into a plain uint8 array.

One reader for PNG, JPEG, TIFF, DICOM and NIfTI, shared by the tools, the scorers and the tests.
DICOM: modality rescale applied, MONOCHROME1 inverted to the usual grey scale, RLE and deflate
handled by pydicom. NIfTI: the middle slice of the last spatial axis (the slice policy the
environments state in their data cards). Errors come out as :class:`ImageReadError` with a
readable reason; nothing else escapes.

Decoded pixels are cached by file content (a bounded LRU, :data:`DECODE_CACHE_MB`): a bench decodes
the same hospital files in every run and several times per run (clean, convert, statistics, scoring),
and identical bytes decode identically. Cached arrays are read-only.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz", ".bmp")


class ImageReadError(ValueError):
    """The file is not a decodable image; the message says why."""


def image_format(path: Path) -> str | None:
    """The format a file claims by its name: png, jpeg, tiff, dicom, nifti, bmp; None if none."""
    name = path.name.lower()
    if name.endswith(".nii.gz") or name.endswith(".nii"):
        return "nifti"
    return {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff", ".dcm": "dicom",
            ".bmp": "bmp"}.get(path.suffix.lower())


DECODE_CACHE_MB = float(os.environ.get("FEDAGENTBENCH_DECODE_CACHE_MB", "256"))


def _cost(value: np.ndarray | str | bytes) -> int:
    return value.nbytes if isinstance(value, np.ndarray) else len(value)


class ContentCache:
    """Thread-safe LRU bounded in bytes, for results that depend only on a file's content: decoded
    pixels or the reason a file failed (here), encoded outputs (``convert_images``)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[tuple, np.ndarray | str | bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> np.ndarray | str | bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple, value: np.ndarray | str | bytes) -> None:
        cost = _cost(value)
        if cost > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self.bytes += cost
            while self.bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.bytes -= _cost(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = self.hits = self.misses = 0


decode_cache = ContentCache(int(DECODE_CACHE_MB * 2**20))


def read_image(path: str | Path) -> np.ndarray:
    """uint8 ``(H, W)`` or ``(H, W, 3)`` pixels of the image at ``path`` (read-only array)."""
    return read_image_keyed(path)[0]


def read_image_keyed(path: str | Path) -> tuple[np.ndarray, tuple[str, bytes]]:
    """:func:`read_image` and the file's content key (format, digest), for caches of derived results."""
    path = Path(path)
    fmt = image_format(path)
    if fmt is None:
        raise ImageReadError(f"{path.name}: not an image file type")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{path.name}: cannot be read ({exc.strerror})") from None
    if not data:
        raise ImageReadError(f"{path.name}: empty file (0 bytes)")
    key = (fmt, hashlib.blake2b(data, digest_size=16).digest())
    cached = decode_cache.get(key)
    if isinstance(cached, np.ndarray):
        return cached, key
    if cached is not None:  # the failure reason, with this file's own name and path put back
        raise ImageReadError(cached.replace("\0P", str(path)).replace("\0N", path.name))
    try:
        pixels = _decode(path, fmt, data)
    except ImageReadError as exc:
        # stored without this file's name or location: another run's folder must never show through
        decode_cache.put(key, str(exc).replace(str(path), "\0P").replace(path.name, "\0N"))
        raise
    pixels.setflags(write=False)
    decode_cache.put(key, pixels)
    return pixels, key


def _decode(path: Path, fmt: str, data: bytes) -> np.ndarray:
    """Decode ``data`` (the bytes hashed for the cache key) with the format's reader; every failure
    becomes an :class:`ImageReadError`. NIfTI is read from ``path`` (nibabel wants a file)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "dicom":
                pixels = _read_dicom(path, data)
            elif fmt == "nifti":
                pixels = _read_nifti(path)
            else:
                if fmt == "tiff":
                    _check_tiff_strips(path, data)
                pixels = _read_pil(data)
    except ImageReadError:
        raise
    except Exception as exc:  # every decoder raises its own types; the agent needs one message
        # decoders read from memory and name "<_io.BytesIO object at 0x…>": put the file's name back
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", repr(path.name), str(exc))
        raise ImageReadError(f"{path.name}: corrupt or unreadable {fmt} ({type(exc).__name__}: {reason[:120]})") from None
    return np.array(_to_uint8(pixels))  # an owned copy: the cache hands out read-only views of it


def _check_tiff_strips(path: Path, data: bytes) -> None:
    """A TIFF whose strips end past the end of the file is truncated. Found from the header alone,
    before libtiff decodes it (libtiff would print "TIFFFillStrip: Read error" to stderr)."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
    except Exception:  # noqa: BLE001 - a header tifffile cannot parse is left to Pillow to judge
        return
    if end > len(data):
        raise ImageReadError(f"{path.name}: truncated tiff (its image data ends at byte {end}, the file has {len(data)})")


def _read_pil(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I", "F"):
            return np.asarray(img, dtype=np.float64)
        return np.asarray(img.convert("RGB" if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr") else "L"))


def _read_dicom(path: Path, data: bytes) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in ds:
        raise ImageReadError(f"{path.name}: DICOM file without pixel data")
    arr = ds.pixel_array
    if ds.get("SamplesPerPixel", 1) == 1:
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # brighter stored value = darker pixel
            arr = (1 << int(ds.get("BitsStored", 16))) - 1 - arr.astype(np.int64)
        arr = apply_modality_lut(arr, ds).astype(np.float64)
    if arr.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1:  # multi-frame: the middle frame
        arr = arr[arr.shape[0] // 2]
    return arr


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    volume = np.asanyarray(nib.load(str(path)).dataobj)
    if volume.ndim == 2:
        return volume.T
    if volume.ndim < 2:
        raise ImageReadError(f"{path.name}: NIfTI with fewer than two dimensions")
    while volume.ndim > 3:
        volume = volume[..., 0]
    return volume[:, :, volume.shape[2] // 2].T


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale to 0-255 unless the data already are 8-bit."""
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0 and hi <= 255 and np.allclose(arr, np.round(arr)):
        return arr.astype(np.uint8)
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((arr - lo) / (hi - lo) * 255).astype(np.uint8)
