"""Load any backbone as an :class:`EvalBackbone`: [0,1] images in, pooled features out.

Supported sources: an ``nn.Module``; a local directory holding a robust-hub backbone, a timm model
(``config.json`` with ``architecture``) or a transformers image model (``config.json`` with
``model_type``); a hub id (``org/name``, ``hf-hub:org/name``, optionally ``@revision``), pinned to a
commit sha and downloaded into the local cache; a timm model name with hub weights; a reference-code
``.pt`` checkpoint (only with ``allow_pickle=True``, converted by robust-hub's converter).

Safetensors is the only format loaded by default; a pickle file is read only when the caller allows
it, and then with ``torch.load(weights_only=True)``. Remote code is never executed.

Every loader goes through :mod:`robust_hub.models.strict`: a model whose config does not fit its
weights (a missing, unused or reshaped tensor) is refused before it is built, and ``weights_sha256``
is the hash of the very bytes the model was loaded from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robust_hub.errors import RobustHubError
from robust_hub.models.strict import LoadReport, StoredWeights, build_exactly, refuse_incomplete, refuse_oversized

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pth.tar")
_PICKLE_MESSAGE = "weights only available as a pickle; pass --allow-pickle to load with weights_only=True"


@dataclass(frozen=True)
class ModelInfo:
    """Where a backbone came from: what every result record cites."""

    id: str
    revision: str
    weights_sha256: str
    library: str
    flags: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("flags")
        return d


class EvalBackbone(nn.Module):
    """Wraps a backbone so it takes [0,1] images of any size and returns pooled features.

    Resizing to the model's input size (bilinear) and the model's own normalisation happen inside,
    so attacks and eps are always in [0,1] pixel units.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        num_features: int,
        info: ModelInfo,
        mean: tuple[float, ...] = (0.0, 0.0, 0.0),
        std: tuple[float, ...] = (1.0, 1.0, 1.0),
        input_size: tuple[int, int] | None = None,
        features: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.num_features = int(num_features)
        self.info = info
        self.input_size = tuple(input_size) if input_size else None
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self._features = features or (lambda m, x: m(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        out = self._features(self.model, x)
        return out.flatten(1)


# ----------------------------------------------------------------------------------------- hashing
def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_state_dict(model: nn.Module) -> str:
    """Content hash of a module's parameters and buffers (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{t.numel()}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def sha256_module(model: nn.Module) -> str:
    """Identity of a whole in-memory model: its module tree (classes, their code, plain settings) and weights.

    Weights alone are not enough: two modules with equal weights but, say, an extra non-parametric
    layer compute different things and must not share a result record.
    """
    import inspect

    h = hashlib.sha256(sha256_state_dict(model).encode())
    for name, module in model.named_modules():
        cls = type(module)
        try:
            code = inspect.getsource(cls)
        except (OSError, TypeError):
            code = ""
        settings = {k: v for k, v in vars(module).items()
                    if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple, type(None)))}
        h.update(f"{name}|{cls.__module__}.{cls.__qualname__}|{sorted(settings.items())!r}|".encode())
        h.update(hashlib.sha256(code.encode()).digest())
    return h.hexdigest()


def sha256_directory(path: Path) -> str:
    """Content hash of every regular file under ``path`` (relative names and bytes)."""
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode() + b"\0")
        h.update(sha256_file(p).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------- checks
def _stored_weights(path: Path, allow_pickle: bool) -> StoredWeights:
    """The weights a model directory is loaded from, read once (their hash is the record's weights_sha256).

    ``model.safetensors``, or the shards its index names; a pickle only when allowed and no safetensors exist.
    """
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RobustHubError(f"{index} is not a safetensors index ({exc})") from None
        if any(Path(name).name != name for name in shards):
            raise RobustHubError(f"{index} names files outside {path}")
        return StoredWeights.read([path / name for name in shards])
    if (path / "model.safetensors").is_file():
        return StoredWeights.read([path / "model.safetensors"])
    pickles = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES))
    if not pickles:
        raise RobustHubError(f"{path} holds no weight file (expected model.safetensors)")
    if not allow_pickle:
        raise RobustHubError(f"{path}: {_PICKLE_MESSAGE}")
    if len(pickles) > 1:
        raise RobustHubError(f"{path} holds several pickle files ({', '.join(p.name for p in pickles)}); "
                             "keep the one that holds the weights")
    return StoredWeights.read(pickles, pickled=True)


def _read_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise RobustHubError(f"{path} has no config.json; it is not a model directory robust-hub can load")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RobustHubError(f"{cfg_file} is not valid JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise RobustHubError(f"{cfg_file} does not hold a JSON object")
    return cfg


# ----------------------------------------------------------------------------------------- loaders
def _wrap_timm(model: nn.Module, info: ModelInfo) -> EvalBackbone:
    import timm.data

    own_head = None
    if hasattr(model, "reset_classifier") and getattr(model, "num_classes", 0):
        own_head = model.get_classifier()  # kept for the "own" protocol, which scores it as it is
        model.reset_classifier(0)
    cfg = timm.data.resolve_data_config({}, model=model)
    size = tuple(cfg["input_size"][-2:])
    backbone = EvalBackbone(model, num_features=model.num_features, info=info, mean=tuple(cfg["mean"]),
                            std=tuple(cfg["std"]), input_size=size)
    if isinstance(own_head, nn.Linear):
        backbone.own_head = own_head
    return backbone


def wrap_module(model: nn.Module, *, model_id: str = "in-memory", library: str | None = None) -> EvalBackbone:
    """Wrap an in-memory backbone (timm contract: ``model(x) -> [B, num_features]``)."""
    if isinstance(model, EvalBackbone):
        return model
    sha = sha256_state_dict(model)
    info = ModelInfo(id=model_id, revision=f"module-sha256:{sha256_module(model)}", weights_sha256=sha,
                     library=library or _library_of(model))
    if hasattr(model, "pretrained_cfg") and hasattr(model, "num_features"):
        return _wrap_timm(model, info)
    num = getattr(model, "num_features", None)
    if num is None:
        raise RobustHubError("an in-memory backbone must expose num_features (timm's backbone contract)")
    return EvalBackbone(model, num_features=num, info=info)


def _library_of(model: nn.Module) -> str:
    mod = type(model).__module__
    if mod.startswith("robust_hub"):
        return "robust_hub"
    if mod.startswith("timm"):
        return "timm"
    if mod.startswith("transformers"):
        return "transformers"
    return "torch"


def _load_timm_dir(path: Path, stored: StoredWeights, info_kw: dict) -> EvalBackbone:
    import timm

    def build() -> nn.Module:  # the architecture config.json describes, with its own head, and no weights yet
        try:
            return timm.create_model(f"local-dir:{path}", pretrained=False)
        except RuntimeError as exc:
            if str(exc).startswith("Unknown model"):
                raise RobustHubError(f"{path}: config.json names an architecture timm does not know ({exc})") from None
            raise RobustHubError(f"{path}: timm cannot build this model ({exc})") from None
        except (KeyError, ValueError, TypeError) as exc:  # timm raises these for bad configs
            raise RobustHubError(f"{path}: timm cannot build this model ({exc})") from None

    model = build_exactly(build, stored.tensors, str(path))
    return _wrap_timm(model.eval(), ModelInfo(**info_kw))


def _load_robust_hub_dir(path: Path, info_kw: dict) -> EvalBackbone:
    from robust_hub.models.hub import load_model_dir

    model, stored = load_model_dir(path)
    return _wrap_timm(model, ModelInfo(**info_kw, weights_sha256=stored.sha256))


def _processor_norm(path: Path, cfg: dict) -> tuple[tuple, tuple, tuple[int, int], list[str]]:
    """Mean, std and input size of a transformers image model, and flags if any were guessed."""
    flags: list[str] = []
    proc = {}
    proc_file = path / "preprocessor_config.json"
    if proc_file.is_file():
        try:
            proc = json.loads(proc_file.read_text())
        except json.JSONDecodeError as exc:
            raise RobustHubError(f"{proc_file} is not valid JSON ({exc})") from exc
    if proc.get("do_normalize", True) is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    elif "image_mean" in proc and "image_std" in proc:
        mean, std = tuple(proc["image_mean"]), tuple(proc["image_std"])
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        flags.append("normalisation_guessed")
    size = proc.get("crop_size") if proc.get("do_center_crop") else proc.get("size")
    if isinstance(size, dict):
        size = (size.get("height") or size.get("shortest_edge"), size.get("width") or size.get("shortest_edge"))
    elif isinstance(size, int):
        size = (size, size)
    if not size or None in size:
        s = cfg.get("image_size") or cfg.get("vision_config", {}).get("image_size")
        size = (s, s) if isinstance(s, int) else tuple(s) if s else None
    if size is None:
        flags.append("input_size_guessed")
        size = (224, 224)
    return mean, std, (int(size[0]), int(size[1])), flags


def _hf_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values=x)
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled.flatten(1)
    hidden = out.last_hidden_state
    return hidden.mean(dim=(2, 3)) if hidden.dim() == 4 else hidden.mean(dim=1)


def _hf_base_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Features of the base model, also when the checkpoint is a task model (its head loaded, not used)."""
    return _hf_features(model.base_model, x)


def _hf_backbone_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=x).feature_maps[-1].mean(dim=(2, 3))


def _transformers_class(path: Path, config) -> tuple[type, bool]:
    """The class the checkpoint was saved from (``architectures``), so every stored tensor has its place.

    Falls back to the model type's AutoModel, then AutoBackbone, class; True when it is a backbone class.
    """
    import transformers

    names = getattr(config, "architectures", None) or []
    for name in names[:1]:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls, "Backbone" in name
    for auto, backbone in ((transformers.AutoModel, False), (transformers.AutoBackbone, True)):
        if type(config) in auto._model_mapping:
            return auto._model_mapping[type(config)], backbone
    raise RobustHubError(f"{path}: transformers has no image model class for {type(config).__name__}")


@contextlib.contextmanager
def _transformers_quiet():
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _labels_fit(path: Path, cfg: dict, stored: StoredWeights) -> None:
    """A head of n classes holds at least n values; checked on the raw JSON, before transformers expands it."""
    labels = cfg.get("id2label")
    count = len(labels) if isinstance(labels, dict) else cfg.get("num_labels", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise RobustHubError(f"{path}/config.json: num_labels must be a non-negative integer, got {count!r}")
    if count > stored.numel:
        raise RobustHubError(f"{path}/config.json asks for {count:,} classes; its weights hold {stored.numel:,} values")


def _load_transformers_dir(path: Path, cfg: dict, stored: StoredWeights, info_kw: dict) -> EvalBackbone:
    import transformers

    if "auto_map" in cfg:
        raise RobustHubError(f"{path} needs remote code (auto_map in config.json); robust-hub never runs remote code")
    _labels_fit(path, cfg, stored)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise RobustHubError(f"{path}: transformers cannot read this config ({exc})") from None
    cls, is_backbone = _transformers_class(path, config)
    refuse_oversized(lambda: cls(config), stored.numel, str(path))
    try:  # the tensors read (and hashed) above, not the files again; transformers maps legacy names itself
        with _transformers_quiet():  # its load report is checked below and becomes one error line
            model, report = cls.from_pretrained(None, config=config, state_dict=stored.tensors, output_loading_info=True)
    except (ValueError, RuntimeError, OSError) as exc:
        raise RobustHubError(f"{path}: transformers cannot load this model ({str(exc).splitlines()[0]})") from None
    refuse_incomplete(LoadReport(tuple(sorted(report["missing_keys"])), tuple(sorted(report["unexpected_keys"])),
                                 tuple(sorted(str(k) for k in report["mismatched_keys"]))), str(path))
    model.eval()
    features = _hf_backbone_features if is_backbone else _hf_base_features
    mean, std, size, flags = _processor_norm(path, cfg)
    with torch.no_grad():
        num = features(model, torch.zeros(1, 3, *size)).flatten(1).shape[1]
    info = ModelInfo(**info_kw, flags=tuple(flags))
    return EvalBackbone(model, num_features=num, info=info, mean=mean, std=std, input_size=size, features=features)


def load_local_dir(path: Path, *, model_id: str, revision: str, allow_pickle: bool = False) -> EvalBackbone:
    """Load a model directory (robust-hub, timm or transformers layout), every stored tensor and nothing else."""
    if not path.is_dir():
        raise RobustHubError(f"model directory {path} does not exist")
    cfg = _read_config(path)
    kw = dict(id=model_id, revision=revision)
    if "robust_hub" in cfg:
        return _load_robust_hub_dir(path, dict(kw, library="robust_hub"))
    stored = _stored_weights(path, allow_pickle)
    kw["weights_sha256"] = stored.sha256
    if "architecture" in cfg:
        return _load_timm_dir(path, stored, dict(kw, library="timm"))
    if "model_type" in cfg:
        return _load_transformers_dir(path, cfg, stored, dict(kw, library="transformers"))
    raise RobustHubError(f"{path}/config.json names neither a timm architecture nor a transformers model_type")


def _load_reference_checkpoint(path: Path, allow_pickle: bool) -> EvalBackbone:
    if not allow_pickle:
        raise RobustHubError(f"{path}: {_PICKLE_MESSAGE}")
    from robust_hub.models.convert import load_reference_checkpoint
    model, sha = load_reference_checkpoint(path)
    info = ModelInfo(id=str(path), revision=f"file-sha256:{sha}", weights_sha256=sha, library="robust_hub")
    return _wrap_timm(model, info)


# ----------------------------------------------------------------------------------------- hub
def _split_revision(source: str, revision: str | None) -> tuple[str, str | None]:
    if "@" in source:
        source, at_rev = source.rsplit("@", 1)
        if revision and revision != at_rev:
            raise RobustHubError(f"two different revisions given for {source}: {at_rev} and {revision}")
        revision = at_rev
    return source, revision


def resolve_hub_revision(repo_id: str, revision: str | None) -> tuple[str, Path]:
    """Pin a hub repo to a commit sha and download its config and weights; honours HF_HUB_OFFLINE."""
    import huggingface_hub
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    patterns = ["*.json", "*.safetensors", "*.txt", "*.md"]
    try:
        if constants.HF_HUB_OFFLINE:
            local = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
            return local.name, local
        sha = huggingface_hub.HfApi().model_info(repo_id, revision=revision).sha
        local = Path(snapshot_download(repo_id, revision=sha, allow_patterns=patterns))
        if not list(local.glob("*.safetensors")):
            local = Path(snapshot_download(repo_id, revision=sha, allow_patterns=patterns + ["*.bin", "*.pth"]))
        return sha, local
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise RobustHubError(f"cannot resolve hub model {repo_id!r} at revision {revision or 'main'} ({exc})") from exc


def _timm_name_hub_id(name: str) -> str | None:
    import timm

    if not timm.is_model(name.split(".")[0]):
        return None
    cfg = timm.models.get_pretrained_cfg(name)
    return getattr(cfg, "hf_hub_id", None) if cfg else None


def load_backbone(
    source: str | os.PathLike | nn.Module,
    *,
    revision: str | None = None,
    allow_pickle: bool = False,
) -> EvalBackbone:
    """Load ``source`` as an :class:`EvalBackbone` with its provenance in ``.info``."""
    if isinstance(source, nn.Module):
        return wrap_module(source)
    text = str(source)
    path = Path(text.removeprefix("local-dir:")).expanduser()
    if path.is_file():
        if text.endswith(PICKLE_SUFFIXES):
            return _load_reference_checkpoint(path, allow_pickle)
        raise RobustHubError(f"{path} is a file; give a model directory, a hub id or a reference .pt checkpoint")
    if path.is_dir():
        rev = f"local-sha256:{sha256_directory(path)}"
        return load_local_dir(path, model_id=str(path.resolve()), revision=rev, allow_pickle=allow_pickle)
    if text.startswith("local-dir:") or text.startswith((".", "/", "~")) or text.endswith(PICKLE_SUFFIXES):
        raise RobustHubError(f"model path {path} does not exist")
    repo, revision = _split_revision(text.removeprefix("hf-hub:"), revision)
    if "/" not in repo:
        hub_id = _timm_name_hub_id(repo)
        if hub_id is None:
            raise RobustHubError(f"{repo!r} is neither a local directory, a hub id nor a timm model with hub weights")
        repo = hub_id
    sha, local = resolve_hub_revision(repo, revision)
    return load_local_dir(local, model_id=repo, revision=sha, allow_pickle=allow_pickle)
