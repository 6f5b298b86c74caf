"""Shared helpers for the evaluation tests: a learnable synthetic task and tiny models."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# tiny models are dominated by per-op overhead: one thread is fastest and avoids oversubscribing
# the CPU when pytest-xdist runs several workers
torch.set_num_threads(1)

NUM_CLASSES = 10
SIZE = 16


@dataclass
class TinySplit:
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int = NUM_CLASSES
    source: str = "synthetic:templates"
    split: str = "train"
    fingerprint: str = ""


def synthetic_split(n: int, split: str, seed: int) -> TinySplit:
    """Ten classes, each a fixed random colour template plus pixel noise (same templates for every split)."""
    templates = torch.rand(NUM_CLASSES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1234))
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    x = templates[labels] + 0.15 * torch.randn(n, 3, SIZE, SIZE, generator=gen)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return TinySplit(images, labels, split=split, fingerprint=f"synthetic-{split}-{n}-{seed}")


class TinyBackbone(nn.Module):
    """A few-thousand-parameter backbone with timm's contract: [0,1] images -> pooled features."""

    def __init__(self, num_features: int = 32) -> None:
        super().__init__()
        self.num_features = num_features
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * (SIZE // 2) ** 2, num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1)))


class RoundingBackbone(TinyBackbone):
    """Masks its gradient: quantises the input to quarters with torch.round (zero derivative)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.round(x * 4) / 4)


def trained_classifier(backbone: nn.Module, split: TinySplit, steps: int = 150) -> nn.Module:
    """Backbone + linear head trained end to end on clean data (deterministic)."""
    torch.manual_seed(0)
    model = nn.Sequential(backbone, nn.Linear(backbone.num_features, NUM_CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = split.images.float() / 255, split.labels
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


def test_synthetic_task_is_learnable() -> None:
    train, test = synthetic_split(64, "train", 0), synthetic_split(64, "test", 1)
    model = trained_classifier(TinyBackbone(), train)
    with torch.no_grad():
        acc = (model(test.images.float() / 255).argmax(1) == test.labels).float().mean().item()
    assert acc > 0.9
