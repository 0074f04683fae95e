"""Client side of the traditional (one global model) algorithms.

FedAvg, FedAvgM and FedOpt need only the default client: their difference is on the server.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from fl.algorithms.base import ClientAlgorithm, param_dict, squared_distance, to_numpy

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
        counts = torch.tensor(self.data.class_counts(), dtype=torch.float32).clamp(min=1.0)
        return F.cross_entropy(model(x) - tau * counts.pow(-0.25), y)


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
