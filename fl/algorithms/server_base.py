"""What an algorithm's server side is built from: the factory protocol and the strategy bases.

An algorithm module declares, by registry name, ``CLIENTS`` (its ClientAlgorithm) and where it needs
them ``SERVERS`` (a :class:`ServerFactory`), ``MODELS`` (a network class) and ``INITIAL`` (an
:class:`InitialArrays` function). Everything a server needs is here, public, so that no algorithm
module reaches into :mod:`fl.strategies` and no if/elif chain there names an algorithm.

Server optimisers (FedAvgM, FedOpt) act on trainable parameters only: :class:`PlainBuffers` puts the
plain average back for BatchNorm running statistics, which a momentum or Adam step could push below
zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    Strategy,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fl.algorithms.base import AUX

Arrays = dict[str, np.ndarray]


class ServerFactory(Protocol):
    """Builds an algorithm's Flower strategy.

    ``hp``: the registry's hyper-parameters (with the plan's overrides); ``common``: the Flower
    strategy arguments every strategy takes (fractions and minimum node counts); ``plan``: the whole
    training plan (``lr`` is the clients' learning rate); ``model``: the network of round 1;
    ``param_keys`` / ``buffer_keys``: its trainable parameters and its other shared arrays."""

    def __call__(self, *, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: Any,
                 param_keys: set[str], buffer_keys: set[str]) -> Strategy: ...


class InitialArrays(Protocol):
    """What the server sends in round 1: given the network's shareable ``weights``, the whole record
    (e.g. the weights plus ``aux.`` arrays, control variates, or no weights at all)."""

    def __call__(self, model: Any, n_classes: int, weights: Arrays) -> Arrays: ...


def with_aux(extras: Any) -> InitialArrays:
    """An :class:`InitialArrays` that sends the weights plus ``extras(model, n_classes)`` as ``aux.`` arrays."""

    def initial(model: Any, n_classes: int, weights: Arrays) -> Arrays:
        added = extras(model, n_classes)
        return {**weights, **{k if k.startswith(AUX) else AUX + k: v for k, v in added.items()}}

    return initial


def node_weights(contents: list) -> np.ndarray:
    """Each reply's share of the training examples."""
    w = np.array([float(next(iter(c.metric_records.values()))["num-examples"]) for c in contents])
    return w / w.sum()


def arrays_of(content: RecordDict) -> Arrays:
    """The arrays of one reply's content."""
    return {k: v.numpy() for k, v in next(iter(content.array_records.values())).items()}


def to_record(arrays: Arrays) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()})


class PlainBuffers:
    """Mixin: replace the server optimiser's result for non-parameter keys by the plain average."""

    buffer_keys: frozenset[str] = frozenset()

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        valid = [m.content for m in replies if not m.has_error()]
        if arrays is None or not valid or not self.buffer_keys:
            return arrays, metrics
        plain = aggregate_arrayrecords(valid, "num-examples")
        for key in self.buffer_keys & set(arrays.keys()):
            arrays[key] = plain[key]
        return arrays, metrics


class FedAvgMParams(PlainBuffers, FedAvgM):
    pass


class FedAdamParams(PlainBuffers, FedAdam):
    pass


class FedYogiParams(PlainBuffers, FedYogi):
    pass


class FedAdagradParams(PlainBuffers, FedAdagrad):
    pass


class CustomStrategy(FedAvg):
    """Base of hand-written strategies: remembers what it sent and how many nodes exist; override
    ``aggregate_train``."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self.sent = {k: v.numpy() for k, v in arrays.items()}
        self.n_nodes = len(list(grid.get_node_ids()))
        return super().configure_train(server_round, arrays, config, grid)

    def _valid(self, replies: Iterable[Message]) -> list:
        return [m.content for m in replies if not m.has_error()]

    def _metrics(self, contents: list) -> MetricRecord | None:
        return self.train_metrics_aggr_fn(contents, self.weighted_by_key) if contents else None

    def _by_node(self, replies: Iterable[Message]) -> dict[int, tuple[Arrays, float]]:
        """node id -> (the arrays it sent, its number of training examples), for valid replies."""
        return {
            m.metadata.src_node_id: (arrays_of(m.content), float(next(iter(m.content.metric_records.values()))["num-examples"]))
            for m in replies if not m.has_error()
        }  # fmt: skip


class PerNode(CustomStrategy):
    """Base of strategies that send each node its own arrays (a cluster's model, a hypernetwork's
    output, a similarity-weighted aggregate): override ``arrays_for``. Replies are told apart by
    ``msg.metadata.src_node_id``, which stays the same for a hospital through a training."""

    def arrays_for(self, node_id: int, arrays: ArrayRecord, message_type: str) -> ArrayRecord:
        return arrays

    def _construct_messages(self, record: RecordDict, node_ids: list[int], message_type: str) -> Iterable[Message]:
        arrays, config = record[self.arrayrecord_key], record[self.configrecord_key]
        return [
            Message(content=RecordDict({self.arrayrecord_key: self.arrays_for(node, arrays, message_type),
                                        self.configrecord_key: config}),
                    message_type=message_type, dst_node_id=node)
            for node in node_ids
        ]  # fmt: skip
