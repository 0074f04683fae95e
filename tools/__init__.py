"""The agents' tools: LangChain tools bound to one workspace, sandboxed and metadata-only.

``build_client_tools(workspace)`` gives a hospital's 15 tools, ``build_server_tools(workspace)``
the server's 3 (training launch and monitoring are added by ``fl/``). Every tool returns a string:
JSON or text for the model, or ``error: ...``; none raises. Paths are relative to the workspace;
writes go under ``work/`` only (see :mod:`tools.sandbox`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from tools import files, images, labels, quality, server, stats
from tools.sandbox import Workspace, make_tool

Check = Literal["duplicates", "off_topic", "label_errors"]


class PathArg(BaseModel):
    path: str = Field(description="path relative to your workspace, e.g. data_cards.json or datasets/<name>")


class ReadArgs(PathArg):
    max_chars: int = Field(4500, description="at most this many characters (<= 4500)")
    offset: int = Field(0, description="start at this character, to read on after a truncated answer")


class ListArgs(BaseModel):
    path: str = Field(".", description="folder relative to your workspace ('.' = the workspace)")
    depth: int = Field(2, description="how many folder levels to show (1-4)")


class PreviewArgs(PathArg):
    rows: int = Field(5, description="number of rows/entries to show (<= 20)")


class CopyArgs(BaseModel):
    source: str = Field(description="folder to copy, e.g. datasets/<name>")
    destination: str = Field(description="new folder under work/, e.g. work/raw/<name>")
    overwrite: bool = Field(False, description="replace the destination if it exists")


class OrganiseArgs(CopyArgs):
    label_file: str | None = Field(None, description="label file inside source (default: labels.csv, metadata.csv, "
                                                     "labels.json or the only CSV/JSON at its top)")
    file_column: str | None = Field(None, description="column/key holding file names or paths (default: guessed)")
    label_column: str | None = Field(None, description="column/key holding the class label (default: guessed)")


class RemoveArgs(BaseModel):
    path: str = Field(description="dataset folder under work/")
    remove_unreadable: bool = Field(True, description="also delete images that cannot be decoded "
                                                      "(corrupt, truncated, empty)")


class ConvertArgs(CopyArgs):
    size: int = Field(224, description="output width and height in pixels")
    mode: Literal["L", "RGB"] = Field("RGB", description="'L' for greyscale, 'RGB' for colour")


class DetectArgs(PathArg):
    checks: list[Check] = Field(default_factory=lambda: ["duplicates", "off_topic", "label_errors"],
                                description="which detectors to run")


class RemoveFlaggedArgs(BaseModel):
    flags_file: str = Field(description="flags file written by detect_data_issues (*.flags.json)")
    kinds: list[Check] = Field(default_factory=lambda: ["duplicates", "off_topic", "label_errors"],
                               description="which kinds of flagged files to delete")


class MappingArgs(BaseModel):
    source: str = Field(description="folder with one sub-folder per local class, under work/")
    mapping: dict[str, str | None] = Field(description="local class folder -> target class; null drops the class. "
                                                       "Every class folder must appear")
    destination: str = Field(description="new folder under work/ for the target classes, e.g. work/final")
    merge: bool = Field(False, description="add to an existing destination (e.g. a second dataset)")
    overwrite: bool = Field(False, description="replace the destination if it exists")

    @field_validator("mapping", mode="before")
    @classmethod
    def _json_text(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


class TaskArgs(BaseModel):
    task_id: str | None = Field(None, description="task id; omit to list the tasks")


class RegistryArgs(BaseModel):
    category: str | None = Field(None, description="traditional, personalised or domain_generalisation")
    cue: str | None = Field(None, description="a data/task characteristic, e.g. label_skew, feature_shift, "
                                              "personalisation, unseen_site, stragglers, baseline")
    name: str | None = Field(None, description="one algorithm's name, for its full entry")
    executable_only: bool = Field(False, description="only algorithms this benchmark can train")


class NoArgs(BaseModel):
    pass


class RemoveFilesArgs(BaseModel):
    paths: list[str] = Field(description="files under work/ to delete, e.g. work/cleaned/<dataset>/<class>/x.png")
    reason: str = Field("", description="why they are removed (kept in the tool's reply)")


class StatsArgs(BaseModel):
    hospitals: list[str] | None = Field(None, description="hospital names; omit for all")


def build_client_tools(workspace: str | Path, work_dir: str | Path | None = None) -> list[Any]:
    """The tools of one hospital's agents, confined to ``workspace`` (``work_dir``: this run's own
    folder, mounted as ``work/``; see :class:`tools.sandbox.Workspace`)."""
    ws = Workspace(workspace, work_dir)
    spec = [
        (files.read_data_cards, "read_data_cards", NoArgs,
         "Read this hospital's data cards (data_cards.json): for every local dataset its name, description, "
         "path, modality, task type, classes, file format, image count and label file."),
        (files.read_text_file, "read_text_file", ReadArgs,
         ("Read the beginning of a small text file in your workspace (data_cards.json, README.txt, classes.txt, "
          "label files). Binary files and images are refused; long files are truncated.")),
        (files.list_folder, "list_folder", ListArgs,
         ("Summarise a folder as a tree: per folder the number of files by extension, a few file names and the "
          "sub-folders. Use it to see a dataset's layout (class folders, images/ + label file, patient folders).")),
        (files.preview_label_file, "preview_label_file", PreviewArgs,
         ("Preview a CSV/TSV/JSON label file: columns or keys, number of entries, first rows and the counts of "
          "each label value.")),
        (images.summarise_images, "summarise_images", PathArg,
         ("Describe the images under a folder without showing pixels: formats, sizes, grey/RGB, images per "
          "sub-folder (class counts) and unreadable files with the reason.")),
        (images.copy_dataset, "copy_dataset", CopyArgs,
         ("Copy a dataset folder (structure kept) into the work area, e.g. datasets/X -> work/raw/X. Sources "
          "are read-only; all later steps work on copies under work/.")),
        (labels.organise_by_labels, "organise_by_label_file", OrganiseArgs,
         ("Build one folder per class from a dataset whose labels are in a file (labels.csv with file/image_id "
          "and label/dx/diagnosis columns, labels.json as {file: label} or [{file, label}], metadata.csv of "
          "nested patient folders). Copies each labelled image to destination/<label>/; same-named files get "
          "unique names. For datasets already in class folders use copy_dataset.")),
        (images.remove_non_images, "remove_non_image_files", RemoveArgs,
         ("Delete every non-image file (reports, spreadsheets, scripts, .DS_Store, Thumbs.db, ._ files, label "
          "files) from a dataset under work/, and by default images that cannot be decoded. Run it after "
          "organising, since it deletes label files.")),
        (images.convert_images, "convert_images", ConvertArgs,
         ("Convert every image under source (PNG, JPEG, TIFF, DICOM, NIfTI middle slice) to PNG of size x size "
          "in mode L or RGB under destination, keeping the class folders. Unreadable files are skipped and listed.")),
        (quality.detect_issues, "detect_data_issues", DetectArgs,
         ("Find near-duplicate images, off-topic images (another modality) and likely label errors in a dataset "
          "(class folders or a label file). Writes a flags file and returns the counts and files; deletes nothing.")),
        (quality.remove_flagged, "remove_flagged_files", RemoveFlaggedArgs,
         ("Delete the files listed in a flags file from detect_data_issues (only under work/), for the chosen "
          "kinds; of each duplicate group one image is kept.")),
        (quality.remove_files, "remove_files", RemoveFilesArgs,
         "Delete specific files under work/ that you judge wrong (duplicates, off-topic images, wrong labels). "
         "Sources under datasets/ can never be deleted."),
        (labels.class_folders, "list_class_folders", PathArg,
         ("List the class sub-folders of a dataset with their image counts, plus stray files outside them.")),
        (labels.apply_mapping, "apply_label_mapping", MappingArgs,
         ("Rebuild a class-folder dataset under target class names: mapping {local class: target class or null "
          "to drop}. Classes mapped to one target are merged without overwriting; every class must be mapped.")),
        (stats.report_statistics, "report_dataset_statistics", PathArg,
         ("Compute aggregate statistics of your prepared dataset (class counts, sizes, formats, mean intensity) "
          "and publish them to the server in work/stats.json. No file names or pixels are shared.")),
    ]
    return [make_tool(ws, func, name, desc, schema) for func, name, schema, desc in spec]


def build_server_tools(workspace: str | Path, client_work: dict[str, str | Path] | None = None,
                       guidance: str | None = None, work_dir: str | Path | None = None) -> list[Any]:
    """The server agents' tools. ``client_work``: each hospital's work folder, where it publishes its
    statistics (default: ``clients/*/work`` beside the server's workspace)."""
    ws = Workspace(workspace, work_dir)
    if client_work is None:
        sibling = ws.root.parent / "clients"
        client_work = {p.name: p / "work" for p in sorted(sibling.iterdir()) if p.is_dir()} if sibling.is_dir() else {}
    clients = {name: Path(p) for name, p in client_work.items()}

    def task(_: Workspace, task_id: str | None = None) -> dict:
        return server.read_task(ws, task_id, guidance)

    def client_stats(_: Workspace, hospitals: list[str] | None = None) -> dict:
        return server.read_client_statistics(clients, hospitals)

    spec = [
        (task, "read_task", TaskArgs,
         ("Read the user's request for a federated-learning task (omit task_id to list the tasks).")),
        (server.query_registry, "query_algorithm_registry", RegistryArgs,
         ("Search the registry of federated-learning algorithms by category and/or cue (label_skew, "
          "feature_shift, personalisation, ...), or get one algorithm by name.")),
        (client_stats, "read_client_statistics", StatsArgs,
         ("Read the statistics the hospitals published (class counts, image sizes, intensity) and how much "
          "their label mixes and intensities differ.")),
    ]
    return [make_tool(ws, func, name, desc, schema) for func, name, schema, desc in spec]


__all__ = ["build_client_tools", "build_server_tools"]
