"""Inference: batched prediction, export files that run without the model code, parity, refusals."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from jaxcnn.artifact import load_artifact, predict_files, read_inputs
from jaxcnn.checkpoint import Checkpoints, model_fingerprint
from jaxcnn.cli import main
from jaxcnn.config import read_document, from_dict
from jaxcnn.data import load_digits, prepare_from_config
from jaxcnn.errors import ExportError
from jaxcnn.export import export_model
from jaxcnn.fit import train_and_evaluate
from jaxcnn.train import compile

from conftest import ROOT
from test_fit import write_config

# bfloat16 inference against float32: probabilities agree to this absolute tolerance, and the
# top-1 class is the same on the whole test set (bfloat16 keeps 8 bits of mantissa: ~3 significant
# digits per activation, accumulated over a few layers).
BF16_ATOL = 0.05


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model trained on digits for 4 epochs, exported in float32 and bfloat16."""
    tmp = tmp_path_factory.mktemp("export")
    config = write_config(tmp, epochs=4, limit=600, lr=0.05)
    train_and_evaluate(config, tmp / "work", progress=False)
    f32 = export_model(config, tmp / "work", tmp / "model.jaxcnn")
    bf16 = export_model(config, tmp / "work", tmp / "model_bf16.jaxcnn", precision="bfloat16")
    doc = read_document(config)
    model = from_dict(doc, source=str(config))
    compiled = compile(model, "sgd")
    abstract = compiled.abstract_state()
    variables, _ = Checkpoints(tmp / "work" / "best", fingerprint=model_fingerprint(model)).restore_variables(
        {"params": abstract.params, "batch_stats": abstract.batch_stats})
    state = compiled.init(0).replace(**variables)
    _, _, test, recipe = prepare_from_config(doc["data"], input_shape=model.input_shape, seed=3, source=str(config))
    return {"tmp": tmp, "config": config, "compiled": compiled, "state": state, "test": test,
            "recipe": recipe, "manifests": (f32, bf16)}


def test_batched_prediction_is_the_same_whatever_the_batch_size(trained):
    """The same labels, and probabilities equal to 1e-5 relative: XLA's CPU GEMMs block their
    accumulation by the number of rows, so the last bits may differ between batch sizes."""
    compiled, state, images = trained["compiled"], trained["state"], trained["test"].images[:37]
    reference = np.asarray(compiled.predict(state, images))
    for batch_size in (1, 3, 8, 16, 64, 256):
        out = compiled.predict_batched(state, images, batch_size=batch_size)
        np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(out.argmax(-1), reference.argmax(-1))
    labels = compiled.predict_batched(state, images, batch_size=5, output="labels")
    np.testing.assert_array_equal(labels, reference.argmax(-1))


def test_padding_and_neighbours_never_change_a_prediction(trained):
    """For a given batch size, each image's outputs are bitwise independent of the padding and of
    the other images in its batch."""
    compiled, state, images = trained["compiled"], trained["state"], trained["test"].images
    padded = compiled.predict_batched(state, images[:5], batch_size=8)  # 5 images + 3 zero images
    neighbours = np.asarray(compiled.predict(state, np.concatenate([images[:5], images[20:23]])))[:5]
    np.testing.assert_array_equal(padded, neighbours)


def test_batched_prediction_compiles_one_shape_whatever_the_number_of_images():
    """Every batch is ``batch_size`` images, the last (or only) one padded: one compilation for 0,
    1, 3, 8, 9 or 37 images (powers of two for small inputs before)."""
    import jaxcnn
    from jaxcnn.layers import Conv2D, Dense, Flatten

    model = jaxcnn.Sequential([Conv2D(2, 3, activation="relu", input_shape=(6, 6, 1)), Flatten(),
                               Dense(4, activation="softmax")])
    compiled = compile(model, "sgd")
    state = compiled.init(0)
    images = np.random.default_rng(0).normal(size=(37, 6, 6, 1)).astype(np.float32)
    reference = np.asarray(compile(model, "sgd").predict(state, images))  # another jit cache
    for n in (0, 1, 3, 8, 9, 37):
        out = compiled.predict_batched(state, images[:n], batch_size=8)
        assert out.shape == (n, 4)
        np.testing.assert_allclose(out, reference[:n], rtol=1e-5, atol=1e-7)
    assert compiled.predict._cache_size() == 1
    assert compiled.predict_batched(state, images[:0], batch_size=8, output="labels").shape == (0,)


def test_an_exported_model_compiles_once_whatever_the_number_of_images(trained):
    artifact = load_artifact(trained["tmp"] / "model.jaxcnn")
    images = trained["test"].images
    for n in (1, 3, 8, 20):
        assert artifact.predict(images[:n], batch_size=16).shape == (n, 10)
    assert artifact.__dict__["_jitted"]._cache_size() == 1
    for n in (1, 5):  # a batch_size of at most 8 runs the small-batch program, compiled once too
        artifact.predict(images[:n], batch_size=4)
    assert artifact.__dict__["_jitted_small"]._cache_size() == 1


MESH_PREDICT = """
import numpy as np, jax, jaxcnn
from jaxcnn.errors import InputError
from jaxcnn.layers import Conv2D, Dense, Flatten
from jaxcnn.parallel import Layout, MeshConfig

assert jax.device_count() == 8
model = jaxcnn.Sequential([Conv2D(2, 3, activation="relu", input_shape=(6, 6, 1)), Flatten(),
                           Dense(4, activation="softmax")])
images = np.random.default_rng(0).normal(size=(13, 6, 6, 1)).astype(np.float32)
one = jaxcnn.compile(model, "sgd")
mesh = jaxcnn.compile(model, "sgd", layout=Layout.create(MeshConfig("data")))
state = mesh.init(0)
reference = np.asarray(one.predict(one.init(0), images))
for n in (3, 5, 13):  # batch_size 6 is rounded up to 8, a multiple of the 8 devices
    out = mesh.predict_batched(state, images[:n], batch_size=6)
    assert np.allclose(out, reference[:n], rtol=1e-5, atol=1e-6), n
print("compilations", mesh.predict._cache_size())
try:
    mesh.train_step(state, (images[:6], np.zeros(6, np.int32)))
except InputError as error:
    print("refused", error)
"""


def test_batched_prediction_on_a_mesh_pads_to_a_multiple_of_the_device_count():
    import os
    import textwrap

    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(MESH_PREDICT)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "compilations 1"
    assert lines[1] == ("refused train_step: a batch of 6 does not divide over the 8 devices of the layout: pad it to "
                        "a multiple of 8 (jaxcnn.parallel.pad_batch, with a mask)")


def test_export_lists_its_platforms_and_signature(trained):
    manifest = trained["manifests"][0]
    assert manifest["platforms"] == ["cpu", "cuda", "tpu"]
    assert manifest["input_signature"] == {"shape": [None, 8, 8, 1], "dtype": "float32"}
    assert manifest["outputs"] == "probabilities" and manifest["output_shape"] == [None, 10]
    artifact = load_artifact(trained["tmp"] / "model.jaxcnn")
    assert artifact.platforms == ("cpu", "cuda", "tpu")
    assert str(artifact.exported.in_avals[-1].shape[0]) == "batch"


def test_float32_export_matches_in_process_outputs(trained):
    artifact = load_artifact(trained["tmp"] / "model.jaxcnn")
    images = trained["test"].images
    exported = artifact.predict(images, batch_size=32)
    in_process = trained["compiled"].predict_batched(trained["state"], images, batch_size=32)
    # In process the convolutions may run in oneDNN, which jax.export refuses (the file has XLA's):
    # the same values to float32 rounding, summed in another order (2.2e-6 relative measured).
    np.testing.assert_allclose(exported, in_process, rtol=1e-5, atol=1e-7)
    # batches of at most 8 run the file's small-batch program (patches lowering): same parity
    assert "stablehlo.convolution" in artifact.exported.mlir_module()  # 8x8 maps: lax.conv at large batch
    assert "stablehlo.convolution" not in artifact.exported_small.mlir_module()
    small = artifact.predict(images[:8], batch_size=4)
    np.testing.assert_allclose(small, trained["compiled"].predict_batched(trained["state"], images[:8], batch_size=4),
                               rtol=1e-5, atol=1e-7)


def test_bfloat16_export_agrees_within_tolerance_and_keeps_top1(trained):
    artifact = load_artifact(trained["tmp"] / "model_bf16.jaxcnn")
    assert artifact.manifest["precision"] == "bfloat16"
    images = trained["test"].images
    bf16 = artifact.predict(images)
    f32 = trained["compiled"].predict_batched(trained["state"], images)
    assert np.abs(bf16 - f32).max() <= BF16_ATOL
    np.testing.assert_array_equal(bf16.argmax(-1), f32.argmax(-1))


def test_predict_reads_npy_and_images_with_the_training_preprocessing(trained, tmp_path):
    from PIL import Image

    digits = load_digits()
    np.save(tmp_path / "three.npy", digits.images[:3])
    Image.fromarray(np.round(digits.images[7, :, :, 0] * 255).astype(np.uint8)).save(tmp_path / "seven.png")
    Image.fromarray(np.round(digits.images[8, :, :, 0] * 255).astype(np.uint8)).save(tmp_path / "eight.jpg", quality=100)
    manifest = trained["manifests"][0]
    inputs, names = read_inputs([tmp_path / "three.npy", tmp_path / "seven.png"], manifest)
    assert names == [f"{tmp_path / 'three.npy'}[{i}]" for i in range(3)] + [str(tmp_path / "seven.png")]
    np.testing.assert_allclose(inputs[:3], trained["recipe"].apply(digits.images[:3]), rtol=1e-6)
    np.testing.assert_allclose(inputs[3], trained["recipe"].apply(digits.images[7:8])[0], atol=0.05)
    result = predict_files(trained["tmp"] / "model.jaxcnn",
                           [tmp_path / "three.npy", tmp_path / "seven.png", tmp_path / "eight.jpg"], top_k=3)
    assert len(result["predictions"]) == 5
    top = result["predictions"][0]["top_k"]
    assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    assert {t["name"] for t in top} <= {str(i) for i in range(10)}


@pytest.mark.slow
def test_jaxcnn_predict_runs_without_importing_the_model_code(trained, tmp_path):
    np.save(tmp_path / "x.npy", load_digits().images[:4])
    code = (
        "import sys, json; from jaxcnn.cli import main; code = main(sys.argv[1:]); "
        "loaded = sorted(m for m in sys.modules if m in ('jaxcnn.layers', 'jaxcnn.model', 'jaxcnn.flax_module', "
        "'jaxcnn.train', 'flax', 'optax', 'jaxcnn.config')); print('LOADED', json.dumps(loaded)); sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", code, "predict", str(trained["tmp"] / "model.jaxcnn"),
                          str(tmp_path / "x.npy"), "--top-k", "1"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text, loaded = out.stdout.rsplit("LOADED", 1)
    assert json.loads(loaded) == []
    result = json.loads(text)
    assert [len(p["top_k"]) for p in result["predictions"]] == [1, 1, 1, 1]


def _rewrite(src, dst, *, manifest=None, drop=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if name == drop:
                continue
            data = zin.read(name)
            if name == "manifest.json" and manifest is not None:
                data = json.dumps(manifest(json.loads(data))).encode()
            zout.writestr(name, data)


def test_files_from_another_version_truncated_or_for_other_platforms_are_refused(trained, tmp_path):
    good = trained["tmp"] / "model.jaxcnn"
    _rewrite(good, tmp_path / "old.jaxcnn", manifest=lambda m: {**m, "jaxcnn_version": "0.0.1"})
    with pytest.raises(ExportError, match=r"old.jaxcnn: was written by jaxcnn 0.0.1, this is jaxcnn 0.1.0"):
        load_artifact(tmp_path / "old.jaxcnn")
    _rewrite(good, tmp_path / "format.jaxcnn", manifest=lambda m: {**m, "format": "jaxcnn-export/9"})
    with pytest.raises(ExportError, match="has format 'jaxcnn-export/9'; this jaxcnn reads 'jaxcnn-export/1'"):
        load_artifact(tmp_path / "format.jaxcnn")
    data = good.read_bytes()
    (tmp_path / "cut.jaxcnn").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="cut.jaxcnn: is truncated or not a jaxcnn export file"):
        load_artifact(tmp_path / "cut.jaxcnn")
    _rewrite(good, tmp_path / "noparams.jaxcnn", drop="params.npz")
    with pytest.raises(ExportError, match="is truncated or not a jaxcnn export file"):
        load_artifact(tmp_path / "noparams.jaxcnn")
    export_model(trained["config"], trained["tmp"] / "work", tmp_path / "tpu.jaxcnn", platforms=["tpu"])
    with pytest.raises(ExportError, match="was lowered for tpu, not for this machine's cpu"):
        load_artifact(tmp_path / "tpu.jaxcnn")


def test_wrong_input_shapes_are_refused(trained, tmp_path):
    artifact = load_artifact(trained["tmp"] / "model.jaxcnn")
    with pytest.raises(ExportError, match=r"inputs of shape \(2, 28, 28, 1\) do not fit the model's input "
                                          r"signature \(None, 8, 8, 1\)"):
        artifact.predict(np.zeros((2, 28, 28, 1), np.float32))
    np.save(tmp_path / "big.npy", np.zeros((28, 28, 3), np.float32))
    with pytest.raises(ExportError, match=r"big.npy: holds images of shape \(28, 28, 3\); the model takes raw "
                                          r"images of shape \(8, 8, 1\)"):
        read_inputs([tmp_path / "big.npy"], artifact.manifest)
    with pytest.raises(ExportError, match=r"unknown input type '.txt'"):
        read_inputs([tmp_path / "x.txt"], artifact.manifest)


def test_npy_values_outside_the_trained_range_are_refused_not_clipped(trained, tmp_path, capsys):
    manifest = trained["manifests"][0]
    images = load_digits().images[:3]  # raw intensities in [0, 1]
    sixteen = tmp_path / "sixteen.npy"
    np.save(sixteen, np.round(images * 16))  # scikit-learn's own 0..16 scale
    with pytest.raises(ExportError) as info:
        read_inputs([sixteen], manifest)
    assert str(info.value) == (f"{sixteen}: holds values from 0 to 16; the model takes raw images as floats in "
                               "[0, 1] or uint8 0..255: scale them (values are refused, not clipped)")
    negative = tmp_path / "negative.npy"
    np.save(negative, images - 0.5)  # already standardized, say
    with pytest.raises(ExportError, match=r"negative.npy: holds values from -0.5 to 0.5; the model takes raw images"):
        read_inputs([negative], manifest)
    wide_ints = tmp_path / "ints.npy"
    np.save(wide_ints, np.round(images * 255).astype(np.int64))  # 0..255, but not uint8
    with pytest.raises(ExportError, match=r"ints.npy: holds values from 0 to 255;"):
        read_inputs([wide_ints], manifest)
    nan = tmp_path / "nan.npy"
    np.save(nan, np.where(images > 0.5, np.nan, images))
    with pytest.raises(ExportError, match=r"nan.npy: holds values from nan to nan;"):
        read_inputs([nan], manifest)
    assert main(["predict", str(trained["tmp"] / "model.jaxcnn"), str(sixteen)]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err == f"error: {info.value}\n"
    # In range: floats in [0, 1] (a rounding's worth outside too), and uint8 0..255 scaled by 1/255.
    uint8 = tmp_path / "uint8.npy"
    np.save(uint8, np.round(images * 255).astype(np.uint8))
    near = tmp_path / "near.npy"
    np.save(near, np.clip(images * 1.0005 - 0.0002, -0.0002, None))
    inputs, _ = read_inputs([uint8, near], manifest)
    expected = trained["recipe"].apply(np.concatenate([np.round(images * 255) / 255, images * 1.0005 - 0.0002]))
    np.testing.assert_allclose(inputs, expected, rtol=1e-5, atol=1e-5)


def test_export_out_naming_a_folder_is_refused_before_any_work(tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    # No checkpoint at all: the folder is reported first, without lowering anything.
    code = main(["export", str(ROOT / "configs" / "digits_cnn.toml"), "--checkpoint", str(tmp_path / "no_run"),
                 "--out", str(folder)])
    out = capsys.readouterr()
    assert (code, out.out) == (1, "")
    assert out.err == f"error: {folder}: is a folder, not a file: name the export file to write, such as model.jaxcnn\n"
    assert sorted(tmp_path.rglob("*")) == [folder]  # nothing written, no temporary file
    (tmp_path / "a_file").write_text("x")
    code = main(["export", str(ROOT / "configs" / "digits_cnn.toml"), "--checkpoint", str(tmp_path / "no_run"),
                 "--out", str(tmp_path / "a_file" / "model.jaxcnn")])
    assert code == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'a_file' / 'model.jaxcnn'}: cannot create its folder: File exists\n"


def test_a_failed_export_write_is_one_line_and_leaves_no_temporary_file(trained, tmp_path, monkeypatch):
    import errno

    def disk_full(self, name, data, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", disk_full)
    out = tmp_path / "out" / "model.jaxcnn"
    with pytest.raises(ExportError) as info:
        export_model(trained["config"], trained["tmp"] / "work", out, platforms=["cpu"])
    assert str(info.value) == f"{out}: cannot write the export file: No space left on device"
    assert list((tmp_path / "out").iterdir()) == []


def test_export_and_predict_commands(trained, tmp_path, capsys):
    out = tmp_path / "cli.jaxcnn"
    assert main(["export", str(trained["config"]), "--checkpoint", str(trained["tmp"] / "work"),
                 "--out", str(out), "--platforms", "cpu,cuda"]) == 0
    assert "lowered for cpu, cuda" in capsys.readouterr().out
    np.save(tmp_path / "x.npy", load_digits().images[:2])
    assert main(["predict", str(out), str(tmp_path / "x.npy"), "--top-k", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)["predictions"]) == 2
    assert main(["export", str(trained["config"]), "--checkpoint", str(tmp_path), "--out", str(out)]) == 1
    assert "holds no checkpoint" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "missing.jaxcnn"), str(tmp_path / "x.npy")]) == 1
    assert "missing.jaxcnn: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["export", str(trained["config"]), "--checkpoint", "x", "--out", "y", "--platforms", "metal"])
    assert info.value.code == 2


def test_an_exported_model_compiles_once_however_often_it_predicts(trained, caplog):
    """README: the exported forward pass runs in fixed-size jitted batches; repeated calls (any number
    of images of at least one batch, or the same small batch again) never compile again."""
    artifact = load_artifact(trained["tmp"] / "model.jaxcnn")
    images = trained["test"].images
    caplog.set_level(logging.WARNING)

    def compilations(count):
        caplog.clear()
        artifact.predict(images[:count], batch_size=32)
        return sum(r.getMessage().startswith("Compiling ") for r in caplog.records)

    with jax.log_compiles():
        assert [compilations(count) for count in (37, 32, 64, 100, 37)] == [1, 0, 0, 0, 0]
        assert [compilations(3) for _ in range(3)][1:] == [0, 0]
