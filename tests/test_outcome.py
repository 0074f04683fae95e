"""Outcome scoring: the held-out test set no hospital holds, and the trained model measured on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from environments.heldout import HELDOUT_FILE, target_of_pool_class, task_test_set
from environments.pools import REAL_POOL_FILES, ImagePool, _read_npz
from environments.tasks import tasks_for
from eval.outcome import evaluate_training, with_ratio

REPO = Path(__file__).resolve().parents[1]


def test_held_out_images_come_from_the_official_test_split_and_never_reach_a_hospital(data_dir) -> None:
    if data_dir is None:
        pytest.skip("needs the real pools (../shared/datasets)")
    pool = ImagePool("xray", seed=3, data_dir=data_dir)
    images, labels, splits = _read_npz(data_dir / REAL_POOL_FILES["xray"][0])
    hospitals = pool.take(0, 300)  # the hospitals draw first
    left = pool.available(0)
    held = pool.take_heldout(0, 40)  # then the server's test set, from what they left
    assert pool.available(0) == left - 40
    test_rows = {images[i].tobytes() for i in np.flatnonzero((splits == "test") & (labels == 0))}
    assert all(img.tobytes() in test_rows for img in held)  # the official test split first
    held_bytes = {img.tobytes() for img in held}
    rest = pool.take(0, pool.available(0))
    assert not any(img.tobytes() in held_bytes for img in [*hospitals, *rest])


def test_every_environment_keeps_a_held_out_set_in_its_answer_key(tiny_envs: Path) -> None:
    for env_dir in sorted(p for p in tiny_envs.iterdir() if (p / "environment.json").is_file()):
        assert (env_dir / "answer_key" / HELDOUT_FILE).is_file()
        assert not any(p.name == HELDOUT_FILE for p in (env_dir / "clients").rglob("*"))
        for task in tasks_for(env_dir.name):
            images, y, classes = task_test_set(env_dir, task)
            assert classes == task.target_classes and len(images) == len(y) > 0
            assert set(y.tolist()) == set(range(len(classes)))  # every target class is tested
            assert set(target_of_pool_class(task).values()) == set(classes)


def _training_dir(tmp_path: Path, classes: list[str], always: int, algorithm: str = "FedAvg") -> Path:
    """A finished training whose saved global model always answers class index ``always``."""
    import torch

    from fl.models import build_model

    model = build_model(algorithm, 1, len(classes), 28, 0)
    state = model.state_dict()
    last_w = [k for k in state if k.endswith("weight")][-1]
    last_b = last_w.replace("weight", "bias")
    state[last_w] = torch.zeros_like(state[last_w])
    state[last_b] = torch.full_like(state[last_b], -10.0)
    state[last_b][always] = 10.0
    folder = tmp_path / f"training-{algorithm}-{always}-{'-'.join(classes)}"
    (folder / "flower").mkdir(parents=True)
    torch.save(state, folder / "flower" / "global_model.pt")
    result = {"status": "completed", "algorithm": algorithm, "classes": classes,
              "config": {"channels": 1, "image_size": 28, "seed": 0, "classes": classes}}
    (folder / "result.json").write_text(json.dumps(result))
    return folder


def test_outcome_scores_the_saved_model_by_class_name(tiny_envs: Path, tmp_path: Path) -> None:
    env = tiny_envs / "xray"
    task = tasks_for("xray")[0]
    _, y, targets = task_test_set(env, task)
    first, second = targets
    # a constant model: balanced accuracy exactly chance, accuracy the share of its class
    out = evaluate_training(env, task.task_id, _training_dir(tmp_path, [second, first], always=0))
    assert out.balanced_accuracy == 0.5 and out.chance == 0.5 and out.test_images == len(y)
    assert out.accuracy == pytest.approx(float(np.mean(y == 1)), abs=1e-4)  # index 0 of the model = targets[1]
    assert out.missing_classes == [] and out.model == "global"
    # a model whose classes are not the task's (the agents named a folder wrongly) cannot be right on them
    wrong = evaluate_training(env, task.task_id, _training_dir(tmp_path, [first, "other"], always=1))
    assert wrong.missing_classes == [second] and wrong.extra_classes == ["other"]
    assert wrong.balanced_accuracy == 0.0 and wrong.auroc is None
    assert out.comparable and with_ratio(out.model_dump(), out)["ratio"] == 1.0
    # a personalised algorithm whose hospitals' models were not kept: its global model is reported only
    personal = _training_dir(tmp_path, [first, second], 0, "FedBN")
    alone = evaluate_training(env, task.task_id, personal)
    assert alone.balanced_accuracy == 0.5 and not alone.comparable and "not compared" in alone.note
    assert with_ratio(alone.model_dump(), out)["ratio"] is None
    # with the hospitals' own models: each is scored on the same held-out set and the mean compared
    import shutil

    import torch

    from fl.models import build_model

    informative = build_model("FedAvg", 1, 2, 28, 1)  # untrained, but its answers vary with the image
    plain = _training_dir(tmp_path, [first, second], 0)
    torch.save(informative.state_dict(), plain / "flower" / "global_model.pt")
    alone_ba = evaluate_training(env, task.task_id, plain).balanced_accuracy
    assert alone_ba != 0.5  # so the mean below tells the two hospitals apart
    kept = personal / "flower" / "clients"
    kept.mkdir()
    shutil.copyfile(plain / "flower" / "global_model.pt", kept / "hospital_a.pt")
    shutil.copyfile(personal / "flower" / "global_model.pt", kept / "hospital_b.pt")  # always class 0
    mean = evaluate_training(env, task.task_id, personal)
    assert mean.model == "hospitals" and mean.comparable
    assert mean.hospitals == {"hospital_a": alone_ba, "hospital_b": 0.5}
    assert mean.balanced_accuracy == pytest.approx((alone_ba + 0.5) / 2, abs=1e-4)
    assert with_ratio(mean.model_dump(), out)["ratio"] == pytest.approx(mean.balanced_accuracy / 0.5, abs=1e-3)
    # a non-personalised algorithm's stray client files are not what it deploys: its global model is scored
    shutil.copytree(kept, plain / "flower" / "clients")
    assert evaluate_training(env, task.task_id, plain).model == "global"
    # no model at all: nothing to score, said why, and never a ratio
    none = _training_dir(tmp_path, [first, second], always=1)
    (none / "flower" / "global_model.pt").unlink()
    gone = evaluate_training(env, task.task_id, none)
    assert gone.balanced_accuracy is None and not gone.comparable and "no model" in gone.note
    assert with_ratio(gone.model_dump(), out)["ratio"] is None


def test_bench_results_carry_the_outcome_and_the_oracle_is_its_own_reference(tiny_envs: Path, tmp_path: Path) -> None:
    """Oracle and heuristic benches on one environment copy, as a user runs them (CLI subprocess)."""
    import shutil

    task = tasks_for("xray")[0].task_id
    for model in ("oracle", "heuristic"):
        out = tmp_path / model
        target = out / "envs" / "tiny-seed0" / "xray"
        shutil.copytree(tiny_envs / "xray", target, ignore=shutil.ignore_patterns("work", "reference"))
        proc = subprocess.run([sys.executable, "-m", "fedagentbench_cli", "bench", "--model", model, "--env", "xray",
                               "--task", task, "--guidance", "fine", "--out", str(out)],
                              cwd=REPO, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "outcome ÷ oracle" in proc.stdout
        line = json.loads((out / "results.jsonl").read_text().splitlines()[0])
        outcome = line["outcome"]
        assert outcome["test_images"] > 0 and 0 <= outcome["balanced_accuracy"] <= 1
        assert outcome["reference_balanced_accuracy"] is not None
        references = list((target / "answer_key" / "reference").glob(f"{task}.*.json"))
        assert len(references) == 1
        if model == "oracle":
            assert outcome["ratio"] == 1.0
        else:  # the reference came from an oracle run in the answer key's folder, not from the agents' runs
            assert (target / "answer_key" / "reference" / "checkpoints.sqlite").is_file()
            ref = json.loads(references[0].read_text())
            assert outcome["ratio"] == pytest.approx(outcome["balanced_accuracy"] / ref["balanced_accuracy"], abs=1e-3)


def test_per_phase_runs_are_not_credited_with_the_keys_outcome(tmp_path: Path) -> None:
    """In per-phase mode S4 trains the key's harmonised data with the key's algorithm: whatever that
    model learns is the key's doing, so it is reported but never compared with the oracle's."""
    from eval.bench import _with_reference
    from graphs.state import RunConfig

    config = RunConfig(env_dir=str(tmp_path), task_id="t", model="heuristic", mode="phase")
    out = _with_reference(config, {"balanced_accuracy": 0.9, "comparable": True, "note": ""})
    assert out["ratio"] is None and out["comparable"] is False and "answer key" in out["note"]
