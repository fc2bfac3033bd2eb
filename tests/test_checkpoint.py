"""Checkpoints: replacing a step's checkpoint never leaves neither on disk (also when the process
dies in between), and the settings comparison names every key that differs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import jaxcnn
from jaxcnn.checkpoint import Checkpoints, settings_differences
from jaxcnn.errors import CheckpointError
from jaxcnn.layers import Dense
from jaxcnn.train import compile, params_sha256

from conftest import ROOT


def _compiled():
    return compile(jaxcnn.Sequential([Dense(3, input_shape=(4,))]), "sgd")


def test_a_checkpoint_of_the_same_step_is_replaced(tmp_path):
    """A run resumed from before a step it had reached reaches that step again."""
    compiled = _compiled()
    checkpoints = Checkpoints(tmp_path / "c", fingerprint="f")
    checkpoints.save(5, compiled.init(0), {"n": 1})
    other = compiled.init(1)
    checkpoints.save(5, other, {"n": 2})
    state, record = checkpoints.restore(compiled.abstract_state())
    assert record["n"] == 2 and params_sha256(state.params) == params_sha256(other.params)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["5"]


# A process that saves step 5, then replaces it and dies (os._exit: no clean-up runs) at a point
# of the replacement: after the old one is renamed aside ("aside"), or once the new one is
# complete but before the old one is deleted ("written").
_DIES = textwrap.dedent("""
    import os, sys, shutil
    import jaxcnn
    from jaxcnn import checkpoint
    from jaxcnn.layers import Dense
    from jaxcnn.train import compile, params_sha256

    folder, when = sys.argv[1], sys.argv[2]
    compiled = compile(jaxcnn.Sequential([Dense(3, input_shape=(4,))]), "sgd")
    checkpoints = checkpoint.Checkpoints(folder, fingerprint="f")
    checkpoints.save(5, compiled.init(0), {"n": 1})
    print(params_sha256(compiled.init(0).params), params_sha256(compiled.init(1).params))
    sys.stdout.flush()
    if when == "aside":
        checkpoints._manager.save = lambda *a, **k: os._exit(9)
    else:
        checkpoint.shutil = type("S", (), {"rmtree": staticmethod(lambda *a, **k: os._exit(9))})
    checkpoints.save(5, compiled.init(1), {"n": 2})
""")


@pytest.mark.parametrize("when,survivor", [("aside", 1), ("written", 2)])
def test_a_process_killed_while_replacing_a_checkpoint_leaves_one_of_the_two(tmp_path, when, survivor):
    folder = tmp_path / "c"
    run = subprocess.run([sys.executable, "-c", _DIES, str(folder), when], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 9, run.stderr
    old, new = run.stdout.split()
    assert any(p.name.startswith(".replaced-") for p in folder.iterdir())  # it died mid-replacement
    compiled = _compiled()
    state, record = Checkpoints(folder, fingerprint="f").restore(compiled.abstract_state())
    assert record["n"] == survivor
    assert params_sha256(state.params) == (old if survivor == 1 else new)
    assert sorted(p.name for p in folder.iterdir()) == ["5"]  # the one renamed aside is cleaned up


def test_settings_differences_name_every_key():
    saved = {"train": {"seed": 3, "optimizer": {"name": "sgd", "momentum": 0.9}, "metrics": ["accuracy"]},
             "data": {"validation": 0.1}}
    now = {"train": {"seed": 3, "optimizer": {"name": "adam"}, "metrics": ("accuracy",)},
           "data": {"validation": 0.1, "limit": 100}}
    assert settings_differences(saved, now) == [
        "data.limit (=unset in the checkpoint, 100 now)",
        "train.optimizer.momentum (=0.9 in the checkpoint, unset now)",
        "train.optimizer.name (='sgd' in the checkpoint, 'adam' now)",
    ]
    assert settings_differences(saved, saved) == []


def test_a_checkpoint_without_settings_is_refused_when_settings_are_compared(tmp_path):
    compiled = _compiled()
    Checkpoints(tmp_path / "c", fingerprint="f").save(5, compiled.init(0), {})
    _, record = Checkpoints(tmp_path / "c", fingerprint="f").restore(compiled.abstract_state())
    assert record["step"] == 5 and record["settings"] is None  # readable where settings are not compared
    with pytest.raises(CheckpointError, match=r"c/5: records no settings of its run"):
        Checkpoints(tmp_path / "c", fingerprint="f", settings={"train": {}}).restore(compiled.abstract_state())
