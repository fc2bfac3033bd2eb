"""Regenerate the keras.applications fixtures: ``to_json()`` and Keras's own figures.

Run (Keras 3 with the JAX backend; Keras is needed only here, never by jaxcnn)::

    pip install "jaxcnn[keras]"        # or: pip install keras
    KERAS_BACKEND=jax python tests/data/keras_applications/make_fixtures.py [NAME ...]

For every architecture of ``keras.applications`` (or the NAMEs given) it builds the model with
``weights=None`` at its default input size (224x224 where it leaves the size free: MobileNetV3)
and at the smallest size it accepts among
:data:`SMALL_SIZES` (32x32 for most; 71x71 for Xception, 75x75 for the Inceptions), and writes
``<Name>.json.gz``: a gzip-compressed JSON object::

    {"architecture": "ResNet50", "keras_version": "3.x", "backend": "jax",
     "builds": {"default": BUILD, "small": BUILD}}

    BUILD = {"input_shape": [H, W, C], "json": "<model.to_json() text>",
             "layers": [{"name", "class", "output_shape", "params"}, ...],   # summary rows
             "layer_count": len(model.layers),  # operations (x + y) are rows but not layers
             "nodes": <number of nodes of the graph, InputLayer included>,
             "total": N, "trainable": N, "non_trainable": N,
             "summary": "<model.summary() text, Keras's own column widths>"}

``nested_MobileNetV2.json.gz`` holds one more model of the same form: a MobileNetV2 base
(``include_top=False``) used as a layer inside a Sequential, as transfer-learning notebooks write it.
A failure to build one architecture is printed and the others go on; the exit status counts them.
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ["COLUMNS"] = "250"  # rich prints the summary this wide: nothing cut off

import keras
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
#: The default size where an architecture leaves height and width free (MobileNetV3's
#: documented default, 224x224).
DEFAULT_SIZE = 224
#: The small input sizes tried in order; the first one an architecture accepts is kept.
SMALL_SIZES = (32, 71, 75)


def architectures() -> list[str]:
    """Every model constructor of ``keras.applications`` (its CamelCase names)."""
    return sorted(name for name in dir(keras.applications) if name[:1].isupper())


def figures(model: keras.Model) -> dict:
    """Keras's figures of a built ``model``, one row per operation as ``model.summary()`` prints
    them (``model.operations``: the layers, and operations such as ``x + y``, which are not layers)."""
    # A Sequential's graph is the Functional it holds (InputLayer included).
    graph = model._functional if isinstance(model, keras.Sequential) else model
    layers = []
    for operation in graph.operations:
        output = operation.output
        shape = [t.shape for t in output] if isinstance(output, (list, tuple)) else output.shape
        layers.append({
            "name": operation.name,
            "class": type(operation).__name__,
            "output_shape": json.loads(json.dumps(shape)),
            "params": int(operation.count_params()) if hasattr(operation, "count_params") else 0,
        })
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    non_trainable = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    lines: list[str] = []
    model.summary(print_fn=lambda text, **_: lines.append(text))
    return {
        "input_shape": list(model.input_shape[1:]),
        "json": model.to_json(),
        "layers": layers,
        "layer_count": len(model.layers),
        "nodes": int(sum(len(nodes) for nodes in graph._nodes_by_depth.values())),
        "total": int(model.count_params()),
        "trainable": trainable,
        "non_trainable": non_trainable,
        "summary": "\n".join(lines),
    }


def build(name: str, size: int | None) -> dict:
    constructor = getattr(keras.applications, name)
    shape = None if size is None else (size, size, 3)
    model = constructor(weights=None, input_shape=shape)
    try:
        return figures(model)
    finally:
        del model
        keras.backend.clear_session()
        gc.collect()


def small(name: str) -> dict:
    errors = []
    for size in SMALL_SIZES:
        try:
            return build(name, size)
        except ValueError as error:
            errors.append(f"{size}: {error}")
    raise ValueError("; ".join(errors))


def nested() -> dict:
    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3))
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        base,
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, activation="softmax"),
    ], name="transfer")
    return figures(model)


def write(path: pathlib.Path, doc: dict) -> None:
    path.write_bytes(gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), mtime=0))


def main(names: list[str]) -> int:
    """Write the fixtures of ``names`` (every architecture and the nested model where none; the
    name ``nested`` alone writes the nested model only)."""
    header = {"keras_version": keras.__version__, "backend": keras.backend.backend()}
    failed = []
    for name in [n for n in names if n != "nested"] or ([] if names else architectures()):
        start = time.perf_counter()
        try:
            default = build(name, None)
            if None in default["input_shape"]:  # MobileNetV3 leaves height and width free
                default = build(name, DEFAULT_SIZE)
            builds = {"default": default, "small": small(name)}
        except Exception as error:  # noqa: BLE001 - report and go on with the others
            print(f"{name}: FAILED {type(error).__name__}: {error}", flush=True)
            failed.append(name)
            continue
        path = HERE / f"{name}.json.gz"
        write(path, {"architecture": name, **header, "builds": builds})
        print(f"{name}: {len(builds['default']['layers'])} layers, "
              f"{builds['default']['total']:,} params, small {builds['small']['input_shape']}, "
              f"{path.stat().st_size / 1024:.0f} KiB, {time.perf_counter() - start:.0f} s", flush=True)
    if not names or "nested" in names:
        write(HERE / "nested_MobileNetV2.json.gz",
              {"architecture": "nested_MobileNetV2", **header, "builds": {"small": nested()}})
    if failed:
        print("failed:", ", ".join(failed))
    return len(failed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
