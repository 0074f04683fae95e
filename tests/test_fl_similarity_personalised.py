"""pFedSim, FedFomo, FedAP and FedPAC: each server's per-client aggregate and each client's rule,
checked on constructed uploads and tiny tensors; then one short Flower simulation of all four."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fl.algorithms.base import AUX, RunSpec, StateStore
from fl.algorithms.server_base import to_record
from fl.algorithms.similarity_personalised import (
    FedAP,
    FedFomo,
    FedPAC,
    PFedSim,
    bn_statistics,
    class_statistics,
    fedpac_weights,
    gaussian_distance,
    phase_rounds,
)
from fl.data import LocalData
from fl.models import batchnorm_keys, build_model, shareable_keys
from fl.strategies import build_strategy

NODES = [11, 22, 33, 44]


@pytest.fixture
def server_process():
    """The identity a ServerApp process has: Flower's Messages are only made inside one."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


class _Grid:
    """What configure_train / configure_evaluate ask of a Grid."""

    def get_node_ids(self):
        return list(NODES)


def _strategy(name: str, rounds: int, hp: dict):
    model = build_model(name, 1, 2, 28, 0)
    params = {n for n, _ in model.named_parameters()}
    strategy = build_strategy(name, hp, len(NODES), 1.0, 0.01, param_keys=params,
                              buffer_keys=set(shareable_keys(model)) - params, plan={"rounds": rounds}, model=model)  # fmt: skip
    return strategy, {k: v.numpy() for k, v in model.state_dict().items() if k in shareable_keys(model)}


def _sent(strategy, rnd: int, arrays: dict, evaluate: bool = False) -> dict[int, dict[str, np.ndarray]]:
    configure = strategy.configure_evaluate if evaluate else strategy.configure_train
    messages = configure(rnd, to_record(arrays), ConfigRecord({}), _Grid())
    return {m.metadata.dst_node_id: {k: v.numpy() for k, v in m.content["arrays"].items()} for m in messages}


def _round(strategy, rnd: int, arrays: dict, uploads: dict[int, dict], n: dict[int, int] | None = None):
    """One server round: send, receive ``uploads`` (node -> arrays) as the nodes' replies, aggregate."""
    messages = strategy.configure_train(rnd, to_record(arrays), ConfigRecord({}), _Grid())
    replies = [
        Message(RecordDict({"arrays": to_record(uploads[m.metadata.dst_node_id]),
                            "metrics": MetricRecord({"num-examples": (n or {}).get(m.metadata.dst_node_id, 10),
                                                     "train_loss": 0.0})}), reply_to=m)
        for m in messages if m.metadata.dst_node_id in uploads  # a node not in ``uploads`` does not reply
    ]  # fmt: skip
    record, _ = strategy.aggregate_train(rnd, replies)
    return {k: v.numpy() for k, v in record.items()}


def _spec(name: str, **hp) -> RunSpec:
    return RunSpec(run_tag="t", algorithm=name, classes=["a", "b"], channels=1, image_size=28, batch_size=4, lr=0.01,
                   hp=hp)  # fmt: skip


def _data(seed: int = 0, n: int = 16) -> LocalData:
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([0, 1] * (n // 2))
    x = torch.rand(n, 1, 28, 28, generator=g) + 0.5 * y.view(-1, 1, 1, 1)  # learnable: class 1 is brighter
    return LocalData(x, y, torch.rand(4, 1, 28, 28, generator=g), torch.tensor([0, 1] * 2), ["a", "b"])


def _torch(arrays: dict) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in arrays.items()}


def test_phases_are_fractions_of_the_run_or_clamped_round_counts():
    assert phase_rounds(0.5, 2) == 1 and phase_rounds(0.3, 2) == 1 and phase_rounds(0.3, 10) == 3
    assert phase_rounds(5, 3) == 2 and phase_rounds(0.5, 1) == 0  # a personalised round always remains


def test_pfedsim_personal_bodies_are_head_similarity_weighted_and_heads_stay_on_clients(server_process):
    torch.set_num_threads(1)
    strategy, init = _strategy("pFedSim", rounds=4, hp={"warmup_round": 0.5})  # warm-up: rounds 1-2
    rng = np.random.default_rng(0)
    direction = rng.normal(size=init["head.weight"].shape)
    other = rng.normal(size=direction.shape)
    other -= (other * direction).sum() / (direction**2).sum() * direction  # orthogonal to ``direction``
    other = other / np.linalg.norm(other) * np.linalg.norm(direction) + 0.5 * direction  # cosine about 0.45
    heads = {11: direction, 22: direction + 0.3 * rng.normal(size=direction.shape), 33: other, 44: -direction}
    uploads = {
        node: {**{k: v + 0.01 * rng.normal(size=v.shape).astype(np.float32) for k, v in init.items()},
               "head.weight": heads[node].astype(np.float32)}
        for node in NODES
    }  # fmt: skip
    body = [k for k in init if not k.startswith("head.")]

    glob = _round(strategy, 1, init, uploads)
    sent = _sent(strategy, 2, glob)
    assert all(sent[n].keys() == init.keys() for n in NODES)  # warm-up: plain FedAvg, heads included
    np.testing.assert_allclose(sent[11]["head.weight"], np.mean([heads[n] for n in NODES], 0), rtol=1e-5, atol=1e-6)

    glob = _round(strategy, 2, glob, uploads)
    assert glob.keys() == init.keys()  # the global arrays stay a whole model
    for sent in (_sent(strategy, 3, glob), _sent(strategy, 2, glob, evaluate=True)):
        for node in NODES:
            assert not any(k.startswith("head.") for k in sent[node])  # the head stays the client's own
            assert sorted(sent[node]) == sorted(body)
        flat = [np.concatenate([heads[n].ravel(), uploads[n]["head.bias"].ravel()]) for n in NODES]
        cos = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in flat] for a in flat])
        weights = np.clip(cos, 0, None) / np.clip(cos, 0, None).sum(1, keepdims=True)
        assert weights[0, 1] > weights[0, 2] > weights[0, 3] == 0.0  # most similar client weighs most
        for i, node in enumerate(NODES):
            for k in body:
                expected = sum(weights[i, j] * uploads[m][k] for j, m in enumerate(NODES))
                np.testing.assert_allclose(sent[node][k], expected, rtol=1e-4, atol=1e-5)

    # client side: the head trained during the warm-up is kept once the server sends only bodies
    state = RecordDict()
    client = PFedSim(_spec("pFedSim"), _data(), StateStore(state, "t"), 1)
    client.train(_torch(init), {})
    trained_head = StateStore(state, "t").load("model")["head.weight"]
    assert not torch.allclose(trained_head, torch.as_tensor(init["head.weight"]))
    personal_body = {k: torch.as_tensor(v) for k, v in _sent(strategy, 3, glob)[11].items()}
    model = PFedSim(_spec("pFedSim"), _data(), StateStore(state, "t"), 2).predictor(personal_body)
    torch.testing.assert_close(model.head.weight, trained_head)
    torch.testing.assert_close(model.state_dict()[body[0]], personal_body[body[0]])


def test_fedfomo_weighs_peers_by_validation_gain_per_distance():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    client = FedFomo(_spec("FedFomo", valset_ratio=0.25), _data(), StateStore(RecordDict(), "t"), 1)
    assert len(client.held_y) == 4 and len(client.data.train_y) == 12  # held out, not trained on
    own = client.new_model()

    def improved(steps: int) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(own)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(steps):
            model.train()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(client.held_x), client.held_y).backward()
            opt.step()
        return {k: v.detach().clone() for k, v in model.state_dict().items() if k in shareable_keys(model)}

    worse = {k: v.clone() for k, v in own.state_dict().items() if k in shareable_keys(own)}
    worse["head.bias"] = worse["head.bias"] + torch.tensor([8.0, -8.0])  # wrong on half the held-out set
    peers = [improved(8), improved(2), worse]

    def loss_of(state) -> float:
        model = client.new_model()
        model.load_state_dict(state, strict=False)
        model.eval()
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(client.held_x), client.held_y))

    own_state = {k: v.clone() for k, v in own.state_dict().items()}
    base = loss_of(own_state)
    params = [n for n, _ in own.named_parameters()]
    raw = []
    for peer in peers:
        distance = math.sqrt(sum(float(((peer[n] - own_state[n]) ** 2).sum()) for n in params))
        raw.append(max(0.0, (base - loss_of(peer)) / distance))
    assert raw[0] > 0 and raw[1] > 0 and raw[2] == 0.0  # two peers help this client, one hurts it
    expected = [r / sum(raw) for r in raw]

    combined, weights = client.combine(own, peers)
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    assert weights[2] == 0.0 and 0 < weights[1] < 1
    for k in shareable_keys(combined):
        update = own_state[k] + sum(w * (p[k] - own_state[k]) for w, p in zip(expected, peers))
        torch.testing.assert_close(combined.state_dict()[k], update)


def test_fedfomo_server_relays_the_other_nodes_models(server_process):
    strategy, init = _strategy("FedFomo", rounds=2, hp={"valset_ratio": 0.2})
    uploads = {n: {k: v + n for k, v in init.items()} for n in NODES}
    glob = _round(strategy, 1, init, uploads, n={11: 1, 22: 1, 33: 1, 44: 1})
    np.testing.assert_allclose(glob["head.bias"], init["head.bias"] + np.mean(NODES), rtol=1e-6)
    sent = _sent(strategy, 2, glob)
    for node in NODES:
        peers = {k for k in sent[node]}
        assert peers == {f"{AUX}peer{m}.{k}" for m in NODES if m != node for k in init}  # no own model, no global
        for m in NODES:
            if m != node:
                np.testing.assert_array_equal(sent[node][f"{AUX}peer{m}.head.weight"], uploads[m]["head.weight"])
    assert all(not arrays for arrays in _sent(strategy, 1, glob, evaluate=True).values())  # each predicts its own


def test_fedap_similar_batchnorm_statistics_weigh_more_and_batchnorm_stays_local(server_process):
    torch.set_num_threads(1)
    strategy, init = _strategy("FedAP", rounds=3, hp={"pretrain_ratio": 0.3})  # pre-training: round 1
    model = build_model("FedAP", 1, 2, 28, 0)
    bn = batchnorm_keys(model)
    x = torch.rand(12, 1, 28, 28)
    stats = {11: bn_statistics(model, x), 22: bn_statistics(model, x), 33: bn_statistics(model, 3 * x + 2),
             44: bn_statistics(model, 1.2 * x)}  # fmt: skip
    assert gaussian_distance(stats[11], stats[22]) == 0.0 < gaussian_distance(stats[11], stats[44])
    assert gaussian_distance(stats[11], stats[44]) < gaussian_distance(stats[11], stats[33])
    rng = np.random.default_rng(1)
    uploads = {
        n: {**{k: v + 0.01 * rng.normal(size=v.shape).astype(np.float32) for k, v in init.items()},
            **{f"{AUX}bn.{k}": v for k, v in stats[n].items()}}
        for n in NODES
    }  # fmt: skip
    glob = _round(strategy, 1, init, uploads)
    assert glob.keys() == init.keys()
    w = strategy.weights
    assert w[0, 1] > w[0, 3] > w[0, 2] and w[1, 0] > w[1, 2] and w[2, 0] == w[2, 1]
    np.testing.assert_allclose(w.sum(1), 1.0)
    np.testing.assert_allclose(np.diag(w), 0.5)
    for sent in (_sent(strategy, 2, glob), _sent(strategy, 1, glob, evaluate=True)):
        for i, node in enumerate(NODES):
            assert sent[node].keys() == init.keys() - bn  # BatchNorm never sent after pre-training
            np.testing.assert_allclose(sent[node]["head.weight"],
                                       sum(w[i, j] * uploads[m]["head.weight"] for j, m in enumerate(NODES)),
                                       rtol=1e-5, atol=1e-6)  # fmt: skip

    # the client: statistics and BatchNorm travel while pre-training only; afterwards BN is its own
    state = RecordDict()
    payload, _ = FedAP(_spec("FedAP"), _data(), StateStore(state, "t"), 1).train(_torch(init), {})
    assert bn - {k for k in bn if k.endswith("num_batches_tracked")} <= set(payload)
    assert any(k.startswith(f"{AUX}bn.") for k in payload)
    local_bn = {k: v for k, v in StateStore(state, "t").load("model").items() if k in bn}
    personal = _torch(_sent(strategy, 2, glob)[11])
    client = FedAP(_spec("FedAP"), _data(), StateStore(state, "t"), 2)
    payload, _ = client.train(personal, {})
    assert not set(payload) & bn and not any(k.startswith(AUX) for k in payload)
    predicted = FedAP(_spec("FedAP"), _data(), StateStore(state, "t"), 3).predictor(personal)
    for k in bn:
        if k.endswith("running_mean"):  # trained on locally in round 2, starting from round 1's own
            assert not torch.allclose(predicted.state_dict()[k], local_bn[k])
            torch.testing.assert_close(predicted.state_dict()[k], StateStore(state, "t").load("model")[k])


def test_fedpac_alignment_pulls_features_to_global_prototypes():
    torch.set_num_threads(1)
    model = build_model("FedPAC", 1, 2, 28, 0)
    received = {k: v for k, v in model.state_dict().items() if k in shareable_keys(model)}
    protos = torch.rand(2, model.feature_dim, generator=torch.Generator().manual_seed(3))
    data = _data()

    def distance(lamda: float) -> float:
        spec = RunSpec(**{**_spec("FedPAC", lamda=lamda).__dict__, "local_epochs": 3})
        client = FedPAC(spec, data, StateStore(RecordDict(), "t"), 1)
        payload, _ = client.train({**received, AUX + "protos": protos, AUX + "counts": torch.ones(2)}, {})
        trained = build_model("FedPAC", 1, 2, 28, 0)
        trained.load_state_dict(_torch({k: v for k, v in payload.items() if not k.startswith(AUX)}), strict=False)
        trained.eval()
        with torch.no_grad():
            return float(((trained.features(data.train_x) - protos[data.train_y]) ** 2).mean())

    assert distance(1.0) < 0.7 * distance(0.0)


def test_fedpac_heads_are_the_optimal_combination_and_prototypes_the_class_means(server_process):
    strategy, init = _strategy("FedPAC", rounds=2, hp={"lamda": 1.0})
    rng = np.random.default_rng(2)
    d = 64
    base = rng.normal(size=(2, d)).astype(np.float32)  # as the arrays travel
    shift = rng.normal(size=(3, 2, d)).astype(np.float32)  # independent directions: no bias cancels out
    means = {11: base, 22: base + 0.01 * shift[0], 33: base + 3 * shift[1], 44: base + shift[2]}
    counts = {11: np.array([5.0, 5.0]), 22: np.array([9.0, 1.0]), 33: np.array([1.0, 9.0]), 44: np.array([4.0, 6.0])}
    variances = {11: 0.5, 22: 0.125, 33: 0.125, 44: 0.25}
    uploads = {
        n: {**{k: v + 0.01 * rng.normal(size=v.shape).astype(np.float32) for k, v in init.items()},
            AUX + "protos": means[n] + 0.5, AUX + "counts": counts[n], AUX + "means": means[n],
            AUX + "var": np.array([variances[n]])}
        for n in NODES
    }  # fmt: skip
    glob = _round(strategy, 1, init, uploads)
    assert {k for k in glob if not k.startswith(AUX)} == set(init)
    total = sum(counts.values())
    np.testing.assert_allclose(glob[AUX + "protos"], sum((means[n] + 0.5) * counts[n][:, None] for n in NODES)
                               / total[:, None], rtol=1e-5)  # fmt: skip
    sent = _sent(strategy, 2, glob)
    for i, node in enumerate(NODES):
        alpha = strategy.weights[node]
        np.testing.assert_allclose(alpha, fedpac_weights(i, [means[n] for n in NODES], [counts[n] for n in NODES],
                                                         [variances[n] for n in NODES]), atol=1e-6)  # fmt: skip
        for k in ("head.weight", "head.bias"):
            expected = sum(a * uploads[m][k] for a, m in zip(alpha, NODES))
            np.testing.assert_allclose(sent[node][k], expected, rtol=1e-5, atol=1e-6)
        body = [k for k in init if not k.startswith("head.")]
        np.testing.assert_allclose(sent[node][body[0]], glob[body[0]])  # one global body
    # alpha is optimal (the QP's KKT conditions); client 11 leans most on its near-twin 22 (less noisy than 11)
    mu = np.stack([means[n] for n in NODES])
    prior = counts[11] / counts[11].sum()
    diff = ((mu - mu[0]) * np.sqrt(prior)[None, :, None]).reshape(4, -1)
    p = diff @ diff.T + np.diag([variances[n] for n in NODES])
    alpha = strategy.weights[11]
    grad = 2 * p @ alpha
    support = alpha > 1e-6
    tol = 1e-5 * np.abs(grad).max()
    assert np.ptp(grad[support]) < tol and (grad[~support] >= grad[support].min() - tol).all()
    assert alpha[1] > alpha[0] > alpha[3] > alpha[2] and abs(alpha.sum() - 1) < 1e-9  # twin, self, far, farther


def test_fedpac_node_that_misses_a_round_keeps_its_head_under_the_new_body(server_process):
    strategy, init = _strategy("FedPAC", rounds=3, hp={"lamda": 1.0})
    rng = np.random.default_rng(4)

    def upload(node: int) -> dict[str, np.ndarray]:
        weights = {k: v + rng.normal(size=v.shape).astype(np.float32) for k, v in init.items()}
        stats = {"protos": rng.normal(size=(2, 64)), "counts": np.array([5.0, 5.0]),
                 "means": rng.normal(size=(2, 64)), "var": np.array([0.5])}  # fmt: skip
        return {**weights, **{AUX + k: v.astype(np.float32) for k, v in stats.items()}}

    glob = _round(strategy, 1, init, {n: upload(n) for n in NODES})
    head_after_round_1 = _sent(strategy, 2, glob)[44]["head.weight"]
    glob = _round(strategy, 2, glob, {n: upload(n) for n in NODES[:3]})  # hospital 44 does not reply
    sent = _sent(strategy, 3, glob)
    np.testing.assert_array_equal(sent[44]["head.weight"], head_after_round_1)
    body = next(k for k in init if not k.startswith("head."))
    np.testing.assert_array_equal(sent[44][body], glob[body])  # but the body is the new global one
    assert not np.array_equal(sent[33]["head.weight"], sent[44]["head.weight"])


def test_bn_statistics_in_batches_equal_one_pass():
    torch.set_num_threads(1)
    model = build_model("FedAP", 1, 2, 28, 0).eval()
    x = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(5))  # more than one batch of 256
    stats = bn_statistics(model, x)
    name = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    seen = []
    hook = dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    dims = [d for d in range(seen[0].dim()) if d != 1]
    np.testing.assert_allclose(stats[f"{name}.mean"], seen[0].mean(dim=dims).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats[f"{name}.var"], seen[0].var(dim=dims, unbiased=False).numpy(), rtol=1e-3, atol=1e-6)


def test_class_statistics_leave_out_classes_with_fewer_than_five_images():
    model = build_model("FedPAC", 1, 2, 28, 0)
    data = _data(n=16)
    keep = torch.cat([torch.nonzero(data.train_y == 0).flatten(), torch.nonzero(data.train_y == 1).flatten()[:4]])
    means, counts, _ = class_statistics(model, data.train_x[keep], data.train_y[keep], 2)
    assert counts.tolist() == [8.0, 0.0] and not means[1].any() and means[0].any()


def test_class_statistics_are_feature_means_and_mean_variance():
    model = build_model("FedPAC", 1, 2, 28, 0)
    data = _data()
    means, counts, spread = class_statistics(model, data.train_x, data.train_y, 2)
    with torch.no_grad():
        feats = model.eval().features(data.train_x)
    torch.testing.assert_close(means[1], feats[data.train_y == 1].mean(0))
    assert counts.tolist() == [8.0, 8.0]
    assert math.isclose(spread, float(((feats - means[data.train_y]) ** 2).sum(1).mean()) / 16, rel_tol=1e-5)
