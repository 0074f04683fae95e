"""The traditional (one global model) algorithms: their clients and servers.

FedAvg, FedAvgM and FedOpt need only the default client: their difference is on the server
(Flower's FedAvgM and FedAdam/FedYogi/FedAdagrad, on trainable parameters only). SCAFFOLD and
FedDyn keep server state of their own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import Message
from flwr.serverapp.strategy import FedProx as FedProxStrategy
from flwr.serverapp.strategy import Strategy
from torch import nn
from torch.nn import functional as F

from fl.algorithms.base import ClientAlgorithm, param_dict, squared_distance, to_numpy
from fl.algorithms.server_base import (
    Arrays,
    CustomStrategy,
    FedAdagradParams,
    FedAdamParams,
    FedAvgMParams,
    FedYogiParams,
    arrays_of,
    node_weights,
    to_record,
)

#: key prefixes SCAFFOLD uses to carry control variates next to the weights in one ArrayRecord
C_GLOBAL, C_DELTA = "scaffold_c.", "scaffold_dc."


class FedProx(ClientAlgorithm):
    """Li et al. 2020: local loss + mu/2 ||w - w_global||^2. Flower's strategy only sends mu."""

    def local_train(self, model: nn.Module, global_model: nn.Module) -> float:
        mu = float(self.config.get("proximal-mu", self.hp.get("mu", 0.01)))

        def loss_fn(x, y):
            return F.cross_entropy(model(x), y) + mu / 2 * squared_distance(model, global_model)

        return self.run_epochs(model, self.spec.local_epochs, loss_fn, self.sgd(model.parameters()))[0]


class Scaffold(ClientAlgorithm):
    """Karimireddy et al. 2020, option II: correct each step by (c - c_i); plain SGD."""

    def assemble(self, received):
        self.c_global = {k[len(C_GLOBAL) :]: v for k, v in received.items() if k.startswith(C_GLOBAL)}
        return super().assemble({k: v for k, v in received.items() if not k.startswith(C_GLOBAL)})

    def local_train(self, model: nn.Module, global_model: nn.Module) -> float:
        params = param_dict(model)
        c = {n: self.c_global.get(n, torch.zeros_like(p)) for n, p in params.items()}
        c_i = self.store.load("c_i") or {n: torch.zeros_like(p) for n, p in params.items()}

        def correct() -> None:
            for n, p in params.items():
                if p.grad is not None:
                    p.grad.add_(c[n] - c_i[n])

        loss, steps = self.run_epochs(
            model,
            self.spec.local_epochs,
            lambda x, y: F.cross_entropy(model(x), y),
            self.sgd(model.parameters(), momentum=0.0),
            before_step=correct,
        )
        x = param_dict(global_model)
        new_c_i = {n: c_i[n] - c[n] + (x[n] - p.detach()) / (steps * self.spec.lr) for n, p in params.items()}
        self.delta_c = {n: new_c_i[n] - c_i[n] for n in params}
        self.store.save("c_i", new_c_i)
        return loss

    def payload(self, model):
        out = super().payload(model)
        out.update({C_DELTA + k: v for k, v in to_numpy(self.delta_c).items()})
        return out

    def predictor(self, received):
        return super().predictor({k: v for k, v in received.items() if not k.startswith(C_GLOBAL)})


class Moon(ClientAlgorithm):
    """Li, He & Song 2021: CE + mu * contrastive loss (local vs global as positive, previous local as
    negative) on the representation, with temperature tau."""

    def local_train(self, model: nn.Module, global_model: nn.Module) -> float:
        tau, mu = float(self.hp.get("tau", 0.5)), float(self.hp.get("mu", 5.0))
        prev = copy.deepcopy(global_model)
        stored = self.store.load("prev")
        if stored is not None:
            prev.load_state_dict(stored)
        frozen = [copy.deepcopy(global_model).train(), prev.train()]

        def loss_fn(x, y):
            z = model.features(x)
            with torch.no_grad():
                z_glob, z_prev = (m.features(x) for m in frozen)
            pos = F.cosine_similarity(z, z_glob, dim=1) / tau
            neg = F.cosine_similarity(z, z_prev, dim=1) / tau
            contrastive = -torch.log_softmax(torch.stack([pos, neg], dim=1), dim=1)[:, 0].mean()
            return F.cross_entropy(model.head(z), y) + mu * contrastive

        loss = self.run_epochs(model, self.spec.local_epochs, loss_fn, self.sgd(model.parameters()))[0]
        self.store.save("prev", model.state_dict())
        return loss


class FedDyn(ClientAlgorithm):
    """Acar et al. 2021: CE - <grad_L_i, w> + alpha/2 ||w - w_global||^2; then
    grad_L_i <- grad_L_i - alpha (w_i - w_global). The server keeps the matching h state."""

    def local_train(self, model: nn.Module, global_model: nn.Module) -> float:
        alpha = float(self.hp.get("alpha", 0.1))
        params = param_dict(model)
        grad_l = self.store.load("grad_l") or {n: torch.zeros_like(p) for n, p in params.items()}

        def loss_fn(x, y):
            linear = sum((grad_l[n] * p).sum() for n, p in params.items())
            return F.cross_entropy(model(x), y) - linear + alpha / 2 * squared_distance(model, global_model)

        loss = self.run_epochs(model, self.spec.local_epochs, loss_fn, self.sgd(model.parameters()))[0]
        w_g = param_dict(global_model)
        self.store.save("grad_l", {n: grad_l[n] - alpha * (p.detach() - w_g[n]) for n, p in params.items()})
        return loss


class FedLC(ClientAlgorithm):
    """Zhang et al. 2022: train on logits calibrated by local label counts, f_c - tau * n_c^(-1/4)."""

    def loss(self, model, x, y):
        tau = float(self.hp.get("tau", 1.0))
        counts = torch.tensor(self.data.class_counts(), dtype=torch.float32, device=self.device).clamp(min=1.0)
        return F.cross_entropy(model(x) - tau * counts.pow(-0.25), y)


# -- servers ---------------------------------------------------------------------------------------

class ScaffoldServer(CustomStrategy):
    """x <- x + lr_g * mean(y_i - x); c <- c + |S|/N * mean(delta c_i) (Karimireddy et al. 2020)."""

    def __init__(self, global_lr: float = 1.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.global_lr = global_lr

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        contents = self._valid(replies)
        if not contents:
            return None, None
        w = node_weights(contents)
        updates = [arrays_of(c) for c in contents]
        out = {}
        for key, x in self.sent.items():
            if key.startswith(C_GLOBAL):
                delta = np.mean([u[C_DELTA + key[len(C_GLOBAL) :]] for u in updates], axis=0)
                out[key] = x + len(contents) / max(self.n_nodes, 1) * delta
            else:
                y = sum(wi * u[key] for wi, u in zip(w, updates))
                out[key] = x + self.global_lr * (y - x)
        return to_record(out), self._metrics(contents)


class FedDynServer(CustomStrategy):
    """h <- h - alpha/m * sum_i (w_i - w); w <- mean_i(w_i) - h/alpha (Acar et al. 2021)."""

    def __init__(self, alpha: float, param_keys: set[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.alpha, self.param_keys, self.h = alpha, param_keys, {}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        contents = self._valid(replies)
        if not contents:
            return None, None
        updates = [arrays_of(c) for c in contents]
        out = {}
        for key, prev in self.sent.items():
            mean = np.mean([u[key] for u in updates], axis=0)
            if key in self.param_keys:
                h = self.h.get(key, np.zeros_like(prev))
                h = h - self.alpha / max(self.n_nodes, 1) * sum(u[key] - prev for u in updates)
                self.h[key] = h
                mean = mean - h / self.alpha
            out[key] = mean
        return to_record(out), self._metrics(contents)


def fedavgm_server(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
                   param_keys: set[str], buffer_keys: set[str]) -> Strategy:
    return FedAvgMParams(server_learning_rate=float(hp.get("server_lr", 1.0)),
                         server_momentum=float(hp.get("server_momentum", 0.9)), **common)


def fedprox_server(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
                   param_keys: set[str], buffer_keys: set[str]) -> Strategy:
    return FedProxStrategy(proximal_mu=float(hp.get("mu", 0.01)), **common)


def fedopt_server(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
                  param_keys: set[str], buffer_keys: set[str]) -> Strategy:
    variant = str(hp.get("variant", "adam")).lower().removeprefix("fed")
    opt = {"eta": float(hp.get("server_lr", 0.01)), "eta_l": float(plan.get("lr", 0.01)),
           "tau": float(hp.get("tau", 1e-3))}
    if variant in ("adam", "yogi"):
        opt.update(beta_1=float(hp.get("beta_1", 0.9)), beta_2=float(hp.get("beta_2", 0.99)))
    classes = {"adam": FedAdamParams, "yogi": FedYogiParams, "adagrad": FedAdagradParams}
    if variant not in classes:
        raise ValueError(f"FedOpt variant must be adam, yogi or adagrad, not {variant!r}")
    return classes[variant](**opt, **common)


def scaffold_server(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
                    param_keys: set[str], buffer_keys: set[str]) -> Strategy:
    return ScaffoldServer(global_lr=float(hp.get("global_lr", 1.0)), **common)


def feddyn_server(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
                  param_keys: set[str], buffer_keys: set[str]) -> Strategy:
    return FedDynServer(alpha=float(hp.get("alpha", 0.1)), param_keys=param_keys, **common)


def scaffold_initial(model: nn.Module, n_classes: int, weights: Arrays) -> Arrays:
    """The weights and a zero server control variate per trainable parameter."""
    return {**weights, **{C_GLOBAL + n: np.zeros(tuple(p.shape), np.float32) for n, p in model.named_parameters()}}


CLIENTS: dict[str, type[ClientAlgorithm]] = {
    "FedAvg": ClientAlgorithm,
    "FedAvgM": ClientAlgorithm,
    "FedOpt": ClientAlgorithm,
    "FedProx": FedProx,
    "SCAFFOLD": Scaffold,
    "MOON": Moon,
    "FedDyn": FedDyn,
    "FedLC": FedLC,
}

SERVERS = {"FedAvgM": fedavgm_server, "FedProx": fedprox_server, "FedOpt": fedopt_server,
           "SCAFFOLD": scaffold_server, "FedDyn": feddyn_server}
INITIAL = {"SCAFFOLD": scaffold_initial}
