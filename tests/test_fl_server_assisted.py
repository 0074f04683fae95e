"""FedGen, CCVR, FedMD, ADCOL and FedIIR: what each server learns beyond averaging, checked on
constructed uploads, and each client's use of it on tiny tensors; then one short Flower simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from torch.nn import functional as F

from fl.algorithms import client_algorithm
from fl.algorithms.base import AUX, MIN_CLASS_EXAMPLES, RunSpec, StateStore
from fl.algorithms.server_assisted import (
    CCVR_STATISTICS,
    FeatureGenerator,
    adversarial_loss,
    class_statistics,
    classifier_gradient,
    discriminator,
    pool_statistics,
    public_images,
)
from fl.data import LocalData
from fl.models import build_model, shareable_keys
from fl.strategies import build_strategy, model_arrays

NAMES = ["FedGen", "CCVR", "FedMD", "ADCOL", "FedIIR"]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture
def server_process():
    """The identity a ServerApp process has: Flower's Messages are only made inside one."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


class _Grid:
    def get_node_ids(self):
        return [11, 22]


def _strategy(name: str, n_classes: int = 2, rounds: int = 2, **hp):
    """(the algorithm's strategy for two nodes, the initial model's weights)."""
    model = build_model(name, 1, n_classes, 28, 0)
    params = {n for n, _ in model.named_parameters()}
    plan = {"rounds": rounds, "seed": 0, "clients": [{"name": "a"}, {"name": "b"}]}
    strategy = build_strategy(name, hp, 2, 1.0, 0.01, param_keys=params,
                              buffer_keys=set(shareable_keys(model)) - params, plan=plan, model=model)  # fmt: skip
    return strategy, {k: v.numpy() for k, v in model.state_dict().items() if k in shareable_keys(model)}


def _reply(node: int, arrays: dict[str, np.ndarray], n: int = 10) -> Message:
    meta = Metadata(run_id=0, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="m", group_id="",
                    created_at=0.0, ttl=60.0, message_type="train")  # fmt: skip
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": n, "train_loss": 0.0})})  # fmt: skip
    return Message(content=content, metadata=meta)


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _torch(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in arrays.items()}


def _data(seed: int = 0, n: int = 16, shift: float = 0.0) -> LocalData:
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([0, 1] * (n // 2))
    x = torch.rand(n, 1, 28, 28, generator=g) + 0.5 * y.view(-1, 1, 1, 1) + shift  # class 1 is brighter
    return LocalData(x, y, torch.rand(4, 1, 28, 28, generator=g), torch.tensor([0, 1] * 2), ["a", "b"])


def _client(name: str, data: LocalData | None = None, state: RecordDict | None = None, schedule: dict | None = None,
            **hp):  # fmt: skip
    """A client of ``name`` on tiny data; ``schedule`` overrides batch size, lr, local epochs."""
    settings = {"batch_size": 4, "lr": 0.05, **(schedule or {})}
    spec = RunSpec(run_tag="t", algorithm=name, classes=["a", "b"], channels=1, image_size=28, hp=hp, **settings)
    return client_algorithm(name)(spec, data or _data(), StateStore(state or RecordDict(), "t"), round_seed=1)


def _fedavg(uploads: list[tuple[dict, int]], keys) -> dict[str, np.ndarray]:
    total = sum(n for _, n in uploads)
    return {k: sum(a[k] * n / total for a, n in uploads) for k in keys}


# ---- FedGen ------------------------------------------------------------------------------------
def _ensemble_accuracy(generator: FeatureGenerator, heads, counts: torch.Tensor) -> float:
    """How often the label-count-weighted ensemble of heads classifies G(noise, y) as y."""
    y = torch.arange(counts.shape[1]).repeat(200)
    with torch.no_grad():
        z = generator.sample(y, torch.Generator().manual_seed(5))[1]
        share = counts / counts.sum(0)
        logits = sum(share[k, y][:, None] * F.linear(z, w, b) for k, (w, b) in enumerate(heads))
    return float((logits.argmax(1) == y).float().mean())


def test_fedgen_server_averages_weights_and_trains_a_generator_the_heads_agree_with():
    strategy, weights = _strategy("FedGen")
    g = torch.Generator().manual_seed(1)
    heads = [(torch.randn(2, 64, generator=g), torch.zeros(2)) for _ in range(2)]
    counts = torch.tensor([[20.0, 5.0], [5.0, 20.0]])
    uploads = [({**weights, "head.weight": w.numpy(), "head.bias": b.numpy(), AUX + "label_counts": c.numpy()}, n)
               for (w, b), c, n in zip(heads, counts, (30, 10))]  # fmt: skip
    before = _ensemble_accuracy(strategy.generator, heads, counts)
    record, _ = strategy.aggregate_train(1, [_reply(node, a, n) for node, (a, n) in zip((11, 22), uploads)])
    arrays = _numpy(record)
    generator = FeatureGenerator(2, 64)
    generator.load_state_dict({k[len(AUX + "gen.") :]: torch.as_tensor(v) for k, v in arrays.items()
                               if k.startswith(AUX + "gen.")})  # fmt: skip
    after = _ensemble_accuracy(generator, heads, counts)
    assert after > before + 0.2 and after > 0.8, (before, after)
    glob = model_arrays(record, build_model("FedGen", 1, 2, 28, 0))  # the generator is not part of the global model
    assert set(glob) == set(weights)
    for key, value in _fedavg(uploads, weights).items():
        np.testing.assert_allclose(glob[key], value, rtol=1e-5, atol=1e-6)

    # a client regularised by the trained generator: its (blank) head learns to classify G's features
    received = {**_torch(arrays), "head.weight": torch.zeros(2, 64), "head.bias": torch.zeros(2)}

    def generated_loss(alpha: float) -> float:
        payload, _ = _client("FedGen", generative_alpha=alpha, generative_beta=0.0).train(received, {"server-round": 2})
        assert payload[AUX + "label_counts"].tolist() == [8.0, 8.0] and set(payload) - set(weights) == {
            AUX + "label_counts"
        }
        y = torch.tensor([0, 1] * 100)
        with torch.no_grad():
            z = generator.sample(y, torch.Generator().manual_seed(3))[1]
            logits = F.linear(z, torch.as_tensor(payload["head.weight"]), torch.as_tensor(payload["head.bias"]))
        return float(F.cross_entropy(logits, y))

    assert generated_loss(10.0) < 0.5 * generated_loss(0.0)


# ---- CCVR --------------------------------------------------------------------------------------
def test_ccvr_pooled_class_statistics_are_those_of_all_features_together():
    g = torch.Generator().manual_seed(0)
    clients = []
    for n, labels in ((30, [0, 1, 2]), (12, [1, 2]), (7, [2]), (10, [0, 1])):
        y = torch.tensor(labels).repeat(n // len(labels) + 1)[:n]  # at least 5 of each of its classes
        clients.append((torch.randn(n, 5, generator=g) * (1 + y[:, None]) + 3 * y[:, None], y))
    stats = [class_statistics(z, y, 3) for z, y in clients]
    mean, cov, count = pool_statistics(*(np.stack([s[k].numpy() for s in stats]) for k in ("means", "covs", "counts")))
    direct = class_statistics(torch.cat([z for z, _ in clients]), torch.cat([y for _, y in clients]), 3)
    np.testing.assert_allclose(count, direct["counts"].numpy())
    np.testing.assert_allclose(mean, direct["means"].numpy(), atol=1e-5)
    np.testing.assert_allclose(cov, direct["covs"].numpy(), atol=1e-4)


def test_ccvr_sends_nothing_about_a_class_with_fewer_than_five_images():
    g = torch.Generator().manual_seed(1)
    y = torch.tensor([0] * 8 + [1] * (MIN_CLASS_EXAMPLES - 1))
    stats = class_statistics(torch.randn(len(y), 5, generator=g), y, 2)
    assert stats["counts"].tolist() == [8, 0]  # the server pools it as a class this client lacks
    assert not stats["means"][1].any() and not stats["covs"][1].any()
    assert stats["means"][0].abs().sum() > 0


def test_ccvr_last_round_sends_statistics_and_calibrates_only_the_head(server_process):
    strategy, weights = _strategy("CCVR", rounds=2, sample_per_class=200)
    sent = strategy.configure_train(
        1, ArrayRecord({k: Array(v) for k, v in weights.items()}), ConfigRecord({}), _Grid()
    )
    assert all(CCVR_STATISTICS not in m.content["config"] for m in sent)  # round 1 is FedAvg
    record = ArrayRecord({k: Array(v) for k, v in weights.items()})
    sent = strategy.configure_train(2, record, ConfigRecord({}), _Grid())
    config = dict(next(iter(sent)).content["config"])
    assert config[CCVR_STATISTICS]

    # the client: no training, the class statistics of the received model's features
    data = _data()
    payload, metrics = _client("CCVR", data).train(_torch(weights), config)
    assert set(payload) == {AUX + "means", AUX + "covs", AUX + "counts"}
    net = build_model("CCVR", 1, 2, 28, 0).eval()
    with torch.no_grad():
        features = net.features(data.train_x)
        loss = float(F.cross_entropy(net.head(features), data.train_y))
    expected = class_statistics(features, data.train_y, 2)
    for key, value in expected.items():
        np.testing.assert_allclose(payload[AUX + key], value.numpy(), atol=1e-5)
    assert metrics["train_loss"] == pytest.approx(loss, rel=1e-5)

    # the server: two classes far apart in feature space that the sent head gets wrong
    g = torch.Generator().manual_seed(0)
    centres = torch.zeros(2, 64)
    centres[0, :32], centres[1, 32:] = 2.0, 2.0
    uploads = []
    for node in (11, 22):
        y = torch.tensor([0, 1] * 20)
        uploads.append((node, class_statistics(centres[y] + 0.3 * torch.randn(40, 64, generator=g), y, 2)))
    w = weights["head.weight"].copy()
    w[0, :32], w[0, 32:], w[1, :32], w[1, 32:] = -1, 1, 1, -1  # swapped: every sample misclassified
    strategy.sent = {**weights, "head.weight": w, "head.bias": np.zeros(2, np.float32)}
    calibrated, _ = strategy.aggregate_train(
        2, [_reply(n, {AUX + k: v.numpy() for k, v in s.items()}) for n, s in uploads]
    )
    arrays = _numpy(calibrated)
    assert set(arrays) == set(weights)
    for key in weights:
        if not key.startswith("head."):
            np.testing.assert_array_equal(arrays[key], weights[key])
    y = torch.tensor([0, 1] * 50)
    z = centres[y] + 0.3 * torch.randn(100, 64, generator=g)
    logits = z @ torch.as_tensor(arrays["head.weight"]).T + torch.as_tensor(arrays["head.bias"])
    assert float((logits.argmax(1) == y).float().mean()) > 0.95


# ---- FedMD -------------------------------------------------------------------------------------
def test_fedmd_only_scores_travel_consensus_is_their_mean_and_digest_moves_towards_it(server_process):
    torch.testing.assert_close(public_images(1, 28), public_images.__wrapped__(1, 28))  # the same everywhere
    strategy, weights = _strategy("FedMD")
    sent = strategy.configure_train(
        1, ArrayRecord({k: Array(v) for k, v in weights.items()}), ConfigRecord({}), _Grid()
    )
    assert all(len(m.content["arrays"]) == 0 for m in sent)  # not even the initial weights go out

    state = [RecordDict(), RecordDict()]
    uploads = []
    for i in range(2):
        payload, _ = _client("FedMD", _data(i), state[i]).train({}, {})
        assert set(payload) == {AUX + "scores"} and payload[AUX + "scores"].shape == (256, 2)
        uploads.append(payload)
    record, _ = strategy.aggregate_train(1, [_reply(n, u) for n, u in zip((11, 22), uploads)])
    arrays = _numpy(record)
    assert set(arrays) == {AUX + "consensus"} and model_arrays(record, build_model("FedMD", 1, 2, 28, 0)) == {}  # no global_model.pt
    np.testing.assert_allclose(
        arrays[AUX + "consensus"], (uploads[0][AUX + "scores"] + uploads[1][AUX + "scores"]) / 2, rtol=1e-5, atol=1e-6
    )
    sent = strategy.configure_evaluate(1, record, ConfigRecord({}), _Grid())
    assert all(set(m.content["arrays"]) == {AUX + "consensus"} for m in sent)

    received = _torch(arrays)
    algo = _client("FedMD", _data(0), state[0])
    model = algo.assemble(received)
    consensus = received[AUX + "consensus"]
    with torch.no_grad():
        before = float((algo.scores(model) - consensus).abs().mean())
    algo.digest(model, consensus)
    with torch.no_grad():
        after = float((algo.scores(model) - consensus).abs().mean())
    assert after < 0.7 * before, (before, after)

    payload, _ = _client("FedMD", _data(0), state[0]).train(received, {})
    assert set(payload) == {AUX + "scores"}
    deployed = _client("FedMD", _data(0), state[0]).predictor(received)
    plain = build_model("FedMD", 1, 2, 28, 0)
    plain.load_state_dict(deployed.state_dict())  # the kept model is a plain network


# ---- ADCOL -------------------------------------------------------------------------------------
def _separable(g: torch.Generator, n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.relu(torch.randn(n, 64, generator=g))
    b = torch.relu(torch.randn(n, 64, generator=g) + 1.0)
    return a, b


def test_adcol_discriminator_learns_to_tell_clients_apart():
    strategy, weights = _strategy("ADCOL")
    g = torch.Generator().manual_seed(0)
    features = dict(zip((11, 22), _separable(g)))
    held_out = dict(zip((11, 22), _separable(g)))
    rows = {node: strategy.row(node) for node in features}

    def accuracy(disc) -> float:
        with torch.no_grad():
            right = sum(int((disc(z).argmax(1) == rows[node]).sum()) for node, z in held_out.items())
        return right / sum(len(z) for z in held_out.values())

    replies = [_reply(node, {**weights, AUX + "features": z.numpy()}) for node, z in features.items()]
    before = accuracy(strategy.disc)
    for rnd in range(1, 4):
        record, _ = strategy.aggregate_train(rnd, replies)
    disc = discriminator(64, 2)
    disc.load_state_dict({k[len(AUX + "disc.") :]: torch.as_tensor(v.numpy()) for k, v in record.items()
                          if k.startswith(AUX + "disc.")})  # fmt: skip
    assert accuracy(disc) > 0.9 and accuracy(disc) > before + 0.3, (before, accuracy(disc))
    assert set(model_arrays(record, build_model("ADCOL", 1, 2, 28, 0))) == set(weights)


def test_adcol_client_makes_the_discriminator_less_sure_who_it_is():
    torch.manual_seed(0)
    data = _data()
    net = build_model("ADCOL", 1, 2, 28, 0)
    weights = {k: v for k, v in net.state_dict().items() if k in shareable_keys(net)}
    own = net.eval().features(data.train_x).detach()
    disc = discriminator(64, 2)
    optimizer = torch.optim.Adam(disc.parameters(), lr=0.01)
    others = own + 0.3 * torch.randn_like(own).abs()
    for _ in range(200):  # a discriminator that recognises this client (index 0)
        optimizer.zero_grad()
        F.cross_entropy(disc(torch.cat([own, others])), torch.tensor([0] * 16 + [1] * 16)).backward()
        optimizer.step()
    received = {**weights, **{AUX + "disc." + k: v.detach() for k, v in disc.state_dict().items()}}

    def after_training(mu: float) -> float:
        torch.manual_seed(1)
        algo = _client("ADCOL", data, schedule={"lr": 0.01}, mu=mu)
        payload, _ = algo.train(received, {})
        with torch.no_grad():
            return float(adversarial_loss(disc, torch.as_tensor(payload[AUX + "features"])))

    assert after_training(0.5) < 0.5 * after_training(0.0)  # the paper's mu


# ---- FedIIR ------------------------------------------------------------------------------------
def test_fediir_server_keeps_the_ema_of_the_mean_classifier_gradient():
    strategy, weights = _strategy("FedIIR", ema=0.9)
    rng = np.random.default_rng(0)
    means = []
    for rnd in (1, 2, 3):
        grads = [{AUX + "grad.head.weight": rng.normal(size=(2, 64)), AUX + "grad.head.bias": rng.normal(size=2)}
                 for _ in range(2)]  # fmt: skip
        record, _ = strategy.aggregate_train(rnd, [_reply(n, {**weights, **gr}) for n, gr in zip((11, 22), grads)])
        means.append(
            {k: (grads[0][AUX + "grad." + k] + grads[1][AUX + "grad." + k]) / 2 for k in ("head.weight", "head.bias")}
        )
        arrays = _numpy(record)
    for key in ("head.weight", "head.bias"):
        expected = 0.9 * (0.9 * means[0][key] + 0.1 * means[1][key]) + 0.1 * means[2][key]
        np.testing.assert_allclose(arrays[AUX + "grad_mean." + key], expected, rtol=1e-5, atol=1e-6)
    assert set(model_arrays(record, build_model("FedIIR", 1, 2, 28, 0))) == set(weights)


def test_fediir_penalty_pulls_the_clients_classifier_gradient_to_the_mean():
    net = build_model("FedIIR", 1, 2, 28, 0)
    weights = {k: v for k, v in net.state_dict().items() if k in shareable_keys(net)}
    other = _data(seed=3, shift=0.4)
    mean = classifier_gradient(net, other.train_x, other.train_y)  # another hospital's gradient
    received = {**weights, **{AUX + "grad_mean." + k: v for k, v in mean.items()}}

    def distance(penalty: float) -> float:
        torch.manual_seed(1)
        algo = _client("FedIIR", schedule={"batch_size": 16, "lr": 0.01, "local_epochs": 5}, penalty=penalty)
        payload, _ = algo.train(received, {})
        sent = payload[AUX + "grad.head.weight"]  # the received model's gradient is what travels
        np.testing.assert_allclose(
            sent, classifier_gradient(net, algo.data.train_x, algo.data.train_y)["head.weight"].numpy(), atol=1e-6
        )
        trained = build_model("FedIIR", 1, 2, 28, 0)
        trained.load_state_dict(_torch(payload), strict=False)
        grad = classifier_gradient(trained, algo.data.train_x, algo.data.train_y)
        return float(sum(((grad[k] - mean[k]) ** 2).sum() for k in mean))

    assert distance(3.0) < 0.5 * distance(0.0)
