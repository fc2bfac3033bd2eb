"""The `jaxcnn` command: summary and check on TOML, JSON and Keras JSON, exit statuses 0, 1 and 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from jaxcnn.cli import main

from conftest import CONFIGS, KERAS_FIXTURES, ROOT


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_summary_text_of_a_toml_config(capsys):
    code, out, _ = run(capsys, "summary", str(CONFIGS / "cifar_cnn.toml"))
    assert code == 0
    assert out.startswith('Model: "cifar_cnn"\n')
    assert "dense (Dense)                  (None, 500)               512500" in out
    assert "Total params: 528,054" in out


def test_summary_of_keras_json_keeps_its_names(capsys):
    code, out, _ = run(capsys, "summary", str(KERAS_FIXTURES / "mixed.json"), "--format", "rich", "--flops")
    assert code == 0
    assert "FLOPs" in out and " Total params: 1,112 (4.34 KB)" in out


def test_summary_json_with_input_shape_override(capsys):
    code, out, _ = run(capsys, "summary", str(CONFIGS / "vgg16.toml"), "--input-shape", "64,64,3",
                       "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["input_shape"] == [None, 64, 64, 3]
    assert data["layers"][18]["output_shape"] == [None, 2048]


def test_summary_columns(capsys):
    code, out, _ = run(capsys, "summary", str(CONFIGS / "lenet5.toml"), "--columns", "receptive_field,formula")
    assert code == 0 and "Receptive field" in out and "6*5*5*1 + 6 = 156" in out


def test_check_succeeds_with_exit_0(capsys):
    code, out, _ = run(capsys, "check", str(CONFIGS / "vgg16.toml"))
    assert code == 0
    assert "22 layers of 'vgg16' proved with jax.eval_shape for any batch size; 138,357,544 params" in out


def test_check_of_an_impossible_model_exits_1_with_the_message(capsys):
    code, out, err = run(capsys, "check", str(CONFIGS / "cifar_cnn.toml"), "--input-shape", "4,4,3")
    assert code == 1 and out == ""
    assert err.startswith("error: layer 5 'max_pooling2d_2' (MaxPooling2D): the pool window's height 2 is "
                          "larger than the input height 1")


def test_a_bad_config_exits_1_naming_the_file(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[layers]]\ntype = "Conv2D"\nfilters = 0\nkernel_size = 3\ninput_shape = [8, 8, 1]\n')
    code, _, err = run(capsys, "check", str(bad))
    assert code == 1
    assert str(bad) in err and "layer 0" in err and "`filters` (=0) must be a positive integer" in err
    code, _, err = run(capsys, "summary", str(tmp_path / "missing.toml"))
    assert code == 1 and "missing.toml" in err


@pytest.mark.parametrize("argv", [[], ["summary"], ["check", "x.toml", "--input-shape", "a,b"],
                                  ["summary", "x.toml", "--format", "html"], ["frobnicate"],
                                  ["summary", "x.toml", "--columns", "colour"]])
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    capsys.readouterr()


@pytest.mark.slow
def test_the_installed_console_script(tmp_path):
    exe = shutil.which("jaxcnn")
    cmd = [exe] if exe else [sys.executable, "-m", "jaxcnn.cli"]
    out = subprocess.run([*cmd, "check", str(KERAS_FIXTURES / "tfkeras2_mnist_cnn.json")],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "1,199,882 params" in out.stdout
    out = subprocess.run([*cmd, "summary"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and "usage: jaxcnn" in out.stderr


@pytest.mark.slow
def test_the_fast_cpu_flags_are_opt_in_and_refused_once_jax_has_started(tmp_path):
    code = ("import os, jaxcnn.xla_flags as f; f.enable_fast_cpu(); f.enable_fast_cpu(); print(os.environ['XLA_FLAGS']);"
            "import jax; jax.numpy.zeros(1);"
            "os.environ['XLA_FLAGS'] = '';\n"
            "try:\n    f.enable_fast_cpu()\nexcept Exception as e:\n    print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "XLA_FLAGS": ""})
    lines = out.stdout.splitlines()
    assert lines[0] == "--xla_cpu_experimental_ynn_fusion_type=individual_dot"  # added once
    assert lines[1].startswith("JaxcnnError XLA flags must be set before JAX starts its backends")
    plain = subprocess.run([sys.executable, "-c", "import os, jaxcnn, jaxcnn.cli; print(repr(os.environ.get('XLA_FLAGS', '')))"],
                           capture_output=True, text=True, env={**os.environ, "XLA_FLAGS": ""})
    assert plain.stdout.strip() == "''"  # importing jaxcnn sets nothing
