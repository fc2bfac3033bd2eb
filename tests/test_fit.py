"""The fit loop: files in the workdir, exact resumption (also after SIGKILL), refused checkpoints,
the non-finite guard, early stopping, and `jaxcnn train`."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from jaxcnn.cli import main
from jaxcnn.errors import CheckpointError, ConfigError, NonFiniteError
from jaxcnn.fit import train_and_evaluate

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
type = "Dropout"
rate = 0.2

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


def write_config(tmp_path, name="run.toml", *, filters=4, limit=150, epochs=2, patience=0, lr=0.05,
                 on_nonfinite="stop") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(MODEL.format(filters=filters, limit=limit, epochs=epochs, patience=patience, lr=lr,
                                 on_nonfinite=on_nonfinite))
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
    assert 0.0 <= results["test_accuracy"] <= 1.0


class Crash(Exception):
    pass


def test_a_crashed_run_resumes_exactly(tmp_path, capsys):
    config = write_config(tmp_path, epochs=3)
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
def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_parameters(tmp_path):
    config = write_config(tmp_path, epochs=8, limit=300)
    command = [sys.executable, "-m", "jaxcnn.cli", "train", str(config), "--workdir"]
    whole = subprocess.run([*command, str(tmp_path / "whole"), "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr

    workdir = tmp_path / "killed"
    proc = subprocess.Popen([*command, str(workdir), "--quiet"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()] \
            if (workdir / "checkpoints").exists() else []
        if steps and max(steps) >= 12:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / "results.json").exists()  # it really died mid-run

    resumed = subprocess.run([*command, str(workdir)], cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from the checkpoint of step" in resumed.stderr
    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((workdir / "results.json").read_text())
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
    assert results["skipped_steps"] >= 1


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


def test_a_checkpoint_of_the_same_step_is_replaced(tmp_path):
    """A run resumed after dying between its best/ and checkpoints/ saves reaches that step again."""
    from jaxcnn.checkpoint import Checkpoints
    from jaxcnn.layers import Dense
    from jaxcnn.train import compile, params_sha256
    import jaxcnn

    compiled = compile(jaxcnn.Sequential([Dense(3, input_shape=(4,))]), "sgd")
    checkpoints = Checkpoints(tmp_path / "c", fingerprint="f")
    checkpoints.save(5, compiled.init(0), {"n": 1})
    other = compiled.init(1)
    checkpoints.save(5, other, {"n": 2})
    state, record = checkpoints.restore(compiled.abstract_state())
    assert record["n"] == 2 and params_sha256(state.params) == params_sha256(other.params)
