"""jaxcnn.host: glibc malloc tuning, applied by the command, opted out by the environment."""

from __future__ import annotations

import os
import platform

import pytest

from jaxcnn import host


def test_malloc_tuning_is_applied_on_glibc_and_a_no_op_elsewhere(monkeypatch):
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert host.tune_malloc() is True  # every mallopt setting accepted
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert host.tune_malloc() is False


@pytest.mark.parametrize(("value", "requested"), [(None, True), ("1", True), ("0", False), ("no", False)])
def test_the_environment_opts_out(monkeypatch, value, requested):
    if value is None:
        monkeypatch.delenv(host.ENV, raising=False)
    else:
        monkeypatch.setenv(host.ENV, value)
    assert host.malloc_tuning_requested() is requested


_FAULTS = """
import json, resource, sys
from jaxcnn import host
if sys.argv[1] == "tuned":
    assert host.tune_malloc()
import numpy as np
import jaxcnn
from jaxcnn.layers import Conv2D, Dense, GlobalAveragePooling2D, Input
model = jaxcnn.Sequential([Input((64, 64, 3)), Conv2D(16, 3, padding="same", activation="relu"),
                           Conv2D(16, 3, padding="same", activation="relu"), GlobalAveragePooling2D(), Dense(10)])
compiled = jaxcnn.compile(model, "sgd", loss="sparse_categorical_crossentropy")
state = compiled.init(0)
batch = (np.zeros((256, 64, 64, 3), np.float32), np.zeros(256, np.int32))
for _ in range(3):
    state, metrics = compiled.train_step(state, batch)
    float(metrics.loss)
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    state, metrics = compiled.train_step(state, batch)
    float(metrics.loss)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(min(faults)))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_a_step_whose_temporaries_exceed_a_thread_heap_touches_no_new_pages_once_tuned():
    """A step at batch 256 on 64x64x16 maps holds over 64 MiB of temporaries, which XLA allocates from
    a worker thread: glibc maps such a block afresh in a thread's own arena at every step (49,159
    minor faults a step measured untuned, and with the settings before M_ARENA_MAX), and reuses it
    from the main arena once tuned (0). The fewest faults of three steps is compared: on a loaded
    machine one tuned step in three may still grow the heap (15,361 faults, averaged over three
    steps, while other heavy processes ran), which reuse does not prevent."""
    import json
    import subprocess
    import sys

    faults = {}
    for mode in ("default", "tuned"):
        run = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=300,
                             env={**os.environ, host.ENV: "0"})
        assert run.returncode == 0, run.stderr[-2000:]
        faults[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    assert faults["default"] > 10_000, faults  # the block really is mapped afresh without the tuning
    assert faults["tuned"] < 100, faults
