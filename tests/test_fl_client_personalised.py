"""Per-FedAvg, pFedMe, FedALA, FedAS and MetaFed: each mechanism checked on a tiny model against its
formula, the three custom strategies fed with constructed replies, then one short Flower simulation
of all five."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from torch.func import functional_call
from torch.nn import functional as F

from fl.algorithms import client_algorithm
from fl.algorithms.base import RunSpec, StateStore, param_dict
from fl.data import LocalData
from fl.models import build_model, shareable_keys

NODES = [21, 22, 23, 24]
ALGORITHMS = ["Per-FedAvg", "pFedMe", "FedALA", "FedAS", "MetaFed"]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture
def data() -> LocalData:
    g = torch.Generator().manual_seed(0)
    return LocalData(torch.rand(16, 1, 28, 28, generator=g), torch.tensor([0, 1] * 8),
                     torch.rand(6, 1, 28, 28, generator=g), torch.tensor([0, 1] * 3), ["a", "b"])  # fmt: skip


def _client(name: str, data: LocalData, state: RecordDict | None = None, round_seed: int = 1, lr: float = 0.05, **hp):
    from fl.registry import get_algorithm

    spec = RunSpec(run_tag="t", algorithm=name, classes=["a", "b"], channels=1, image_size=28, batch_size=8, lr=lr,
                   hp={**get_algorithm(name).hyperparameters, **hp})  # fmt: skip
    return client_algorithm(name)(spec, data, StateStore(RecordDict() if state is None else state, "t"), round_seed)


def _received(name: str) -> dict[str, torch.Tensor]:
    model = build_model(name, 1, 2, 28, 0)
    return {k: v.clone() for k, v in model.state_dict().items() if k in shareable_keys(model)}


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---- Per-FedAvg --------------------------------------------------------------------------------


def _gradient(model, params: dict[str, torch.Tensor], x, y) -> dict[str, torch.Tensor]:
    """grad of CE at ``params`` (BatchNorm in training mode, its statistics on copies)."""
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    ps = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    loss = F.cross_entropy(functional_call(model, {**ps, **buffers}, (x,)), y)
    return dict(zip(ps, torch.autograd.grad(loss, list(ps.values()))))


def test_per_fedavg_steps_follow_the_maml_formula(data):
    """fo: w - beta grad L(w - alpha grad L(w; D1); D2); hf adds beta alpha H(w; D3) g, checked
    against finite differences of gradients; in float64 so that the comparison is tight."""
    alpha, beta = 0.1, 0.05
    batches = [(data.train_x[i : i + 4].double(), data.train_y[i : i + 4]) for i in (0, 4, 8)]
    model = build_model("Per-FedAvg", 1, 2, 28, 0).double().train()
    w = _params(model)
    g1 = _gradient(model, w, *batches[0])
    temp = {n: w[n] - alpha * g1[n] for n in w}
    g2 = _gradient(model, temp, *batches[1])
    fo_expected = {n: w[n] - beta * g2[n] for n in w}

    fo = _client("Per-FedAvg", data, lr=alpha, beta=beta, version="fo")
    fo_model = copy.deepcopy(model)
    fo.meta_step(fo_model, *batches[:2])
    for n, p in fo_model.named_parameters():
        torch.testing.assert_close(p.detach(), fo_expected[n], rtol=1e-9, atol=1e-10)
    plain = _gradient(model, w, *batches[1])  # the step is taken at the adapted weights, not at w
    assert max(float((plain[n] - g2[n]).abs().max()) for n in w) > 1e-4

    hf = _client("Per-FedAvg", data, lr=alpha, beta=beta, version="hf")
    hf_model = copy.deepcopy(model)
    hf.meta_step(hf_model, *batches)
    eps = 1e-5
    up = _gradient(model, {n: w[n] + eps * g2[n] for n in w}, *batches[2])
    down = _gradient(model, {n: w[n] - eps * g2[n] for n in w}, *batches[2])
    for n, p in hf_model.named_parameters():
        hessian_g2 = (up[n] - down[n]) / (2 * eps)
        torch.testing.assert_close(p.detach(), fo_expected[n] + beta * alpha * hessian_g2, rtol=1e-6, atol=1e-8)

    with pytest.raises(ValueError, match="version must be 'fo' or 'hf'"):
        _client("Per-FedAvg", data, version="so")


def test_per_fedavg_deploys_the_global_model_after_one_sgd_step(data):
    received = _received("Per-FedAvg")
    client = _client("Per-FedAvg", data, lr=0.05)
    deployed = client.predictor(received)
    x, y = client.personalisation_batch()
    expected = build_model("Per-FedAvg", 1, 2, 28, 0)
    expected.load_state_dict(received, strict=False)
    expected.train()
    loss = F.cross_entropy(expected(x), y)
    params = dict(expected.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    for key, value in deployed.state_dict().items():
        want = params[key].detach() - 0.05 * grads[key] if key in params else expected.state_dict()[key]
        torch.testing.assert_close(value, want, rtol=1e-6, atol=1e-7)
    assert not torch.equal(deployed.head.weight, received["head.weight"])


# ---- pFedMe ------------------------------------------------------------------------------------


def test_pfedme_moves_w_along_w_minus_theta_and_lamda_keeps_theta_close(data):
    x, y = data.train_x[:8], data.train_y[:8]
    distances = {}
    for lam in (0.0, 15.0):
        client = _client("pFedMe", data, lr=0.05, lamda=lam)
        w = build_model("pFedMe", 1, 2, 28, 0)
        theta = copy.deepcopy(w)
        before = _params(w)
        optimizer = torch.optim.SGD(theta.parameters(), lr=0.05)
        client.personal_step(theta, w, x, y, optimizer)
        th = _params(theta)
        for n, p in w.named_parameters():  # w - lr * lamda * (w - theta), exactly
            torch.testing.assert_close(p.detach(), before[n] - 0.05 * lam * (before[n] - th[n]))
        distances[lam] = sum(float(((th[n] - before[n]) ** 2).sum()) for n in th)
    assert distances[15.0] < 0.5 * distances[0.0]


def test_pfedme_deploys_its_personal_model_and_the_server_mixes_with_beta(data, server_identity):
    state = RecordDict()
    received = _received("pFedMe")
    payload, _ = _client("pFedMe", data, state).train(received, {})
    theta = StateStore(state, "t").load("personal")
    deployed = _client("pFedMe", data, state, round_seed=2).predictor(received)
    for key, value in deployed.state_dict().items():
        torch.testing.assert_close(value, theta[key])
    assert not torch.allclose(torch.as_tensor(payload["head.weight"]), theta["head.weight"])  # w is not theta

    strategy, arrays, params = _strategy("pFedMe", n_clients=2, beta=0.5)
    sent = _send(strategy, 1, arrays, NODES[:2])[NODES[0]]
    trained = {node: {k: v + (i + 1) * 0.1 for k, v in sent.items()} for i, node in enumerate(NODES[:2])}
    out = _aggregate(strategy, 1, trained)
    for key, value in out.items():
        mean = (trained[NODES[0]][key] + trained[NODES[1]][key]) / 2
        want = 0.5 * sent[key] + 0.5 * mean if key in params else mean
        np.testing.assert_allclose(value.numpy(), want, rtol=1e-5, atol=1e-6)


# ---- FedALA ------------------------------------------------------------------------------------


def test_fedala_blends_only_the_top_layers_with_weights_in_the_unit_interval(data):
    from fl.algorithms.client_personalised import top_layers

    global_model = build_model("FedALA", 1, 2, 28, 0)
    state = global_model.state_dict()
    local = {k: v + 0.3 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    top = top_layers(global_model, 1)
    assert top == ["head.weight", "head.bias"]

    def aggregated(weights: dict | None, eta: float):
        state = RecordDict()
        store = StateStore(state, "t")
        if weights is not None:
            store.save("ala_weights", weights)
        client = _client("FedALA", data, state, eta=eta)
        return client.adaptive_aggregation(local, copy.deepcopy(global_model))

    ones = {n: torch.ones_like(p) for n, p in global_model.named_parameters() if n in top}
    for fill, source in ((1.0, global_model.state_dict()), (0.0, local)):  # W = 1: global; W = 0: local
        model, _ = aggregated({n: torch.full_like(v, fill) for n, v in ones.items()}, eta=0.0)
        for n in top:
            torch.testing.assert_close(model.state_dict()[n], source[n])

    model, weights = aggregated(None, eta=1e3)  # first time: learnt from W = 1 until the loss settles
    values = torch.cat([w.reshape(-1) for w in weights.values()])
    assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0
    assert float(values.min()) == 0.0 and bool((values < 1.0).any())  # learnt and clipped
    for key, value in model.state_dict().items():
        if key in top:
            torch.testing.assert_close(value, local[key] + (global_model.state_dict()[key] - local[key]) * weights[key])
        else:  # lower layers and every BatchNorm statistic: the global model exactly
            assert torch.equal(value, global_model.state_dict()[key]), key


# ---- FedAS -------------------------------------------------------------------------------------


def test_fedas_alignment_changes_only_the_body_and_reports_fisher_information(data):
    state = RecordDict()
    received = _received("FedAS")
    payload, metrics = _client("FedAS", data, state).train(received, {})
    assert not any(k.startswith("head.") for k in payload) and metrics["fisher"] > 0
    local = StateStore(state, "t").load("model")
    new_global = {k: v + 0.01 * torch.randn_like(v) for k, v in received.items()}  # its head must be ignored
    aligned = _client("FedAS", data, state, round_seed=2).assemble(new_global)
    for key, value in aligned.state_dict().items():
        if key.startswith("head."):
            assert torch.equal(value, local[key]), key
    body = [n for n, _ in aligned.named_parameters() if not n.startswith("head.")]
    moved = sum(float(((param_dict(aligned)[n].detach() - new_global[n]) ** 2).sum()) for n in body)
    assert 0 < moved < sum(float(((new_global[n] - local[n]) ** 2).sum()) for n in body)  # fine-tuned, not replaced


def test_fedas_server_weights_clients_by_their_fisher_scores(server_identity):
    strategy, arrays, _ = _strategy("FedAS", n_clients=2)
    sent = _send(strategy, 1, arrays, NODES[:2])[NODES[0]]
    body = [k for k in sent if not k.startswith("head.")]
    trained = {node: {k: sent[k] + (i + 1) for k in body} for i, node in enumerate(NODES[:2])}
    out = _aggregate(strategy, 1, trained, fisher={NODES[0]: 1.0, NODES[1]: 3.0})
    np.testing.assert_allclose(strategy.weights, [0.25, 0.75])
    for key, value in out.items():
        want = 0.25 * trained[NODES[0]][key] + 0.75 * trained[NODES[1]][key] if key in body else sent[key]
        np.testing.assert_allclose(value.numpy(), want, rtol=1e-5, atol=1e-6)


# ---- MetaFed -----------------------------------------------------------------------------------


def test_metafed_warmup_rounds_are_clamped_into_short_runs():
    from fl.algorithms.client_personalised import warmup_rounds

    assert warmup_rounds(30, 2) == 1 and warmup_rounds(30, 100) == 30 and warmup_rounds(0.5, 4) == 2


def test_metafed_sends_each_node_its_predecessors_model(server_identity):
    from fl.algorithms.client_personalised import KD_PHASE

    strategy, arrays, _ = _strategy("MetaFed", rounds=3)  # warm-up clamped to 2 rounds
    init = {k: v.numpy() for k, v in arrays.items()}
    models = {node: {k: v + node for k, v in init.items()} for node in NODES}
    for rnd in (1, 2, 3):
        sent = _send(strategy, rnd, arrays, NODES, with_config=True)
        for i, node in enumerate(NODES):
            received, config = sent[node]
            assert config[KD_PHASE] == int(rnd == 3)
            expected = init if rnd == 1 else models[NODES[i - 1]]  # ring: 21 gets 24's
            assert set(received) == set(expected)
            for k in expected:
                np.testing.assert_array_equal(received[k], expected[k])
        arrays = _aggregate(strategy, rnd, models)
        for key, value in arrays.items():  # the strategy's arrays: the ring's last model, a whole network
            np.testing.assert_allclose(value.numpy(), models[NODES[-1]][key])
    assert all(not a for a in _evaluate(strategy, 3, arrays, NODES).values())  # each predicts with its own


def test_metafed_distillation_pulls_the_students_outputs_to_the_teacher(data):
    from fl.algorithms.client_personalised import KD_PHASE

    own = build_model("MetaFed", 1, 2, 28, 0)
    teacher = copy.deepcopy(own)
    with torch.no_grad():  # a confident teacher that disagrees with the student
        teacher.head.weight.mul_(-30.0)
    teacher_arrays = {k: v for k, v in teacher.state_dict().items() if k in shareable_keys(teacher)}

    def gap(lam: float) -> float:
        state = RecordDict()
        StateStore(state, "t").save("model", own.state_dict())
        client = _client("MetaFed", data, state, lam=lam, temperature=2.0)
        client.train(teacher_arrays, {KD_PHASE: 1})
        student = client.predictor({})
        teacher.eval()
        with torch.no_grad():
            return float(F.kl_div(F.log_softmax(student(data.train_x), 1), F.log_softmax(teacher(data.train_x), 1),
                                  reduction="batchmean", log_target=True))  # fmt: skip

    assert gap(5.0) < 0.5 * gap(0.0)

    state = RecordDict()  # warm-up (no flag): the predecessor's model is trained, not the own one
    StateStore(state, "t").save("model", own.state_dict())
    warm = _client("MetaFed", data, state, lr=1e-9)
    payload, _ = warm.train(teacher_arrays, {})
    np.testing.assert_allclose(payload["head.weight"], teacher.head.weight.detach().numpy(), atol=1e-6)


# ---- strategies fed with constructed replies ---------------------------------------------------


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


def _send(strategy, server_round: int, arrays, nodes: list[int], with_config: bool = False) -> dict:
    from flwr.app import ConfigRecord

    messages = strategy.configure_train(server_round, arrays, ConfigRecord({}), _Grid(nodes))
    out = {m.metadata.dst_node_id: ({k: v.numpy() for k, v in m.content["arrays"].items()}, m.content["config"])
           for m in messages}  # fmt: skip
    return out if with_config else {node: arrays for node, (arrays, _) in out.items()}


def _evaluate(strategy, server_round: int, arrays, nodes: list[int]) -> dict:
    from flwr.app import ConfigRecord

    messages = strategy.configure_evaluate(server_round, arrays, ConfigRecord({}), _Grid(nodes))
    return {m.metadata.dst_node_id: dict(m.content["arrays"]) for m in messages}


def _aggregate(strategy, server_round: int, trained: dict, fisher: dict | None = None):
    """Replies as Flower delivers them: from each node, its arrays, examples and metrics."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord
    from flwr.app.metadata import Metadata

    replies = []
    for node, arrays in trained.items():
        metrics = {"num-examples": 10, "train_loss": 0.0, **({"fisher": fisher[node]} if fisher else {})}
        content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in arrays.items()}),
                              "metrics": MetricRecord(metrics)})  # fmt: skip
        meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                        group_id=str(server_round), created_at=0.0, ttl=60.0, message_type="train")  # fmt: skip
        replies.append(Message(content, metadata=meta))
    return strategy.aggregate_train(server_round, replies)[0]


# ---- one real Flower simulation of the five ----------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_hospital_deploys_its_own_model(algorithm_runs, algorithm):
    """In the session's real simulation of every algorithm (tests/conftest.py), each of the four
    hospitals keeps a model of its own (test_fl_algorithms checks these models reproduce the
    reported metrics and that the global model is a whole network)."""
    result = algorithm_runs[algorithm]
    assert result.status == "completed", result.error
    folder = Path(result.result_path).parent
    heads = [torch.load(folder / "clients" / f"hospital_{i}.pt", weights_only=True)["head.weight"] for i in range(4)]
    assert all(not torch.allclose(heads[i], heads[j]) for i in range(4) for j in range(i + 1, 4))
