"""Strict loading, the one rule every loader follows: every stored tensor is used, nothing is left at random.

A model is refused when any parameter or buffer it has is missing from the weights (it would keep its
random initialisation), when any stored tensor has no place in it (the config describes another model),
or when a shape differs. The sizes a config implies are checked against the stored tensors on the
``meta`` device, before a single byte is allocated, so a config asking for a 20-million-class head
costs nothing. :class:`StoredWeights` reads each weight file once and hashes the bytes it parses, so a
record's ``weights_sha256`` is the hash of exactly what was loaded.

robust-hub's own models, timm models and reference checkpoints go through :func:`build_exactly`;
transformers, whose loader renames checkpoint keys itself, reports what it left out and that report
goes through the same :func:`refuse_incomplete`.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, TypeVar

import torch
from torch import nn

from robust_hub.errors import RobustHubError

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class LoadReport:
    """What a load would leave out: parameters without stored values, stored tensors without a place, shapes."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[str, ...] = ()  # "name: stored (a, b) vs model (c, d)"

    @classmethod
    def compare(cls, model_shapes: Mapping[str, tuple[int, ...]], stored_shapes: Mapping[str, tuple[int, ...]]) -> "LoadReport":
        return cls(
            missing=tuple(sorted(set(model_shapes) - set(stored_shapes))),
            unexpected=tuple(sorted(set(stored_shapes) - set(model_shapes))),
            mismatched=tuple(f"{k}: stored {tuple(stored_shapes[k])} vs config {tuple(model_shapes[k])}"
                             for k in sorted(set(model_shapes) & set(stored_shapes))
                             if tuple(model_shapes[k]) != tuple(stored_shapes[k])),
        )


def refuse_incomplete(report: LoadReport, source: str) -> None:
    """The one check: a load that would initialise, drop or reshape anything is an error."""
    problems = [f"{what} {_names(keys)}" for what, keys in (
        ("missing (would stay random):", report.missing),
        ("unexpected (stored, unused):", report.unexpected),
        ("shapes differ:", report.mismatched)) if keys]
    if problems:
        raise RobustHubError(f"{source}: the weights do not match the model its config describes: " + "; ".join(problems))


def _names(keys: Iterable[str], limit: int = 4) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown} (and {len(keys) - limit} more)" if len(keys) > limit else shown


def state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@dataclass
class StoredWeights:
    """The tensors of one or more weight files, read once; ``sha256`` is the hash of the bytes parsed."""

    files: list[Path]
    tensors: dict[str, torch.Tensor]
    sha256: str
    shapes: dict[str, tuple[int, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self.shapes = {k: tuple(v.shape) for k, v in self.tensors.items()}

    @property
    def numel(self) -> int:
        return sum(v.numel() for v in self.tensors.values())

    @classmethod
    def read(cls, files: list[Path], *, pickled: bool = False) -> "StoredWeights":
        """Safetensors files (or, when ``pickled``, files read with ``torch.load(weights_only=True)``)."""
        tensors: dict[str, torch.Tensor] = {}
        digests = []
        for path in files:
            data = path.read_bytes()
            digests.append((path.name, hashlib.sha256(data).hexdigest()))
            part = _parse_pickle(path, data) if pickled else _parse_safetensors(path, data)
            duplicated = sorted(set(part) & set(tensors))
            if duplicated:
                raise RobustHubError(f"{path} repeats tensors of another weight file ({_names(duplicated)})")
            tensors.update(part)
        if len(digests) == 1:
            sha = digests[0][1]
        else:
            h = hashlib.sha256()
            for name, digest in digests:
                h.update(name.encode() + b"\0" + digest.encode())
            sha = h.hexdigest()
        return cls(list(files), tensors, sha)


def _parse_safetensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # the library raises several unrelated types for bad files
        raise RobustHubError(f"{path} is corrupt: not a valid safetensors file ({exc})") from None


def _parse_pickle(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise RobustHubError(f"{path} is corrupt or holds more than tensors ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RobustHubError(f"{path} does not hold a flat dict of tensors")
    return state


def skeleton(build: Callable[[], M]) -> M:
    """``build()`` on the meta device: the shapes a config implies, with no memory allocated."""
    with torch.device("meta"):
        return build()


def build_exactly(build: Callable[[], M], tensors: Mapping[str, torch.Tensor], source: str) -> M:
    """``build()`` holding exactly ``tensors``; refused before anything is allocated if they do not fit."""
    refuse_incomplete(LoadReport.compare(state_shapes(skeleton(build)), {k: tuple(v.shape) for k, v in tensors.items()}),
                      source)
    model = build()
    model.load_state_dict(tensors, strict=True)
    return model


def refuse_oversized(build: Callable[[], nn.Module], stored_numel: int, source: str) -> None:
    """For loaders that map names themselves: a config needing more values than are stored would leave some random."""
    distinct = {id(v): v for v in skeleton(build).state_dict(keep_vars=True).values()}  # tied weights once
    needed = sum(v.numel() for v in distinct.values())
    if needed > stored_numel:
        raise RobustHubError(f"{source}: its config describes a model of {needed:,} values but the weights hold "
                             f"{stored_numel:,}; the rest would be random")

