"""Write a worked example of a practitioner's federation: ordinary folders of PNG, JPEG and DICOM
files as three hospitals might keep them (not made by the environment builder).

    python -m scripts.make_example_federation --out example_federation
    fedagentbench federate init example_federation/hospital_* --out example_federation/federation.yaml \
        --request "Train a pneumonia classifier on chest X-rays."
    fedagentbench federate run example_federation/federation.yaml --model heuristic

- ``hospital_a``: ``chest_xrays/`` in class folders ``normal/`` and ``pneumonia/`` (PNG), and a
  ``knee_mri/`` set that has nothing to do with the request;
- ``hospital_b``: DICOM files with a ``labels.csv`` (labels ``N`` and ``P``, explained in README.txt), one exact duplicate
  and one truncated file;
- ``hospital_c``: JPEGs in ``NORMAL/`` and ``PNEUMONIA/`` folders.

X-ray pixels come from the real PneumoniaMNIST pool when ``$FEDAGENTBENCH_DATA`` or
``../shared/datasets`` holds it, else from simple synthetic images (said on stdout).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np


def _dicom(path: Path, pixels: np.ndarray, patient: str) -> None:
    """A chest radiograph as a hospital's PACS exports it (environments.formats.write_dicom)."""
    from environments.formats import DicomStyle, Patient, write_dicom

    write_dicom(path, pixels, patient=Patient(patient, f"ID{sum(map(ord, patient)) * 7919 % 10**8:08d}", "19700101", "O"),
                style=DicomStyle(), modality="DX", institution="Example Hospital B", body_part="chest",
                uid_seed=path.name, study_date="20260101", series_description="chest PA")


def make_example(out: Path, per_class: int = 30, seed: int = 0) -> str:
    """Write the three hospitals under ``out``; returns where the X-ray pixels came from."""
    from PIL import Image

    from fl.testing import load_pool

    images, labels, source = load_pool("xray_pneumoniamnist_28.npz", seed=seed)
    rng = np.random.default_rng(seed)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in (0, 1)}

    def take(cls: int) -> np.ndarray:
        return images[pools[cls].pop()]

    a = out / "hospital_a"
    for cls, name in ((0, "normal"), (1, "pneumonia")):
        (a / "chest_xrays" / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(take(cls)).save(a / "chest_xrays" / name / f"{name}_{i:03d}.png")
    for name in ("meniscus_tear", "healthy"):
        (a / "knee_mri" / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class // 2):
            knee = (rng.normal(90, 30, (28, 28)).clip(0, 255)).astype(np.uint8)
            Image.fromarray(knee).save(a / "knee_mri" / name / f"knee_{i:03d}.png")

    b = out / "hospital_b" / "cxr_dicom"
    b.mkdir(parents=True, exist_ok=True)
    rows = []
    for cls, label in ((0, "N"), (1, "P")):
        for i in range(per_class):
            name = f"img_{label}{i:03d}.dcm"
            _dicom(b / name, take(cls), f"Doe^Patient{label}{i}")
            rows.append((name, label))
    (b / "img_N000_copy.dcm").write_bytes((b / "img_N000.dcm").read_bytes())  # an exact duplicate
    rows.append(("img_N000_copy.dcm", "N"))
    data = (b / "img_P001.dcm").read_bytes()
    (b / "img_P999.dcm").write_bytes(data[: len(data) // 2])  # truncated in transfer
    rows.append(("img_P999.dcm", "P"))
    (b / "README.txt").write_text("Chest radiographs exported from the PACS for the pneumonia study.\n"
                                  "Label codes in labels.csv: (N = normal, P = pneumonia)\n", "utf-8")
    with (b / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "label"])
        writer.writerows(rows)

    c = out / "hospital_c"
    for cls, name in ((0, "NORMAL"), (1, "PNEUMONIA")):
        (c / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(take(cls)).save(c / name / f"{name.lower()}-{i:03d}.jpeg", quality=95)
    return source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("example_federation"))
    parser.add_argument("--per-class", type=int, default=30, help="X-ray images per class per hospital")
    args = parser.parse_args()
    source = make_example(args.out, args.per_class)
    print(f"wrote {args.out}/hospital_a, hospital_b, hospital_c (X-ray pixels: {source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
