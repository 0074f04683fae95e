"""Server side: the Flower strategy, round-1 arrays and saved weights of any registry algorithm.

Every algorithm brings its own server through its module's ``SERVERS``/``INITIAL`` tables
(:mod:`fl.algorithms.server_base` has the protocol and the bases); an algorithm without a server of
its own is served by Flower's FedAvg (FedLC, MOON, FedBN, FedPer, FedRep, LG-FedAvg, FedBABU, Ditto,
APFL, FedRoD, FedSR, ... differ only on the client). Nothing here names an algorithm.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg, Strategy

from fl.algorithms.base import AUX
from fl.algorithms.server_base import PlainBuffers, to_record


def build_strategy(
    algorithm: str,
    hp: dict[str, Any],
    n_clients: int,
    fraction_train: float,
    client_lr: float,
    param_keys: set[str],
    buffer_keys: set[str],
    plan: dict[str, Any] | None = None,
    model: Any = None,
) -> Strategy:
    """The Flower strategy for a registry algorithm, sized for ``n_clients`` nodes: its module's
    :class:`fl.algorithms.server_base.ServerFactory`, or FedAvg."""
    from fl.algorithms import server_factory

    n_train = max(1, round(fraction_train * n_clients))
    common: dict[str, Any] = {
        "fraction_train": n_train / n_clients,
        "fraction_evaluate": 1.0,
        "min_train_nodes": n_train,
        "min_evaluate_nodes": n_clients,
        "min_available_nodes": n_clients,
    }
    factory = server_factory(algorithm)
    if factory is None:
        return FedAvg(**common)
    strategy = factory(hp=hp, common=common, plan={**(plan or {}), "lr": client_lr}, model=model,
                       param_keys=param_keys, buffer_keys=buffer_keys)
    if isinstance(strategy, PlainBuffers):
        strategy.buffer_keys = frozenset(buffer_keys)
    return strategy


def initial_arrays(algorithm: str, model: Any, n_classes: int) -> ArrayRecord:
    """What the server sends in round 1: the network's shareable weights, or what the algorithm's
    ``INITIAL`` function makes of them."""
    from fl.algorithms import initial_function
    from fl.models import shareable_keys

    state = model.state_dict()
    weights = {k: state[k].detach().numpy() for k in shareable_keys(model)}
    initial = initial_function(algorithm)
    return to_record(initial(model, n_classes, weights) if initial is not None else weights)


def model_arrays(arrays: ArrayRecord, model: Any) -> dict[str, np.ndarray]:
    """The global model's weights among the strategy's arrays: the network's own keys (no control
    variates, prototypes or ``aux.`` arrays)."""
    keys = set(model.state_dict())
    return {k: v.numpy() for k, v in arrays.items() if k in keys and not k.startswith(AUX)}
