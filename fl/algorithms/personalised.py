"""The personalised algorithms: each client ends up with its own model.

Personal parts are kept in Flower's ``context.state`` and never sent; evaluation uses the client's
personalised model on its own validation split. Every ``predictor`` is one plain network of the
algorithm's architecture (APFL's mixture and FedRoD's two heads are folded into one), so after the
last round each hospital can keep its model as a file that the outcome scoring evaluates. FedProto
(prototype averaging) and Local-Only (no aggregation) bring servers of their own; the others are
served by FedAvg.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message
from flwr.serverapp.strategy import Strategy
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from fl.algorithms.base import (
    ClientAlgorithm,
    param_dict,
    squared_distance,
    suppress_small_classes,
)
from fl.algorithms.server_base import Arrays, CustomStrategy, arrays_of, to_record
from fl.models import batchnorm_keys, shareable_keys


def head_keys(model: nn.Module) -> set[str]:
    return {k for k in model.state_dict() if k.startswith("head.")}


class FedBN(ClientAlgorithm):
    """Li et al. 2021: BatchNorm parameters and statistics stay local; the rest is averaged."""

    keeps_local_model = True

    def personal_keys(self, model):
        return batchnorm_keys(model)


class FedPer(ClientAlgorithm):
    """Arivazhagan et al. 2019: shared body, personal head; both trained locally."""

    keeps_local_model = True

    def personal_keys(self, model):
        return head_keys(model)


class LGFedAvg(ClientAlgorithm):
    """Liang et al. 2020: local representation layers, the top ``num_global_layers`` are global."""

    keeps_local_model = True

    def personal_keys(self, model):
        layers = [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
        global_layers = layers[-int(self.hp.get("num_global_layers", 1)) :]
        return {k for k in shareable_keys(model) if not any(k.startswith(g + ".") for g in global_layers)}


class FedRep(FedPer):
    """Collins et al. 2021: fit the personal head on the frozen body first, then update the body."""

    def local_train(self, model, global_model):
        head = list(model.head.parameters())
        body = [p for n, p in model.named_parameters() if not n.startswith("head.")]

        def ce(x, y):
            return F.cross_entropy(model(x), y)

        for p in body:
            p.requires_grad_(False)
        self.run_epochs(model, self.spec.local_epochs, ce, self.sgd(head))
        for p in body:
            p.requires_grad_(True)
        for p in head:
            p.requires_grad_(False)
        loss, _ = self.run_epochs(model, int(self.hp.get("train_body_epochs", 1)), ce, self.sgd(body))
        for p in head:
            p.requires_grad_(True)
        return loss


class FedBABU(ClientAlgorithm):
    """Oh et al. 2022: the head stays at its (shared) random initialisation during federated
    training and only the body is learnt and averaged; each client fine-tunes before predicting."""

    def shared_keys(self, model):
        return [k for k in shareable_keys(model) if k not in head_keys(model)]

    def local_train(self, model, global_model):
        body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
        return self.run_epochs(
            model, self.spec.local_epochs, lambda x, y: F.cross_entropy(model(x), y), self.sgd(body)
        )[0]

    def predictor(self, received):
        model = self.assemble(received)
        epochs = int(self.hp.get("finetune_epochs", 1))
        self.run_epochs(model, epochs, lambda x, y: F.cross_entropy(model(x), y), self.sgd(model.parameters()))
        return model.eval()


def _personal_model(store, global_model: nn.Module) -> nn.Module:
    """This client's personal model from earlier rounds (first round: a copy of the global one), trainable."""
    personal = copy.deepcopy(global_model)
    stored = store.load("personal")
    if stored is not None:
        personal.load_state_dict(stored)
    for p in personal.parameters():
        p.requires_grad_(True)
    return personal


class Ditto(ClientAlgorithm):
    """Li et al. 2021: train the global model as FedAvg, and a personal model v with
    CE(v) + lambda/2 ||v - w_global||^2; predict with v."""

    def local_train(self, model, global_model):
        loss = super().local_train(model, global_model)
        lam = float(self.hp.get("lamda", 1.0))
        personal = _personal_model(self.store, global_model)

        def loss_fn(x, y):
            return F.cross_entropy(personal(x), y) + lam / 2 * squared_distance(personal, global_model)

        self.run_epochs(personal, self.spec.local_epochs, loss_fn, self.sgd(personal.parameters()))
        self.store.save("personal", personal.state_dict())
        return loss

    def predictor(self, received):
        stored = self.store.load("personal")
        if stored is None:
            return super().predictor(received)
        model = self.new_model()
        model.load_state_dict(stored)
        return model.eval()


class APFL(ClientAlgorithm):
    """Deng et al. 2020: personal model v mixed with the global w as alpha*v + (1-alpha)*w; v and
    alpha descend the loss of the mixture, w trains as in FedAvg."""

    @staticmethod
    def _mixed(v: nn.Module, w_params: dict, alpha: torch.Tensor):
        """Forward pass of the mixed parameters (v's BatchNorm statistics)."""

        def forward(x: torch.Tensor) -> torch.Tensor:
            mixed = {n: alpha * p + (1 - alpha) * w_params[n].detach() for n, p in v.named_parameters()}
            return functional_call(v, {**mixed, **dict(v.named_buffers())}, (x,))

        return forward

    def local_train(self, model, global_model):
        v = _personal_model(self.store, global_model)
        alpha = torch.tensor(self.store.scalar("alpha", float(self.hp.get("alpha", 0.5))), device=self.device,
                             requires_grad=True)  # fmt: skip
        opt_w, opt_v = self.sgd(model.parameters()), self.sgd(list(v.parameters()) + [alpha], momentum=0.0)
        w_params = param_dict(model)
        mixture = self._mixed(v, w_params, alpha)

        def loss_fn(x, y):
            loss_w = F.cross_entropy(model(x), y)
            opt_v.zero_grad()
            F.cross_entropy(mixture(x), y).backward()
            opt_v.step()
            with torch.no_grad():
                alpha.clamp_(0.0, 1.0)
            return loss_w

        v.train()
        loss = self.run_epochs(model, self.spec.local_epochs, loss_fn, opt_w)[0]
        self.store.save("personal", v.state_dict())
        self.store.set_scalar("alpha", float(alpha.detach()))
        return loss

    def predictor(self, received):
        w = self.assemble(received)
        stored = self.store.load("personal")
        if stored is None:
            return w.eval()
        v = self.new_model()
        v.load_state_dict(stored)
        alpha = self.store.scalar("alpha", float(self.hp.get("alpha", 0.5)))
        # the mixture as one network: alpha*v + (1-alpha)*w for parameters, v's BatchNorm statistics
        # (exactly what ``_mixed`` computes, so the model can be saved and scored like any other)
        w_params = param_dict(w)
        with torch.no_grad():
            for name, p in v.named_parameters():
                p.copy_(alpha * p + (1 - alpha) * w_params[name])
        return v.eval()


class FedRoD(ClientAlgorithm):
    """Chen & Chao 2022: body + generic head trained with the balanced-softmax loss and averaged;
    a personal head on the detached features fits CE(generic + personal logits). ``gamma`` scales
    the log label prior of the balanced softmax (1 = the paper's loss)."""

    def _personal_head(self, model) -> nn.Linear:
        head = copy.deepcopy(model.head)
        stored = self.store.load("p_head")
        if stored is not None:
            head.load_state_dict(stored)
        return head

    def local_train(self, model, global_model):
        gamma = float(self.hp.get("gamma", 1.0))
        counts = torch.tensor(self.data.class_counts(), dtype=torch.float32, device=self.device).clamp(min=1e-8)
        p_head = self._personal_head(global_model)
        for p in p_head.parameters():
            p.requires_grad_(True)
        opt_p = self.sgd(p_head.parameters())

        def loss_fn(x, y):
            feat = model.features(x)
            logit_g = model.head(feat)
            opt_p.zero_grad()
            F.cross_entropy(logit_g.detach() + p_head(feat.detach()), y).backward()
            opt_p.step()
            return F.cross_entropy(logit_g + gamma * counts.log(), y)  # balanced softmax

        loss = self.run_epochs(model, self.spec.local_epochs, loss_fn, self.sgd(model.parameters()))[0]
        self.store.save("p_head", p_head.state_dict())
        return loss

    def predictor(self, received):
        model = self.assemble(received).eval()
        p_head = self._personal_head(model)
        # generic + personal logits of one feature vector: both heads are linear, so one head whose
        # weights are their sums gives the same logits (and a model that saves like any other)
        with torch.no_grad():
            model.head.weight.add_(p_head.weight)
            model.head.bias.add_(p_head.bias)
        return model


class FedProto(ClientAlgorithm):
    """Tan et al. 2022: only class prototypes travel. Local loss CE + lambda * MSE(feature,
    global prototype of its class); the model itself never leaves the client."""

    keeps_local_model = True

    def assemble(self, received):
        self.global_protos = received.get("protos")
        self.global_counts = received.get("counts")
        return super().assemble({})

    def local_train(self, model, global_model):
        lam = float(self.hp.get("lamda", 1.0))
        protos, counts = self.global_protos, self.global_counts

        def loss_fn(x, y):
            feat = model.features(x)
            loss = F.cross_entropy(model.head(feat), y)
            if protos is not None:
                known = counts[y] > 0
                if known.any():
                    loss = loss + lam * F.mse_loss(feat[known], protos[y[known]])
            return loss

        return self.run_epochs(model, self.spec.local_epochs, loss_fn, self.sgd(model.parameters()))[0]

    def payload(self, model):
        model.eval()
        with torch.no_grad():
            feats = torch.cat([model.features(x) for x in self.data.train_x.split(256)])
        n, y = self.spec.n_classes, self.data.train_y
        protos = torch.zeros(n, feats.shape[1], device=feats.device)
        protos.index_add_(0, y, feats)
        counts = torch.bincount(y, minlength=n).float()
        protos, counts = suppress_small_classes(protos / counts.clamp(min=1).unsqueeze(1), counts)
        return {"protos": protos.cpu().numpy(), "counts": counts.cpu().numpy()}

    def predictor(self, received):
        return self.assemble(received).eval()


class LocalOnly(ClientAlgorithm):
    """No federation: each client trains its own model and sends nothing."""

    keeps_local_model = True

    def assemble(self, received):
        return super().assemble({})

    def payload(self, model) -> dict[str, np.ndarray]:
        return {}


CLIENTS: dict[str, type[ClientAlgorithm]] = {
    "FedBN": FedBN,
    "FedPer": FedPer,
    "LG-FedAvg": LGFedAvg,
    "FedRep": FedRep,
    "FedBABU": FedBABU,
    "Ditto": Ditto,
    "APFL": APFL,
    "FedRoD": FedRoD,
    "FedProto": FedProto,
    "Local-Only": LocalOnly,
}


# -- servers ---------------------------------------------------------------------------------------

class PrototypeServer(CustomStrategy):
    """Global prototype of class c = count-weighted mean of the clients' prototypes (Tan et al. 2022)."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        contents = self._valid(replies)
        if not contents:
            return None, None
        updates = [arrays_of(c) for c in contents]
        counts = sum(u["counts"] for u in updates)
        protos = sum(u["protos"] * u["counts"][:, None] for u in updates) / np.maximum(counts, 1)[:, None]
        return to_record({"protos": protos, "counts": counts}), self._metrics(contents)


class LocalOnlyServer(CustomStrategy):
    """Nothing is aggregated: the server only schedules rounds and collects metrics."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        return ArrayRecord(), self._metrics(self._valid(replies))


def prototype_server(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
                     param_keys: set[str], buffer_keys: set[str]) -> Strategy:
    return PrototypeServer(**common)


def local_only_server(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
                      param_keys: set[str], buffer_keys: set[str]) -> Strategy:
    return LocalOnlyServer(**common)


def prototype_initial(model: nn.Module, n_classes: int, weights: Arrays) -> Arrays:
    """No weights: empty prototypes (counts 0: clients train without the prototype term in round 1)."""
    return {"protos": np.zeros((n_classes, model.feature_dim), np.float32), "counts": np.zeros(n_classes, np.float32)}


def nothing_initial(model: nn.Module, n_classes: int, weights: Arrays) -> Arrays:
    return {}


SERVERS = {"FedProto": prototype_server, "Local-Only": local_only_server}
INITIAL = {"FedProto": prototype_initial, "Local-Only": nothing_initial}
