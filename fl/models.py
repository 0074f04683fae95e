"""MONAI classifiers sized for 28-64 px images on CPU, split into a body and a head.

Many algorithms treat the representation (body) and the classifier (head) differently (FedPer,
FedRep, LG-FedAvg, FedBABU, FedRoD, FedProto, MOON), so every model exposes ``features(x)`` and
``head``. The body is ``monai.networks.nets.Classifier`` (strided residual conv units with
BatchNorm, which FedBN needs) projecting to a feature vector.
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


class SplitNet(nn.Module):
    """MONAI convolutional body -> ReLU feature vector -> linear head."""

    def __init__(self, in_channels: int, n_classes: int, image_size: int, feature_dim: int = FEATURE_DIM):
        super().__init__()
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

    def __init__(self, in_channels: int, n_classes: int, image_size: int, feature_dim: int = FEATURE_DIM):
        super().__init__(in_channels, n_classes, image_size, feature_dim)
        self.to_z = nn.Linear(feature_dim, 2 * feature_dim)
        self.r_mu = nn.Parameter(torch.zeros(n_classes, feature_dim))
        self.r_sigma = nn.Parameter(torch.ones(n_classes, feature_dim))

    def z_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.to_z(self.body(x))
        mu, raw = params.chunk(2, dim=1)
        return mu, nn.functional.softplus(raw) + 1e-4

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.z_distribution(x)[0]


def build_model(algorithm: str, in_channels: int, n_classes: int, image_size: int, seed: int) -> nn.Module:
    """The same seed gives the same initial weights on the server and on every client."""
    from fl.algorithms import model_class

    torch.manual_seed(seed)
    cls = FedSRNet if algorithm == "FedSR" else (model_class(algorithm) or SplitNet)
    return cls(in_channels, n_classes, image_size)


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
