"""MONAI classifiers split into a body and a head: by default sized for 28-64 px images on CPU.

Many algorithms treat the representation (body) and the classifier (head) differently (FedPer,
FedRep, LG-FedAvg, FedBABU, FedRoD, FedProto, MOON), so every model exposes ``features(x)`` and
``head``. The default body is ``monai.networks.nets.Classifier`` (strided residual conv units with
BatchNorm, which FedBN needs) projecting to a 64-d feature vector. ``network="densenet121"`` is
``monai.networks.nets.DenseNet121`` (2-D) cut the same way: its convolutional part and pooling give
a 1024-d feature vector, its output layer is the head; a network for GPU-sized inputs (e.g. 224 px).
"""

from __future__ import annotations

import math

import torch
from torch import nn

FEATURE_DIM = 64


def conv_channels(image_size: int) -> tuple[int, ...]:
    """One stride-2 stage per halving down to about 4 px, 3 to 5 stages."""
    stages = min(5, max(3, math.ceil(math.log2(max(image_size, 8) / 4))))
    return (16, 32, 64, 64, 64)[:stages]


class DenseNetBody(nn.Module):
    """DenseNet-121's convolutions, final ReLU and global average pooling: image -> 1024-d vector."""

    #: fewest values per channel the last dense block's BatchNorm trains on (batch x its pixels, which
    #: are the input's /32): fewer give near-zero variances and exploding gradients (two images at
    #: 32 px sent the weights to 1e3 in three steps), so such a batch uses the running statistics
    MIN_NORM_VALUES = 8

    def __init__(self, net: nn.Module):
        super().__init__()
        self.features = net.features
        self.pool = nn.Sequential(net.class_layers.relu, net.class_layers.pool, net.class_layers.flatten)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = x.shape[0] * max(1, x.shape[-2] // 32) * max(1, x.shape[-1] // 32)
        if not self.training or values >= self.MIN_NORM_VALUES:
            return self.pool(self.features(x))
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        for m in norms:
            m.eval()
        try:
            return self.pool(self.features(x))
        finally:
            for m in norms:
                m.train()


def densenet121_parts(in_channels: int, n_classes: int) -> tuple[nn.Module, nn.Linear]:
    """(body, head) of ``monai.networks.nets.DenseNet121(spatial_dims=2)``: the same layers and
    initialisation, so body then head computes exactly DenseNet121's forward pass."""
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=n_classes)
    return DenseNetBody(net), net.class_layers.out


class SplitNet(nn.Module):
    """MONAI convolutional body -> ReLU feature vector -> linear head."""

    def __init__(self, in_channels: int, n_classes: int, image_size: int, feature_dim: int = FEATURE_DIM,
                 network: str = "default"):  # fmt: skip
        super().__init__()
        if network == "densenet121":
            self.body, self.head = densenet121_parts(in_channels, n_classes)
            self.feature_dim = self.head.in_features
            return
        if network != "default":
            raise ValueError(f"unknown network {network!r}")
        from monai.networks.nets import Classifier

        channels = conv_channels(image_size)
        self.body = nn.Sequential(
            Classifier(
                in_shape=(in_channels, image_size, image_size),
                classes=feature_dim,
                channels=channels,
                strides=(2,) * len(channels),
                num_res_units=1,
                norm="batch",
            ),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, n_classes)
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FedSRNet(SplitNet):
    """FedSR's probabilistic representation: the body gives (mu, sigma) of z; r(z|y) is learned.

    Training samples z ~ N(mu, sigma); prediction uses the mean, as in the paper's evaluation.
    """

    def __init__(self, in_channels: int, n_classes: int, image_size: int, feature_dim: int = FEATURE_DIM,
                 network: str = "default"):  # fmt: skip
        super().__init__(in_channels, n_classes, image_size, feature_dim, network=network)
        d = self.feature_dim
        self.to_z = nn.Linear(d, 2 * d)
        self.r_mu = nn.Parameter(torch.zeros(n_classes, d))
        self.r_sigma = nn.Parameter(torch.ones(n_classes, d))

    def z_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.to_z(self.body(x))
        mu, raw = params.chunk(2, dim=1)
        return mu, nn.functional.softplus(raw) + 1e-4

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.z_distribution(x)[0]


def network_class(algorithm: str, network: str = "default") -> type[nn.Module]:
    """The class of ``algorithm``'s network; a ValueError if it cannot be built as ``network`` (an
    algorithm module's own class that takes no ``network`` argument is SplitNet-sized only)."""
    import inspect

    from fl.algorithms import model_class
    from fl.devices import check_network

    network = check_network(network)
    cls = FedSRNet if algorithm == "FedSR" else (model_class(algorithm) or SplitNet)
    if network != "default" and "network" not in inspect.signature(cls).parameters:
        raise ValueError(f"{algorithm}'s network ({cls.__name__}) supports only network='default', not {network!r}")
    return cls


def build_model(algorithm: str, in_channels: int, n_classes: int, image_size: int, seed: int,
                network: str = "default") -> nn.Module:  # fmt: skip
    """The same seed gives the same initial weights on the server and on every client."""
    cls = network_class(algorithm, network)
    torch.manual_seed(seed)
    if network == "default":  # as before the setting existed (external MODELS classes take no network)
        return cls(in_channels, n_classes, image_size)
    return cls(in_channels, n_classes, image_size, network=network)


def shareable_keys(model: nn.Module) -> list[str]:
    """State-dict entries that make sense to average (BatchNorm batch counters do not)."""
    return [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]


def batchnorm_keys(model: nn.Module) -> set[str]:
    """Parameters and running statistics of every BatchNorm layer (FedBN keeps them local)."""
    keys: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            keys.update(f"{name}.{k}" for k in module.state_dict())
    return keys
