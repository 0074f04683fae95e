"""FedAvg, FedProx and FedBN learn: clearly above chance on the real chest X-ray pool in a few rounds."""

from __future__ import annotations

import os

import pytest

from fl.runner import TrainConfig, run_many
from fl.testing import make_federation

ROUNDS = 5


@pytest.fixture(scope="module")
def flower_home(tmp_path_factory):
    saved = os.environ.get("FLWR_HOME")
    os.environ["FLWR_HOME"] = str(tmp_path_factory.mktemp("flwr_home"))
    yield
    if saved is None:
        os.environ.pop("FLWR_HOME", None)
    else:
        os.environ["FLWR_HOME"] = saved


@pytest.mark.slow
def test_fedavg_fedprox_fedbn_beat_chance(tmp_path, flower_home):
    # 4 hospitals x 100 images per class (balanced: chance accuracy is 0.5), disjoint images
    dirs, source = make_federation(tmp_path / "data", n_clients=4, per_class=100)
    print(f"federation source: {source}")
    clients = [{"data_dir": d} for d in dirs]
    configs = [
        TrainConfig(clients=clients, algorithm=name, rounds=ROUNDS, local_epochs=2, out_dir=tmp_path / name)
        for name in ("FedAvg", "FedProx", "FedBN")
    ]
    for result in run_many(configs, workers=1):
        assert result.status == "completed", result.error
        final = result.final.global_
        print(
            f"{result.algorithm} ({source}): {[round(r.global_.accuracy, 3) for r in result.rounds]}, AUROC {final.auroc:.3f}"
        )
        assert final.accuracy >= 0.75, (result.algorithm, final)
        assert final.balanced_accuracy >= 0.75, (result.algorithm, final)
        assert final.auroc >= 0.85, (result.algorithm, final)
        assert all(m.accuracy >= 0.6 for m in result.final.clients.values()), result.final.clients
