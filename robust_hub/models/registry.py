"""Registers robust-hub architectures in timm's registry; ``create_backbone`` builds any of them.

Registering (instead of keeping a private table) is what lets ``timm.create_model`` and
transformers' ``TimmWrapperModel`` rebuild a saved robust-hub backbone from its config.json.
"""

from __future__ import annotations

from typing import Any, Callable

import timm
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from robust_hub.errors import RobustHubError
from robust_hub.models.backbone import RobustBackbone
from robust_hub.models.resnet import RobustResNet, RobustWideResNet
from robust_hub.models.timm_backbone import TimmBackbone


def _pretrained_cfg(img_size: int = 32) -> dict[str, Any]:
    # mean/std are identity because normalisation is the model's first layer: data pipelines
    # (timm's, transformers') must hand the model plain [0,1] pixels.
    return {
        "url": "", "num_classes": 0, "input_size": (3, img_size, img_size), "pool_size": None,
        "crop_pct": 1.0, "interpolation": "bicubic", "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
        "first_conv": "conv1", "classifier": "head", "license": "apache-2.0",
    }


# name -> (class, default constructor arguments, input size)
ARCHITECTURES: dict[str, tuple[type[RobustBackbone], dict[str, Any], int]] = {
    "robust_resnet18": (RobustResNet, dict(block="basic", layers=(2, 2, 2, 2)), 32),
    "robust_resnet34": (RobustResNet, dict(block="basic", layers=(3, 4, 6, 3)), 32),
    "robust_resnet50": (RobustResNet, dict(block="bottleneck", layers=(3, 4, 6, 3)), 32),
    "robust_resnet18_stl": (RobustResNet, dict(block="basic", layers=(2, 2, 2, 2), stem="imagenet"), 96),
    "robust_wrn28_10": (RobustWideResNet, dict(depth=28, widen=10), 32),
    # A few hundred thousand parameters: for tests and the offline default run.
    "robust_resnet_tiny": (RobustResNet, dict(block="basic", layers=(1, 1, 1, 1), widths=(16, 32, 64, 128)), 32),
    "robust_timm": (TimmBackbone, {}, 32),
}

default_cfgs = generate_default_cfgs({name: _pretrained_cfg(size) for name, (_, _, size) in ARCHITECTURES.items()})


def _make_entrypoint(name: str) -> Callable[..., RobustBackbone]:
    cls, defaults, _ = ARCHITECTURES[name]

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> RobustBackbone:
        return build_model_with_cfg(cls, name, pretrained, **{**defaults, **kwargs})

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"robust-hub {name} ({cls.__name__})."
    return entrypoint


for _name in ARCHITECTURES:
    if not timm.is_model(_name):
        globals()[_name] = register_model(_make_entrypoint(_name))


def list_backbones() -> list[str]:
    """robust-hub's own architecture names (any timm model name is also accepted)."""
    return [name for name in ARCHITECTURES if name != "robust_timm"]


def create_backbone(name: str, **options: Any) -> RobustBackbone:
    """Build a backbone by robust-hub name (``robust_resnet18``...) or any timm model name.

    A timm name (optionally prefixed ``timm:``) is wrapped in :class:`TimmBackbone`, which adds
    normalisation and a projection head around the timm model (single batch norm).
    """
    if name.startswith("timm:"):
        return _build("robust_timm", timm_name=name[len("timm:"):], **options)
    if name in ARCHITECTURES:
        return _build(name, **options)
    if timm.is_model(name):
        return _build("robust_timm", timm_name=name, **options)
    raise RobustHubError(
        f"unknown architecture {name!r}; robust-hub backbones are {', '.join(list_backbones())}, "
        "or give any timm model name (see timm.list_models())"
    )


def _build(name: str, **options: Any) -> RobustBackbone:
    try:
        return timm.create_model(name, **options)
    except (TypeError, ValueError, RuntimeError) as error:
        raise RobustHubError(f"cannot build {name!r} with options {options}: {error}") from None
