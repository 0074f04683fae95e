"""Per-hospital acquisition differences (feature shift) applied to pool images."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from environments.answer_key import SiteProfile


def sample_profile(rng: np.random.Generator, colour: bool) -> SiteProfile:
    """One hospital's equipment: stored resolution, intensity curve, noise, blur, export styles."""
    return SiteProfile(
        size_factor=float(rng.choice([1.0, 1.5, 2.0, 3.0])),
        gamma=round(float(rng.uniform(0.7, 1.4)), 3),
        gain=round(float(rng.uniform(0.85, 1.12)), 3),
        offset=round(float(rng.uniform(-12, 12)), 2),
        noise_sigma=round(float(rng.uniform(0.0, 6.0)), 2),
        blur_sigma=round(float(rng.uniform(0.0, 0.9)), 2),
        colour_gains=[round(float(g), 3) for g in rng.uniform(0.9, 1.1, 3)] if colour else [1.0, 1.0, 1.0],
        jpeg_quality=int(rng.integers(70, 96)),
        dicom_photometric=str(rng.choice(["MONOCHROME2", "MONOCHROME1"])),
        dicom_compression=str(rng.choice(["none", "rle", "deflate"])),
        dicom_explicit_vr=bool(rng.random() < 0.7),
        dicom_bits=int(rng.choice([8, 16])),
        dicom_rescale_intercept=float(rng.choice([0.0, -1024.0])),
        nifti_voxel_mm=[round(float(v), 2) for v in (*rng.uniform(0.5, 1.2, 2), rng.uniform(1.0, 5.0))],
    )


def apply_profile(img: np.ndarray, profile: SiteProfile, rng: np.random.Generator) -> np.ndarray:
    """The pool image as this hospital's equipment would have stored it (uint8)."""
    from PIL import Image

    size = int(round(img.shape[0] * profile.size_factor))
    if size != img.shape[0]:
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))
    x = img.astype(np.float32) / 255.0
    x = np.power(np.clip(x, 0, 1), profile.gamma) * profile.gain + profile.offset / 255.0
    if x.ndim == 3:
        x = x * np.asarray(profile.colour_gains, dtype=np.float32)
    if profile.blur_sigma > 0:
        sigma = (profile.blur_sigma, profile.blur_sigma, 0) if x.ndim == 3 else profile.blur_sigma
        x = ndimage.gaussian_filter(x, sigma)
    x = x * 255.0 + rng.normal(0, profile.noise_sigma, x.shape)
    return np.clip(x, 0, 255).round().astype(np.uint8)


def to_mode(img: np.ndarray, colour: bool) -> np.ndarray:
    """Grey <-> RGB so an image of another modality fits a dataset's channel layout."""
    if colour and img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=-1)
    if not colour and img.ndim == 3:
        return (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
    return img


def average_hash(img: np.ndarray) -> str:
    """64-bit average hash (8x8 grey, thresholded at the mean): survives resizing and re-encoding."""
    from PIL import Image

    grey = to_mode(img, colour=False).astype(np.float32)
    # 8x8 means in float: rounding them to uint8 would flip near-mean cells under a contrast stretch
    small = np.asarray(Image.fromarray(grey).resize((8, 8), Image.BOX), dtype=np.float32)
    bits = (small > small.mean()).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"
