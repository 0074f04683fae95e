"""A toy algorithm added the way any algorithm is: one module with its client, server and round-1
arrays (loaded through FEDAGENTBENCH_ALGORITHM_MODULES by tests/test_fl_toy_algorithm.py).

ToyMedian: clients train as FedAvg clients and also report their training loss as an array; the
server takes the coordinate-wise median of the clients' weights (robust to one outlier) and keeps
the losses it saw as ``aux.`` arrays, which never enter the saved global model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.serverapp.strategy import Strategy
from torch import nn

from fl.algorithms.base import AUX, ClientAlgorithm
from fl.algorithms.server_base import Arrays, CustomStrategy, arrays_of, to_record

NAME = "ToyMedian"


class ToyClient(ClientAlgorithm):
    """The FedAvg client, plus its training loss as an auxiliary array."""

    def local_train(self, model: nn.Module, global_model: nn.Module) -> float:
        self.last_loss = super().local_train(model, global_model)
        return self.last_loss

    def payload(self, model: nn.Module) -> dict[str, np.ndarray]:
        return {**super().payload(model), AUX + "loss": np.array([self.last_loss], np.float32)}


class MedianServer(CustomStrategy):
    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        contents = self._valid(replies)
        if not contents:
            return None, None
        updates = [arrays_of(c) for c in contents]
        out = {k: np.median([u[k] for u in updates], axis=0) for k in self.sent if not k.startswith(AUX)}
        out[AUX + "losses"] = np.concatenate([u[AUX + "loss"] for u in updates])
        return to_record(out), self._metrics(contents)


def median_server(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
                  param_keys: set[str], buffer_keys: set[str]) -> Strategy:
    return MedianServer(**common)


def toy_initial(model: nn.Module, n_classes: int, weights: Arrays) -> Arrays:
    return {**weights, AUX + "losses": np.zeros(0, np.float32)}


CLIENTS = {NAME: ToyClient}
SERVERS = {NAME: median_server}
INITIAL = {NAME: toy_initial}
