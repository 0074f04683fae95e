"""The answer key: what a perfect run would do, stored outside every agent workspace.

``answer_key/environment.json`` records every file the build wrote and every injected issue;
``answer_key/tasks/<task_id>.json`` records, per task, the gold result of each phase. Scoring and
the oracle baseline read these files; no tool may.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, Field

FileKind = Literal["image", "label_file", "legend", "junk", "mask", "corrupt"]
Issue = Literal[
    "none", "non_image", "corrupt", "truncated", "zero_byte", "duplicate", "off_topic", "label_error",
]
#: injected heterogeneity kinds an environment reports (see SPEC section 3)
HETEROGENEITY_KINDS: tuple[str, ...] = (
    "layout_class_folders", "layout_flat_csv", "layout_flat_json", "layout_nested",
    "mixed_formats", "dicom", "resolution_shift", "intensity_shift", "noise_shift", "label_skew",
    "non_image", "corrupt", "truncated", "zero_byte", "duplicate", "off_topic", "label_error",
    "class_name_variation", "card_errata",
)
#: the files a cheating policy could flag as injected: images and broken images (not junk, masks or
#: label files); the leak checks (tests/test_env_validity.py, scripts/check_leaks.py) count these
IMAGE_KINDS: tuple[FileKind, ...] = ("image", "corrupt")


class SiteProfile(BaseModel):
    """How one hospital's equipment and exports change its images (feature shift)."""

    size_factor: float
    gamma: float
    gain: float
    offset: float
    noise_sigma: float
    blur_sigma: float
    colour_gains: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    jpeg_quality: int = 90
    dicom_photometric: str = "MONOCHROME2"
    dicom_compression: str = "none"
    dicom_explicit_vr: bool = True
    dicom_bits: int = 8
    dicom_rescale_intercept: float = 0.0
    nifti_voxel_mm: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])


class FileRecord(BaseModel):
    """One file the build wrote, relative to its hospital's workspace."""

    path: str
    kind: FileKind
    issue: Issue = "none"
    format: str | None = None
    #: label the site's folder or label file gives the file
    site_label: str | None = None
    #: the right local class (differs from site_label for label errors; None for off-topic images)
    true_label: str | None = None
    duplicate_of: str | None = None
    #: 64-bit average hash of the image content, to match a converted output back to its source
    ahash: str | None = None


class DatasetKey(BaseModel):
    hospital: str
    name: str
    card: str
    path: str
    pixels: Literal["real", "procedural"]
    relevant_to: list[str]
    layout: str
    formats: list[str]
    label_file: str | None
    label_style: str
    naming: str
    local_classes: list[str]
    local_to_concept: dict[str, str | None]
    local_to_published: dict[str, str]
    class_counts: dict[str, int]
    injected: dict[str, int]
    card_errata: list[str]
    files: list[FileRecord]


class HospitalKey(BaseModel):
    name: str
    display_name: str
    profile: SiteProfile
    datasets: list[str]


class Patient(BaseModel):
    name: str
    patient_id: str
    birth_date: str


class EnvironmentKey(BaseModel):
    environment: str
    seed: int
    scale: str
    hospitals: list[HospitalKey]
    datasets: list[DatasetKey]
    patients: list[Patient]
    heterogeneity: dict[str, int]

    def dataset(self, hospital: str, name: str) -> DatasetKey:
        for ds in self.datasets:
            if ds.hospital == hospital and ds.name == name:
                return ds
        raise KeyError(f"no dataset {name!r} at {hospital!r}")


class TargetSchema(BaseModel):
    """What a harmonised dataset must look like."""

    classes: list[str]
    image_size: int
    mode: Literal["L", "RGB"]
    file_format: Literal["png"] = "png"
    layout: str = "one folder per target class, images directly inside"


class TaskRequirements(BaseModel):
    """S1's gold extraction from the request."""

    modality: str
    task_type: str
    target_classes: list[str]
    requirement: str


class CleanFile(BaseModel):
    path: str
    local_class: str
    target_class: str | None
    ahash: str | None


class RemovedFile(BaseModel):
    path: str
    reason: Issue | Literal["label_file"]


class TaskKey(BaseModel):
    task_id: str
    environment: str
    requests: dict[str, str]
    requirements: TaskRequirements
    #: hospital -> names of its datasets that fit the task (empty list: none)
    relevant_datasets: dict[str, list[str]]
    approved_hospitals: list[str]
    rejected_hospitals: list[str]
    target_schema: TargetSchema
    #: hospital -> dataset -> local class -> target class (None: drop)
    label_mappings: dict[str, dict[str, dict[str, str | None]]]
    #: hospital -> dataset -> images that survive cleaning (C2), with their target class (C3)
    clean_files: dict[str, dict[str, list[CleanFile]]]
    removed_files: dict[str, dict[str, list[RemovedFile]]]
    acceptable_algorithms: list[str]


def write_json(path: Path, model: BaseModel) -> None:
    """Deterministic JSON (sorted keys, fixed indentation): same seed, same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(model.model_dump(mode="json"), indent=1, sort_keys=True, ensure_ascii=False)
    path.write_text(payload + "\n", encoding="utf-8")


def load_environment_key(env_dir: Path) -> EnvironmentKey:
    return EnvironmentKey.model_validate_json((env_dir / "answer_key" / "environment.json").read_text("utf-8"))


def load_task_key(env_dir: Path, task_id: str) -> TaskKey:
    path = env_dir / "answer_key" / "tasks" / f"{task_id}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no answer key for task {task_id!r} under {env_dir}")
    return TaskKey.model_validate_json(path.read_text("utf-8"))


def label_file_order(workspace: Path, dataset: DatasetKey) -> list[str]:
    """Image base names in the order of the rows of ``dataset``'s label file under its hospital's
    ``workspace`` (empty: no label file): what a policy that flags the last rows would read."""
    if not dataset.label_file:
        return []
    text = (workspace / dataset.path / dataset.label_file).read_text("utf-8")
    if dataset.label_file.endswith(".json"):
        payload = json.loads(text)
        names = list(payload) if isinstance(payload, dict) else [row["file"] for row in payload]
    else:
        rows = list(csv.reader(io.StringIO(text)))[1:]
        names = [row[2] if dataset.label_file == "metadata.csv" else row[0] for row in rows]
    return [PurePosixPath(n).name for n in names]


def name_stem(name: str) -> str:
    """A file name without its last two suffixes (``a.nii.gz`` -> ``a``): a label-file row and its file
    share it whatever format the row names."""
    return name.rsplit(".", 2)[0]
