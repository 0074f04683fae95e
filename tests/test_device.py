"""Device, precision and network settings: where training runs is chosen, checked early and recorded;
DenseNet-121 builds at GPU sizes and trains a tiny federation on the CPU; the device check script
runs its CPU half. CUDA itself is exercised by ``python -m scripts.device_check`` on a GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from fl.runner import TrainConfig, resolve, run_many
from fl.testing import make_federation

from .conftest import REPO


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    dirs, _ = make_federation(tmp_path_factory.mktemp("device_fed"), n_clients=2, per_class=8)
    return [{"name": f"hospital_{i}", "data_dir": d} for i, d in enumerate(dirs)]


@pytest.fixture(scope="module")
def runs(fed, tmp_path_factory, flower_env):
    """Two tiny trainings in one simulation: FedAvg on the CPU (default net), FedAvg with DenseNet-121
    at 32 px on "auto" (the CPU here)."""
    out = tmp_path_factory.mktemp("device_runs")
    configs = [
        TrainConfig(clients=fed, algorithm="FedAvg", rounds=1, batch_size=8, device="cpu", out_dir=out / "cpu"),
        TrainConfig(clients=fed, algorithm="FedAvg", rounds=1, batch_size=8, network="densenet121", image_size=32,
                    out_dir=out / "dense"),
    ]  # fmt: skip
    return run_many(configs, workers=1)


def test_cpu_training_records_its_device(runs):
    cpu = runs[0]
    assert cpu.status == "completed", cpu.error
    assert cpu.device == "cpu" and cpu.config["device"] == "cpu"
    assert cpu.client_devices == {"hospital_0": "cpu", "hospital_1": "cpu"}
    assert set(cpu.client_precision.values()) == {"float32"}  # mixed precision is never on for the CPU
    saved = json.loads(open(cpu.result_path).read())
    assert saved["device"] == "cpu" and saved["client_devices"]["hospital_1"] == "cpu"


@pytest.mark.skipif(_cuda(), reason="this machine has CUDA")
def test_densenet121_trains_a_tiny_federation_on_the_cpu(runs):
    import torch

    from fl.models import build_model

    dense = runs[1]
    assert dense.status == "completed", dense.error
    assert dense.config["network"] == "densenet121" and dense.config["image_size"] == 32
    assert dense.config["device"] == "auto" and dense.device == "cpu"  # "auto" without a GPU
    weights = torch.load(dense.result_path.replace("result.json", "global_model.pt"), weights_only=True)
    model = build_model("FedAvg", 1, 2, 32, 0, network="densenet121")
    assert set(weights) <= set(model.state_dict())
    model.load_state_dict(weights, strict=False)  # the saved global model is a DenseNet-121


@pytest.mark.skipif(_cuda(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(fed):
    from fl.devices import resolve_device

    for device in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=r"cuda(:1)? requested but torch.cuda.is_available\(\) is False"):
            resolve(TrainConfig(clients=fed, algorithm="FedAvg", device=device))
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve(TrainConfig(clients=fed, algorithm="FedAvg", device="auto", mixed_precision=True))


def test_settings_are_checked_before_training(fed):
    for bad in ({"device": "gpu"}, {"device": "cuda:x"}, {"network": "resnet50"}):
        with pytest.raises(ValidationError, match="device|network"):
            TrainConfig(clients=fed, **bad)
    with pytest.raises(ValueError, match="needs image_size >= 32"):
        resolve(TrainConfig(clients=fed, network="densenet121", image_size=28))
    plan = resolve(TrainConfig(clients=fed, network="densenet121"))  # no size given: DenseNet's default
    assert plan["image_size"] == 64 and plan["network"] == "densenet121"
    assert resolve(TrainConfig(clients=fed, image_size=224))["image_size"] == 224  # a given size is kept
    assert resolve(TrainConfig(clients=fed))["image_size"] == 28  # the derived default is unchanged


def test_densenet121_at_224_px_gives_the_class_count():
    import torch
    from monai.networks.nets import DenseNet121

    from fl.models import build_model

    model = build_model("FedAvg", 3, 5, 224, 0, network="densenet121").eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert model(x).shape == (1, 5)
        assert model.features(x).shape == (1, model.feature_dim) == (1, 1024)
        torch.manual_seed(0)
        reference = DenseNet121(spatial_dims=2, in_channels=3, out_channels=5).eval()
        assert torch.allclose(reference(x), model(x), atol=1e-5)  # the same network, cut into body and head
    for name in ("FedSR", "FedEM", "kNN-Per"):  # the algorithms with networks of their own build it too
        assert build_model(name, 1, 3, 32, 0, network="densenet121")(torch.rand(2, 1, 32, 32)).shape == (2, 3)


def test_mixed_precision_defaults_off_on_the_cpu():
    import contextlib

    import torch
    from flwr.app import RecordDict

    from fl.algorithms import client_algorithm
    from fl.algorithms.base import RunSpec, StateStore
    from fl.data import LocalData
    from fl.devices import autocast_dtype

    assert autocast_dtype(None, "cpu") is None and autocast_dtype(True, "cpu") is None
    assert (
        TrainConfig(clients=[{"data_dir": "x"}]).mixed_precision is None
        and RunSpec("t", "FedAvg", [], 1, 28).device == "cpu"
    )
    data = LocalData(torch.rand(4, 1, 28, 28), torch.tensor([0, 1] * 2), torch.rand(2, 1, 28, 28), torch.tensor([0, 1]),
                     ["a", "b"])  # fmt: skip
    spec = RunSpec(run_tag="t", algorithm="FedAvg", classes=["a", "b"], channels=1, image_size=28, device="auto")
    algo = client_algorithm("FedAvg")(spec, data, StateStore(RecordDict(), "t"), round_seed=0)
    if not torch.cuda.is_available():
        assert algo.device == torch.device("cpu") and algo.amp_dtype is None
        assert isinstance(algo.autocast(), contextlib.nullcontext)


def test_batches_on_an_accelerator_come_in_the_cpu_order():
    import torch

    from fl.data import LocalData, _IndexedBatches, train_loader

    data = LocalData(torch.rand(23, 1, 4, 4), torch.arange(23) % 3, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]),
                     ["a", "b", "c"])  # fmt: skip
    for seed in (0, 7):
        cpu = list(train_loader(data, 5, seed))
        indexed = list(_IndexedBatches(data, 5, torch.Generator().manual_seed(seed)))
        assert len(cpu) == len(indexed) == 5
        for (x1, y1), (x2, y2) in zip(cpu, indexed):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def _yaml(tmp_path, extra: str) -> str:
    path = tmp_path / "federation.yaml"
    path.write_text("request: Train a pneumonia classifier.\nclasses: [normal, pneumonia]\n" + extra
                    + "sites:\n  - name: a\n    path: a\n", "utf-8")  # fmt: skip
    return path


def test_federation_yaml_takes_network_and_device(tmp_path):
    from federation.spec import FederationError, load_spec

    spec = load_spec(_yaml(tmp_path, "network: densenet121\ndevice: cpu\nimage_size: 224\n"))
    assert (spec.network, spec.device, spec.image_size) == ("densenet121", "cpu", 224)
    assert (load_spec(_yaml(tmp_path, "")).network, load_spec(_yaml(tmp_path, "")).device) == ("default", "auto")
    for extra, where in (("network: resnet50\n", "network"), ("device: gpu\n", "device"),
                         ("network: densenet121\nimage_size: 16\n", "image_size >= 32")):  # fmt: skip
        with pytest.raises(FederationError, match=where):
            load_spec(_yaml(tmp_path, extra))


def test_the_training_tool_carries_the_settings_into_its_config_and_cache_key(fed, tmp_path, monkeypatch):
    import tools.training
    from graphs.state import RunConfig

    assert (RunConfig(env_dir="e", task_id="t").device, RunConfig(env_dir="e", task_id="t").train_image_size) == (
        "auto",
        None,
    )
    seen = []
    monkeypatch.setattr(tools.training, "_train", lambda config, key: seen.append((config, key)) or {"status": "x"})
    dirs = {c["name"]: c["data_dir"] for c in fed}
    for i, settings in enumerate(({}, {"network": "densenet121", "image_size": 64}, {"device": "cpu"})):
        launch = tools.training.build_training_tools(tmp_path / str(i), dirs, **settings)[0]
        assert launch.invoke({"algorithm": "FedAvg"}).startswith("training finished")
    (default, _), (dense, dense_key), (cpu, _) = seen
    assert (dense.network, dense.image_size, default.device, cpu.device) == ("densenet121", 64, "auto", "cpu")
    assert len({key for _, key in seen}) == 2 and seen[0][1] != dense_key  # "auto" is the CPU here: same key


def test_cli_train_passes_the_device_settings(fed, monkeypatch, capsys):
    import fl.runner
    from fedagentbench_cli import main

    seen = []

    def fake_run(cfg, progress=None, workers=None):
        seen.append(cfg)
        return fl.runner.TrainResult(status="completed", algorithm="FedAvg", config={}, classes=[], rounds=[],
                                     final=None, wall_time_s=0.0, result_path="r.json", device="cpu")  # fmt: skip

    monkeypatch.setattr(fl.runner, "run_training", fake_run)
    args = ["train", "--algorithm", "FedAvg", "--rounds", "1", "--client", str(fed[0]["data_dir"]),
            "--client", str(fed[1]["data_dir"]), "--device", "cpu", "--network", "densenet121", "--image-size", "48",
            "--no-mixed-precision"]  # fmt: skip
    assert main(args) == 0
    config = seen[0]
    assert (config.device, config.network, config.image_size, config.mixed_precision) == (
        "cpu",
        "densenet121",
        48,
        False,
    )
    assert "on cpu" in capsys.readouterr().out


def test_device_check_script_runs_its_cpu_half(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "-m", "scripts.device_check", "--clients", "2", "--per-class", "6",
                           "--rounds", "1", "--batch-size", "8", "--workers", "1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    run = report["runs"]["FedAvg"]
    assert run["cpu"]["status"] == "completed" and run["cpu"]["device"] == "cpu"
    assert all(run["cpu"][m] is not None for m in ("accuracy", "balanced_accuracy", "loss"))
    if _cuda():
        assert run["cuda"]["device"].startswith("cuda") and run["differences"] is not None
    else:
        assert run["cuda"] is None and report["gpu_skipped"] and "GPU half skipped" in proc.stdout
        required = subprocess.run([sys.executable, "-m", "scripts.device_check", "--require-gpu", "--out",
                                   str(tmp_path / "no.json")], cwd=REPO, capture_output=True, text=True,
                                  timeout=120, check=False)  # fmt: skip
        assert required.returncode == 1 and "--require-gpu" in required.stderr
