"""Import checkpoints of the reference ACL/DynACL/RCS/AIR code (dual-BN ResNets and WideResNets).

Their layout: ``bn_list.0`` (normal) / ``bn_list.1`` (pgd) batch norms, ``downsample.conv`` /
``downsample.bn`` shortcuts, the projection head under ``fc.``, possibly a ``module.`` prefix,
possibly nested under ``state_dict``, ``model`` or ``state_dict_dual``. The head has three layers
(``fc1``/``fc2``/``fc3``) or, with the reference's ``--twoLayerProj``, two (``fc1``/``fc2``, which
robust-hub names ``fc1``/``fc3``). WideResNets follow the TRADES layout (``block1.layer.0.conv1``,
``convShortcut``, a final ``bn1``). Files are read with ``torch.load(weights_only=True)``: a
checkpoint that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import zipfile
from pathlib import Path

import torch

from robust_hub.errors import RobustHubError
from robust_hub.models.backbone import RobustBackbone
from robust_hub.models.hub import check_finite
from robust_hub.models.registry import create_backbone
from robust_hub.models.strict import build_exactly

NESTED_KEYS = ("state_dict_dual", "state_dict", "model")
RENAMES = ((re.compile(r"\.bn_list\.0\."), ".normal."), (re.compile(r"\.bn_list\.1\."), ".pgd."),
           (re.compile(r"^fc\."), "projector."))
DROPPED = re.compile(r"(^|\.)(normalize|normalizer|norm_layer)\.")  # mean/std buffers: ours come from model_args


def read_reference_state(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The tensor dict inside a reference checkpoint, loaded without arbitrary unpickling, and its bytes' sha256."""
    path = Path(path)
    if not path.is_file():
        raise RobustHubError(f"checkpoint {path} does not exist")
    data = path.read_bytes()  # read once: the hash is of exactly the bytes loaded
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
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
    return payload, hashlib.sha256(data).hexdigest()


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


WRN_RENAMES = ((re.compile(r"^block(\d)\.layer\.(\d+)\."), r"block\1.\2."),
               (re.compile(r"\.convShortcut\."), ".shortcut."), (re.compile(r"^bn1\."), "bn_final."))


def is_wide_resnet(state: dict[str, torch.Tensor]) -> bool:
    return any(re.match(r"block\d\.layer\.\d+\.", k) for k in state)


def rename_two_layer_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference's two-layer head is fc1-bn1-relu-fc2-bn2; robust-hub's is fc1-bn1-relu-fc3-bn3."""
    if "projector.fc2.weight" not in state or "projector.fc3.weight" in state:
        return state
    return {re.sub(r"^projector\.(fc|bn)2\.", r"projector.\g<1>3.", k): v for k, v in state.items()}


def head_layers(state: dict[str, torch.Tensor]) -> int:
    if "projector.fc1.weight" not in state:
        return 0
    return 3 if "projector.fc2.weight" in state else 2


def infer_wrn_args(state: dict[str, torch.Tensor]) -> dict:
    """Depth, widening factor, batch norms and head of a (renamed) WideResNet state dict."""
    per_group = len({int(m.group(1)) for k in state if (m := re.match(r"block1\.(\d+)\.", k))})
    if "block1.0.conv1.weight" not in state or "conv1.weight" not in state:
        raise RobustHubError("checkpoint is not a WideResNet in the reference layout (no conv1 / block1 keys)")
    return dict(depth=6 * per_group + 4, widen=state["block1.0.conv1.weight"].shape[0] // 16,
                dual_bn=any(".pgd." in k for k in state), proj_layers=head_layers(state))


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
    return dict(
        block="bottleneck" if bottleneck else "basic", layers=layers, widths=widths,
        stem="imagenet" if state["conv1.weight"].shape[-1] == 7 else "cifar",
        dual_bn=any(".pgd." in k for k in state), proj_layers=head_layers(state),
    )


def convert_reference_checkpoint(path: str | Path) -> RobustBackbone:
    """A robust-hub backbone holding the checkpoint's weights (pgd route by default).

    The network (ResNet or WideResNet), its depth, widths, stem and head are read off the checkpoint.
    """
    return load_reference_checkpoint(path)[0]


def load_reference_checkpoint(path: str | Path) -> tuple[RobustBackbone, str]:
    """The converted backbone and the sha256 of the checkpoint bytes it was built from."""
    raw, sha = read_reference_state(path)
    state = rename_reference_keys(raw)
    check_finite(state, source=str(path))
    if is_wide_resnet(state):
        for pattern, replacement in WRN_RENAMES:
            state = {pattern.sub(replacement, k): v for k, v in state.items()}
        state = rename_two_layer_head(state)
        name, args, kind = "robust_wrn28_10", infer_wrn_args(state), "WideResNet"
    else:
        state = rename_two_layer_head(state)
        name, args, kind = "robust_resnet18", infer_resnet_args(state), "ResNet"
    model = build_exactly(lambda: create_backbone(name, **args), state, f"{path} (read as the reference {kind} layout)")
    return model.eval(), sha

