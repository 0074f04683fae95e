"""``fedagentbench data fetch``: the real image pools from their official sources, verified.

Each source is a MedMNIST v2 file on Zenodo (record 10519652) with the MD5 its authors publish
(``medmnist/info.py``). A download goes to ``<dir>/.partial/`` and resumes there (HTTP ``Range``)
after an interruption; only a complete file whose checksum matches is converted to the pool format
(``{split}_images``/``{split}_labels``, the same arrays and label values as the pools in
``../shared/datasets``) and moved into place with one rename, and its SHA-256 is recorded in
``SHA256SUMS`` (which the builder checks before using a pool). A failure leaves no pool file behind.

Default folder: the user's cache directory (``platformdirs``), where ``envs build`` and ``bench``
look when neither ``--data-dir`` nor ``FEDAGENTBENCH_DATA`` is given. ``--mirror URL`` (or
``FEDAGENTBENCH_DATA_MIRROR``) serves the same file names from elsewhere: an institutional mirror,
or the tests' local server.

Dermatoscopy: the ISIC 2017 challenge images behind ``../shared/datasets``' pool have no single
verifiable file, so ``fetch`` installs DermaMNIST (HAM10000 at 64 px) relabelled to the same two
classes, as a second pool file the builder uses when the ISIC one is absent. Not fetched: the
brain-tumour MRI set (no published checksum; its location is in ``docs/data.md``). Histopathology
stays procedural (PathMNIST's colon tissue classes do not fit the environment's breast task).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel

ZENODO = "https://zenodo.org/records/10519652/files"
MIRROR_ENV = "FEDAGENTBENCH_DATA_MIRROR"
SPLITS = ("train", "val", "test")


class Source(BaseModel):
    """One official file and the pool it becomes."""

    environment: str
    remote: str  # file name at the source
    pool_file: str  # file name in the data directory (environments.pools.REAL_POOL_FILES)
    md5: str
    licence: str
    citation: str
    #: source label -> pool label; labels not listed are left out (None: labels kept as they are)
    relabel: dict[int, int] | None = None


SOURCES: dict[str, Source] = {s.environment: s for s in (
    Source(environment="xray", remote="pneumoniamnist.npz", pool_file="xray_pneumoniamnist_28.npz",
           md5="28209eda62fecd6e6a2d98b1501bb15f", licence="CC BY 4.0",
           citation="MedMNIST v2 (Yang et al., Sci Data 2023); Kermany et al., Cell 2018"),
    Source(environment="ultrasound", remote="breastmnist.npz", pool_file="ultrasound_breastmnist_28.npz",
           md5="750601b1f35ba3300ea97c75c52ff8f6", licence="CC BY 4.0",
           citation="MedMNIST v2 (Yang et al., Sci Data 2023); Al-Dhabyani et al., Data in Brief 2020"),
    Source(environment="fundus", remote="retinamnist.npz", pool_file="fundus_retinamnist_28.npz",
           md5="bd4c0672f1bba3e3a89f0e4e876791e4", licence="CC BY 4.0",
           citation="MedMNIST v2 (Yang et al., Sci Data 2023); DeepDRiD challenge"),
    # HAM10000 dermatoscopy at 64 px (MedMNIST+), relabelled as the ISIC 2017 melanoma pool is:
    # melanoma (4) -> 1; melanocytic naevi (5) and benign keratosis-like lesions (2) -> 0; the other
    # four diagnoses are left out. Used when the ISIC 2017 pool is absent (environments.pools).
    Source(environment="dermatoscopy", remote="dermamnist_64.npz", pool_file="dermatoscopy_dermamnist_melanoma_64.npz",
           md5="b70a2f5635c6199aeaa28c31d7202e1f", licence="CC BY-NC 4.0",
           citation="MedMNIST+ (Yang et al., Sci Data 2023); Tschandl et al., HAM10000, Sci Data 2018",
           relabel={4: 1, 5: 0, 2: 0}),
)}

Progress = Callable[[str, int, int | None], None]


class FetchError(RuntimeError):
    """A pool could not be fetched; the message says why and what to do."""


def default_data_dir() -> Path:
    """Where fetched pools live by default: ``<user cache>/fedagentbench/pools``."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("fedagentbench")) / "pools"


def _download(url: str, part: Path, progress: Progress | None, name: str, timeout: float) -> None:
    """Download ``url`` into ``part``, resuming from what ``part`` already holds."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "fedagentbench", **({"Range": f"bytes={have}-"} if have else {})})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - https or the user's mirror
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part is complete
            return
        if exc.code == 404:
            raise FetchError(f"{name}: not found at {url} (HTTP 404); check --mirror or the source") from None
        raise FetchError(f"{name}: {url} answered HTTP {exc.code} {exc.reason}; run again later") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"{name}: cannot reach {url} ({reason}); check the network or use --mirror") from None
    with response:
        if have and response.status != 206:  # the server ignored the range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with part.open("ab" if have else "wb") as fh:
            done = have
            try:
                while chunk := response.read(1 << 16):
                    fh.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(name, done, total)
            except (OSError, ValueError, http.client.IncompleteRead) as exc:
                raise FetchError(f"{name}: download interrupted after {done:,} bytes ({type(exc).__name__}); "
                                 "run the same command again to resume") from None
        if total is not None and done < total:
            raise FetchError(f"{name}: download interrupted after {done:,} of {total:,} bytes; "
                             "run the same command again to resume")


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _convert(source: Source, downloaded: Path) -> bytes:
    """The MedMNIST file as a pool file (same splits, uint8 images, labels as a flat uint8 vector)."""
    try:
        with np.load(downloaded, allow_pickle=False) as data:
            arrays = {}
            for split in SPLITS:
                images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
                if images.dtype != np.uint8 or len(images) != len(labels):
                    raise ValueError(f"{split}: unexpected arrays {images.dtype} {images.shape} / {labels.shape}")
                if source.relabel is not None:
                    keep = np.isin(labels, list(source.relabel))
                    images = images[keep]
                    labels = np.array([source.relabel[int(v)] for v in labels[keep]], dtype=np.int64)
                arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.astype(np.uint8)
    except (OSError, ValueError, KeyError) as exc:
        raise FetchError(f"{source.remote}: not a MedMNIST file ({exc})") from None
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _record_checksum(folder: Path, filename: str, sha256: str) -> None:
    """Set ``filename``'s line in ``SHA256SUMS`` (written beside, then renamed over)."""
    sums = folder / "SHA256SUMS"
    lines = [line for line in (sums.read_text("utf-8").splitlines() if sums.is_file() else [])
             if line.split()[-1:] != [filename] and line.split()[-1:] != [f"*{filename}"]]
    tmp = folder / ".SHA256SUMS.tmp"
    tmp.write_text("\n".join([*lines, f"{sha256}  {filename}"]) + "\n", "utf-8")
    tmp.replace(sums)


def fetch_pool(source: Source, folder: Path, mirror: str | None = None, progress: Progress | None = None,
               timeout: float = 60.0) -> Path:
    """Fetch, verify and install one pool into ``folder``; returns the pool file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    base = (mirror or os.environ.get(MIRROR_ENV) or ZENODO).rstrip("/")
    url = f"{base}/{source.remote}?download=1" if base == ZENODO else f"{base}/{source.remote}"
    partial = folder / ".partial"
    partial.mkdir(exist_ok=True)
    part = partial / (source.remote + ".part")
    _download(url, part, progress, source.remote, timeout)
    md5 = _digest(part, "md5")
    if md5 != source.md5:
        part.unlink()  # a wrong file is not resumed from
        raise FetchError(f"{source.remote}: checksum mismatch (md5 {md5}, published {source.md5}); the file was "
                         "discarded and no pool written; run again, or check --mirror")
    payload = _convert(source, part)
    target = folder / source.pool_file
    tmp = folder / f".{source.pool_file}.tmp"
    tmp.write_bytes(payload)
    tmp.replace(target)
    _record_checksum(folder, source.pool_file, hashlib.sha256(payload).hexdigest())
    part.unlink()
    return target


def pool_status(folder: Path) -> dict[str, str]:
    """Environment -> "ok", or why its real pool in ``folder`` cannot be used."""
    from environments.pools import REAL_POOL_FILES, pool_files, verify_real_file

    status = {}
    for env in REAL_POOL_FILES:
        reasons = [verify_real_file(folder, filename) for filename in pool_files(env)]
        status[env] = "ok" if None in reasons else reasons[0]
    return status
