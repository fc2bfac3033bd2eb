"""The fit loop: ``jaxcnn train CONFIG --workdir DIR`` as a library call, :func:`train_and_evaluate`.

A training config is a model config (``[model]``, ``[[layers]]``) with two more tables::

    [data]                       # see jaxcnn.data.dataset_from_config
    name = "digits"
    [train]                      # see TrainConfig
    epochs = 30
    batch_size = 64
    [train.optimizer]            # see jaxcnn.optimizers
    name = "adam"
    [mesh]                       # optional; see jaxcnn.parallel
    strategy = "data"            # or "fsdp"

The run is data-parallel over every device JAX sees (``[mesh] devices`` to use fewer): one device
by default on a CPU, 8 with ``JAX_NUM_CPU_DEVICES=8``, every process's devices under
``jax.distributed`` (``jaxcnn train --coordinator``). ``batch_size`` is the global batch.
Checkpoints are written once, collectively, by orbax, and restore onto any layout; the files below
are written by process 0.

What a run writes in its workdir:

* ``checkpoints/<step>/``: orbax checkpoints every ``checkpoint_every_steps`` steps and at each
  epoch's end, the newest ``keep_checkpoints`` kept; a run started again with the same workdir
  resumes from the newest, exactly (same batches, same dropout keys), and says so;
* ``best/<step>/``: the checkpoint with the best validation ``monitor`` so far;
* ``metrics.jsonl``: one JSON line an epoch (train and validation loss and accuracy, time, images/s);
* ``curves.png``: loss and accuracy curves, redrawn at most every ``CURVES_SECONDS`` and at the end;
* ``results.json``: ``test_accuracy``, ``test_loss``, ``epochs``, ``steps``, ``train_seconds``,
  ``images_per_second``, ``params_sha256`` (and more). ``train_seconds`` is the time spent in
  training epochs (steps, data, checkpoints), without validation and without the first step's
  compilation, which is ``first_step_seconds``; ``first_step_cache`` says whether that step's program
  came from the persistent compilation cache (``"hit"``; ``"miss"``: compiled; ``"off"``: no cache,
  see :mod:`jaxcnn.compile_cache`). ``input_seconds`` is the part of ``train_seconds`` the loop spent
  waiting for the next batch (:mod:`jaxcnn.stream`): near 0 when the input pipeline keeps up with
  the steps, near ``train_seconds`` when it is what limits training.

Resuming. A checkpoint records the settings the run's results depend on (the model, the whole
``[data]`` table, the ``[train]`` table but for ``epochs``, ``checkpoint_every_steps`` and
``keep_checkpoints``, and the seed). A run whose settings differ is refused, naming each key that
differs, and the checkpoint is left untouched. ``epochs`` may grow (not shrink): the run says so,
and a learning-rate schedule that is derived from the run's length (``decay_steps`` not given) is
derived again from the new length, so from the resumed step on the learning rate follows the longer
schedule; the run prints the learning rate at that step before and after.

The loop's parts: :func:`_set_up` (the config read and validated, the data, the compiled model; no
file written), :func:`_start_or_resume`, :func:`_train_epoch`, :func:`_end_epoch` (validation,
checkpoints, files, early stopping) and :func:`_finish` (the test evaluation and ``results.json``).
Periodic work (the progress line, mid-epoch checkpoints) is decided by :class:`Every` from the step
and the time it is given. Non-finite steps are counted on the device and read where the loop
synchronizes anyway (a progress redraw, a checkpoint, the epoch's end), never once a step; with
``on_nonfinite = "stop"`` the run then replays, from its last checkpoint, exactly the steps up to
the failing one (the same batches, dropout keys and layout), and names it and its first non-finite
layer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

import jax

from jaxcnn import data as data_lib
from jaxcnn import parallel
from jaxcnn import stream as stream_lib
from jaxcnn.checkpoint import Checkpoints, model_fingerprint
from jaxcnn.compile_cache import CacheEvents
from jaxcnn.config import from_dict, read_document
from jaxcnn.errors import ConfigError, JaxcnnError, NonFiniteError, plural
from jaxcnn.files import atomic_path, write_atomic
from jaxcnn.graph import Model
from jaxcnn.train import CompiledModel, Metrics, TrainState, class_labels, compile, params_sha256

__all__ = ["Every", "Progress", "TrainConfig", "train_and_evaluate"]

SEED_MAX = 2**32 - 1
# curves.png is drawn at most this often during a run (about 0.2 s a drawing), and at its end.
CURVES_SECONDS = 15.0
PIXELS = "pixels"  # the workdir's folder of a streamed image folder's decoded pixels, during a run
# [train] keys a resume may change: they do not change what the run computes (epochs may grow).
_RESUMABLE_KEYS = ("epochs", "checkpoint_every_steps", "keep_checkpoints")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The ``[train]`` table. Every key is optional."""

    epochs: int = 10
    batch_size: int = 32
    seed: int = 0
    loss: str = "sparse_categorical_crossentropy"
    metrics: tuple[str, ...] = ("accuracy",)
    optimizer: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"name": "adam"})
    precision: str = "float32"
    on_nonfinite: str = "stop"
    checkpoint_every_steps: int = 0  # 0: at each epoch's end only
    keep_checkpoints: int = 3
    early_stopping_patience: int = 0  # 0: off
    monitor: str = "val_loss"

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, source: str = "<config>",
                   overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        """The table validated; ``overrides`` (``jaxcnn train --epochs/--seed``; ``None`` values
        ignored) replace its keys first and go through the same validation."""
        if not isinstance(table, Mapping):
            raise ConfigError("must be a table ([train])", source=source, key="train")
        table = {**table, **{k: v for k, v in (overrides or {}).items() if v is not None}}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in table.items():
            if key not in fields:
                raise ConfigError(f"unknown key; known: {', '.join(fields)}", source=source, key=f"train.{key}")
            default = getattr(cls(), key)
            if isinstance(default, bool) or isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
                expected = "a non-negative integer"
            elif isinstance(default, str):
                ok, expected = isinstance(value, str), "a string"
            elif isinstance(default, tuple):
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
                expected, value = "a list of strings", tuple(value) if isinstance(value, list) else value
            else:
                ok, expected = isinstance(value, Mapping), "a table"
            if not ok:
                raise ConfigError(f"(={value!r}) must be {expected}", source=source, key=f"train.{key}")
            kwargs[key] = value
        config = cls(**kwargs)
        for key in ("epochs", "batch_size", "keep_checkpoints"):
            if getattr(config, key) < 1:
                raise ConfigError(f"(={getattr(config, key)}) must be at least 1", source=source, key=f"train.{key}")
        if config.seed > SEED_MAX:
            raise ConfigError(f"(={config.seed}) must be at most {SEED_MAX} (2**32 - 1)", source=source,
                              key="train.seed")
        if config.monitor not in ("val_loss", "val_accuracy"):
            raise ConfigError(f"(={config.monitor!r}) must be 'val_loss' or 'val_accuracy'",
                              source=source, key="train.monitor")
        return config

    def settings(self) -> dict[str, Any]:
        """The keys a resumed run must share with the run that wrote the checkpoint (JSON-ready)."""
        table = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in table.items() if k not in _RESUMABLE_KEYS}


class Every:
    """When a periodic action is due, as clu's periodic actions decide it: every ``steps`` steps
    and/or every ``seconds`` seconds. The step and the time are inputs (``due(step, now)``), so
    the decision is deterministic in tests; 0 turns a criterion off."""

    def __init__(self, *, steps: int = 0, seconds: float = 0.0, now: float = 0.0) -> None:
        self.steps, self.seconds, self._last = steps, seconds, now

    def due(self, step: int, now: float) -> bool:
        due = bool(self.steps and step % self.steps == 0) or bool(self.seconds and now - self._last >= self.seconds)
        if due:
            self._last = now
        return due


class Progress:
    """The run's output on ``stream``. On a terminal the current epoch's line is redrawn in place
    (at most every ``redraw_seconds``); elsewhere (a log) only each epoch's final line is written.
    ``enabled=False`` writes nothing (``--quiet``, processes other than 0)."""

    def __init__(self, stream: TextIO, enabled: bool, *, tty: bool | None = None,
                 redraw_seconds: float = 0.2) -> None:
        self.stream, self.enabled = stream, enabled
        self.tty = enabled and (stream.isatty() if tty is None else tty)
        self._redraw = Every(seconds=redraw_seconds, now=-math.inf)

    def step(self, step: int, now: float, text: Callable[[], str]) -> bool:
        """Redraw the line with ``text()`` if it is due at ``now``; ``text`` is only called then
        (it reads metrics back from the device). Returns whether it was drawn."""
        if not (self.tty and self._redraw.due(step, now)):
            return False
        self.stream.write("\r\033[K" + text())
        self.stream.flush()
        return True

    def epoch(self, text: str) -> None:
        """An epoch's final line."""
        self.say(("\r\033[K" if self.tty else "") + text)

    def say(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()


# ---- setting up ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Run:
    """Everything a run needs, read and validated before the first file is written."""

    source: str
    workdir: pathlib.Path
    model: Model
    config: TrainConfig
    mesh: parallel.MeshConfig
    layout: parallel.Layout
    global_batch: int
    train: Any  # a data_lib.Dataset, or stream_lib.ImageFiles (a folder streamed from disk)
    val: Any
    test: Any
    preprocessing: data_lib.Preprocessing
    compiled: CompiledModel
    to_labels: Callable[[Any], Any]  # the data's class indices in the form the loss takes
    steps_per_epoch: int
    settings: dict[str, Any]
    lead: bool  # the process that writes files and prints
    workers: int  # the processes decoding a streamed folder's training batches (threads for evaluation)
    # --init-from: (the file, the partial Weights its layers give by name, the layers taken, the layers
    # left to their initializers), or None
    init_from: tuple[str, Any, list[str], list[str]] | None = None

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    def plan(self, data: Any) -> stream_lib.Plan:
        return _plan(data, self.config.batch_size, self.global_batch)

    def real_examples(self, steps_into_epoch: int) -> int:
        """Real (unpadded) examples in an epoch's first ``steps_into_epoch`` steps: known on the
        host, so no step reads its mask back from the device."""
        return self.plan(self.train).real_examples(steps_into_epoch)

    def train_feed(self) -> stream_lib.Feed:
        """The run's training batches, all its epochs, through grain (positioned by
        :meth:`jaxcnn.stream.Feed.restore` on a resume)."""
        return stream_lib.Feed(self.train, self.plan(self.train), shuffle=True, seed=self.config.seed,
                               epochs=self.config.epochs, workers=self.workers)

    def on_devices(self, pairs: Iterator[tuple[stream_lib.Batch, Any]]) -> Iterator[tuple[Any, Any]]:
        """``(batch, data state)`` pairs with this process's rows of each batch laid out over the mesh."""
        def put(pair: tuple[stream_lib.Batch, Any]) -> tuple[Any, Any]:
            batch, where = pair
            return self.layout.put_local_batch(batch._replace(labels=self.to_labels(batch.labels))), where

        return data_lib.prefetch_to_device(pairs, put=put)

    def evaluate(self, state: TrainState, dataset: Any) -> dict[str, float]:
        if not len(dataset):
            return {"loss": math.nan, "accuracy": math.nan}
        with stream_lib.Feed(dataset, self.plan(dataset), shuffle=False, threads=self.workers) as feed:
            pairs = self.on_devices(feed.take(feed.source.plan.steps))
            return self.compiled.evaluate(state, (batch for batch, _ in pairs))


def _plan(data: Any, batch_size: int, global_batch: int) -> stream_lib.Plan:
    """Which of ``data``'s examples this process puts in each step (:class:`jaxcnn.stream.Plan`):
    its own files of a streamed folder, its rows of every global batch of data in memory."""
    count = jax.process_count()
    return stream_lib.Plan(len(data), batch_size, global_batch // count,
                           process=jax.process_index() if count > 1 else 0, processes=count,
                           sharded=isinstance(data, stream_lib.ImageFiles))


def _set_up(config_path: str | os.PathLike[str], workdir: str | os.PathLike[str], *,
            epochs: int | None, seed: int | None, mesh: str | None, devices: int | None,
            init_from: str | os.PathLike[str] | None = None, say: Callable[[str], None] | None = None) -> _Run:
    """Read, validate and prepare everything; raises before any file is written."""
    source = os.fsdecode(config_path)
    doc = read_document(config_path)
    model = from_dict(doc, source=source, require_input_shape=True)
    try:
        model.check()  # the shapes are proved before any training step is traced
    except JaxcnnError as error:
        raise error.located(source=source) from None
    config = TrainConfig.from_table(doc.get("train", {}), source=source,
                                    overrides={"epochs": epochs, "seed": seed})
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError("is a file: the workdir must be a folder (new, or of an earlier run of this config)",
                          source=str(workdir))
    mesh_config = parallel.MeshConfig.from_table(
        {**doc.get("mesh", {}), **{k: v for k, v in (("strategy", mesh), ("devices", devices)) if v is not None}},
        source=source)
    try:
        layout = parallel.Layout.create(mesh_config)
    except JaxcnnError as error:
        raise error.located(source=source) from None
    global_batch = layout.padded_batch_size(config.batch_size, mesh_config.uneven_batch, source=source)
    existed = workdir.exists()
    try:
        return _set_up_data(source, workdir, model, config, doc, mesh_config, layout, global_batch, init_from, say)
    except BaseException:
        _remove_pixels(workdir, created=not existed)
        raise


def _set_up_data(source: str, workdir: pathlib.Path, model: Model, config: TrainConfig, doc: Mapping[str, Any],
                 mesh_config: parallel.MeshConfig, layout: parallel.Layout, global_batch: int,
                 init_from: str | os.PathLike[str] | None, say: Callable[[str], None] | None) -> _Run:
    """The rest of :func:`_set_up`, from the data on (a streamed folder's decoded pixels may be
    written to ``workdir/pixels`` on the way: removed again if it raises)."""
    data_table = doc.get("data", {})
    train, val, test, preprocessing = data_lib.prepare_from_config(
        data_table, input_shape=model.input_shape, seed=config.seed, source=source, say=say,
        cache_dir=workdir / PIXELS)
    if len(train) == 0:
        raise ConfigError("the training split is empty", source=source, key="data")
    if config.early_stopping_patience and len(val) == 0:
        raise ConfigError(
            f"(={config.early_stopping_patience}) needs a validation split to monitor {config.monitor}, and "
            "this run has none: set data.validation above 0, or early_stopping_patience = 0",
            source=source, key="train.early_stopping_patience")
    to_labels = class_labels(config.loss, model, train.num_classes, source=source)  # e.g. one-hot
    workers = train.workers if isinstance(train, stream_lib.ImageFiles) else 0
    steps_per_epoch = _plan(train, config.batch_size, global_batch).steps
    try:
        compiled = compile(model, dict(config.optimizer), config.loss, config.metrics,
                           precision=config.precision, on_nonfinite=config.on_nonfinite,
                           total_steps=config.epochs * steps_per_epoch, layout=layout)
    except JaxcnnError as error:
        raise error.located(source=source) from None
    settings = {"train": config.settings(), "data": {**data_lib.DATA_DEFAULTS, **data_table}}
    start = None
    if init_from is not None:
        start = _init_from(model, init_from)
        settings["init_from"] = {"file": start[0], "sha256": _file_sha256(start[0])}
    return _Run(source=source, workdir=workdir, model=model, config=config, mesh=mesh_config,
                layout=layout, global_batch=global_batch, train=train, val=val, test=test,
                preprocessing=preprocessing, compiled=compiled, to_labels=to_labels, steps_per_epoch=steps_per_epoch,
                settings=settings, lead=jax.process_index() == 0, workers=workers, init_from=start)


def _remove_pixels(workdir: pathlib.Path, *, created: bool = False) -> None:
    """Remove this process's decoded-pixel files from ``workdir/pixels`` (and the folder, and the
    workdir if ``created`` for this run, once empty)."""
    folder = workdir / PIXELS
    for file in folder.glob(f"*.{jax.process_index()}.u8"):
        file.unlink(missing_ok=True)
    for empty in (folder, workdir) if created else (folder,):
        try:
            empty.rmdir()
        except OSError:
            pass


def _init_from(model: Model, path: str | os.PathLike[str]) -> tuple[str, Any, list[str], list[str]]:
    """``--init-from``: the trained Keras model at ``path`` read, and the weights ``model``'s layers
    take from it by name (:func:`jaxcnn.keras.files.weights_by_name`)."""
    from jaxcnn.config import load
    from jaxcnn.files import keras_file_kind
    from jaxcnn.keras.files import weights_by_name

    source = os.path.abspath(os.fsdecode(path))
    if not os.path.exists(source):
        raise ConfigError("no such file (--init-from)", source=source)
    if keras_file_kind(source) is None:
        raise ConfigError("is not a trained Keras model (--init-from takes a .keras or full-model .h5 file)",
                          source=source)
    trained = load(source, require_input_shape=True)
    partial, taken, fresh = weights_by_name(model, trained.weights)
    return source, partial, taken, fresh


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_checkpoints(run: _Run) -> tuple[Checkpoints, Checkpoints]:
    try:
        run.workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create the workdir: {error.strerror or error}", source=str(run.workdir)) from None
    fingerprint = model_fingerprint(run.model)
    return (Checkpoints(run.workdir / "checkpoints", fingerprint=fingerprint, keep=run.config.keep_checkpoints,
                        settings=run.settings),
            Checkpoints(run.workdir / "best", fingerprint=fingerprint, keep=1, settings=run.settings))


def _new_record(run: _Run) -> dict[str, Any]:
    return {"history": [], "best": None, "best_step": None, "bad_epochs": 0, "train_seconds": 0.0,
            "input_seconds": 0.0, "examples": 0, "epoch_sums": None, "skipped_steps": 0, "stopped_early": False,
            "epochs": run.config.epochs, "preprocessing": run.preprocessing.to_dict(),
            "num_classes": run.train.num_classes}


def _start_or_resume(run: _Run, checkpoints: Checkpoints, best: Checkpoints, feed: stream_lib.Feed,
                     out: Progress) -> tuple[TrainState, dict[str, Any]]:
    """A fresh state, or the newest checkpoint's (refused if its run differs, see the module
    docstring) with ``feed`` positioned where its data state says; a best checkpoint that a kill
    kept from being written is written now."""
    restored = checkpoints.restore(run.layout.with_shardings(run.compiled.abstract_state()))
    if restored is None:
        out.say(f"training {run.model.name!r} ({plural(run.model.count_params(), 'param')}) on {run.train.name}: "
                f"{len(run.train)} train / {len(run.val)} validation / {len(run.test)} test examples, "
                f"{plural(run.config.epochs, 'epoch')} of {plural(run.steps_per_epoch, 'step')}, "
                f"workdir {run.workdir}; {_describe_layout(run)}")
        if run.train.skipped:
            out.say(f"skipped {plural(len(run.train.skipped), 'unreadable image')} (on_bad_image = \"skip\"): "
                    + "; ".join(run.train.skipped[:3]) + ("; ..." if len(run.train.skipped) > 3 else ""))
        state = run.compiled.init(run.config.seed)
        if run.init_from is not None:
            source, partial, taken, fresh = run.init_from
            state = run.compiled.with_weights(state, partial, partial=True)
            out.say(f"started {plural(len(taken), 'layer')} from {source}"
                    + (f"; {plural(len(fresh), 'layer')} from their initializers: {', '.join(fresh)}" if fresh else ""))
        return state, _new_record(run)
    state, record = restored
    step = int(state.step)
    out.say(f"resuming from the checkpoint of step {step} in {checkpoints.directory}")
    was = int(record.get("epochs", run.config.epochs))
    if run.config.epochs < was:
        raise ConfigError(
            f"(={run.config.epochs}) is fewer than the {plural(was, 'epoch')} of the run that wrote the "
            f"checkpoint of step {step} in {checkpoints.directory}; epochs may grow on a resume, not shrink",
            source=run.source, key="train.epochs")
    if run.config.epochs > was:
        out.say(f"train.epochs grew from {was} to {run.config.epochs}: the run goes on to step "
                f"{run.total_steps:,}; {_schedule_change(run, was * run.steps_per_epoch, step)}")
        record = {**record, "epochs": run.config.epochs, "stopped_early": False}
    try:
        feed.restore(record.get("data_state"), step)
    except JaxcnnError as error:
        raise error.located(source=str(checkpoints.directory)) from None
    if record.get("best_step") == step and best.latest_step() != step:  # killed between the two saves
        best.save(step, state, {**record, "epoch_sums": None})
    _write_files(run, record)  # a kill may have come between the checkpoint and the files
    return state, record


def _schedule_change(run: _Run, old_total: int, step: int) -> str:
    """What a longer run does to the learning-rate schedule, in words."""
    from jaxcnn.optimizers import learning_rate_schedule

    before = learning_rate_schedule(run.config.optimizer, total_steps=old_total)
    after = learning_rate_schedule(run.config.optimizer, total_steps=run.total_steps)
    if not callable(before):
        return "the learning rate is constant, so nothing else changes"
    probes = (step, old_total, run.total_steps)
    if all(float(before(s)) == float(after(s)) for s in probes):
        return "the learning-rate schedule does not depend on the run's length and is unchanged"
    return (f"the learning-rate schedule is derived again for {run.total_steps:,} steps instead of "
            f"{old_total:,}: at step {step:,} the learning rate goes from {float(before(step)):.4g} to "
            f"{float(after(step)):.4g}")


# ---- the loop ------------------------------------------------------------------------------


@dataclasses.dataclass
class _Clock:
    """The epoch's training time, without the first step's compilation and without validation."""

    first_step_seconds: float | None = None
    first_step_cache: str | None = None  # "hit", "miss" or "off": the persistent compilation cache
    started: float = 0.0  # when the current timing segment began
    segment_from: int = 0  # the step in the epoch where it began

    def close_segment(self, record: dict[str, Any], run: _Run, done: int) -> None:
        """Add the segment ending after ``done`` steps of the epoch to the record's totals."""
        record["train_seconds"] += time.perf_counter() - self.started
        record["examples"] += run.real_examples(done) - run.real_examples(self.segment_from)
        self.started, self.segment_from = time.perf_counter(), done


def _empty_sums(run: _Run) -> Metrics:
    return Metrics.empty(run.compiled.top_k, run.compiled.accuracy)


def _sums_of(record: dict[str, Any], run: _Run) -> Metrics:
    """The epoch's sums so far, as a mid-epoch checkpoint recorded them."""
    sums = _empty_sums(run)
    if record.get("epoch_sums"):
        sums = sums.replace(**{k: jax.numpy.asarray(v, jax.numpy.float32) for k, v in record["epoch_sums"].items()})
    return sums


def _record_with(record: dict[str, Any], step: int, sums: Metrics | None) -> dict[str, Any]:
    fields = ("count", "loss", "correct", "top_k_correct", "nonfinite")
    epoch_sums = None if sums is None else {k: float(getattr(sums, k)) for k in fields}
    return {**record, "epoch_sums": epoch_sums, "step": step}


def _train_epoch(run: _Run, state: TrainState, record: dict[str, Any], epoch: int, start: int, feed: stream_lib.Feed,
                 checkpoints: Checkpoints, out: Progress, clock: _Clock,
                 on_step: Callable[[int], None] | None) -> tuple[TrainState, Metrics]:
    """The steps of ``epoch`` from its step ``start`` on, ``feed``'s next batches; returns the state
    and the epoch's sums. ``record["data_state"]`` follows the batches the steps have taken, so
    every checkpoint holds the position of the batch that comes next."""
    sums = _sums_of(record, run) if start else _empty_sums(run)
    checkpoint_due = Every(steps=run.config.checkpoint_every_steps)
    step = epoch * run.steps_per_epoch + start
    clock.started, clock.segment_from = time.perf_counter(), start
    batches = run.on_devices(feed.take(run.steps_per_epoch - start))
    for batch, record["data_state"] in _waited(batches, record, clock):
        if clock.first_step_seconds is None:
            t0 = time.perf_counter()
            with CacheEvents() as events:
                state, metrics = run.compiled.train_step(state, tuple(batch))
            jax.block_until_ready(state.params)
            clock.first_step_seconds, clock.first_step_cache = time.perf_counter() - t0, events.outcome
            clock.started += clock.first_step_seconds  # the first step compiles: not counted as training
        else:
            state, metrics = run.compiled.train_step(state, tuple(batch))
        step += 1
        sums = sums.merge(metrics)
        done = step - epoch * run.steps_per_epoch

        def line(sums: Metrics = sums, done: int = done) -> str:
            now, seconds = sums.compute(), time.perf_counter() - clock.started
            rate = (run.real_examples(done) - run.real_examples(clock.segment_from)) / max(seconds, 1e-9)
            return (f"epoch {epoch + 1}/{run.config.epochs} step {done}/{run.steps_per_epoch} "
                    f"loss {now['loss']:.4f} accuracy {now['accuracy']:.4f} {rate:,.0f} images/s")

        if out.step(step, time.monotonic(), line):
            _stop_if_nonfinite(run, sums, checkpoints, step)  # the redraw synchronized already
        if on_step is not None:
            on_step(step)
        if checkpoint_due.due(step, 0.0) and done < run.steps_per_epoch:  # the epoch's end saves anyway
            _stop_if_nonfinite(run, sums, checkpoints, step)
            clock.close_segment(record, run, done)
            checkpoints.save(step, state, _record_with(record, step, sums))
    clock.close_segment(record, run, run.steps_per_epoch)
    _stop_if_nonfinite(run, sums, checkpoints, step)
    return state, sums


def _waited(items: Iterator[Any], record: dict[str, Any], clock: _Clock) -> Iterator[Any]:
    """``items``, adding the time spent waiting for each (after the first step) to
    ``record["input_seconds"]``."""
    iterator = iter(items)
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        if clock.first_step_seconds is not None:
            record["input_seconds"] = record.get("input_seconds", 0.0) + time.perf_counter() - start
        yield item


def _improved(monitor: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if monitor == "val_loss" else value > best


def _end_epoch(run: _Run, state: TrainState, record: dict[str, Any], sums: Metrics, epoch: int,
               checkpoints: Checkpoints, best: Checkpoints, out: Progress, plot: Every) -> dict[str, Any]:
    """Validation, the epoch's line, early stopping, the checkpoints and the files (``curves.png``
    when ``plot`` is due); returns the updated record."""
    step = (epoch + 1) * run.steps_per_epoch
    train_metrics, val_metrics = sums.compute(), run.evaluate(state, run.val)
    entry = {
        "epoch": epoch + 1, "step": step,
        "train_loss": train_metrics["loss"], "train_accuracy": train_metrics["accuracy"],
        "val_loss": val_metrics["loss"], "val_accuracy": val_metrics["accuracy"],
        "train_seconds": record["train_seconds"],
        "input_seconds": record.get("input_seconds", 0.0),
        "images_per_second": record["examples"] / max(record["train_seconds"], 1e-9),
    }
    record = {**record, "history": [*record["history"], entry],
              "skipped_steps": record["skipped_steps"] + int(float(sums.nonfinite))}
    out.epoch(f"epoch {epoch + 1}/{run.config.epochs} loss {entry['train_loss']:.4f} accuracy "
              f"{entry['train_accuracy']:.4f} val_loss {entry['val_loss']:.4f} val_accuracy "
              f"{entry['val_accuracy']:.4f} {entry['images_per_second']:,.0f} images/s")
    improved = False
    if len(run.val):
        value = entry[run.config.monitor]
        improved = _improved(run.config.monitor, value, record["best"])
        if improved:
            record.update(best=value, best_step=step, bad_epochs=0)
        else:
            record["bad_epochs"] += 1
            patience = run.config.early_stopping_patience
            if patience and record["bad_epochs"] >= patience:
                record["stopped_early"] = True
                out.say(f"early stopping: {run.config.monitor} has not improved for "
                        f"{plural(record['bad_epochs'], 'epoch')}")
    # checkpoints/ first: a kill before best/ is written is repaired on resume (_start_or_resume).
    checkpoints.save(step, state, _record_with(record, step, None))
    if improved:
        best.save(step, state, _record_with(record, step, None))
    _write_files(run, record, plot=plot.due(step, time.monotonic()))
    return record


def _write_files(run: _Run, record: dict[str, Any], *, plot: bool = True) -> None:
    """``metrics.jsonl``, and ``curves.png`` if ``plot``, from the record's history (process 0 only)."""
    if run.lead and record["history"]:
        write_atomic(run.workdir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in record["history"]))
        if plot:
            _plot(record["history"], run.workdir / "curves.png", f"{run.model.name} on {run.train.name}")


def _finish(run: _Run, state: TrainState, record: dict[str, Any], clock: _Clock, out: Progress) -> dict[str, Any]:
    _write_files(run, record)  # the curves of the whole run
    test_metrics = run.evaluate(state, run.test)
    results = {
        "test_accuracy": test_metrics["accuracy"],
        "test_loss": test_metrics["loss"],
        "epochs": len(record["history"]),
        "steps": int(state.step),
        "train_seconds": record["train_seconds"],
        "input_seconds": record.get("input_seconds", 0.0),
        "images_per_second": record["examples"] / max(record["train_seconds"], 1e-9),
        "params_sha256": params_sha256(parallel.fetch(state.params)),
        "best_" + run.config.monitor: record["best"],
        "stopped_early": bool(record["stopped_early"]),
        "skipped_steps": record["skipped_steps"],
        "first_step_seconds": clock.first_step_seconds,
        "first_step_cache": clock.first_step_cache,
        "seed": run.config.seed,
        "model": run.model.name,
        "params": run.model.count_params(),
        "data": {"name": run.train.name, "train": len(run.train), "validation": len(run.val), "test": len(run.test),
                 **({"skipped_images": len(run.train.skipped)} if run.train.name.startswith("folder") else {})},
        "device": str(jax.devices()[0].platform),
        "devices": run.layout.size,
        "processes": jax.process_count(),
        "mesh": run.mesh.strategy,
        "global_batch_size": run.global_batch,
    }
    if run.lead:
        write_atomic(run.workdir / "results.json", json.dumps(results, indent=1) + "\n")
    out.say(f"test accuracy {results['test_accuracy']:.4f}, test loss {results['test_loss']:.4f}; "
            f"{plural(results['steps'], 'step')} in {results['train_seconds']:.1f} s; results in "
            f"{run.workdir / 'results.json'}")
    return results


def train_and_evaluate(
    config_path: str | os.PathLike[str],
    workdir: str | os.PathLike[str],
    *,
    epochs: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    stream: TextIO | None = None,
    on_step: Callable[[int], None] | None = None,
    mesh: str | None = None,
    devices: int | None = None,
    init_from: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train the model of a config, with checkpoints, resumption, validation, early stopping, a test
    evaluation, metrics, a plot and ``results.json`` in ``workdir``. Returns the results.

    ``epochs`` and ``seed`` override the config's ``[train]`` values (as ``jaxcnn train --epochs``)
    and are validated as they are. ``on_step(step)`` is called after every training step (for tests
    and tools). ``mesh`` and ``devices`` override ``[mesh] strategy`` and ``devices`` (as
    ``jaxcnn train --mesh --devices``). ``init_from`` (``--init-from``), a trained Keras model file:
    a fresh run starts every layer named as one of the file's from the file's weights (a fine-tuning;
    ``trainable = false`` layers stay frozen), the others from their initializers; the file is one
    of the run's settings, so a resume with another is refused.

    Raises:
      ConfigError: a bad config or override (file and key named); nothing is written then.
      CheckpointError: the workdir's newest checkpoint is corrupt, from another model or from a run
        with other settings (it is left untouched; the run does not start over).
      NonFiniteError: a non-finite loss or gradient with ``on_nonfinite = "stop"``.
    """
    out = Progress(stream or sys.stderr, progress and jax.process_index() == 0)
    run = _set_up(config_path, workdir, epochs=epochs, seed=seed, mesh=mesh, devices=devices, init_from=init_from,
                  say=out.say)
    checkpoints, best = _open_checkpoints(run)
    feed = run.train_feed()
    try:
        state, record = _start_or_resume(run, checkpoints, best, feed, out)
        if run.lead and run.source.endswith(".toml"):  # the config this workdir was trained with
            write_atomic(run.workdir / "config.toml", pathlib.Path(run.source).read_text())
        clock = _Clock()
        plot = Every(seconds=CURVES_SECONDS, now=time.monotonic())
        step = int(state.step)
        while step < run.total_steps and not record["stopped_early"]:
            epoch, start = divmod(step, run.steps_per_epoch)
            state, sums = _train_epoch(run, state, record, epoch, start, feed, checkpoints, out, clock, on_step)
            record = _end_epoch(run, state, record, sums, epoch, checkpoints, best, out, plot)
            step = int(state.step)
        feed.close()  # its workers' memory is free for the test evaluation
        return _finish(run, state, record, clock, out)
    finally:
        feed.close()
        checkpoints.close()
        _remove_pixels(run.workdir)
        best.close()


def _plot(history: list[dict[str, Any]], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in ((left, "loss"), (right, "accuracy")):
        ax.plot(epochs, [h[f"train_{metric}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"val_{metric}"] for h in history], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as temp:
        fig.savefig(temp, dpi=90, format="png")
    plt.close(fig)


def _describe_layout(run: _Run) -> str:
    layout = run.layout
    devices = layout.mesh.devices.flat
    where = plural(layout.size, f"{next(iter(devices)).platform} device")
    if jax.process_count() > 1:
        where += f" over {jax.process_count()} processes"
    padding = f", padded to {run.global_batch}" if run.global_batch != run.config.batch_size else ""
    return f"{layout.strategy} parallel on {where}, global batch {run.config.batch_size}{padding}"


# ---- non-finite steps ----------------------------------------------------------------------


def _stop_if_nonfinite(run: _Run, sums: Metrics, checkpoints: Checkpoints, step: int) -> None:
    """With ``on_nonfinite = "stop"``, raise if a step of this epoch so far was not finite (read
    where the loop synchronizes anyway)."""
    if run.config.on_nonfinite == "stop" and float(sums.nonfinite):
        raise _diagnose_nonfinite(run, checkpoints, step)


def _diagnose_nonfinite(run: _Run, checkpoints: Checkpoints, upto: int) -> NonFiniteError:
    """Replay the run from its newest checkpoint (every checkpoint precedes the failure: the loop
    checks before saving) up to step ``upto``, one step at a time, and diagnose the first
    non-finite step exactly as it ran: the same state, batch, dropout key and layout."""
    restored = checkpoints.restore(run.layout.with_shardings(run.compiled.abstract_state()))
    state, record = (run.compiled.init(run.config.seed), {}) if restored is None else restored
    step = int(state.step)
    with run.train_feed() as feed:
        if step:
            feed.restore(record.get("data_state"), step)
        for batch, _ in run.on_devices(feed.take(upto - step)):
            state, metrics = run.compiled.train_step(state, tuple(batch))
            step += 1
            if float(metrics.nonfinite):  # not applied: the state is the one before it, step + 1
                before = state.replace(step=state.step - 1)
                return _nonfinite_error(run.compiled.layer_statistics(before, tuple(batch)), step, checkpoints)
    raise NonFiniteError(  # pragma: no cover - a replay is deterministic
        f"a step up to {upto} was not finite, but replaying from step {int(state.step)} did not reproduce it")


def _nonfinite_error(rows: list[dict[str, Any]], step: int, checkpoints: Checkpoints) -> NonFiniteError:
    """Name the step and the first layer whose activations or gradients were not finite."""
    bad = next((r for r in rows if not (r["activations_finite"] and r["grads_finite"])), None)
    where = ("no single layer is to blame (the loss itself overflowed)" if bad is None else
             f"first non-finite layer {bad['index']} '{bad['name']}' ({bad['type']}): max |activation| "
             f"{bad['max_abs_activation']:.3g}, activations finite: {bad['activations_finite']}, gradients "
             f"finite: {bad['grads_finite']}, gradient norm {bad['grad_norm']:.3g}")
    latest = checkpoints.latest_step()
    kept = (f"the last good checkpoint (step {latest}) is kept in {checkpoints.directory}"
            if latest is not None else "no checkpoint had been written yet")
    return NonFiniteError(
        f"step {step}: the loss or its gradients are not finite, so the step was not applied; {where}; "
        f"{kept}. Lower the learning rate, add clip_norm, or set on_nonfinite = \"skip\"")
