"""One finite training step and an export of keras.applications architectures, in a process of its own.

Run:  python tests/data/keras_applications/step_and_export.py NAME [NAME ...]
(tests/test_keras_json.py runs one architecture per family, or the 41, over two processes, one per
core: a step's compilation takes 5 to 600 s on a 2-core CPU, mostly on one thread).

For each architecture, at the small input size Keras built it at (make_fixtures.py): the model read from
its Keras JSON, one SGD step on 2 random images (the loss finite, no non-finite value counted, every
updated weight finite, the step counter at 1), then its forward pass exported with ``jax.export`` for
a symbolic batch, as ``jaxcnn export`` does, serialized, reloaded, called on the same images and
compared with the jitted ``predict``. The export carries the initial weights: one step on 2 images
through BatchNormalization layers on 1x1 maps (the variance of two values, nearly 0) grows ResNet50V2's
first kernel to 2.6e7, and its predictions then overflow, as Keras's would. Prints one JSON line per
architecture: ``{"name", "loss", "nonfinite", "step", "finite_weights", "export_max_abs_diff",
"predict_max_abs", "seconds"}``, or ``{"name", "error"}`` (the exception in one line) and goes on.
"""

from __future__ import annotations

import os

# XLA's CPU compile time grows faster than the number of layers (NASNetMobile's step: 422 s at LLVM's
# default optimization level, under half at 0); this checks the step's values, not its speed.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import gzip
import json
import pathlib
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import jaxcnn
from jaxcnn.export import forward_function

HERE = pathlib.Path(__file__).resolve().parent


def step_and_export(name: str) -> dict:
    start = time.perf_counter()
    build = json.loads(gzip.decompress((HERE / f"{name}.json.gz").read_bytes()))["builds"]["small"]
    model = jaxcnn.from_keras_json(build["json"])
    compiled = jaxcnn.compile(model, {"name": "sgd", "learning_rate": 0.01})
    rng = np.random.default_rng(0)
    images = rng.random((2, *model.input_shape), np.float32)
    labels = rng.integers(0, model.output_shape[-1], size=2).astype(np.int32)
    initial = compiled.init(0)
    variables = {"params": initial.params, "batch_stats": initial.batch_stats}
    predicted = np.asarray(compiled.predict(initial, images))
    state, metrics = compiled.train_step(compiled.init(0), (images, labels))  # the step donates its state
    finite = all(bool(np.isfinite(np.asarray(leaf)).all()) for leaf in jax.tree.leaves((state.params, state.batch_stats)))
    leaves, treedef = jax.tree.flatten(variables)
    batch = jax.export.symbolic_shape("b")[0]
    exported = jax.export.export(jax.jit(forward_function(compiled, treedef)), platforms=("cpu",))(
        [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in leaves],
        jax.ShapeDtypeStruct((batch, *model.input_shape), jnp.float32))
    reloaded = jax.export.deserialize(exported.serialize())
    served = np.asarray(reloaded.call(leaves, images))
    return {"name": name, "loss": float(metrics.loss), "nonfinite": float(metrics.nonfinite),
            "step": int(state.step), "finite_weights": finite,
            "export_max_abs_diff": float(np.max(np.abs(served - predicted))),
            "predict_max_abs": float(np.max(np.abs(predicted))), "seconds": time.perf_counter() - start}


def main(names: list[str]) -> None:
    for name in names:
        try:
            result = step_and_export(name)
        except Exception as error:  # reported by name; the other architectures still run
            last = traceback.extract_tb(error.__traceback__)[-1]
            result = {"name": name, "error": f"{type(error).__name__}: {error} ({last.filename}:{last.lineno})"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
