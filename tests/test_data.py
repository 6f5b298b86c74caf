"""Tests of robust_hub.data loading: embedded, local folders and shards, the shared CIFAR-10 copy, errors."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from robust_hub.data import DEFAULT_DATASET, ImageDataset, load_image_dataset
from robust_hub.data import datasets as data_module
from robust_hub.errors import RobustHubError

CIFAR10_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10"


# ----------------------------------------------------------------------------- helpers


def _rgb(seed: int, size: tuple[int, int] = (12, 10)) -> np.ndarray:
    """A colourful random HxWx3 uint8 array."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, "PNG")
    return buffer.getvalue()


def _chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _write_tree(root: Path, layout: dict[str, np.ndarray]) -> None:
    """Write one PNG per relative path in ``layout``."""
    for relative, array in layout.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(array))


def _parquet(path: Path, columns: dict, features: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).to_parquet(str(path))


def _pil_images(arrays: list[np.ndarray]) -> list[Image.Image]:
    return [Image.fromarray(a) for a in arrays]


@pytest.fixture
def cache(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


# ----------------------------------------------------------------------------- embedded default


def _digits_match(ds: ImageDataset) -> np.ndarray:
    """For each image of ``ds``, the index of the sklearn digit it renders (matched against PIL renders)."""
    from sklearn.datasets import load_digits

    glyphs = load_digits().images * (255.0 / 16.0)
    # PIL's bicubic differs a little from torch's, so the match is close but not exact.
    renders = np.stack(
        [np.asarray(Image.fromarray(g.astype(np.float32), mode="F").resize((32, 32), Image.BICUBIC)) for g in glyphs]
    ).reshape(len(glyphs), -1).astype(np.float64)
    ours = ds.images[:, 0].reshape(len(ds), -1).double().numpy()
    distances = (ours**2).sum(1)[:, None] + (renders**2).sum(1)[None, :] - 2 * ours @ renders.T
    nearest = np.sort(distances, axis=1)
    assert np.all(np.sqrt(np.maximum(nearest[:, 0], 0) / 1024) < 12)  # within a few grey levels per pixel
    assert np.all(nearest[:, 0] < 0.5 * nearest[:, 1])  # and unambiguous (near-twin digits exist)
    return distances.argmin(1)


def test_default_dataset_is_embedded_digits() -> None:
    assert DEFAULT_DATASET == "embedded:digits"


def test_embedded_digits_shapes_classes_and_disjoint_splits() -> None:
    from sklearn.datasets import load_digits

    train = load_image_dataset("embedded:digits", "train")
    test = load_image_dataset("embedded:digits", "test")
    target = load_digits().target
    assert len(train) + len(test) == len(target) == 1797
    assert 0.75 < len(train) / 1797 < 0.85
    for ds in (train, test):
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (3, 32, 32)
        assert ds.labels.dtype == torch.int64
        assert ds.classes == [str(k) for k in range(10)] and ds.num_classes == 10
        assert torch.equal(ds.images[:, 0], ds.images[:, 1]) and torch.equal(ds.images[:, 1], ds.images[:, 2])
        assert ds.images.float().std() > 30  # real glyphs, not a blank canvas
    matched_train, matched_test = _digits_match(train), _digits_match(test)
    assert set(matched_train).isdisjoint(matched_test)
    assert sorted([*matched_train, *matched_test]) == list(range(1797))
    # Each image carries the label of the digit it renders.
    assert np.array_equal(train.labels.numpy(), target[matched_train])
    assert np.array_equal(test.labels.numpy(), target[matched_test])
    # Stratified: every class keeps about a fifth of its images in test.
    per_class, test_per_class = np.bincount(target), np.bincount(test.labels.numpy(), minlength=10)
    assert np.all(np.abs(test_per_class - per_class * len(test) / 1797) <= 1.5)


def test_embedded_is_deterministic_and_resizes() -> None:
    first, second = load_image_dataset(DEFAULT_DATASET), load_image_dataset(DEFAULT_DATASET)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.fingerprint == second.fingerprint and len(first.fingerprint) >= 8
    small = load_image_dataset(DEFAULT_DATASET, image_size=16)
    assert small.images.shape[1:] == (3, 16, 16) and torch.equal(small.labels, first.labels)
    assert small.fingerprint != first.fingerprint
    assert load_image_dataset(DEFAULT_DATASET, "test").fingerprint != first.fingerprint


@pytest.mark.parametrize(
    ("source", "split", "fragment"),
    [("embedded:digits", "validation", "available splits"), ("embedded:nope", "train", "embedded:digits")],
)
def test_embedded_bad_names(source: str, split: str, fragment: str) -> None:
    with pytest.raises(RobustHubError, match=fragment):
        load_image_dataset(source, split)


# ----------------------------------------------------------------------------- ImageDataset semantics


def _toy(n: int = 40, classes: int = 4) -> ImageDataset:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    labels = torch.arange(n, dtype=torch.int64) % classes
    return ImageDataset(images, labels, [f"c{k}" for k in range(classes)], source="toy", split="train")


def test_items_carry_original_indices_through_subsets() -> None:
    ds = _toy()
    index, image, label = ds[7]
    assert (index, label) == (7, 3) and image.shape == (3, 2, 2) and int(image[0, 0, 0]) == 7
    sub = ds.subset([30, 5, 12, 7])
    assert [sub[k][0] for k in range(len(sub))] == [30, 5, 12, 7]
    assert torch.equal(sub.images[:, 0, 0, 0].long(), torch.tensor([30, 5, 12, 7]))
    nested = sub.subset(np.array([3, 0]))
    assert [nested[k][0] for k in range(2)] == [7, 30] and nested.labels.tolist() == [3, 2]
    assert nested.classes == ds.classes and nested.source == "toy" and nested.split == "train"
    # A subset's fingerprint depends on which original rows it holds, not on how it was reached.
    assert nested.fingerprint == ds.subset(torch.tensor([7, 30])).fingerprint != ds.fingerprint
    batch_indices, batch_images, batch_labels = next(iter(DataLoader(sub, batch_size=4)))
    assert batch_indices.tolist() == [30, 5, 12, 7] and batch_images.dtype == torch.uint8
    assert batch_labels.tolist() == [2, 1, 0, 3]


def test_subset_rejects_out_of_range() -> None:
    with pytest.raises(IndexError):
        _toy().subset([0, 40])
    assert len(_toy().subset([])) == 0


def test_split_validation_is_seeded_disjoint_covering_and_stratified() -> None:
    ds = _toy(n=103, classes=5).subset(list(range(100, -1, -2)))  # 51 rows whose originals are even numbers
    train, val = ds.split_validation(0.2, seed=3)
    train_idx, val_idx = set(train.indices.tolist()), set(val.indices.tolist())
    assert train_idx.isdisjoint(val_idx) and train_idx | val_idx == set(ds.indices.tolist())
    assert len(val) == int(len(ds) * 0.2)
    # Items still return original indices, and the images belong to them.
    for part in (train, val):
        assert all(int(part[k][1][0, 0, 0]) == part[k][0] for k in range(len(part)))
    expected = Counter(ds.labels.tolist())
    got = Counter(val.labels.tolist())
    assert all(abs(got[c] - 0.2 * expected[c]) <= 1 for c in expected)
    again = ds.split_validation(0.2, seed=3)
    assert torch.equal(again[1].indices, val.indices) and torch.equal(again[0].indices, train.indices)
    other = ds.split_validation(0.2, seed=4)
    assert not torch.equal(other[1].indices, val.indices)


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, "0.2", True])
def test_split_validation_rejects_bad_fractions(fraction: object) -> None:
    with pytest.raises(RobustHubError, match="fraction"):
        _toy().split_validation(fraction, seed=0)  # type: ignore[arg-type]


def test_split_validation_rejects_empty_side() -> None:
    with pytest.raises(RobustHubError, match="empty"):
        _toy(n=3).split_validation(0.1, seed=0)


# ----------------------------------------------------------------------------- ImageFolder trees


def test_imagefolder_with_split_level(tmp_path: Path, cache: str) -> None:
    layout = {
        "train/dog/b.png": _rgb(1),
        "train/cat/a.png": _rgb(2),
        "train/cat/c.png": _rgb(3),
        "test/bird/x.png": _rgb(4),
        "test/dog/y.png": _rgb(5),
    }
    _write_tree(tmp_path / "tree", layout)
    (tmp_path / "tree/README.txt").write_text("not an image")
    classes = ["bird", "cat", "dog"]  # sorted union over both splits
    for split in ("train", "test"):
        ds = load_image_dataset(str(tmp_path / "tree"), split, cache_dir=cache)
        expected = sorted((p for p in layout if p.startswith(split)), key=lambda p: p.split("/"))
        assert ds.classes == classes and len(ds) == len(expected)
        assert ds.labels.tolist() == [classes.index(p.split("/")[1]) for p in expected]
        assert torch.equal(ds.images, torch.stack([_chw(layout[p]) for p in expected]))
    with pytest.raises(RobustHubError, match="available splits: test, train"):
        load_image_dataset(str(tmp_path / "tree"), "validation", cache_dir=cache)


def test_imagefolder_without_split_level_and_flat(tmp_path: Path, cache: str) -> None:
    _write_tree(tmp_path / "classes", {"zebra/1.png": _rgb(1), "ant/2.png": _rgb(2), "ant/3.png": _rgb(3)})
    ds = load_image_dataset(str(tmp_path / "classes"), cache_dir=cache)
    assert ds.classes == ["ant", "zebra"] and ds.labels.tolist() == [0, 0, 1]
    with pytest.raises(RobustHubError, match="available splits: train"):
        load_image_dataset(str(tmp_path / "classes"), "test", cache_dir=cache)
    _write_tree(tmp_path / "flat", {"1.png": _rgb(1), "2.png": _rgb(2)})
    flat = load_image_dataset(str(tmp_path / "flat"), cache_dir=cache)
    assert flat.classes == [] and flat.num_classes == 0 and flat.labels.tolist() == [-1, -1]


def test_imagefolder_converts_modes_and_formats(tmp_path: Path, cache: str) -> None:
    root = tmp_path / "modes/only"
    root.mkdir(parents=True)
    grey = _rgb(7)[..., 0]
    rgba = np.random.default_rng(8).integers(0, 256, (12, 10, 4), dtype=np.uint8)
    (root / "a_grey.png").write_bytes(_png(grey))
    (root / "b_rgba.png").write_bytes(_png(rgba))
    Image.fromarray(_rgb(9)).save(root / "c.jpg", quality=90)
    Image.fromarray(_rgb(10)).save(root / "d.bmp")
    ds = load_image_dataset(str(tmp_path / "modes"), cache_dir=cache)
    assert ds.classes == ["only"]
    assert torch.equal(ds.images[0], _chw(np.repeat(grey[..., None], 3, axis=-1)))
    assert torch.equal(ds.images[1], _chw(rgba[..., :3]))
    assert torch.equal(ds.images[2], _chw(np.asarray(Image.open(root / "c.jpg").convert("RGB"))))
    assert torch.equal(ds.images[3], _chw(_rgb(10)))


def test_mixed_sizes_need_image_size(tmp_path: Path, cache: str) -> None:
    _write_tree(tmp_path / "sizes", {"a/1.png": _rgb(1, (12, 10)), "a/2.png": _rgb(2, (20, 30)), "b/3.png": _rgb(3)})
    with pytest.raises(RobustHubError, match="image_size"):
        load_image_dataset(str(tmp_path / "sizes"), cache_dir=cache)
    ds = load_image_dataset(str(tmp_path / "sizes"), image_size=16, cache_dir=cache)
    assert ds.images.shape == (3, 3, 16, 16)
    # Resizing a constant image must leave it constant (antialiased bicubic keeps flat areas flat).
    _write_tree(tmp_path / "flat_colour", {"x/1.png": np.full((40, 24, 3), (10, 200, 90), dtype=np.uint8)})
    flat = load_image_dataset(str(tmp_path / "flat_colour"), image_size=8, cache_dir=cache)
    assert flat.images[0, :, 0, 0].tolist() == [10, 200, 90] and int(flat.images.float().std(dim=(2, 3)).max()) == 0


# ----------------------------------------------------------------------------- parquet and arrow shards


def test_parquet_splits_from_file_names(tmp_path: Path, cache: str) -> None:
    names = ["plane", "car", "bird"]
    arrays = {"train": [_rgb(k) for k in range(6)], "test": [_rgb(k + 100) for k in range(3)]}
    labels = {"train": [0, 1, 2, 2, 1, 0], "test": [2, 0, 1]}
    for split in arrays:
        _parquet(
            tmp_path / "pq" / f"{split}-00000-of-00001.parquet",
            {"img": _pil_images(arrays[split]), "label": labels[split]},
            {"img": datasets.Image(), "label": datasets.ClassLabel(names=names)},
        )
    for split in arrays:
        ds = load_image_dataset(str(tmp_path / "pq"), split, cache_dir=cache)
        assert ds.classes == names and ds.labels.tolist() == labels[split]
        assert torch.equal(ds.images, torch.stack([_chw(a) for a in arrays[split]]))
        assert ds.source == str(tmp_path / "pq") and ds.split == split
    with pytest.raises(RobustHubError, match="available splits: test, train"):
        load_image_dataset(str(tmp_path / "pq"), "unlabeled", cache_dir=cache)


def test_parquet_split_folders_and_unlabeled(tmp_path: Path, cache: str) -> None:
    arrays = [_rgb(k) for k in range(4)]
    _parquet(tmp_path / "stl/unlabeled/part.parquet", {"image": _pil_images(arrays)}, {"image": datasets.Image()})
    # STL-10 style: a ClassLabel column whose values are all -1 also means unlabeled.
    _parquet(
        tmp_path / "stl/train/part.parquet",
        {"image": _pil_images(arrays), "label": [-1, -1, -1, -1]},
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])},
    )
    for split in ("unlabeled", "train"):
        ds = load_image_dataset(str(tmp_path / "stl"), split, cache_dir=cache)
        assert ds.labels.tolist() == [-1] * 4 and ds.classes == [] and ds.num_classes == 0
        assert torch.equal(ds.images, torch.stack([_chw(a) for a in arrays]))


def test_non_standard_columns_and_overrides(tmp_path: Path, cache: str) -> None:
    arrays = [_rgb(k) for k in range(3)]
    _parquet(
        tmp_path / "odd/train.parquet",
        {
            "note": ["x", "y", "z"],
            "picture": _pil_images(arrays),
            "coarse_label": [1, 1, 0],
            "fine_label": [2, 0, 1],
        },
        {
            "note": datasets.Value("string"),
            "picture": datasets.Image(),
            "coarse_label": datasets.ClassLabel(names=["living", "thing"]),
            "fine_label": datasets.ClassLabel(names=["ant", "bee", "car"]),
        },
    )
    ds = load_image_dataset(str(tmp_path / "odd"), cache_dir=cache)
    assert ds.classes == ["ant", "bee", "car"] and ds.labels.tolist() == [2, 0, 1]  # fine over coarse
    assert torch.equal(ds.images, torch.stack([_chw(a) for a in arrays]))
    coarse = load_image_dataset(str(tmp_path / "odd"), label_column="coarse_label", cache_dir=cache)
    assert coarse.classes == ["living", "thing"] and coarse.labels.tolist() == [1, 1, 0]
    assert coarse.fingerprint != ds.fingerprint
    by_text = load_image_dataset(str(tmp_path / "odd"), label_column="note", cache_dir=cache)
    assert by_text.classes == ["x", "y", "z"] and by_text.labels.tolist() == [0, 1, 2]
    # Raw PNG bytes in a plain binary column, with integer labels: named explicitly.
    _parquet(
        tmp_path / "raw/train.parquet",
        {"png": [_png(a) for a in arrays], "target": [4, 0, 4]},
        {"png": datasets.Value("binary"), "target": datasets.Value("int64")},
    )
    raw = load_image_dataset(str(tmp_path / "raw"), image_column="png", label_column="target", cache_dir=cache)
    assert raw.labels.tolist() == [4, 0, 4] and raw.num_classes == 5
    assert torch.equal(raw.images, torch.stack([_chw(a) for a in arrays]))
    with pytest.raises(RobustHubError, match="no image column"):
        load_image_dataset(str(tmp_path / "raw"), cache_dir=cache)
    with pytest.raises(RobustHubError, match="image_column 'nope'"):
        load_image_dataset(str(tmp_path / "odd"), image_column="nope", cache_dir=cache)
    with pytest.raises(RobustHubError, match="label_column 'nope'"):
        load_image_dataset(str(tmp_path / "odd"), label_column="nope", cache_dir=cache)


def test_arrow_shards_from_save_to_disk(tmp_path: Path, cache: str) -> None:
    arrays = [_rgb(k) for k in range(5)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["p", "q"])})
    train = datasets.Dataset.from_dict({"image": _pil_images(arrays), "label": [0, 1, 0, 1, 1]}, features=features)
    datasets.DatasetDict({"train": train, "test": train.select([4, 0])}).save_to_disk(str(tmp_path / "saved"))
    ds = load_image_dataset(str(tmp_path / "saved"), "test", cache_dir=cache)
    assert ds.classes == ["p", "q"] and ds.labels.tolist() == [1, 0]
    assert torch.equal(ds.images, torch.stack([_chw(arrays[4]), _chw(arrays[0])]))


def test_hub_ids_share_the_local_decoding_path(monkeypatch: pytest.MonkeyPatch, cache: str) -> None:
    arrays = [_rgb(k) for k in range(3)]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["u", "v"])})
    table = datasets.Dataset.from_dict({"img": _pil_images(arrays), "label": [1, 0, 1]}, features=features)
    calls = []

    def fake_load_dataset(path: str, *args: object, **kwargs: object) -> datasets.Dataset:
        calls.append((path, kwargs.get("split")))
        if kwargs.get("split") != "train":
            raise ValueError(f'Unknown split "{kwargs.get("split")}". Should be one of [\'train\'].')
        return table

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_image_dataset("someone/tiny-images", cache_dir=cache)
    assert calls == [("someone/tiny-images", "train")]
    assert ds.classes == ["u", "v"] and ds.labels.tolist() == [1, 0, 1] and ds.source == "someone/tiny-images"
    assert torch.equal(ds.images, torch.stack([_chw(a) for a in arrays]))
    with pytest.raises(RobustHubError, match="Unknown split"):
        load_image_dataset("someone/tiny-images", "test", cache_dir=cache)


# ----------------------------------------------------------------------------- bad input


def test_missing_and_malformed_sources(tmp_path: Path, cache: str) -> None:
    with pytest.raises(RobustHubError, match="does not exist"):
        load_image_dataset(str(tmp_path / "missing"), cache_dir=cache)
    for relative in ("./surely/not/here", "a/b/c", "shards.parquet"):
        with pytest.raises(RobustHubError, match="does not exist"):
            load_image_dataset(relative, cache_dir=cache)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/notes.txt").write_text("nothing to see")
    with pytest.raises(RobustHubError, match="no images"):
        load_image_dataset(str(tmp_path / "empty"), cache_dir=cache)
    with pytest.raises(RobustHubError, match="is a file"):
        load_image_dataset(str(tmp_path / "empty/notes.txt"), cache_dir=cache)
    for bad in ("", "   "):
        with pytest.raises(RobustHubError, match="source"):
            load_image_dataset(bad)
    for size in (0, -3, "32", 2.5, True):
        with pytest.raises(RobustHubError, match="image_size"):
            load_image_dataset(DEFAULT_DATASET, image_size=size)  # type: ignore[arg-type]
    with pytest.raises(RobustHubError, match="do not apply"):
        load_image_dataset(DEFAULT_DATASET, label_column="label")


def test_parquet_without_image_column(tmp_path: Path, cache: str) -> None:
    ints = datasets.Value("int64")
    _parquet(tmp_path / "numbers/train.parquet", {"x": [1, 2], "label": [0, 1]}, {"x": ints, "label": ints})
    with pytest.raises(RobustHubError, match="no image column"):
        load_image_dataset(str(tmp_path / "numbers"), cache_dir=cache)


def test_corrupt_files(tmp_path: Path, cache: str) -> None:
    _write_tree(tmp_path / "garbage", {"a/good.png": _rgb(1)})
    (tmp_path / "garbage/a/bad.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nonsense")
    with pytest.raises(RobustHubError, match="bad.png"):
        load_image_dataset(str(tmp_path / "garbage"), cache_dir=cache)
    jpeg = io.BytesIO()
    Image.fromarray(_rgb(2, (64, 64))).save(jpeg, "JPEG")
    _write_tree(tmp_path / "truncated", {"a/good.png": _rgb(1)})
    (tmp_path / "truncated/a/cut.jpg").write_bytes(jpeg.getvalue()[:200])
    with pytest.raises(RobustHubError, match="cut.jpg"):
        load_image_dataset(str(tmp_path / "truncated"), cache_dir=cache)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/train-00000-of-00001.parquet").write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(RobustHubError, match="parquet"):
        load_image_dataset(str(tmp_path / "broken"), cache_dir=cache)


# ----------------------------------------------------------------------------- cache


def test_cache_is_reused_written_atomically_and_self_healing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = [_rgb(k) for k in range(4)]
    _write_tree(tmp_path / "tree", {f"c/{k}.png": a for k, a in enumerate(arrays)})
    monkeypatch.setenv("ROBUST_HUB_CACHE", str(tmp_path / "env_cache"))
    first = load_image_dataset(str(tmp_path / "tree"))
    cached = tmp_path / "env_cache" / "datasets" / f"{first.fingerprint}.npy"
    assert cached.is_file() and sorted(p.name for p in cached.parent.iterdir()) == [cached.name]
    assert np.array_equal(np.load(cached, allow_pickle=False), first.images.numpy())

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded although a cache entry exists")

    with monkeypatch.context() as patch:
        patch.setattr(data_module, "_decode_column", no_decoding)
        again = load_image_dataset(str(tmp_path / "tree"))
    assert torch.equal(again.images, first.images) and again.fingerprint == first.fingerprint
    # The fingerprint names content, not location: a copy elsewhere hits the same entry.
    _write_tree(tmp_path / "copy", {f"c/{k}.png": a for k, a in enumerate(arrays)})
    assert load_image_dataset(str(tmp_path / "copy")).fingerprint == first.fingerprint
    cached.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="unreadable"):
        healed = load_image_dataset(str(tmp_path / "tree"))
    assert torch.equal(healed.images, first.images)
    assert np.array_equal(np.load(cached, allow_pickle=False), first.images.numpy())


# ----------------------------------------------------------------------------- the shared CIFAR-10 copy


@pytest.fixture(scope="module")
def cifar_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    if not CIFAR10_DIR.is_dir():
        pytest.skip(f"shared CIFAR-10 parquet copy not found at {CIFAR10_DIR}")
    return str(tmp_path_factory.mktemp("cifar_cache"))


def _parquet_truth(split: str) -> tuple[list[str], np.ndarray, list[bytes]]:
    """Class names, labels and encoded images read straight from the parquet file with pyarrow."""
    table = pq.read_table(next(CIFAR10_DIR.glob(f"{split}-*.parquet")))
    meta = json.loads(table.schema.metadata[b"huggingface"])
    names = meta["info"]["features"]["label"]["names"]
    return names, table.column("label").to_numpy(), [cell["bytes"] for cell in table.column("img").to_pylist()]


def _check_against_parquet(ds: ImageDataset, split: str, rows: list[int]) -> None:
    names, labels, encoded = _parquet_truth(split)
    assert ds.classes == names and len(names) == 10
    assert len(ds) == len(labels) and ds.images.shape == (len(labels), 3, 32, 32)
    assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
    assert np.array_equal(ds.labels.numpy(), labels)
    prefix = np.bincount(ds.labels[:1000].numpy(), minlength=10)
    assert prefix.min() >= 80 and prefix.max() <= 120  # rows interleave the classes
    for row in rows:
        expected = np.asarray(Image.open(io.BytesIO(encoded[row])).convert("RGB"))
        assert torch.equal(ds.images[row], _chw(expected)), f"row {row} differs from PIL's decode"


def test_cifar10_test_split(cifar_cache: str) -> None:
    ds = load_image_dataset(str(CIFAR10_DIR), "test", cache_dir=cifar_cache)
    _check_against_parquet(ds, "test", [0, 1, 4321, 9999])
    assert ds.source == str(CIFAR10_DIR) and ds.split == "test"


def test_cifar10_train_split_and_cache(cifar_cache: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_image_dataset(str(CIFAR10_DIR), "train", cache_dir=cifar_cache)
    _check_against_parquet(ds, "train", [0, 17, 25000, 49999])
    monkeypatch.setattr(data_module, "_decode_column", lambda *a, **k: pytest.fail("cache not used"))
    cached = load_image_dataset(str(CIFAR10_DIR), "train", cache_dir=cifar_cache)
    assert cached.fingerprint == ds.fingerprint and torch.equal(cached.images, ds.images)


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch the per-image decoder to record the name of each image it decodes (threads append safely;
    the first image is decoded twice, once for the size)."""
    decoded: list[str] = []
    original = data_module._decode_one

    def counting(data: bytes, name: str) -> np.ndarray:
        decoded.append(name)
        return original(data, name)

    monkeypatch.setattr(data_module, "_decode_one", counting)
    return decoded


def test_cifar10_first_rows_decode_only_those_and_keep_the_splits_fingerprint(
    cifar_cache: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = _count_decodes(monkeypatch)
    head = load_image_dataset(str(CIFAR10_DIR), "train", cache_dir=str(tmp_path), limit=100)
    assert set(decoded) == {f"row {k} of column 'img'" for k in range(100)} and len(decoded) <= 101
    assert len(head) == 100 and head.split_size == 50_000
    assert not list(tmp_path.glob("*.npy"))  # a partial decode is never cached under the split's name
    full = load_image_dataset(str(CIFAR10_DIR), "train", cache_dir=cifar_cache)
    assert head.split_fingerprint == full.fingerprint == full.split_fingerprint
    assert head.fingerprint == full.subset(range(100)).fingerprint != full.fingerprint
    assert torch.equal(head.images, full.images[:100]) and torch.equal(head.labels, full.labels[:100])
    assert torch.equal(head.indices, torch.arange(100))
    decoded.clear()
    from_cache = load_image_dataset(str(CIFAR10_DIR), "train", cache_dir=cifar_cache, limit=100)
    assert decoded == [] and torch.equal(from_cache.images, full.images[:100])
    assert from_cache.fingerprint == head.fingerprint


def test_eval_load_split_names_the_whole_split_for_n_images(
    cifar_cache: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robust_hub.evaluation.runner import load_split

    monkeypatch.setenv("ROBUST_HUB_CACHE", cifar_cache + "-env")
    decoded = _count_decodes(monkeypatch)
    head = load_split(str(CIFAR10_DIR), "test", n=30)
    assert set(decoded) == {f"row {k} of column 'img'" for k in range(30)} and len(decoded) <= 31
    assert len(head.images) == 30 and head.whole_size == 10_000
    whole = load_split(str(CIFAR10_DIR), "test")
    assert head.fingerprint == whole.fingerprint == whole.head(30).fingerprint
    assert torch.equal(head.images, whole.images[:30]) and head.whole_size == whole.head(30).whole_size


def test_partial_and_full_decodes_do_not_share_a_cache_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = [_rgb(k) for k in range(5)]
    _write_tree(tmp_path / "tree", {f"c/{k}.png": a for k, a in enumerate(arrays)})
    decoded = _count_decodes(monkeypatch)
    head = load_image_dataset(str(tmp_path / "tree"), cache_dir=str(tmp_path / "cache"), limit=2)
    assert len(set(decoded)) == 2 and len(decoded) <= 3  # the first image is decoded twice (once for its size)
    decoded.clear()
    full = load_image_dataset(str(tmp_path / "tree"), cache_dir=str(tmp_path / "cache"))
    assert len(set(decoded)) == 5  # the partial decode left nothing a full load could take for the whole split
    assert len(full) == 5 and torch.equal(full.images[:2], head.images)
    assert all(torch.equal(head.images[k], _chw(arrays[k])) for k in range(2))
    decoded.clear()
    assert len(load_image_dataset(str(tmp_path / "tree"), cache_dir=str(tmp_path / "cache"))) == 5
    assert decoded == []
    assert load_image_dataset(str(tmp_path / "tree"), cache_dir=str(tmp_path / "cache"), limit=9).fingerprint == \
        full.fingerprint  # a limit beyond the split is the whole split
    digits, first = load_image_dataset(DEFAULT_DATASET, "test"), load_image_dataset(DEFAULT_DATASET, "test", limit=7)
    assert first.fingerprint == digits.subset(range(7)).fingerprint and first.split_size == len(digits)
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(RobustHubError, match="limit must be a positive integer"):
            load_image_dataset(str(tmp_path / "tree"), limit=bad)


def test_evaluation_with_n_train_decodes_only_those_and_records_the_whole_splits(
    cifar_cache: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import robust_hub
    from robust_hub.evaluation import evaluate

    monkeypatch.setenv("ROBUST_HUB_CACHE", str(tmp_path / "cache"))
    decoded = _count_decodes(monkeypatch)
    torch.manual_seed(0)
    model = robust_hub.create_backbone("robust_resnet_tiny", dual_bn=True)
    (record,) = evaluate(model, protocols="slf", dataset=str(CIFAR10_DIR), out_dir=tmp_path / "out", metrics="clean",
                         n_train=64, n_test=32, protocol_overrides={"epochs": 1}, progress=False, print_table=False,
                         device="cpu")
    assert len(set(decoded)) == 64  # rows 0-63 of train and 0-31 of test share names; no other row decoded
    assert set(decoded) == {f"row {k} of column 'img'" for k in range(64)} and len(decoded) <= 64 + 32 + 2
    full_test = load_image_dataset(str(CIFAR10_DIR), "test", cache_dir=cifar_cache)
    assert record["dataset"]["fingerprint"] == full_test.fingerprint
    assert (record["dataset"]["n_train"], record["dataset"]["n_test"]) == (64, 32)
    assert record["protocol"]["settings"]["eval"]["full_sizes"] == {"train": 50_000, "test": 10_000}
