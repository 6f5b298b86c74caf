"""Backbones: CIFAR ResNets / WRN with dual batch norm, any timm model, and their hub format."""

from robust_hub.models.backbone import RobustBackbone
from robust_hub.models.layers import ROUTES, DualBatchNorm, ProjectionHead
from robust_hub.models.registry import create_backbone, list_backbones
from robust_hub.models.convert import convert_reference_checkpoint

__all__ = ["convert_reference_checkpoint", "ROUTES", "DualBatchNorm", "ProjectionHead", "RobustBackbone", "create_backbone", "list_backbones"]
