"""CIFAR-style ResNets and WideResNet-28-10, with optional dual batch norm.

Layer names follow the reference ACL code (``conv1``/``bn1``/``layerN``/``downsample.conv``)
so reference checkpoints convert by renaming batch-norm keys only.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from robust_hub.models.backbone import IMAGENET_MEAN, IMAGENET_STD, RobustBackbone
from robust_hub.models.layers import NormFactory, init_conv_bn, norm_factory


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class Downsample(nn.Module):
    """1x1 strided convolution and batch norm on the residual path."""

    def __init__(self, cin: int, cout: int, stride: int, norm: NormFactory):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.bn = norm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, norm: NormFactory):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, planes, stride), norm(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), norm(planes)
        needs_projection = stride != 1 or cin != planes
        self.downsample = Downsample(cin, planes, stride, norm) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, norm: NormFactory):
        super().__init__()
        cout = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), norm(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), norm(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, cout, 1, bias=False), norm(cout)
        needs_projection = stride != 1 or cin != cout
        self.downsample = Downsample(cin, cout, stride, norm) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
STEMS = ("cifar", "imagenet")


class RobustResNet(RobustBackbone):
    """ResNet with a CIFAR stem (3x3 s1, no max-pool) or an ImageNet/STL stem (7x7 s2 + max-pool)."""

    def __init__(
        self,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "cifar",
        dual_bn: bool = True,
        default_route: str = "pgd",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        proj_layers: int = 3,
        proj_dim: int | None = None,
        num_classes: int = 0,
        in_chans: int = 3,
    ):
        super().__init__()
        if block not in BLOCKS or stem not in STEMS or in_chans != 3:
            raise ValueError(f"unsupported block={block!r}, stem={stem!r} or in_chans={in_chans}")
        block_cls, norm = BLOCKS[block], norm_factory(dual_bn)
        if stem == "cifar":
            self.conv1 = conv3x3(3, widths[0])
        else:
            self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = norm(widths[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        cin = widths[0]
        for i, (depth, width) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(depth):
                blocks.append(block_cls(cin, width, 2 if (j == 0 and i > 0) else 1, norm))
                cin = width * block_cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self._init_common(
            cin, dual_bn=dual_bn, default_route=default_route, mean=mean, std=std,
            proj_layers=proj_layers, proj_dim=proj_dim, num_classes=num_classes,
            model_args=dict(block=block, layers=list(layers), widths=list(widths), stem=stem,
                            dual_bn=dual_bn, default_route=default_route, mean=list(mean),
                            std=list(std), proj_layers=proj_layers, proj_dim=proj_dim),
        )
        init_conv_bn(self)

    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


class WideBlock(nn.Module):
    """Pre-activation wide residual block (BN-ReLU-conv twice)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: NormFactory):
        super().__init__()
        self.bn1, self.conv1 = norm(cin), conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = norm(cout), conv3x3(cout, cout)
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(self.bn1(x))
        out = self.conv1(activated)
        out = self.conv2(torch.relu(self.bn2(out)))
        # As in the standard WRN: a projected shortcut starts from the activated input.
        shortcut = x if self.shortcut is None else self.shortcut(activated)
        return out + shortcut


class RobustWideResNet(RobustBackbone):
    """WideResNet-depth-widen (28-10 by default) for 32x32 inputs."""

    def __init__(
        self,
        depth: int = 28,
        widen: int = 10,
        dual_bn: bool = True,
        default_route: str = "pgd",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        proj_layers: int = 3,
        proj_dim: int | None = None,
        num_classes: int = 0,
        in_chans: int = 3,
    ):
        super().__init__()
        if (depth - 4) % 6 or in_chans != 3:
            raise ValueError(f"WRN depth must be 6n+4 and in_chans 3, got depth={depth}")
        per_group, norm = (depth - 4) // 6, norm_factory(dual_bn)
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = conv3x3(3, widths[0])
        cin = widths[0]
        for g, (width, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            blocks = [WideBlock(cin if i == 0 else width, width, stride if i == 0 else 1, norm) for i in range(per_group)]
            self.add_module(f"block{g + 1}", nn.Sequential(*blocks))
            cin = width
        self.bn_final = norm(cin)
        self._init_common(
            cin, dual_bn=dual_bn, default_route=default_route, mean=mean, std=std,
            proj_layers=proj_layers, proj_dim=proj_dim, num_classes=num_classes,
            model_args=dict(depth=depth, widen=widen, dual_bn=dual_bn, default_route=default_route,
                            mean=list(mean), std=list(std), proj_layers=proj_layers, proj_dim=proj_dim),
        )
        init_conv_bn(self)

    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return torch.relu(self.bn_final(x))
