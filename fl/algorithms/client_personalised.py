"""Personalisation the client works out for itself: a meta-learnt initialisation adapted in one step
(Per-FedAvg), a Moreau-envelope personal model (pFedMe), an element-wise learnt blend of the global
and the local model (FedALA), a body aligned to the local head with Fisher-weighted aggregation
(FedAS), and knowledge passed around a ring of clients by distillation (MetaFed).

Every ``predictor`` returns one plain network of the algorithm's architecture (the SplitNet), so
each hospital's deployed model can be saved and scored like any other. The server is FedAvg except
for pFedMe (its beta-mixing), FedAS (weights from the clients' Fisher information) and MetaFed (a
ring: each node is sent its predecessor's model), built from :mod:`fl.algorithms.server_base`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fl.algorithms.base import ClientAlgorithm, param_dict, squared_distance
from fl.algorithms.server_base import CustomStrategy, PerNode, arrays_of, to_record
from fl.data import train_loader


def _ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def _load(model: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """``model`` with the entries of ``tensors`` it has (the rest unchanged)."""
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in tensors.items() if k in own}, strict=False)
    return model


# ---- Per-FedAvg --------------------------------------------------------------------------------


class PerFedAvg(ClientAlgorithm):
    """Fallah et al. 2020: every local step is a MAML step. temp = w - alpha grad L(w; D1), then
    w <- w - beta g with g = grad L(temp; D2) (version "fo") or, "hf", g = (I - alpha H(w; D3))
    grad L(temp; D2). alpha is the client learning rate. The Hessian-vector product is computed
    exactly by double back-propagation (the paper estimates it by finite differences of gradients).
    The deployed model is the global one after one SGD step (alpha) on one local mini-batch."""

    VERSIONS = ("fo", "hf")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.version = str(self.hp.get("version", "fo")).lower()
        if self.version not in self.VERSIONS:
            raise ValueError(f"Per-FedAvg version must be 'fo' or 'hf', not {self.hp.get('version')!r}")
        self.alpha, self.beta = self.spec.lr, float(self.hp.get("beta", 0.001))

    def adapt(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """One plain SGD step with step size alpha (BatchNorm in training mode)."""
        model.train()
        params = list(model.parameters())
        grads = torch.autograd.grad(_ce(model, x, y), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(self.alpha * g)

    def meta_step(self, model: nn.Module, *batches: tuple[torch.Tensor, torch.Tensor]) -> float:
        """One Per-FedAvg update of ``model`` from two batches ("fo") or three ("hf"); returns the
        loss at the adapted weights."""
        params = list(model.parameters())
        w = [p.detach().clone() for p in params]
        self.adapt(model, *batches[0])
        loss = _ce(model, *batches[1])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, w0 in zip(params, w):
                p.copy_(w0)
        if self.version == "hf":
            first = torch.autograd.grad(_ce(model, *batches[2]), params, create_graph=True)
            hessian_grads = torch.autograd.grad(first, params, grad_outputs=grads)
            grads = tuple(g - self.alpha * hg for g, hg in zip(grads, hessian_grads))
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(self.beta * g)
        return float(loss.detach())

    def local_train(self, model, global_model):
        n_batches = 3 if self.version == "hf" else 2
        total, steps = 0.0, 0
        for epoch in range(self.spec.local_epochs):
            seeds = [self.round_seed + epoch + 7_919 * i for i in range(n_batches)]
            for batches in zip(*(train_loader(self.data, self.spec.batch_size, s) for s in seeds)):
                total += self.meta_step(model, *batches)
                steps += 1
        return total / max(steps, 1)

    def personalisation_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return next(iter(train_loader(self.data, self.spec.batch_size, self.round_seed)))

    def predictor(self, received):
        model = self.assemble(received)
        self.adapt(model, *self.personalisation_batch())
        return model.eval()


# ---- pFedMe ------------------------------------------------------------------------------------


class PFedMe(ClientAlgorithm):
    """T. Dinh et al. 2020: for each mini-batch the personal model theta takes ``k`` SGD steps on
    f(theta) + lamda/2 ||theta - w||^2 (step ``personal_lr``, default the client lr), then the local
    w <- w - lr lamda (w - theta). theta starts each round at the global model and is deployed. w is
    never run forward, so the BatchNorm statistics it sends are theta's (statistics of local data)."""

    def personal_step(self, theta: nn.Module, w: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      optimizer: torch.optim.Optimizer) -> float:  # fmt: skip
        """k steps on theta for one batch, then w's step along (w - theta); returns f(theta)."""
        lam, k = float(self.hp.get("lamda", 15.0)), max(1, int(self.hp.get("k", 5)))
        theta.train()
        for _ in range(k):
            optimizer.zero_grad()
            loss = _ce(theta, x, y)
            (loss + lam / 2 * squared_distance(theta, w)).backward()
            optimizer.step()
        personal = param_dict(theta)
        with torch.no_grad():
            for name, p in w.named_parameters():
                p.sub_(self.spec.lr * lam * (p - personal[name]))
        return float(loss.detach())

    def local_train(self, model, global_model):
        theta = copy.deepcopy(model)
        optimizer = self.sgd(theta.parameters(), momentum=0.0, lr=float(self.hp.get("personal_lr", self.spec.lr)))
        total, steps = 0.0, 0
        for epoch in range(self.spec.local_epochs):
            for x, y in train_loader(self.data, self.spec.batch_size, self.round_seed + epoch):
                total += self.personal_step(theta, model, x, y, optimizer)
                steps += 1
        params = param_dict(model)
        _load(model, {k: v for k, v in theta.state_dict().items() if k not in params})
        self.store.save("personal", theta.state_dict())
        return total / max(steps, 1)

    def predictor(self, received):
        stored = self.store.load("personal")
        if stored is None:
            return super().predictor(received)
        model = self.new_model()
        model.load_state_dict(stored)
        return model.eval()


def _pfedme(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
            param_keys: set[str], buffer_keys: set[str]) -> Any:  # fmt: skip

    beta = float(hp.get("beta", 1.0))

    class PFedMeServer(CustomStrategy):
        """w <- (1 - beta) w + beta * FedAvg(local w) on the parameters; BatchNorm statistics are
        plainly averaged (an extrapolating beta could push a running variance below zero)."""

        def aggregate_train(self, server_round, replies):
            arrays, metrics = super().aggregate_train(server_round, replies)
            if arrays is None:
                return arrays, metrics
            mean = {k: v.numpy() for k, v in arrays.items()}
            mixed = {k: (1 - beta) * self.sent[k] + beta * v if k in param_keys else v for k, v in mean.items()}
            return to_record(mixed), metrics

    return PFedMeServer(**common)


# ---- FedALA ------------------------------------------------------------------------------------

#: FedALA: share of the local training data used to learn the weights, and the stopping rule of the
#: first learning (standard deviation of the last losses), from the authors' code; the epoch cap is ours
ALA_DATA_SHARE, ALA_THRESHOLD, ALA_RECENT_LOSSES, ALA_MAX_EPOCHS = 0.8, 0.1, 10, 20


def top_layers(model: nn.Module, n: int) -> list[str]:
    """Parameter names of the ``n`` highest layers (modules that own parameters), bottom to top."""
    layers = [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    chosen = layers[-n:] if n > 0 else []
    return [name for name, _ in model.named_parameters() if any(name.startswith(f"{layer}.") for layer in chosen)]


def ala_mix(local: torch.Tensor, global_: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """local + (global - local) * W: W = 1 takes the global weight, W = 0 keeps the local one."""
    return local + (global_ - local) * weight


class FedALA(ClientAlgorithm):
    """Zhang et al. 2023: the client starts each round from its local model with its top
    ``layer_idx`` layers replaced by local + (global - local) * W, W element-wise in [0, 1] learnt on
    a random 80% of the local data (W <- clip(W - eta dL/dW), until the loss settles the first time,
    one pass later on, W kept across rounds); lower layers (and all BatchNorm statistics) take the
    global weights. Then plain local training; FedAvg server. The deployed model is that adaptive
    aggregation of the client's trained model and the final global model."""

    keeps_local_model = True

    def assemble(self, received):
        global_model = _load(self.new_model(), received)
        local = self.store.load("model")
        if local is None:
            self.weights = None
            return global_model
        model, self.weights = self.adaptive_aggregation(local, global_model)
        return model

    def adaptive_aggregation(self, local: dict[str, torch.Tensor], global_model: nn.Module
                             ) -> tuple[nn.Module, dict[str, torch.Tensor]]:  # fmt: skip
        """(the initialised model, the learnt weights W) from the local state and the global model."""
        eta = float(self.hp.get("eta", 1.0))
        top = top_layers(global_model, int(self.hp.get("layer_idx", 1)))
        glob = {n: p.detach().clone() for n, p in global_model.named_parameters() if n in top}
        loc = {n: local[n] for n in top}
        stored = self.store.load("ala_weights")
        weights = stored if stored is not None else {n: torch.ones_like(v) for n, v in glob.items()}
        temp = copy.deepcopy(global_model).train()
        params = param_dict(temp)
        for name, p in params.items():
            p.requires_grad_(name in top)
        generator = torch.Generator().manual_seed(self.round_seed)
        subset = torch.randperm(len(self.data.train_y), generator=generator)
        subset = subset[: max(1, math.ceil(ALA_DATA_SHARE * len(subset)))]
        x_all, y_all = self.data.train_x[subset], self.data.train_y[subset]
        losses: list[float] = []
        for _ in range(ALA_MAX_EPOCHS if stored is None else 1):
            for x, y in zip(x_all.split(self.spec.batch_size), y_all.split(self.spec.batch_size)):
                with torch.no_grad():
                    for n in top:
                        params[n].copy_(ala_mix(loc[n], glob[n], weights[n]))
                loss = _ce(temp, x, y)
                grads = torch.autograd.grad(loss, [params[n] for n in top])
                for n, g in zip(top, grads):  # dL/dW = dL/dtheta * (global - local)
                    weights[n] = (weights[n] - eta * g * (glob[n] - loc[n])).clamp(0.0, 1.0)
            losses.append(float(loss.detach()))
            if len(losses) > ALA_RECENT_LOSSES and float(np.std(losses[-ALA_RECENT_LOSSES:])) < ALA_THRESHOLD:
                break
        with torch.no_grad():
            for name, p in global_model.named_parameters():
                if name in top:
                    p.copy_(ala_mix(loc[name], glob[name], weights[name]))
        return global_model, weights

    def local_train(self, model, global_model):
        if self.weights is not None:
            self.store.save("ala_weights", self.weights)
        return super().local_train(model, global_model)

    def predictor(self, received):
        return self.assemble(received).eval()


# ---- FedAS -------------------------------------------------------------------------------------

#: FedAS: the client's Fisher information, reported with its training metrics
FISHER = "fisher"


def head_keys(model: nn.Module) -> set[str]:
    return {k for k in model.state_dict() if k.startswith("head.")}


class FedAS(ClientAlgorithm):
    """Yang et al. 2024: the head stays local; the received global body is first aligned to it (the
    body fine-tuned on local data with the local head frozen, at ``alignment_lr``), then the whole
    model trains locally and the body is sent with the trace of its empirical Fisher information
    (mean over mini-batches of the squared gradient of the loss; the paper's per-sample Fisher
    estimated per mini-batch) that the server weights it by. The deployed model is the local head on
    the aligned final global body."""

    keeps_local_model = True

    def personal_keys(self, model):
        return head_keys(model)

    def assemble(self, received):
        if self.store.load("model") is None:  # nothing local yet: the global model as it is
            return super().assemble(received)
        head = head_keys(self.new_model())
        model = super().assemble({k: v for k, v in received.items() if k not in head})
        self.align(model)
        return model

    def align(self, model: nn.Module) -> None:
        """Fine-tune the body to the frozen local head."""
        head = list(model.head.parameters())
        body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
        for p in head:
            p.requires_grad_(False)
        lr = float(self.hp.get("alignment_lr", 0.01))
        self.run_epochs(model, int(self.hp.get("alignment_epochs", 1)), lambda x, y: _ce(model, x, y),
                        self.sgd(body, lr=lr))  # fmt: skip
        for p in head:
            p.requires_grad_(True)

    def fisher(self, model: nn.Module) -> float:
        """Trace of the empirical Fisher information of the shared parameters (BatchNorm in eval mode,
        so the statistics sent are the trained ones)."""
        model.eval()
        shared = [p for n, p in model.named_parameters() if not n.startswith("head.")]
        total, batches = 0.0, 0
        for x, y in train_loader(self.data, self.spec.batch_size, self.round_seed):
            grads = torch.autograd.grad(_ce(model, x, y), shared)
            total += float(sum((g**2).sum() for g in grads))
            batches += 1
        return total / max(batches, 1)

    def local_train(self, model, global_model):
        loss = super().local_train(model, global_model)
        self.fisher_trace = self.fisher(model)
        return loss

    def train(self, received, config):
        arrays, metrics = super().train(received, config)
        return arrays, {**metrics, FISHER: self.fisher_trace}

    def predictor(self, received):
        return self.assemble(received).eval()


def fisher_weights(scores: list[float]) -> np.ndarray:
    """Aggregation weights proportional to the clients' Fisher information (uniform if all vanish)."""
    s = np.clip(np.nan_to_num(np.asarray(scores, dtype=np.float64)), 0.0, None)
    return s / s.sum() if s.sum() > 0 else np.full(len(s), 1.0 / len(s))


def _fedas(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
           param_keys: set[str], buffer_keys: set[str]) -> Any:  # fmt: skip

    class FedASServer(CustomStrategy):
        """Body = sum_i F_i body_i / sum_i F_i over the round's clients (F_i their Fisher trace); the
        keys no client sends (the heads) keep the values last sent, so the arrays stay one model."""

        def aggregate_train(self, server_round, replies):
            contents = self._valid(replies)
            if not contents:
                return None, None
            self.weights = fisher_weights([float(next(iter(c.metric_records.values()))[FISHER]) for c in contents])
            updates = [arrays_of(c) for c in contents]
            mean = {k: sum(w * u[k] for w, u in zip(self.weights, updates)) for k in updates[0]}
            return to_record({**self.sent, **mean}), self._metrics(contents)

    return FedASServer(**common)


# ---- MetaFed -----------------------------------------------------------------------------------

#: MetaFed: config flag of the rounds after the warm-up, in which clients distil from the predecessor
KD_PHASE = "metafed-kd"
#: MetaFed: weight of the distillation term and its temperature
KD_LAMBDA, KD_TEMPERATURE = 1.0, 1.0


def warmup_rounds(value: float, rounds: int) -> int:
    """A fraction of ``rounds`` when below 1, else a round count; at most rounds - 1 (so that the
    distillation phase happens even in a short run)."""
    n = math.ceil(round(value * rounds, 6)) if value < 1 else int(value)
    return max(0, min(n, rounds - 1))


def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    return temperature**2 * F.kl_div(F.log_softmax(student / temperature, dim=1),
                                     F.log_softmax(teacher / temperature, dim=1), reduction="batchmean",
                                     log_target=True)  # fmt: skip


class MetaFed(ClientAlgorithm):
    """Chen et al. 2023: clients form a ring and each round node i receives its predecessor's model.
    Warm-up rounds: train that model on local data (common knowledge passed on). After them: train
    the node's own model with CE + lam * distillation to the predecessor's outputs (temperature
    ``temperature``); that own model is the one deployed. Simplifications: the ring runs in parallel
    (each node gets its predecessor's model of the previous round, not of the same round), the
    distillation is on logits (the authors' code matches features), and the paper's accuracy
    threshold that switches distillation off for weak teachers is not used."""

    keeps_local_model = True

    def assemble(self, received):
        self.teacher = _load(self.new_model(), received)
        own = self.store.load("model")
        self.distil = own is not None and bool(int(self.config.get(KD_PHASE, 0)))
        return _load(self.new_model(), own) if self.distil else copy.deepcopy(self.teacher)

    def local_train(self, model, global_model):
        if not self.distil:
            return super().local_train(model, global_model)
        lam = float(self.hp.get("lam", KD_LAMBDA))
        temperature = float(self.hp.get("temperature", KD_TEMPERATURE))
        teacher = self.teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

        def loss_fn(x, y):
            logits = model(x)
            with torch.no_grad():
                target = teacher(x)
            return F.cross_entropy(logits, y) + lam * distillation(logits, target, temperature)

        return self.run_epochs(model, self.spec.local_epochs, loss_fn, self.sgd(model.parameters()))[0]

    def predictor(self, received):
        own = self.store.load("model")
        return _load(self.new_model(), own if own is not None else received).eval()


def _metafed(*, hp: dict[str, Any], common: dict[str, Any], plan: dict[str, Any], model: nn.Module,
             param_keys: set[str], buffer_keys: set[str]) -> Any:  # fmt: skip
    from flwr.app import ArrayRecord, ConfigRecord, MessageType


    warmup = warmup_rounds(float(hp.get("warmup_round", 30)), int(plan.get("rounds", 1)))

    class MetaFedRing(PerNode):
        """No aggregation: the nodes, in order of id, form a ring; node i is sent the model node i-1
        sent last (the initial model until it has sent one). Rounds after ``warmup`` carry the
        distillation flag. The strategy's arrays are the model of the ring's last node."""

        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            self.warmup, self.models, self.ring = warmup, {}, []

        def configure_train(self, server_round, arrays, config, grid):
            self.ring = sorted(grid.get_node_ids())
            config = ConfigRecord({**dict(config), KD_PHASE: int(server_round > self.warmup)})
            return super().configure_train(server_round, arrays, config, grid)

        def predecessor(self, node_id: int) -> int:
            return self.ring[self.ring.index(node_id) - 1]

        def arrays_for(self, node_id, arrays, message_type):
            if message_type == MessageType.TRAIN:
                previous = self.models.get(self.predecessor(node_id))
                return to_record(previous) if previous is not None else arrays
            return ArrayRecord() if node_id in self.models else arrays  # it predicts with its own model

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            by_node = self._by_node(replies)
            if not by_node:
                return None, None
            self.models.update({node: arrays for node, (arrays, _) in by_node.items()})
            last = next(n for n in reversed(self.ring) if n in self.models)
            return to_record(self.models[last]), self._metrics(self._valid(replies))

    return MetaFedRing(**common)


CLIENTS: dict[str, type[ClientAlgorithm]] = {
    "Per-FedAvg": PerFedAvg,
    "pFedMe": PFedMe,
    "FedALA": FedALA,
    "FedAS": FedAS,
    "MetaFed": MetaFed,
}

SERVERS: dict[str, Any] = {"pFedMe": _pfedme, "FedAS": _fedas, "MetaFed": _metafed}
