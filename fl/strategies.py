"""Server side: Flower's built-in Message-API strategies where they exist, custom ones otherwise.

Built-ins: FedAvg (also the server of FedLC, MOON, FedBN, FedPer, FedRep, LG-FedAvg, FedBABU, Ditto,
APFL, FedRoD, FedSR, which differ only on the client), FedAvgM, FedProx, FedAdam / FedYogi /
FedAdagrad. Custom: SCAFFOLD (server control variate), FedDyn (server state h), FedProto
(prototype averaging), Local-Only (no aggregation).

Server optimisers (FedAvgM, FedOpt) act on trainable parameters only: BatchNorm running statistics
are plainly averaged, since a momentum or Adam step could push a running variance below zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fl.algorithms.base import AUX
from fl.algorithms.traditional import C_DELTA, C_GLOBAL


def _weights(contents: list) -> np.ndarray:
    w = np.array([float(next(iter(c.metric_records.values()))["num-examples"]) for c in contents])
    return w / w.sum()


def _arrays(content) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in next(iter(content.array_records.values())).items()}


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
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


class _Custom(FedAvg):
    """Base of the custom strategies: remembers what it sent and how many nodes exist."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self.sent = {k: v.numpy() for k, v in arrays.items()}
        self.n_nodes = len(list(grid.get_node_ids()))
        return super().configure_train(server_round, arrays, config, grid)

    def _valid(self, replies: Iterable[Message]) -> list:
        return [m.content for m in replies if not m.has_error()]

    def _metrics(self, contents: list) -> MetricRecord | None:
        return self.train_metrics_aggr_fn(contents, self.weighted_by_key) if contents else None

    def _by_node(self, replies: Iterable[Message]) -> dict[int, tuple[dict[str, np.ndarray], float]]:
        """node id -> (the arrays it sent, its number of training examples), for valid replies."""
        return {
            m.metadata.src_node_id: (_arrays(m.content), float(next(iter(m.content.metric_records.values()))["num-examples"]))
            for m in replies if not m.has_error()
        }  # fmt: skip


class PerNode(_Custom):
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


class Scaffold(_Custom):
    """x <- x + lr_g * mean(y_i - x); c <- c + |S|/N * mean(delta c_i) (Karimireddy et al. 2020)."""

    def __init__(self, global_lr: float = 1.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.global_lr = global_lr

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        contents = self._valid(replies)
        if not contents:
            return None, None
        w = _weights(contents)
        updates = [_arrays(c) for c in contents]
        out = {}
        for key, x in self.sent.items():
            if key.startswith(C_GLOBAL):
                delta = np.mean([u[C_DELTA + key[len(C_GLOBAL) :]] for u in updates], axis=0)
                out[key] = x + len(contents) / max(self.n_nodes, 1) * delta
            else:
                y = sum(wi * u[key] for wi, u in zip(w, updates))
                out[key] = x + self.global_lr * (y - x)
        return _record(out), self._metrics(contents)


class FedDynServer(_Custom):
    """h <- h - alpha/m * sum_i (w_i - w); w <- mean_i(w_i) - h/alpha (Acar et al. 2021)."""

    def __init__(self, alpha: float, param_keys: set[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.alpha, self.param_keys, self.h = alpha, param_keys, {}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        contents = self._valid(replies)
        if not contents:
            return None, None
        updates = [_arrays(c) for c in contents]
        out = {}
        for key, prev in self.sent.items():
            mean = np.mean([u[key] for u in updates], axis=0)
            if key in self.param_keys:
                h = self.h.get(key, np.zeros_like(prev))
                h = h - self.alpha / max(self.n_nodes, 1) * sum(u[key] - prev for u in updates)
                self.h[key] = h
                mean = mean - h / self.alpha
            out[key] = mean
        return _record(out), self._metrics(contents)


class PrototypeServer(_Custom):
    """Global prototype of class c = count-weighted mean of the clients' prototypes (Tan et al. 2022)."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        contents = self._valid(replies)
        if not contents:
            return None, None
        updates = [_arrays(c) for c in contents]
        counts = sum(u["counts"] for u in updates)
        protos = sum(u["protos"] * u["counts"][:, None] for u in updates) / np.maximum(counts, 1)[:, None]
        return _record({"protos": protos, "counts": counts}), self._metrics(contents)


class LocalOnlyServer(_Custom):
    """Nothing is aggregated: the server only schedules rounds and collects metrics."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        return ArrayRecord(), self._metrics(self._valid(replies))


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
    """The Flower strategy for a registry algorithm, sized for ``n_clients`` nodes. An algorithm
    module's own factory (``SERVERS`` in fl/algorithms/<module>.py) is called as
    ``factory(hp=, common=, plan=, model=, param_keys=, buffer_keys=)``."""
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
    if factory is not None:
        strategy: Strategy = factory(hp=hp, common=common, plan=plan or {}, model=model, param_keys=param_keys,
                                     buffer_keys=buffer_keys)  # fmt: skip
    elif algorithm == "FedAvgM":
        strategy = FedAvgMParams(
            server_learning_rate=float(hp.get("server_lr", 1.0)),
            server_momentum=float(hp.get("server_momentum", 0.9)),
            **common,
        )
    elif algorithm == "FedProx":
        strategy = FedProx(proximal_mu=float(hp.get("mu", 0.01)), **common)
    elif algorithm == "FedOpt":
        variant = str(hp.get("variant", "adam")).lower().removeprefix("fed")
        opt = {"eta": float(hp.get("server_lr", 0.01)), "eta_l": client_lr, "tau": float(hp.get("tau", 1e-3))}
        if variant in ("adam", "yogi"):
            opt.update(beta_1=float(hp.get("beta_1", 0.9)), beta_2=float(hp.get("beta_2", 0.99)))
        classes = {"adam": FedAdamParams, "yogi": FedYogiParams, "adagrad": FedAdagradParams}
        if variant not in classes:
            raise ValueError(f"FedOpt variant must be adam, yogi or adagrad, not {variant!r}")
        strategy = classes[variant](**opt, **common)
    elif algorithm == "SCAFFOLD":
        strategy = Scaffold(global_lr=float(hp.get("global_lr", 1.0)), **common)
    elif algorithm == "FedDyn":
        strategy = FedDynServer(alpha=float(hp.get("alpha", 0.1)), param_keys=param_keys, **common)
    elif algorithm == "FedProto":
        strategy = PrototypeServer(**common)
    elif algorithm == "Local-Only":
        strategy = LocalOnlyServer(**common)
    else:
        strategy = FedAvg(**common)
    if isinstance(strategy, PlainBuffers):
        strategy.buffer_keys = frozenset(buffer_keys)
    return strategy


def initial_arrays(algorithm: str, model: Any, n_classes: int) -> ArrayRecord:
    """What the server sends in round 1."""
    from fl.algorithms import initial_extras
    from fl.models import shareable_keys

    state = model.state_dict()
    arrays = {k: state[k].detach().numpy() for k in shareable_keys(model)}
    if algorithm == "SCAFFOLD":
        arrays.update({C_GLOBAL + n: np.zeros(tuple(p.shape), np.float32) for n, p in model.named_parameters()})
    elif algorithm == "FedProto":
        arrays = {
            "protos": np.zeros((n_classes, model.feature_dim), np.float32),
            "counts": np.zeros(n_classes, np.float32),
        }
    elif algorithm == "Local-Only":
        arrays = {}
    extras = initial_extras(algorithm)
    if extras is not None:
        arrays.update({k if k.startswith(AUX) else AUX + k: v for k, v in extras(model, n_classes).items()})
    return _record(arrays)


def model_arrays(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """The global model's weights in the strategy's arrays (no control variates or prototypes)."""
    return {k: v.numpy() for k, v in arrays.items()
            if not k.startswith((C_GLOBAL, AUX)) and k not in ("protos", "counts")}  # fmt: skip
