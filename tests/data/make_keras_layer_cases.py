"""Regenerate ``keras_layer_cases.json``: the shape cases of Keras's own layer tests, with Keras's figures.

Run (Keras 3 with the JAX backend; Keras is needed only here)::

    pip install "jaxcnn[keras]" pytest
    KERAS_BACKEND=jax python tests/data/make_keras_layer_cases.py

Keras's layer tests call ``self.run_layer_test(layer_cls, init_kwargs, input_shape=...,
expected_output_shape=..., expected_num_trainable_weights=...)``. This script runs the test modules
of the layers jaxcnn implements (:data:`TEST_MODULES`, as installed with Keras) with that method
replaced by a recorder, keeps the cases of the classes of :data:`CLASSES` whose arguments are plain
JSON, and adds what Keras computes for each (the layer built on a symbolic input of that shape)::

    {"keras_version": "3.x", "cases": [
        {"test": "keras/src/layers/...::Test::test_x", "class": "Conv2D", "init_kwargs": {...},
         "input_shape": [2, 5, 5, 3] or [[...], [...]] (merging layers),
         "expected_output_shape": [...] or null, "expected_num_trainable_weights": n or null,
         "expected_num_non_trainable_weights": n or null,
         "keras": {"output_shape": [...], "params": n, "trainable_params": n}
                  or {"error": "ValueError: ..."} (Keras refuses the case)}, ...]}
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import types

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import numpy as np
import pytest
from keras.src.testing import test_case

HERE = pathlib.Path(__file__).resolve().parent
SRC = pathlib.Path(keras.__file__).resolve().parent / "src" / "layers"

#: The layer classes of jaxcnn issue 12 and those jaxcnn had before.
CLASSES = frozenset({
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
    "ZeroPadding2D", "Cropping2D", "Reshape", "Permute", "UpSampling2D", "Flatten",
    "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Dense",
    "LayerNormalization", "GroupNormalization", "Normalization", "Rescaling", "BatchNormalization",
    "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Activation",
    "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "Dropout",
    "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
})
#: Keras's test modules of those classes (under keras/src/layers).
TEST_MODULES = (
    "merging/merging_test.py",
    "reshaping/zero_padding2d_test.py", "reshaping/cropping2d_test.py", "reshaping/reshape_test.py",
    "reshaping/permute_test.py", "reshaping/up_sampling2d_test.py", "reshaping/flatten_test.py",
    "convolutional/conv_test.py", "convolutional/depthwise_conv_test.py",
    "convolutional/separable_conv_test.py", "convolutional/conv_transpose_test.py",
    "core/dense_test.py",
    "normalization/layer_normalization_test.py", "normalization/group_normalization_test.py",
    "normalization/batch_normalization_test.py",
    "preprocessing/normalization_test.py", "preprocessing/rescaling_test.py",
    "activations/relu_test.py", "activations/leaky_relu_test.py", "activations/prelu_test.py",
    "activations/elu_test.py", "activations/softmax_test.py", "activations/activation_test.py",
    "regularization/spatial_dropout_test.py", "regularization/gaussian_noise_test.py",
    "regularization/gaussian_dropout_test.py", "regularization/dropout_test.py",
    "pooling/max_pooling_test.py", "pooling/average_pooling_test.py",
    "pooling/global_average_pooling_test.py", "pooling/global_max_pooling_test.py",
)

RECORDED: list[dict] = []


def plain(value):
    """``value`` as plain JSON (tuples as lists), or raise TypeError/ValueError."""
    return json.loads(json.dumps(value))


def record(self, layer_cls, init_kwargs, input_shape=None, expected_output_shape=None,
           expected_num_trainable_weights=None, expected_num_non_trainable_weights=None, **_):
    if layer_cls.__name__ not in CLASSES or input_shape is None:
        return
    try:
        case = {
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0].split("layers/")[-1],
            "class": layer_cls.__name__,
            "init_kwargs": plain(init_kwargs),
            "input_shape": plain(input_shape),
            "expected_output_shape": plain(expected_output_shape),
            "expected_num_trainable_weights": expected_num_trainable_weights,
            "expected_num_non_trainable_weights": expected_num_non_trainable_weights,
        }
    except (TypeError, ValueError):
        return  # an initializer object, a dict of inputs, ...: not a plain case
    case["keras"] = figures(layer_cls, init_kwargs, input_shape)
    RECORDED.append(case)


def figures(layer_cls, init_kwargs, input_shape) -> dict:
    """Keras's output shape and parameter counts of the layer on a symbolic input."""
    try:
        layer = layer_cls(**init_kwargs)
        if isinstance(input_shape[0], (list, tuple)):
            output = layer([keras.KerasTensor(tuple(s)) for s in input_shape])
        else:
            output = layer(keras.KerasTensor(tuple(input_shape)))
        trainable = int(sum(np.prod(w.shape) for w in layer.trainable_weights))
        return {"output_shape": plain(output.shape), "params": int(layer.count_params()),
                "trainable_params": trainable}
    except Exception as error:  # noqa: BLE001 - Keras refuses the case: recorded as such
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}


def stub_test_only_imports() -> None:
    """Keras's repository ``conftest`` (``skip_if_backend``), which the test files import. Test
    modules that import ``tensorflow`` or ``grain`` (not Keras dependencies) are not collected:
    pytest reports them and the others run (``--continue-on-collection-errors``)."""
    conftest = types.ModuleType("conftest")
    conftest.skip_if_backend = lambda *args, **kwargs: pytest.mark.skip(reason="stub")
    sys.modules.setdefault("conftest", conftest)


def main() -> int:
    test_case.TestCase.run_layer_test = record
    stub_test_only_imports()
    paths = [str(SRC / module) for module in TEST_MODULES if (SRC / module).exists()]
    pytest.main([*paths, "-q", "-p", "no:cacheprovider", "-W", "ignore", "--no-header", "--continue-on-collection-errors"])
    unique = {json.dumps(case, sort_keys=True): case for case in RECORDED}
    doc = {"keras_version": keras.__version__, "backend": keras.backend.backend(),
           "cases": sorted(unique.values(), key=lambda c: (c["class"], c["test"], json.dumps(c)))}
    (HERE / "keras_layer_cases.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(doc['cases'])} cases of {len({c['class'] for c in doc['cases']})} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
