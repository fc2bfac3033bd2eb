"""The single-input layer kinds of issue 12 (reshaping, activations, regularization, normalization,
preprocessing, ConvNeXt's LayerScale): Keras's own layer-test shape cases through the Python API and
through Keras JSON, values against NumPy references written from Keras's definitions, the dropout-like
layers' statistics, and every refusal with its message.

Shape cases are copied from Keras 3's tests, keras/src/layers/<family>/<layer>_test.py (cited at each
case; Keras's input shapes there include the batch axis, dropped here). Parameter counts are Keras's:
its tests assert the number of weights, and their shapes follow from the layer's ``build`` (cited with
the arithmetic)."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

import jaxcnn
from jaxcnn import config
from jaxcnn.check import PROOF_LOWERING
from jaxcnn.errors import ImpossibleShapeError, LayerArgumentError, UnsupportedError
from jaxcnn.flax_module import build_module
from jaxcnn.layers import (ELU, AveragePooling2D, Conv2D, Cropping2D, Dropout, Flatten,
                           GaussianDropout, GaussianNoise, GlobalAveragePooling2D, GlobalMaxPooling2D,
                           GroupNormalization, LayerNormalization, LayerScale, LeakyReLU, MaxPooling2D, Normalization,
                           Permute, PReLU, ReLU, Rescaling, Reshape, Softmax, SpatialDropout2D, UpSampling2D,
                           ZeroPadding2D)


def model_of(layer, input_shape):
    return jaxcnn.Sequential([layer], input_shape=input_shape)


def figures(model):
    """``(output shape, trainable params, non-trainable params)`` of the model's one layer, proved."""
    model.check()
    (plan,) = model.plan()
    return plan.output_shape, plan.trainable_params, plan.non_trainable_params


def run(layer, x, *, train=False, params=None, seed=0):
    """The layer's output on ``x`` (batch axis first) and its variables."""
    x = np.asarray(x, np.float32)
    model = model_of(layer, x.shape[1:])
    module = build_module(model, PROOF_LOWERING)
    variables = module.init({"params": jax.random.key(0)}, x)
    if params is not None:
        name = model.layers[0].name
        variables = {**variables, "params": {name: {k: np.asarray(v, np.float32) for k, v in params.items()}}}
    if train:
        y, _ = module.apply(variables, x, train=True, rngs={"dropout": jax.random.key(seed)},
                            mutable=["batch_stats"])
    else:
        y = module.apply(variables, x)
    return np.asarray(y), variables


def keras3_json(class_name, layer_config, batch_shape, *, module="keras.layers"):
    """A Keras 3 ``Sequential.to_json()`` with an InputLayer and one layer, written by hand in the form
    Keras 3 writes (name, trainable, dtype policy, then the layer's own config)."""
    dtype = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
             "registered_name": None}
    return json.dumps({
        "module": "keras", "class_name": "Sequential", "registered_name": None,
        "config": {"name": "sequential", "trainable": True, "dtype": dtype, "layers": [
            {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
             "config": {"batch_shape": [None, *batch_shape], "dtype": "float32", "sparse": False,
                        "ragged": False, "name": "input_layer", "optional": False}},
            {"module": module, "class_name": class_name, "registered_name": None,
             "config": {"name": "layer", "trainable": True, "dtype": dtype, **layer_config}},
        ]},
        "keras_version": "3.11.3", "backend": "jax",
    })


def from_json(class_name, layer_config, batch_shape, **kwargs):
    return config.from_keras_json(keras3_json(class_name, layer_config, batch_shape, **kwargs), source="k.json")


# --------------------------------------------------------------------------------------------
# Keras's shape cases: (Python spec, Keras 3 JSON config, input shape, output shape, trainable,
# non-trainable).

KERAS_CASES = [
    # keras/src/layers/reshaping/zero_padding2d_test.py: (1, 2, 3, 4) padded ((1, 2), (3, 4)) keeps the
    # input at [1:-2, 3:-4]: 1 + 2 + 2 = 5 rows, 3 + 3 + 4 = 10 columns.
    (ZeroPadding2D(((1, 2), (3, 4))), ("ZeroPadding2D", {"padding": [[1, 2], [3, 4]],
                                                          "data_format": "channels_last"}),
     (2, 3, 4), (5, 10, 4), 0, 0),
    # same file, test_zero_padding_2d_with_same_padding: ((2, 2), (2, 2)), (2, 2) and 2 alike.
    (ZeroPadding2D((2, 2)), ("ZeroPadding2D", {"padding": [[2, 2], [2, 2]]}), (2, 3, 4), (6, 7, 4), 0, 0),
    (ZeroPadding2D(2), ("ZeroPadding2D", {"padding": [[2, 2], [2, 2]]}), (2, 3, 4), (6, 7, 4), 0, 0),
    # keras/src/layers/reshaping/cropping2d_test.py: input (3, 7, 9, 5), expected ranges of rows, columns.
    (Cropping2D(((1, 2), (3, 4))), ("Cropping2D", {"cropping": [[1, 2], [3, 4]]}), (7, 9, 5), (4, 2, 5), 0, 0),
    (Cropping2D((2, 2)), ("Cropping2D", {"cropping": [[2, 2], [2, 2]]}), (7, 9, 5), (3, 5, 5), 0, 0),
    (Cropping2D(2), ("Cropping2D", {"cropping": [[2, 2], [2, 2]]}), (7, 9, 5), (3, 5, 5), 0, 0),
    (Cropping2D(((0, 2), (0, 4))), ("Cropping2D", {"cropping": [[0, 2], [0, 4]]}), (7, 9, 5), (5, 5, 5), 0, 0),
    (Cropping2D(((1, 0), (3, 0))), ("Cropping2D", {"cropping": [[1, 0], [3, 0]]}), (7, 9, 5), (6, 6, 5), 0, 0),
    (Cropping2D(((1, 0), (3, 4))), ("Cropping2D", {"cropping": [[1, 0], [3, 4]]}), (7, 9, 5), (6, 2, 5), 0, 0),
    (Cropping2D(((1, 2), (3, 0))), ("Cropping2D", {"cropping": [[1, 2], [3, 0]]}), (7, 9, 5), (4, 6, 5), 0, 0),
    # keras/src/layers/reshaping/reshape_test.py
    (Reshape((8, 1)), ("Reshape", {"target_shape": [8, 1]}), (2, 4), (8, 1), 0, 0),
    (Reshape((8,)), ("Reshape", {"target_shape": [8]}), (2, 4), (8,), 0, 0),
    (Reshape((2, 4)), ("Reshape", {"target_shape": [2, 4]}), (8,), (2, 4), 0, 0),
    (Reshape((-1, 1)), ("Reshape", {"target_shape": [-1, 1]}), (2, 4), (8, 1), 0, 0),
    (Reshape((1, -1)), ("Reshape", {"target_shape": [1, -1]}), (2, 4), (1, 8), 0, 0),
    (Reshape((-1,)), ("Reshape", {"target_shape": [-1]}), (2, 4), (8,), 0, 0),
    (Reshape((2, -1)), ("Reshape", {"target_shape": [2, -1]}), (2, 4), (2, 4), 0, 0),
    (Reshape((-1, 8)), ("Reshape", {"target_shape": [-1, 8]}), (6, 4), (3, 8), 0, 0),
    (Reshape((-1, 8)), ("Reshape", {"target_shape": [-1, 8]}), (10, 4), (5, 8), 0, 0),
    # keras/src/layers/reshaping/permute_test.py
    (Permute((3, 1, 2)), ("Permute", {"dims": [3, 1, 2]}), (3, 5, 5), (5, 3, 5), 0, 0),
    (Permute((2, 1)), ("Permute", {"dims": [2, 1]}), (3, 5), (5, 3), 0, 0),
    # keras/src/layers/reshaping/up_sampling2d_test.py: (2, 11, 12, 2), size (2, 2) and (2, 3).
    (UpSampling2D((2, 2)), ("UpSampling2D", {"size": [2, 2], "data_format": "channels_last",
                                             "interpolation": "nearest"}), (11, 12, 2), (22, 24, 2), 0, 0),
    (UpSampling2D((2, 3)), ("UpSampling2D", {"size": [2, 3]}), (11, 12, 2), (22, 36, 2), 0, 0),
    (UpSampling2D((2, 2), interpolation="bilinear"),
     ("UpSampling2D", {"size": [2, 2], "interpolation": "bilinear"}), (11, 12, 2), (22, 24, 2), 0, 0),
    # keras/src/layers/activations/relu_test.py, leaky_relu_test.py, elu_test.py, softmax_test.py:
    # input (2, 3, 4), no weights.
    (ReLU(max_value=10, negative_slope=1, threshold=0.5),
     ("ReLU", {"max_value": 10.0, "negative_slope": 1.0, "threshold": 0.5}), (3, 4), (3, 4), 0, 0),
    (LeakyReLU(negative_slope=1), ("LeakyReLU", {"negative_slope": 1.0}), (3, 4), (3, 4), 0, 0),
    (ELU(), ("ELU", {"alpha": 1.0}), (3, 4), (3, 4), 0, 0),
    (Softmax(), ("Softmax", {"axis": -1}), (3, 4), (3, 4), 0, 0),
    # keras/src/layers/activations/prelu_test.py: input (2, 3, 4), shared_axes=1: PReLU.build gives
    # alpha the input shape (3, 4) with axis 1 set to 1: (1, 4) = 4 parameters.
    (PReLU(shared_axes=1), ("PReLU", {"alpha_initializer": {"module": "keras.initializers", "class_name": "Zeros",
                                                            "config": {}, "registered_name": None},
                                      "alpha_regularizer": None, "alpha_constraint": None, "shared_axes": [1]}),
     (3, 4), (3, 4), 4, 0),
    # the same file's correctness case: (2, 10, 5, 3), shared_axes=(1, 2): alpha (1, 1, 3) = 3.
    (PReLU(shared_axes=(1, 2)), ("PReLU", {"shared_axes": [1, 2]}), (10, 5, 3), (10, 5, 3), 3, 0),
    # keras/src/layers/regularization/*_test.py: input (2, 3), no weights.
    (Dropout(0.2), ("Dropout", {"rate": 0.2, "seed": None, "noise_shape": None}), (3,), (3,), 0, 0),
    (GaussianNoise(0.2), ("GaussianNoise", {"stddev": 0.2, "seed": None}), (3,), (3,), 0, 0),
    (GaussianDropout(0.2), ("GaussianDropout", {"rate": 0.2, "seed": None}), (3,), (3,), 0, 0),
    # spatial_dropout_test.py: (2, 3, 4, 5), rate 0.5.
    (SpatialDropout2D(0.5), ("SpatialDropout2D", {"rate": 0.5, "seed": None, "data_format": "channels_last"}),
     (3, 4, 5), (3, 4, 5), 0, 0),
    # keras/src/layers/normalization/layer_normalization_test.py: input (3, 4, 2): 2 trainable weights,
    # gamma and beta of shape (2,): 2*2 = 4; scale and center off on (3, 3): none; axis (-3, -2, -1) on
    # (2, 8, 8, 3): gamma, beta (8, 8, 3): 2*192 = 384.
    (LayerNormalization(), ("LayerNormalization", {
        "axis": -1, "epsilon": 0.001, "center": True, "scale": True, "rms_scaling": False,
        "beta_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {},
                             "registered_name": None},
        "gamma_initializer": {"module": "keras.initializers", "class_name": "Ones", "config": {},
                              "registered_name": None},
        "beta_regularizer": None, "gamma_regularizer": None, "beta_constraint": None, "gamma_constraint": None}),
     (4, 2), (4, 2), 4, 0),
    (LayerNormalization(scale=False, center=False), ("LayerNormalization", {"scale": False, "center": False}),
     (3,), (3,), 0, 0),
    (LayerNormalization(axis=(-3, -2, -1)), ("LayerNormalization", {"axis": [-3, -2, -1]}),
     (8, 8, 3), (8, 8, 3), 384, 0),
    # group_normalization_test.py: default groups=32 on (3, 4, 32): gamma, beta (32,) = 64; groups=4
    # on (3, 4, 4): 8.
    (GroupNormalization(), ("GroupNormalization", {"groups": 32, "axis": -1, "epsilon": 0.001, "center": True,
                                                   "scale": True}), (4, 32), (4, 32), 64, 0),
    (GroupNormalization(groups=4), ("GroupNormalization", {"groups": 4}), (4, 4), (4, 4), 8, 0),
    # keras/src/layers/preprocessing/rescaling_test.py: (2, 3), no weights.
    (Rescaling(1.0 / 255, offset=0.5), ("Rescaling", {"scale": 1.0 / 255, "offset": 0.5}), (3,), (3,), 0, 0),
    # keras/src/layers/preprocessing/normalization_test.py, test_normalization_basics: (2, 3), axis -1:
    # 3 non-trainable weights, mean (3,), variance (3,), count (): 3 + 3 + 1 = 7 parameters; with mean
    # and variance given, no weights.
    (Normalization(axis=-1), ("Normalization", {"axis": [-1], "invert": False, "mean": None, "variance": None}),
     (3,), (3,), 0, 7),
    (Normalization(axis=-1, mean=[0.5, 0.2, -0.1], variance=[0.1, 0.2, 0.3]),
     ("Normalization", {"axis": [-1], "invert": False, "mean": [0.5, 0.2, -0.1], "variance": [0.1, 0.2, 0.3]}),
     (3,), (3,), 0, 0),
    # keras/src/applications/convnext.py: LayerScale(1e-6, projection_dim) after the block's 4x
    # Dense back to projection_dim (96 in ConvNeXtTiny's first stage): gamma (96,) = 96.
    (LayerScale(1e-6, 96), ("LayerScale", {"init_values": 1e-6, "projection_dim": 96}),
     (56, 56, 96), (56, 56, 96), 96, 0),
]


@pytest.mark.parametrize(("spec", "keras", "input_shape", "output_shape", "trainable", "non_trainable"),
                         KERAS_CASES, ids=[f"{c[0].type}-{i}" for i, c in enumerate(KERAS_CASES)])
def test_keras_layer_test_cases_through_the_api_and_keras_json(spec, keras, input_shape, output_shape, trainable,
                                                              non_trainable):
    assert figures(model_of(spec, input_shape)) == (output_shape, trainable, non_trainable)
    class_name, layer_config = keras
    module = "keras.src.applications.convnext" if class_name == "LayerScale" else "keras.layers"
    model = from_json(class_name, layer_config, input_shape, module=module)
    assert same(model.layers[0], spec)
    assert figures(model) == (output_shape, trainable, non_trainable)


def same(a, b):
    """The same kind with the same arguments (names aside)."""
    return a.type == b.type and a.arguments() == b.arguments()


def test_tf_keras2_forms_are_read():
    # tf.keras 2 writes LeakyReLU(alpha), a built LayerNormalization's axis as a positive list, and
    # ZeroPadding2D's padding as nested lists.
    assert same(from_json("LeakyReLU", {"alpha": 0.1}, (3,)).layers[0], LeakyReLU(negative_slope=0.1))
    model = from_json("LayerNormalization", {"axis": [3], "epsilon": 1e-6}, (4, 4, 8))
    assert figures(model) == ((4, 4, 8), 16, 0)
    assert same(from_json("ZeroPadding2D", {"padding": [[0, 1], [0, 1]]}, (5, 5, 1)).layers[0],
                ZeroPadding2D(((0, 1), (0, 1))))


def test_batch_normalization_center_and_scale_false_from_keras_json():
    # Keras counts gamma only with scale, beta only with center, always the moving mean and variance.
    model = from_json("BatchNormalization", {"axis": -1, "momentum": 0.99, "epsilon": 0.001, "center": False,
                                             "scale": False}, (4, 4, 8))
    assert figures(model) == ((4, 4, 8), 0, 16)
    model = from_json("BatchNormalization", {"center": True, "scale": False}, (4, 4, 8))
    assert figures(model) == ((4, 4, 8), 8, 16)


def test_the_new_kinds_round_trip_through_toml(tmp_path):
    model = jaxcnn.Sequential([
        ZeroPadding2D(((0, 1), (2, 3)), input_shape=(6, 6, 4)), Cropping2D(1),
        UpSampling2D(2, interpolation="bilinear"),
        ReLU(max_value=6), LeakyReLU(0.1), PReLU(shared_axes=[1, 2]), ELU(0.5), Softmax(axis=[1, 2]),
        SpatialDropout2D(0.1), Dropout(0.2, noise_shape=[None, 1, 1, None]), GaussianNoise(0.1), GaussianDropout(0.1),
        LayerNormalization(epsilon=1e-6), GroupNormalization(2), Normalization(),
        Normalization(mean=[1, 2, 3, 4], variance=[1, 4, 9, 16]), Rescaling([1, 2, 3, 4], offset=-1),
        LayerScale(0.5, 4), Permute((3, 1, 2)), Reshape((-1, 4)),
    ])
    path = tmp_path / "m.toml"
    config.save(model, path)
    again = config.load(path)
    assert again.layers == model.layers
    assert figures_all(again) == figures_all(model)


def figures_all(model):
    model.check()
    return [(p.output_shape, p.trainable_params, p.non_trainable_params) for p in model.plan()]


# --------------------------------------------------------------------------------------------
# Values against NumPy references written from Keras's definitions.

RNG = np.random.default_rng(12)


def test_zero_padding_and_cropping_values():
    x = RNG.normal(size=(1, 2, 3, 4)).astype(np.float32)
    y, _ = run(ZeroPadding2D(((1, 2), (3, 4))), x)
    np.testing.assert_array_equal(y[:, 1:-2, 3:-4, :], x)  # zero_padding2d_test.py's assertions
    assert y.sum() == pytest.approx(x.sum(), rel=1e-5) and np.count_nonzero(y) == np.count_nonzero(x)
    x = RNG.normal(size=(3, 7, 9, 5)).astype(np.float32)
    y, _ = run(Cropping2D(((1, 2), (3, 4))), x)
    np.testing.assert_array_equal(y, x[:, 1:5, 3:5, :])  # cropping2d_test.py's expected ranges


def test_reshape_and_permute_values():
    x = RNG.normal(size=(2, 3, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(run(Permute((3, 1, 2)), x)[0], np.transpose(x, (0, 3, 1, 2)))
    x = RNG.normal(size=(2, 6, 4)).astype(np.float32)
    np.testing.assert_array_equal(run(Reshape((-1, 8)), x)[0], x.reshape(2, 3, 8))


def test_upsampling_nearest_is_keras_docstring_example():
    # up_sampling2d.py's docstring: size (1, 2) on arange(12).reshape(2, 2, 1, 3) repeats the columns.
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 1, 3)
    y, _ = run(UpSampling2D((1, 2)), x)
    np.testing.assert_array_equal(y, np.repeat(x, 2, axis=2))
    assert y[0, 0].tolist() == [[0, 1, 2], [0, 1, 2]]


def bilinear_reference(x, sh, sw):
    """jax.image.resize(method="bilinear", antialias=False) when enlarging, which Keras 3 calls (JAX
    backend): half-pixel centres, source coordinate (i + 0.5) / scale - 0.5, clamped at the edges."""

    def axis_weights(n, s):
        src = np.clip((np.arange(n * s) + 0.5) / s - 0.5, 0, n - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        w = np.zeros((n * s, n))
        np.add.at(w, (np.arange(n * s), lo), 1 - (src - lo))
        np.add.at(w, (np.arange(n * s), hi), src - lo)
        return w

    return np.einsum("oh,pw,bhwc->bopc", axis_weights(x.shape[1], sh), axis_weights(x.shape[2], sw), x)


def test_upsampling_bilinear_matches_the_reference():
    x = RNG.normal(size=(2, 3, 4, 2)).astype(np.float32)
    y, _ = run(UpSampling2D((2, 3), interpolation="bilinear"), x)
    np.testing.assert_allclose(y, bilinear_reference(x.astype(np.float64), 2, 3), atol=1e-5)
    # the first row of a 2x upsampled row [0, 1]: 0, 0.25, 0.75, 1 (edges clamped)
    y, _ = run(UpSampling2D((1, 2), interpolation="bilinear"), np.array([0.0, 1.0]).reshape(1, 1, 2, 1))
    np.testing.assert_allclose(y.ravel(), [0.0, 0.25, 0.75, 1.0], atol=1e-6)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos3", "lanczos5"])
def test_upsampling_is_keras_jax_backend_resize(interpolation):
    # keras/src/backend/jax/image.py: resize(images, size) is jax.image.resize of the whole batch,
    # method=interpolation, antialias=False (ops.image.resize's default)
    x = RNG.normal(size=(2, 3, 5, 2)).astype(np.float32)
    want = jax.image.resize(x, (2, 6, 15, 2), method=interpolation, antialias=False)
    np.testing.assert_allclose(run(UpSampling2D((2, 3), interpolation=interpolation), x)[0], want, atol=1e-6)


def relu_reference(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """Keras's activations.relu: x above the threshold, negative_slope * (x - threshold) below it,
    capped at max_value (relu_test.py's documented cases below)."""
    y = np.where(x > threshold, x, 0.0)
    if max_value is not None:
        y = np.minimum(y, max_value)
    return y + np.where(x > threshold, 0.0, negative_slope * (x - threshold))


@pytest.mark.parametrize(("kwargs", "inputs", "expected"), [
    # keras/src/layers/activations/relu_test.py's correctness cases, numbers as written there
    ({"max_value": 10, "negative_slope": 0.0, "threshold": 0}, [-10, -5, 0.0, 5, 10], [0, 0, 0, 5, 10]),
    ({"max_value": 10, "negative_slope": 0.5, "threshold": 0}, [-10, -5, 0.0, 5, 10], [-5, -2.5, 0, 5, 10]),
    ({"max_value": 8, "negative_slope": 0.0, "threshold": 5}, [6.0, 7.0, 0.0, 5, 10], [6, 7, 0, 0, 8]),
])
def test_relu_keras_cases(kwargs, inputs, expected):
    y, _ = run(ReLU(**kwargs), np.array([inputs], np.float32))
    np.testing.assert_allclose(y[0], expected)


@pytest.mark.parametrize("kwargs", [
    {}, {"max_value": 6}, {"negative_slope": 0.2}, {"threshold": 0.5}, {"max_value": 2.0, "threshold": 0.5},
    {"max_value": 10, "negative_slope": 1, "threshold": 0.5}, {"negative_slope": 0.3, "max_value": 1.0},
])
def test_relu_matches_the_reference(kwargs):
    x = RNG.normal(scale=3, size=(4, 50)).astype(np.float32)
    np.testing.assert_allclose(run(ReLU(**kwargs), x)[0], relu_reference(x, **kwargs), atol=1e-6)


def test_leaky_relu_elu_softmax_values():
    x = RNG.normal(scale=2, size=(3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(run(LeakyReLU(), x)[0], np.where(x >= 0, x, 0.3 * x), atol=1e-6)
    np.testing.assert_allclose(run(ELU(0.5), x)[0], np.where(x > 0, x, 0.5 * (np.exp(x) - 1)), atol=1e-6)
    for axis, axes in ((-1, (2,)), (1, (1,)), ((1, 2), (1, 2))):
        e = np.exp(x - x.max(axis=axes, keepdims=True))
        np.testing.assert_allclose(run(Softmax(axis=axis), x)[0], e / e.sum(axis=axes, keepdims=True), atol=1e-6)


def test_prelu_matches_keras_test_reference():
    # prelu_test.py: np_prelu(x, alpha) = (x > 0) * x + (x <= 0) * alpha * x, alpha (1, 1, 3)
    x = RNG.normal(size=(2, 10, 5, 3)).astype(np.float32)
    alpha = RNG.random((1, 1, 3)).astype(np.float32)
    y, variables = run(PReLU(shared_axes=(1, 2)), x, params={"alpha": alpha})
    np.testing.assert_allclose(y, (x > 0) * x + (x <= 0) * alpha * x, atol=1e-6)
    y, variables = run(PReLU(), x)  # alpha_initializer "zeros": a ReLU at first
    np.testing.assert_array_equal(variables["params"]["p_re_lu"]["alpha"], np.zeros((10, 5, 3)))
    np.testing.assert_allclose(y, np.maximum(x, 0))


def test_layer_normalization_matches_the_reference():
    x = RNG.normal(loc=2, scale=3, size=(2, 4, 4, 3)).astype(np.float32)
    gamma, beta = RNG.normal(size=(3,)), RNG.normal(size=(3,))
    y, _ = run(LayerNormalization(epsilon=1e-3), x, params={"gamma": gamma, "beta": beta})
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3) * gamma + beta, atol=1e-5)
    gamma = RNG.normal(size=(4, 4, 3))
    y, _ = run(LayerNormalization(axis=[1, 2, 3], center=False), x, params={"gamma": gamma})
    mean, var = x.mean((1, 2, 3), keepdims=True), x.var((1, 2, 3), keepdims=True)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3) * gamma, atol=1e-5)


def group_norm_reference(x, groups, gamma, beta, epsilon):
    """Keras's GroupNormalization (channels last): mean and variance over H, W and the group's
    C / groups channels, per example and group; then * gamma + beta per channel."""
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean, var = g.mean((1, 2, 4), keepdims=True), g.var((1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + epsilon)).reshape(x.shape) * gamma + beta


def test_group_normalization_matches_the_reference():
    x = RNG.normal(loc=1, scale=2, size=(2, 3, 3, 8)).astype(np.float32)
    gamma, beta = RNG.normal(size=(8,)), RNG.normal(size=(8,))
    y, _ = run(GroupNormalization(groups=4), x, params={"gamma": gamma, "beta": beta})
    np.testing.assert_allclose(y, group_norm_reference(x, 4, gamma, beta, 1e-3), atol=1e-5)
    # group_normalization_test.py, test_groups_instance_norm: groups=-1 is one group per channel
    inputs = np.array([[[-1.0, 1.0, 0, 2.0], [1.0, 3.0, -4, -2.0]]])
    y1, _ = run(GroupNormalization(groups=-1, scale=False, center=False), inputs)
    y2, _ = run(GroupNormalization(groups=4, scale=False, center=False), inputs)
    np.testing.assert_allclose(y1, y2)
    np.testing.assert_allclose(y1[0, :, 0], [-1, 1], atol=1e-3)  # (x - 0) / sqrt(1 + 0.001)


def test_normalization_values():
    # normalization.py's docstring: mean=3, variance=2 on [[1], [2], [3]] -> -1.4142135, -0.70710677, 0
    y, variables = run(Normalization(mean=3.0, variance=2.0), [[1.0], [2.0], [3.0]])
    np.testing.assert_allclose(y.ravel(), [-1.4142135, -0.70710677, 0.0], rtol=1e-6)
    assert "batch_stats" not in variables
    # invert=True: mean + x * sqrt(variance); the docstring's adapted mean [1, 8, 5], variance [1, 1, 1]
    y, _ = run(Normalization(mean=[1.0, 8.0, 5.0], variance=[1.0, 1.0, 1.0], invert=True), [[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(y, [[2.0, 10.0, 8.0]])
    # per channel on images, a variance of 0 divides by Keras's epsilon 1e-7
    x = RNG.normal(size=(2, 3, 3, 2)).astype(np.float32)
    y, _ = run(Normalization(mean=[1.0, -1.0], variance=[4.0, 0.0]), x)
    np.testing.assert_allclose(y, (x - [1.0, -1.0]) / np.array([2.0, 1e-7]), rtol=1e-5)
    # un-adapted (weights not loaded): mean 0, variance 1, count 0 - the identity
    y, variables = run(Normalization(), x)
    np.testing.assert_array_equal(y, x)
    stats = variables["batch_stats"]["normalization"]
    assert {k: v.shape for k, v in stats.items()} == {"mean": (2,), "variance": (2,), "count": ()}


def test_rescaling_and_layer_scale_values():
    x = RNG.integers(0, 256, size=(2, 2, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(run(Rescaling(1 / 255, offset=-0.5), x)[0], x / 255 - 0.5, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(run(Rescaling([1.0, 2.0, 3.0]), x)[0], x * [1, 2, 3])
    y, variables = run(LayerScale(1e-6, 3), x)
    np.testing.assert_array_equal(variables["params"]["layer_scale"]["gamma"], np.full(3, 1e-6, np.float32))
    np.testing.assert_allclose(y, x * np.float32(1e-6), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Dropout-like layers: the identity in evaluation, Keras's statistics in training.

DROPOUT_LIKE = [Dropout(0.5), Dropout(0.5, noise_shape=(None, 1, 1, None)), SpatialDropout2D(0.5),
                GaussianNoise(0.5), GaussianDropout(0.5)]


@pytest.mark.parametrize("layer", DROPOUT_LIKE, ids=lambda layer: layer.type)
def test_dropout_like_layers_are_the_identity_in_evaluation(layer):
    x = RNG.normal(size=(4, 5, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(run(layer, x)[0], x)


@pytest.mark.parametrize("layer", [SpatialDropout2D(0.3), Dropout(0.3, noise_shape=(None, 1, 1, None))],
                         ids=["SpatialDropout2D", "Dropout-noise_shape"])
def test_channel_dropout_zeroes_whole_channels(layer):
    x = np.ones((64, 3, 3, 16), np.float32)
    y, _ = run(layer, x, train=True)
    # spatial_dropout_test.py: every position of a channel shares its fate
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1, :1, :], y.shape))
    kept = y[:, 0, 0, :]
    np.testing.assert_allclose(np.unique(kept), [0.0, 1 / 0.7], rtol=1e-6)  # dropped, or scaled by 1 / (1 - rate)
    # 1024 channels dropped with probability 0.3: the fraction dropped is 0.3 +- 5 sigma
    sigma = math.sqrt(0.3 * 0.7 / kept.size)
    assert abs(np.mean(kept == 0) - 0.3) < 5 * sigma


def test_dropout_noise_shape_shares_the_mask_along_its_unit_axes():
    x = np.ones((8, 4, 4, 2), np.float32)
    y, _ = run(Dropout(0.5, noise_shape=(None, 4, 1, 1)), x, train=True)
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :, :1, :1], y.shape))  # one mask per row
    y, _ = run(Dropout(0.5, noise_shape=(1, None, None, None)), x, train=True)
    np.testing.assert_array_equal(y, np.broadcast_to(y[:1], y.shape))  # one mask for the batch
    assert 0 < np.mean(y == 0) < 1


def test_gaussian_noise_and_dropout_statistics():
    n = 200_000
    x = np.full((n, 1), 2.0, np.float32)
    y, _ = run(GaussianNoise(0.2), x, train=True)
    noise = y - x  # N(0, 0.2^2): the mean within 5 standard errors, the std within 2%
    assert abs(noise.mean()) < 5 * 0.2 / math.sqrt(n) and noise.std() == pytest.approx(0.2, rel=0.02)
    y, _ = run(GaussianDropout(0.2), x, train=True)
    factor = y / x  # N(1, 0.2 / 0.8): standard deviation sqrt(0.25) = 0.5
    assert abs(factor.mean() - 1) < 5 * 0.5 / math.sqrt(n) and factor.std() == pytest.approx(0.5, rel=0.02)


# --------------------------------------------------------------------------------------------
# Refusals, each with its message.

@pytest.mark.parametrize(("make", "message"), [
    # zero_padding2d_test.py / cropping2d_test.py: invalid padding and cropping arguments
    *[(lambda v=v: ZeroPadding2D(v), r"ZeroPadding2D: `padding` \(=.*\) must be a non-negative integer, a pair")
      for v in [(1,), (1, 2, 3), "1", ((1, 2), (3, 4, 5)), ((1, 2), (3, -4)), ((1, 2), "3")]],
    *[(lambda v=v: Cropping2D(v), r"Cropping2D: `cropping` \(=.*\) must be a non-negative integer, a pair")
      for v in [(1,), (1, 2, 3), "1", ((1, 2), (3, 4, 5)), ((1, 2), (3, -4)), ((1, 2), "3")]],
    # reshape_test.py: a negative entry other than -1, two -1
    (lambda: Reshape((-2, 5)), r"Reshape: `target_shape` \(=\(-2, 5\)\) must be a non-empty list of positive "
                               r"integers, one of which may be -1"),
    (lambda: Reshape((-1, -1, 5)), r"`target_shape` \(=\(-1, -1, 5\)\) may hold at most one unknown dimension"),
    # permute_test.py: dims not starting at 1, not a permutation
    (lambda: Permute((0, 1, 2)), r"Permute: `dims` \(=\(0, 1, 2\)\) must be a permutation of 1..rank \(1-based"),
    (lambda: Permute((1, 4, 2)), r"`dims` \(=\(1, 4, 2\)\) must be a permutation"),
    (lambda: UpSampling2D(interpolation="cubic"), r"UpSampling2D: `interpolation` \(='cubic'\) must be one of "
                                                  r"'nearest', 'bilinear'"),
    # relu_test.py / leaky_relu_test.py: negative max_value, slope, threshold; None slope
    (lambda: ReLU(max_value=-10), r"ReLU: `max_value` \(=-10\) must be a finite number >= 0"),
    (lambda: ReLU(negative_slope=-10), r"ReLU: `negative_slope` \(=-10\) must be a finite number >= 0"),
    (lambda: ReLU(threshold=-10), r"ReLU: `threshold` \(=-10\) must be a finite number >= 0"),
    (lambda: ReLU(negative_slope=None), r"ReLU: `negative_slope` \(=None\) must be a finite number"),
    (lambda: LeakyReLU(negative_slope=None), r"LeakyReLU: `negative_slope` \(=None\) must be a finite number"),
    (lambda: PReLU(shared_axes=0), r"PReLU: `shared_axes` \(=0\) must be an axis \(1 or more"),
    (lambda: PReLU(alpha_initializer="nope"), r"PReLU: `alpha_initializer` \(='nope'\) is not a known initializer"),
    (lambda: Softmax(axis="x"), r"Softmax: `axis` \(='x'\) must be an integer axis"),
    # dropout_test.py: rate out of [0, 1], noise_shape of a string, a zero or negative entry
    (lambda: Dropout(-0.5), r"Dropout: `rate` \(=-0.5\) must be a number in \[0.0, 1.0\)"),
    (lambda: Dropout(1.5), r"Dropout: `rate` \(=1.5\) must be a number in \[0.0, 1.0\)"),
    *[(lambda v=v: Dropout(0.5, noise_shape=v), r"Dropout: `noise_shape` \(=.*\) must be a list of positive "
                                                r"integers or None entries")
      for v in ["1,2", (None, 0), (None, -2), (None, 1.5)]],
    (lambda: Dropout(0.5, seed="s"), r"Dropout: `seed` \(='s'\) must be an integer or None"),
    (lambda: GaussianNoise(1.5), r"GaussianNoise: `stddev` \(=1.5\) must be a number in \[0.0, 1.0\]"),
    (lambda: GaussianDropout(1.0), r"GaussianDropout: `rate` \(=1.0\) must be a number in \[0.0, 1.0\)"),
    (lambda: SpatialDropout2D(2), r"SpatialDropout2D: `rate` \(=2\) must be a number"),
    # group_normalization_test.py: groups 0, -2, 1.5, "32"
    *[(lambda v=v: GroupNormalization(groups=v), r"GroupNormalization: `groups` \(=.*\) must be a positive "
                                                 r"integer, or -1 \(instance normalization\)")
      for v in [0, -2, 1.5, "32"]],
    (lambda: LayerNormalization(epsilon=0), r"LayerNormalization: `epsilon` \(=0\) must be positive"),
    (lambda: LayerNormalization(axis=[1, 1]), r"`axis` \(=\[1, 1\]\) must be an integer axis or a list of distinct"),
    # normalization_test.py: mean without variance and the reverse
    (lambda: Normalization(mean=1.0), r"Normalization: `mean` \(=1.0\) is given without its pair"),
    (lambda: Normalization(variance=1.0), r"Normalization: `variance` \(=1.0\) is given without its pair"),
    (lambda: Normalization(mean=[1.0, 2.0], variance=[1.0]), r"`variance` \(=\[1.0\]\) must have the shape of "
                                                             r"`mean` \(2,\), has \(1,\)"),
    (lambda: Normalization(axis=-1, mean=[[1.0]], variance=[[1.0]]), r"`mean` \(=\[\[1.0\]\]\) has rank 2, more "
                                                                      r"than the 1 axes"),
    (lambda: Rescaling("x"), r"Rescaling: `scale` \(='x'\) must be a finite number or a list of finite numbers"),
    (lambda: LayerScale(1e-6, 0), r"LayerScale: `projection_dim` \(=0\) must be a positive integer"),
])
def test_bad_arguments_are_refused_by_name(make, message):
    with pytest.raises(LayerArgumentError, match=message):
        make()


@pytest.mark.parametrize(("layer", "input_shape", "message"), [
    # cropping2d_test.py, test_cropping_2d_error_on_excessive_cropping: input (3, 8, 9, 5)
    (Cropping2D(((4, 5), (0, 0))), (8, 9, 5), r"removes 4 \+ 5 = 9 of the input height 8"),
    (Cropping2D(((0, 0), (5, 5))), (8, 9, 5), r"removes 5 \+ 5 = 10 of the input width 9"),
    (Cropping2D(((6, 3), (0, 0))), (8, 9, 5), r"removes 6 \+ 3 = 9 of the input height 8"),
    (Cropping2D(((0, 0), (7, 3))), (8, 9, 5), r"removes 7 \+ 3 = 10 of the input width 9"),
    # test_cropping_2d_errors_if_cropping_more_than_available: input (3, 7, 9, 5)
    (Cropping2D(((3, 6), (0, 0))), (7, 9, 5), r"removes 3 \+ 6 = 9 of the input height 7"),
    (Cropping2D(((0, 0), (5, 4))), (7, 9, 5), r"removes 5 \+ 4 = 9 of the input width 9"),
    (Reshape((5, -1)), (2, 4), r"cannot reshape \(None, 2, 4\) \(2\*4 = 8 elements\) into target_shape \(5, -1\): "
                               r"8 is not a multiple of 5"),
    (Reshape((3, 3)), (2, 4), r"cannot reshape \(None, 2, 4\) \(2\*4 = 8 elements\) into target_shape \(3, 3\) "
                              r"\(9 elements\)"),
    (Permute((2, 1)), (3, 4, 5), r"expects an input of rank 2"),
    (PReLU(shared_axes=3), (3, 4), r"`shared_axes` \(=\(3,\)\) names axis 3; the input \(None, 3, 4\) has axes 1..2"),
    (Softmax(axis=3), (3, 4), r"`axis` \(=3\) is out of range for the input \(None, 3, 4\)"),
    (Softmax(axis=0), (3, 4), r"`axis` \(=0\) is out of range .*0 is the batch axis"),
    # group_normalization_test.py: groups 5 and 3 on 4 channels
    (GroupNormalization(groups=5), (2, 2, 4), r"`groups` \(=5\) cannot be more than the 4 channels"),
    (GroupNormalization(groups=3), (2, 2, 4), r"`groups` \(=3\) must divide the 4 channels of axis -1: 4 / 3"),
    (GroupNormalization(), (2, 2, 16), r"`groups` \(=32\) cannot be more than the 16 channels"),
    (Dropout(0.5, noise_shape=(None, 2)), (3,), r"`noise_shape` \(=\[None, 2\]\) does not broadcast over the input"),
    (Dropout(0.5, noise_shape=(None, 1)), (3, 4), r"`noise_shape` \(=\[None, 1\]\) has 2 entries; the input "
                                                  r"\(None, 3, 4\) has 3"),
    (Dropout(0.5, noise_shape=(32, 1)), (3,), r"fixes the batch axis to 32"),
    (Normalization(axis=-1, mean=[1.0, 2.0], variance=[1.0, 1.0]), (3,),
     r"`mean` and `variance` of shape \(2,\) do not fit the kept axes \(3,\)"),
    (Rescaling([1.0, 2.0]), (4, 4, 3), r"`scale` of shape \(2,\) does not broadcast over the input"),
    (LayerScale(0.1, 8), (4, 4, 3), r"`projection_dim` \(=8\) must be the input's last axis"),
    (ZeroPadding2D(), (4, 4), r"expects an input of rank 3"),
    (UpSampling2D(), (4,), r"expects an input of rank 3"),
    (SpatialDropout2D(0.5), (4, 4), r"expects an input of rank 3"),
])
def test_impossible_inputs_are_refused_naming_the_layer(layer, input_shape, message):
    with pytest.raises(ImpossibleShapeError, match=r"layer 0 '\w+' \(" + layer.type + r"\): .*" + message):
        model_of(layer, input_shape).plan()


# --------------------------------------------------------------------------------------------
# data_format: "channels_last" (and None) accepted by every layer Keras gives the argument,
# "channels_first" refused by name.

DATA_FORMAT_LAYERS = [
    lambda **k: Conv2D(4, 3, **k), lambda **k: MaxPooling2D(**k), lambda **k: AveragePooling2D(**k),
    lambda **k: GlobalAveragePooling2D(**k), lambda **k: GlobalMaxPooling2D(**k), lambda **k: Flatten(**k),
    lambda **k: ZeroPadding2D(**k), lambda **k: Cropping2D(**k), lambda **k: UpSampling2D(**k),
    lambda **k: SpatialDropout2D(0.5, **k),
]


@pytest.mark.parametrize("make", DATA_FORMAT_LAYERS)
def test_data_format_channels_last_is_accepted_and_channels_first_refused(make):
    assert make(data_format="channels_last") == make() == make(data_format=None)
    kind = make().type
    with pytest.raises(LayerArgumentError, match=rf"^{kind}: `data_format` \(='channels_first'\) is not supported: "
                                                 r"jaxcnn is channels-last"):
        make(data_format="channels_first")
    with pytest.raises(LayerArgumentError, match=rf"^{kind}: `data_format` \(='NHWC'\) must be 'channels_last'"):
        make(data_format="NHWC")


def test_data_format_channels_first_in_keras_json_is_refused_naming_the_layer():
    with pytest.raises(UnsupportedError, match=r"^k\.json: layer 0 'layer' \(ZeroPadding2D\): "
                                               r'data_format="channels_first" is not supported'):
        from_json("ZeroPadding2D", {"padding": [[1, 1], [1, 1]], "data_format": "channels_first"}, (4, 4, 1))


def test_default_names_are_keras_names():
    # the names a fresh Keras session gives (Keras's to_snake_case of the class name)
    model = jaxcnn.Sequential([ReLU(), LeakyReLU(), PReLU(), ELU(), UpSampling2D(), ZeroPadding2D(),
                               SpatialDropout2D(0.1), LayerScale(0.1, 3)], input_shape=(4, 4, 3))
    assert [layer.name for layer in model.layers] == [
        "re_lu", "leaky_re_lu", "p_re_lu", "elu", "up_sampling2d", "zero_padding2d", "spatial_dropout2d",
        "layer_scale"]


def test_statistics_over_the_image_make_the_receptive_field_global():
    model = jaxcnn.Sequential([Conv2D(4, 3), LayerNormalization(), Conv2D(4, 3), GroupNormalization(2),
                               Conv2D(4, 3)], input_shape=(12, 12, 3))
    fields = [row.receptive_field for row in model.summarize().rows]
    assert fields == [(3, 3), (3, 3), (5, 5), None, None]


def test_normalization_over_no_axis_and_group_normalization_over_another_axis():
    # axis=None: one scalar mean and variance (Keras: keep_axis (), weights of shape ()): 1 + 1 + 1 = 3
    assert figures(model_of(Normalization(axis=None), (4, 4, 3))) == ((4, 4, 3), 0, 3)
    x = RNG.normal(size=(2, 4, 6, 2)).astype(np.float32)
    gamma, beta = RNG.normal(size=(4,)), RNG.normal(size=(4,))
    y, _ = run(GroupNormalization(groups=2, axis=1), x, params={"gamma": gamma, "beta": beta})
    moved = np.moveaxis(x, 1, -1)  # the reference is channels-last: normalize axis 1 as the channels
    want = group_norm_reference(moved, 2, gamma, beta, 1e-3)
    np.testing.assert_allclose(y, np.moveaxis(want, -1, 1), atol=1e-5)


@pytest.mark.parametrize(("class_name", "layer_config", "message"), [
    ("LayerNormalization", {"rms_scaling": True}, r"rms_scaling=true is not supported"),
    ("PReLU", {"alpha_regularizer": {"class_name": "L1", "config": {"l1": 0.01}}}, r"alpha_regularizer=.* is not "
                                                                                   r"supported"),
    ("SpatialDropout2D", {"rate": 0.1, "noise_shape": [None, 1, 1, 3]}, r"noise_shape=\[null, 1, 1, 3\] is not "
                                                                         r"supported: only jaxcnn's Dropout"),
    ("Cropping2D", {"cropping": [[1, 1], [1, 1]], "data_format": "channels_first"},
     r'data_format="channels_first" is not supported'),
    ("GroupNormalization", {"groups": 3}, r"`groups` \(=3\) must divide the 4 channels"),
])
def test_keras_json_refusals_name_the_layer(class_name, layer_config, message):
    with pytest.raises(jaxcnn.JaxcnnError, match=rf"^k\.json: layer 0 'layer' \({class_name}\): {message}"):
        from_json(class_name, layer_config, (4, 4, 4)).check()
