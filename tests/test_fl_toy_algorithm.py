"""Adding an algorithm: one module (tests/toy_algorithm.py) declares its client, server and round-1
arrays; nothing in fl/ changes, and the same lookups that serve the 40 serve it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict

from fl.algorithms import EXTRA_MODULES_ENV, client_algorithm, implemented, initial_function, server_factory
from fl.algorithms.base import AUX, RunSpec, StateStore
from fl.models import build_model, shareable_keys
from fl.strategies import build_strategy, initial_arrays, model_arrays

from .test_fl_server_assisted import _data, _Grid, _reply, server_process  # noqa: F401 - a fixture
from .toy_algorithm import NAME, MedianServer, ToyClient


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setenv(EXTRA_MODULES_ENV, "tests.toy_algorithm")
    torch.set_num_threads(1)
    torch.manual_seed(0)


def test_an_algorithm_module_outside_the_package_is_found_only_when_named(monkeypatch):
    monkeypatch.delenv(EXTRA_MODULES_ENV, raising=False)
    assert NAME not in implemented() and server_factory(NAME) is None
    monkeypatch.setenv(EXTRA_MODULES_ENV, "tests.toy_algorithm")
    assert NAME in implemented() and client_algorithm(NAME) is ToyClient and initial_function(NAME) is not None


def test_the_toy_algorithm_trains_a_round_through_the_same_path_as_the_forty(toy, server_process):  # noqa: F811
    model = build_model(NAME, 1, 2, 28, 0)
    params = {n for n, _ in model.named_parameters()}
    strategy = build_strategy(NAME, {}, 3, 1.0, 0.05, param_keys=params,
                              buffer_keys=set(shareable_keys(model)) - params, plan={"rounds": 1}, model=model)
    assert isinstance(strategy, MedianServer)
    first = initial_arrays(NAME, model, 2)
    assert AUX + "losses" in first.keys() and set(model_arrays(first, model)) == set(shareable_keys(model))

    class Grid3(_Grid):
        def get_node_ids(self):
            return [11, 22, 33]

    strategy.configure_train(1, first, ConfigRecord({}), Grid3())
    received = {k: torch.from_numpy(v.numpy()) for k, v in first.items()}
    spec = RunSpec(run_tag="t", algorithm=NAME, classes=["a", "b"], channels=1, image_size=28, batch_size=4, lr=0.05)
    uploads = []
    for node, seed in zip((11, 22, 33), (0, 1, 2)):
        client = client_algorithm(NAME)(spec, _data(seed), StateStore(RecordDict(), "t"), round_seed=1)
        payload, metrics = client.train(received, {})
        assert payload[AUX + "loss"][0] == pytest.approx(metrics["train_loss"])
        uploads.append(_reply(node, payload))
    record, _ = strategy.aggregate_train(1, uploads)
    merged = {k: v.numpy() for k, v in record.items()}
    sent = [{k: v.numpy() for k, v in next(iter(m.content.array_records.values())).items()} for m in uploads]
    for key in shareable_keys(model):
        np.testing.assert_allclose(merged[key], np.median([s[key] for s in sent], axis=0), rtol=1e-6)
    assert sorted(merged[AUX + "losses"]) == sorted(s[AUX + "loss"][0] for s in sent)
    saved = model_arrays(record, model)
    assert set(saved) == set(shareable_keys(model))  # the losses never enter global_model.pt
    assert any(not np.allclose(saved[k], first[k].numpy()) for k in params)  # it trained
