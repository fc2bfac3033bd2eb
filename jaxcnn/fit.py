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
* ``curves.png``: loss and accuracy curves;
* ``results.json``: ``test_accuracy``, ``test_loss``, ``epochs``, ``steps``, ``train_seconds``,
  ``images_per_second``, ``params_sha256`` (and more). ``train_seconds`` is the time spent in
  training epochs (steps, data, checkpoints), without validation and without the first step's
  compilation, which is ``first_step_seconds``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import jax

from jaxcnn import data as data_lib
from jaxcnn import parallel
from jaxcnn.checkpoint import Checkpoints, model_fingerprint
from jaxcnn.config import from_dict, read_document
from jaxcnn.errors import ConfigError, JaxcnnError, NonFiniteError
from jaxcnn.files import atomic_path, write_atomic
from jaxcnn.train import CompiledModel, Metrics, TrainState, class_labels, compile, params_sha256

__all__ = ["TrainConfig", "train_and_evaluate"]


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
    def from_table(cls, table: Mapping[str, Any], *, source: str = "<config>") -> TrainConfig:
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
        if config.monitor not in ("val_loss", "val_accuracy"):
            raise ConfigError(f"(={config.monitor!r}) must be 'val_loss' or 'val_accuracy'",
                              source=source, key="train.monitor")
        return config


class _Progress:
    """One line of progress on ``stream``: redrawn in place on a terminal, printed at each epoch's
    end otherwise (logs stay readable)."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self.tty = enabled and stream.isatty()
        self.last = 0.0

    def update(self, text: str | Callable[[], str], *, final: bool = False) -> None:
        """Show ``text`` (or what the callable returns: it is called only when the line is drawn,
        so a training step does not read its metrics back from the device for nothing)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty and (final or now - self.last > 0.2):
            self.stream.write("\r\033[K" + (text() if callable(text) else text) + ("\n" if final else ""))
            self.stream.flush()
            self.last = now
        elif not self.tty and final:
            self.stream.write((text() if callable(text) else text) + "\n")
            self.stream.flush()

    def say(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()


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


def _improved(monitor: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if monitor == "val_loss" else value > best


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
) -> dict[str, Any]:
    """Train the model of a config, with checkpoints, resumption, validation, early stopping, a test
    evaluation, metrics, a plot and ``results.json`` in ``workdir``. Returns the results.

    ``epochs`` and ``seed`` override the config's ``[train]`` values (as ``jaxcnn train --epochs``).
    ``on_step(step)`` is called after every training step (for tests and tools). ``mesh`` and
    ``devices`` override ``[mesh] strategy`` and ``devices`` (as ``jaxcnn train --mesh --devices``).

    Raises:
      ConfigError: a bad config (file and key named).
      CheckpointError: the workdir's newest checkpoint is corrupt or from another model (it is left
        untouched; the run does not start over).
      NonFiniteError: a non-finite loss or gradient with ``on_nonfinite = "stop"``.
    """
    stream = stream or sys.stderr
    lead = jax.process_index() == 0  # the process that writes files and prints
    out = _Progress(stream, progress and lead)
    source = os.fsdecode(config_path)
    doc = read_document(config_path)
    model = from_dict(doc, source=source)
    model.check()  # the shapes are proved before any training step is traced
    config = TrainConfig.from_table(doc.get("train", {}), source=source)
    config = dataclasses.replace(config, **{k: v for k, v in (("epochs", epochs), ("seed", seed)) if v is not None})
    mesh_config = parallel.MeshConfig.from_table(
        {**doc.get("mesh", {}), **{k: v for k, v in (("strategy", mesh), ("devices", devices)) if v is not None}},
        source=source)
    try:
        layout = parallel.Layout.create(mesh_config)
    except JaxcnnError as error:
        raise error.located(source=source) from None
    global_batch = layout.padded_batch_size(config.batch_size, mesh_config.uneven_batch, source=source)
    train, val, test, preprocessing = data_lib.prepare_from_config(
        doc.get("data", {}), input_shape=model.input_shape, seed=config.seed, source=source)
    if len(train) == 0:
        raise ConfigError("the training split is empty", source=source, key="data")
    to_labels = class_labels(config.loss, model, train.num_classes, source=source)  # e.g. one-hot
    steps_per_epoch = data_lib.num_batches(len(train), config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    try:
        compiled = compile(model, dict(config.optimizer), config.loss, config.metrics,
                           precision=config.precision, on_nonfinite=config.on_nonfinite,
                           total_steps=total_steps, layout=layout)
    except JaxcnnError as error:
        raise error.located(source=source) from None

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    fingerprint = model_fingerprint(model)
    checkpoints = Checkpoints(workdir / "checkpoints", fingerprint=fingerprint, keep=config.keep_checkpoints)
    best_checkpoints = Checkpoints(workdir / "best", fingerprint=fingerprint, keep=1)

    restored = checkpoints.restore(layout.with_shardings(compiled.abstract_state()))
    if restored is None:
        state = compiled.init(config.seed)
        record: dict[str, Any] = {"history": [], "best": None, "bad_epochs": 0, "train_seconds": 0.0,
                                  "examples": 0, "epoch_sums": None, "skipped_steps": 0,
                                  "preprocessing": preprocessing.to_dict(), "num_classes": train.num_classes}
        out.say(f"training {model.name!r} ({model.count_params():,} params) on {train.name}: "
                f"{len(train)} train / {len(val)} validation / {len(test)} test examples, "
                f"{config.epochs} epochs of {steps_per_epoch} steps, workdir {workdir}; "
                f"{_describe_layout(layout, config.batch_size, global_batch)}")
    else:
        state, record = restored
        out.say(f"resuming from the checkpoint of step {int(state.step)} in {checkpoints.directory}")
    if lead and source.endswith(".toml"):  # the config this workdir was trained with, for the record
        write_atomic(workdir / "config.toml", pathlib.Path(source).read_text())

    def save_record(step: int, epoch_sums: Metrics | None) -> dict[str, Any]:
        sums = None if epoch_sums is None else {k: float(getattr(epoch_sums, k))
                                               for k in ("count", "loss", "correct", "top_k_correct", "nonfinite")}
        return {**record, "epoch_sums": sums, "step": step}

    def on_devices(batches: Any) -> Any:
        """Host batches padded to the global batch (masked) and laid out over the mesh."""
        padded = (parallel.pad_batch(batch._replace(labels=to_labels(batch.labels)), global_batch)
                  for batch in batches)
        return data_lib.prefetch_to_device(padded, put=layout.put_batch)

    def batches_of(dataset: data_lib.Dataset) -> Any:
        return on_devices(data_lib.batches(dataset, config.batch_size, shuffle=False))

    step = int(state.step)
    compile_seconds = None
    stopped_early = False
    while step < total_steps and not stopped_early:
        epoch, start = divmod(step, steps_per_epoch)
        sums = Metrics.empty(compiled.top_k)
        if record.get("epoch_sums") and start:
            sums = sums.replace(**{k: jax.numpy.asarray(v, jax.numpy.float32)
                                   for k, v in record["epoch_sums"].items()})
        epoch_start = time.perf_counter()
        # Real (unpadded) examples are known on the host: the first d steps of an epoch hold
        # min(d * batch_size, len(train)) of them. No read-back from the device per step.
        real = lambda d: min(d * config.batch_size, len(train))  # noqa: E731
        segment_from = start  # the step in the epoch where the current timing segment began
        for batch in on_devices(data_lib.batches(
                train, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch, start=start)):
            t0 = time.perf_counter()
            if compile_seconds is None:
                state, metrics = compiled.train_step(state, tuple(batch))
                jax.block_until_ready(state.params)
                compile_seconds = time.perf_counter() - t0
                epoch_start += compile_seconds  # the first step compiles: not counted as training
            else:
                state, metrics = compiled.train_step(state, tuple(batch))
            step += 1
            if float(metrics.nonfinite):
                record["skipped_steps"] = record.get("skipped_steps", 0) + 1
                if config.on_nonfinite == "stop":
                    _raise_nonfinite(compiled, state, batch, step, checkpoints)
            sums = sums.merge(metrics)
            done = step - epoch * steps_per_epoch

            def progress(sums: Metrics = sums, done: int = done) -> str:
                now, seconds = sums.compute(), time.perf_counter() - epoch_start
                return (f"epoch {epoch + 1}/{config.epochs} step {done}/{steps_per_epoch} "
                        f"loss {now['loss']:.4f} accuracy {now['accuracy']:.4f} "
                        f"{(real(done) - real(segment_from)) / max(seconds, 1e-9):,.0f} images/s")

            out.update(progress)
            if on_step is not None:
                on_step(step)
            if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 \
                    and step % steps_per_epoch:
                record["train_seconds"] += time.perf_counter() - epoch_start
                record["examples"] += real(done) - real(segment_from)
                epoch_start, segment_from = time.perf_counter(), done
                checkpoints.save(step, state, save_record(step, sums))
        record["train_seconds"] += time.perf_counter() - epoch_start
        record["examples"] += real(step - epoch * steps_per_epoch) - real(segment_from)
        train_metrics = sums.compute()
        val_metrics = compiled.evaluate(state, batches_of(val)) if len(val) else {"loss": math.nan, "accuracy": math.nan}
        entry = {
            "epoch": epoch + 1, "step": step,
            "train_loss": train_metrics["loss"], "train_accuracy": train_metrics["accuracy"],
            "val_loss": val_metrics["loss"], "val_accuracy": val_metrics["accuracy"],
            "train_seconds": record["train_seconds"],
            "images_per_second": record["examples"] / max(record["train_seconds"], 1e-9),
        }
        record["history"] = [*record["history"], entry]
        out.update(f"epoch {epoch + 1}/{config.epochs} loss {entry['train_loss']:.4f} accuracy "
                   f"{entry['train_accuracy']:.4f} val_loss {entry['val_loss']:.4f} val_accuracy "
                   f"{entry['val_accuracy']:.4f} {entry['images_per_second']:,.0f} images/s", final=True)
        value = entry[config.monitor]
        if len(val) and _improved(config.monitor, value, record["best"]):
            record["best"], record["bad_epochs"] = value, 0
            best_checkpoints.save(step, state, save_record(step, None))
        else:
            record["bad_epochs"] += 1
            if config.early_stopping_patience and record["bad_epochs"] >= config.early_stopping_patience:
                stopped_early = True
                out.say(f"early stopping: {config.monitor} has not improved for {record['bad_epochs']} epochs")
        record["stopped_early"] = stopped_early
        checkpoints.save(step, state, save_record(step, None))
        if lead:
            write_atomic(workdir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in record["history"]))
            _plot(record["history"], workdir / "curves.png", f"{model.name} on {train.name}")

    test_metrics = compiled.evaluate(state, batches_of(test)) if len(test) else {"loss": math.nan, "accuracy": math.nan}
    history = record["history"]
    results = {
        "test_accuracy": test_metrics["accuracy"],
        "test_loss": test_metrics["loss"],
        "epochs": len(history),
        "steps": step,
        "train_seconds": record["train_seconds"],
        "images_per_second": record["examples"] / max(record["train_seconds"], 1e-9),
        "params_sha256": params_sha256(parallel.fetch(state.params)),
        "best_" + config.monitor: record["best"],
        "stopped_early": bool(record.get("stopped_early", False)),
        "skipped_steps": record.get("skipped_steps", 0),
        "first_step_seconds": compile_seconds,
        "seed": config.seed,
        "model": model.name,
        "params": model.count_params(),
        "data": {"name": train.name, "train": len(train), "validation": len(val), "test": len(test)},
        "device": str(jax.devices()[0].platform),
        "devices": layout.size,
        "processes": jax.process_count(),
        "mesh": mesh_config.strategy,
        "global_batch_size": global_batch,
    }
    if lead:
        write_atomic(workdir / "results.json", json.dumps(results, indent=1) + "\n")
    out.say(f"test accuracy {results['test_accuracy']:.4f}, test loss {results['test_loss']:.4f}; "
            f"{results['steps']} steps in {results['train_seconds']:.1f} s; results in {workdir / 'results.json'}")
    checkpoints.close()
    best_checkpoints.close()
    return results


def _describe_layout(layout: parallel.Layout, batch_size: int, global_batch: int) -> str:
    devices = layout.mesh.devices.flat
    where = f"{layout.size} {next(iter(devices)).platform} device{'s' * (layout.size > 1)}"
    if jax.process_count() > 1:
        where += f" over {jax.process_count()} processes"
    padding = f", padded to {global_batch}" if global_batch != batch_size else ""
    return f"{layout.strategy} parallel on {where}, global batch {batch_size}{padding}"


def _raise_nonfinite(compiled: CompiledModel, state: TrainState, batch: Any, step: int,
                     checkpoints: Checkpoints) -> None:
    """Stop: name the step and the first layer whose activations or gradients were not finite."""
    rows = compiled.layer_statistics(state, tuple(batch))
    bad = next((r for r in rows if not (r["activations_finite"] and r["grads_finite"])), None)
    where = ("no single layer is to blame (the loss itself overflowed)" if bad is None else
             f"first non-finite layer {bad['index']} '{bad['name']}' ({bad['type']}): max |activation| "
             f"{bad['max_abs_activation']:.3g}, activations finite: {bad['activations_finite']}, gradients "
             f"finite: {bad['grads_finite']}, gradient norm {bad['grad_norm']:.3g}")
    latest = checkpoints.latest_step()
    kept = (f"the last good checkpoint (step {latest}) is kept in {checkpoints.directory}"
            if latest is not None else "no checkpoint had been written yet")
    raise NonFiniteError(
        f"step {step}: the loss or its gradients are not finite, so the step was not applied; {where}; "
        f"{kept}. Lower the learning rate, add clip_norm, or set on_nonfinite = \"skip\"")
