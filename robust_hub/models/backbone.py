"""The contract every robust-hub backbone follows (timm's, plus routes and a projector)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from robust_hub.errors import RobustHubError
from robust_hub.models.layers import ROUTES, DualBatchNorm, Normalize, ProjectionHead

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RobustBackbone(nn.Module):
    """Maps [0,1] images to features; normalisation is the first layer.

    Subclasses build their body and implement ``forward_body`` (normalised images to a
    feature map). ``forward`` returns pooled features (timm's ``num_classes=0`` contract),
    or projector embeddings with ``project=True``. Dual-BN models pick a route per call.
    """

    def _init_common(
        self,
        num_features: int,
        *,
        dual_bn: bool,
        default_route: str,
        mean: Sequence[float],
        std: Sequence[float],
        proj_layers: int,
        proj_dim: int | None,
        num_classes: int,
        model_args: dict[str, Any],
    ) -> None:
        if default_route not in ROUTES:
            raise RobustHubError(f"default_route must be one of {ROUTES}, got {default_route!r}")
        if proj_layers not in (0, 2, 3):
            raise RobustHubError(f"proj_layers must be 0 (no projector), 2 or 3, got {proj_layers}")
        self.normalize = Normalize(mean, std)
        self.num_features = self.head_hidden_size = num_features
        self.dual_bn = dual_bn
        self.default_route = default_route
        self.projector = (
            ProjectionHead(num_features, num_features, proj_dim or num_features, proj_layers, dual_bn)
            if proj_layers
            else None
        )
        self.reset_classifier(num_classes)
        self.model_args = dict(model_args)

    # -- routes -------------------------------------------------------------------------
    def set_route(self, route: str | None) -> None:
        """Point every dual batch norm at ``route`` (None: the default route)."""
        route = route or self.default_route
        if route not in ROUTES:
            raise RobustHubError(f"route must be one of {ROUTES}, got {route!r}")
        for module in self.modules():
            if isinstance(module, DualBatchNorm):
                module.route = route

    # -- timm contract ------------------------------------------------------------------
    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor, route: str | None = None) -> torch.Tensor:
        self.set_route(route)
        return self.forward_body(self.normalize(x))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(2, 3))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.pool(x)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor, route: str | None = None, project: bool = False) -> torch.Tensor:
        """Pooled features (or class logits when num_classes > 0); projector output if ``project``."""
        features = self.forward_features(x, route)
        if not project:
            return self.forward_head(features)
        if self.projector is None:
            raise RobustHubError("this backbone was built without a projection head (proj_layers=0)")
        return self.projector(self.forward_head(features, pre_logits=True))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    # -- Hugging Face format ------------------------------------------------------------
    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Write model.safetensors, config.json and preprocessor_config.json (see robust_hub.models.hub)."""
        from robust_hub.models.hub import save_pretrained

        save_pretrained(self, save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, repo_id_or_dir: str, revision: str | None = None) -> "RobustBackbone":
        from robust_hub.models.hub import from_pretrained

        return from_pretrained(repo_id_or_dir, revision=revision)
