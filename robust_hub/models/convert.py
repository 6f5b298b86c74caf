"""Import checkpoints of the reference ACL/DynACL/RCS/AIR code (dual-BN ResNets).

Their layout: ``bn_list.0`` (normal) / ``bn_list.1`` (pgd) batch norms, ``downsample.conv`` /
``downsample.bn`` shortcuts, the projection head under ``fc.``, possibly a ``module.`` prefix,
possibly nested under ``state_dict``, ``model`` or ``state_dict_dual``. Files are read with
``torch.load(weights_only=True)``: a checkpoint that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from robust_hub.errors import RobustHubError
from robust_hub.models.backbone import RobustBackbone
from robust_hub.models.hub import check_finite
from robust_hub.models.registry import create_backbone

NESTED_KEYS = ("state_dict_dual", "state_dict", "model")
RENAMES = ((re.compile(r"\.bn_list\.0\."), ".normal."), (re.compile(r"\.bn_list\.1\."), ".pgd."),
           (re.compile(r"^fc\."), "projector."))
DROPPED = re.compile(r"(^|\.)(normalize|normalizer|norm_layer)\.")  # mean/std buffers: ours come from model_args


def read_reference_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a reference checkpoint, loaded without arbitrary unpickling."""
    path = Path(path)
    if not path.is_file():
        raise RobustHubError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        forbidden = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if forbidden:
            raise RobustHubError(f"{path} holds a {forbidden.group(1)} object besides tensors; refused, since "
                                 "loading it would run code (weights_only=True)") from None
        raise RobustHubError(f"{path} is corrupt or not a PyTorch checkpoint") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise RobustHubError(f"{path} is corrupt or not a PyTorch checkpoint ({str(error).splitlines()[0]})") from None
    for key in NESTED_KEYS:
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise RobustHubError(f"{path} holds no state dict (looked at the top level and {NESTED_KEYS})")
    return payload


def rename_reference_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if DROPPED.search(key):
            continue
        for pattern, replacement in RENAMES:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    return renamed


def infer_resnet_args(state: dict[str, torch.Tensor]) -> dict:
    """Block type, blocks per stage, widths, stem and head of a (renamed) ResNet state dict."""
    bottleneck = any(".conv3." in k for k in state)
    layers, widths = [], []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if not blocks:
            break
        layers.append(max(blocks) + 1)
        widths.append(state[f"layer{stage}.0.conv1.weight"].shape[0])
    if not layers or "conv1.weight" not in state:
        raise RobustHubError("checkpoint is not a ResNet in the reference layout (no conv1 / layerN keys)")
    has_head = "projector.fc1.weight" in state
    return dict(
        block="bottleneck" if bottleneck else "basic", layers=layers, widths=widths,
        stem="imagenet" if state["conv1.weight"].shape[-1] == 7 else "cifar",
        dual_bn=any(".pgd." in k for k in state),
        proj_layers=(3 if "projector.fc2.weight" in state else 2) if has_head else 0,
    )


def convert_reference_checkpoint(path: str | Path) -> RobustBackbone:
    """A robust-hub backbone holding the checkpoint's weights (pgd route by default).

    The ResNet's depth, widths, stem and head are read off the checkpoint itself.
    """
    state = rename_reference_keys(read_reference_state(path))
    check_finite(state, source=str(path))
    model = create_backbone("robust_resnet18", **infer_resnet_args(state))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RobustHubError(f"{path} does not match the reference ResNet layout: {str(error).splitlines()[0]}") from None
    return model.eval()
