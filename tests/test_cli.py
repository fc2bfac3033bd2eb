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
    try:
        code = main(list(argv))
    except KeyboardInterrupt:  # would end the whole pytest session
        pytest.fail("KeyboardInterrupt escaped jaxcnn.cli.main")
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


def test_summary_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # the terminal's width: wide enough for every formula on one line
    code, out, _ = run(capsys, "summary", str(CONFIGS / "lenet5.toml"), "--columns", "receptive_field,formula")
    assert code == 0 and "Receptive field" in out and "6*5*5*1 + 6 = 156" in out
    assert max(map(len, out.splitlines())) < 300
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run(capsys, "summary", str(CONFIGS / "lenet5.toml"), "--columns", "formula")
    # Layer (type), Output Shape and Param # take 39 + 26 + 10 characters: the formula gets its minimum, 24.
    assert code == 0 and max(map(len, out.splitlines())) == 39 + 26 + 10 + 24


def test_check_succeeds_with_exit_0(capsys):
    code, out, _ = run(capsys, "check", str(CONFIGS / "vgg16.toml"))
    assert code == 0
    assert "22 layers of 'vgg16' proved with jax.eval_shape for any batch size; 138,357,544 params" in out


def test_check_of_an_impossible_model_exits_1_with_the_message_naming_the_file(capsys):
    path = str(CONFIGS / "cifar_cnn.toml")
    code, out, err = run(capsys, "check", path, "--input-shape", "4,4,3")
    assert code == 1 and out == ""
    assert err == (f"error: {path}: layer 5 'max_pooling2d_2' (MaxPooling2D): the pool window's height 2 is "
                   "larger than the input height 1 with padding='valid': height = ceil((1 - 2 + 1) / 2) = 0\n")


@pytest.mark.parametrize("command", ["check", "summary"])
def test_shape_errors_in_a_file_name_the_file(capsys, tmp_path, command):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[layers]]\ntype = "Conv2D"\nfilters = 4\nkernel_size = 9\ninput_shape = [4, 4, 1]\n')
    code, out, err = run(capsys, command, str(bad))
    assert code == 1 and out == ""
    assert err == (f"error: {bad}: layer 0 'conv2d' (Conv2D): the kernel window's height 9 is larger than the "
                   "input height 4 with padding='valid': height = ceil((4 - 9 + 1) / 1) = -4\n")
    keras = str(KERAS_FIXTURES / "mixed.json")
    code, out, err = run(capsys, command, keras, "--input-shape", "4,4,4")
    assert code == 1 and err.startswith(f"error: {keras}: layer 3 'conv2d_1' (Conv2D): the kernel window's height 5")


@pytest.mark.parametrize("command", ["check", "summary"])
def test_an_error_of_the_proof_itself_names_the_file(capsys, monkeypatch, command):
    import jaxcnn.check
    import jaxcnn.summary
    from jaxcnn.errors import ShapeMismatchError

    def disagree(model, **kwargs):  # what check() raises when jax.eval_shape and a formula disagree
        raise ShapeMismatchError("jax.eval_shape gives (None, 9), the formula (None, 10)", index=7,
                                 layer_name="dense_1", layer_type="Dense")

    monkeypatch.setattr(jaxcnn.check, "check", disagree)
    path = str(CONFIGS / "cifar_cnn.toml")
    code, out, err = run(capsys, command, path)
    assert (code, out) == (1, "")
    assert err == f"error: {path}: layer 7 'dense_1' (Dense): jax.eval_shape gives (None, 9), the formula (None, 10)\n"


@pytest.mark.parametrize("command", ["check", "summary"])
def test_a_toml_without_input_shape_gets_toml_advice(capsys, tmp_path, command):
    bad = tmp_path / "shapeless.toml"
    bad.write_text('[[layers]]\ntype = "Conv2D"\nfilters = 4\nkernel_size = 3\n')
    code, out, err = run(capsys, command, str(bad))
    assert code == 1 and out == ""
    assert err == (f"error: {bad}: key `input_shape`: the model has no input shape: give `input_shape = [H, W, C]` "
                   'on the first [[layers]] table, or start with an Input table (`type = "Input"`, '
                   "`shape = [H, W, C]`), or give `input_shape = [H, W, C]` in [model]\n")
    code, out, _ = run(capsys, command, str(bad), "--input-shape", "8,8,1")  # the way out for a Keras file
    assert code == 0
    if command == "summary":
        assert "conv2d (Conv2D)              (None, 6, 6, 4)" in out
    else:  # and "1 layer", not "1 layers"
        assert out.startswith(f"ok: {bad}: 1 layer of 'sequential' proved with jax.eval_shape for any batch size; "
                              "40 params (40 trainable, 0 non-trainable)")  # Keras: 4*3*3*1 + 4


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


# --------------------------------------------------------------------------------------------
# No tracebacks: a closed pipe, Ctrl-C, a failed write.


def test_a_closed_stdout_pipe_exits_quietly_as_unix_tools_do():
    read, write = os.pipe()
    os.close(read)  # `jaxcnn summary ... | head` once head has gone: every write fails with EPIPE
    try:
        out = subprocess.run([sys.executable, "-m", "jaxcnn", "summary", str(CONFIGS / "vgg16.toml")],
                             stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        os.close(write)
    assert out.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored" at shutdown
    assert out.returncode == 141  # 128 + SIGPIPE, as a shell reports `yes | head`


@pytest.mark.parametrize("command", [["summary", "x.toml"], ["check", "x.toml"],
                                     ["predict", "m.jaxcnn", "x.npy"]])
def test_ctrl_c_prints_one_line_and_exits_130(capsys, monkeypatch, command):
    import jaxcnn.artifact
    import jaxcnn.check
    import jaxcnn.summary

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    for module, name in ((jaxcnn.summary, "summarize_file"), (jaxcnn.check, "check_file"),
                         (jaxcnn.artifact, "predict_files")):
        monkeypatch.setattr(module, name, interrupted)
    code, out, err = run(capsys, *command)
    assert (code, out, err) == (130, "", f"jaxcnn {command[0]}: interrupted\n")


def test_ctrl_c_during_training_says_where_the_run_resumes(capsys, monkeypatch, tmp_path):
    import jaxcnn.fit

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jaxcnn.fit, "train_and_evaluate", interrupted)
    workdir = tmp_path / "run"
    code, out, err = run(capsys, "train", "configs/digits_cnn.toml", "--workdir", str(workdir))
    assert (code, out) == (130, "")
    assert err == (f"jaxcnn train: interrupted before the first checkpoint was written to {workdir / 'checkpoints'}; "
                   "the same command starts the run again\n")
    for name in ("20", "140", "60", "200.orbax-checkpoint-tmp-1700000000"):  # the last: a save cut short
        (workdir / "checkpoints" / name).mkdir(parents=True)
    code, out, err = run(capsys, "train", "configs/digits_cnn.toml", "--workdir", str(workdir))
    assert (code, out) == (130, "")
    assert err == ("jaxcnn train: interrupted; the same command resumes the run from the checkpoint of step 140 in "
                   f"{workdir / 'checkpoints' / '140'}\n")


def test_ctrl_c_during_training_with_the_default_workdir(capsys, monkeypatch, tmp_path):
    import jaxcnn.fit

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jaxcnn.fit, "train_and_evaluate", interrupted)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "digits_cnn" / "checkpoints" / "7").mkdir(parents=True)
    code, _, err = run(capsys, "train", str(CONFIGS / "digits_cnn.toml"))
    assert code == 130
    assert err.endswith(f"from the checkpoint of step 7 in {os.path.join('runs', 'digits_cnn', 'checkpoints', '7')}\n")


def test_an_os_error_writing_an_output_is_one_line_naming_the_file(capsys, monkeypatch):
    import errno

    import jaxcnn.fit

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.jsonl")

    monkeypatch.setattr(jaxcnn.fit, "train_and_evaluate", disk_full)
    code, out, err = run(capsys, "train", "configs/digits_cnn.toml", "--workdir", "runs/x")
    assert (code, out, err) == (1, "", "error: runs/x/metrics.jsonl: No space left on device\n")


# --------------------------------------------------------------------------------------------
# --version, python -m jaxcnn, help, --quiet.


def test_version(capsys):
    from jaxcnn import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"jaxcnn {__version__}\n"


def test_python_dash_m_jaxcnn_is_the_command():
    from jaxcnn import __version__

    out = subprocess.run([sys.executable, "-m", "jaxcnn", "--version"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (out.returncode, out.stdout, out.stderr) == (0, f"jaxcnn {__version__}\n", "")
    out = subprocess.run([sys.executable, "-m", "jaxcnn", "check", str(CONFIGS / "lenet5.toml")],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and out.stdout.startswith(f"ok: {CONFIGS / 'lenet5.toml'}: 8 layers of 'lenet5'")


def _parsers():
    import argparse

    from jaxcnn.cli import _parser

    top = _parser()
    (sub,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return {"jaxcnn": top, **{f"jaxcnn {name}": parser for name, parser in sub.choices.items()}}, sub


def test_every_option_and_subcommand_has_help():
    parsers, sub = _parsers()
    assert set(parsers) == {"jaxcnn", "jaxcnn summary", "jaxcnn check", "jaxcnn train", "jaxcnn export",
                            "jaxcnn predict", "jaxcnn info"}
    missing = [f"{prog} {action.option_strings or action.dest}" for prog, parser in parsers.items()
               for action in parser._actions if not (action.help or "").strip()]
    assert missing == []
    assert all((choice.help or "").strip() for choice in sub._choices_actions)  # the command list


def test_predict_help_states_the_input_conventions(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "floats in [0, 1], or uint8 0..255. Float values outside [0, 1] are refused" in text
    assert "resized bilinearly to the raw height and width" in text
    assert "zero-padded centred, or resized bilinearly" in text


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_training_still_prints_the_final_result(capsys, monkeypatch, tmp_path, quiet):
    import jaxcnn.fit

    calls = []

    def fake(config, workdir, **kwargs):
        calls.append((config, workdir, kwargs["progress"]))
        return {"test_accuracy": 0.98612, "test_loss": 0.04123, "steps": 600, "train_seconds": 5.5}

    monkeypatch.setattr(jaxcnn.fit, "train_and_evaluate", fake)
    workdir = tmp_path / "x"
    code, out, _ = run(capsys, "train", "configs/digits_cnn.toml", "--workdir", str(workdir),
                       *(["--quiet"] if quiet else []))
    assert code == 0 and calls == [("configs/digits_cnn.toml", str(workdir), not quiet)]
    # Without --quiet the fit loop prints its own final line (with the progress, on stderr).
    assert out == (f"test accuracy 0.9861, test loss 0.0412 (results in {workdir / 'results.json'})\n"
                   if quiet else "")
