"""pFedHN, pFedLA and CFL: the strategies fed with constructed client replies, then a short Flower
simulation of all three on a federation where two hospitals have their labels swapped."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fl.models import build_model, shareable_keys
from fl.telemetry import QUIET_ENV

NODES = [11, 12, 13, 14]


@pytest.fixture
def server_identity(monkeypatch):
    """Flower builds a strategy's messages with the running ServerApp's identity."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


class _Grid:
    def __init__(self, nodes: list[int]):
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _strategy(algorithm: str, rounds: int = 2, n_clients: int = 4, **hp):
    from fl.registry import get_algorithm
    from fl.strategies import build_strategy, initial_arrays

    model = build_model(algorithm, 1, 2, 28, 0)
    params = {n for n, _ in model.named_parameters()}
    plan = {"rounds": rounds, "clients": [{"name": str(i)} for i in range(n_clients)]}
    strategy = build_strategy(algorithm, {**get_algorithm(algorithm).hyperparameters, **hp}, n_clients, 1.0, 0.01,
                              params, set(shareable_keys(model)) - params, plan=plan, model=model)  # fmt: skip
    return strategy, initial_arrays(algorithm, model, 2), params


def _send(strategy, server_round: int, arrays, nodes: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """What each node receives in a training round."""
    from flwr.app import ConfigRecord

    messages = strategy.configure_train(server_round, arrays, ConfigRecord({}), _Grid(nodes))
    return {m.metadata.dst_node_id: {k: v.numpy() for k, v in m.content["arrays"].items()} for m in messages}


def _evaluate(strategy, server_round: int, arrays, nodes: list[int]) -> dict[int, dict[str, np.ndarray]]:
    from flwr.app import ConfigRecord

    messages = strategy.configure_evaluate(server_round, arrays, ConfigRecord({}), _Grid(nodes))
    return {m.metadata.dst_node_id: {k: v.numpy() for k, v in m.content["arrays"].items()} for m in messages}


def _aggregate(strategy, server_round: int, trained: dict[int, dict[str, np.ndarray]], examples: int = 10):
    """Replies as Flower delivers them: from each node, its arrays and number of examples."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.app.metadata import Metadata

    replies = []
    for node, arrays in trained.items():
        content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in arrays.items()}),
                              "metrics": MetricRecord({"num-examples": examples, "train_loss": 0.0})})  # fmt: skip
        meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                        group_id=str(server_round), created_at=0.0, ttl=60.0, message_type="train")  # fmt: skip
        replies.append(Message(content, metadata=meta))
    return strategy.aggregate_train(server_round, replies)[0]


def _moved(arrays: dict[str, np.ndarray], keys, direction: dict[str, np.ndarray], scale: float):
    return {k: v + scale * direction[k] if k in keys else v for k, v in arrays.items()}


def _direction(arrays: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in arrays.items()}


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray], keys) -> float:
    return float(sum(((a[k] - b[k]) ** 2).sum() for k in keys))


def test_pfedhn_sends_each_node_its_generated_model_and_moves_the_hypernetwork_to_the_trained_ones(server_identity):
    torch.manual_seed(0)
    strategy, arrays, params = _strategy("pFedHN", n_clients=2)
    sent = _send(strategy, 1, arrays, NODES[:2])
    for node, received in sent.items():
        assert set(received) == params  # trainable parameters only: BatchNorm statistics stay local
        with torch.no_grad():
            own = strategy.hn(strategy.hn.embeddings[strategy.row(node)])
        np.testing.assert_array_equal(np.concatenate([received[k].ravel() for k in strategy.layout.keys]), own.numpy())
    a, b = (sent[n] for n in NODES[:2])
    assert _distance(a, b, params) > 0  # two clients, two models

    trained = {node: _moved(w, params, _direction(w, node), 0.01) for node, w in sent.items()}
    before = {node: _distance(sent[node], trained[node], params) for node in sent}
    global_arrays = _aggregate(strategy, 1, trained)
    after = _send(strategy, 2, global_arrays, NODES[:2])
    for node in sent:  # each generated model moved towards the weights its client trained
        assert _distance(after[node], trained[node], params) < 0.99 * before[node]
    assert params <= set(global_arrays.keys())  # the server's arrays are still one whole model
    kept = build_model("pFedHN", 1, 2, 28, 0)
    kept.load_state_dict({k: torch.as_tensor(v.numpy()) for k, v in global_arrays.items()}, strict=False)


def test_pfedhn_embedding_of_a_node_that_sent_nothing_stays_put(server_identity):
    torch.manual_seed(0)
    strategy, arrays, params = _strategy("pFedHN", n_clients=3)
    sent = _send(strategy, 1, arrays, NODES[:3])
    arrays = _aggregate(strategy, 1, {n: _moved(w, params, _direction(w, n), 0.01) for n, w in sent.items()})
    absent = strategy.hn.embeddings[strategy.row(NODES[2])].detach().clone()
    present = strategy.hn.embeddings[strategy.row(NODES[0])].detach().clone()
    sent = _send(strategy, 2, arrays, NODES[:3])
    replies = {n: _moved(w, params, _direction(w, n), 0.01) for n, w in sent.items() if n != NODES[2]}
    _aggregate(strategy, 2, replies)  # the third hospital did not reply
    torch.testing.assert_close(strategy.hn.embeddings[strategy.row(NODES[2])].detach(), absent, rtol=0, atol=0)
    assert not torch.equal(strategy.hn.embeddings[strategy.row(NODES[0])].detach(), present)


def test_pfedhn_client_keeps_batchnorm_statistics_and_deploys_the_generated_weights():
    from flwr.app import RecordDict

    from fl.algorithms import client_algorithm
    from fl.algorithms.base import RunSpec, StateStore
    from fl.data import LocalData

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = LocalData(torch.rand(8, 1, 28, 28), torch.tensor([0, 1] * 4), torch.rand(4, 1, 28, 28), torch.tensor([0, 1] * 2), ["a", "b"])  # fmt: skip
    spec = RunSpec(run_tag="t", algorithm="pFedHN", classes=["a", "b"], channels=1, image_size=28, batch_size=4)
    model = build_model("pFedHN", 1, 2, 28, 0)
    generated = {n: p.detach() + 0.01 for n, p in model.named_parameters()}
    state = RecordDict()
    payload, _ = client_algorithm("pFedHN")(spec, data, StateStore(state, "t"), 1).train(generated, {})
    trained = StateStore(state, "t").load("model")
    stats = [k for k in trained if k.endswith("running_mean")]
    assert stats and all(not torch.equal(trained[k], model.state_dict()[k]) for k in stats)
    regenerated = {k: v + 0.02 for k, v in generated.items()}  # what the server sends for evaluation
    deployed = client_algorithm("pFedHN")(spec, data, StateStore(state, "t"), 2).predictor(regenerated)
    for key, value in deployed.state_dict().items():  # h(e_i) with the local BatchNorm statistics
        torch.testing.assert_close(value, regenerated[key] if key in regenerated else trained[key])
    np.testing.assert_array_equal(payload[stats[0]], trained[stats[0]].numpy())


def test_pfedla_sends_the_layerwise_mixture_its_weights_claim_and_learns_to_prefer_similar_clients(server_identity):
    from fl.algorithms.server_personalised import layer_of

    torch.manual_seed(0)
    strategy, arrays, params = _strategy("pFedLA")
    sent = _send(strategy, 1, arrays, NODES)
    init = {k: v.numpy() for k, v in arrays.items()}
    for received in sent.values():  # round 1: every client's model is the initial one
        for k, v in received.items():
            np.testing.assert_allclose(v, init[k], atol=1e-6)
    # two groups of clients whose updates point in opposite directions, twice
    direction = _direction(init, 0)
    group = {11: 1.0, 12: 1.0, 13: -1.0, 14: -1.0}
    trained = {node: _moved(w, params, direction, 0.05 * group[node]) for node, w in sent.items()}
    global_arrays = _aggregate(strategy, 1, trained)
    sent = _send(strategy, 2, global_arrays, NODES)
    trained = {node: _moved(w, params, direction, 0.05 * group[node]) for node, w in sent.items()}
    global_arrays = _aggregate(strategy, 2, trained)
    sent = _evaluate(strategy, 2, global_arrays, NODES)
    layers = strategy.layers
    for node in NODES:
        with torch.no_grad():
            alpha = strategy.nets[strategy.row(node)]().numpy()
        np.testing.assert_allclose(alpha.sum(axis=1), 1.0, rtol=1e-6)
        rows = [strategy.row(n) for n in NODES]
        for key, value in sent[node].items():  # the model it receives is the mixture its alpha claims
            a = alpha[layers.index(layer_of(key))]
            expected = sum(a[r] * trained[n][key] for r, n in zip(rows, NODES))
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
        same = [strategy.row(n) for n in NODES if group[n] == group[node]]
        assert (alpha[:, same].sum(axis=1) > 0.5).all()  # more weight on the clients that move alike
    mean = {k: np.mean([sent[n][k] for n in NODES], axis=0) for k in sent[NODES[0]]}
    for key, value in global_arrays.items():  # the server's arrays: the mean personalised model
        np.testing.assert_allclose(value.numpy(), mean[key], rtol=1e-5, atol=1e-6)


def test_cfl_start_round_is_clamped_into_short_runs():
    from fl.algorithms.server_personalised import start_round

    assert start_round({"start_round": 20}, 2) == 1
    assert start_round({"start_round": 20}, 3) == 2
    assert start_round({"start_round": 20}, 100) == 20
    assert start_round({"start_round": 5}, 1) == 1


@pytest.mark.parametrize(("opposed", "rounds"), [(True, 2), (False, 2), (True, 30)])
def test_cfl_splits_clients_whose_updates_disagree(server_identity, opposed, rounds):
    """Two pairs of clients with opposite updates become two clusters of the matching pairs, each
    node then receiving its cluster's model; a homogeneous set, or one before start_round, is not split."""
    torch.manual_seed(0)
    strategy, arrays, params = _strategy("CFL", rounds=rounds)
    sent = _send(strategy, 1, arrays, NODES)
    init = {k: v.numpy() for k, v in arrays.items()}
    shared = _direction(init, 0)
    sign = {11: 1.0, 12: 1.0, 13: -1.0 if opposed else 1.0, 14: -1.0 if opposed else 1.0}
    trained = {
        node: _moved(_moved(w, params, shared, 0.05 * sign[node]), params, _direction(init, node), 0.01)
        for node, w in sent.items()
    }
    global_arrays = _aggregate(strategy, 1, trained)
    received = _send(strategy, 2, global_arrays, NODES)
    clusters = sorted(sorted(c) for c in strategy.clusters)

    def fedavg(nodes: list[int]) -> dict[str, np.ndarray]:
        return {k: np.mean([trained[n][k] for n in nodes], axis=0) for k in init}

    if opposed and rounds == 2:
        assert clusters == [[11, 12], [13, 14]]
        groups = [[11, 12], [13, 14]]
    else:
        assert clusters == [NODES]
        groups = [NODES]
    for nodes in groups:  # each node receives its cluster's model: the FedAvg of the cluster's updates
        for node in nodes:
            for key, value in received[node].items():
                np.testing.assert_allclose(value, fedavg(nodes)[key], rtol=1e-5, atol=1e-6)
    for key, value in global_arrays.items():  # clusters of equal size: their mean is every client's mean
        np.testing.assert_allclose(value.numpy(), fedavg(NODES)[key], rtol=1e-5, atol=1e-6)


# ---- one real Flower simulation of the three ---------------------------------------------------------------


@pytest.fixture(scope="module")
def flower_env(tmp_path_factory):
    """Flower's home in a temporary folder; telemetry and update checks off."""
    values = {**QUIET_ENV, "FLWR_HOME": str(tmp_path_factory.mktemp("flwr_home"))}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield values
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def results(tmp_path_factory, flower_env):
    """2 rounds of each algorithm on 4 hospitals; hospitals 2 and 3 have the two labels swapped."""
    from fl.runner import TrainConfig, TrainResult, resolve
    from fl.simulation import simulate
    from fl.testing import make_federation

    root = tmp_path_factory.mktemp("server_personalised")
    dirs, _ = make_federation(root / "data", n_clients=4, per_class=20)
    for d in dirs[2:]:
        (d / "class_0").rename(d / "swap")
        (d / "class_1").rename(d / "class_0")
        (d / "swap").rename(d / "class_1")
    clients = [{"name": f"hospital_{i}", "data_dir": d} for i, d in enumerate(dirs)]
    plans = [
        resolve(TrainConfig(clients=clients, algorithm=name, rounds=2, batch_size=16, out_dir=root / name), name)
        for name in ("pFedHN", "pFedLA", "CFL")
    ]
    raw = simulate(plans, [(c["name"], str(c["data_dir"])) for c in clients], workers=1)
    return {plan["algorithm"]: TrainResult.model_validate(r) for plan, r in zip(plans, raw)}


def _deployed(result) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """The four hospitals' saved models and the global model, each loaded into the algorithm's network."""
    folder = Path(result.result_path).parent
    models = [torch.load(folder / "clients" / f"hospital_{i}.pt", weights_only=True) for i in range(4)]
    global_model = torch.load(folder / "global_model.pt", weights_only=True)
    for state in models:
        build_model(result.algorithm, 1, 2, 28, 0).load_state_dict(state)
    build_model(result.algorithm, 1, 2, 28, 0).load_state_dict(global_model, strict=False)
    return models, global_model


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


@pytest.mark.parametrize("algorithm", ["pFedHN", "pFedLA", "CFL"])
def test_simulation_completes_with_personalised_models(results, algorithm):
    result = results[algorithm]
    assert result.status == "completed", result.error
    assert [r.round for r in result.rounds] == [1, 2]
    models, global_model = _deployed(result)
    if algorithm == "CFL":  # split after round 1 into the two label conventions; each deploys its cluster's model
        assert _same(models[0], models[1]) and _same(models[2], models[3]) and not _same(models[0], models[2])
    else:  # every hospital its own model
        assert all(not _same(models[i], models[j]) for i in range(4) for j in range(i + 1, 4))
    if algorithm != "pFedHN":  # equal numbers of examples: the global model is the mean of the deployed ones
        for key, value in global_model.items():
            torch.testing.assert_close(value, torch.stack([m[key] for m in models]).mean(0), rtol=1e-5, atol=1e-6)
