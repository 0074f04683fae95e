"""Fast checks without Flower: data reading, metrics, models, and clear errors for bad input."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from fl.data import check_federation, detect_channels, load_client_data, stratified_split
from fl.metrics import auroc, client_metrics, pooled_metrics
from fl.runner import TrainConfig, resolve, run_training
from fl.testing import make_federation


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    root = tmp_path_factory.mktemp("fed")
    dirs, source = make_federation(root, n_clients=3, per_class=10)
    print(f"federation source: {source}")
    return dirs


def config(dirs, **kw) -> TrainConfig:
    return TrainConfig(clients=[{"data_dir": d} for d in dirs], rounds=1, **kw)


def test_federation_reads_through_monai(fed):
    classes = check_federation(fed)
    assert classes == ["class_0", "class_1"]
    assert detect_channels(fed) == 1
    data = load_client_data(fed[0], classes, 32, 1, val_fraction=0.2, seed=0)
    assert tuple(data.train_x.shape[1:]) == (1, 32, 32)
    assert len(data.train_y) + len(data.val_y) == 20
    assert sorted(set(data.val_y.tolist())) == [0, 1]  # stratified
    assert 0.0 <= float(data.train_x.min()) and float(data.train_x.max()) <= 1.0


def test_rgb_and_grey_mix_becomes_three_channels(tmp_path):
    for client, mode in (("a", "L"), ("b", "RGB")):
        for cls in ("x", "y"):
            (tmp_path / client / cls).mkdir(parents=True)
            for i in range(3):
                Image.new(mode, (40, 40), color=(i * 50) if mode == "L" else (i * 50, 10, 200)).save(
                    tmp_path / client / cls / f"{i}.png"
                )
    dirs = [tmp_path / "a", tmp_path / "b"]
    assert detect_channels(dirs) == 3
    data = load_client_data(dirs[0], ["x", "y"], 28, 3, seed=1)
    assert tuple(data.train_x.shape[1:]) == (3, 28, 28)
    assert resolve(config(dirs))["channels"] == 3
    assert resolve(config(dirs))["image_size"] == 40


def test_stratified_split_keeps_every_class_on_both_sides():
    labels = [0] * 10 + [1] * 3 + [2] * 2
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(train + val) == list(range(15))
    for c in (0, 1, 2):
        assert any(labels[i] == c for i in val) and any(labels[i] == c for i in train)


def test_metrics_pool_exactly_for_accuracy_and_closely_for_auroc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    p = rng.dirichlet([1, 1, 1], 400)
    p[np.arange(400), y] += 0.4
    p /= p.sum(1, keepdims=True)
    whole = client_metrics(y, p, 0.5)
    pooled = pooled_metrics([client_metrics(y[:150], p[:150], 0.5), client_metrics(y[150:], p[150:], 0.5)], 3)
    assert pooled["accuracy"] == pytest.approx(whole["accuracy"])
    assert pooled["balanced_accuracy"] == pytest.approx(whole["balanced_accuracy"])
    assert pooled["auroc"] == pytest.approx(whole["auroc"], abs=0.01)
    assert math.isnan(auroc(np.zeros(5, int), np.full((5, 2), 0.5)))


@pytest.mark.parametrize("size", [28, 64])
def test_models_for_small_images(size):
    import torch

    from fl.models import batchnorm_keys, build_model

    for algorithm in ("FedAvg", "FedSR"):
        model = build_model(algorithm, 3, 4, size, seed=0)
        out = model(torch.zeros(2, 3, size, size))
        assert out.shape == (2, 4)
        assert batchnorm_keys(model)
        assert sum(p.numel() for p in model.parameters()) < 500_000


def test_same_seed_same_initial_model():
    import torch

    from fl.models import build_model

    a, b = build_model("FedAvg", 1, 2, 28, 7), build_model("FedAvg", 1, 2, 28, 7)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---- bad input: clear errors before Flower starts ---------------------------------------------


def test_missing_directory(fed, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_training(config([fed[0], tmp_path / "nope"]))


def test_mismatched_classes(fed, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(fed[1], other)
    (other / "class_1").rename(other / "pneumonia")
    with pytest.raises(ValueError, match="class folders differ"):
        run_training(config([fed[0], other]))


def test_empty_client(fed, tmp_path):
    empty = tmp_path / "empty"
    (empty / "class_0").mkdir(parents=True)
    (empty / "class_1").mkdir()
    with pytest.raises(ValueError, match="empty"):
        run_training(config([fed[0], empty]))
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        run_training(config([fed[0], bare]))


def test_unknown_algorithm(fed):
    with pytest.raises(ValueError, match="unknown algorithm"):
        run_training(config(fed, algorithm="FedMagic"))


def test_an_algorithm_marked_not_executable_is_refused(fed, monkeypatch):
    """Every registry algorithm trains today; a new entry added before its implementation must
    still be refused with the list of executable ones, not fail inside the simulation."""
    import fl.runner
    from fl.registry import get_algorithm

    entry = get_algorithm("pFedHN").model_copy(update={"executable": False})
    monkeypatch.setattr(fl.runner, "get_algorithm", lambda name: entry)
    with pytest.raises(ValueError, match="not executable here; executable: FedAvg"):
        run_training(config(fed, algorithm="pFedHN"))


def test_bad_hyperparameters_and_settings(fed):
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        run_training(config(fed, algorithm="FedProx", hyperparameters={"lambda": 1}))
    with pytest.raises(ValueError, match="must be like"):
        run_training(config(fed, algorithm="Ditto", hyperparameters={"lamda": "strong"}))
    with pytest.raises(ValueError, match="variant"):
        run_training(config(fed, algorithm="FedOpt", hyperparameters={"variant": "sgd"}))
    with pytest.raises(ValueError, match="version of Per-FedAvg must be one of"):
        resolve(config(fed, algorithm="Per-FedAvg", hyperparameters={"version": "so"}))
    with pytest.raises(ValueError, match="n_learners of FedEM must be one of"):
        resolve(config(fed, algorithm="FedEM", hyperparameters={"n_learners": 5}))
    with pytest.raises(ValueError, match="public_dataset of FedMD"):
        resolve(config(fed, algorithm="FedMD", hyperparameters={"public_dataset": "mnist"}))
    with pytest.raises(ValueError, match="capacity <= 500"):
        resolve(config(fed, algorithm="kNN-Per", hyperparameters={"capacity": 5000}))
    assert resolve(config(fed, algorithm="Per-FedAvg", hyperparameters={"version": "hf"}))["hp"]["version"] == "hf"
    assert resolve(config(fed, algorithm="MOON", hyperparameters={"mu": 1}))["hp"]["mu"] == 1
    with pytest.raises(ValueError):
        TrainConfig(clients=[], rounds=1)
    with pytest.raises(ValueError, match="unique"):
        TrainConfig(clients=[{"data_dir": fed[0]}, {"data_dir": fed[0]}], rounds=1)
    with pytest.raises(ValueError):
        TrainConfig(clients=[{"data_dir": fed[0]}], rounds=0)


def test_variant_name_selects_fedopt(fed):
    plan = resolve(config(fed, algorithm="FedYogi", hyperparameters={"server_lr": 0.02}))
    assert plan["algorithm"] == "FedOpt" and plan["hp"]["variant"] == "yogi" and plan["hp"]["server_lr"] == 0.02


def test_cli_train_reports_errors_and_results(fed, tmp_path, monkeypatch, capsys):
    """The CLI wiring (config, progress, tables) with the Flower run replaced by a stub."""
    import fl.runner
    from fedagentbench_cli import main

    assert main(["train", "--client", str(tmp_path / "none"), "--algorithm", "FedAvg", "--rounds", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err

    def fake_run(cfg, progress=None, workers=None):
        record = {"round": 1, "train_loss": 0.6, "wall_time_s": 0.1,
                  "clients": {c.name: {"num_examples": 4, "loss": 0.5, "accuracy": 0.75, "balanced_accuracy": 0.75, "auroc": 0.8} for c in cfg.clients},
                  "global": {"num_examples": 12, "loss": 0.5, "accuracy": 0.75, "balanced_accuracy": 0.75, "auroc": 0.8}}  # fmt: skip
        progress(fl.runner.ProgressEvent(kind="start", algorithm=cfg.algorithm, round=0, rounds=1))
        progress(fl.runner.ProgressEvent(kind="round", algorithm=cfg.algorithm, round=1, rounds=1, record=record))
        return fl.runner.TrainResult(status="completed", algorithm=cfg.algorithm, config={"hp": cfg.hyperparameters},
                                     classes=["class_0", "class_1"], rounds=[record], wall_time_s=1.0,
                                     final={"global": record["global"], "clients": record["clients"]},
                                     result_path=str(tmp_path / "r.json"))  # fmt: skip

    monkeypatch.setattr(fl.runner, "run_training", fake_run)
    args = ["train", "--algorithm", "fedprox", "--rounds", "1", "--hp", "mu=0.1"]
    for d in fed:
        args += ["--client", str(d)]
    assert main(args + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["final"]["global"]["accuracy"] == 0.75
    assert result["config"]["hp"] == {"mu": 0.1}
    assert main(args) == 0
    assert "global (pooled)" in capsys.readouterr().out


def test_train_names_clients_whose_folders_share_a_name():
    from fl.cli import _clients

    named = _clients(["runs/a/harmonised", "runs/b/harmonised", "x=runs/c", "runs/x", "q/a/h", "r/a/h"])
    names = [c["name"] for c in named]
    assert names == ["a-harmonised", "b-harmonised", "x", "runs-x", "a-h", "a-h-2"]
    assert len(set(names)) == len(names)
