"""Building blocks shared by every robust-hub backbone."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

ROUTES = ("normal", "pgd")


class DualBatchNorm(nn.Module):
    """Two batch norms over the same features: one for clean inputs, one for adversarial ones.

    The owning backbone sets ``route`` before each forward pass; keeping the choice in an
    attribute (not a forward argument) lets the blocks stay plain ``nn.Sequential``-friendly.
    """

    def __init__(self, num_features: int, dims: int = 2):
        super().__init__()
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.normal = norm(num_features)
        self.pgd = norm(num_features)
        self.route = "pgd"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pgd(x) if self.route == "pgd" else self.normal(x)


NormFactory = Callable[[int], nn.Module]


def norm_factory(dual_bn: bool, dims: int = 2) -> NormFactory:
    """A constructor for the batch norms of a backbone, dual or single."""
    if dual_bn:
        return lambda n: DualBatchNorm(n, dims)
    return nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d


class Normalize(nn.Module):
    """Per-channel standardisation as the model's first layer, so attacks work on [0,1] pixels."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self._values = (tuple(mean), tuple(std))
        # Non-persistent: the values live in the model arguments, not in the weights file.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def init_non_persistent_buffers(self) -> None:
        """Refill mean/std; transformers calls this after building the model on the meta device."""
        mean, std = self._values
        device = self.mean.device if self.mean.device.type != "meta" else None
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ProjectionHead(nn.Module):
    """SimCLR/ACL projection head: Linear-BN-ReLU blocks ending in Linear-BN (3 or 2 layers)."""

    def __init__(self, in_features: int, hidden: int, out_features: int, layers: int, dual_bn: bool):
        super().__init__()
        norm = norm_factory(dual_bn, dims=1)
        self.fc1 = nn.Linear(in_features, hidden, bias=True)
        self.bn1 = norm(hidden)
        if layers == 3:
            self.fc2 = nn.Linear(hidden, hidden, bias=False)
            self.bn2 = norm(hidden)
        self.fc3 = nn.Linear(hidden, out_features, bias=False)
        self.bn3 = norm(out_features)
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.fc1(x)))
        if self.layers == 3:
            x = torch.relu(self.bn2(self.fc2(x)))
        return self.bn3(self.fc3(x))


def init_conv_bn(module: nn.Module) -> None:
    """Kaiming-normal (fan_out) convolutions, BN weight 1 and bias 0, as in the reference models."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
