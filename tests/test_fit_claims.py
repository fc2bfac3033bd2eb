"""What the README claims of a training run that no other test checks: the main job's own config runs
for any epoch count, best/ holds the best checkpoint by the monitored metric, the steps compile once
over a whole run, a process other than the first writes no files, and a checkpoint of another model
is left untouched."""

from __future__ import annotations

import collections
import json
import logging
import os
import pathlib
import re
import sys
import types

import jax
import pytest

from jaxcnn import data as data_lib
from jaxcnn.checkpoint import Checkpoints, model_fingerprint
from jaxcnn.config import from_dict, read_document
from jaxcnn.errors import CheckpointError
from jaxcnn.fit import train_and_evaluate
from jaxcnn.train import compile

from conftest import ROOT

MODEL = """
[model]
name = "tiny"
input_shape = [8, 8, 1]

[[layers]]
type = "Conv2D"
filters = {filters}
kernel_size = 3
padding = "same"
activation = "relu"

[[layers]]
type = "BatchNormalization"

[[layers]]
type = "MaxPooling2D"

[[layers]]
type = "Flatten"

[[layers]]
type = "Dense"
units = 10
activation = "softmax"

[data]
name = "digits"
validation = 0.1
test = 0.2
limit = 150

[train]
epochs = {epochs}
batch_size = 32
seed = 3
checkpoint_every_steps = 2
keep_checkpoints = 2
monitor = "val_loss"

[train.optimizer]
name = "sgd"
learning_rate = {lr}
momentum = 0.9
"""


def write_config(tmp_path: pathlib.Path, name: str = "run.toml", *, filters: int = 4, epochs: int = 2,
                 lr: float = 0.05) -> pathlib.Path:
    path = tmp_path / name
    path.write_text(MODEL.format(filters=filters, epochs=epochs, lr=lr))
    return path


def history(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def snapshot(directory: pathlib.Path) -> dict[str, tuple[bytes, int] | None]:
    """Every file's bytes and mtime (nanoseconds) under ``directory``, and every folder (None)."""
    return {str(p.relative_to(directory)): None if p.is_dir() else (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*"))}


@pytest.mark.slow
@pytest.mark.parametrize("epochs", [1, 2])
def test_the_main_jobs_config_trains_for_any_epoch_count(tmp_path, epochs):
    """`jaxcnn train configs/digits_cnn.toml --epochs 1` used to fail: 40 warmup steps in a run of 20."""
    results = train_and_evaluate(ROOT / "configs" / "digits_cnn.toml", tmp_path, epochs=epochs, progress=False)
    assert results["epochs"] == epochs and results["steps"] == 20 * epochs  # 1,258 examples, batches of 64
    assert [line["epoch"] for line in history(tmp_path)] == list(range(1, epochs + 1))


def test_best_holds_the_checkpoint_with_the_lowest_val_loss(tmp_path):
    # at a learning rate of 0.15, val_loss goes down, up, down and up again (measured: 2.15, 1.15,
    # 1.30, 0.88, 1.74, 1.59): the best epoch is neither the first nor the last
    config = write_config(tmp_path, epochs=6, lr=0.15)
    workdir = tmp_path / "work"
    results = train_and_evaluate(config, workdir, progress=False)
    lines = history(workdir)
    best = min(lines, key=lambda line: line["val_loss"])
    assert best["step"] not in (lines[0]["step"], lines[-1]["step"]), [line["val_loss"] for line in lines]
    assert sorted(int(p.name) for p in (workdir / "best").iterdir() if p.name.isdigit()) == [best["step"]]
    assert results["best_val_loss"] == best["val_loss"]
    # the parameters in best/ are those of that epoch: evaluated again, they give its val_loss
    doc = read_document(config)
    model = from_dict(doc, source=str(config))
    compiled = compile(model, "sgd")
    abstract = compiled.abstract_state()
    variables, record = Checkpoints(workdir / "best", fingerprint=model_fingerprint(model)).restore_variables(
        {"params": abstract.params, "batch_stats": abstract.batch_stats})
    assert record["step"] == best["step"]
    _, val, _ = data_lib.dataset_from_config(doc["data"], input_shape=model.input_shape, seed=3)
    batches = [tuple(b) for b in data_lib.batches(val, 32, shuffle=False)]
    assert compiled.evaluate(compiled.init(0).replace(**variables), batches)["loss"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_each_step_compiles_once_over_a_whole_run(tmp_path, caplog):
    """README: the last, partial batch of each epoch is padded and masked, so nothing recompiles: over
    3 epochs with checkpoints, validation and test evaluation, each step function compiles once."""
    caplog.set_level(logging.WARNING)
    with jax.log_compiles():
        train_and_evaluate(write_config(tmp_path, epochs=3), tmp_path / "work", progress=False)
    names = collections.Counter(
        match.group(1) for record in caplog.records
        if (match := re.match(r"Compiling jit\((_train_steps?|_eval_step|_predict)\)", record.getMessage())))
    assert names and set(names.values()) == {1}, names
    assert names["_eval_step"] == 1  # validation (180 = 5 x 32 + 20, padded) and test (359 = 11 x 32 + 7) alike


class _SecondProcess(types.ModuleType):
    """The jax module as a process other than the first sees it: ``process_index()`` is 1."""

    def __getattr__(self, name: str):
        return getattr(jax, name)

    @staticmethod
    def process_index(*args, **kwargs) -> int:
        return 1


def test_a_process_other_than_the_first_writes_no_files_and_prints_nothing(tmp_path, monkeypatch, capsys):
    """jaxcnn's own modules see process 1 (orbax, which writes each process's shards of a checkpoint
    together, still sees process 0): only the checkpoints appear, and nothing is printed."""
    second = _SecondProcess("jax")
    for name, module in list(sys.modules.items()):
        if name.startswith("jaxcnn") and getattr(module, "jax", None) is jax:
            monkeypatch.setattr(module, "jax", second)
    workdir = tmp_path / "work"
    results = train_and_evaluate(write_config(tmp_path), workdir, stream=sys.stdout)
    assert results["steps"] == 10
    assert sorted(os.listdir(workdir)) == ["best", "checkpoints"]
    assert capsys.readouterr().out == ""


def test_a_checkpoint_of_another_model_is_left_untouched(tmp_path):
    workdir = tmp_path / "work"
    train_and_evaluate(write_config(tmp_path), workdir, progress=False)
    before = snapshot(workdir)
    with pytest.raises(CheckpointError, match="was written for a different model"):
        train_and_evaluate(write_config(tmp_path, "other.toml", filters=6), workdir, progress=False)
    assert snapshot(workdir) == before
