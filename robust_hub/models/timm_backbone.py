"""Any timm model as a robust-hub backbone (single batch norm, normalisation inside)."""

from __future__ import annotations

from typing import Any, Sequence

import timm
import torch

from robust_hub.models.backbone import RobustBackbone


class TimmBackbone(RobustBackbone):
    """Wraps ``timm.create_model(timm_name, num_classes=0)``; pooling is timm's own."""

    def __init__(
        self,
        timm_name: str = "resnet18",
        timm_kwargs: dict[str, Any] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        img_size: int = 32,
        proj_layers: int = 3,
        proj_dim: int | None = None,
        num_classes: int = 0,
        in_chans: int = 3,
        default_route: str = "pgd",
        dual_bn: bool = False,
    ):
        super().__init__()
        if dual_bn:
            raise ValueError("timm backbones have a single batch norm; use dual_bn=False")
        self.body = timm.create_model(timm_name, pretrained=False, num_classes=0, **(timm_kwargs or {}))
        cfg = self.body.pretrained_cfg
        mean = list(mean or cfg.get("mean", (0.485, 0.456, 0.406)))
        std = list(std or cfg.get("std", (0.229, 0.224, 0.225)))
        self.img_size = img_size
        self._init_common(
            self.body.num_features, dual_bn=False, default_route=default_route, mean=mean, std=std,
            proj_layers=proj_layers, proj_dim=proj_dim, num_classes=num_classes,
            model_args=dict(timm_name=timm_name, timm_kwargs=dict(timm_kwargs or {}), mean=mean, std=std,
                            img_size=img_size, proj_layers=proj_layers, proj_dim=proj_dim),
        )

    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_features(x)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return self.body.forward_head(features, pre_logits=True)
