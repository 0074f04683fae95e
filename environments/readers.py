"""Decode any image format a hospital stores into a plain uint8 array.

One reader for PNG, JPEG, TIFF, DICOM and NIfTI, shared by the tools, the scorers and the tests.
DICOM: modality rescale applied, MONOCHROME1 inverted to the usual grey scale, RLE and deflate
handled by pydicom. NIfTI: the middle slice of the last spatial axis (the slice policy the
environments state in their data cards). Errors come out as :class:`ImageReadError` with a
readable reason; nothing else escapes.
"""

from __future__ import annotations

import warnings
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


def read_image(path: str | Path) -> np.ndarray:
    """uint8 ``(H, W)`` or ``(H, W, 3)`` pixels of the image at ``path``."""
    path = Path(path)
    fmt = image_format(path)
    if fmt is None:
        raise ImageReadError(f"{path.name}: not an image file type")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(f"{path.name}: cannot be read ({exc.strerror})") from None
    if size == 0:
        raise ImageReadError(f"{path.name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "dicom":
                pixels = _read_dicom(path)
            elif fmt == "nifti":
                pixels = _read_nifti(path)
            else:
                if fmt == "tiff":
                    _check_tiff_strips(path, size)
                pixels = _read_pil(path)
    except ImageReadError:
        raise
    except Exception as exc:  # every decoder raises its own types; the agent needs one message
        raise ImageReadError(f"{path.name}: corrupt or unreadable {fmt} ({type(exc).__name__}: {str(exc)[:120]})") from None
    return _to_uint8(pixels)


def _check_tiff_strips(path: Path, size: int) -> None:
    """A TIFF whose strips end past the end of the file is truncated. Found from the header alone,
    before libtiff decodes it (libtiff would print "TIFFFillStrip: Read error" to stderr)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
    except Exception:  # noqa: BLE001 - a header tifffile cannot parse is left to Pillow to judge
        return
    if end > size:
        raise ImageReadError(f"{path.name}: truncated tiff (its image data ends at byte {end}, the file has {size})")


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I", "F"):
            return np.asarray(img, dtype=np.float64)
        return np.asarray(img.convert("RGB" if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr") else "L"))


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path)
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
