"""What every client algorithm shares: assembling the model, the local SGD loop, local state.

The default ``ClientAlgorithm`` is the FedAvg client (load the global weights, minimise
cross-entropy, send every averageable weight back). Other algorithms override the hooks: which keys
stay personal, the local loss, the training schedule, what is sent, and which model predicts.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fl.data import LocalData, train_loader
from fl.devices import autocast_dtype, resolve_device
from fl.models import build_model, shareable_keys

#: prefix of arrays that travel beside the model's weights (a generator, statistics, a mean gradient):
#: ``assemble`` ignores them, ``fl.strategies.model_arrays`` leaves them out of the saved global model
AUX = "aux."


def split_aux(received: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(model weights, auxiliary arrays without their prefix)."""
    weights = {k: v for k, v in received.items() if not k.startswith(AUX)}
    return weights, {k[len(AUX) :]: v for k, v in received.items() if k.startswith(AUX)}


@dataclass
class RunSpec:
    """Settings the server sends to clients with every round (JSON in the ConfigRecord)."""

    run_tag: str
    algorithm: str
    classes: list[str]
    channels: int
    image_size: int
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    seed: int = 0
    val_fraction: float = 0.2
    max_images: int | None = None
    hp: dict[str, Any] = field(default_factory=dict)
    #: where the client trains (``fl.devices``): a spec without it (built by hand) stays on the CPU
    device: str = "cpu"
    #: autocast on CUDA (None: on there); never on the CPU
    mixed_precision: bool | None = None
    network: str = "default"

    @property
    def n_classes(self) -> int:
        return len(self.classes)


class StateStore:
    """A client's memory across rounds (Flower's ``context.state``), namespaced per run."""

    def __init__(self, state: Any, tag: str, device: Any = None):
        #: where ``load`` puts what it reads (None: the CPU, as Flower keeps it)
        self.state, self.tag, self.device = state, tag, device

    def forget_other_runs(self) -> None:
        """Drop what earlier runs left in this node's state (a warm simulation serves one plan at a time,
        and Flower ships the whole state with every message)."""
        for key in [k for k in self.state if not k.startswith(f"{self.tag}/")]:
            del self.state[key]

    def load(self, name: str) -> dict[str, torch.Tensor] | None:
        from flwr.app import ArrayRecord

        record = self.state.get(f"{self.tag}/{name}")
        if not isinstance(record, ArrayRecord):
            return None
        tensors = record.to_torch_state_dict()
        return tensors if self.device is None else {k: v.to(self.device) for k, v in tensors.items()}

    def save(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        from flwr.app import ArrayRecord

        self.state[f"{self.tag}/{name}"] = ArrayRecord({k: v.detach().cpu() for k, v in tensors.items()})

    def scalar(self, name: str, default: float) -> float:
        from flwr.app import MetricRecord

        record = self.state.get(f"{self.tag}/scalars")
        return float(record[name]) if isinstance(record, MetricRecord) and name in record else default

    def set_scalar(self, name: str, value: float) -> None:
        from flwr.app import MetricRecord

        key = f"{self.tag}/scalars"
        record = self.state.get(key)
        if not isinstance(record, MetricRecord):
            record = MetricRecord()
        record[name] = float(value)
        self.state[key] = record


#: a class with fewer local examples than this sends no statistics of its own (FedProto, FedPAC,
#: CCVR, pFedFDA): the feature mean of one or two images is close to those images' own features
MIN_CLASS_EXAMPLES = 5


def suppress_small_classes(means: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, counts) with the rows of classes under ``MIN_CLASS_EXAMPLES`` examples zeroed: the
    server treats them as classes this client does not have."""
    small = counts < MIN_CLASS_EXAMPLES
    return means.masked_fill(small.unsqueeze(1), 0.0), counts.masked_fill(small, 0.0)


def to_numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()}


class ClientAlgorithm:
    """FedAvg client; subclasses change only what their paper changes."""

    #: keep the whole local model between rounds (personal parts, local-only training)
    keeps_local_model = False

    def __init__(self, spec: RunSpec, data: LocalData, store: StateStore, round_seed: int):
        #: the model, the data and what the store loads live here; payloads go back to the CPU
        self.device = torch.device(resolve_device(spec.device))
        #: autocast dtype of ``run_epochs`` (None: full precision, always so on the CPU)
        self.amp_dtype = autocast_dtype(spec.mixed_precision, self.device)
        self.spec, self.data, self.store, self.round_seed = spec, data.to(self.device), store, round_seed
        if store.device is None:
            store.device = self.device
        self.hp = spec.hp

    # ---- model assembly -------------------------------------------------------------------
    def new_model(self) -> nn.Module:
        spec = self.spec
        model = build_model(spec.algorithm, spec.channels, spec.n_classes, spec.image_size, spec.seed, spec.network)
        return model.to(self.device)

    def personal_keys(self, model: nn.Module) -> set[str]:
        """State-dict keys that never leave the client."""
        return set()

    def shared_keys(self, model: nn.Module) -> list[str]:
        personal = self.personal_keys(model)
        return [k for k in shareable_keys(model) if k not in personal]

    def assemble(self, received: dict[str, torch.Tensor]) -> nn.Module:
        """Local state (if kept) overlaid with whatever global weights the server sent."""
        model = self.new_model()
        local = self.store.load("model") if self.keeps_local_model else None
        if local is not None:
            model.load_state_dict(local)
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in received.items() if k in own}, strict=False)
        return model

    # ---- training ---------------------------------------------------------------------------
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    def sgd(self, params, momentum: float | None = None, lr: float | None = None) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            params, lr=self.spec.lr if lr is None else lr, momentum=self.spec.momentum if momentum is None else momentum
        )

    def run_epochs(
        self,
        model: nn.Module,
        epochs: int,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        before_step: Callable[[], None] | None = None,
    ) -> tuple[float, int]:
        """Plain mini-batch SGD; returns (mean loss, number of steps). On CUDA the loss is computed
        under autocast (``amp_dtype``), with a gradient scaler for float16 (bfloat16 needs none)."""
        model.train()
        total, steps = 0.0, 0
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        for epoch in range(epochs):
            for x, y in train_loader(self.data, self.spec.batch_size, self.round_seed + epoch):
                optimizer.zero_grad()
                with self.autocast():
                    loss = loss_fn(x, y)
                if scaler is None:
                    loss.backward()
                    if before_step is not None:
                        before_step()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    if before_step is not None:  # corrections and clipping act on the true gradients
                        scaler.unscale_(optimizer)
                        before_step()
                    scaler.step(optimizer)
                    scaler.update()
                total += float(loss.detach())
                steps += 1
        return total / max(steps, 1), steps

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for a forward pass where it is on (CUDA), nothing otherwise."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def local_train(self, model: nn.Module, global_model: nn.Module) -> float:
        loss, _ = self.run_epochs(
            model, self.spec.local_epochs, lambda x, y: self.loss(model, x, y), self.sgd(model.parameters())
        )
        return loss

    def payload(self, model: nn.Module) -> dict[str, np.ndarray]:
        state = model.state_dict()
        return to_numpy({k: state[k] for k in self.shared_keys(model)})

    def train(
        self, received: dict[str, torch.Tensor], config: dict[str, Any]
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """One round of local work; returns (arrays for the server, metrics)."""
        self.config = config
        model = self.assemble(received)
        global_model = copy.deepcopy(model)
        for p in global_model.parameters():
            p.requires_grad_(False)
        loss = self.local_train(model, global_model)
        if self.keeps_local_model:
            self.store.save("model", model.state_dict())
        return self.payload(model), {"train_loss": loss}

    # ---- evaluation -------------------------------------------------------------------------
    def predictor(self, received: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """The model this client would deploy (its personalised one, where the method has one)."""
        model = self.assemble(received)
        model.eval()
        return model


def param_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def squared_distance(model: nn.Module, reference: nn.Module) -> torch.Tensor:
    """sum ||w - w_ref||^2 over parameters (proximal terms of FedProx, Ditto, FedDyn)."""
    ref = param_dict(reference)
    return sum(((p - ref[n].detach()) ** 2).sum() for n, p in model.named_parameters())
