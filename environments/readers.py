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
import logging
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


#: decode notes by content key (few files have any; small strings)
_notes: dict[tuple[str, bytes], tuple[str, ...]] = {}
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
        pixels, notes = _decode(path, fmt, data)
    except ImageReadError as exc:
        # stored without this file's name or location: another run's folder must never show through
        decode_cache.put(key, str(exc).replace(str(path), "\0P").replace(path.name, "\0N"))
        raise
    pixels.setflags(write=False)
    decode_cache.put(key, pixels)
    if notes:
        _notes[key] = notes
    return pixels, key


def decode_notes(key: tuple[str, bytes]) -> tuple[str, ...]:
    """What decoding the file with content ``key`` had to do beyond the plain case (read without
    file meta, middle frame of many, VOI window, NaN voxels, ...); empty for most files."""
    return _notes.get(key, ())


def _decode(path: Path, fmt: str, data: bytes) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decode ``data`` (the bytes hashed for the cache key) with the format's reader; every failure
    becomes an :class:`ImageReadError`. NIfTI is read from ``path`` (nibabel wants a file)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            notes: list[str] = []
            if fmt == "dicom":
                pixels, notes = _read_dicom(path, data)
            elif fmt == "nifti":
                pixels, notes = _read_nifti(path)
            else:
                if fmt == "tiff":
                    _check_tiff_strips(path, data)
                pixels = _read_pil(data)
            pixels = _as_image(pixels, path.name)
            image = np.array(_to_uint8(pixels))  # an owned copy: the cache hands out read-only views of it
    except ImageReadError:
        raise
    except Exception as exc:  # every decoder raises its own types; the agent needs one message
        # decoders read from memory and name "<_io.BytesIO object at 0x…>": put the file's name back
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", repr(path.name), str(exc))
        reason = " ".join(reason.split())  # pydicom lists every plug-in's failure on its own line
        raise ImageReadError(f"{path.name}: corrupt or unreadable {fmt} ({type(exc).__name__}: {reason[:300]})") from None
    return image, tuple(notes)


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


def _read_dicom(path: Path, data: bytes) -> tuple[np.ndarray, list[str]]:
    """Pixels of a DICOM file as a hospital's viewer would show them, and what was done to get them.

    Any transfer syntax pydicom decodes with the pinned plug-ins (pylibjpeg-libjpeg: JPEG baseline,
    extended 12-bit, lossless, JPEG-LS; pylibjpeg-openjpeg: JPEG 2000; pylibjpeg-rle: RLE; pyjpegls
    as a second JPEG-LS decoder) plus deflated, big-endian and implicit VR. A file without the
    file-meta header is read anyway, its transfer syntax taken from how it is encoded. Multi-frame:
    the middle frame. YBR colour is converted to RGB, PALETTE COLOR through its lookup table.
    Grey: modality rescale (slope/intercept), then the first VOI window where the file has one
    (else its VOI LUT), then MONOCHROME1 inverted so that brighter always means denser.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
    from pydicom.uid import (
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # each plug-in's failure is in our own message
    notes: list[str] = []
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "PixelData" not in ds:
            raise ImageReadError(f"{path.name}: not a DICOM file (no 'DICM' header and no DICOM image data)") from None
        notes.append("no DICOM file-meta header: read anyway")
    if "PixelData" not in ds:
        kind = ds.get("Modality") or ds.get("SOPClassUID", None)
        kind = getattr(kind, "name", kind)
        raise ImageReadError(f"{path.name}: DICOM file without pixel data" + (f" ({kind})" if kind else ""))
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        ds.file_meta.TransferSyntaxUID = uid
        notes.append(f"no transfer syntax recorded: decoded as {uid.name}, as the file is encoded")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        arr = pydicom.pixels.pixel_array(ds, index=frames // 2) if frames > 1 else ds.pixel_array
    except RuntimeError as exc:  # pydicom tried every installed decoder: say what each found
        text = str(exc)
        if "Unable to decode" not in text:
            raise
        reasons = [re.sub(r"libjpeg error code '[-0-9]+' returned from Decode\(\): ", "", line.strip())
                   for line in text.splitlines()[1:] if line.strip()]
        syntax = ds.file_meta.TransferSyntaxUID.name
        raise ImageReadError(f"{path.name}: its {syntax} pixel data could not be decoded ("
                             + "; ".join(r[:90] for r in reasons) + ")") from None
    if frames > 1:
        notes.append(f"{frames} frames: frame {frames // 2 + 1} (the middle one) used")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        return apply_color_lut(arr, ds).astype(np.float64), notes
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return arr, notes
    arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    window = _voi_window(ds)
    if window is not None:
        centre, width = window
        low, high = centre - width / 2, centre + width / 2
        arr = np.clip((arr - low) / (high - low), 0.0, 1.0) * 255.0
        notes.append(f"VOI window centre {centre:g} width {width:g} applied")
    elif "VOILUTSequence" in ds:
        arr = np.asarray(apply_voi_lut(arr, ds), dtype=np.float64)
        notes.append("VOI LUT applied")
    if photometric == "MONOCHROME1":  # brighter stored value = darker pixel
        grey = _to_uint8(arr) if window is None else np.round(arr).astype(np.uint8)
        return 255 - grey, notes
    return (np.round(arr).astype(np.uint8) if window is not None else arr), notes


def _voi_window(ds) -> tuple[float, float] | None:
    """The file's first VOI window (centre, width), when it states a usable one."""
    from pydicom.multival import MultiValue

    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    def first(value) -> float:  # one value, or the first of several (MultiValue)
        return float(value[0]) if isinstance(value, list | tuple | MultiValue) else float(value)

    try:
        centre, width = first(centre), first(width)
    except (TypeError, ValueError, IndexError):
        return None
    return (centre, width) if np.isfinite(centre) and np.isfinite(width) and width >= 1 else None


def _read_nifti(path: Path) -> tuple[np.ndarray, list[str]]:
    """The middle slice of the last spatial axis (the first volume of a 4-D series), with NaN and
    infinite voxels set to the lowest finite value (+inf to the highest)."""
    import nibabel as nib

    notes: list[str] = []
    volume = np.asanyarray(nib.load(str(path)).dataobj)
    if volume.ndim < 2:
        raise ImageReadError(f"{path.name}: NIfTI with fewer than two dimensions")
    if volume.ndim > 3:
        extra = int(np.prod(volume.shape[3:]))
        volume = volume.reshape(*volume.shape[:3], extra)[..., 0]
        notes.append(f"4-D series of {extra} volumes: the first one used")
    if volume.ndim == 3:
        volume = volume[:, :, volume.shape[2] // 2]
    image = np.asarray(volume, dtype=np.float64).T
    bad = ~np.isfinite(image)
    if bad.any():
        finite = image[~bad]
        if finite.size == 0:
            raise ImageReadError(f"{path.name}: NIfTI slice holds no finite values (all NaN or infinite)")
        image = np.where(np.isposinf(image), finite.max(), np.where(bad, finite.min(), image))
        notes.append(f"{int(bad.sum())} NaN or infinite voxels set to the slice's finite range")
    return image, notes


def _as_image(arr: np.ndarray, name: str) -> np.ndarray:
    """``arr`` as ``(H, W)`` or ``(H, W, 3)``: a stack gives its middle image, alpha is dropped."""
    arr = np.asarray(arr)
    if arr.ndim == 4:  # frames x rows x columns x samples
        arr = arr[arr.shape[0] // 2]
    if arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4):  # a stack of grey images
        arr = arr[arr.shape[0] // 2]
    if arr.ndim == 3:
        arr = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., 0]
    if arr.ndim not in (2, 3) or min(arr.shape) < 1:
        raise ImageReadError(f"{name}: unsupported pixel array shape {tuple(arr.shape)}")
    return arr


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
