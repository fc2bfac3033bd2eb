"""Scale-out (issue 6): the mesh table, shardings and bytes per device without allocating, the same
parameters on 8 CPU devices as on one, uneven batches refused or padded, checkpoints restored onto
other layouts, and two processes on loopback under jax.distributed.

Tests that need several devices run in a subprocess with ``JAX_NUM_CPU_DEVICES`` set before JAX
starts (this process's JAX has one CPU device)."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxcnn.checkpoint import Checkpoints, model_fingerprint
from jaxcnn.config import load
from jaxcnn.data import Batch
from jaxcnn.errors import ConfigError
from jaxcnn.fit import train_and_evaluate
from jaxcnn.parallel import Layout, MeshConfig, pad_batch, sharding_report
from jaxcnn.summary import summarize_file
from jaxcnn.train import compile, params_sha256

from conftest import CONFIGS, ROOT

# 5e-5 (absolute, on parameters of order 0.01 to 0.1, after 3 steps): eight devices sum a gradient in
# another order than one device does (a float32 all-reduce), and on a mesh every convolution is
# lax.conv where one CPU device may use the patches lowering (LoweringContext.partitioned). Measured:
# 1.1e-5 with Adam (lr 1e-3) on the seed CIFAR CNN, 3.7e-8 with SGD on the tiny model.
TOLERANCE = 5e-5

CONFIG = """
[model]
name = "tiny"
input_shape = [8, 8, 1]

[[layers]]
type = "Conv2D"
filters = 8
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
limit = 400

[train]
epochs = 1
batch_size = {batch_size}

# SGD, not Adam, for comparisons across layouts: Adam divides each gradient entry by its own scale,
# so an entry that is zero in exact arithmetic (such as the conv2d bias ahead of BatchNormalization)
# moves by +-learning_rate on the sign of its rounding noise, which differs between layouts.
[train.optimizer]
name = "sgd"
learning_rate = 0.05
momentum = 0.9

[mesh]
strategy = "{strategy}"
fsdp_min_params = 256
uneven_batch = "{uneven}"
"""


def write_config(tmp_path: pathlib.Path, *, batch_size: int = 32, strategy: str = "data",
                 uneven: str = "refuse") -> pathlib.Path:
    path = tmp_path / f"tiny_{strategy}_{batch_size}_{uneven}.toml"
    path.write_text(CONFIG.format(batch_size=batch_size, strategy=strategy, uneven=uneven))
    return path


def python(code: str, devices: int, *args: str, timeout: int = 300) -> str:
    """Run ``code`` in a fresh Python whose JAX sees ``devices`` CPU devices; its stdout."""
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT / "tests")}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def jaxcnn_train(config: pathlib.Path, workdir: pathlib.Path, devices: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "jaxcnn.cli", "train", str(config), "--workdir", str(workdir),
                             "--quiet", *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: int = 300) -> None:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-4000:]


# ---- layouts, without devices --------------------------------------------------------------------
def test_fsdp_shards_vgg16s_large_kernels_and_their_optimizer_state():
    model = load(CONFIGS / "vgg16.toml")
    state = compile(model, {"name": "adam"}).abstract_state()  # jax.eval_shape: nothing allocated
    report = sharding_report(state, Layout.abstract(8, "fsdp"), [layer.name for layer in model.layers])
    rows = {r["name"]: r for r in report["parameters"]}
    dense = rows["dense/kernel"]
    assert dense["shape"] == [25088, 4096] and 25088 * 4096 == 102_760_448
    assert dense["sharding"] == "P(data, None)"
    assert dense["param_bytes_per_device"] == 51_380_224  # 25088 / 8 = 3136 rows of 4096 float32
    assert dense["optimizer_bytes_per_device"] == 2 * 51_380_224  # Adam's two moments
    assert rows["conv2d/kernel"]["sharding"] == "replicated"  # 1,728 parameters: below fsdp_min_params
    assert [r["name"] for r in report["parameters"]][:2] == ["conv2d/kernel", "conv2d/bias"] or \
        [r["name"] for r in report["parameters"]][:2] == ["conv2d/bias", "conv2d/kernel"]
    # By hand: the nine kernels of at least 2**20 parameters are split 8 ways, the rest of Keras's
    # 138,357,544 parameters (1,747,752: the small kernels and every bias) are replicated.
    split = [name for name, row in rows.items() if row["sharding"] != "replicated"]
    assert sorted(split) == sorted(["conv2d_7/kernel", "conv2d_8/kernel", "conv2d_9/kernel", "conv2d_10/kernel",
                                    "conv2d_11/kernel", "conv2d_12/kernel", "dense/kernel", "dense_1/kernel",
                                    "dense_2/kernel"])
    sharded = 3 * 3 * 256 * 512 + 5 * 3 * 3 * 512 * 512 + 25088 * 4096 + 4096 * 4096 + 4096 * 1000
    assert sharded == 136_609_792
    per_device = (sharded // 8 + 138_357_544 - sharded) * 4  # float32 bytes: 75,295,904
    scalars = 4 + 8 + 4  # the step (int32), the PRNG key (2 x uint32), Adam's count (int32)
    assert report["totals"] == {
        "param_bytes_per_device": per_device, "optimizer_bytes_per_device": 2 * per_device,
        "other_state_bytes_per_device": scalars, "state_bytes_per_device": 3 * per_device + scalars,
        "state_bytes_unsharded": 3 * 138_357_544 * 4 + scalars}
    data = sharding_report(state, Layout.abstract(8, "data"))
    assert {r["sharding"] for r in data["parameters"]} == {"replicated"}
    assert data["totals"]["state_bytes_per_device"] == 3 * 138_357_544 * 4 + scalars


SHARDS = """
import json, jax
import jaxcnn
from jaxcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from jaxcnn.parallel import Layout, MeshConfig, sharding_report

model = jaxcnn.Sequential([Conv2D(8, 3, padding="same", input_shape=(8, 8, 1)), MaxPooling2D(), Flatten(),
                           Dense(16), Dense(10, activation="softmax")])
layout = Layout.create(MeshConfig("fsdp", fsdp_min_params=64))
compiled = jaxcnn.compile(model, "adam", layout=layout)
state = compiled.init(0)
device = jax.devices()[0]
def held(tree):  # the bytes device 0 really holds of a tree's arrays
    return sum(s.data.nbytes for leaf in jax.tree.leaves(tree) for s in leaf.addressable_shards if s.device == device)
print(json.dumps({
    "report": sharding_report(compiled.abstract_state(), layout)["totals"],
    "params": held(state.params), "optimizer": held(state.opt_state),
    "other": held((state.batch_stats, state.step, state.rng)),
    "whole": sum(leaf.nbytes for leaf in jax.tree.leaves(state)),
    "kernel_shards": {name: [list(s.data.shape) for s in v["kernel"].addressable_shards][:1]
                      for name, v in state.params.items()},
}))
"""


def test_the_fsdp_report_gives_the_bytes_the_real_shards_hold():
    result = json.loads(python(SHARDS, 8).strip().splitlines()[-1])
    # the kernels of at least 64 parameters are split 8 ways along their largest dimension 8 divides
    assert result["kernel_shards"] == {"conv2d": [[3, 3, 1, 1]], "dense": [[16, 16]], "dense_1": [[2, 10]]}
    totals = result["report"]
    assert totals["param_bytes_per_device"] == result["params"] == (9 + 256 + 20 + 8 + 16 + 10) * 4
    assert totals["optimizer_bytes_per_device"] + totals["other_state_bytes_per_device"] \
        == result["optimizer"] + result["other"]
    assert totals["optimizer_bytes_per_device"] == 2 * result["params"]  # Adam's two moments
    assert totals["state_bytes_per_device"] == result["params"] + result["optimizer"] + result["other"]
    assert totals["state_bytes_unsharded"] == result["whole"]


def test_the_sharding_report_matches_optimizer_state_by_tree_path_and_counts_batch_statistics():
    """Conv2D(8) -> BatchNormalization -> Dense(8): six parameters and both batch statistics of shape
    (8,), so matching by shape would lose the statistics. Every figure is counted by hand (float32)."""
    from jaxcnn.layers import BatchNormalization, Conv2D, Dense
    from jaxcnn.model import Sequential

    model = Sequential([Conv2D(8, 3, padding="same", input_shape=(4, 4, 1)), BatchNormalization(), Dense(8)])
    state = compile(model, {"name": "adam"}).abstract_state()
    # params: conv2d kernel 3*3*1*8 = 72, bias 8; batch_normalization scale 8, bias 8; dense kernel
    # 8*8 = 64, bias 8: 168 floats, 672 bytes. Adam: mu and nu of each (1,344 bytes) and an int32 count.
    # other: batch statistics mean 8 + var 8 (64 bytes), Adam's count 4, the step 4, the key uint32[2] 8.
    data = sharding_report(state, Layout.abstract(2, "data"), [layer.name for layer in model.layers])
    assert [(r["name"], r["param_bytes_per_device"], r["optimizer_bytes_per_device"]) for r in data["parameters"]] == [
        ("conv2d/bias", 32, 64), ("conv2d/kernel", 288, 576), ("batch_normalization/bias", 32, 64),
        ("batch_normalization/scale", 32, 64), ("dense/bias", 32, 64), ("dense/kernel", 256, 512)]
    assert data["totals"] == {"param_bytes_per_device": 672, "optimizer_bytes_per_device": 1344,
                              "other_state_bytes_per_device": 64 + 4 + 4 + 8,
                              "state_bytes_per_device": 672 + 1344 + 80, "state_bytes_unsharded": 672 + 1344 + 80}
    # FSDP over 2 devices for leaves of at least 64 elements: the conv2d kernel (72) split on its
    # filters (36 floats, 144 bytes a device), the dense kernel (64) on its first axis (128 bytes).
    fsdp = sharding_report(state, Layout.abstract(2, "fsdp", fsdp_min_params=64))
    rows = {r["name"]: r for r in fsdp["parameters"]}
    assert (rows["conv2d/kernel"]["param_bytes_per_device"], rows["conv2d/kernel"]["optimizer_bytes_per_device"]) == (
        144, 288)
    assert (rows["dense/kernel"]["param_bytes_per_device"], rows["dense/kernel"]["optimizer_bytes_per_device"]) == (
        128, 256)
    small = 4 * 8 * 4  # the four (8,) parameters, replicated
    assert fsdp["totals"] == {"param_bytes_per_device": 144 + 128 + small,
                              "optimizer_bytes_per_device": 2 * (144 + 128 + small),
                              "other_state_bytes_per_device": 80,
                              "state_bytes_per_device": 3 * (144 + 128 + small) + 80,
                              "state_bytes_unsharded": 672 + 1344 + 80}


def test_summary_shows_each_parameters_sharding_and_bytes_per_device():
    text = summarize_file(str(CONFIGS / "vgg16.toml"), mesh="fsdp", devices=8)
    assert "Total params: 138,357,544" in text
    line = next(line for line in text.splitlines() if line.startswith("dense/kernel"))
    assert "(25088, 4096)" in line and "P(data, None)" in line and "49.00 MB" in line and "98.00 MB" in line
    assert "Sharding over 8 devices (fsdp parallel" in text
    doc = json.loads(summarize_file(str(CONFIGS / "vgg16.toml"), format="json", mesh="data", devices=4))
    assert doc["sharding"]["devices"] == 4 and doc["total_params"] == 138_357_544


def test_the_mesh_table_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"mesh.strategy.*'pipeline'.*must be one of data, fsdp"):
        MeshConfig.from_table({"strategy": "pipeline"}, source="run.toml")
    with pytest.raises(ConfigError, match=r"mesh.shards.*unknown key"):
        MeshConfig.from_table({"shards": 2}, source="run.toml")
    with pytest.raises(ConfigError, match=r"mesh.uneven_batch"):
        MeshConfig.from_table({"uneven_batch": "drop"})
    with pytest.raises(ConfigError, match=r"mesh.devices.*\(=4\) is more than the 1 device JAX sees.*JAX_NUM_CPU_DEVICES"):
        Layout.create(MeshConfig(devices=4))
    config = write_config(tmp_path, strategy="data")
    config.write_text(config.read_text().replace('strategy = "data"', 'strategy = "model"'))
    with pytest.raises(ConfigError, match=r"tiny_data_32_refuse.toml.*mesh.strategy"):
        train_and_evaluate(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_an_uneven_global_batch_is_refused_or_padded():
    layout = Layout.abstract(8)
    with pytest.raises(ConfigError, match=r"train.batch_size.*\(=30\) does not divide over the 8 devices.*"
                                          r"such as 24.*uneven_batch = \"pad\""):
        layout.padded_batch_size(30, "refuse", source="run.toml")
    assert layout.padded_batch_size(30, "pad") == 32
    assert layout.padded_batch_size(32, "refuse") == 32
    batch = Batch(np.ones((30, 2), np.float32), np.arange(30), np.ones(30, np.float32))
    padded = pad_batch(batch, 32)
    assert padded.images.shape == (32, 2) and padded.mask.tolist() == [1.0] * 30 + [0.0, 0.0]
    assert not padded.images[30:].any() and padded.labels.dtype == batch.labels.dtype


# ---- eight devices ---------------------------------------------------------------------------------
EIGHT_DEVICES = """
import json
import jax, numpy as np
import jaxcnn
from jaxcnn.data import Batch
from jaxcnn.parallel import Layout, MeshConfig, pad_batch

assert jax.device_count() == 8
model = jaxcnn.load("configs/cifar_cnn.toml")
rng = np.random.default_rng(0)
x = rng.normal(size=(3, 32, 32, 32, 3)).astype(np.float32)
y = rng.integers(0, 10, (3, 32)).astype(np.int32)

def run(layout, size=32, pad_to=None):
    compiled = jaxcnn.compile(model, "adam", layout=layout)
    state = compiled.init(0)
    total = None
    for i in range(3):
        batch = Batch(x[i, :size], y[i, :size], np.ones(size, np.float32))
        if pad_to:
            batch = pad_batch(batch, pad_to)
        batch = layout.put_batch(batch) if layout else batch
        state, metrics = compiled.train_step(state, tuple(batch))
        total = metrics if total is None else total.merge(metrics)
    kernel = state.params["dense"]["kernel"]
    return ({k: np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state.params)
             for k in [jax.tree_util.keystr(k)]},
            total.compute(), str(getattr(kernel.sharding, "spec", None)), len(kernel.addressable_shards),
            kernel.addressable_shards[0].data.shape)

def diff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)

one = run(None)
data = run(Layout.create(MeshConfig("data")))
fsdp = run(Layout.create(MeshConfig("fsdp", fsdp_min_params=100_000)))
one30 = run(None, size=30)
pad30 = run(Layout.create(MeshConfig("data")), size=30, pad_to=32)
print(json.dumps({
    "data": diff(one[0], data[0]), "fsdp": diff(one[0], fsdp[0]), "padded": diff(one30[0], pad30[0]),
    "metrics": [one[1], data[1], fsdp[1], one30[1], pad30[1]],
    "data_spec": data[2], "fsdp_spec": fsdp[2], "fsdp_shards": fsdp[3], "fsdp_shard_shape": fsdp[4],
    "kernel_shape": list(one[0]["['dense']['kernel']"].shape)}))
"""


def test_eight_cpu_devices_train_the_seed_cnn_to_the_same_parameters_as_one():
    result = json.loads(python(EIGHT_DEVICES, 8).strip().splitlines()[-1])
    print({k: result[k] for k in ("data", "fsdp", "padded")})  # the largest differences, for the record
    assert result["data"] <= TOLERANCE and result["fsdp"] <= TOLERANCE, result
    # the layouts are real: FSDP splits the 1024x500 Dense kernel into 8 shards of 128 rows
    assert result["kernel_shape"] == [1024, 500]
    assert result["data_spec"] == "P()" and result["fsdp_spec"] == "P('data', None)"
    assert result["fsdp_shards"] == 8 and result["fsdp_shard_shape"] == [128, 500]
    one, data, fsdp, one30, pad30 = result["metrics"]
    for other in (data, fsdp):
        assert other["examples"] == one["examples"] == 96
        assert abs(other["loss"] - one["loss"]) < 1e-5 and other["accuracy"] == one["accuracy"]
    # 30 examples padded to 32 over 8 devices: the same step and exact metrics over the 30 real ones
    assert result["padded"] <= TOLERANCE
    assert pad30["examples"] == one30["examples"] == 90 and abs(pad30["loss"] - one30["loss"]) < 1e-5


# ---- checkpoints across layouts, and the command ----------------------------------------------------
RESTORE = """
import sys, jax
from jaxcnn.checkpoint import Checkpoints, model_fingerprint
from jaxcnn.config import from_dict, read_document
from jaxcnn.parallel import Layout, MeshConfig, fetch
from jaxcnn.train import compile, params_sha256

config, workdir, strategy = sys.argv[1:]
doc = read_document(config)
model = from_dict(doc)
layout = Layout.create(MeshConfig(strategy, fsdp_min_params=256))
compiled = compile(model, dict(doc["train"]["optimizer"]), layout=layout)
checkpoints = Checkpoints(workdir + "/checkpoints", fingerprint=model_fingerprint(model))
state, record = checkpoints.restore(layout.with_shardings(compiled.abstract_state()))
kernel = state.params["dense"]["kernel"]
print(jax.device_count(), params_sha256(fetch(state.params)), len(kernel.sharding.device_set),
      str(kernel.sharding.spec))
"""


@pytest.mark.slow
def test_a_checkpoint_written_on_eight_devices_restores_on_one_and_on_two(tmp_path):
    config = write_config(tmp_path, strategy="fsdp")
    finish(jaxcnn_train(config, tmp_path / "eight", 8))
    results = json.loads((tmp_path / "eight" / "results.json").read_text())
    assert results["devices"] == 8 and results["mesh"] == "fsdp" and results["processes"] == 1
    # on two devices, FSDP again: the 128x10 Dense kernel (1,280 parameters) split in 2
    devices, sha, spread, spec = python(RESTORE, 2, str(config), str(tmp_path / "eight"), "fsdp").strip().split(maxsplit=3)
    assert (devices, sha, spread, spec) == ("2", results["params_sha256"], "2", "P('data', None)")
    # on this process's one device, replicated
    model = load(config)
    layout = Layout.create(MeshConfig("data"))
    compiled = compile(model, {"name": "sgd", "momentum": 0.9}, layout=layout)
    state, record = Checkpoints(tmp_path / "eight" / "checkpoints", fingerprint=model_fingerprint(model)).restore(
        layout.with_shardings(compiled.abstract_state()))
    assert params_sha256(state.params) == results["params_sha256"]
    assert record["step"] == results["steps"]
    # and the run resumes on one device from the 8-device checkpoint (one more epoch)
    again = train_and_evaluate(config, tmp_path / "eight", epochs=2, progress=False)
    assert again["devices"] == 1 and again["steps"] == 2 * results["steps"]


def test_the_command_refuses_a_batch_that_does_not_divide_and_pads_when_asked(tmp_path):
    refuse = write_config(tmp_path, batch_size=30)
    process = jaxcnn_train(refuse, tmp_path / "refused", 8)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1
    assert "tiny_data_30_refuse.toml" in err and "train.batch_size" in err and "8 devices" in err
    assert "Traceback" not in err and not (tmp_path / "refused" / "checkpoints").exists()
    pad = write_config(tmp_path, batch_size=30, uneven="pad")
    finish(jaxcnn_train(pad, tmp_path / "padded", 8))
    padded = json.loads((tmp_path / "padded" / "results.json").read_text())
    single = train_and_evaluate(pad, tmp_path / "single", progress=False)
    assert padded["global_batch_size"] == 32 and single["global_batch_size"] == 30
    assert padded["steps"] == single["steps"] and padded["data"] == single["data"]
    assert abs(padded["test_loss"] - single["test_loss"]) < 1e-4
    assert padded["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=1e-9)


# ---- two processes on loopback -------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_on_two_processes(config: pathlib.Path, workdir: pathlib.Path) -> dict:
    """``jaxcnn train`` of ``config`` as two processes on loopback (one CPU device each); the results."""
    address = f"127.0.0.1:{free_port()}"
    workers = [jaxcnn_train(config, workdir, 1, "--coordinator", address, "--num-processes", "2",
                            "--process-id", str(i)) for i in range(2)]
    for worker in workers:
        finish(worker)
    return json.loads((workdir / "results.json").read_text())


@pytest.mark.slow
def test_two_processes_on_loopback_train_as_one_process_over_the_same_global_batch(tmp_path):
    config = write_config(tmp_path, strategy="data")
    two = train_on_two_processes(config, tmp_path / "two")
    one = train_and_evaluate(config, tmp_path / "one", progress=False)
    assert (two["processes"], two["devices"], one["processes"], one["devices"]) == (2, 2, 1, 1)
    assert two["steps"] == one["steps"] and two["data"] == one["data"]
    assert abs(two["test_loss"] - one["test_loss"]) < 1e-4
    # the checkpoint was written once, by both processes together; it restores here on one device
    model = load(config)
    compiled = compile(model, {"name": "sgd", "momentum": 0.9})
    fingerprint = model_fingerprint(model)
    a, _ = Checkpoints(tmp_path / "two" / "checkpoints", fingerprint=fingerprint).restore(compiled.abstract_state())
    b, _ = Checkpoints(tmp_path / "one" / "checkpoints", fingerprint=fingerprint).restore(compiled.abstract_state())
    assert params_sha256(a.params) == two["params_sha256"]
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_two_processes_stream_a_folder_each_reading_only_its_own_files(tmp_path):
    """Each process decodes its own half of the files (jaxcnn.stream.Plan, sharded); the run's
    batches are then another permutation than one process's, so the figures are checked for sense
    and the checkpoint for restoring, not against one process."""
    from test_stream import write_config as folder_config

    config = folder_config(tmp_path, epochs=2, data="workers = 1")
    two = train_on_two_processes(config, tmp_path / "two")
    assert (two["processes"], two["devices"], two["steps"]) == (2, 2, 2 * 9)  # 140 files each, 16 a step
    assert two["data"] == {"name": "folder/train", "train": 280, "validation": 40, "test": 80, "skipped_images": 0}
    assert round(two["test_accuracy"] * 80) == pytest.approx(two["test_accuracy"] * 80)  # exact over all 80
    model = load(config)
    compiled = compile(model, {"name": "sgd", "momentum": 0.9})
    state, _ = Checkpoints(tmp_path / "two" / "checkpoints", fingerprint=model_fingerprint(model)).restore(
        compiled.abstract_state())
    assert params_sha256(state.params) == two["params_sha256"]
