"""SimCLR-style augmentation of whole batches, on the batch's own device, with kornia."""

from __future__ import annotations

import math
from collections import OrderedDict

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from robust_hub.errors import RobustHubError


class SimCLRAugment(nn.Module):
    """The ACL/DynACL augmentation at ``strength`` s in [0, 1], applied per sample to a batch.

    Pipeline (kornia, each sample drawing its own parameters):
    ``RandomResizedCrop(size, scale=(1 - 0.9 s, 1), bicubic)`` ->
    ``RandomHorizontalFlip(0.5)`` ->
    ``ColorJitter(0.4 s, 0.4 s, 0.4 s, 0.1 s)`` with probability ``0.8 s`` ->
    ``RandomGrayscale(0.2 s)`` -> clamp to [0, 1] (bicubic resampling overshoots).
    At s = 0 only the flip remains: crops cover the whole image and no colour changes.

    Randomness comes from torch's global CPU generator (kornia draws every parameter there,
    even for CUDA batches), so ``torch.manual_seed(k)`` before a call reproduces it exactly and
    Accelerate's checkpoints, which save that generator, resume it.

    Differences from torchvision's per-image ``transforms.v2`` pipeline:

    * kornia's ``ColorJitter`` uses torchvision's formulas and factor ranges (brightness
      multiplies, contrast blends with the grey mean, saturation with the grey image, hue
      rotates in HSV), but draws the random *order* of those four steps once per call, so
      all samples of one batch share the order (torchvision draws one order per image).
      The factors and the 0.8 s gate are per sample.
    * The crop is resampled by one batched bicubic warp that maps the crop's corner pixels
      onto the output's corner pixels, without antialiasing; torchvision crops, then resizes
      with half-pixel alignment and antialiasing. The geometry differs by under a pixel,
      and the missing antialiasing matters only when a crop is shrunk (source > ``size``).
    * Crop sizes follow torchvision's sampler (10 tries, then a centre-crop fallback);
      grayscale uses the same luma weights (0.299, 0.587, 0.114).
    """

    def __init__(self, strength: float = 1.0, size: int = 32) -> None:
        super().__init__()
        self.strength = _check_strength(strength)
        self.size = _check_size(size)
        s = self.strength
        self.pipeline = nn.Sequential(
            OrderedDict(
                crop=K.RandomResizedCrop(
                    (self.size, self.size),
                    scale=(1.0 - 0.9 * s, 1.0),
                    resample="BICUBIC",
                    # One batched warp instead of kornia's default per-sample slicing loop:
                    # about 3x faster on CPU and a single kernel on GPU.
                    cropping_mode="resample",
                ),
                flip=K.RandomHorizontalFlip(p=0.5),
                jitter=K.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s, p=0.8 * s),
                grayscale=K.RandomGrayscale(p=0.2 * s),
            )
        )

    def extra_repr(self) -> str:
        return f"strength={self.strength}, size={self.size}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """One augmented view of each image: float ``[B, 3, size, size]`` in [0, 1]."""
        return self._augment(_as_float(images))

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two independent views and the un-augmented images (float in [0, 1], resized to ``size``)."""
        x = _as_float(images)
        return self._augment(x), self._augment(x), self._resize(x)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return self.pipeline(x).clamp(0.0, 1.0)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x.clone()  # never hand back the caller's own tensor
        resized = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return resized.clamp_(0.0, 1.0)


def _check_strength(strength: object) -> float:
    valid = isinstance(strength, (int, float)) and not isinstance(strength, bool)
    if not valid or not math.isfinite(float(strength)) or not 0.0 <= float(strength) <= 1.0:  # type: ignore[arg-type]
        raise RobustHubError(f"augmentation strength must be a number in [0, 1], got {strength!r}.")
    return float(strength)  # type: ignore[arg-type]


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise RobustHubError(f"augmentation size must be a positive integer, got {size!r}.")
    return size


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """A ``[B, 3, H, W]`` batch as floats in [0, 1] (uint8 is divided by 255; floats are taken as they are)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise RobustHubError(f"augmentation expects an image batch [B, 3, H, W], got {shape}.")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.dtype.is_floating_point:
        raise RobustHubError(f"augmentation expects uint8 or float images, got {images.dtype}.")
    return images
