"""Outcome scoring: what the federation learned, measured on the server's held-out test set.

After S4, the trained global model (``global_model.pt`` beside the training's ``result.json``) is
evaluated on the task's held-out images (``environments.heldout``; no agent or tool can read them).
Test images go through the harmonisation schema of the task (the key's target size and mode, as
``convert_images`` writes them) and then through the very MONAI transform the clients trained
with, so a model sees test images exactly as it saw its training images.

The model's classes are the class folders the agents built. A test image whose target class the
model does not have can only be misclassified; AUROC is reported only when the model's classes
are exactly the task's target classes. Personalised algorithms keep part of each model at the
hospitals, so their *global* model is not what they deploy (measured on X-ray, FedBN's global model
sits at chance while its hospitals' own models match FedAvg's; scripts/outcome_matters.py). After
their last round each hospital saves the model it would deploy (``fl.client``); the outcome is the
mean over those models on the same held-out set, compared with the oracle like any other.

The reference is the oracle's pipeline on the same environment, seed, rounds and epochs (one oracle
run, kept under ``answer_key/reference/``); ``ratio`` = balanced accuracy ÷ the oracle's.
"""

from __future__ import annotations

import functools
import json
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fl import CLIENT_MODELS_DIR

REFERENCE_DIR = "reference"
_reference_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class Outcome(BaseModel):
    """The trained model on the held-out test set; ``None`` metrics when there was nothing to score."""

    balanced_accuracy: float | None = None
    auroc: float | None = None
    accuracy: float | None = None
    #: balanced accuracy of always answering one class: 1 / number of target classes
    chance: float | None = None
    test_images: int = 0
    algorithm: str | None = None
    #: "global" (the server's model), "hospitals" (a personalised algorithm: the mean over each
    #: hospital's own model) or "none"
    model: str = "none"
    #: balanced accuracy of each hospital's own model (personalised algorithms)
    hospitals: dict[str, float | None] = {}
    #: target classes the trained model cannot output (its classes came from the agents' folders)
    missing_classes: list[str] = []
    extra_classes: list[str] = []
    #: False when there is no model to compare (or only a personalised algorithm's global model, which
    #: lacks the parts each hospital keeps: FedBN's BatchNorm statistics, FedPer's head, ...)
    comparable: bool = True
    reference_balanced_accuracy: float | None = None
    ratio: float | None = None
    note: str = ""


def evaluate_training(env_dir: Path, task_id: str, training_dir: Path) -> Outcome:
    """The outcome of the training whose ``result.json`` and ``global_model.pt`` are in ``training_dir``."""
    from environments.answer_key import load_task_key
    from environments.heldout import task_test_set
    from environments.tasks import tasks_for

    env_dir = Path(env_dir)
    result_file = Path(training_dir) / "result.json"
    if not result_file.is_file():
        return Outcome(note="no training result")
    result = json.loads(result_file.read_text("utf-8"))
    algorithm = result.get("algorithm")
    if result.get("status") != "completed":
        return Outcome(algorithm=algorithm, note=f"training {result.get('status')}")
    from fl.registry import get_algorithm

    flower = Path(training_dir) / "flower"
    personalised = get_algorithm(algorithm).category.value == "personalised"
    hospital_models = sorted((flower / CLIENT_MODELS_DIR).glob("*.pt")) if personalised else []
    model_file = flower / "global_model.pt"
    if not hospital_models and not model_file.is_file():
        return Outcome(algorithm=algorithm, comparable=False, note=f"{algorithm} left no model to evaluate")
    key = load_task_key(env_dir, task_id)
    task = next(t for t in tasks_for(key.environment) if t.task_id == task_id)
    schema = key.target_schema
    _, y, targets = task_test_set(env_dir, task)
    config = result.get("config") or {}
    classes = list(result.get("classes") or config.get("classes") or [])
    channels, image_size = int(config["channels"]), int(config["image_size"])
    x = _test_tensors(str(env_dir), task_id, schema.image_size, schema.mode, image_size, channels,
                      (env_dir / "answer_key" / "heldout.npz").stat().st_mtime_ns)

    def measure(file: Path) -> Outcome:
        probs = _predict(file, algorithm, classes, channels, image_size, int(config.get("seed", 0)), x,
                         network=config.get("network", "default"))
        return _metrics(y, probs, targets, classes, algorithm)

    if hospital_models:
        return _mean_of_hospitals({f.stem: measure(f) for f in hospital_models})
    outcome = measure(model_file)
    if personalised:  # a personalised training that left no hospital models (a run from before they were kept)
        return outcome.model_copy(update={"comparable": False, "note": (
            "global model only, not compared: the hospitals keep their personal parts and their own "
            "models were not saved")})
    return outcome


def _mean_of_hospitals(outcomes: dict[str, Outcome]) -> Outcome:
    """A personalised algorithm's outcome: each hospital's own model on the same held-out set, averaged
    (the model each hospital would deploy; the server's global model lacks their personal parts)."""
    import numpy as np

    def mean(values: list[float | None]) -> float | None:
        return round(float(np.mean(values)), 4) if values and all(v is not None for v in values) else None

    first = next(iter(outcomes.values()))
    return first.model_copy(update={
        "balanced_accuracy": mean([o.balanced_accuracy for o in outcomes.values()]),
        "auroc": mean([o.auroc for o in outcomes.values()]),
        "accuracy": mean([o.accuracy for o in outcomes.values()]),
        "model": "hospitals", "comparable": True,
        "hospitals": {name: o.balanced_accuracy for name, o in sorted(outcomes.items())},
        "note": f"mean of the {len(outcomes)} hospitals' own models",
    })


@functools.lru_cache(maxsize=8)
def _test_tensors(env_dir: str, task_id: str, schema_size: int, schema_mode: str, image_size: int, channels: int,
                  _version: int):
    """The task's held-out images as the clients' transform gives them: converted once per process
    and setting (every run of a task is scored on the same tensors; ``_version`` is the file's mtime)."""
    import logging

    import torch

    from environments.answer_key import load_task_key
    from environments.heldout import task_test_set
    from environments.tasks import tasks_for

    # MONAI announces on import that a GPU DICOM codec is absent; nothing here decodes DICOM
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    from monai.data import MetaTensor

    from fl.data import monai_transform
    from tools.images import to_schema

    key = load_task_key(Path(env_dir), task_id)
    task = next(t for t in tasks_for(key.environment) if t.task_id == task_id)
    images, _, _ = task_test_set(Path(env_dir), task)
    tensors = []
    with tempfile.TemporaryDirectory(prefix="fedagentbench-heldout-") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nvImageCodec")  # no GPU codec here, and no DICOM
        transform = monai_transform(image_size, channels)
        for i, img in enumerate(images):  # as the hospitals' converted PNGs, then the clients' transform
            path = Path(tmp) / f"{i}.png"
            to_schema(img, schema_size, schema_mode).save(path, format="PNG", compress_level=1)
            t = transform(str(path))
            tensors.append(t.as_tensor() if isinstance(t, MetaTensor) else torch.as_tensor(t))
    return torch.stack(tensors).float()


def _predict(model_file: Path, algorithm: str, classes: list[str], channels: int, image_size: int, seed: int, x,
             network: str = "default"):  # fmt: skip
    """Class probabilities of the saved global model (of the training's ``network``) for every
    held-out image (tensors ``x``); on the GPU where there is one."""
    import numpy as np
    import torch

    from fl.devices import resolve_device
    from fl.models import build_model
    from fl.registry import get_algorithm

    torch.set_num_threads(1)
    device = resolve_device("auto")
    model = build_model(get_algorithm(algorithm).name, channels, len(classes), image_size, seed, network=network)
    model.load_state_dict(torch.load(model_file, map_location="cpu", weights_only=True), strict=False)
    model.to(device).eval()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(x[i:i + 256].to(device)).float(), dim=1).cpu()
                           for i in range(0, len(x), 256)])  # fmt: skip
    return np.asarray(probs.numpy(), dtype=np.float64)


def _metrics(y, probs, targets: list[str], classes: list[str], algorithm: str) -> Outcome:
    import numpy as np

    from fl.metrics import auroc

    index = {c: i for i, c in enumerate(targets)}
    predicted = np.array([index.get(classes[i], -1) for i in probs.argmax(axis=1)])  # -1: a class the task has not
    recalls = [float(np.mean(predicted[y == k] == k)) for k in range(len(targets)) if np.any(y == k)]
    same = sorted(classes) == sorted(targets)
    roc = None
    if same:
        ordered = probs[:, [classes.index(t) for t in targets]]
        value = auroc(y, ordered)
        roc = round(value, 4) if np.isfinite(value) else None
    return Outcome(
        balanced_accuracy=round(float(np.mean(recalls)), 4) if recalls else None, auroc=roc,
        accuracy=round(float(np.mean(predicted == y)), 4) if len(y) else None, chance=round(1 / len(targets), 4),
        test_images=int(len(y)), algorithm=algorithm, model="global",
        missing_classes=sorted(set(targets) - set(classes)), extra_classes=sorted(set(classes) - set(targets)),
    )


def _reference_file(env_dir: Path, task_id: str, rounds: int, local_epochs: int, seed: int) -> Path:
    from eval.scoring import GRADER_VERSION

    folder = Path(env_dir).resolve() / "answer_key" / REFERENCE_DIR
    # the grader version too: a reference measured under other outcome rules is measured again
    return folder / f"{task_id}.r{rounds}.e{local_epochs}.s{seed}.g{GRADER_VERSION}.json"


def _lock(path: Path) -> threading.Lock:
    with _locks_guard:
        return _reference_locks.setdefault(str(path), threading.Lock())


def store_reference(env_dir: Path, task_id: str, rounds: int, local_epochs: int, seed: int,
                    outcome: Outcome) -> Outcome:
    """Keep an oracle e2e run's outcome as the reference (the first one kept stays)."""
    path = _reference_file(env_dir, task_id, rounds, local_epochs, seed)
    with _lock(path):
        if path.is_file():
            return Outcome.model_validate_json(path.read_text("utf-8"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_text(outcome.model_dump_json(indent=1), "utf-8")
        tmp.replace(path)
        return outcome


def reference_outcome(env_dir: Path, task_id: str, rounds: int, local_epochs: int = 1, seed: int = 0) -> Outcome:
    """The oracle pipeline's outcome on this environment and task: one oracle run (in a folder of
    the answer key, so no agent sees it), kept and read back afterwards."""
    from eval.runs import run_task
    from graphs.state import RunConfig

    path = _reference_file(env_dir, task_id, rounds, local_epochs, seed)
    with _lock(path):
        if path.is_file():
            return Outcome.model_validate_json(path.read_text("utf-8"))
        config = RunConfig(env_dir=str(Path(env_dir).resolve()), task_id=task_id, guidance="fine", model="oracle",
                           mode="e2e", run_id="reference", rounds=rounds, local_epochs=local_epochs, seed=seed)
        state = run_task(config, path.parent / "checkpoints.sqlite", f"reference-{path.stem}")
        outcome = Outcome.model_validate((state.get("scores") or {}).get("outcome") or {})
    return store_reference(env_dir, task_id, rounds, local_epochs, seed, outcome)


def with_ratio(outcome: dict[str, Any] | None, reference: Outcome) -> dict[str, Any] | None:
    """``outcome`` with the oracle's balanced accuracy and the ratio to it."""
    if outcome is None:
        return None
    if outcome.get("comparable") is False:
        return {**outcome, "reference_balanced_accuracy": reference.balanced_accuracy, "ratio": None}
    ref = reference.balanced_accuracy
    mine = outcome.get("balanced_accuracy")
    ratio = round(mine / ref, 4) if mine is not None and ref else (0.0 if ref else None)
    return {**outcome, "reference_balanced_accuracy": ref, "ratio": ratio}
