"""The fit loop: files in the workdir, exact resumption (also after SIGKILL), resumes refused when
the run changed, refused checkpoints, the non-finite guard, early stopping, `jaxcnn train`, and what
the README claims of a run (the main job's config runs for any epoch count, best/ holds the best
checkpoint, the steps compile once, a process other than the first writes no files)."""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable

import jax
import numpy as np
import pytest

from jaxcnn import data as data_lib
from jaxcnn.checkpoint import Checkpoints, model_fingerprint
from jaxcnn.cli import main
from jaxcnn.config import from_dict, read_document
from jaxcnn.errors import CheckpointError, ConfigError, NonFiniteError
from jaxcnn.fit import train_and_evaluate
from jaxcnn.train import compile

from conftest import ROOT

MODEL = """
[model]
name = "tiny"
input_shape = [8, 8, 1]
{augmentation}
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
type = "Dropout"
rate = {dropout}

[[layers]]
type = "Dense"
units = 10
activation = "softmax"

[data]
name = "digits"
validation = 0.1
test = 0.2
limit = {limit}

[train]
epochs = {epochs}
batch_size = 32
seed = 3
checkpoint_every_steps = 2
keep_checkpoints = 2
early_stopping_patience = {patience}
on_nonfinite = "{on_nonfinite}"

[train.optimizer]
name = "sgd"
learning_rate = {lr}
momentum = 0.9
"""


# augmentation layers in the training step, keyed by fold_in(key, step): a resumed run must augment as
# the uninterrupted one did (the crash and SIGKILL tests below)
AUGMENTATION = """
[[layers]]
type = "RandomTranslation"
height_factor = 0.1
width_factor = 0.1

[[layers]]
type = "RandomRotation"
factor = 0.05
"""


def write_config(tmp_path, name="run.toml", *, filters=4, limit=150, epochs=2, patience=0, lr=0.05,
                 on_nonfinite="stop", dropout=0.2, augment=False) -> pathlib.Path:
    path = tmp_path / name
    path.write_text(MODEL.format(filters=filters, limit=limit, epochs=epochs, patience=patience, lr=lr,
                                 on_nonfinite=on_nonfinite, dropout=dropout,
                                 augmentation=AUGMENTATION if augment else ""))
    return path


def test_a_run_writes_checkpoints_metrics_plot_and_results(tmp_path):
    config = write_config(tmp_path)
    workdir = tmp_path / "work"
    results = train_and_evaluate(config, workdir, progress=False)
    for key in ("test_accuracy", "test_loss", "epochs", "steps", "train_seconds", "images_per_second",
                "params_sha256"):
        assert key in results
    assert json.loads((workdir / "results.json").read_text()) == results
    assert results["epochs"] == 2 and results["steps"] == 2 * 5  # 150 examples in batches of 32
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "images_per_second"} <= set(lines[0])
    assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [8, 10]
    assert len([p for p in (workdir / "best").iterdir() if p.name.isdigit()]) == 1
    assert results["data"] == {"name": "digits/train", "train": 150, "validation": 180, "test": 359}
    # The reported test figures are those of the final checkpoint's parameters on the test split.
    from jaxcnn.config import load

    model = load(config)
    compiled = compile(model, {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9})
    state, _ = Checkpoints(workdir / "checkpoints", fingerprint=model_fingerprint(model)).restore(
        compiled.abstract_state())
    test = data_lib.dataset_from_config({"name": "digits", "validation": 0.1, "test": 0.2, "limit": 150},
                                        input_shape=(8, 8, 1), seed=3)[2]
    again = compiled.evaluate(state, data_lib.batches(test, 32, shuffle=False))
    assert (results["test_accuracy"], results["test_loss"]) == pytest.approx((again["accuracy"], again["loss"]), rel=1e-6)
    assert round(results["test_accuracy"] * 359) == pytest.approx(results["test_accuracy"] * 359)
    assert results["test_accuracy"] > 0.3  # 10 classes: far above chance after 10 steps


class Crash(Exception):
    pass


def test_a_crashed_run_resumes_exactly(tmp_path, capsys):
    config = write_config(tmp_path, epochs=3, augment=True)
    reference = train_and_evaluate(config, tmp_path / "whole", progress=False)

    def crash_at_7(step):
        if step == 7:  # mid-epoch, after the checkpoint of step 6
            raise Crash

    with pytest.raises(Crash):
        train_and_evaluate(config, tmp_path / "broken", progress=False, on_step=crash_at_7)
    resumed = train_and_evaluate(config, tmp_path / "broken", stream=sys.stdout)
    assert "resuming from the checkpoint of step 6" in capsys.readouterr().out
    assert resumed["params_sha256"] == reference["params_sha256"]
    assert resumed["steps"] == reference["steps"]
    assert resumed["test_accuracy"] == reference["test_accuracy"]
    whole = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    broken = (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()
    for a, b in zip(whole, broken):  # the epoch metrics survive the crash too (timings aside)
        a, b = json.loads(a), json.loads(b)
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key


@pytest.mark.slow
def kill_mid_run_and_resume(config: pathlib.Path, tmp_path: pathlib.Path, *, at_step: int,
                            watch: Callable[[subprocess.Popen], None] | None = None) -> tuple[dict, dict]:
    """``jaxcnn train`` of ``config`` run whole, and run again, killed with SIGKILL once it has a
    checkpoint of ``at_step`` or later (``watch(process)`` called as it runs), then resumed: the
    results of the whole and of the resumed run."""
    command = [sys.executable, "-m", "jaxcnn.cli", "train", str(config), "--workdir"]
    whole = subprocess.run([*command, str(tmp_path / "whole"), "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr

    workdir = tmp_path / "killed"
    proc = subprocess.Popen([*command, str(workdir), "--quiet"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if watch is not None:
            watch(proc)
        steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()] \
            if (workdir / "checkpoints").exists() else []
        if steps and max(steps) >= at_step:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / "results.json").exists()  # it really died mid-run

    resumed = subprocess.run([*command, str(workdir)], cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from the checkpoint of step" in resumed.stderr
    return (json.loads((tmp_path / "whole" / "results.json").read_text()),
            json.loads((workdir / "results.json").read_text()))


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_parameters(tmp_path):
    a, b = kill_mid_run_and_resume(write_config(tmp_path, epochs=8, limit=300, augment=True), tmp_path, at_step=12)
    assert a["params_sha256"] == b["params_sha256"]
    assert a["steps"] == b["steps"] == 8 * 10  # 300 examples in batches of 32


def _tree(path: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_corrupt_checkpoint_is_refused_in_one_line_and_left_alone_and_the_hint_works(tmp_path):
    config = write_config(tmp_path)
    workdir = tmp_path / "work"
    reference = train_and_evaluate(config, workdir, progress=False)
    newest = workdir / "checkpoints" / "10"
    for file in (newest / "state").rglob("*"):
        if file.is_file() and file.stat().st_size > 100:
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 3])  # truncated
    before = _tree(workdir / "checkpoints")
    with pytest.raises(CheckpointError) as info:
        train_and_evaluate(config, workdir, progress=False)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message  # not orbax's TensorStore spec
    assert message.startswith(f"{newest}: its training state cannot be restored (")
    assert message.endswith("it is corrupt or truncated; remove that folder to resume from the checkpoint "
                            "before it (step 8), or use another workdir")
    assert _tree(workdir / "checkpoints") == before
    shutil.rmtree(newest)  # as the message says: the run resumes from step 8 and ends where it did
    assert train_and_evaluate(config, workdir, progress=False)["params_sha256"] == reference["params_sha256"]


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    train_and_evaluate(write_config(tmp_path), tmp_path / "work", progress=False)
    other = write_config(tmp_path, "other.toml", filters=6)
    with pytest.raises(CheckpointError, match="was written for a different model"):
        train_and_evaluate(other, tmp_path / "work", progress=False)


def test_a_non_finite_loss_stops_the_run_naming_step_and_layer(tmp_path):
    config = write_config(tmp_path, lr=1e30, epochs=2)
    with pytest.raises(NonFiniteError) as info:
        train_and_evaluate(config, tmp_path / "work", progress=False)
    message = str(info.value)
    assert message.startswith("step ") and "not finite, so the step was not applied" in message
    assert "first non-finite layer" in message or "the loss itself overflowed" in message
    assert "on_nonfinite" in message


def test_non_finite_steps_can_be_skipped(tmp_path):
    config = write_config(tmp_path, lr=1e30, epochs=1, on_nonfinite="skip")
    results = train_and_evaluate(config, tmp_path / "work", progress=False)
    # Step 1 is finite and applied (its learning rate of 1e30 blows the parameters up); every later
    # step is then non-finite and skipped, leaving those parameters: 4 of the epoch's 5 steps.
    assert results["skipped_steps"] == 4 and results["steps"] == 5


def test_early_stopping(tmp_path):
    config = write_config(tmp_path, lr=0.0, epochs=6, patience=2)
    results = train_and_evaluate(config, tmp_path / "work", progress=False)
    assert results["stopped_early"] and results["epochs"] == 3  # the first epoch sets the best


def test_train_config_errors_name_the_file_and_key(tmp_path):
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("batch_size = 32", "batch_size = \"32\""))
    with pytest.raises(ConfigError, match=r"run.toml: key `train.batch_size`: \(='32'\) must be a non-negative integer"):
        train_and_evaluate(config, tmp_path / "work", progress=False)
    config.write_text(config.read_text().replace("batch_size = \"32\"", "batchsize = 32"))
    with pytest.raises(ConfigError, match=r"key `train.batchsize`: unknown key"):
        train_and_evaluate(config, tmp_path / "work", progress=False)
    config.write_text(config.read_text().replace("batchsize = 32", "batch_size = 32").replace("units = 10", "units = 7"))
    with pytest.raises(ConfigError, match=r"the model's output \(7,\) does not fit the data's 10 classes"):
        train_and_evaluate(config, tmp_path / "work", progress=False)


def test_jaxcnn_train_command(tmp_path, capsys):
    config = write_config(tmp_path, epochs=1)
    assert main(["train", str(config), "--workdir", str(tmp_path / "w"), "--epochs", "1", "--seed", "5"]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "test accuracy" in err
    assert json.loads((tmp_path / "w" / "results.json").read_text())["seed"] == 5
    assert main(["train", str(tmp_path / "missing.toml")]) == 1
    assert "missing.toml: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", str(config), "--epochs", "0"])
    assert info.value.code == 2


def test_the_non_finite_diagnosis_replays_the_failing_step_exactly(tmp_path, monkeypatch):
    """The diagnosis sees the state from before the failing step (its step counter, hence its
    dropout key fold_in(rng, step)) and that step's batch."""
    from jaxcnn.train import CompiledModel

    seen = []
    original = CompiledModel.layer_statistics

    def spy(self, state, batch):
        seen.append((int(state.step), np.asarray(batch[0]).copy()))
        return original(self, state, batch)

    monkeypatch.setattr(CompiledModel, "layer_statistics", spy)
    config = write_config(tmp_path, lr=1e30, epochs=2)
    with pytest.raises(NonFiniteError, match=r"^step 2: "):  # step 1 is finite, and blows up the parameters
        train_and_evaluate(config, tmp_path / "work", progress=False)
    ((step, images),) = seen
    assert step == 1  # the state before step 2, whose dropout key is fold_in(rng, 1)
    dataset = data_lib.dataset_from_config({"name": "digits", "validation": 0.1, "test": 0.2, "limit": 150},
                                           input_shape=(8, 8, 1), seed=3)[0]
    second = list(data_lib.batches(dataset, 32, shuffle=True, seed=3, epoch=0))[1]
    np.testing.assert_array_equal(images, second.images)


def test_the_loop_reads_nothing_back_per_step(tmp_path, monkeypatch):
    """Host reads (float() of a device array) do not grow with the number of steps: the
    non-finite count is read where the loop synchronizes anyway."""
    reads = []
    array_type = type(jax.numpy.zeros(()))
    original = array_type.__float__
    monkeypatch.setattr(array_type, "__float__", lambda self: reads.append(1) or original(self))

    def count(limit: int) -> int:
        config = write_config(tmp_path, f"r{limit}.toml", limit=limit, epochs=1)
        config.write_text(config.read_text().replace("checkpoint_every_steps = 2", "checkpoint_every_steps = 0"))
        reads.clear()
        assert train_and_evaluate(config, tmp_path / f"w{limit}", progress=False)["steps"] == -(-limit // 32)
        return len(reads)

    assert count(64) == count(320)  # 2 steps and 10 steps an epoch


def test_every_and_progress_decide_from_the_step_and_time_they_are_given():
    from jaxcnn.fit import Every, Progress

    every = Every(steps=3)
    assert [s for s in range(1, 10) if every.due(s, 0.0)] == [3, 6, 9]
    timed = Every(seconds=1.0)
    assert [t for t in (0.5, 1.0, 1.5, 2.1, 2.2) if timed.due(0, t)] == [1.0, 2.1]

    stream, calls = io.StringIO(), []

    def text() -> str:
        calls.append(1)
        return f"line {len(calls)}"

    progress = Progress(stream, True, tty=True, redraw_seconds=0.2)
    drawn = [progress.step(s, t, text) for s, t in ((1, 0.0), (2, 0.1), (3, 0.25), (4, 0.3))]
    assert drawn == [True, False, True, False] and len(calls) == 2  # text() only when drawn
    progress.epoch("epoch 1/1 done")
    assert stream.getvalue() == "\r\033[Kline 1\r\033[Kline 2\r\033[Kepoch 1/1 done\n"

    log = io.StringIO()
    quiet_log = Progress(log, True, tty=False)
    assert not quiet_log.step(1, 5.0, text) and len(calls) == 2  # a log gets only the epoch lines
    quiet_log.epoch("epoch 1/1 done")
    assert log.getvalue() == "epoch 1/1 done\n"
    silent = io.StringIO()
    Progress(silent, False, tty=True).epoch("x")
    assert silent.getvalue() == ""


def test_a_resume_with_other_settings_is_refused_naming_the_keys(tmp_path):
    config = write_config(tmp_path, epochs=1)
    workdir = tmp_path / "work"
    train_and_evaluate(config, workdir, progress=False)
    before = _tree(workdir)
    text = config.read_text()
    cases = [
        ({"seed": 4}, text, r"train\.seed \(=3 in the checkpoint, 4 now\)"),
        ({}, text.replace("batch_size = 32", "batch_size = 16"),
         r"train\.batch_size \(=32 in the checkpoint, 16 now\)"),
        ({}, text.replace("learning_rate = 0.05", "learning_rate = 0.1"),
         r"train\.optimizer\.learning_rate \(=0\.05 in the checkpoint, 0\.1 now\)"),
        ({}, text.replace('name = "sgd"', 'name = "adam"').replace("momentum = 0.9", ""),
         r"train\.optimizer\.momentum \(=0\.9 in the checkpoint, unset now\); "
         r"train\.optimizer\.name \(='sgd' in the checkpoint, 'adam' now\)"),
        ({}, text.replace("validation = 0.1", "validation = 0.2"),
         r"data\.validation \(=0\.1 in the checkpoint, 0\.2 now\)"),
    ]
    for overrides, changed, pattern in cases:
        config.write_text(changed)
        with pytest.raises(CheckpointError, match=r"checkpoints/5: was written by a run with other settings: "
                           + pattern + r"\. Resume with the settings it was written with, or use another workdir"):
            train_and_evaluate(config, workdir, progress=False, **overrides)
        assert _tree(workdir) == before
    # Keys that do not change what the run computes may change; an explicit default is no change.
    config.write_text(text.replace("keep_checkpoints = 2", "keep_checkpoints = 3").replace(
        "[train]\n", "[train]\nprecision = \"float32\"\n"))
    assert train_and_evaluate(config, workdir, progress=False)["steps"] == 5


def test_epochs_may_grow_on_a_resume_and_say_what_the_schedule_does(tmp_path):
    import optax

    config = write_config(tmp_path, epochs=2)
    whole = train_and_evaluate(write_config(tmp_path, "whole.toml", epochs=3), tmp_path / "whole", progress=False)
    workdir = tmp_path / "work"
    train_and_evaluate(config, workdir, progress=False)
    out = io.StringIO()
    grown = train_and_evaluate(config, workdir, epochs=3, stream=out)
    assert "train.epochs grew from 2 to 3: the run goes on to step 15; the learning rate is constant" in out.getvalue()
    # Data order and dropout keys depend on the epoch and step only: with a constant learning rate
    # the grown run is the 3-epoch run.
    assert grown["params_sha256"] == whole["params_sha256"] and grown["epochs"] == 3
    with pytest.raises(ConfigError, match=r"key `train.epochs`: \(=2\) is fewer than the 3 epochs of the run"):
        train_and_evaluate(config, workdir, progress=False)

    # A schedule derived from the run's length is derived again; the run states the change.
    scheduled = write_config(tmp_path, "cosine.toml", epochs=2)
    scheduled.write_text(scheduled.read_text() + '\n[train.optimizer.schedule]\nname = "cosine"\n')
    train_and_evaluate(scheduled, tmp_path / "cosine", progress=False)
    out = io.StringIO()
    train_and_evaluate(scheduled, tmp_path / "cosine", epochs=3, stream=out)
    before, after = optax.cosine_decay_schedule(0.05, 10)(10), optax.cosine_decay_schedule(0.05, 15)(10)
    assert (f"the learning-rate schedule is derived again for 15 steps instead of 10: at step 10 the learning "
            f"rate goes from {float(before):.4g} to {float(after):.4g}") in out.getvalue()


def test_bad_overrides_and_settings_are_refused_before_anything_is_written(tmp_path):
    config = write_config(tmp_path)
    workdir = tmp_path / "work"
    with pytest.raises(ConfigError, match=r"key `train.seed`: \(=-1\) must be a non-negative integer"):
        train_and_evaluate(config, workdir, seed=-1, progress=False)
    with pytest.raises(ConfigError, match=r"key `train.seed`: \(=1099511627776\) must be at most 4294967295"):
        train_and_evaluate(config, workdir, seed=2**40, progress=False)
    with pytest.raises(ConfigError, match=r"key `train.epochs`: \(=0\) must be at least 1"):
        train_and_evaluate(config, workdir, epochs=0, progress=False)
    config.write_text(config.read_text().replace("validation = 0.1", "validation = 0").replace(
        "early_stopping_patience = 0", "early_stopping_patience = 2"))
    with pytest.raises(ConfigError, match=r"key `train.early_stopping_patience`: \(=2\) needs a validation split "
                       r"to monitor val_loss, and this run has none"):
        train_and_evaluate(config, workdir, progress=False)
    assert not workdir.exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    with pytest.raises(ConfigError, match=r"a_file: is a file: the workdir must be a folder"):
        train_and_evaluate(write_config(tmp_path, "ok.toml"), a_file, progress=False)
    assert a_file.read_text() == "mine"


def test_a_kill_between_the_checkpoint_and_best_saves_is_repaired_on_resume(tmp_path, monkeypatch):
    from jaxcnn.checkpoint import Checkpoints

    original = Checkpoints.save

    def dies_before_best(self, step, state, record):
        if self.directory.name == "best":
            raise Crash  # after checkpoints/5 was written, before best/5 and the files
        return original(self, step, state, record)

    config = write_config(tmp_path, epochs=1)
    workdir = tmp_path / "work"
    monkeypatch.setattr(Checkpoints, "save", dies_before_best)
    with pytest.raises(Crash):
        train_and_evaluate(config, workdir, progress=False)
    assert not (workdir / "metrics.jsonl").exists()
    monkeypatch.setattr(Checkpoints, "save", original)
    results = train_and_evaluate(config, workdir, progress=False)
    assert results["steps"] == 5
    assert sorted(p.name for p in (workdir / "best").iterdir()) == ["5"]
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]
    assert (workdir / "curves.png").exists()


# ---- what the README claims of a run (the main job's config, best/, compiled once, process 1) ----

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
    config = write_config(tmp_path, epochs=6, lr=0.15, dropout=0.0)
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
        train_and_evaluate(write_config(tmp_path, epochs=3, dropout=0.0), tmp_path / "work", progress=False)
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
    results = train_and_evaluate(write_config(tmp_path, dropout=0.0), workdir, stream=sys.stdout)
    assert results["steps"] == 10
    assert sorted(os.listdir(workdir)) == ["best", "checkpoints"]
    assert capsys.readouterr().out == ""


def test_a_checkpoint_of_another_model_is_left_untouched(tmp_path):
    workdir = tmp_path / "work"
    train_and_evaluate(write_config(tmp_path, dropout=0.0), workdir, progress=False)
    before = snapshot(workdir)
    with pytest.raises(CheckpointError, match="was written for a different model"):
        train_and_evaluate(write_config(tmp_path, "other.toml", filters=6, dropout=0.0), workdir, progress=False)
    assert snapshot(workdir) == before
