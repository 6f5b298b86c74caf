"""CIFAR-10-C accuracy: from the official files, or from a generated stand-in that says so.

Official layout (Hendrycks & Dietterich): a directory with ``<corruption>.npy`` arrays of
50,000 uint8 NHWC images (severity 1 first, 10,000 images per severity) and ``labels.npy``.
The reported CA is the mean over severities of the per-severity mean over corruptions.

The generator applies a documented subset of corruptions to a test split with robust-hub's own
parameter choices (see ``GENERATED_PARAMS``); its numbers are not comparable with published
CIFAR-10-C numbers, so every result computed from it carries ``generated: true``. A directory
written by :func:`save_corruption_set` holds a ``generated.json`` marker and stays labelled when
it is loaded back.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from robust_hub.errors import RobustHubError

CIFAR10C_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)
OFFICIAL_PER_SEVERITY = 10_000
GENERATED_MARKER = "generated.json"
# corruption -> its parameter at severities 1..5 (robust-hub's choices, in [0,1] pixel units)
GENERATED_PARAMS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),    # noise std
    "shot_noise": (500, 250, 100, 75, 50),                # Poisson photons per unit intensity
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),      # fraction of salt-and-pepper pixels
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),           # blur sigma in pixels
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),              # added to every pixel
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),              # contrast factor around the image mean
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),            # downscale factor before upscaling back
    "jpeg_compression": (80, 65, 58, 50, 40),             # JPEG quality
}
GENERATED_CORRUPTIONS = tuple(GENERATED_PARAMS)


@dataclass
class CorruptionSet:
    """Images (uint8 NCHW) per corruption and severity, with labels shared by every block."""

    images: dict[str, dict[int, torch.Tensor]]
    labels: torch.Tensor
    generated: bool
    source: str
    flags: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- official files
def _np_load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RobustHubError(f"{path} is not a readable .npy array ({exc})") from exc


def load_cifar10c(
    root: str | Path, *, corruptions: tuple[str, ...] | None = None, n_per_severity: int | None = None
) -> CorruptionSet:
    """Load the official-layout files under ``root``; ``n_per_severity`` keeps a prefix of each block."""
    root = Path(root)
    if not root.is_dir():
        raise RobustHubError(f"CIFAR-10-C directory {root} does not exist")
    generated = (root / GENERATED_MARKER).is_file()
    if corruptions is None:
        corruptions = CIFAR10C_CORRUPTIONS if not generated else tuple(json.loads((root / GENERATED_MARKER).read_text())["corruptions"])
    missing = [n for n in ("labels", *corruptions) if not (root / f"{n}.npy").is_file()]
    if missing:
        raise RobustHubError(f"CIFAR-10-C directory {root} lacks {', '.join(m + '.npy' for m in missing)}")
    labels = _np_load(root / "labels.npy")
    if labels.ndim != 1 or len(labels) % len(SEVERITIES) != 0:
        raise RobustHubError(f"{root / 'labels.npy'} must hold one label per image, 5 severities of equal size")
    per = len(labels) // len(SEVERITIES)
    keep = per if n_per_severity is None else min(per, n_per_severity)
    images: dict[str, dict[int, torch.Tensor]] = {}
    for name in corruptions:
        arr = _np_load(root / f"{name}.npy")
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != len(labels) or arr.shape[-1] != 3:
            raise RobustHubError(f"{root / (name + '.npy')} must be uint8 [{len(labels)}, H, W, 3], got {arr.dtype} {list(arr.shape)}")
        images[name] = {s: torch.from_numpy(np.array(arr[(s - 1) * per:(s - 1) * per + keep])).permute(0, 3, 1, 2)
                        for s in SEVERITIES}
    first = torch.from_numpy(np.array(labels[:keep], dtype=np.int64))
    for s in SEVERITIES[1:]:
        if not np.array_equal(labels[(s - 1) * per:(s - 1) * per + keep], labels[:keep]):
            raise RobustHubError(f"{root / 'labels.npy'}: severity blocks do not share the same labels")
    flags = []
    if keep < OFFICIAL_PER_SEVERITY and not generated:
        flags.append("c10c_subset")
    return CorruptionSet(images, first, generated, str(root.resolve()), flags)


# ----------------------------------------------------------------------------------------- generator
def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    k = (k / k.sum()).to(x)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    out = []
    for img in (x * 255).round().byte().permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
        out.append(torch.from_numpy(np.array(Image.open(buf).convert("RGB"))))
    return torch.stack(out).permute(0, 3, 1, 2).float() / 255


def corrupt(x: torch.Tensor, name: str, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Apply generated corruption ``name`` at ``severity`` (1-5) to float [0,1] NCHW images."""
    if name not in GENERATED_PARAMS:
        raise RobustHubError(f"no generator for corruption {name!r}; available: {', '.join(GENERATED_CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise RobustHubError(f"severity must be 1-5, not {severity}")
    p = GENERATED_PARAMS[name][severity - 1]
    if name == "gaussian_noise":
        out = x + p * torch.randn(x.shape, generator=generator)
    elif name == "shot_noise":
        out = torch.poisson(x * p, generator=generator) / p
    elif name == "impulse_noise":
        u = torch.rand(x.shape, generator=generator)
        out = torch.where(u < p / 2, 0.0, torch.where(u > 1 - p / 2, 1.0, x))
    elif name == "gaussian_blur":
        out = _gaussian_blur(x, p)
    elif name == "brightness":
        out = x + p
    elif name == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        out = (x - mean) * p + mean
    elif name == "pixelate":
        h, w = x.shape[-2:]
        small = F.interpolate(x, size=(max(1, int(h * p)), max(1, int(w * p))), mode="area")
        out = F.interpolate(small, size=(h, w), mode="nearest")
    else:
        out = _jpeg(x, p)
    return out.clamp(0, 1)


def generate_corruption_set(
    images: torch.Tensor, labels: torch.Tensor, *, corruptions: tuple[str, ...] = GENERATED_CORRUPTIONS,
    seed: int = 0, source: str = "generated",
) -> CorruptionSet:
    """Corrupt uint8 NCHW ``images`` with each generated corruption at each severity (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    x = images.float() / 255
    out = {name: {s: (corrupt(x, name, s, gen) * 255).round().to(torch.uint8) for s in SEVERITIES} for name in corruptions}
    return CorruptionSet(out, labels.clone(), True, source)


def save_corruption_set(cset: CorruptionSet, root: str | Path) -> Path:
    """Write ``cset`` in the official layout (plus ``generated.json`` when it is generated)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, per_sev in cset.images.items():
        np.save(root / f"{name}.npy", torch.cat([per_sev[s] for s in SEVERITIES]).permute(0, 2, 3, 1).numpy())
    np.save(root / "labels.npy", cset.labels.repeat(len(SEVERITIES)).numpy())
    if cset.generated:
        (root / GENERATED_MARKER).write_text(json.dumps({"generated": True, "corruptions": list(cset.images),
                                                         "source": cset.source, "params": GENERATED_PARAMS}))
    return root


# ----------------------------------------------------------------------------------------- accuracy
@torch.no_grad()
def clean_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device) -> float:
    """Top-1 accuracy on uint8 images; the count stays on the device, read back once (no sync per batch)."""
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float().div(255).to(device, non_blocking=True)
        correct += (model(x).argmax(1) == labels[i:i + batch_size].to(device, non_blocking=True)).sum()
    return correct.item() / len(images)


def corruption_accuracy(
    model: nn.Module, cset: CorruptionSet, *, batch_size: int = 256, device: str | torch.device = "cpu", progress: bool = True
) -> dict:
    """Accuracy per corruption and severity, the per-severity means and their mean (CA)."""
    model.eval()
    per = {}
    blocks = [(n, s) for n in cset.images for s in SEVERITIES]
    for name, s in tqdm(blocks, desc="CIFAR-10-C", disable=not progress, leave=False):
        per.setdefault(name, {})[str(s)] = clean_accuracy(model, cset.images[name][s], cset.labels, batch_size, device)
    return corruption_summary(per, cset)


def corruption_summary(per: dict[str, dict[str, float]], cset: CorruptionSet) -> dict:
    """The record's corruption result from the accuracies per corruption and severity (``per[name][str(sev)]``)."""
    by_sev = {str(s): float(np.mean([per[n][str(s)] for n in per])) for s in SEVERITIES}
    return {"per_corruption": per, "mean_per_severity": by_sev, "mean": float(np.mean(list(by_sev.values()))),
            "generated": cset.generated, "source": cset.source, "n_per_severity": len(cset.labels)}
