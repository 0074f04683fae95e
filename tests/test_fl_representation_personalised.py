"""FedEM, kNN-Per, FLUTE and pFedFDA: their mechanisms on constructed data, what each client sends,
and one two-round Flower simulation of all four whose hospital models reproduce their metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict

from fl.algorithms import client_algorithm
from fl.algorithms.base import AUX, RunSpec, StateStore
from fl.algorithms.representation_personalised import (
    BETAS,
    FedEM,
    choose_beta,
    embed,
    etf_misalignment,
    fda_server,
    knn_distribution,
    lda_head,
)
from fl.data import LocalData
from fl.models import build_model, shareable_keys

ALGORITHMS = ["FedEM", "kNN-Per", "FLUTE", "pFedFDA"]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def data() -> LocalData:
    g = torch.Generator().manual_seed(0)
    return LocalData(torch.rand(16, 1, 28, 28, generator=g), torch.tensor([0, 1] * 8),
                     torch.rand(6, 1, 28, 28, generator=g), torch.tensor([0, 1] * 3), ["a", "b"])  # fmt: skip


def client(name: str, data: LocalData, state: RecordDict, round_seed: int = 1, **hp):
    spec = RunSpec(run_tag="t", algorithm=name, classes=["a", "b"], channels=1, image_size=28, batch_size=4,
                   lr=0.05, hp=hp)  # fmt: skip
    return client_algorithm(name)(spec, data, StateStore(state, "t"), round_seed)


def server_weights(name: str) -> dict[str, torch.Tensor]:
    """What the server sends in round 1 (every shareable entry of the initial network)."""
    model = build_model(name, 1, 2, 28, 0)
    return {k: v.clone() for k, v in model.state_dict().items() if k in shareable_keys(model)}


def reloaded(name: str, model: torch.nn.Module) -> torch.nn.Module:
    """The deployed model as a hospital keeps it: its state dict in a fresh network of the architecture."""
    fresh = build_model(name, 1, 2, 28, 0)
    fresh.load_state_dict(model.state_dict())
    return fresh.eval()


# ---- FedEM -------------------------------------------------------------------------------------
def test_fedem_e_step_m_step_and_deployed_mixture(data):
    received = server_weights("FedEM")
    model = build_model("FedEM", 1, 2, 28, 0)
    model.pi.copy_(torch.tensor([0.5, 0.3, 0.2]))
    q = FedEM.responsibilities(model, data.train_x, data.train_y)
    torch.testing.assert_close(q.sum(1), torch.ones(16))
    with torch.no_grad():  # q_m ∝ pi_m p_m(y|x)
        lik = torch.stack([torch.softmax(m(data.train_x), 1)[torch.arange(16), data.train_y]
                           for m in model.learners], 1)  # fmt: skip
    torch.testing.assert_close(q, model.pi * lik / (model.pi * lik).sum(1, keepdim=True))

    # round 1: pi = mean responsibility under the received learners and the uniform prior; pi is never sent
    state = RecordDict()
    payload, _ = client("FedEM", data, state).train(received, {})
    assert set(payload) == set(received) - {"pi"}
    model.load_state_dict(received)
    pi = StateStore(state, "t").load("pi")["pi"]
    torch.testing.assert_close(pi, FedEM.responsibilities(model, data.train_x, data.train_y).mean(0))

    # M-step: a learner with zero responsibility gets zero gradient, so it does not move
    StateStore(state, "t").save("pi", {"pi": torch.tensor([1.0, 0.0, 0.0])})
    payload, _ = client("FedEM", data, state).train(received, {})
    moved = {m: any(not torch.equal(torch.as_tensor(payload[n]), p)
                    for n, p in model.named_parameters() if n.startswith(f"learners.{m}."))
             for m in range(3)}  # fmt: skip
    assert moved == {0: True, 1: False, 2: False}

    # the deployed model is the pi-weighted mixture of the learners' probabilities, with this client's pi
    StateStore(state, "t").save("pi", {"pi": pi})
    deployed = client("FedEM", data, state).predictor(received | {"pi": torch.full((3,), 1 / 3)})
    torch.testing.assert_close(deployed.pi, pi)
    with torch.no_grad():
        mixture = sum(pi[m] * torch.softmax(learner(data.val_x), 1) for m, learner in enumerate(deployed.learners))
        torch.testing.assert_close(deployed(data.val_x).exp(), mixture)
        torch.testing.assert_close(reloaded("FedEM", deployed)(data.val_x), deployed(data.val_x))


# ---- kNN-Per -----------------------------------------------------------------------------------
def test_knn_finds_the_k_nearest_and_weights_them_by_exp_minus_distance():
    keys = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 0.0], [11.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    p = knn_distribution(torch.tensor([[0.4, 0.0]]), keys, labels, k=3, n_classes=2)
    w = torch.exp(-torch.tensor([0.4, 0.6, 1.6]))  # the three nearest; the far class-1 points do not count
    torch.testing.assert_close(p[0], torch.stack([w[:2].sum(), w[2]]) / w.sum())
    loo = knn_distribution(keys, keys, labels, k=1, n_classes=2, leave_one_out=True)
    assert loo.argmax(1).tolist() == [0, 0, 0, 1, 1]  # each key's nearest other key, never itself


def test_knn_per_datastore_stays_local_and_lambda_one_is_the_knn_vote(data):
    received = server_weights("kNN-Per")
    payload, _ = client("kNN-Per", data, RecordDict()).train(received, {})
    memory = {"memory_features", "memory_labels", "memory_size", "knn_k", "knn_lambda"}
    assert set(payload) == set(received) - memory  # the datastore never leaves the client

    deployed = client("kNN-Per", data, RecordDict(), k=3, capacity=10).predictor(received)
    assert int(deployed.memory_size) == 10 and int(deployed.knn_k) == 3
    assert float(deployed.knn_lambda) in BETAS.float().tolist()  # tuned on a grid over [0, 1]
    keys, labels = deployed.memory_features[:10], deployed.memory_labels[:10]
    stored = embed(deployed, data.train_x)  # the global network's features of 10 training samples
    assert all(torch.isclose(stored, key).all(1).any() for key in keys)
    for i, key in enumerate(keys):
        assert int(data.train_y[torch.isclose(stored, key).all(1)][0]) == int(labels[i])
    with torch.no_grad():
        deployed.knn_lambda.fill_(1.0)
        vote = knn_distribution(deployed.features(data.val_x), keys, labels, 3, 2)
        torch.testing.assert_close(deployed(data.val_x).exp(), vote.clamp_min(1e-12))
        torch.testing.assert_close(reloaded("kNN-Per", deployed)(data.val_x), deployed(data.val_x))


# ---- FLUTE -------------------------------------------------------------------------------------
def test_flute_frame_term_vanishes_on_a_simplex_frame():
    present = torch.ones(3)
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    simplex = torch.stack([angles.cos(), angles.sin()], 1) * 5.0  # any scale
    assert float(etf_misalignment(simplex, present)) < 1e-6
    assert float(etf_misalignment(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), present)) > 0.3
    antipodal = torch.tensor([[2.0, -1.0], [-2.0, 1.0]])
    assert float(etf_misalignment(antipodal, torch.ones(2))) < 1e-6


def test_flute_heads_stay_local_and_the_regulariser_shrinks_and_aligns_them(data):
    received = server_weights("FLUTE")

    def trained_head(**hp) -> torch.Tensor:
        state = RecordDict()
        payload, _ = client("FLUTE", data, state, **hp).train(received, {})
        assert set(payload) == {k for k in received if not k.startswith("head.")}  # the head never leaves
        assert any(not torch.equal(torch.as_tensor(payload[k]), received[k]) for k in payload)  # body learnt
        return StateStore(state, "t").load("model")["head.weight"]

    plain = trained_head(lamda1=0.0, lamda2=0.0, lamda3=0.0)
    assert trained_head(lamda1=0.0, lamda2=5.0).norm() < 0.8 * plain.norm()
    present = torch.ones(2)
    assert etf_misalignment(trained_head(lamda1=5.0, lamda2=0.0), present) < etf_misalignment(plain, present)


# ---- pFedFDA -----------------------------------------------------------------------------------
def test_folded_lda_head_is_the_gaussian_posterior():
    g = torch.Generator().manual_seed(0)
    means, a = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(4, 4, generator=g, dtype=torch.float64)
    cov, prior = a @ a.T + 0.5 * torch.eye(4, dtype=torch.float64), torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    z = torch.randn(10, 4, generator=g, dtype=torch.float64)
    weight, bias = lda_head(means, cov, prior)
    log_joint = torch.stack([torch.distributions.MultivariateNormal(m, cov).log_prob(z) for m in means], 1)
    torch.testing.assert_close(torch.softmax(z @ weight.T + bias, 1), torch.softmax(log_joint + prior.log(), 1))


def test_beta_is_chosen_by_cross_validation():
    d, true_means, cov = 8, torch.zeros(2, 8, dtype=torch.float64), 2 * torch.eye(8, dtype=torch.float64)
    true_means[0, 0], true_means[1, 0] = 1.5, -1.5
    y = torch.tensor([0, 1] * 6)
    z = true_means[y] + torch.randn(12, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # few local samples and accurate global statistics: trust the global ones
    assert choose_beta(z, y, true_means, cov, 2, 0) == 0.0
    # global statistics with the classes swapped: mostly the local ones (beta < 1/2 would flip the classifier)
    assert choose_beta(z, y, true_means.flip(0), cov, 2, 0) > 0.5


def test_pfedfda_sends_body_and_statistics_and_deploys_their_lda_classifier(data):
    received = server_weights("pFedFDA")
    received |= {AUX + "means": torch.zeros(2, 64), AUX + "cov": torch.eye(64), AUX + "estimated": torch.zeros(1)}
    payload, _ = client("pFedFDA", data, RecordDict()).train(received, {})
    body = {k for k in received if not k.startswith(("head.", AUX))}
    assert set(payload) == body | {AUX + k for k in ("means", "cov", "prior", "share", "estimated")}
    np.testing.assert_allclose(payload[AUX + "share"], np.bincount(data.train_y.numpy(), minlength=2) / len(data.train_y))
    assert float(payload[AUX + "estimated"][0]) == 1.0
    # global statistics equal to this client's own: whatever beta, the deployed head is their LDA classifier
    back = {k: torch.as_tensor(v) for k, v in payload.items()}
    deployed = client("pFedFDA", data, RecordDict()).predictor(back)
    means, cov, prior = (back[AUX + k].double() for k in ("means", "cov", "prior"))
    with torch.no_grad():
        z = deployed.features(data.val_x).double()
        log_joint = torch.stack([torch.distributions.MultivariateNormal(m, cov).log_prob(z) for m in means], 1)
        expected = torch.softmax(log_joint + prior.log(), 1).float()
        torch.testing.assert_close(torch.softmax(deployed(data.val_x), 1), expected, atol=1e-4, rtol=1e-4)


def test_servers_average_what_is_sent_keep_what_is_not_and_pfedfda_folds_the_global_head():
    rng = np.random.default_rng(0)
    shares = iter([np.array([1.0, 0.0]), np.array([0.5, 0.5])])  # the first client has no class 1

    def reply(n: int) -> tuple[Message, dict[str, np.ndarray]]:
        a = rng.normal(size=(3, 3))
        arrays = {"body.w": rng.normal(size=4), AUX + "means": rng.normal(size=(2, 3)),
                  AUX + "cov": a @ a.T + np.eye(3), AUX + "prior": np.array([0.3, 0.7]),
                  AUX + "share": next(shares), AUX + "estimated": np.ones(1)}  # fmt: skip
        arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
        meta = Metadata(run_id=0, message_id="", src_node_id=n, dst_node_id=0, reply_to_message_id="m", group_id="",
                        created_at=0.0, ttl=60.0, message_type="train")  # fmt: skip
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                              "metrics": MetricRecord({"num-examples": n})})  # fmt: skip
        return Message(content=content, metadata=meta), arrays

    common = {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": 2, "min_evaluate_nodes": 2,
              "min_available_nodes": 2}  # fmt: skip
    (m1, a1), (m2, a2) = reply(10), reply(30)
    strategy = fda_server(hp={}, common=common, plan={}, model=None, param_keys=set(), buffer_keys=set())
    personal = np.arange(3, dtype=np.float32)  # e.g. FedEM's pi: in the server's arrays, sent by no client
    strategy.sent = {**a1, "pi": personal}  # what configure_train last sent
    arrays, _ = strategy.aggregate_train(1, [m1, m2])
    np.testing.assert_array_equal(arrays["pi"].numpy(), personal)  # the arrays stay one whole network
    mean = {k: 0.25 * a1[k] + 0.75 * a2[k] for k in a1}
    # class means pooled by class counts (10 and 15 images of class 0, 0 and 15 of class 1), not by n
    means = a1[AUX + "means"].astype(np.float64)
    mean[AUX + "means"] = np.stack([(10 * means[0] + 15 * a2[AUX + "means"][0]) / 25, a2[AUX + "means"][1]])
    for key, value in mean.items():
        np.testing.assert_allclose(arrays[key].numpy(), value, rtol=1e-5)
    weight, bias = lda_head(*(torch.from_numpy(mean[AUX + k]) for k in ("means", "cov", "prior")))
    np.testing.assert_allclose(arrays["head.weight"].numpy(), weight.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(arrays["head.bias"].numpy(), bias.numpy(), rtol=1e-4, atol=1e-6)


# ---- all four in Flower (the session's simulation of every algorithm, tests/conftest.py) -------------
@pytest.mark.parametrize("name", ["FedEM", "kNN-Per"])
def test_hospital_models_carry_their_personal_buffers(algorithm_runs, name):
    """After two real rounds, each hospital's saved FedEM model holds its own mixture weights and its
    kNN-Per model its datastore of all its training images (test_fl_algorithms checks that these
    models reproduce the reported metrics)."""
    from pathlib import Path

    from fl.data import load_client_data

    result = algorithm_runs[name]
    assert result.status == "completed", result.error
    plan, out = result.config, Path(result.result_path).parent
    for hospital in algorithm_runs["_clients"]:
        model = build_model(name, plan["channels"], 2, plan["image_size"], plan["seed"])
        model.load_state_dict(torch.load(out / "clients" / f"{hospital['name']}.pt", weights_only=True))
        if name == "FedEM":
            assert abs(float(model.pi.sum()) - 1) < 1e-5 and not torch.allclose(model.pi, torch.full((3,), 1 / 3))
        else:
            local = load_client_data(hospital["data_dir"], result.classes, plan["image_size"], plan["channels"],
                                     plan["val_fraction"], plan["seed"], plan["max_images"])  # fmt: skip
            assert int(model.memory_size) == len(local.train_y)
