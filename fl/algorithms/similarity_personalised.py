"""Personalised aggregation by similarity: the server builds each client its own model from the
clients whose models or data look alike (pFedSim, FedFomo, FedAP, FedPAC).

Every server here remembers each node's latest upload and sends each node its own arrays
(:class:`fl.algorithms.server_base.PerNode`); what the strategy returns as its global arrays is
always a complete, plainly averaged model, so global_model.pt stays a valid network. The server
halves are mixins combined with PerNode by their factories.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fl.algorithms.base import (
    AUX,
    ClientAlgorithm,
    split_aux,
    suppress_small_classes,
    to_numpy,
)
from fl.algorithms.server_base import PerNode, to_record
from fl.data import LocalData, stratified_split
from fl.models import batchnorm_keys, shareable_keys

Arrays = dict[str, np.ndarray]

#: FedAP's weight of a client's own model in its aggregate (the authors' ``model_momentum`` default)
FEDAP_SELF_WEIGHT = 0.5


def phase_rounds(value: float, rounds: int) -> int:
    """Rounds of a warm-up / pre-training phase: a fraction of ``rounds`` when below 1, else a round
    count; at most rounds - 1, so that the personalised phase happens even in a short run."""
    n = math.ceil(round(value * rounds, 6)) if value < 1 else int(value)
    return max(0, min(n, rounds - 1))


def weighted_mean(entries: list[tuple[Arrays, float]], keys: Iterable[str]) -> Arrays:
    """sum_j w_j a_j[k] / sum_j w_j for each key (FedAvg when w_j are example counts)."""
    total = sum(w for _, w in entries)
    return {k: sum(w * a[k] for a, w in entries) / total for k in keys}


def _head(arrays: Arrays) -> np.ndarray:
    return np.concatenate([arrays[k].ravel() for k in sorted(arrays) if k.startswith("head.")])


def cosine_weights(heads: list[np.ndarray]) -> np.ndarray:
    """pFedSim: row-normalised max(0, cos(h_i, h_j)); the diagonal is 1 before normalising."""
    h = np.stack([v / max(float(np.linalg.norm(v)), 1e-12) for v in heads])
    sim = np.clip(h @ h.T, 0.0, None)
    np.fill_diagonal(sim, 1.0)
    return sim / sim.sum(axis=1, keepdims=True)


def gaussian_distance(a: Arrays, b: Arrays) -> float:
    """FedAP: sum over BatchNorm layers of the 2-Wasserstein distance between the diagonal Gaussians
    N(mean, var) of the layer's input features on two clients."""
    total = 0.0
    for layer in sorted({k.rsplit(".", 1)[0] for k in a}):
        mean = float(((a[f"{layer}.mean"] - b[f"{layer}.mean"]) ** 2).sum())
        std = float(((np.sqrt(a[f"{layer}.var"]) - np.sqrt(b[f"{layer}.var"])) ** 2).sum())
        total += math.sqrt(mean + std)
    return total


def fedap_weights(stats: list[Arrays], self_weight: float = FEDAP_SELF_WEIGHT) -> np.ndarray:
    """FedAP: w_ii = self_weight, the rest shared in proportion to 1 / distance of BN statistics
    (identical statistics: a very large, finite affinity)."""
    n = len(stats)
    if n == 1:
        return np.ones((1, 1))
    affinity = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                affinity[i, j] = 1.0 / max(gaussian_distance(stats[i], stats[j]), 1e-12)
    weights = (1 - self_weight) * affinity / affinity.sum(axis=1, keepdims=True)
    np.fill_diagonal(weights, self_weight)
    return weights


def simplex_qp(p: np.ndarray, sweeps: int = 2000) -> np.ndarray:
    """argmin a^T P a over the probability simplex (P symmetric PSD): a = b / sum(b) for
    b = argmin_{b >= 0} b^T P b / 2 - sum(b), whose KKT conditions are the simplex problem's;
    b by exact coordinate descent (a tiny ridge keeps every coordinate's curvature positive)."""
    n = len(p)
    p = p + np.eye(n) * 1e-9 * max(float(np.trace(p)) / n, 1e-12)
    b = np.zeros(n)
    for _ in range(sweeps):
        change = 0.0
        for j in range(n):
            new = max(0.0, (1.0 - float(p[j] @ b) + p[j, j] * b[j]) / p[j, j])
            change, b[j] = max(change, abs(new - b[j])), new
        if change <= 1e-13 * b.max():
            break
    return b / b.sum()


def fedpac_weights(i: int, means: list[np.ndarray], counts: list[np.ndarray], variances: list[float]) -> np.ndarray:
    """FedPAC's classifier combination for client i: argmin over the simplex of
    sum_k p_i(k) ||sum_j a_j (mu_jk - mu_ik)||^2 + sum_j a_j^2 V_j (bias of the combined class means
    seen from client i, plus the variance of each client's estimate). Class means of a class client j
    lacks are the pooled ones."""
    means, counts = [np.asarray(m, np.float64) for m in means], [np.asarray(c, np.float64) for c in counts]
    pooled = sum(m * c[:, None] for m, c in zip(means, counts)) / np.maximum(sum(counts), 1)[:, None]
    mu = np.stack([np.where(c[:, None] > 0, m, pooled) for m, c in zip(means, counts)])  # (clients, C, d)
    prior = counts[i] / max(float(counts[i].sum()), 1.0)
    diff = (mu - mu[i]) * np.sqrt(prior)[None, :, None]
    flat = diff.reshape(len(means), -1)
    return simplex_qp(flat @ flat.T + np.diag(variances))


class _Remembering:
    """Server half shared by the four: each node's latest upload, and what each node is sent."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.latest: dict[int, tuple[Arrays, float]] = {}
        self.personal: dict[int, Arrays] = {}

    def arrays_for(self, node_id, arrays, message_type):

        return to_record(self.personal[node_id]) if node_id in self.personal else arrays

    def aggregate_train(self, server_round, replies):

        replies = list(replies)
        by_node = self._by_node(replies)
        if not by_node:
            return None, None
        self.latest.update(by_node)
        arrays = self.personalise(server_round, by_node)
        return to_record(arrays), self._metrics(self._valid(replies))

    def global_arrays(self, by_node: dict[int, tuple[Arrays, float]]) -> Arrays:
        """The model weights last sent, each one the nodes returned replaced by its FedAvg (no aux.)."""
        model = {k: v for k, v in self.sent.items() if not k.startswith(AUX)}
        entries = list(by_node.values())
        keys = set.intersection(*(set(a) for a, _ in entries)) & set(model)
        return {**model, **weighted_mean(entries, keys)}

    def personalise(self, server_round: int, by_node: dict[int, tuple[Arrays, float]]) -> Arrays:
        raise NotImplementedError


class PFedSimServer(_Remembering):
    """FedAvg for the warm-up rounds; from the last of them on, each node gets the similarity-weighted
    mean of the latest feature extractors (weights from the cosine similarity of the heads the clients
    upload, as in the paper) and no head, so that its head is never replaced by anyone else's."""

    def __init__(self, warmup: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.warmup = warmup

    def personalise(self, server_round, by_node):
        if server_round < self.warmup:
            return self.global_arrays(by_node)
        nodes = sorted(self.latest)
        models = [self.latest[n][0] for n in nodes]
        self.weights = cosine_weights([_head(m) for m in models])
        body = [k for k in self.sent if not k.startswith("head.")]
        for row, node in zip(self.weights, nodes):
            self.personal[node] = {k: sum(w * m[k] for w, m in zip(row, models)) for k in body}
        return self.global_arrays(by_node)


class FedFomoServer(_Remembering):
    """A relay: each node is sent the other nodes' latest models (``aux.peer<id>.<key>``); a node the
    server has not heard from yet also gets the average model to start from. Evaluation sends
    nothing to a node with a model of its own (it predicts with it)."""

    def arrays_for(self, node_id, arrays, message_type):
        from flwr.app import ArrayRecord, MessageType


        known = node_id in self.latest
        if message_type == MessageType.EVALUATE:
            return ArrayRecord() if known else arrays
        out = {} if known else {k: v.numpy() for k, v in arrays.items()}
        for peer, (model, _) in self.latest.items():
            if peer != node_id:
                out.update({f"{AUX}peer{peer}.{k}": v for k, v in model.items()})
        return to_record(out)

    def personalise(self, server_round, by_node):
        return self.global_arrays(self.latest)


class FedAPServer(_Remembering):
    """FedAvg while pre-training; at the end of it, client affinities from the BatchNorm statistics
    the nodes reported (once, as in the paper); then each node gets sum_j w_ij theta_j over the
    non-BatchNorm weights (its BatchNorm stays local, as in FedBN)."""

    def __init__(self, pretrain: int, bn_keys: set[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.pretrain, self.bn_keys = pretrain, bn_keys
        self.stats: dict[int, Arrays] = {}
        self.nodes: list[int] = []

    def personalise(self, server_round, by_node):
        for node, (arrays, _) in by_node.items():
            stats = {k[len(AUX + "bn.") :]: v for k, v in arrays.items() if k.startswith(AUX + "bn.")}
            if stats:
                self.stats[node] = stats
        if server_round >= self.pretrain and not self.nodes and self.stats:
            self.nodes = sorted(self.stats)
            self.weights = fedap_weights([self.stats[n] for n in self.nodes])
        if self.nodes:
            shared = [k for k in self.sent if k not in self.bn_keys]
            models = [self.latest[n][0] for n in self.nodes]
            for row, node in zip(self.weights, self.nodes):
                self.personal[node] = {k: sum(w * m[k] for w, m in zip(row, models)) for k in shared}
        return self.global_arrays(by_node)


class FedPACServer(_Remembering):
    """Body averaged (FedAvg), global prototype of each class = count-weighted mean of the clients'
    prototypes, and each node's head = sum_j a_ij head_j with a_i from ``fedpac_weights``."""

    def personalise(self, server_round, by_node):
        nodes = sorted(by_node)
        uploads = [by_node[n][0] for n in nodes]
        counts = [u[AUX + "counts"] for u in uploads]
        total = sum(counts)
        protos = sum(u[AUX + "protos"] * c[:, None] for u, c in zip(uploads, counts)) / np.maximum(total, 1)[:, None]
        extra = {AUX + "protos": protos, AUX + "counts": total}
        model = self.global_arrays(by_node)
        heads = [k for k in model if k.startswith("head.")]
        means = [u[AUX + "means"] for u in uploads]
        variances = [float(u[AUX + "var"].reshape(-1)[0]) for u in uploads]
        self.weights = {}
        for node in self.personal.keys() - set(nodes):  # a node that did not train this round keeps its head
            self.personal[node] = {**model, **{k: self.personal[node][k] for k in heads}, **extra}
        for i, node in enumerate(nodes):
            a = fedpac_weights(i, means, counts, variances)
            self.weights[node] = a
            head = {k: sum(w * u[k] for w, u in zip(a, uploads)) for k in heads}
            self.personal[node] = {**model, **head, **extra}
        return {**model, **extra}


def _strategy(server: type, **kwargs: Any):
    """``server`` combined with :class:`PerNode`."""

    return type(server.__name__, (server, PerNode), {})(**kwargs)


def pfedsim_strategy(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
    param_keys: set[str], buffer_keys: set[str]) -> Any:  # fmt: skip
    warmup = phase_rounds(float(hp.get("warmup_round", 0.5)), int(plan.get("rounds", 1)))
    return _strategy(PFedSimServer, warmup=warmup, **common)


def fedfomo_strategy(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
    param_keys: set[str], buffer_keys: set[str]) -> Any:  # fmt: skip
    return _strategy(FedFomoServer, **common)


def fedap_strategy(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
    param_keys: set[str], buffer_keys: set[str]) -> Any:  # fmt: skip
    pretrain = phase_rounds(float(hp.get("pretrain_ratio", 0.3)), int(plan.get("rounds", 1)))
    return _strategy(FedAPServer, pretrain=pretrain, bn_keys=batchnorm_keys(model), **common)


def fedpac_strategy(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
    param_keys: set[str], buffer_keys: set[str]) -> Any:  # fmt: skip
    return _strategy(FedPACServer, **common)


# ---- clients ----------------------------------------------------------------------------------


class PFedSim(ClientAlgorithm):
    """Tan et al. 2023: a FedAvg client that keeps its model and uploads all of it. The server stops
    sending the head after the warm-up, so the head stays this client's own; the body comes
    similarity-aggregated."""

    keeps_local_model = True


class FedFomo(ClientAlgorithm):
    """Zhang et al. 2021: before training, theta_i <- theta_i + sum_j w_j (theta_j - theta_i) with
    w_j proportional to max(0, (L_i(theta_i) - L_i(theta_j)) / ||theta_j - theta_i||) on a held-out
    ``valset_ratio`` of the training data (which is then not trained on)."""

    keeps_local_model = True

    def __init__(self, spec, data, store, round_seed):
        super().__init__(spec, data, store, round_seed)
        data = self.data  # on the training device
        train, held = stratified_split(data.train_y.tolist(), float(self.hp.get("valset_ratio", 0.2)), spec.seed)
        if not held or not train:  # too little data to hold any out: weigh on all of it
            train = held = list(range(len(data.train_y)))
        self.held_x, self.held_y = data.train_x[held], data.train_y[held]
        self.data = LocalData(data.train_x[train], data.train_y[train], data.val_x, data.val_y, data.classes)

    def held_loss(self, model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():  # in batches: the held-out share of a large site does not fit one forward pass
            total = sum(float(F.cross_entropy(model(x), y, reduction="sum"))
                        for x, y in zip(self.held_x.split(256), self.held_y.split(256)))  # fmt: skip
        return total / max(len(self.held_y), 1)

    def combine(self, own: nn.Module, peers: list[dict[str, torch.Tensor]]) -> tuple[nn.Module, list[float]]:
        """The FedFomo update of ``own`` from the peers' models; returns (model, normalised weights)."""
        base_loss = self.held_loss(own)
        own_state = own.state_dict()
        params = [n for n, _ in own.named_parameters()]
        raw = []
        for peer in peers:
            probe = self.new_model()
            probe.load_state_dict(peer, strict=False)
            distance = math.sqrt(sum(float(((peer[n] - own_state[n]) ** 2).sum()) for n in params))
            raw.append(max(0.0, (base_loss - self.held_loss(probe)) / max(distance, 1e-12)))
        total = sum(raw)
        weights = [w / total if total > 0 else 0.0 for w in raw]
        update = {
            k: own_state[k] + sum(w * (peer[k] - own_state[k]) for w, peer in zip(weights, peers))
            for k in shareable_keys(own)
        }
        own.load_state_dict(update, strict=False)
        return own, weights

    def assemble(self, received):
        weights, aux = split_aux(received)
        own = self.store.load("model") is not None
        model = super().assemble({} if own else weights)  # weights come only to a node without a model
        peers: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in aux.items():
            peer, name = key.split(".", 1)
            peers.setdefault(peer, {})[name] = value
        if peers:
            model, self.peer_weights = self.combine(model, [peers[p] for p in sorted(peers)])
        return model


class FedAP(ClientAlgorithm):
    """Lu et al. 2022: while the server still sends BatchNorm weights (pre-training, FedAvg), report
    the mean and variance of each BatchNorm layer's input over the local training data under the
    received shared model; afterwards BatchNorm stays local and only the other weights travel."""

    keeps_local_model = True

    def assemble(self, received):
        model = super().assemble(received)
        self.pretraining = any(k in received for k in batchnorm_keys(model))
        return model

    def personal_keys(self, model):
        return set() if self.pretraining else batchnorm_keys(model)

    def local_train(self, model, global_model):
        self.bn_stats = bn_statistics(global_model, self.data.train_x) if self.pretraining else {}
        return super().local_train(model, global_model)

    def payload(self, model):
        return {**super().payload(model), **{f"{AUX}bn.{k}": v for k, v in self.bn_stats.items()}}


def bn_statistics(model: nn.Module, x: torch.Tensor) -> Arrays:
    """``<layer>.mean`` / ``<layer>.var``: per-channel moments of each BatchNorm layer's input."""
    moments: dict[str, list[torch.Tensor]] = {}  # name -> [count, sum, sum of squares] per channel

    def accumulate(name: str, value: torch.Tensor) -> None:
        dims = [d for d in range(value.dim()) if d != 1]
        value = value.double()
        count = torch.tensor(value.numel() / value.shape[1], device=value.device)
        batch = [count, value.sum(dim=dims), (value**2).sum(dim=dims)]
        moments[name] = [a + b for a, b in zip(moments[name], batch)] if name in moments else batch

    hooks = [
        module.register_forward_hook(lambda m, inputs, out, name=name: accumulate(name, inputs[0]))
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]
    model.eval()
    with torch.no_grad():  # in batches (a large site's images do not fit one forward pass)
        for batch in x.split(256):
            model(batch)
    for hook in hooks:
        hook.remove()
    stats = {}
    for name, (count, total, squares) in moments.items():
        mean = total / count
        stats[f"{name}.mean"] = mean.float()
        stats[f"{name}.var"] = (squares / count - mean**2).clamp(min=0).float()
    return to_numpy(stats)


def class_statistics(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_classes: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(class means of the features, class counts, V): V = mean ||f - mu_y||^2 / n, the variance of
    the client's estimate of its class means."""
    model.eval()
    with torch.no_grad():
        feats = torch.cat([model.features(b) for b in x.split(256)])
    counts = torch.bincount(y, minlength=n_classes).float()
    means = torch.zeros(n_classes, feats.shape[1], device=feats.device).index_add_(0, y, feats)
    means = means / counts.clamp(min=1).unsqueeze(1)
    spread = float(((feats - means[y]) ** 2).sum(1).mean()) / max(len(y), 1)
    return *suppress_small_classes(means, counts), spread


class FedPAC(ClientAlgorithm):
    """Xu et al. 2023: statistics of the features under the received body; then one epoch of the
    head on the frozen body, then the body with CE + lamda * MSE(f(x), c_y) towards the global
    prototypes; sends body, head, class prototypes and the statistics."""

    def assemble(self, received):
        weights, aux = split_aux(received)
        self.global_protos, self.global_counts = aux.get("protos"), aux.get("counts")
        return super().assemble(weights)

    def local_train(self, model, global_model):
        n = self.spec.n_classes
        x, y = self.data.train_x, self.data.train_y
        self.means, _, self.spread = class_statistics(global_model, x, y, n)
        lam = float(self.hp.get("lamda", 1.0))
        protos, counts = self.global_protos, self.global_counts
        head = list(model.head.parameters())
        body = [p for name, p in model.named_parameters() if not name.startswith("head.")]

        def ce(x, y):
            return F.cross_entropy(model(x), y)

        def aligned(x, y):
            feat = model.features(x)
            loss = F.cross_entropy(model.head(feat), y)
            if protos is not None and lam > 0:
                known = counts[y] > 0
                if known.any():
                    loss = loss + lam * F.mse_loss(feat[known], protos[y[known]])
            return loss

        for p in body:
            p.requires_grad_(False)
        self.run_epochs(model, 1, ce, self.sgd(head))
        for p in body:
            p.requires_grad_(True)
        for p in head:
            p.requires_grad_(False)
        loss, _ = self.run_epochs(model, self.spec.local_epochs, aligned, self.sgd(body))
        for p in head:
            p.requires_grad_(True)
        return loss

    def payload(self, model):
        protos, counts, _ = class_statistics(model, self.data.train_x, self.data.train_y, self.spec.n_classes)
        extra = {"protos": protos, "counts": counts, "means": self.means, "var": torch.tensor([self.spread])}
        return {**super().payload(model), **{AUX + k: v for k, v in to_numpy(extra).items()}}


CLIENTS: dict[str, type[ClientAlgorithm]] = {"pFedSim": PFedSim, "FedFomo": FedFomo, "FedAP": FedAP, "FedPAC": FedPAC}

SERVERS = {
    "pFedSim": pfedsim_strategy,
    "FedFomo": fedfomo_strategy,
    "FedAP": fedap_strategy,
    "FedPAC": fedpac_strategy,
}
