"""Datasets for training: loaders, a stratified split, normalization, fitting images to a model's
input shape, fixed-shape batches and device prefetch.

Everything here works on :class:`Dataset`, numpy arrays in NHWC layout (``float32`` images,
``int32`` labels). The pieces a training loop uses::

    train, val, test = dataset_from_config(doc["data"], input_shape=(32, 32, 3), seed=0,
                                           source="run.toml")
    for batch in prefetch_to_device(batches(train, 128, shuffle=True, seed=0, epoch=epoch)):
        state, loss = step(state, batch.images, batch.labels, batch.mask)

:func:`batches` always yields full-size batches: the last partial batch is padded with zero
images whose ``mask`` is 0, so a jitted step sees a single shape and compiles once. The order of
an epoch is ``np.random.default_rng([seed, epoch]).permutation(n)``, so a run resumed at batch
``start`` of an epoch yields exactly the batches it would have yielded from there.

The ``[data]`` table of a training config (read by :func:`dataset_from_config`)::

    [data]
    name = "digits"          # "digits" (scikit-learn's 8x8 digits), "cifar10", "npz" or "folder"
    path = "data/cifar-10-batches-py"   # folder (cifar10, folder) or file (npz); relative to the config
    validation = 0.1         # fractions of the examples, split stratified by class
    test = 0.1               # (cifar10: the test set is test_batch; `test` may only be 0 there)
    normalize = "standardize"   # "standardize" (per-channel, train statistics), "scale", "none"
    fit = "pad"              # "pad", "resize" or "none": how images reach the model's input_shape
    limit = 500              # optional: keep the first N training examples (quick runs)

An image folder (``name = "folder"``: one subfolder per class, or a labels CSV; ``train/``, ``val/``,
``test/`` folders as the splits) also takes ``labels``, ``image_size``, ``interpolation``,
``crop_to_aspect_ratio`` and ``on_bad_image`` (see :mod:`jaxcnn.folders`), and ``stream``,
``workers`` and ``cache``: a streamed folder (the default) is :class:`jaxcnn.stream.ImageFiles`,
decoded a batch at a time. ``jaxcnn train`` takes every split's batches through
:class:`jaxcnn.stream.Feed` (grain), in the order :func:`batches` gives.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import importlib
import importlib.util
import io
import math
import os
import pathlib
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxcnn import folders, stream
from jaxcnn.stream import Batch, epoch_order
from jaxcnn.errors import ConfigError, describe_value, plural
from jaxcnn.files import from_config

__all__ = [
    "DATASETS",
    "DATA_DEFAULTS",
    "DATA_KEYS",
    "FIT_METHODS",
    "NORMALIZE_MODES",
    "Batch",
    "Dataset",
    "batches",
    "dataset_from_config",
    "epoch_order",
    "fit_to_shape",
    "load_cifar10",
    "load_digits",
    "load_npz",
    "normalization_stats",
    "Preprocessing",
    "prepare_from_config",
    "normalize",
    "num_batches",
    "prefetch_to_device",
    "split",
]

#: Dataset names accepted by ``name`` in the ``[data]`` table.
DATASETS: tuple[str, ...] = ("digits", "cifar10", "npz", "folder")
#: Values of ``normalize`` (:func:`normalize`'s ``mode``).
NORMALIZE_MODES: tuple[str, ...] = ("standardize", "scale", "none")
#: Values of ``fit`` (:func:`fit_to_shape`'s ``method``).
FIT_METHODS: tuple[str, ...] = ("pad", "resize", "none")
#: Keys of the ``[data]`` table.
DATA_KEYS: tuple[str, ...] = ("name", "path", "validation", "test", "normalize", "fit", "limit", "labels", "image_size",
                               "interpolation", "crop_to_aspect_ratio", "on_bad_image", "stream", "workers", "cache")
#: The keys only an image folder takes (:mod:`jaxcnn.folders`, :mod:`jaxcnn.stream`).
FOLDER_KEYS: tuple[str, ...] = ("labels", "image_size", "interpolation", "crop_to_aspect_ratio", "on_bad_image",
                                "stream", "workers", "cache")

DATA_DEFAULTS: Mapping[str, Any] = {
    "name": "digits", "validation": 0.1, "test": 0.1, "normalize": "standardize", "fit": "pad"}
"""The ``[data]`` keys' values where a config leaves them out."""

# A channel whose standard deviation is below this is only centred, not scaled.
_MIN_STD = 1e-6
_STATS_BLOCK = 1024  # images a block of normalization_stats


# --------------------------------------------------------------------------------------------
# Dataset.


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Images ``(N, H, W, C)`` float32 and labels ``(N,)`` int32 class indices.

    The arrays are converted to those dtypes on construction. ``class_names`` is optional
    (``()`` when unknown). Equality is identity: compare the arrays themselves.
    """

    images: np.ndarray = dataclasses.field(repr=False)
    labels: np.ndarray = dataclasses.field(repr=False)
    num_classes: int
    name: str
    class_names: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    #: the files left out when it was read (an image folder's unreadable images, ``path: reason``)
    skipped: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    def __post_init__(self) -> None:
        images = np.asarray(self.images, dtype=np.float32)
        labels = np.asarray(self.labels)
        if images.ndim != 4:
            raise ValueError(f"dataset {self.name!r}: images must be (N, H, W, C), got shape "
                             f"{images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"dataset {self.name!r}: labels must be ({images.shape[0]},), got "
                             f"shape {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"dataset {self.name!r}: labels must be integers, got {labels.dtype}")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels.astype(np.int32, copy=False))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "skipped", tuple(self.skipped))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of one image, ``(H, W, C)``."""
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def take(self, indices: np.ndarray | Sequence[int]) -> Dataset:
        """The examples at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, images={self.images.shape} float32, "
                f"num_classes={self.num_classes})")


# --------------------------------------------------------------------------------------------
# Loaders.


def load_digits() -> Dataset:
    """scikit-learn's handwritten digits: 1,797 real 8x8 grey images of 10 classes, scaled to
    [0, 1] (the pixel values are 0..16). Shipped with scikit-learn, no download.

    The file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``: 64 pixels and the class a
    row) is read directly, as ``sklearn.datasets.load_digits`` reads it: importing scikit-learn
    costs about 0.6 s, which is half the time before ``jaxcnn train`` prints its first line.
    Where the file is not there, scikit-learn's own loader reads it."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ConfigError("the digits dataset ships with scikit-learn: install it with "
                          "`pip install scikit-learn`", source="digits")
    path = pathlib.Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        pixels, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:  # pragma: no cover - a scikit-learn that stores it elsewhere
        from sklearn import datasets as sk_datasets

        raw = sk_datasets.load_digits()
        pixels, target = raw.images, raw.target
    images = (np.asarray(pixels, dtype=np.float32) / 16.0)[..., None]
    labels = np.asarray(target, dtype=np.int32)
    return Dataset(images, labels, 10, "digits", class_names=tuple(str(n) for n in range(10)))


# Globals a CIFAR-10 pickle may reference (numpy arrays, dtypes, bytes): nothing else is loaded,
# so a hostile "dataset" cannot run code through pickle.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")
        if module.startswith(("numpy.core.", "numpy._core.")):
            tail = module.split(".", 2)[2]
            for candidate in (f"numpy._core.{tail}", f"numpy.core.{tail}"):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", DeprecationWarning)
                        return getattr(importlib.import_module(candidate), name)
                except (ImportError, AttributeError):
                    continue
        return super().find_class(module, name)


def _read_pickle(path: pathlib.Path) -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("no such file", source=str(path)) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a CIFAR-10 batch file", source=str(path)) from None
    except OSError as error:
        raise ConfigError(f"cannot read the file: {error.strerror or error}",
                          source=str(path)) from None
    try:
        return _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # noqa: BLE001 - any failure of a corrupt pickle is reported
        raise ConfigError(f"not a CIFAR-10 batch file (a Python pickle): {error}",
                          source=str(path)) from None


def _get(table: Mapping[Any, Any], key: str) -> Any:
    """``table[b"key"]`` or ``table["key"]`` (pickles written by Python 3 code use str keys)."""
    if key.encode() in table:
        return table[key.encode()]
    return table.get(key)


def _read_cifar_batch(path: pathlib.Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_pickle(path)
    if not isinstance(batch, dict):
        raise ConfigError(f"a CIFAR-10 batch must be a pickled dict, got {type(batch).__name__}",
                          source=str(path))
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if data is None or labels is None:
        raise ConfigError("a CIFAR-10 batch needs the keys b'data' and b'labels'; found "
                          f"{', '.join(map(repr, batch)) or 'none'}", source=str(path))
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise ConfigError(f"b'data' must be a (N, 3072) uint8 array, got {data.shape} "
                          f"{data.dtype}", source=str(path))
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise ConfigError("b'labels' must be a list of integers", source=str(path)) from None
    if labels.shape != (data.shape[0],):
        raise ConfigError(f"b'labels' has {plural(labels.size, 'entry', 'entries')} for "
                          f"{plural(data.shape[0], 'image')}",
                          source=str(path))
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(f"b'labels' must be in 0..{num_classes - 1}, got "
                          f"{labels.min()}..{labels.max()}", source=str(path))
    return data, labels


def load_cifar10(folder: str | os.PathLike[str], *, subset: str = "train") -> Dataset:
    """CIFAR-10 in its "python version": ``folder/data_batch_1`` .. ``data_batch_5`` (``subset=
    "train"``; the batches present from 1 on, without gaps) or ``folder/test_batch`` (``"test"``).

    ``folder`` may also be the folder that holds ``cifar-10-batches-py``. Images become
    ``(N, 32, 32, 3)`` float32 in [0, 1]; ``batches.meta`` gives the class names when present.
    """
    if subset not in ("train", "test"):
        raise ConfigError(f"subset must be 'train' or 'test', got {subset!r}", key="subset")
    root = pathlib.Path(folder).expanduser()
    if not root.exists():
        raise ConfigError("no such folder (expected the CIFAR-10 python batches)", source=str(root))
    if not root.is_dir():
        raise ConfigError("is not a folder (expected the CIFAR-10 python batches)",
                          source=str(root))
    nested = root / "cifar-10-batches-py"
    if not (root / "data_batch_1").exists() and not (root / "test_batch").exists() \
            and nested.is_dir():
        root = nested

    class_names: tuple[str, ...] = ()
    meta_path = root / "batches.meta"
    if meta_path.exists():
        meta = _read_pickle(meta_path)
        names = _get(meta, "label_names") if isinstance(meta, dict) else None
        if not isinstance(names, (list, tuple)) or not names:
            raise ConfigError("batches.meta must be a pickled dict with a list b'label_names'",
                              source=str(meta_path))
        class_names = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)
                            for n in names)
    num_classes = len(class_names) or 10

    if subset == "test":
        paths = [root / "test_batch"]
    else:
        numbers = sorted(int(m.group(1)) for p in root.iterdir()
                         if (m := re.fullmatch(r"data_batch_(\d+)", p.name)))
        count = max(numbers, default=1)
        paths = [root / f"data_batch_{i}" for i in range(1, count + 1)]
    parts = [_read_cifar_batch(path, num_classes) for path in paths]  # a missing one: no such file
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0
    return Dataset(images, labels, num_classes, f"cifar10-{subset}", class_names=class_names)


def load_npz(path: str | os.PathLike[str]) -> Dataset:
    """A ``.npz`` file with arrays ``images`` ``(N, H, W)`` or ``(N, H, W, C)`` and ``labels``
    ``(N,)`` of class indices; optional ``class_names`` (strings) or ``num_classes``.

    Floating images are kept as they are (they should be in [0, 1]); integer images (``uint8``
    and any other integer array with values in 0..255) are divided by 255.
    """
    file = pathlib.Path(path).expanduser()
    source = str(file)
    try:
        with open(file, "rb") as handle:  # np.load(path) leaks the handle of a corrupt zip
            images, labels, names, count = _read_npz(handle, source)
    except FileNotFoundError:
        raise ConfigError("no such file", source=source) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a .npz file", source=source) from None
    except OSError as error:
        raise ConfigError(f"cannot read the file: {error.strerror or error}",
                          source=source) from None

    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or 0 in images.shape[1:]:
        raise ConfigError(f"`images` must be (N, H, W) or (N, H, W, C), got shape {images.shape}",
                          source=source, key="images")
    if np.issubdtype(images.dtype, np.floating):
        images = images.astype(np.float32)
        if not np.all(np.isfinite(images)):
            raise ConfigError("`images` holds NaN or infinite values", source=source,
                              key="images")
    elif np.issubdtype(images.dtype, np.integer) or images.dtype == np.bool_:
        if images.size and (images.min() < 0 or images.max() > 255):
            raise ConfigError(f"integer `images` must be in 0..255, got {images.min()}.."
                              f"{images.max()}", source=source, key="images")
        images = images.astype(np.float32) / 255.0
    else:
        raise ConfigError(f"`images` must be numbers, got {images.dtype}", source=source,
                          key="images")

    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] \
            or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise ConfigError(f"`labels` must be ({images.shape[0]},) integer class indices, got "
                          f"shape {labels.shape} {labels.dtype}", source=source, key="labels")
    if labels.size and labels.min() < 0:
        raise ConfigError(f"`labels` must be non-negative, got {labels.min()}", source=source,
                          key="labels")

    class_names: tuple[str, ...] = ()
    if names is not None:
        class_names = tuple(str(n) for n in np.asarray(names).reshape(-1))
    num_classes = int(labels.max()) + 1 if labels.size else 0
    if count is not None:
        num_classes = int(np.asarray(count).reshape(()))
    elif class_names:
        num_classes = len(class_names)
    if labels.size and labels.max() >= num_classes:
        raise ConfigError(f"`labels` go up to {labels.max()} but there are only {plural(num_classes, 'class', 'classes')}",
                          source=source, key="labels")
    return Dataset(images, labels, num_classes, file.stem, class_names=class_names)


def _read_npz(handle: Any, source: str) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    try:
        archive = np.load(handle, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ConfigError(f"not a readable .npz file: {error}", source=source) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ConfigError("is a single .npy array, not a .npz archive with `images` and `labels`",
                          source=source)
    with archive:
        missing = [k for k in ("images", "labels") if k not in archive.files]
        if missing:
            raise ConfigError(f"missing the array(s) {', '.join(map(repr, missing))}; the file "
                              f"holds {', '.join(map(repr, archive.files)) or 'nothing'}",
                              source=source, key=missing[0])
        try:
            return (archive["images"], archive["labels"],
                    archive["class_names"] if "class_names" in archive.files else None,
                    archive["num_classes"] if "num_classes" in archive.files else None)
        except Exception as error:  # noqa: BLE001 - a corrupt member, an object array, ...
            raise ConfigError(f"cannot read the arrays: {error}", source=source) from None


# --------------------------------------------------------------------------------------------
# Splitting and normalizing.


def _check_fraction(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not (0.0 <= value < 1.0) or math.isnan(value):
        raise ConfigError(f"must be a fraction in [0, 1), got {value!r}", key=key)
    return float(value)


def split(dataset: Dataset, *, validation: float = 0.1, test: float = 0.1,
          seed: int = 0) -> tuple[Dataset, Dataset, Dataset]:
    """``(train, validation, test)``: disjoint, stratified by class, the same for a seed.

    ``round(fraction * N)`` examples go to validation and to test. The examples are put in an
    order where every class is spread evenly (shuffled within their class by ``seed``, then
    interleaved by their rank in it); test takes the first ones, validation the next, train the
    rest, so each part holds every class within one example of its share. Each part keeps that
    order, so the first examples of train are a stratified sample too (``limit``).
    """
    validation = _check_fraction(validation, "validation")
    test = _check_fraction(test, "test")
    if validation + test >= 1.0:
        raise ConfigError(f"validation ({validation}) + test ({test}) must leave examples for "
                          "training", key="validation")
    parts = split_indices(dataset.labels, validation=validation, test=test, seed=seed)
    if len(dataset) and parts[0].size == 0:
        raise ConfigError(f"dataset {dataset.name!r} has {len(dataset)} examples: none is left for "
                          f"training after validation ({parts[1].size}) and test ({parts[2].size})",
                          key="validation")
    train, val, tst = (dataset.take(p) for p in parts)
    return (dataclasses.replace(train, name=f"{dataset.name}/train"),
            dataclasses.replace(val, name=f"{dataset.name}/validation"),
            dataclasses.replace(tst, name=f"{dataset.name}/test"))


def split_indices(labels: np.ndarray, *, validation: float, test: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The indices of :func:`split`'s ``(train, validation, test)`` for examples of ``labels``."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    rng = np.random.default_rng(seed)
    position = np.empty(n, dtype=np.float64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        order = rng.permutation(members)
        # The k-th of m shuffled members sits at (k + u) / m in [0, 1): classes interleave.
        position[order] = (np.arange(order.size) + rng.random()) / order.size
    order = np.lexsort((rng.random(n), position))
    n_test = int(round(test * n))
    n_val = int(round(validation * n))
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def normalization_stats(train: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``train``'s images, each of shape ``(C,)``
    float32. A channel with a standard deviation below 1e-6 (constant) gets 1."""
    if len(train) == 0:
        raise ConfigError(f"dataset {train.name!r} is empty: no statistics to normalize with",
                          key="normalize")
    # in float64, a block of images at a time: a float64 copy of the whole set would be twice its size
    channels = train.images.shape[-1]
    blocks = [train.images[i:i + _STATS_BLOCK].reshape(-1, channels) for i in range(0, len(train), _STATS_BLOCK)]
    count = sum(block.shape[0] for block in blocks)
    mean = sum(block.sum(axis=0, dtype=np.float64) for block in blocks) / count
    variance = sum(((block - mean) ** 2).sum(axis=0) for block in blocks) / count
    return _as_stats(mean, np.sqrt(variance))


def _as_stats(mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 per-channel statistics as normalization uses them: float32, and a constant channel's
    standard deviation (below 1e-6) 1."""
    return mean.astype(np.float32), np.where(std < _MIN_STD, 1.0, std).astype(np.float32)


def normalize(train: Dataset, *others: Dataset, mode: str = "standardize") -> tuple[Dataset, ...]:
    """``(train, *others)`` normalized with ``train``'s statistics only.

    ``"standardize"``: ``(x - mean) / std`` per channel, the statistics of ``train``;
    ``"scale"``: unchanged (the loaders already scale to [0, 1]); ``"none"``: unchanged.
    """
    if mode not in NORMALIZE_MODES:
        raise ConfigError(_unknown("normalize mode", mode, NORMALIZE_MODES), key="normalize")
    if mode != "standardize":
        return (train, *others)
    mean, std = normalization_stats(train)
    out = []
    for ds in (train, *others):
        if ds.images.shape[-1] != mean.shape[0]:
            raise ConfigError(f"dataset {ds.name!r} has {ds.images.shape[-1]} channels, the "
                              f"training set {mean.shape[0]}", key="normalize")
        images = ds.images - mean
        images /= std  # in place: one copy of the set, not two
        out.append(dataclasses.replace(ds, images=images))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Fitting images to the model's input shape.


def fit_to_shape(dataset: Dataset, shape: Sequence[int], *, method: str = "pad") -> Dataset:
    """Images of shape ``shape`` ``(H, W, C)``: ``"pad"`` zero-pads them centred (an image larger
    than ``shape`` is refused), ``"resize"`` resizes them bilinearly (``jax.image.resize``),
    ``"none"`` requires the shapes to be equal. One channel is repeated to ``C``; any other
    channel mismatch is refused."""
    if method not in FIT_METHODS:
        raise ConfigError(_unknown("fit method", method, FIT_METHODS), key="fit")
    target = tuple(int(d) for d in shape)
    if len(target) != 3 or min(target) < 1:
        raise ConfigError(f"the input shape must be (height, width, channels), got {shape!r}",
                          key="input_shape")
    have = dataset.shape
    if have == target:
        return dataset
    check_fit(have, target, method, dataset.name)
    (h, w, _), (th, tw, _) = have, target
    images = dataset.images
    if method == "resize" and (h, w) != (th, tw):
        images = _resize(images, th, tw)
    images = stream.fit_images(images, target)  # pads (smaller images) and repeats one channel
    return dataclasses.replace(dataset, images=images)


def check_fit(have: Sequence[int], target: Sequence[int], method: str, name: str) -> None:
    """Refuse (``ConfigError``, key ``fit``) images of shape ``have`` that ``method`` cannot fit
    to ``target``."""
    what = f"dataset {name!r}: images of shape {tuple(have)}"
    h, w, c = have
    th, tw, tc = target
    if c != tc and c != 1:
        raise ConfigError(f"{what} have {c} channels, the model's input shape {tuple(target)} wants "
                          f"{tc}; only 1 channel can be repeated", key="fit")
    if method == "none":
        raise ConfigError(f"{what} do not match the model's input shape {tuple(target)}; use "
                          "fit = \"pad\" or \"resize\"", key="fit")
    if method == "pad" and (h > th or w > tw):
        raise ConfigError(f"{what} are larger than the model's input shape {tuple(target)}; use "
                          "fit = \"resize\"", key="fit")


def _resize(images: np.ndarray, height: int, width: int, chunk: int = 4096) -> np.ndarray:
    n, _, _, c = images.shape
    out = np.empty((n, height, width, c), dtype=np.float32)
    resize = jax.jit(lambda x: jax.image.resize(x, (x.shape[0], height, width, c), "bilinear"))
    for start in range(0, n, chunk):
        block = images[start:start + chunk]
        if block.shape[0] < chunk and n > chunk:  # keep one compiled shape
            block = np.concatenate([block, np.zeros((chunk - block.shape[0],) + block.shape[1:],
                                                    np.float32)])
        out[start:start + chunk] = np.asarray(resize(block))[:min(chunk, n - start)]
    return out


# --------------------------------------------------------------------------------------------
# Batches.


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def num_batches(n: int, batch_size: int, *, drop_remainder: bool = False) -> int:
    """How many batches :func:`batches` yields for ``n`` examples (a partial last batch counts
    unless ``drop_remainder``)."""
    batch_size = _check_batch_size(batch_size)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    return n // batch_size if drop_remainder else -(-n // batch_size)


def batches(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
            start: int = 0, drop_remainder: bool = False) -> Iterator[Batch]:
    """The batches of one epoch, from batch ``start`` on, every one ``batch_size`` long.

    The last partial batch is padded with zero images (label 0) whose ``mask`` is 0, unless
    ``drop_remainder`` drops it. With ``shuffle`` the order is a permutation fixed by
    ``(seed, epoch)``; batch ``k`` is the same whether or not the epoch started at ``start=0``.
    """
    batch_size = _check_batch_size(batch_size)
    n = len(dataset)
    total = num_batches(n, batch_size, drop_remainder=drop_remainder)
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) \
            or not 0 <= start <= total:
        raise ValueError(f"start must be a batch index in 0..{total}, got {start!r}")
    source = stream.BatchSource(dataset, stream.Plan(n, batch_size, batch_size), shuffle=shuffle, seed=seed,
                                epochs=epoch + 1)
    return (source.batch(source[epoch * source.plan.steps + k]) for k in range(int(start), total))


def prefetch_to_device(iterator: Iterable[Any], size: int = 2,
                       sharding: Any = None, put: Callable[[Any], Any] | None = None) -> Iterator[Any]:
    """Yield the items of ``iterator`` (pytrees of arrays, e.g. :class:`Batch`) after
    ``jax.device_put`` (onto ``sharding`` if given), or after ``put(item)`` (such as
    :meth:`jaxcnn.parallel.Layout.put_batch`), keeping ``size`` of them in flight so the transfer of
    the next batches overlaps the step on this one."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    queue: collections.deque[Any] = collections.deque()
    it = iter(iterator)

    def enqueue(count: int) -> None:
        for item in it:
            queue.append(put(item) if put is not None else jax.device_put(item, sharding))
            count -= 1
            if count == 0:
                return

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)


# --------------------------------------------------------------------------------------------
# The [data] table of a training config.


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a raw image (intensities in [0, 1], of the loader's ``raw_shape``) becomes a model input:
    standardized with the training statistics (``mean``/``std``, empty when not standardized), then
    fitted to ``input_shape`` by ``fit``. Recorded at training, applied again when serving."""

    raw_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fit: str
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...] = ()

    def apply(self, images: np.ndarray) -> np.ndarray:
        """``(N, *raw_shape)`` raw images -> ``(N, *input_shape)`` model inputs, float32."""
        images = np.asarray(images, np.float32)
        if self.mean:
            images = (images - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        dataset = Dataset(images, np.zeros(len(images), np.int32), 1, "inputs")
        return fit_to_shape(dataset, self.input_shape, method=self.fit).images

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        return cls(**{f.name: tuple(data[f.name]) if isinstance(data[f.name], list) else data[f.name]
                      for f in dataclasses.fields(cls) if f.name in data})


def dataset_from_config(table: Mapping[str, Any], *, input_shape: Sequence[int], seed: int,
                        source: str = "<config>") -> tuple[Dataset, Dataset, Dataset]:
    """``(train, validation, test)`` described by the ``[data]`` table of a training config:
    loaded, split with ``seed``, limited, normalized with the training statistics and fitted to
    ``input_shape``. Every error is a :class:`ConfigError` naming ``source`` and ``data.<key>``."""
    return prepare_from_config(table, input_shape=input_shape, seed=seed, source=source)[:3]


def prepare_from_config(table: Mapping[str, Any], *, input_shape: Sequence[int], seed: int,
                        source: str = "<config>", say: Callable[[str], None] | None = None,
                        cache_dir: str | os.PathLike[str] | None = None) -> tuple[Any, Any, Any, Preprocessing]:
    """:func:`dataset_from_config` and the :class:`Preprocessing` it applied. An image folder with
    ``stream = true`` (its default) gives :class:`jaxcnn.stream.ImageFiles` (its files, decoded a
    batch at a time when trained on), every other dataset :class:`Dataset` s; ``say`` hears of a
    long check of a folder's files."""
    source = str(source)
    if not isinstance(table, Mapping):
        raise ConfigError(f"[data] must be a table, got {describe_value(table)}", source=source,
                          key="data")
    for key in table:
        if key not in DATA_KEYS:
            raise ConfigError(_unknown("key in [data]", str(key), DATA_KEYS), source=source,
                              key=f"data.{key}")
    cfg = {**DATA_DEFAULTS, **table}

    def fail(key: str, detail: str) -> ConfigError:
        return ConfigError(detail, source=source, key=f"data.{key}")

    def choice(key: str, choices: tuple[str, ...]) -> str:
        value = cfg[key]
        if not isinstance(value, str):
            raise fail(key, f"must be one of {', '.join(choices)}; got {describe_value(value)}")
        if value not in choices:
            raise fail(key, _unknown(f"value {value!r}", value, choices).replace(
                "known:", "allowed:"))
        return value

    name = choice("name", DATASETS)
    normalize_mode = choice("normalize", NORMALIZE_MODES)
    fit_method = choice("fit", FIT_METHODS)
    fractions = {}
    for key in ("validation", "test"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or math.isnan(value) or not 0.0 <= value < 1.0:
            raise fail(key, f"must be a fraction in [0, 1), got {describe_value(value)}")
        fractions[key] = float(value)
    if fractions["validation"] + fractions["test"] >= 1.0:
        raise fail("validation", f"validation ({fractions['validation']}) + test "
                   f"({fractions['test']}) must be below 1 to leave examples for training")
    limit = cfg.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise fail("limit", f"must be a positive integer, got {describe_value(limit)}")
    path = cfg.get("path")
    folder_options = _folder_options(table, name, fail)
    if name == "digits":
        if path is not None:
            raise fail("path", "the digits dataset ships with scikit-learn and takes no path")
    elif path is None:
        what = {"cifar10": "folder of the CIFAR-10 python batches", "npz": ".npz file",
                "folder": "folder of images, one subfolder per class"}[name]
        raise fail("path", f"name = {name!r} needs path = \"...\": the {what}")
    elif not isinstance(path, str) or not path:
        raise fail("path", f"must be a non-empty string, got {describe_value(path)}")
    if name == "cifar10" and "test" in table and fractions["test"] != 0.0:
        raise fail("test", "cifar10 has its own test set (test_batch): leave `test` out, or set "
                   "it to 0 for no test set")
    try:
        target = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        target = ()
    if len(target) != 3 or min(target) < 1:
        raise ConfigError(f"the model's input shape must be (height, width, channels), got "
                          f"{input_shape!r}", source=source, key="model.input_shape")

    where = from_config(path, source) if path is not None else None
    parts = None
    try:
        if name == "folder":
            if "labels" in folder_options:
                folder_options["labels"] = from_config(folder_options["labels"], source)
            parts = folders.split_folders(where) if "labels" not in folder_options else None
            if parts is not None:
                given = [key for key in ("validation", "test") if key in table]
                if given:
                    raise ConfigError(f"holds train/ (and val/, test/) folders, which are the splits: leave "
                                      f"`{given[0]}` out", source=str(where), key=given[0])
            workers = folder_options.pop("workers", stream.DEFAULT_WORKERS)
            cache = folder_options.pop("cache", True)
            if folder_options.pop("stream", True):
                return _streamed_folder(where, parts, folder_options, workers=workers, target=target,
                                        cache_dir=pathlib.Path(cache_dir) if cache and cache_dir is not None else None,
                                        fractions=fractions, seed=seed, limit=limit, normalize_mode=normalize_mode,
                                        fit_method=fit_method, fail=fail, say=say)
            if parts is not None:
                train, val, test_set, skipped = folders.load_split_folders(parts, channels=target[2],
                                                                             **folder_options)
                full = dataclasses.replace(train, skipped=tuple(skipped))
            else:
                full, skipped = folders.load_folder(where, channels=target[2], name="folder", **folder_options)
                full = dataclasses.replace(full, skipped=tuple(skipped))
        elif name == "digits":
            full = load_digits()
        elif name == "npz":
            full = load_npz(where)
        else:
            full = load_cifar10(where, subset="train")
            # `test` is refused above unless it is 0 (no test set): test_batch is the test set.
            test_set = load_cifar10(where, subset="test") if "test" not in table else None
    except ConfigError as error:
        raise fail(error.key if error.key in ("validation", "test") else "name" if name == "digits" else "path",
                   str(error)) from error

    try:
        if parts is not None:  # the folders are the splits
            train = full
        elif name == "cifar10":
            train, val, _ = split(full, validation=fractions["validation"], test=0.0, seed=seed)
            if test_set is None:
                test_set = full.take(np.arange(0))
            test_set = dataclasses.replace(test_set, name="cifar10/test")
            train = dataclasses.replace(train, name="cifar10/train")
            val = dataclasses.replace(val, name="cifar10/validation")
        else:
            train, val, test_set = split(full, seed=seed, **fractions)
    except ConfigError as error:
        raise fail(error.key or "validation", error.detail) from error
    if limit is not None:
        train = train.take(np.arange(min(limit, len(train))))
    if len(train) == 0:
        raise fail("validation", f"no training examples: {full.name!r} has {len(full)}")

    try:
        parts = normalize(train, val, test_set, mode=normalize_mode)
        mean, std = normalization_stats(train) if normalize_mode == "standardize" else ((), ())
    except ConfigError as error:
        raise fail("normalize", error.detail) from error
    try:
        fitted = tuple(fit_to_shape(ds, target, method=fit_method) for ds in parts)
    except ConfigError as error:
        raise fail("fit", error.detail) from error
    recipe = Preprocessing(raw_shape=train.shape, mean=tuple(float(m) for m in mean),
                           std=tuple(float(s) for s in std), fit=fit_method, input_shape=target,
                           class_names=tuple(full.class_names))
    return (*fitted, recipe)  # type: ignore[return-value]


def _streamed_folder(where: pathlib.Path, parts: dict[str, pathlib.Path] | None, options: dict[str, Any], *,
                     workers: int, target: tuple[int, ...], cache_dir: pathlib.Path | None,
                     fractions: dict[str, float], seed: int, limit: int | None,
                     normalize_mode: str, fit_method: str, fail: Callable[[str, str], ConfigError],
                     say: Callable[[str], None] | None) -> tuple[Any, Any, Any, Preprocessing]:
    """:func:`prepare_from_config` of a folder left on disk (``stream = true``): its files listed and
    each decoded once (:func:`jaxcnn.stream.scan`, in ``workers`` processes: bad images, sizes,
    statistics), split as an in-memory folder is, and left to be decoded a batch at a time."""
    on_bad_image = options.pop("on_bad_image", "refuse")
    labels = options.pop("labels", None)
    scans: dict[str, stream.Scan] = {}  # by split name, a row per file of its listing
    skipped: list[str] = []
    count, process = jax.process_count(), jax.process_index()

    def files_of(folder: pathlib.Path, name: str, class_names: Sequence[str] | None = None) -> stream.ImageFiles:
        listed, names = folders.list_folder(folder, labels=labels, class_names=class_names)
        files = stream.ImageFiles([f.path for f in listed], [f.label for f in listed], len(names), name,
                                  class_names=names, channels=target[2], workers=workers, **options)
        # each process decodes its share of the files; what they found is summed over the processes
        cache = None if cache_dir is None else cache_dir / f"{name.replace('/', '-')}.{process}.u8"
        found = stream.scan(files, members=np.arange(process, len(files), count), say=say, cache=cache)
        if count > 1:
            found = found.merged(_sum_over_processes(found.arrays()))
        files, bad = stream.examine(files, found, on_bad_image=on_bad_image, folder=folder)
        scans[name] = found
        skipped.extend(bad)
        return files

    try:
        if parts is not None:  # the folders are the splits
            scanned = train = files_of(parts["train"], "folder/train")
            splits = [train]
            for part in ("val", "test"):
                if part not in parts:
                    splits.append(dataclasses.replace(train.take([]), name=f"folder/{part}"))
                    continue
                files = files_of(parts[part], f"folder/{part}", class_names=train.class_names)
                if files.raw_shape != train.raw_shape:
                    raise ConfigError(f"its images are {files.raw_shape[0]}x{files.raw_shape[1]}, the training "
                                      f"folder's {train.raw_shape[0]}x{train.raw_shape[1]}: give `image_size = [H, W]` "
                                      "in [data]", source=str(parts[part]))
                splits.append(files)
        else:
            scanned = files_of(where, "folder")
            splits = list(split(scanned, seed=seed, **fractions))
    except ConfigError as error:
        if error.key in ("validation", "test"):
            raise fail(error.key, error.detail) from error
        raise fail("path", str(error)) from error
    train, val, test_set = splits
    if limit is not None:
        train = train.take(np.arange(min(limit, len(train))))
    if len(train) == 0:
        raise fail("validation", f"no training examples: {scanned.name!r} has {len(scanned)}")
    mean = std = np.zeros(0, np.float32)
    if normalize_mode == "standardize":  # the training images' statistics, from the scan's per-image ones
        found = scans[scanned.name]
        mean, std = _as_stats(*stream.pooled_stats(found.means[train.rows], found.variances[train.rows]))
    raw = train.raw_shape
    try:
        if raw != target:
            check_fit(raw, target, fit_method, train.name)
    except ConfigError as error:
        raise fail("fit", error.detail) from error
    if fit_method == "resize" and raw[:2] != target[:2]:
        raise fail("fit", f"dataset {train.name!r}: images of shape {raw} are streamed and resized as they are "
                   f"decoded: give `image_size = [{target[0]}, {target[1]}]` in [data] (or `stream = false`)")
    ready = {"mean": tuple(float(m) for m in mean), "std": tuple(float(s) for s in std),
             "target": target if raw != target else None}
    train = dataclasses.replace(train, skipped=tuple(skipped), **ready)
    val, test_set = (dataclasses.replace(part, **ready) for part in (val, test_set))
    recipe = Preprocessing(raw_shape=raw, mean=ready["mean"], std=ready["std"], fit=fit_method,
                           input_shape=target, class_names=tuple(train.class_names))
    return train, val, test_set, recipe


def _sum_over_processes(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each array summed over the processes of a multi-process run (float64 travels as its bits:
    JAX's arrays are 32-bit)."""
    from jax.experimental import multihost_utils

    def bits(array: np.ndarray) -> np.ndarray:
        return array.view(np.int32) if array.dtype == np.float64 else array.astype(np.int32)

    gathered = multihost_utils.process_allgather([bits(a) for a in arrays])
    out = []
    for array, stacked in zip(arrays, gathered):
        stacked = np.asarray(stacked)
        if array.dtype == np.float64:
            stacked = stacked.view(np.float64)
        out.append(stacked.sum(axis=0).astype(array.dtype))
    return out


def _folder_options(table: Mapping[str, Any], name: str, fail: Callable[[str, str], ConfigError]) -> dict[str, Any]:
    """The image folder's keys of ``[data]``, checked (refused for another dataset)."""
    given = [key for key in FOLDER_KEYS if key in table]
    if name != "folder":
        if given:
            raise fail(given[0], f"is an image folder's key (name = \"folder\"), not {name!r}'s")
        return {}
    options: dict[str, Any] = {}
    if "image_size" in table:
        size = table["image_size"]
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise fail("image_size", f"must be [height, width], two positive integers; got {describe_value(size)}")
        options["image_size"] = tuple(size)
    if "interpolation" in table:
        value = table["interpolation"]
        if value not in folders.INTERPOLATIONS:
            raise fail("interpolation", _unknown(f"value {value!r}", str(value), folders.INTERPOLATIONS).replace(
                "known:", "allowed:"))
        options["interpolation"] = value
    if "crop_to_aspect_ratio" in table:
        if not isinstance(table["crop_to_aspect_ratio"], bool):
            raise fail("crop_to_aspect_ratio", f"must be true or false; got {describe_value(table['crop_to_aspect_ratio'])}")
        options["crop_to_aspect_ratio"] = table["crop_to_aspect_ratio"]
    if "on_bad_image" in table:
        value = table["on_bad_image"]
        if value not in folders.BAD_IMAGE_CHOICES:
            raise fail("on_bad_image", f"must be \"refuse\" or \"skip\"; got {describe_value(value)}")
        options["on_bad_image"] = value
    if "stream" in table:
        if not isinstance(table["stream"], bool):
            raise fail("stream", f"must be true (decode a batch at a time) or false (read the folder into memory); "
                       f"got {describe_value(table['stream'])}")
        options["stream"] = table["stream"]
    if "cache" in table:
        if not isinstance(table["cache"], bool):
            raise fail("cache", f"must be true (keep the decoded images in the workdir) or false; got "
                       f"{describe_value(table['cache'])}")
        options["cache"] = table["cache"]
    if "workers" in table:
        value = table["workers"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail("workers", f"must be the number of decoding processes, 0 or more (0: in the training "
                       f"process); got {describe_value(value)}")
        options["workers"] = value
    if "labels" in table:
        if not isinstance(table["labels"], str) or not table["labels"]:
            raise fail("labels", f"must be the path of a `file,label` CSV; got {describe_value(table['labels'])}")
        options["labels"] = table["labels"]
    return options


# --------------------------------------------------------------------------------------------
# Small helpers (the same wording as jaxcnn.config).


def _unknown(what: str, name: str, known: Sequence[str]) -> str:
    names = list(known)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"; did you mean `{close[0]}`?" if close else ";"
    return f"unknown {what}{hint} known: {', '.join(names)}"


