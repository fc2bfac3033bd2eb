"""Every keras.applications architecture, trained weights in: Keras 3 builds it (``weights=None`` at its
smallest input size among 32, 71 and 75, BatchNormalization's statistics moved off 0 and 1), predicts
two images and saves the model; jaxcnn loads the ``.keras`` file and predicts the same images.

    KERAS_BACKEND=jax python tests/data/keras_weights/check_applications.py [NAME ...] [--out FILE]

Prints one JSON line per architecture: the input size, the largest absolute difference of the
outputs (probabilities: 1000 classes), whether top-1 is identical, jaxcnn's load time and the file's
size; exits 1 if any differs by more than 1e-5 or changes top-1. EfficientNetV2L does, at 32x32 with
random weights: its 1,030 layers amplify float32 rounding about 10x every 80 layers, with no jump at
any layer (experiments/results/efficientnetv2l_divergence.txt). Run by
tests/test_keras_weights.py::test_every_application_predicts_as_keras (JAXCNN_ALL_APPLICATIONS=1,
Keras installed): weights that size cannot be committed, so Keras writes them at test time.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import numpy as np

import jaxcnn

SIZES = (32, 71, 75)
TOLERANCE = 1e-5


def check(name: str, folder: str) -> dict:
    model, size = None, None
    for size in SIZES:
        try:
            model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
            break
        except ValueError:
            continue
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if weight.path.endswith("moving_mean"):
            weight.assign(np.asarray(weight.numpy()) + rng.normal(0, 0.05, weight.shape).astype(np.float32))
        elif weight.path.endswith("moving_variance"):
            weight.assign(np.asarray(weight.numpy()) * np.exp(rng.normal(0, 0.1, weight.shape)).astype(np.float32))
    images = rng.uniform(0, 255, (2, *model.input_shape[1:])).astype(np.float32)
    want = model.predict(images, verbose=0)
    path = os.path.join(folder, f"{name}.keras")
    model.save(path)
    del model
    keras.backend.clear_session()
    gc.collect()
    start = time.perf_counter()
    loaded = jaxcnn.load(path)
    seconds = time.perf_counter() - start
    compiled = jaxcnn.compile(loaded)
    got = np.asarray(compiled.predict(compiled.init(0), images))
    row = {"name": name, "size": size, "max_abs": float(np.abs(got - want).max()),
           "top1": bool((got.argmax(-1) == want.argmax(-1)).all()), "load_s": round(seconds, 2),
           "file_mb": round(os.path.getsize(path) / 1e6, 1)}
    os.remove(path)
    return row


def main(argv: list[str]) -> int:
    out = None
    if "--out" in argv:
        i = argv.index("--out")
        out, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    names = argv or sorted(n for n in dir(keras.applications) if n[:1].isupper())
    rows, failed = [], 0
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            row = check(name, folder)
            failed += row["max_abs"] > TOLERANCE or not row["top1"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    if out:
        with open(out, "w") as file:
            json.dump({"keras_version": keras.__version__, "rows": rows}, file, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
