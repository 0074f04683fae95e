"""Every executable algorithm: two rounds of Flower simulation on a tiny federation.

All runs share one simulation (``run_many``): Ray start-up and the clients' torch/MONAI imports
cost far more than two rounds of training 4 tiny clients.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fl.registry import get_algorithm
from fl.runner import TrainConfig, TrainResult, load_result

from .conftest import trained_algorithms

ALGORITHMS = trained_algorithms()
METRICS = ("loss", "accuracy", "balanced_accuracy", "auroc")


@pytest.fixture(scope="module")
def results(algorithm_runs):
    """The session's one simulation of every algorithm (tests/conftest.py ``algorithm_runs``)."""
    _CLIENT_DIRS[:] = algorithm_runs["_clients"]
    return {tag: run for tag, run in algorithm_runs.items() if tag != "_clients"}


#: the federation's hospitals (name, data_dir), set by the ``results`` fixture
_CLIENT_DIRS: list[dict] = []


def test_a_failing_client_fails_its_run_only(results):
    broken = results["broken"]
    assert broken.status == "failed" and broken.final is None
    assert "client(s) failed during training" in broken.error and "no_such_class" in broken.error
    assert load_result(broken.result_path).status == "failed"
    assert len(results) == len(ALGORITHMS) + 1  # the runs after it completed too (checked below)


def _finite(metrics) -> bool:
    return all(getattr(metrics, k) is not None and math.isfinite(getattr(metrics, k)) for k in METRICS)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_two_rounds_with_finite_metrics(results, algorithm):
    result = results[algorithm]
    assert result.status == "completed", result.error
    assert [r.round for r in result.rounds] == [1, 2]
    for record in result.rounds:
        assert sorted(record.clients) == [f"hospital_{i}" for i in range(4)]
        assert _finite(record.global_), record.global_
        assert all(_finite(m) for m in record.clients.values()), record.clients
        assert record.global_.num_examples == sum(m.num_examples for m in record.clients.values())
        assert record.wall_time_s > 0
    assert 0.0 <= result.final.global_.accuracy <= 1.0
    saved = load_result(result.result_path)
    assert saved.status == "completed" and len(saved.rounds) == 2
    assert "data_dir" not in Path(result.result_path).read_text()  # where hospitals keep data stays local
    global_model = Path(result.result_path).parent / "global_model.pt"
    assert global_model.exists() == (
        algorithm not in ("Local-Only", "FedProto", "FedMD")
    )  # no global weights: nothing is averaged, prototypes, or FedMD's class scores
    if global_model.exists():  # the algorithm's network (all of it, or the shared part), no server extras
        import torch

        from fl.models import build_model, shareable_keys

        net = build_model(algorithm, result.config["channels"], len(result.classes), result.config["image_size"], 0)
        keys = set(torch.load(global_model, weights_only=True))
        assert keys and keys <= set(shareable_keys(net))
        if get_algorithm(algorithm).category.value != "personalised":  # partial sharing is personalisation
            assert keys == set(shareable_keys(net))
    kept = Path(result.result_path).parent / "clients"
    if get_algorithm(algorithm).category.value != "personalised":
        assert not kept.exists()  # every hospital deploys the global model
        return
    # each hospital kept the model it deploys, and it is the model that gave its reported metrics
    assert sorted(p.stem for p in kept.glob("*.pt")) == sorted(result.final.clients)
    for name, reported in result.final.clients.items():
        assert abs(_balanced_accuracy_of(kept / f"{name}.pt", result, name) - reported.balanced_accuracy) < 1e-6


def _balanced_accuracy_of(model_file: Path, result: TrainResult, client: str) -> float:
    """A saved hospital model on that hospital's own validation split, as the client measured it."""
    import torch

    from fl.data import load_client_data
    from fl.metrics import client_metrics
    from fl.models import build_model

    config = result.config
    data_dir = next(c["data_dir"] for c in _CLIENT_DIRS if c["name"] == client)
    data = load_client_data(data_dir, result.classes, config["image_size"], config["channels"],
                            config["val_fraction"], config["seed"], config["max_images"])
    model = build_model(result.algorithm, config["channels"], len(result.classes), config["image_size"], 0)
    model.load_state_dict(torch.load(model_file, weights_only=True))
    model.eval()
    with torch.no_grad():
        logits = model(data.val_x)
    report = client_metrics(data.val_y.numpy(), torch.softmax(logits, 1).numpy(), 0.0)
    return float(report["balanced_accuracy"])


@pytest.mark.slow  # a local round of every algorithm
def test_payloads_keep_personal_parts_local():
    """What each client sends: FedBN no BatchNorm, FedPer no head, LG-FedAvg only the head, ..."""
    import torch
    from flwr.app import RecordDict

    from fl.algorithms import client_algorithm
    from fl.algorithms.base import RunSpec, StateStore
    from fl.data import LocalData
    from fl.models import batchnorm_keys, build_model, shareable_keys

    data = LocalData(
        torch.rand(8, 1, 28, 28),
        torch.tensor([0, 1] * 4),
        torch.rand(4, 1, 28, 28),
        torch.tensor([0, 1] * 2),
        ["a", "b"],
    )
    model = build_model("FedAvg", 1, 2, 28, 0)
    every, bn = set(shareable_keys(model)), batchnorm_keys(model)
    head = {k for k in every if k.startswith("head.")}
    received = {k: v for k, v in model.state_dict().items() if k in every}

    def sent(name: str) -> set[str]:
        spec = RunSpec(run_tag="t", algorithm=name, classes=["a", "b"], channels=1, image_size=28, batch_size=4)
        algo = client_algorithm(name)(spec, data, StateStore(RecordDict(), "t"), round_seed=0)
        payload, metrics = algo.train(received if name != "FedProto" else {}, {})
        assert math.isfinite(metrics["train_loss"])
        return set(payload)

    assert sent("FedAvg") == every
    assert sent("FedBN") == every - bn
    assert sent("FedPer") == every - head
    assert sent("FedRep") == every - head
    assert sent("FedBABU") == every - head
    assert sent("LG-FedAvg") == head
    assert sent("FedProto") == {"protos", "counts"}
    assert sent("Local-Only") == set()


def test_client_rules_use_their_state_and_hyperparameters():
    """FedProx's mu (sent by Flower's strategy) pulls weights towards the global model; SCAFFOLD,
    FedDyn, MOON, Ditto, APFL and FedRoD keep their per-client state between rounds."""
    import torch
    from flwr.app import RecordDict

    from fl.algorithms import client_algorithm
    from fl.algorithms.base import RunSpec, StateStore
    from fl.algorithms.traditional import C_DELTA, C_GLOBAL
    from fl.data import LocalData
    from fl.models import build_model, shareable_keys

    torch.manual_seed(0)
    data = LocalData(torch.rand(16, 1, 28, 28), torch.tensor([0, 1] * 8), torch.rand(4, 1, 28, 28), torch.tensor([0, 1] * 2), ["a", "b"])  # fmt: skip
    model = build_model("FedAvg", 1, 2, 28, 0)
    received = {k: v for k, v in model.state_dict().items() if k in shareable_keys(model)}

    def client(name: str, state: RecordDict, lr: float = 0.1):
        spec = RunSpec(run_tag="t", algorithm=name, classes=["a", "b"], channels=1, image_size=28, batch_size=4, lr=lr)
        return client_algorithm(name)(spec, data, StateStore(state, "t"), round_seed=1)

    def drift(payload) -> float:  # over trainable parameters (BatchNorm statistics move regardless)
        return sum(float(((torch.as_tensor(payload[n]) - received[n]) ** 2).sum()) for n, _ in model.named_parameters())

    loose = client("FedProx", RecordDict()).train(received, {"proximal-mu": 0.0})[0]
    tight = client("FedProx", RecordDict()).train(received, {"proximal-mu": 5.0})[0]
    assert drift(tight) < 0.5 * drift(loose)

    state = RecordDict()
    c_zero = {C_GLOBAL + n: torch.zeros_like(p) for n, p in model.named_parameters()}
    payload, _ = client("SCAFFOLD", state).train({**received, **c_zero}, {})
    assert any(k.startswith(C_DELTA) for k in payload) and "t/c_i" in state

    for name, keys in (("FedDyn", ["t/grad_l"]), ("MOON", ["t/prev"]), ("Ditto", ["t/personal"]),
                       ("APFL", ["t/personal", "t/scalars"]), ("FedRoD", ["t/p_head"])):  # fmt: skip
        state = RecordDict()
        client(name, state).train(received, {})
        assert all(k in state for k in keys), (name, list(state))
        predict = client(name, state).predictor(received)
        assert predict(data.val_x).shape == (4, 2)
    apfl_state = RecordDict()
    client("APFL", apfl_state).train(received, {})
    assert 0.0 <= StateStore(apfl_state, "t").scalar("alpha", -1.0) <= 1.0


def test_apfl_and_fedrod_deploy_one_network_that_predicts_as_their_two_parts():
    """The model a hospital keeps is one plain network: APFL's mixture alpha*v + (1-alpha)*w with v's
    BatchNorm statistics, FedRoD's generic + personal head summed into one head."""
    import torch
    from flwr.app import RecordDict

    from fl.algorithms import client_algorithm
    from fl.algorithms.base import RunSpec, StateStore, param_dict
    from fl.algorithms.personalised import APFL
    from fl.data import LocalData
    from fl.models import build_model, shareable_keys

    torch.manual_seed(0)
    data = LocalData(torch.rand(16, 1, 28, 28), torch.tensor([0, 1] * 8), torch.rand(6, 1, 28, 28), torch.tensor([0, 1] * 3), ["a", "b"])  # fmt: skip
    spec = RunSpec(run_tag="t", algorithm="APFL", classes=["a", "b"], channels=1, image_size=28, batch_size=4, lr=0.1)
    model = build_model("FedAvg", 1, 2, 28, 0)
    received = {k: v for k, v in model.state_dict().items() if k in shareable_keys(model)}

    state = RecordDict()
    client_algorithm("APFL")(spec, data, StateStore(state, "t"), 1).train(received, {})
    store = StateStore(state, "t")
    deployed = client_algorithm("APFL")(spec, data, store, 2).predictor(received)
    v = build_model("APFL", 1, 2, 28, 0)
    v.load_state_dict(store.load("personal"))
    v.eval()
    w = build_model("APFL", 1, 2, 28, 0)
    w.load_state_dict(received, strict=False)
    alpha = torch.tensor(store.scalar("alpha", -1.0))
    assert 0.0 < float(alpha) < 1.0
    with torch.no_grad():
        torch.testing.assert_close(deployed(data.val_x), APFL._mixed(v, param_dict(w), alpha)(data.val_x))
        assert not torch.allclose(deployed(data.val_x), v(data.val_x))  # the mixture, not v alone

    rod = RunSpec(**{**spec.__dict__, "algorithm": "FedRoD"})
    state = RecordDict()
    client_algorithm("FedRoD")(rod, data, StateStore(state, "t"), 1).train(received, {})
    deployed = client_algorithm("FedRoD")(rod, data, StateStore(state, "t"), 2).predictor(received)
    generic = build_model("FedRoD", 1, 2, 28, 0)
    generic.load_state_dict(received, strict=False)
    generic.eval()
    personal = torch.nn.Linear(generic.head.in_features, 2)
    personal.load_state_dict(StateStore(state, "t").load("p_head"))
    with torch.no_grad():
        features = generic.features(data.val_x)
        torch.testing.assert_close(deployed(data.val_x), generic.head(features) + personal(features))


def test_warm_simulation_matches_a_fresh_one_and_serves_any_clients(results, tmp_path):
    """fl.service: one simulation serves trainings with different algorithms and client subsets,
    each node told its hospital by the round's roster; a run equals the same run in a fresh one."""
    from fl.runner import run_training_warm
    from fl.service import close_shared, shared_simulation

    fresh = results["FedAvg"]
    data = Path(results["FedAvg"].result_path).parents[2] / "data"
    names = [f"hospital_{i}" for i in range(4)]
    specs = [{"name": n, "data_dir": data / f"client_{i}"} for i, n in enumerate(names)]
    try:
        warm = run_training_warm(
            TrainConfig(clients=specs, algorithm="FedAvg", rounds=2, batch_size=16, out_dir=tmp_path / "fedavg")
        )
        simulation = shared_simulation()
        subset = run_training_warm(
            TrainConfig(clients=specs[2:], algorithm="SCAFFOLD", rounds=2, batch_size=16, out_dir=tmp_path / "sc")
        )
        assert shared_simulation() is simulation  # the same simulation served both
    finally:
        close_shared()
    assert warm.status == "completed", warm.error
    for ours, theirs in zip(warm.rounds, fresh.rounds):
        assert sorted(ours.clients) == names
        assert math.isclose(ours.global_.loss, theirs.global_.loss, rel_tol=1e-4), (ours.global_, theirs.global_)
        for name in names:
            assert ours.clients[name].num_examples == theirs.clients[name].num_examples
    assert subset.status == "completed", subset.error
    assert sorted(subset.rounds[-1].clients) == names[2:]
    assert subset.config["clients"] == [{"name": "hospital_2"}, {"name": "hospital_3"}]  # no folders recorded
