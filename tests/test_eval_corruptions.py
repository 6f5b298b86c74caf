"""CIFAR-10-C: the official file layout, clear errors for bad files, and the generated set."""

import numpy as np
import pytest
import torch
from torch import nn

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.corruptions import (GENERATED_CORRUPTIONS, corrupt, corruption_accuracy,
                                               generate_corruption_set, load_cifar10c, save_corruption_set)

PER = 6  # images per severity in the fake official files


def _write_official(root, names=("fog", "contrast")):
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(PER) % 3, 5).astype(np.int64)
    for name in names:
        np.save(root / f"{name}.npy", rng.integers(0, 256, size=(5 * PER, 8, 8, 3), dtype=np.uint8))
    np.save(root / "labels.npy", labels)
    return labels


class MeanColourClassifier(nn.Module):
    """Predicts the class from the image's mean red value: deterministic, easy to reason about."""

    def forward(self, x):
        m = x[:, 0].mean(dim=(1, 2))
        return torch.stack([-(m - c).abs() for c in (0.25, 0.5, 0.75)], dim=1)


def _expected_acc(images_nhwc: np.ndarray, labels: np.ndarray) -> float:
    m = images_nhwc[..., 0].astype(np.float64).mean(axis=(1, 2)) / 255
    pred = np.argmin(np.abs(m[:, None] - np.array([0.25, 0.5, 0.75])[None]), axis=1)
    return float((pred == labels).mean())


def test_official_layout_accuracy_per_corruption_and_severity(tmp_path):
    labels = _write_official(tmp_path)
    cset = load_cifar10c(tmp_path, corruptions=("fog", "contrast"))
    assert not cset.generated and cset.images["fog"][3].shape == (PER, 3, 8, 8)
    res = corruption_accuracy(MeanColourClassifier(), cset, batch_size=4, progress=False)
    for name in ("fog", "contrast"):
        arr = np.load(tmp_path / f"{name}.npy")
        for s in range(1, 6):
            block = slice((s - 1) * PER, s * PER)
            assert res["per_corruption"][name][str(s)] == pytest.approx(_expected_acc(arr[block], labels[block]))
    by_sev = [np.mean([res["per_corruption"][n][str(s)] for n in ("fog", "contrast")]) for s in range(1, 6)]
    assert res["mean"] == pytest.approx(np.mean(by_sev))
    assert res["generated"] is False


def test_missing_files_fail_clearly(tmp_path):
    _write_official(tmp_path, names=("fog",))
    with pytest.raises(RobustHubError, match="contrast.npy"):
        load_cifar10c(tmp_path, corruptions=("fog", "contrast"))
    with pytest.raises(RobustHubError, match="does not exist"):
        load_cifar10c(tmp_path / "nope")
    (tmp_path / "labels.npy").unlink()
    with pytest.raises(RobustHubError, match="labels.npy"):
        load_cifar10c(tmp_path, corruptions=("fog",))


def test_corrupt_files_fail_clearly(tmp_path):
    _write_official(tmp_path, names=("fog",))
    (tmp_path / "fog.npy").write_bytes(b"garbage")
    with pytest.raises(RobustHubError, match="fog.npy"):
        load_cifar10c(tmp_path, corruptions=("fog",))
    np.save(tmp_path / "fog.npy", np.zeros((5 * PER, 8, 8, 3), dtype=np.float32))
    with pytest.raises(RobustHubError, match="uint8"):
        load_cifar10c(tmp_path, corruptions=("fog",))


def test_generated_set_is_labelled_and_survives_a_round_trip(tmp_path):
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1])
    cset = generate_corruption_set(images, labels, seed=0)
    assert cset.generated and set(cset.images) == set(GENERATED_CORRUPTIONS)
    again = generate_corruption_set(images, labels, seed=0)
    assert all(torch.equal(cset.images[n][s], again.images[n][s]) for n in cset.images for s in range(1, 6))
    loaded = load_cifar10c(save_corruption_set(cset, tmp_path))
    assert loaded.generated
    assert torch.equal(loaded.images["contrast"][5], cset.images["contrast"][5])
    assert corruption_accuracy(MeanColourClassifier(), loaded, progress=False)["generated"] is True


def test_generated_corruptions_get_stronger_with_severity():
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for name in GENERATED_CORRUPTIONS:
        dist = [(corrupt(x, name, s, torch.Generator().manual_seed(1)) - x).abs().mean().item() for s in (1, 5)]
        assert dist[1] >= dist[0], name
    with pytest.raises(RobustHubError):
        corrupt(x, "snow", 1, torch.Generator())
