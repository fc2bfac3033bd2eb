"""The batches of a training run, through grain: every split of every dataset, in memory or streamed
from image files.

A run's training batches are one grain ``MapDataset`` whose element ``g`` is step ``g``'s batch:
batch ``g % steps`` of epoch ``g // steps``, in the order ``default_rng([seed, epoch]).permutation(n)``
(:func:`epoch_order`), the last batch of an epoch padded with masked zero images. An element is a
pure function of ``g``, so a run killed and resumed reads exactly the batches it would have read, and
the position is grain's iterator state, saved inside each checkpoint (:meth:`Feed.state`,
:meth:`Feed.restore`).

Two kinds of data go through it:

- a :class:`jaxcnn.data.Dataset` held in memory (digits, CIFAR-10's batches, ``.npz``, a folder read
  with ``stream = false``): batches are sliced in this process. Every process holds the whole set and
  takes its own rows of each global batch, so any number of processes trains on the same global
  batches as one;
- :class:`ImageFiles`, an image folder left on disk (``stream = true``): each batch's files are decoded,
  resized, standardized and padded in grain's worker processes (``workers``), a few batches ahead of
  the step, and nothing holds the whole set. Each process reads only its own share of the files:
  examples ``p, p + P, ...`` for process ``p`` of ``P`` (``jax.process_index()``, ``jax.process_count()``),
  in the epoch's permutation restricted to them, and fills its rows of every global batch from them.
  With one process this is the in-memory order, so a folder streamed and the same folder read into
  memory train on the same batches.

Before the first step every file of a streamed folder is decoded once (:func:`scan`, in the workers):
an unreadable image is refused or skipped (``on_bad_image``) before training starts, images of several
sizes are refused, and the training split's per-channel statistics (``normalize = "standardize"``) are
computed without holding the images.

This module imports NumPy, Pillow and grain, never JAX: grain's workers import it to decode.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxcnn import folders
from jaxcnn.errors import CheckpointError, ConfigError, plural

__all__ = ["Batch", "BatchSource", "Feed", "ImageFiles", "Plan", "Scan", "epoch_order", "examine", "fit_images",
           "pooled_stats", "scan"]

#: worker processes decoding a streamed folder's batches, where ``[data] workers`` is not given
DEFAULT_WORKERS = 2
#: batches each worker decodes ahead of the step
WORKER_BUFFER = 2
#: files one element of the scan decodes
SCAN_CHUNK = 256


class Batch(NamedTuple):
    """One fixed-size batch; ``mask`` is 1 for real examples, 0 for the padding of the last."""

    images: np.ndarray
    labels: np.ndarray
    mask: np.ndarray


def epoch_order(n: int, *, shuffle: bool, seed: int = 0, epoch: int = 0) -> np.ndarray:
    """The order of the examples in an epoch: ``default_rng([seed, epoch]).permutation(n)``."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def fit_images(images: np.ndarray, target: Sequence[int]) -> np.ndarray:
    """``(N, h, w, c)`` images zero-padded (centred) to ``target`` ``(H, W, C)`` and one channel
    repeated to ``C``: :func:`jaxcnn.data.fit_to_shape`'s ``"pad"``, without its checks."""
    h, w, c = images.shape[1:]
    th, tw, tc = target
    if (h, w) != (th, tw):
        top, left = (th - h) // 2, (tw - w) // 2
        images = np.pad(images, ((0, 0), (top, th - h - top), (left, tw - w - left), (0, 0)))
    if c != tc:
        images = np.repeat(images, tc, axis=-1)
    return images


# --------------------------------------------------------------------------------------------
# An image folder left on disk.


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFiles:
    """An image folder's examples as files, decoded a batch at a time (:meth:`read`): what a
    :class:`jaxcnn.data.Dataset` is for the examples in memory, with the same ``len``,
    ``labels``, ``num_classes``, ``name``, ``class_names``, ``skipped`` and ``shape``.

    ``raw_shape`` is every file's decoded shape (:func:`scan` proved it); a read image is then
    standardized with ``mean``/``std`` (empty: not) and padded to ``target`` (``None``: as decoded)."""

    paths: tuple[str, ...] = dataclasses.field(repr=False)
    labels: np.ndarray = dataclasses.field(repr=False)
    num_classes: int
    name: str
    raw_shape: tuple[int, int, int] = (0, 0, 0)  # (0, 0, 0) until scan() has decoded the files
    class_names: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    skipped: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    channels: int = 3
    image_size: tuple[int, int] | None = None
    interpolation: str = "bilinear"
    crop_to_aspect_ratio: bool = False
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    target: tuple[int, int, int] | None = None
    #: the worker processes that decode it (:class:`Feed`, :func:`scan`)
    workers: int = DEFAULT_WORKERS
    #: a file of the decoded pixels that :func:`scan` wrote (``None``: decode each batch's files),
    #: ``raw_shape`` bytes a row
    cache: str | None = None
    #: each example's row in the folder's listing (its row in :class:`Scan` and in the cache);
    #: ``None`` on construction: the examples are the listing
    rows: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", tuple(os.fspath(p) for p in self.paths))
        object.__setattr__(self, "labels", np.asarray(self.labels, np.int32).reshape(-1))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "skipped", tuple(self.skipped))
        if self.rows is None:
            object.__setattr__(self, "rows", np.arange(len(self.paths)))
        if len(self.paths) != self.labels.shape[0]:
            raise ValueError(f"{self.name!r}: {len(self.paths)} files, {self.labels.shape[0]} labels")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of one image as :meth:`read` gives it."""
        return tuple(self.target or self.raw_shape)  # type: ignore[return-value]

    def take(self, indices: np.ndarray | Sequence[int]) -> ImageFiles:
        """The examples at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(self, paths=tuple(self.paths[i] for i in indices), labels=self.labels[indices],
                                   rows=self.rows[indices])

    def pixels(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """The images at ``indices`` as decoded, uint8 ``(len(indices), *raw_shape)``
        (:func:`jaxcnn.folders.pixels`), read from the cache where there is one: what a worker
        sends, a quarter of the floats' bytes."""
        out = np.empty((len(indices), *self.raw_shape), np.uint8)
        if self.cache is not None:
            fd, size = _cache_fd(self.cache), out[0].nbytes if len(out) else 0
            for row, index in enumerate(indices):
                out[row].reshape(-1)[:] = np.frombuffer(os.pread(fd, size, int(self.rows[int(index)]) * size), np.uint8)
            return out
        for row, index in enumerate(indices):
            try:
                image = self.decode(int(index))
            except folders.BadImage as bad:  # readable when the run began (scan), not now
                raise ConfigError(f"cannot read the image any more ({bad.reason}); it was readable when the run "
                                  "began", source=str(bad.path)) from None
            if image.shape != self.raw_shape:
                raise ConfigError(f"is now {image.shape[0]}x{image.shape[1]}, not the "
                                  f"{self.raw_shape[0]}x{self.raw_shape[1]} it was when the run began",
                                  source=self.paths[int(index)])
            out[row] = image
        return out

    def decode(self, index: int) -> np.ndarray:
        """Example ``index`` decoded with this folder's options: :func:`jaxcnn.folders.pixels`
        (raises :class:`jaxcnn.folders.BadImage`)."""
        return folders.pixels(pathlib.Path(self.paths[index]), channels=self.channels, image_size=self.image_size,
                              interpolation=self.interpolation, crop_to_aspect_ratio=self.crop_to_aspect_ratio)

    def finish(self, pixels: np.ndarray) -> np.ndarray:
        """:meth:`pixels` as model inputs, float32 ``(N, *shape)``: scaled to [0, 1] (as
        :func:`jaxcnn.folders.decode`), standardized, padded (as the in-memory folder is)."""
        images = pixels.astype(np.float32) / 255.0
        if self.mean:
            images = (images - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return images if self.target is None else fit_images(images, self.target)

    def read(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """The images at ``indices`` as model inputs, float32 ``(len(indices), *shape)``."""
        return self.finish(self.pixels(indices))


class Scan(NamedTuple):
    """What :func:`scan` found, a row per file of the listing (the rows of files another process
    decoded are zero until :meth:`merged`): whether it was decoded (``done``) and readable (``ok``),
    its decoded ``(H, W, C)``, its per-channel mean and variance (float64); the reasons of the
    unreadable ones this process found, by row."""

    done: np.ndarray
    ok: np.ndarray
    shapes: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    reasons: dict[int, str]
    cache: str | None = None  # the file of the decoded pixels this process wrote, by row

    def arrays(self) -> list[np.ndarray]:
        return [self.done, self.ok, self.shapes, self.means, self.variances]

    def merged(self, arrays: Sequence[np.ndarray]) -> Scan:
        """This scan with the rows of all processes (``arrays``: the sums of every process's :meth:`arrays`)."""
        return self._replace(**dict(zip(("done", "ok", "shapes", "means", "variances"), arrays)))


class _ScanSource:
    """grain's element ``j``: the files ``members[j * SCAN_CHUNK ...]`` decoded, summarized."""

    def __init__(self, files: ImageFiles, members: np.ndarray, keep_pixels: bool) -> None:
        self.files, self.members, self.keep_pixels = files, members, keep_pixels

    def __len__(self) -> int:
        return -(-len(self.members) // SCAN_CHUNK)

    def __getitem__(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], np.ndarray]:
        """(the rows, their decoded shapes (0 where unreadable), per-channel means, variances, the
        reasons ('' where readable), the readable images' uint8 pixels one after the other (where
        kept)): a few arrays, as grain moves each through shared memory."""
        rows = self.members[j * SCAN_CHUNK:(j + 1) * SCAN_CHUNK]
        channels = self.files.channels
        shapes = np.zeros((len(rows), 3), np.int64)
        means = np.zeros((len(rows), channels))
        variances = np.zeros((len(rows), channels))
        reasons = [""] * len(rows)
        kept = []
        for k, row in enumerate(rows):
            try:
                pixels = self.files.decode(int(row))
            except folders.BadImage as error:
                reasons[k] = error.reason
                continue
            if self.keep_pixels:
                kept.append(pixels.reshape(-1))
            values = (pixels.astype(np.float32) / 255.0).reshape(-1, channels).astype(np.float64)  # as finish() scales
            shapes[k], means[k], variances[k] = pixels.shape, values.mean(axis=0), values.var(axis=0)
        return rows, shapes, means, variances, reasons, np.concatenate(kept) if kept else np.zeros(0, np.uint8)


def scan(files: ImageFiles, *, members: np.ndarray | None = None, say: Callable[[str], None] | None = None,
         cache: str | os.PathLike[str] | None = None) -> Scan:
    """Decode the files ``members`` of ``files`` (all: ``None``) once each, in ``files.workers``
    processes, holding none of the images (:func:`examine` then judges what was found). With
    ``cache``, the decoded pixels are written to that file (row ``i``: file ``i``), and training
    reads them there instead of decoding each file again every epoch; a disk without the room for
    them (or images of several sizes) leaves the cache out (``Scan.cache`` is then ``None``)."""
    n, channels, workers = len(files), files.channels, files.workers
    members = np.arange(n) if members is None else np.asarray(members, np.int64)
    if say is not None and len(members) >= 10 * SCAN_CHUNK:
        say(f"checking {len(members):,} images of {files.name} (each decoded once, {plural(workers, 'worker')})")
    found = Scan(np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros((n, 3), np.int32), np.zeros((n, channels)),
                 np.zeros((n, channels)), {}, None)
    writer = _CacheWriter(pathlib.Path(cache), n, say) if cache is not None else None
    try:
        for rows, shapes, means, variances, reasons, pixels in _iterate(
                _ScanSource(files, members, keep_pixels=writer is not None), workers):
            readable = np.asarray([not reason for reason in reasons], bool)
            found.done[rows] = 1
            found.ok[rows] = readable
            found.shapes[rows], found.means[rows], found.variances[rows] = shapes, means, variances
            found.reasons.update((int(row), reason) for row, reason in zip(rows, reasons) if reason)
            if writer is not None:
                writer.write(rows[readable], shapes[readable], pixels)
    finally:
        if writer is not None:
            writer.close()
    return found._replace(cache=writer.path if writer is not None and writer.ok else None)


class _CacheWriter:
    """The decoded pixels of a scan, written at their rows of a file (``n`` rows of the first
    image's size)."""

    def __init__(self, path: pathlib.Path, n: int, say: Callable[[str], None] | None) -> None:
        self.path, self.n, self.say = str(path), n, say
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.size: int | None = None
        self.ok = True

    def write(self, rows: np.ndarray, shapes: np.ndarray, pixels: np.ndarray) -> None:
        if not self.ok or not len(rows):
            return
        sizes = np.prod(shapes, axis=1)
        if self.size is None:
            self.size = int(sizes[0])
            need, free = self.n * self.size, shutil.disk_usage(os.path.dirname(self.path)).free
            if need > free * 0.9:
                self._drop(f"the decoded images ({need / 2**20:,.0f} MB) would not fit beside the "
                           f"{free / 2**20:,.0f} MB free in {os.path.dirname(self.path)}: each batch's files are "
                           "decoded again every epoch")
                return
            os.ftruncate(self.fd, need)  # type: ignore[arg-type]
        if (sizes != self.size).any():  # several sizes: examine() refuses the folder
            self._drop(None)
            return
        view = memoryview(pixels)
        for k, row in enumerate(rows.tolist()):
            os.pwrite(self.fd, view[k * self.size:(k + 1) * self.size], row * self.size)  # type: ignore[arg-type]

    def _drop(self, why: str | None) -> None:
        self.ok = False
        self.close()
        os.unlink(self.path)
        if why and self.say is not None:
            self.say(why)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


_CACHE_FDS: dict[tuple[int, str], int] = {}


def _cache_fd(path: str) -> int:
    """A read descriptor of the cache ``path``, one per process (a worker opens its own)."""
    key = (os.getpid(), path)
    if key not in _CACHE_FDS:
        _CACHE_FDS[key] = os.open(path, os.O_RDONLY)
    return _CACHE_FDS[key]


def examine(files: ImageFiles, found: Scan, *, on_bad_image: str = "refuse",
            folder: str | os.PathLike[str] | None = None) -> tuple[ImageFiles, list[str]]:
    """``files`` without its unreadable images, with its decoded shape, and the skipped ones
    (``path: reason``). Refused (``ConfigError``, naming the file, or the ``folder`` the files were
    listed from): an unreadable image where ``on_bad_image = "refuse"``, images of several sizes
    (two of them named), no readable image."""
    where = str(folder) if folder is not None else files.name
    bad = np.flatnonzero(found.ok == 0)

    def reason(row: int) -> str:
        return found.reasons.get(row, "found by another process, whose log names the reason")

    if len(bad) and on_bad_image != "skip":
        raise ConfigError(f"cannot read the image ({reason(int(bad[0]))}); set `on_bad_image = \"skip\"` in [data] to "
                          "leave such files out", source=files.paths[int(bad[0])])
    kept = np.flatnonzero(found.ok)
    if not len(kept):
        raise ConfigError(f"holds no readable image ({plural(len(bad), 'file')} skipped)", source=where)
    sizes = found.shapes[kept]
    other = np.flatnonzero((sizes != sizes[0]).any(axis=1))
    if len(other):
        a, b = kept[0], kept[other[0]]
        raise ConfigError(f"holds images of several sizes ({sizes[0][0]}x{sizes[0][1]} in {files.paths[a]}, "
                          f"{found.shapes[b][0]}x{found.shapes[b][1]} in {files.paths[b]}): give `image_size = [H, W]` "
                          "in [data] to resize them", source=where)
    skipped = [f"{files.paths[int(row)]}: {reason(int(row))}" for row in bad]
    shape = tuple(int(d) for d in sizes[0])
    return dataclasses.replace(files.take(kept), raw_shape=shape, cache=found.cache), skipped  # type: ignore[arg-type]


def pooled_stats(means: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel mean and standard deviation of equally sized images from each one's mean
    and variance, float64 (``normalization_stats`` of the images themselves, within rounding)."""
    mean = means.mean(axis=0)
    variance = variances.mean(axis=0) + ((means - mean) ** 2).mean(axis=0)
    return mean, np.sqrt(variance)


def _iterate(source: Any, workers: int) -> Iterator[Any]:
    """The elements of a random-access ``source`` in order, read by ``workers`` processes (and
    pickled to this one)."""
    dataset = _dataset(source, workers, pickled=True)
    iterator = iter(dataset)
    try:
        yield from iterator
    finally:
        _close(iterator)


# --------------------------------------------------------------------------------------------
# Which examples each process puts in each step.


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one split's ``n`` examples become the batches of every step on ``processes`` processes:
    ``batch_size`` real examples a step (the rest of the padded global batch masked), ``rows`` of
    each global batch from each process.

    ``sharded`` (streamed files): process ``p`` reads only examples ``p, p + P, ...`` and puts
    ``batch_size // P`` (one more for the first ``batch_size % P``) of them in each step; the
    epoch has as many steps as the process with the most needs. Not sharded (every process holds
    the data): global batch ``k`` is examples ``k * batch_size ...`` of the epoch's order, and each
    process takes its ``rows`` of it."""

    n: int
    batch_size: int
    rows: int
    process: int = 0
    processes: int = 1
    sharded: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.process < self.processes or self.rows * self.processes < self.batch_size:
            raise ValueError(f"bad plan {self}")

    def _share(self, process: int) -> tuple[int, int]:
        """(examples, real examples a step) of ``process`` (sharded)."""
        count = len(range(process, self.n, self.processes))
        per = self.batch_size // self.processes + (process < self.batch_size % self.processes)
        return count, per

    @property
    def steps(self) -> int:
        """The steps of one epoch (a partial last batch counts)."""
        if not self.sharded:
            return -(-self.n // self.batch_size)
        return max((-(-count // per) for count, per in map(self._share, range(self.processes))), default=0)

    def real_examples(self, steps: int) -> int:
        """Real (unpadded) examples, all processes together, in an epoch's first ``steps`` steps."""
        if not self.sharded:
            return min(steps * self.batch_size, self.n)
        return sum(min(steps * per, count) for count, per in map(self._share, range(self.processes)))

    def members(self) -> np.ndarray | None:
        """The examples this process reads (sharded), or ``None`` (all)."""
        return np.arange(self.process, self.n, self.processes) if self.sharded else None

    def local(self, order: np.ndarray, k: int) -> np.ndarray:
        """This process's real examples in step ``k`` of an epoch whose order is ``order`` (this
        process's members' order, when sharded)."""
        if self.sharded:
            per = self._share(self.process)[1]
            return order[k * per:(k + 1) * per]
        start = k * self.batch_size
        end = min(start + self.batch_size, self.n)
        first = start + self.process * self.rows
        return order[first:max(first, min(first + self.rows, end))]


def local_order(plan: Plan, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The epoch's order of the examples this process reads: the permutation of all ``n``,
    restricted to its members when sharded."""
    order = epoch_order(plan.n, shuffle=shuffle, seed=seed, epoch=epoch)
    if plan.sharded:
        order = order[order % plan.processes == plan.process]
    return order


# --------------------------------------------------------------------------------------------
# grain.


class BatchSource:
    """grain's random-access source of a run's steps: element ``g`` is ``(images, labels)`` of this
    process's real examples in step ``g`` (batch ``g % steps`` of epoch ``g // steps``). ``data`` is
    a :class:`jaxcnn.data.Dataset` (the images as the model takes them) or an :class:`ImageFiles`
    (uint8 pixels, which :meth:`batch` finishes in the training process)."""

    def __init__(self, data: Any, plan: Plan, *, shuffle: bool, seed: int = 0, epochs: int = 1,
                 finish: bool = False) -> None:
        self.data, self.plan, self.shuffle, self.seed, self.epochs = data, plan, shuffle, seed, epochs
        self.finish = finish and isinstance(data, ImageFiles)  # finish files' pixels here, not in batch()
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its local order): one epoch cached

    def __len__(self) -> int:
        return self.epochs * self.plan.steps

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_order": None}

    def order(self, epoch: int) -> np.ndarray:
        cached = self._order  # grain's reader threads call this at once: each keeps to its own tuple
        if cached is None or cached[0] != epoch:
            cached = (epoch, local_order(self.plan, shuffle=self.shuffle, seed=self.seed, epoch=epoch))
            self._order = cached
        return cached[1]

    def __getitem__(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, k = divmod(int(g), self.plan.steps)
        index = self.plan.local(self.order(epoch), k)
        if self.finish:
            return self.data.read(index), self.data.labels[index]
        if isinstance(self.data, ImageFiles):
            return self.data.pixels(index), self.data.labels[index]
        return self.data.images[index], self.data.labels[index]

    def batch(self, element: tuple[np.ndarray, np.ndarray]) -> Batch:
        """An element as the step takes it: finished (files), padded to ``plan.rows`` with masked
        zero images."""
        images, labels = element
        if isinstance(self.data, ImageFiles) and not self.finish:
            images = self.data.finish(images)
        real, rows = len(labels), self.plan.rows
        mask = np.zeros(rows, np.float32)
        mask[:real] = 1.0
        if real == rows:
            return Batch(images, np.asarray(labels, np.int32), mask)
        padded = np.zeros((rows, *images.shape[1:]), np.float32)
        padded[:real] = images
        full = np.zeros(rows, np.int32)
        full[:real] = labels
        return Batch(padded, full, mask)

    def __repr__(self) -> str:
        return f"BatchSource({self.data!r}, steps={self.plan.steps}, epochs={self.epochs})"


def _grain() -> Any:
    import grain
    from absl import flags

    # grain 0.2.18 reads an absl flag when it starts workers and fails if the flags were never
    # parsed, as in any program that does not run under absl.app (google/grain#1355, fixed after
    # 0.2.18): those flags are marked parsed with their defaults, and a parsed set is left alone.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain


def _exit_with_parent(*_: Any) -> None:
    """Run in each worker as it starts: a thread that ends the worker once the process that started
    it is gone. grain stops its workers when the iterator is closed; a training process killed by
    SIGKILL closes nothing, and its workers would decode on, orphaned, for ever."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="jaxcnn-exit-with-parent", daemon=True).start()


def _dataset(source: Any, workers: int, threads: int = 0, *, pickled: bool = False) -> Any:
    """``source``'s elements in order: read by ``workers`` processes (``mp_prefetch``), or in this
    process by ``threads`` threads (0: as they are asked for). A worker's element comes through
    shared memory, or ``pickled`` through a pipe: the scan's elements, whose shared memory grain
    unlinks on a thread of its own that a process ending soon after may not let finish (Python then
    warns of leaked shared memory)."""
    grain = _grain()
    dataset = grain.MapDataset.source(source).to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))
    if pickled:
        dataset = grain.experimental.WithOptionsIterDataset(
            dataset, grain.experimental.DatasetOptions(min_shm_size=2**62))
    if workers:
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                                   per_worker_buffer_size=WORKER_BUFFER),
                                      worker_init_fn=_exit_with_parent)
    return dataset


def _close(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


class Feed:
    """One split's batches for a run, from grain: ``take(count)`` yields ``(batch, state)`` pairs,
    ``state`` being the pipeline's position after that batch (what a checkpoint saves and
    :meth:`restore` returns to). Streamed files are decoded in ``workers`` processes (training) or
    ``threads`` threads of this process (evaluation: no process to start each time). Files read
    from the pixel cache (``data.cache``) need no decoding, and moving a batch from a process costs
    more than reading it: ``workers`` threads of this process read them. An in-memory set is sliced
    here. Close it (or use it as a context manager) to stop the workers."""

    def __init__(self, data: Any, plan: Plan, *, shuffle: bool, seed: int = 0, epochs: int = 1, workers: int = 0,
                 threads: int = 0) -> None:
        files = isinstance(data, ImageFiles)
        cached = files and data.cache is not None
        self.source = BatchSource(data, plan, shuffle=shuffle, seed=seed, epochs=epochs, finish=cached)
        self.workers = workers if files and not cached else 0
        self.threads = max(threads, workers) if cached else threads if files else 0
        self.position = 0
        self._iterator: Any = None

    def _open(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(_dataset(self.source, self.workers, self.threads))
        return self._iterator

    def state(self) -> dict[str, Any]:
        """The position, as a checkpoint's record keeps it: the next step, the worker count, and
        grain's own iterator state (``get_state()``)."""
        return {"next": self.position, "workers": self.workers, "grain": self._open().get_state()}

    def restore(self, state: dict[str, Any] | None, step: int) -> None:
        """Continue at ``step``, from a checkpoint's :meth:`state` (``None``: a checkpoint written
        before the pipeline kept one; an in-memory set is then positioned at ``step``)."""
        if state is None:
            if self.workers:
                raise CheckpointError(f"the checkpoint of step {step} does not hold the position of the streamed "
                                      "data pipeline; it cannot resume a streamed run")
            state = {"next": step, "workers": 0, "grain": {"next_index": step}}
        if int(state["next"]) != step:
            raise CheckpointError(f"the checkpoint of step {step} holds the data pipeline's position of step "
                                  f"{state['next']}")
        if int(state["workers"]) != self.workers:  # the workers that wrote the state read on
            self.close()
            self.workers = int(state["workers"])
        self._open().set_state(state["grain"])
        self.position = step

    def take(self, count: int) -> Iterator[tuple[Batch, dict[str, Any]]]:
        """The next ``count`` batches (fewer at the end), each with the state after it."""
        iterator = self._open()
        for _ in range(count):
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.position += 1
            yield self.source.batch(batch), self.state()

    def close(self) -> None:
        if self._iterator is not None:
            _close(self._iterator)
            self._iterator = None

    def __enter__(self) -> Feed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
