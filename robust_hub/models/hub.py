"""The Hugging Face artifact: model.safetensors + timm-style config.json + preprocessor config.

``config.json`` is timm's format (``architecture``, ``model_args``, ``pretrained_cfg``) so that
``timm.create_model("local-dir:...")`` and transformers' ``AutoModel`` (TimmWrapperModel) load it
once robust_hub is imported; a ``robust_hub`` section adds what robust-hub itself needs to know.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from robust_hub.errors import RobustHubError
from robust_hub.io import atomic_directory, write_json_atomic, write_text_atomic
from robust_hub.models.backbone import RobustBackbone
from robust_hub.models.registry import ARCHITECTURES, create_backbone
from robust_hub.models.strict import StoredWeights, build_exactly

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
PICKLE_NAMES = ("pytorch_model.bin", "model.pt", "model.pth", "checkpoint.pt")
HUB_FILES = ["config.json", "preprocessor_config.json", WEIGHTS_NAME, "README.md", "*.png", "*.json"]


def architecture_of(model: RobustBackbone) -> str:
    return model.pretrained_cfg.get("architecture") or type(model).__name__


def build_config(model: RobustBackbone, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config.json content describing ``model``."""
    pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in ("file", "source", "hf_hub_id", "tag")}
    input_size = list(pretrained_cfg.get("input_size", (3, 32, 32)))
    if "img_size" in model.model_args:
        input_size = [3, model.model_args["img_size"], model.model_args["img_size"]]
        pretrained_cfg["input_size"] = input_size
    return {
        "architecture": architecture_of(model),
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "model_args": dict(model.model_args),
        "pretrained_cfg": pretrained_cfg,
        "robust_hub": {
            "format_version": FORMAT_VERSION,
            "normalization": {"mean": model.normalize.mean.flatten().tolist(), "std": model.normalize.std.flatten().tolist()},
            "input_size": input_size,
            "dual_bn": model.dual_bn,
            "default_route": model.default_route,
            "has_projector": model.projector is not None,
            **(metadata or {}),
        },
    }


def save_pretrained(model: RobustBackbone, save_directory: str | os.PathLike, *,
                    metadata: dict[str, Any] | None = None, model_card: str | None = None,
                    extra_files: dict[str, bytes] | None = None, overwrite: bool = False) -> Path:
    """Write the backbone as a Hugging Face model directory, atomically (all files or none).

    An existing non-empty directory that is not a robust-hub model is refused unless ``overwrite``; even
    then only the files a model consists of are replaced (see :func:`robust_hub.io.atomic_directory`).
    """
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    check_finite(state, source="the model being saved")
    config = build_config(model, metadata)
    with atomic_directory(save_directory, "model", overwrite=overwrite) as staging:
        save_file(state, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
        write_json_atomic(staging / "config.json", config)
        write_json_atomic(staging / "preprocessor_config.json", {
            "image_processor_type": "TimmWrapperImageProcessor",
            "pretrained_cfg": config["pretrained_cfg"],
        })
        if model_card is not None:
            write_text_atomic(staging / "README.md", model_card)
        for name, payload in (extra_files or {}).items():
            (staging / name).write_bytes(payload)
    return Path(save_directory)


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise RobustHubError(f"{source} has NaN or infinite values in {key!r}; refusing to use it")


def resolve_model_dir(repo_id_or_dir: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory as is, or a Hub repo downloaded (safetensors and metadata only)."""
    path = Path(repo_id_or_dir)
    if path.exists():
        if not path.is_dir():
            raise RobustHubError(f"{path} is a file; give the model directory that holds config.json")
        return path
    if str(repo_id_or_dir).startswith((".", "/")) or str(repo_id_or_dir).count("/") != 1:
        raise RobustHubError(f"model directory {repo_id_or_dir} does not exist (and it is not a Hub id 'org/name')")
    check_repo_id(str(repo_id_or_dir))
    return _download(str(repo_id_or_dir), revision)


def check_repo_id(repo_id: str) -> None:
    """A Hub id the Hub would accept ('org/name' of allowed characters), or one clear error."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise RobustHubError(f"{repo_id!r} is not a valid Hub id: {str(error).split('.')[0]}") from None


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES + list(PICKLE_NAMES)))
    except RepositoryNotFoundError:
        raise RobustHubError(f"model {repo_id!r} does not exist on the Hub (or is private)") from None
    except RevisionNotFoundError:
        raise RobustHubError(f"model {repo_id!r} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        raise RobustHubError(f"model {repo_id!r} is not in the local cache and the Hub cannot be reached") from None
    except HfHubHTTPError as error:
        raise RobustHubError(f"could not download {repo_id!r}: {str(error).strip().splitlines()[0]}") from None


def read_config(model_dir: Path) -> dict[str, Any]:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise RobustHubError(f"{model_dir} has no config.json; it is not a saved model directory")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RobustHubError(f"{config_path} is not valid JSON ({error})") from None
    if not isinstance(config, dict) or "architecture" not in config:
        raise RobustHubError(f"{config_path} names no 'architecture'")
    if not isinstance(config.get("model_args", {}), dict):
        raise RobustHubError(f"{config_path}: 'model_args' must be a JSON object of constructor arguments")
    num_classes = config.get("num_classes", 0)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise RobustHubError(f"{config_path}: 'num_classes' must be a non-negative integer, got {num_classes!r}")
    return config


def load_weights(model_dir: Path) -> StoredWeights:
    """``model.safetensors``, read once and hashed; finite values only."""
    weights = model_dir / WEIGHTS_NAME
    if not weights.is_file():
        pickles = [name for name in PICKLE_NAMES if (model_dir / name).is_file()]
        if pickles:
            raise RobustHubError(
                f"{model_dir} has weights only as a pickle ({pickles[0]}); robust-hub loads safetensors only. "
                "Convert trusted files with `robust-hub convert`"
            )
        raise RobustHubError(f"{model_dir} has no {WEIGHTS_NAME}")
    try:
        stored = StoredWeights.read([weights])
    except OSError as error:
        raise RobustHubError(f"cannot read {weights} ({error})") from None
    check_finite(stored.tensors, source=str(weights))
    return stored


def load_model_dir(model_dir: Path) -> tuple[RobustBackbone, StoredWeights]:
    """A robust-hub backbone and the weights it holds, all of them (see :mod:`robust_hub.models.strict`)."""
    config = read_config(model_dir)
    architecture = config["architecture"]
    if architecture not in ARCHITECTURES:
        raise RobustHubError(
            f"{model_dir} holds a {architecture!r} model, not a robust-hub backbone; load it with timm or transformers"
        )
    stored = load_weights(model_dir)
    model = build_exactly(lambda: create_backbone(architecture, num_classes=config.get("num_classes", 0),
                                                  **config.get("model_args", {})), stored.tensors, str(model_dir))
    model.hub_config = config
    return model.eval(), stored


def from_pretrained(repo_id_or_dir: str | os.PathLike, revision: str | None = None) -> RobustBackbone:
    """Load a saved robust-hub backbone from a directory or a Hub repo id, strictly."""
    return load_model_dir(resolve_model_dir(repo_id_or_dir, revision))[0]
