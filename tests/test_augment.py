"""Tests of robust_hub.data.SimCLRAugment: ranges, per-sample randomness, seeding, strength, statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from robust_hub.data import SimCLRAugment
from robust_hub.errors import RobustHubError


def _images(n: int, size: int = 32, seed: int = 0, width: int | None = None) -> torch.Tensor:
    """Colourful random uint8 images (no two channels ever equal by chance)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, width or size), dtype=torch.uint8, generator=generator)


def _binomial_tolerance(p: float, n: int, sigmas: float = 5.0) -> float:
    """Half-width of a ``sigmas``-sigma interval for a fraction of n Bernoulli(p) draws."""
    return sigmas * math.sqrt(p * (1 - p) / n)


def _is_grey(batch: torch.Tensor) -> torch.Tensor:
    return (batch[:, 0] == batch[:, 1]).flatten(1).all(1) & (batch[:, 1] == batch[:, 2]).flatten(1).all(1)


@pytest.mark.parametrize(("size", "height", "width"), [(32, 32, 32), (24, 32, 32), (16, 40, 28)])
def test_output_shape_dtype_and_range(size: int, height: int, width: int) -> None:
    torch.manual_seed(0)
    out = SimCLRAugment(1.0, size=size)(_images(64, height, width=width))
    assert out.shape == (64, 3, size, size) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_float_input_matches_uint8_input() -> None:
    images = _images(16)
    aug = SimCLRAugment(1.0)
    torch.manual_seed(3)
    from_uint8 = aug(images)
    torch.manual_seed(3)
    from_float = aug(images.float() / 255)
    assert torch.allclose(from_uint8, from_float, atol=1e-6)
    assert images.dtype == torch.uint8  # the input is left alone


def test_each_sample_draws_its_own_parameters() -> None:
    batch = _images(1).expand(64, -1, -1, -1)
    torch.manual_seed(0)
    out = SimCLRAugment(1.0)(batch)
    assert len({out[k].numpy().tobytes() for k in range(64)}) == 64


def test_same_seed_same_output_other_seed_other_output() -> None:
    images, aug = _images(32), SimCLRAugment(1.0)
    torch.manual_seed(11)
    first = aug(images)
    torch.manual_seed(11)
    assert torch.equal(aug(images), first)
    torch.manual_seed(12)
    assert not torch.equal(aug(images), first)
    torch.manual_seed(11)
    views = aug.views(images)
    torch.manual_seed(11)
    again = aug.views(images)
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    assert torch.equal(views[0], first)  # views draw from the same global generator as forward


def test_views_are_independent_and_keep_the_original() -> None:
    images = _images(8)
    torch.manual_seed(0)
    view_i, view_j, original = SimCLRAugment(1.0).views(images)
    assert view_i.shape == view_j.shape == original.shape == (8, 3, 32, 32)
    assert not torch.equal(view_i, view_j)
    assert torch.allclose(original, images.float() / 255)
    # On a gentle ramp any sound antialiased 2x shrink agrees with 2x2 averaging, up to the border.
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    ramp = ((rows + 2 * cols) / 100).expand(8, 3, 32, 32)
    _, _, shrunk = SimCLRAugment(1.0, size=16).views(ramp)
    expected = torch.nn.functional.avg_pool2d(ramp, 2)
    assert shrunk.shape == (8, 3, 16, 16) and (shrunk - expected).abs().max() < 0.04
    assert (shrunk - expected)[..., 1:-1, 1:-1].abs().max() < 1e-4


def test_zero_strength_only_flips() -> None:
    n = 400
    images = _images(n)
    torch.manual_seed(0)
    out = SimCLRAugment(0.0)(images)
    x = images.float() / 255
    same = (out - x).abs().amax((1, 2, 3)) < 1e-4
    flipped = (out - x.flip(-1)).abs().amax((1, 2, 3)) < 1e-4
    assert bool((same | flipped).all())
    assert abs(flipped.float().mean().item() - 0.5) <= _binomial_tolerance(0.5, n)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_grayscale_rate_follows_strength(strength: float) -> None:
    n, p = 3000, 0.2 * strength
    torch.manual_seed(1)
    out = SimCLRAugment(strength, size=8)(_images(n, 8))
    assert abs(_is_grey(out).float().mean().item() - p) <= _binomial_tolerance(p, n)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_crop_area_follows_strength(strength: float) -> None:
    aug = SimCLRAugment(strength, size=64)
    torch.manual_seed(2)
    aug(_images(500, 64))
    boxes = aug.pipeline.crop._params["src"]  # kornia's record of the drawn crops: [B, 4 corners, (x, y)]
    width = boxes[:, 1, 0] - boxes[:, 0, 0] + 1
    height = boxes[:, 2, 1] - boxes[:, 1, 1] + 1
    area = width * height / 64**2
    lowest = 1 - 0.9 * strength
    slack = 2 * 65 / 64**2 * 2  # rounding the side lengths to whole pixels
    assert float(area.min()) >= lowest - slack and float(area.max()) <= 1.0
    assert float(area.min()) < lowest + 0.05  # the small end is reached


def test_color_jitter_matches_torchvision_formulas() -> None:
    """kornia's ColorJitter replayed with torchvision's functional ops, factor by factor."""
    aug = SimCLRAugment(1.0)
    x = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(5)
    out = aug.pipeline.jitter(x)
    params = aug.pipeline.jitter._params
    applied = params["batch_prob"].bool()
    assert abs(applied.float().mean().item() - 0.8) <= _binomial_tolerance(0.8, 64)
    steps = [
        lambda img, k: TF.adjust_brightness(img, float(params["brightness_factor"][k])),
        lambda img, k: TF.adjust_contrast(img, float(params["contrast_factor"][k])),
        lambda img, k: TF.adjust_saturation(img, float(params["saturation_factor"][k])),
        lambda img, k: TF.adjust_hue(img, float(params["hue_factor"][k])),
    ]
    assert 0.6 <= float(params["brightness_factor"].min()) and float(params["brightness_factor"].max()) <= 1.4
    assert float(params["hue_factor"].abs().max()) <= 0.1
    for k in range(64):
        expected = x[k]
        if applied[k]:
            for step in params["order"].tolist():
                expected = steps[step](expected, k)
        assert torch.allclose(out[k], expected, atol=2e-3), f"sample {k} differs from torchvision"


@pytest.mark.parametrize("strength", [-0.1, 1.01, float("nan"), float("inf"), "1", True, None])
def test_strength_is_validated(strength: object) -> None:
    with pytest.raises(RobustHubError, match="strength"):
        SimCLRAugment(strength)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, -4, 32.0, True])
def test_size_is_validated(size: object) -> None:
    with pytest.raises(RobustHubError, match="size"):
        SimCLRAugment(1.0, size=size)  # type: ignore[arg-type]


def test_bad_batches_are_rejected() -> None:
    aug = SimCLRAugment(1.0)
    with pytest.raises(RobustHubError, match=r"\[B, 3, H, W\]"):
        aug(_images(1)[0])
    with pytest.raises(RobustHubError, match=r"\[B, 3, H, W\]"):
        aug(torch.zeros(2, 1, 8, 8))
    with pytest.raises(RobustHubError, match="uint8 or float"):
        aug(_images(2).int())


def test_module_holds_no_state() -> None:
    aug = SimCLRAugment(0.7)
    assert list(aug.parameters()) == [] and aug.state_dict() == {}
    assert "strength=0.7" in repr(aug)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_batch_device() -> None:
    images = _images(64).cuda()
    aug = SimCLRAugment(1.0)
    torch.manual_seed(0)
    out = aug(images)
    torch.manual_seed(0)
    again = aug(images)
    assert out.device == images.device and torch.equal(out, again)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_crops_cover_down_to_1_minus_0_9_s_of_the_image(strength):
    """RandomResizedCrop's scale is (1 - 0.9 s, 1), not torchvision's (0.08, 1): the smallest of 20,000 sampled
    crops of a 512x512 image reaches that bound (large, so whole-pixel rounding moves it by under 0.005)."""
    from robust_hub.data import SimCLRAugment

    torch.manual_seed(0)
    corners = SimCLRAugment(strength, size=32).pipeline.crop.forward_parameters(torch.Size([20000, 3, 512, 512]))["src"]
    width = corners[:, 1, 0] - corners[:, 0, 0] + 1
    height = corners[:, 2, 1] - corners[:, 1, 1] + 1
    area = width * height / 512 ** 2
    assert area.max() > 0.99
    assert area.min().item() == pytest.approx(1 - 0.9 * strength, abs=0.005)
