"""Procedural, class-conditional medical-looking images, one generator per environment.

Used where no real labelled pool exists (histopathology always; the other five when the data
directory is absent) and for distractor datasets and off-topic images. Each generator draws a
plausible anatomy with seeded randomness and adds the class-defining pathology at a contrast that
reaches almost zero, with overlapping shape ranges between classes, so the task is learnable but
not trivial (the design measured in ``reference/offline-medical-images.md`` section 5).

Every generator returns uint8 ``(S, S)`` (grey) or ``(S, S, 3)`` (colour) at ``size``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

Generator = Callable[[int, np.random.Generator, int], np.ndarray]


def _smooth(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise field."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    return field / (field.std() + 1e-8)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy / size, xx / size


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 255.0, 0, 255).round().astype(np.uint8)


def _star_mask(size: int, rng: np.random.Generator, r0: float, harmonics: int, amp: float) -> np.ndarray:
    """A star-shaped blob r(theta) = r0 (1 + sum a_h cos(h theta + phi_h)), soft-edged."""
    yy, xx = _grid(size)
    cy, cx = 0.5 + rng.uniform(-0.08, 0.08, 2)
    theta = np.arctan2(yy - cy, xx - cx)
    radius = np.hypot(yy - cy, xx - cx)
    r = np.full_like(theta, r0)
    for h in range(2, 2 + harmonics):
        r += r0 * rng.uniform(0, amp) * np.cos(h * theta + rng.uniform(0, 2 * np.pi))
    return (radius < r).astype(np.float32)


def dermatoscopy(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """0 = benign naevus-like lesion, 1 = melanoma-like lesion."""
    skin = np.array([0.86, 0.66, 0.55]) + rng.uniform(-0.08, 0.08, 3)
    img = np.ones((size, size, 3)) * skin + 0.03 * _smooth(rng, size, 4)[..., None]
    malignant = label == 1
    harmonics = int(rng.integers(4, 8)) if malignant else int(rng.integers(1, 4))
    amp = rng.uniform(0.12, 0.35) if malignant else rng.uniform(0.02, 0.2)
    mask = _star_mask(size, rng, rng.uniform(0.16, 0.3), harmonics, amp)
    mask = ndimage.gaussian_filter(mask, 0.6 if malignant else rng.uniform(1.0, 2.0))
    brown = np.array([0.45, 0.28, 0.18]) + rng.uniform(-0.06, 0.06, 3)
    lesion = np.ones_like(img) * brown
    if malignant:  # variegated: dark blotches and a blue-grey veil of varying strength
        blotch = (_smooth(rng, size, 3) > rng.uniform(0.3, 1.2)).astype(np.float32)
        lesion -= 0.18 * blotch[..., None]
        veil = (_smooth(rng, size, 4) > 0.8).astype(np.float32) * rng.uniform(0.0, 0.25)
        lesion += veil[..., None] * (np.array([0.45, 0.5, 0.6]) - lesion)
    else:
        lesion += 0.05 * _smooth(rng, size, 2)[..., None]
    img = img * (1 - mask[..., None]) + lesion * mask[..., None]
    for _ in range(int(rng.integers(0, 4))):  # hairs: irrelevant structure
        y0, x0, y1, x1 = rng.integers(0, size, 4)
        n = max(abs(y1 - y0), abs(x1 - x0)) + 1
        ys, xs = np.linspace(y0, y1, n).astype(int), np.linspace(x0, x1, n).astype(int)
        img[ys, xs] = 0.15
    return _to_uint8(img + rng.normal(0, 0.02, img.shape))


def ultrasound(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """0 = malignant (irregular, shadowing), 1 = normal or benign (oval, smooth, or no mass)."""
    yy, xx = _grid(size)
    tissue = 0.45 + 0.12 * _smooth(rng, size, 5) + 0.15 * (yy < 0.2)
    malignant = label == 0
    if malignant or rng.random() < 0.7:
        mask = _star_mask(size, rng, rng.uniform(0.1, 0.22), int(rng.integers(3, 7)) if malignant else 1,
                          rng.uniform(0.1, 0.3) if malignant else rng.uniform(0.0, 0.12))
        mask = ndimage.gaussian_filter(mask, 0.8 if malignant else 1.5)
        depth = rng.uniform(0.1, 0.35)
        tissue = tissue * (1 - depth * mask)
        if malignant:  # posterior acoustic shadow below the mass, at varying strength
            cols = mask.max(axis=0) > 0.5
            below = np.cumsum(mask, axis=0) > 1
            tissue -= rng.uniform(0.0, 0.15) * (below & cols[None, :])
    speckle = rng.rayleigh(1.0, (size, size)) / 1.25
    img = tissue * speckle
    fan = (np.abs(xx - 0.5) < 0.15 + 0.45 * yy) & (yy > 0.03)  # sector-shaped field of view
    return _to_uint8(np.clip(img, 0, 1) * fan)


def fundus(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Diabetic-retinopathy grade 0-4: more microaneurysms, haemorrhages, exudates with grade."""
    yy, xx = _grid(size)
    r = np.hypot(yy - 0.5, xx - 0.5)
    fov = (r < 0.47).astype(np.float32)
    base = np.array([0.75, 0.35, 0.15]) + rng.uniform(-0.07, 0.07, 3)
    img = np.ones((size, size, 3)) * base * (1 - 0.5 * r[..., None]) + 0.03 * _smooth(rng, size, 6)[..., None]
    side = rng.choice([0.3, 0.7])
    disc = np.exp(-(((yy - 0.5) ** 2 + (xx - side) ** 2) / 0.004))
    img += disc[..., None] * np.array([0.25, 0.35, 0.25])
    for _ in range(int(rng.integers(4, 8))):  # vessels: random walks out of the optic disc
        y, x, ang = 0.5, side, rng.uniform(0, 2 * np.pi)
        for _ in range(size):
            ang += rng.normal(0, 0.25)
            y, x = y + np.sin(ang) / size, x + np.cos(ang) / size
            iy, ix = int(y * size), int(x * size)
            if not (0 <= iy < size and 0 <= ix < size):
                break
            img[iy, ix] = img[iy, ix] * 0.6 + np.array([0.45, 0.05, 0.05]) * 0.4
    grade = int(label)
    n_ma = int(rng.poisson([0.3, 2.5, 6, 10, 14][grade]))
    for _ in range(n_ma):  # microaneurysms / dot haemorrhages
        cy, cx = rng.uniform(0.15, 0.85, 2)
        rad = rng.uniform(0.008, 0.02 + 0.006 * grade)
        spot = np.hypot(yy - cy, xx - cx) < rad
        img[spot] = img[spot] * 0.5 + np.array([0.35, 0.02, 0.02]) * 0.5
    if grade >= 2:
        for _ in range(int(rng.poisson(grade))):  # hard exudates
            cy, cx = rng.uniform(0.2, 0.8, 2)
            spot = np.hypot(yy - cy, (xx - cx) * 0.7) < rng.uniform(0.01, 0.03)
            img[spot] = img[spot] * 0.4 + np.array([0.95, 0.85, 0.35]) * 0.6
    img = ndimage.gaussian_filter(img, (rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.9), 0))
    return _to_uint8(img * fov[..., None] + rng.normal(0, 0.015, img.shape))


def histopathology(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """H&E-like patch: 0 = benign (sparse, small, round nuclei), 1 = malignant (dense, pleomorphic)."""
    yy, xx = _grid(size)
    pink = np.array([0.92, 0.68, 0.80]) + rng.uniform(-0.05, 0.05, 3)
    img = np.ones((size, size, 3)) * pink + 0.05 * _smooth(rng, size, 3)[..., None]
    malignant = label == 1
    n = int(rng.integers(18, 40) if malignant else rng.integers(10, 28))
    for _ in range(n):
        cy, cx = rng.uniform(0, 1, 2)
        a = rng.uniform(0.025, 0.06) if malignant else rng.uniform(0.02, 0.04)
        b = a * (rng.uniform(0.45, 1.0) if malignant else rng.uniform(0.75, 1.0))
        t = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u, v = dy * np.cos(t) + dx * np.sin(t), -dy * np.sin(t) + dx * np.cos(t)
        nucleus = (u / a) ** 2 + (v / b) ** 2 < 1
        darkness = rng.uniform(0.55, 0.85) if malignant else rng.uniform(0.45, 0.75)
        img[nucleus] = img[nucleus] * (1 - darkness) + np.array([0.3, 0.15, 0.45]) * darkness
    img = ndimage.gaussian_filter(img, (0.6, 0.6, 0))
    return _to_uint8(img + rng.normal(0, 0.02, img.shape))


def mri(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Axial brain slice: 0 glioma, 1 meningioma, 2 no tumour, 3 pituitary tumour."""
    yy, xx = _grid(size)
    ay, ax = rng.uniform(0.36, 0.44), rng.uniform(0.3, 0.38)
    d = ((yy - 0.5) / ay) ** 2 + ((xx - 0.5) / ax) ** 2
    brain = (d < 0.85).astype(np.float32) * (0.45 + 0.08 * _smooth(rng, size, 3))
    skull = ((d >= 0.88) & (d < 1.0)).astype(np.float32) * 0.85
    vent = (((yy - 0.47) / 0.12) ** 2 + ((np.abs(xx - 0.5) - 0.05) / 0.04) ** 2 < 1) * -0.3
    img = brain + skull + vent * (d < 0.85)
    contrast = rng.uniform(0.05, 0.55)
    if label == 0:  # glioma: irregular intra-axial mass with a darker oedema rim
        cy, cx = rng.uniform(0.3, 0.6), 0.5 + rng.choice([-1, 1]) * rng.uniform(0.1, 0.2)
        blob = _smooth(rng, size, 2) * 0.3 + 1 - np.hypot(yy - cy, xx - cx) / rng.uniform(0.08, 0.14)
        img += contrast * (blob > 0.3) - 0.5 * contrast * ((blob > -0.3) & (blob <= 0.3))
    elif label == 1:  # meningioma: round extra-axial mass against the skull
        ang = rng.uniform(0, 2 * np.pi)
        cy, cx = 0.5 + 0.75 * ay * np.sin(ang), 0.5 + 0.75 * ax * np.cos(ang)
        img += contrast * 1.2 * (np.hypot(yy - cy, xx - cx) < rng.uniform(0.05, 0.1))
    elif label == 3:  # pituitary: small midline mass low in the slice
        cy, cx = rng.uniform(0.62, 0.72), 0.5 + rng.normal(0, 0.02)
        img += contrast * 1.3 * (np.hypot(yy - cy, xx - cx) < rng.uniform(0.03, 0.06))
    noise = np.hypot(rng.normal(0, 0.04, img.shape), rng.normal(0, 0.04, img.shape))  # Rician-like floor
    return _to_uint8(ndimage.gaussian_filter(img, 0.7) + noise)


def xray(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Chest radiograph: 0 normal, 1 pneumonia (a blurred opacity in one lung)."""
    yy, xx = _grid(size)
    img = 0.55 + 0.05 * _smooth(rng, size, 8)
    lungs = []
    for side in (-1, 1):
        cy, cx = rng.uniform(0.45, 0.55), 0.5 + side * rng.uniform(0.18, 0.24)
        lung = ((yy - cy) / 0.3) ** 2 + ((xx - cx) / 0.14) ** 2 < 1
        lungs.append((lung, cy, cx))
        img = img - 0.35 * lung
    for k in range(6):  # ribs as faint arcs
        img += 0.06 * (np.abs(((yy - 0.15 - 0.12 * k) - 0.25 * (xx - 0.5) ** 2)) < 0.012)
    img += 0.3 * (np.abs(xx - 0.5) < 0.07)  # mediastinum
    if label == 1:
        lung, cy, cx = lungs[int(rng.integers(0, 2))]
        oy, ox = cy + rng.uniform(-0.15, 0.2), cx + rng.uniform(-0.05, 0.05)
        opacity = np.exp(-(((yy - oy) ** 2 + (xx - ox) ** 2) / rng.uniform(0.004, 0.015)))
        img += rng.uniform(0.05, 0.4) * ndimage.gaussian_filter(opacity * lung, 1.5)
    img = ndimage.gaussian_filter(img, 0.8)
    return _to_uint8(img + rng.poisson(40, img.shape) / 400.0 - 0.1)


GENERATORS: dict[str, Generator] = {
    "dermatoscopy": dermatoscopy,
    "ultrasound": ultrasound,
    "fundus": fundus,
    "histopathology": histopathology,
    "mri": mri,
    "xray": xray,
}


def generate(environment: str, label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One procedural image of ``environment``'s pool class ``label``."""
    return GENERATORS[environment](label, rng, size)
