"""Load image datasets (embedded, Hugging Face Hub, local folders) into memory as uint8 tensors.

Every source except the embedded ones becomes a ``datasets.Dataset`` first; from there
one shared path detects the image and label columns, fingerprints the encoded content,
and decodes (or reuses a cached decode of) all images.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import numbers
import os
import re
import tempfile
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from robust_hub.cache import cache_home
from robust_hub.data.embedded import SPLIT_SEED, TEST_FRACTION, render_embedded
from robust_hub.errors import RobustHubError

if TYPE_CHECKING:  # importing datasets costs a second; only the loaders need it at run time
    import datasets as hf

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "embedded:digits"

# Bump when decoding changes what pixels a given file yields: the fingerprint (and so
# every cache entry and result record) must change with it.
_DECODE_VERSION = "robust-hub-decode-v1"
_FINGERPRINT_CHARS = 16
_CHUNK_ROWS = 1024
_IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
# Folder and file names read as split names even when they are not the first path level.
_KNOWN_SPLITS = frozenset(
    {"train", "training", "test", "testing", "validation", "valid", "val", "dev", "eval", "unlabeled", "unlabelled"}
)
# When a folder has no split structure its single split gets this name, as in `datasets`.
_UNSPLIT = "train"
_SHARD_SUFFIX = re.compile(r"^(?P<split>.+?)(?P<shard>[-_]\d{5}-of-\d{5}|[-_]\d+)$")
_EXIF_IN_INFO = frozenset({"JPEG", "PNG", "WEBP"})
_LABEL_PREFERENCE = ("label", "labels", "fine_label")
_IMAGE_PREFERENCE = ("image", "img")


class ImageDataset(Dataset):
    """A fully decoded image dataset held in memory.

    ``images`` is ``[N, 3, H, W]`` uint8 RGB, ``labels`` is ``[N]`` int64 (-1 = unlabeled),
    ``indices`` maps each row back to its row in the split it was loaded from, and
    ``fingerprint`` names the content (stable across machines and paths).
    ``split_fingerprint`` and ``split_size`` name the whole split the rows come from.
    Items are ``(original_index, image, label)`` so batches carry dataset indices.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: Sequence[str],
        *,
        source: str,
        split: str,
        fingerprint: str | None = None,
        indices: torch.Tensor | None = None,
    ) -> None:
        _check_tensors(images, labels, indices)
        self.images = images
        self.labels = labels
        self.classes = [str(c) for c in classes]
        self.source = source
        self.split = split
        self.indices = torch.arange(len(labels), dtype=torch.int64) if indices is None else indices
        self.fingerprint = fingerprint or _content_fingerprint(images, labels, self.classes)
        # Subsets derive their fingerprint from the loaded split's, so equal rows give equal names.
        self._root_fingerprint = self.fingerprint
        self.split_size = len(labels)

    @property
    def split_fingerprint(self) -> str:
        """The fingerprint of the whole split these rows come from (the same for every subset)."""
        return self._root_fingerprint

    @property
    def num_classes(self) -> int:
        """How many classes the labels index into (0 for an unlabeled dataset)."""
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, int]:
        return int(self.indices[i]), self.images[i], int(self.labels[i])

    def __repr__(self) -> str:
        n, _, h, w = self.images.shape
        return (
            f"ImageDataset(source={self.source!r}, split={self.split!r}, n={n}, size={h}x{w}, "
            f"classes={self.num_classes}, fingerprint={self.fingerprint!r})"
        )

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageDataset:
        """The rows at ``indices`` (positions in this dataset), keeping their original indices."""
        idx = _index_tensor(indices, len(self))
        original = self.indices[idx]
        child = ImageDataset(
            self.images[idx],
            self.labels[idx],
            self.classes,
            source=self.source,
            split=self.split,
            fingerprint=_derived_fingerprint(self._root_fingerprint, original),
            indices=original,
        )
        child._root_fingerprint = self._root_fingerprint
        child.split_size = self.split_size
        return child

    def split_validation(self, fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
        """A seeded ``(train_part, val_part)`` split; disjoint, covering, stratified by label."""
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction < 1:
            raise RobustHubError(f"validation fraction must be a number strictly between 0 and 1, got {fraction!r}.")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise RobustHubError(f"validation split seed must be an integer, got {seed!r}.")
        val = _holdout_mask(self.labels, float(fraction), int(seed))
        if bool(val.all()) or not bool(val.any()):
            raise RobustHubError(
                f"a validation fraction of {fraction} of {len(self)} samples leaves one side of the split empty."
            )
        return self.subset(torch.nonzero(~val).flatten()), self.subset(torch.nonzero(val).flatten())


def load_image_dataset(
    source: str,
    split: str = "train",
    *,
    image_size: int | None = None,
    label_column: str | None = None,
    image_column: str | None = None,
    cache_dir: str | None = None,
    limit: int | None = None,
) -> ImageDataset:
    """Load one split of ``source`` (or its first ``limit`` rows) decoded into memory.

    ``source`` is ``embedded:<name>``, an existing local directory (parquet/arrow shards
    named ``<split>-*`` or kept in ``<split>/``, or an ImageFolder tree) or else a Hugging
    Face Hub dataset id. The image column is the ``datasets.Image`` feature and the label
    column a ``ClassLabel`` (``label`` or ``fine_label`` preferred); ``image_column`` and
    ``label_column`` override them. Without labels, or with only -1 labels, every label is
    -1 and ``classes`` is empty. ``image_size`` resizes every image to that square size.

    Decoded images are cached as ``<fingerprint>.npy`` under ``cache_dir`` (default
    ``datasets/`` under robust-hub's cache, see :mod:`robust_hub.cache`); an explicit ``cache_dir``
    also holds the ``datasets`` library's own cache, under ``hf/``. Any problem with the
    source raises ``RobustHubError``.

    With ``limit``, only the first ``limit`` rows are decoded; the result equals
    ``full.subset(range(limit))`` of a full load (same fingerprints, ``split_size`` the whole
    split's), since the fingerprint still hashes every encoded row. A partial decode is read
    from a full cache when there is one but is never written to the cache.
    """
    _check_arguments(source, split, image_size, limit)
    image_size = None if image_size is None else int(image_size)
    if source.startswith("embedded:"):
        if label_column is not None or image_column is not None:
            raise RobustHubError("label_column and image_column do not apply to embedded datasets.")
        whole = _load_embedded(source, split, image_size)  # rendered, not decoded: nothing to save
        return whole if limit is None or limit >= len(whole) else whole.subset(range(limit))
    hf_cache = str(Path(cache_dir).expanduser() / "hf") if cache_dir else None
    table = _open_source(source, split, hf_cache)
    return _from_hf(
        table,
        source=source,
        split=split,
        image_size=image_size,
        label_column=label_column,
        image_column=image_column,
        cache_root=_cache_root(cache_dir),
        limit=limit,
    )


# ----------------------------------------------------------------------------- arguments


def _check_arguments(source: Any, split: Any, image_size: Any, limit: Any = None) -> None:
    if not isinstance(source, str) or not source.strip():
        raise RobustHubError(f"dataset source must be a non-empty string, got {source!r}.")
    if not isinstance(split, str) or not split.strip():
        raise RobustHubError(f"dataset split must be a non-empty string, got {split!r}.")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1
    ):
        raise RobustHubError(f"image_size must be a positive integer or None, got {image_size!r}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1):
        raise RobustHubError(f"limit must be a positive integer or None, got {limit!r}.")


def _check_tensors(images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None) -> None:
    # Programming errors, not user input: plain ValueError.
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    if labels.dtype != torch.int64 or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be int64 [N] matching images, got {labels.dtype} {tuple(labels.shape)}")
    if indices is not None and (indices.dtype != torch.int64 or indices.shape != labels.shape):
        raise ValueError(f"indices must be int64 [N] matching labels, got {indices.dtype} {tuple(indices.shape)}")


def _index_tensor(indices: Sequence[int] | np.ndarray | torch.Tensor, n: int) -> torch.Tensor:
    idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
    if idx.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    if idx.dim() != 1 or idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.is_complex():
        raise TypeError(f"subset indices must be a 1-D sequence of integers, got {idx.dtype} {tuple(idx.shape)}")
    idx = idx.to(torch.int64).cpu()
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        raise IndexError(f"subset indices must lie in [0, {n}), got range [{int(idx.min())}, {int(idx.max())}]")
    return idx


# ----------------------------------------------------------------------------- splits and fingerprints


def _holdout_mask(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A seeded mask choosing ``floor(n * fraction)`` rows, spread evenly over the labels."""
    n = labels.shape[0]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    # Grouping by label while keeping the random order inside each group, then taking every
    # (1/fraction)-th row, gives each class its proportional share (stratification).
    order = order[torch.sort(labels[order], stable=True).indices]
    position = torch.arange(n, dtype=torch.float64)
    take = torch.floor((position + 1) * fraction) > torch.floor(position * fraction)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[take]] = True
    return mask


def _content_fingerprint(images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> str:
    digest = hashlib.sha256(_DECODE_VERSION.encode())
    digest.update(str(tuple(images.shape)).encode())
    digest.update(np.ascontiguousarray(images.numpy()))  # hashed in place, no copy
    _hash_labels(digest, labels, classes)
    return digest.hexdigest()[:_FINGERPRINT_CHARS]


def _derived_fingerprint(parent: str, original_indices: torch.Tensor) -> str:
    digest = hashlib.sha256(f"{parent}:subset:".encode())
    digest.update(original_indices.numpy().astype("<i8").tobytes())
    return digest.hexdigest()[:_FINGERPRINT_CHARS]


def _hash_labels(digest: Any, labels: torch.Tensor, classes: list[str]) -> None:
    digest.update(labels.numpy().astype("<i8").tobytes())
    digest.update(json.dumps(classes).encode())


# ----------------------------------------------------------------------------- embedded


def _load_embedded(source: str, split: str, image_size: int | None) -> ImageDataset:
    images, labels, classes = render_embedded(source.split(":", 1)[1], image_size)
    test = _holdout_mask(labels, TEST_FRACTION, SPLIT_SEED)
    masks = {"train": ~test, "test": test}
    if split not in masks:
        raise RobustHubError(f"unknown split {split!r} for {source}; available splits: train, test.")
    keep = masks[split]
    return ImageDataset(images[keep].contiguous(), labels[keep], classes, source=source, split=split)


# ----------------------------------------------------------------------------- opening sources


def _open_source(source: str, split: str, hf_cache: str | None) -> hf.Dataset:
    path = Path(source).expanduser()
    if path.exists():
        return _open_local(path, split, hf_cache)
    if _looks_like_path(source):
        raise RobustHubError(f"dataset path {source} does not exist.")
    return _open_hub(source, split, hf_cache)


def _looks_like_path(source: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that does not exist is a mistyped path.
    explicit = source.startswith(("/", ".", "~")) or "\\" in source
    return explicit or source.count("/") > 1 or source.endswith("/") or Path(source).suffix in {".parquet", ".arrow"}


def _open_hub(source: str, split: str, hf_cache: str | None) -> hf.Dataset:
    import datasets

    try:
        return datasets.load_dataset(source, split=split, cache_dir=hf_cache)
    except Exception as err:  # unknown id, unknown split, no network, auth: all are the user's to fix
        raise RobustHubError(
            f"could not load split {split!r} of '{source}' (not a local path, so tried the Hugging Face Hub): "
            f"{_describe(err)}"
        ) from err


def _open_local(path: Path, split: str, hf_cache: str | None) -> hf.Dataset:
    if not path.is_dir():
        raise RobustHubError(f"dataset path {path} is a file; pass the folder holding the shards or image folders.")
    shards = _shard_files(path)
    if shards is not None:
        fmt, by_split = shards
        return _load_shards(fmt, _pick_split(by_split, split, path), hf_cache, path, split)
    return _imagefolder(path, split)


def _walk_files(root: Path) -> list[Path]:
    """Every non-hidden file below ``root``, in a stable order."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(folder) / f for f in sorted(files) if not f.startswith("."))
    return found


def _shard_files(root: Path) -> tuple[str, dict[str, list[Path]]] | None:
    """The shard format and the shard files of each split, or None without shards."""
    files = _walk_files(root)
    for fmt in ("parquet", "arrow"):
        shards = [f for f in files if f.suffix == f".{fmt}"]
        if shards:
            by_split: dict[str, list[Path]] = {}
            for shard in shards:
                by_split.setdefault(_shard_split(shard.relative_to(root)), []).append(shard)
            # One group without a recognised split name is an unsplit dataset.
            if len(by_split) == 1 and next(iter(by_split)).lower() not in _KNOWN_SPLITS:
                by_split = {_UNSPLIT: shards}
            return fmt, by_split
    return None


def _shard_split(relative: Path) -> str:
    """The split a shard belongs to, from its file name or folders (``train-00000-of-00001``, ``test/x``)."""
    match = _SHARD_SUFFIX.match(relative.stem)
    stem = match.group("split") if match else relative.stem
    folders = list(relative.parts[:-1])
    for candidate in [stem, *reversed(folders)]:
        if candidate.lower() in _KNOWN_SPLITS:
            return candidate
    if match or not folders:
        return stem
    return folders[0]


def _pick_split(by_split: dict[str, list[Path]], split: str, root: Path) -> list[Path]:
    if split not in by_split:
        raise RobustHubError(f"no split {split!r} in {root}; available splits: {', '.join(sorted(by_split))}.")
    return by_split[split]


def _load_shards(fmt: str, files: list[Path], hf_cache: str | None, root: Path, split: str) -> hf.Dataset:
    import datasets

    try:
        # A fixed internal split name: `datasets` rejects split names our file naming allows.
        return datasets.load_dataset(
            fmt, data_files={"train": [str(f) for f in files]}, split="train", cache_dir=hf_cache
        )
    except Exception as err:  # a corrupt or unreadable shard is a data problem, not a bug here
        raise RobustHubError(f"could not read the {fmt} shards of split {split!r} in {root}: {_describe(err)}") from err


def _imagefolder(root: Path, split: str) -> hf.Dataset:
    """An ImageFolder tree (``root/<split>/<class>/*``, ``root/<class>/*`` or ``root/*``) as a Dataset."""
    import datasets

    files = [f for f in _walk_files(root) if f.suffix.lower() in _IMAGE_EXTENSIONS]
    if not files:
        kinds = ", ".join(sorted(_IMAGE_EXTENSIONS))
        raise RobustHubError(f"{root} holds no images ({kinds}) and no parquet/arrow shards.")
    parts = [f.relative_to(root).parts for f in files]
    depths = {len(p) for p in parts}
    if len(depths) > 1 or max(depths) > 3:
        raise RobustHubError(
            f"{root} has images at folder depths {sorted(depths)}; expected one of "
            "<split>/<class>/<image>, <class>/<image> or <image> throughout."
        )
    depth = depths.pop()
    # Two levels are <split>/<image> only when every top folder is a split name; else <class>/<image>.
    has_split = depth == 3 or (depth == 2 and all(p[0].lower() in _KNOWN_SPLITS for p in parts))
    has_class = depth == 3 or (depth == 2 and not has_split)
    split_of = [p[0] if has_split else _UNSPLIT for p in parts]
    if split not in split_of:
        raise RobustHubError(f"no split {split!r} in {root}; available splits: {', '.join(sorted(set(split_of)))}.")
    # Classes come from every split so that label ids agree between train and test.
    classes = sorted({p[-2] for p in parts}) if has_class else []
    chosen = [(f, p) for f, p, s in zip(files, parts, split_of) if s == split]
    columns: dict[str, list[Any]] = {"image": [str(f.resolve()) for f, _ in chosen]}
    features = {"image": datasets.Image()}
    if classes:
        class_ids = {name: k for k, name in enumerate(classes)}
        columns["label"] = [class_ids[p[-2]] for _, p in chosen]
        features["label"] = datasets.ClassLabel(names=classes)
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _describe(err: BaseException) -> str:
    """The innermost cause of ``err`` on one line (library wrappers hide it behind generic text)."""
    inner, seen = err, {id(err)}
    while True:
        nested = inner.__cause__ or (None if inner.__suppress_context__ else inner.__context__)
        if nested is None or id(nested) in seen:
            break
        inner = nested
        seen.add(id(inner))
    lines = str(inner).strip().splitlines()
    text = f"{type(inner).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if inner is err else f"{text} (raised as {type(err).__name__})"


# ----------------------------------------------------------------------------- columns and labels


def _from_hf(
    table: hf.Dataset,
    *,
    source: str,
    split: str,
    image_size: int | None,
    label_column: str | None,
    image_column: str | None,
    cache_root: Path,
    limit: int | None = None,
) -> ImageDataset:
    """The shared path of Hub and local sources: detect columns, fingerprint, decode or reuse the cache."""
    table, image_col = _image_column(table, image_column, source)
    label_col = _label_column(table, label_column, image_col, source)
    labels, classes = _labels(table, label_col, source)
    if len(table) == 0:
        raise RobustHubError(f"split {split!r} of {source} has no rows.")
    fingerprint = _source_fingerprint(table, image_col, labels, classes, image_size)
    cache_file = cache_root / f"{fingerprint}.npy"
    if limit is not None and limit < len(table):
        return _first_rows(table, image_col, labels, classes, fingerprint, cache_file, limit,
                           source=source, split=split, image_size=image_size)
    images = _cache_load(cache_file, len(table), image_size)
    if images is None:
        logger.info("decoding %d images of %s [%s]", len(table), source, split)
        images = _decode_column(table, image_col, image_size)
        _cache_store(cache_file, images)
    return ImageDataset(images, labels, classes, source=source, split=split, fingerprint=fingerprint)


def _first_rows(
    table: hf.Dataset,
    image_col: str,
    labels: torch.Tensor,
    classes: list[str],
    fingerprint: str,
    cache_file: Path,
    limit: int,
    *,
    source: str,
    split: str,
    image_size: int | None,
) -> ImageDataset:
    """The first ``limit`` rows, named as ``subset(range(limit))`` of the whole split is."""
    images = _cache_load(cache_file, len(table), image_size, rows=limit)
    if images is None:
        logger.info("decoding the first %d of %d images of %s [%s]", limit, len(table), source, split)
        images = _decode_column(table.select(range(limit)), image_col, image_size)
    rows = torch.arange(limit, dtype=torch.int64)
    head = ImageDataset(images, labels[:limit].clone(), classes, source=source, split=split,
                        fingerprint=_derived_fingerprint(fingerprint, rows), indices=rows)
    head._root_fingerprint, head.split_size = fingerprint, len(table)
    return head


def _image_column(table: hf.Dataset, override: str | None, source: str) -> tuple[hf.Dataset, str]:
    """The column holding images, cast to ``datasets.Image`` when it is not one already."""
    import datasets

    features = table.features
    if override is not None:
        if override not in features:
            columns = ", ".join(features)
            raise RobustHubError(f"image_column {override!r} is not a column of {source}; columns: {columns}.")
        name = override
    else:
        found = [c for c, f in features.items() if isinstance(f, datasets.Image)]
        # Parquet written without `datasets` metadata keeps the image struct but loses the type.
        found = found or [c for c, f in features.items() if isinstance(f, dict) and set(f) == {"bytes", "path"}]
        if not found:
            raise RobustHubError(
                f"{source} has no image column (a datasets.Image feature) among {', '.join(features)}; "
                "pass image_column to name it."
            )
        name = next((c for c in _IMAGE_PREFERENCE if c in found), found[0])
    if isinstance(features[name], datasets.Image):
        return table, name
    try:
        return table.cast_column(name, datasets.Image()), name
    except Exception as err:  # a column that holds no encoded images or paths
        raise RobustHubError(f"column {name!r} of {source} does not hold images: {_describe(err)}") from err


def _label_column(table: hf.Dataset, override: str | None, image_col: str, source: str) -> str | None:
    """The label column: the override, else a ClassLabel column, else an integer ``label`` column."""
    import datasets

    features = table.features
    if override is not None:
        if override not in features or override == image_col:
            columns = ", ".join(features)
            raise RobustHubError(f"label_column {override!r} is not a label column of {source}; columns: {columns}.")
        return override
    class_labels = [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if class_labels:
        # CIFAR-100 has fine_label and coarse_label; the fine one is the benchmark's.
        preferred = [c for c in _LABEL_PREFERENCE if c in class_labels]
        fine = [c for c in class_labels if "coarse" not in c]
        return (preferred or fine or class_labels)[0]
    for name in _LABEL_PREFERENCE:
        feature = features.get(name)
        if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
            return name
    return None


def _labels(table: hf.Dataset, column: str | None, source: str) -> tuple[torch.Tensor, list[str]]:
    """Labels as int64 (-1 = unlabeled) and the class names; an all-unlabeled split has no classes."""
    import datasets

    if column is None:
        return torch.full((len(table),), -1, dtype=torch.int64), []
    feature = table.features[column]
    values = table.with_format("arrow")[column]
    if isinstance(feature, datasets.ClassLabel):
        labels, classes = _int_labels(values, column, source), list(feature.names)
        if int(labels.max(initial=-1)) >= len(classes):
            raise RobustHubError(f"column {column!r} of {source} has label ids beyond its {len(classes)} class names.")
    elif isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        labels = _int_labels(values, column, source)
        classes = [str(k) for k in range(int(labels.max(initial=-1)) + 1)]
    elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        names = values.to_pylist()
        classes = sorted({v for v in names if v is not None})
        lookup = {name: k for k, name in enumerate(classes)}
        labels = np.array([lookup.get(v, -1) for v in names], dtype=np.int64)
    else:
        raise RobustHubError(
            f"column {column!r} of {source} is {feature}, not a class label, integer or string column."
        )
    tensor = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    return tensor, (classes if bool((tensor >= 0).any()) else [])


def _int_labels(values: Any, column: str, source: str) -> np.ndarray:
    labels = values.fill_null(-1).to_numpy().astype(np.int64)
    if labels.size and int(labels.min()) < -1:
        raise RobustHubError(f"column {column!r} of {source} holds negative label ids other than -1.")
    return labels


# ----------------------------------------------------------------------------- encoded rows


def _encoded_chunks(table: hf.Dataset, column: str) -> Iterator[tuple[int, list[tuple[bytes, str]]]]:
    """``(first_row, [(encoded_bytes, name_for_errors), ...])`` chunks of the image column."""
    arrow = table.with_format("arrow")
    for start in range(0, len(table), _CHUNK_ROWS):
        cells = arrow[start : start + _CHUNK_ROWS].column(column).to_pylist()
        yield start, [_encoded(cell, start + k, column) for k, cell in enumerate(cells)]


def _encoded(cell: dict[str, Any] | None, row: int, column: str) -> tuple[bytes, str]:
    if cell is not None and cell.get("bytes"):
        return cell["bytes"], f"row {row} of column {column!r}"
    path = cell.get("path") if cell is not None else None
    if not path:
        raise RobustHubError(f"row {row} of column {column!r} holds no image.")
    try:
        return Path(path).read_bytes(), path
    except OSError as err:
        raise RobustHubError(f"cannot read image file {path} (row {row}): {err.strerror or err}.") from err


def _source_fingerprint(
    table: hf.Dataset, column: str, labels: torch.Tensor, classes: list[str], image_size: int | None
) -> str:
    """A content hash of the encoded images, labels and decode settings (not of paths)."""
    digest = hashlib.sha256(f"{_DECODE_VERSION}:size={image_size}:n={len(table)}".encode())
    for _, rows in _encoded_chunks(table, column):
        for data, _ in rows:
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    _hash_labels(digest, labels, classes)
    return digest.hexdigest()[:_FINGERPRINT_CHARS]


# ----------------------------------------------------------------------------- decoding


def _decode_column(table: hf.Dataset, column: str, image_size: int | None) -> torch.Tensor:
    """Every image of ``column`` as ``[N, 3, H, W]`` uint8, decoded on a thread pool."""
    chunks = _encoded_chunks(table, column)
    first_start, first_rows = next(chunks)
    first = _decode_one(*first_rows[0])
    height, width = (image_size, image_size) if image_size else first.shape[:2]
    out = torch.empty((len(table), 3, height, width), dtype=torch.uint8)
    workers = _decode_workers()
    pending: deque[Future[None]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="robust-hub-decode") as pool:
        try:
            for start, rows in _chain_first((first_start, first_rows), chunks):
                pending.append(pool.submit(_decode_into, out, start, rows, image_size))
                while len(pending) > 2 * workers:  # bounds the encoded bytes held in memory
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return out


def _chain_first(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _decode_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _decode_into(out: torch.Tensor, start: int, rows: list[tuple[bytes, str]], image_size: int | None) -> None:
    """Decode ``rows`` into ``out[start:start + len(rows)]``."""
    decoded = [_decode_one(data, name) for data, name in rows]
    target = tuple(out.shape[-2:])
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for k, array in enumerate(decoded):
        by_shape.setdefault(array.shape[:2], []).append(k)
    # One stack, transpose (and resize) per distinct size: per-image tensor ops would cost as
    # much as decoding a 32x32 image.
    for shape, ks in by_shape.items():
        if shape != target and image_size is None:
            raise RobustHubError(
                f"{rows[ks[0]][1]} is {shape[0]}x{shape[1]} but earlier images are {target[0]}x{target[1]}; "
                "pass image_size to resize all images to one square size."
            )
        batch = torch.from_numpy(np.stack([decoded[k] for k in ks])).permute(0, 3, 1, 2)
        where = torch.tensor(ks) + start
        out[where] = batch if shape == target else _resize_uint8(batch.contiguous(), target)


def _resize_uint8(images: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Antialiased bicubic resize of uint8 ``[B, 3, h, w]`` to ``size``."""
    # torch's native uint8 path (the one torchvision uses to match PIL) is ~10x faster than floats.
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)


def _decode_one(data: bytes, name: str) -> np.ndarray:
    """One encoded image as ``[H, W, 3]`` uint8 RGB (grey replicated, alpha dropped, EXIF rotation applied).

    PIL is used, as ``datasets`` does. torchvision's decoders run 2-4x faster on tiny JPEGs
    but are deprecated since torchvision 0.29 (and warn on every call).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            # exif_transpose parses EXIF in Python, a sixth of the time of a small JPEG; these
            # formats keep EXIF in info, so one without it has no orientation to apply.
            needs_exif = "exif" in opened.info or opened.format not in _EXIF_IN_INFO
            return _rgb_array(ImageOps.exif_transpose(opened) if needs_exif else opened)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise RobustHubError(f"cannot decode image {name}: {err}.") from err


def _rgb_array(image: Any) -> np.ndarray:
    """An opened PIL image as ``[H, W, 3]`` uint8."""
    if image.mode == "RGB":
        return np.asarray(image)  # decodes without the copy that convert() makes
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit grey: keep the top 8 bits rather than letting convert() clip at 255.
        grey = (np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode == "P":
        image = image.convert("RGBA")  # palette transparency converts cleanly only through RGBA
    return np.asarray(image.convert("RGB"))



# ----------------------------------------------------------------------------- cache


def _cache_root(cache_dir: str | None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    return cache_home() / "datasets"


def _cache_load(path: Path, n: int, image_size: int | None, rows: int | None = None) -> torch.Tensor | None:
    """The cached decode at ``path`` (its first ``rows`` rows when given) if it exists and holds all
    ``n`` rows of the split at the expected size, else None."""
    try:
        # Memory-mapped for a partial read, so only the rows taken are read and held.
        array = np.load(path, allow_pickle=False, mmap_mode=None if rows is None else "r")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # a damaged cache is rebuilt, not reported as the user's fault
        warnings.warn(f"ignoring unreadable dataset cache {path}: {err}", stacklevel=3)
        return None
    square = image_size is None or array.shape[2:] == (image_size, image_size)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[:2] != (n, 3) or not square:
        warnings.warn(f"ignoring dataset cache {path}: shape {array.shape} {array.dtype} does not match", stacklevel=3)
        return None
    logger.info("reusing decoded images from %s", path)
    return torch.from_numpy(array if rows is None else np.array(array[:rows]))


def _cache_store(path: Path, images: torch.Tensor) -> None:
    """Write ``images`` to ``path`` atomically (temp file, then rename); a failure only warns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, images.numpy(), allow_pickle=False)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as err:
        warnings.warn(f"could not write dataset cache {path}: {err}", stacklevel=3)


__all__ = ["DEFAULT_DATASET", "ImageDataset", "load_image_dataset"]
