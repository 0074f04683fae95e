"""Build simulated hospital environments: workspaces on disk plus their answer keys.

Layout of one environment ``<out>/<env>/``:
  clients/<hospital>/            a client workspace: datasets/, data_cards.json, an empty work/
  server/                        the server workspace: tasks/<task_id>.json (the requests only)
  answer_key/                    outside every workspace: environment.json, tasks/<task_id>.json
  environment.json               the manifest: seed, scale, versions, pools, counts
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from environments.answer_key import (
    HETEROGENEITY_KINDS,
    CleanFile,
    DatasetKey,
    EnvironmentKey,
    HospitalKey,
    Patient,
    RemovedFile,
    TargetSchema,
    TaskKey,
    TaskRequirements,
    write_json,
)
from environments.catalogue import load_catalogue
from environments.concepts import ENVIRONMENTS
from environments.heldout import draw_heldout, write_heldout
from environments.materialise import BuildContext, materialise_dataset, pool_budget
from environments.planner import SCALES, plan_environment
from environments.pools import ImagePool
from environments.site import sample_profile
from environments.tasks import TaskSpec, tasks_for

GENERATOR_VERSION = "4"  # 2: shuffled injected files, criterion-consistent placement; 3: held-out test set; 4: distractors drawn like relevant datasets, injected files profiled, seeded mtimes
CITIES = ("Aarhus", "Bologna", "Coimbra", "Dresden", "Eindhoven", "Freiburg", "Graz", "Haarlem", "Innsbruck",
          "Jena", "Krakow", "Leuven", "Malmo", "Nantes", "Oulu", "Porto", "Quimper", "Rennes", "Salzburg", "Tartu")

Progress = Callable[[str, int, int], None]


class EnvironmentSummary(BaseModel):
    environment: str
    path: str
    hospitals: int
    datasets: int
    relevant_datasets: int
    files: int
    bytes: int
    pool: str
    fallback_reason: str | None


def build_environment(
    environment: str,
    scale: str,
    seed: int,
    out: Path,
    data_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> EnvironmentSummary:
    """Build one environment under ``out/<environment>`` (replacing an earlier build there)."""
    if environment not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {environment!r}; choose from {', '.join(ENVIRONMENTS)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    env_dir = Path(out) / environment
    if env_dir.exists():
        if not (env_dir / "environment.json").is_file():
            raise ValueError(f"{env_dir} exists and is not an environment build; refusing to overwrite it")
        shutil.rmtree(env_dir)
    rng = np.random.default_rng([seed, ENVIRONMENTS.index(environment), 1])
    pool = ImagePool(environment, seed, data_dir)
    tasks = tasks_for(environment)
    cards = load_catalogue().for_environment(environment)
    plan = plan_environment(cards, tasks, scale, rng, grey_formats=not pool.colour)

    hospitals: list[HospitalKey] = []
    datasets: list[DatasetKey] = []
    patients: list[dict] = []
    budget = pool_budget(pool, [d for h in plan for d in h.datasets])
    total = sum(len(h.datasets) for h in plan)
    done = 0
    cities = list(rng.permutation(CITIES))
    for i, hospital in enumerate(plan):
        workspace = env_dir / "clients" / hospital.name
        (workspace / "work").mkdir(parents=True)
        profile = sample_profile(rng, pool.colour)
        display = f"{cities[i % len(cities)]} University Hospital"
        ctx = BuildContext(environment, hospital.name, display, workspace, profile, pool, rng,
                           uid_seed=f"{seed}/{environment}/{hospital.name}", patients=patients,
                           pool_budget=budget)
        keys = []
        for ds_plan in hospital.datasets:
            keys.append(materialise_dataset(ctx, ds_plan))
            done += 1
            if progress:
                progress(environment, done, total)
        _write_data_cards(workspace, keys, rng)
        datasets += keys
        hospitals.append(HospitalKey(name=hospital.name, display_name=display, profile=profile,
                                     datasets=[k.name for k in keys]))

    env_key = EnvironmentKey(
        environment=environment, seed=seed, scale=scale, hospitals=hospitals, datasets=datasets,
        patients=[Patient(**p) for p in patients], heterogeneity=_heterogeneity(datasets, hospitals),
    )
    write_json(env_dir / "answer_key" / "environment.json", env_key)
    heldout_images, heldout_labels = draw_heldout(pool, scale)  # what the hospitals left: none of theirs
    write_heldout(env_dir, heldout_images, heldout_labels)
    for task in tasks:
        write_json(env_dir / "answer_key" / "tasks" / f"{task.task_id}.json", task_key(task, env_key))
        _write_server_task(env_dir / "server" / "tasks" / f"{task.task_id}.json", task, seed)
    files = [p for p in env_dir.rglob("*") if p.is_file()]
    manifest = {
        "environment": environment,
        "seed": seed,
        "scale": scale,
        "generator_version": GENERATOR_VERSION,
        "versions": _versions(),
        "pool": {"kind": pool.info.kind, "source": pool.info.source, "fallback_reason": pool.info.fallback_reason},
        "tasks": [t.task_id for t in tasks],
        "counts": {
            "hospitals": len(hospitals),
            "datasets": len(datasets),
            "relevant_datasets": sum(1 for d in datasets if d.relevant_to),
            "files": len(files) + 1,
            "images": sum(1 for d in datasets for f in d.files if f.kind == "image"),
            "heldout_test_images": int(len(heldout_labels)),
            "bytes": sum(p.stat().st_size for p in files),
        },
        "heterogeneity": env_key.heterogeneity,
    }
    (env_dir / "environment.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", "utf-8")
    return EnvironmentSummary(
        environment=environment, path=str(env_dir), hospitals=len(hospitals), datasets=len(datasets),
        relevant_datasets=manifest["counts"]["relevant_datasets"], files=manifest["counts"]["files"],
        bytes=manifest["counts"]["bytes"], pool=pool.info.kind, fallback_reason=pool.info.fallback_reason,
    )


def task_key(task: TaskSpec, env: EnvironmentKey) -> TaskKey:
    """The gold result of every phase of ``task`` in the built environment ``env``."""
    relevant: dict[str, list[str]] = {h.name: [] for h in env.hospitals}
    mappings: dict[str, dict[str, dict[str, str | None]]] = {}
    clean: dict[str, dict[str, list[CleanFile]]] = {}
    removed: dict[str, dict[str, list[RemovedFile]]] = {}
    for ds in env.datasets:
        if task.task_id not in ds.relevant_to:
            continue
        relevant[ds.hospital].append(ds.name)
        mapping = task.gold_mapping(ds.local_to_concept)
        mappings.setdefault(ds.hospital, {})[ds.name] = mapping
        keep, drop = [], []
        for f in ds.files:
            if f.kind == "image" and f.issue == "none":
                keep.append(CleanFile(path=f.path, local_class=f.true_label or "", target_class=mapping[f.true_label or ""],
                                      ahash=f.ahash))
            else:
                reason = f.issue if f.issue != "none" else ("label_file" if f.kind in ("label_file", "legend") else "non_image")
                drop.append(RemovedFile(path=f.path, reason=reason))
        clean.setdefault(ds.hospital, {})[ds.name] = keep
        removed.setdefault(ds.hospital, {})[ds.name] = drop
    approved = sorted(h for h, names in relevant.items() if names)
    return TaskKey(
        task_id=task.task_id,
        environment=task.environment,
        requests={"fine": task.request("fine", env.seed), "goal": task.request("goal", env.seed)},
        requirements=TaskRequirements(modality=task.environment, task_type=task.task_type,
                                      target_classes=task.target_classes, requirement=task.requirement),
        relevant_datasets=relevant,
        approved_hospitals=approved,
        rejected_hospitals=sorted(set(relevant) - set(approved)),
        target_schema=TargetSchema(classes=task.target_classes, image_size=task.image_size,
                                   mode="RGB" if task.colour else "L"),
        label_mappings=mappings,
        clean_files=clean,
        removed_files=removed,
        acceptable_algorithms=task.acceptable_algorithms,
    )


#: what a data steward adds to any card, relevant or not, until the description reaches a length drawn
#: from NOTE_TARGET_LENGTH: the catalogue's descriptions of relevant cards run longer than those of
#: distractors, and a card's length must say nothing about its relevance (issue 22). No note names a
#: modality, organ, species, task type, class or number.
STEWARD_NOTES = (
    "Exported from the PACS in one batch; file names were assigned by the export tool.",
    "De-identified before export.",
    "Copied from the research share; not re-checked since.",
    "Some files were added after the first export and have not been reviewed by a second reader.",
    "Used in an internal quality-improvement project.",
    "Contact the imaging data office before sharing outside the hospital.",
    "Storage was migrated last year, so file dates reflect the migration rather than acquisition.",
    "Counts are as of the last export.",
    "The folder was assembled by a research fellow who has since left the department.",
    "Access is logged; please record the purpose of use in the data request form.",
    "Backed up nightly to the hospital archive.",
    "Image quality was not assessed systematically.",
    "Originally collected for a retrospective study approved by the local ethics committee.",
    "Mirrors the version held by the department's research group.",
)
NOTE_TARGET_LENGTH = (220, 620)

_LAYOUT_TEXT = {
    "class_folders": "one sub-folder per class",
    "flat_csv": "all images in images/, labels in {label_file}",
    "flat_json": "all images in images/, labels in {label_file}",
    "nested": "one folder per patient and study, labels in {label_file} (column diagnosis)",
    "flat": "all images in images/, no labels",
    "segmentation": "images in images/ with masks in masks/",
}


def _write_data_cards(workspace: Path, keys: list[DatasetKey], rng: np.random.Generator) -> None:
    """The hospital's data_cards.json, as its data steward wrote it (errata included on purpose)."""
    catalogue = load_catalogue()
    entries = []
    for ds in keys:
        card = catalogue.by_name(ds.card)
        storage = _LAYOUT_TEXT[ds.layout].format(label_file=ds.label_file)
        n_images = sum(1 for f in ds.files if f.kind in ("image", "corrupt"))
        stated_count = n_images
        if "image_count_off" in ds.card_errata:
            stated_count = int(round(n_images * float(rng.choice([0.8, 0.9, 1.15, 1.3]))))
        stated_formats = ds.formats[:1] if "format_incomplete" in ds.card_errata else ds.formats
        description = f"{card.description} Local copy: {storage}."
        target = int(rng.integers(*NOTE_TARGET_LENGTH))  # the steward writes until the card is about this long
        for k in rng.permutation(len(STEWARD_NOTES)):
            if len(description) >= target:
                break
            description += f" {STEWARD_NOTES[int(k)]}"
        if ds.label_style == "numeric":
            legend = ", ".join(f"{local} = {pub}" for local, pub in ds.local_to_published.items())
            description += f" Classes are coded as numbers ({legend}); see classes.txt."
        entry = {
            "dataset name": ds.name,
            "dataset description": description,
            "dataset_path": ds.path,
            "modality": card.modality,
            "species": card.species,
            "body_part": card.body_part,
            "task_type": ", ".join(card.task_types),
            "classes": ds.local_classes,
            "file_format": ", ".join(stated_formats),
            "image_count": stated_count,
        }
        if ds.label_file and "label_file_omitted" not in ds.card_errata:
            entry["label_file"] = ds.label_file
        entries.append(entry)
    (workspace / "data_cards.json").write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n", "utf-8")


def _write_server_task(path: Path, task: TaskSpec, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"task_id": task.task_id, "environment": task.environment,  # the seed draws the request's words
               "request": {"fine": task.request("fine", seed), "goal": task.request("goal", seed)}}
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", "utf-8")


def _heterogeneity(datasets: list[DatasetKey], hospitals: list[HospitalKey]) -> dict[str, int]:
    """How often each heterogeneity kind occurs among the relevant datasets (0: absent)."""
    rel = [d for d in datasets if d.relevant_to]
    counts = dict.fromkeys(HETEROGENEITY_KINDS, 0)
    for d in rel:
        counts[f"layout_{d.layout}"] = counts.get(f"layout_{d.layout}", 0) + 1
        counts["mixed_formats"] += len(d.formats) > 1
        counts["dicom"] += "dicom" in d.formats
        for kind, n in d.injected.items():
            counts[kind] += n
        counts["class_name_variation"] += d.label_style != "as_published"
        counts["card_errata"] += len(d.card_errata)
        sizes = [c for c in d.class_counts.values()]
        counts["label_skew"] += bool(sizes) and max(sizes) >= 1.5 * min(sizes)
    profiles = [h.profile for h in hospitals]
    counts["resolution_shift"] = len({p.size_factor for p in profiles}) - 1
    counts["intensity_shift"] = len({(p.gamma, p.gain) for p in profiles}) - 1
    counts["noise_shift"] = len({p.noise_sigma for p in profiles}) - 1
    return counts


def _versions() -> dict[str, str]:
    out = {}
    for package in ("fedagentbench", "numpy", "pillow", "pydicom", "nibabel", "tifffile", "scipy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "absent"
    return out
