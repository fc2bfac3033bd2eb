"""Layer specs: Keras arguments and defaults, normalization, closed-form formulas, refusals."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn.errors import ImpossibleShapeError, LayerArgumentError
from conftest import KERAS_FIXTURES
from jaxcnn.layers import (
    ACTIVATIONS, INITIALIZERS, LAYER_TYPES, Activation, AveragePooling2D, BatchNormalization, Conv2D, Dense,
    Dropout, Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D, Input, MaxPooling2D, snake_case,
)


def test_keras_defaults():
    conv = Conv2D(16, 3)
    assert (conv.strides, conv.padding, conv.dilation_rate, conv.activation, conv.use_bias) == (
        (1, 1), "valid", (1, 1), None, True)
    assert (conv.kernel_size, conv.kernel_initializer, conv.bias_initializer) == (
        (3, 3), "glorot_uniform", "zeros")
    pool = MaxPooling2D()
    assert (pool.pool_size, pool.strides, pool.padding) == ((2, 2), (2, 2), "valid")
    assert AveragePooling2D(3).strides == (3, 3)
    assert AveragePooling2D(3, strides=1).strides == (1, 1)
    bn = BatchNormalization()
    assert (bn.momentum, bn.epsilon, bn.center, bn.scale) == (0.99, 0.001, True, True)


def test_arguments_are_normalized_and_specs_are_frozen():
    assert Conv2D(8, [3, 1], strides=[2, 1], padding="SAME", activation="ReLU") == Conv2D(
        8, (3, 1), strides=(2, 1), padding="same", activation="relu")
    assert Dense(3, activation="linear") == Dense(3)
    assert Activation("swish") == Activation("silu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        Conv2D(8, 3).filters = 4  # type: ignore[misc]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _relu6(x):
    return np.minimum(np.maximum(x, 0.0), 6.0)


def _softplus(x):
    return np.logaddexp(0.0, x)  # log(1 + exp(x)), without overflow


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805  # Keras's documented constants

# Keras 3's documented definitions (keras.activations), written in NumPy float64 independently of jax.nn
KERAS_ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": _relu6,
    "sigmoid": _sigmoid,
    "hard_sigmoid": lambda x: _relu6(x + 3.0) / 6.0,  # Keras 3 (Keras 2 had 0.2 * x + 0.5)
    "tanh": np.tanh,
    "softmax": _softmax,
    "log_softmax": lambda x: np.log(_softmax(x)),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),  # alpha = 1
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
    "gelu": lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))),  # approximate=False
    "silu": lambda x: x * _sigmoid(x),
    "hard_silu": lambda x: x * _relu6(x + 3.0) / 6.0,
    "softplus": _softplus,
    "softsign": lambda x: x / (np.abs(x) + 1.0),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.2 * x),  # Keras 3's negative_slope = 0.2
    "exponential": np.exp,
    "mish": lambda x: x * np.tanh(_softplus(x)),
}
# negatives, the kinks of relu6/hard_sigmoid/hard_silu at -3, 0, 3 and 6, and large values
GRID = np.concatenate([np.linspace(-8.0, 8.0, 33), [-80.0, -30.0, -3.5, -3.0, -1e-3, 1e-3, 3.0, 6.0, 6.5, 30.0, 60.0]])


def test_every_keras_activation_name_is_known():
    assert set(ACTIVATIONS) == set(KERAS_ACTIVATIONS)
    for name in KERAS_ACTIVATIONS:
        assert Activation(name).activation == (None if name == "linear" else name)
    assert Activation("swish").activation == "silu" and Activation("hard_swish").activation == "hard_silu"
    assert Activation("none").activation is None


@pytest.mark.parametrize("name", sorted(KERAS_ACTIVATIONS))
def test_each_activation_computes_the_keras_formula(name):
    x = GRID.reshape(2, -1)  # softmax and log_softmax over the last axis
    got = np.asarray(ACTIVATIONS[name](jnp.asarray(x, jnp.float32)), np.float64)
    expected = KERAS_ACTIVATIONS[name](x)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Conv2D(0, 3), r"Conv2D: `filters` \(=0\) must be a positive integer"),
        (lambda: Conv2D("16", 3), r"Conv2D: `filters` \(='16'\) must be a positive integer"),
        (lambda: Conv2D(8, (3, 3, 3)), r"`kernel_size` \(=\(3, 3, 3\)\) must be a positive integer or a pair"),
        (lambda: Conv2D(8, 3, strides=0), r"`strides` \(=0\)"),
        (lambda: Conv2D(8, 3, padding="causal"), r"`padding` \(='causal'\) must be 'valid' or 'same'"),
        (lambda: Conv2D(8, 3, activation="relux"), r"`activation` \(='relux'\) is not a known activation"),
        (lambda: Conv2D(8, 3, use_bias=1), r"`use_bias` \(=1\) must be true or false"),
        (lambda: Conv2D(8, 3, kernel_initializer="glorot"), r"`kernel_initializer` \(='glorot'\)"),
        (lambda: Dense(-1), r"Dense: `units` \(=-1\) must be a positive integer"),
        (lambda: Dropout(1.0), r"Dropout: `rate` \(=1.0\) must be a number in \[0.0, 1.0\)"),
        (lambda: MaxPooling2D(pool_size=0), r"MaxPooling2D: `pool_size` \(=0\)"),
        (lambda: BatchNormalization(axis=1), r"`axis` \(=1\) is not supported"),
        (lambda: BatchNormalization(epsilon=0), r"`epsilon` \(=0\) must be positive"),
        (lambda: Conv2D(8, 3, input_shape=(32, 0, 3)), r"`input_shape` \(=\(32, 0, 3\)\)"),
        (lambda: Input((28, 28, -1)), r"Input: `shape`"),
        # Keras 3's BaseConv: "`strides > 1` not supported in conjunction with `dilation_rate > 1`",
        # on any axis of either (max(strides) > 1 and max(dilation_rate) > 1)
        (lambda: Conv2D(8, 3, strides=2, dilation_rate=2),
         r"^Conv2D: `strides` \(=\(2, 2\)\) and `dilation_rate` \(=\(2, 2\)\) cannot both exceed 1: Keras "
         r"refuses `strides > 1` in conjunction with `dilation_rate > 1` too$"),
        (lambda: Conv2D(8, 3, strides=(1, 2), dilation_rate=(3, 1)),
         r"`strides` \(=\(1, 2\)\) and `dilation_rate` \(=\(3, 1\)\) cannot both exceed 1"),
        # Keras's Orthogonal initializer fails on a 1-D weight ("must be at least two-dimensional")
        (lambda: Dense(4, bias_initializer="orthogonal"),
         r"^Dense: `bias_initializer` \(='orthogonal'\) needs a weight of at least 2 dimensions and the "
         r"bias is 1-D"),
        (lambda: Conv2D(8, 3, bias_initializer="Orthogonal"), r"Conv2D: `bias_initializer` \(='Orthogonal'\)"),
    ],
)
def test_bad_arguments_are_refused_naming_the_layer_type_argument_and_value(make, message):
    with pytest.raises(LayerArgumentError, match=message):
        make()


def test_snake_case_names_match_keras():
    keras_names = {  # Keras's default layer names (keras.src.utils.naming.to_snake_case of the class)
        "Conv2D": "conv2d", "MaxPooling2D": "max_pooling2d", "AveragePooling2D": "average_pooling2d",
        "GlobalAveragePooling2D": "global_average_pooling2d", "GlobalMaxPooling2D": "global_max_pooling2d",
        "Flatten": "flatten", "Dense": "dense", "Dropout": "dropout", "Activation": "activation",
        "BatchNormalization": "batch_normalization"}
    assert {name: snake_case(name) for name in LAYER_TYPES if name in keras_names} == keras_names
    assert set(keras_names) <= set(LAYER_TYPES)


def test_a_layer_kind_registers_itself_where_it_is_defined():
    """Defining a kind in jaxcnn.layers registers it; elsewhere only with register=True."""
    import dataclasses

    from jaxcnn.layers import Layer

    @dataclasses.dataclass(frozen=True)
    class NotRegistered(Layer):
        pass

    assert "NotRegistered" not in LAYER_TYPES
    try:
        @dataclasses.dataclass(frozen=True)
        class MyScale(Layer, register=True):
            factor: float = 2.0

        assert LAYER_TYPES["MyScale"] is MyScale
        with pytest.raises(LayerArgumentError, match="a layer kind named 'MyScale' is already registered"):
            class MyScale(Layer, register=True):  # noqa: F811
                pass
    finally:
        from jaxcnn.layers import base

        base._REGISTRY.pop("MyScale", None)
    for name, cls in LAYER_TYPES.items():  # every kind is exported by the package under its name
        assert getattr(jaxcnn.layers, name) is cls and name in jaxcnn.layers.__all__


@pytest.mark.parametrize(
    "layer, input_shape, output_shape, params",
    [
        # The seed's formulas: valid ceil((H - F + 1) / S), same ceil(H / S), K*F*F*D_in + K.
        (Conv2D(16, 2, strides=2, padding="valid"), (200, 200, 1), (100, 100, 16), 80),
        (Conv2D(32, 3, strides=2, padding="same"), (128, 128, 3), (64, 64, 32), 896),
        (Conv2D(64, 3, padding="same"), (224, 224, 3), (224, 224, 64), 1792),
        (Conv2D(64, 3, padding="same"), (224, 224, 64), (224, 224, 64), 36_928),  # not 36,982
        (Conv2D(8, (3, 1), strides=(2, 1), padding="same", use_bias=False), (37, 29, 4), (19, 29, 8), 96),
        (Conv2D(12, 3, dilation_rate=2), (19, 29, 8), (15, 25, 12), 876),  # effective 5 = (3-1)*2+1
        (Conv2D(4, 3, dilation_rate=(2, 1)), (10, 11, 1), (6, 9, 4), 40),  # effective 5x3
        (MaxPooling2D(2, 2), (100, 100, 15), (50, 50, 15), 0),
        (MaxPooling2D(3, 2), (7, 8, 1), (3, 3, 1), 0),
        (AveragePooling2D(3, 2, padding="same"), (15, 25, 12), (8, 13, 12), 0),
        (GlobalAveragePooling2D(), (4, 13, 12), (12,), 0),
        (GlobalMaxPooling2D(keepdims=True), (4, 13, 12), (1, 1, 12), 0),
        (Flatten(), (7, 7, 512), (25_088,), 0),
        (Dense(4096), (25_088,), (4096,), 102_764_544),
        (Dense(5), (3, 4, 6), (3, 4, 5), 35),  # Keras's Dense acts on the last axis
        (BatchNormalization(), (19, 29, 8), (19, 29, 8), 32),
        (BatchNormalization(center=False), (8,), (8,), 24),
        (Dropout(0.5), (12,), (12,), 0),
        (Activation("relu"), (3, 3, 2), (3, 3, 2), 0),
    ],
)
def test_closed_form_output_shape_and_params(layer, input_shape, output_shape, params):
    assert layer.output_shape(input_shape) == output_shape
    counted = sum(int(np.prod(s)) for shapes in layer.param_shapes(input_shape).values() for s in shapes.values())
    assert counted == params
    # ... and the proof agrees (eval_shape of the real Flax code).
    model = jaxcnn.Sequential([layer], input_shape=input_shape)
    result = model.check()
    assert result.total_params == params
    assert result.layers[0].plan.output_shape == output_shape


def test_formulas_show_their_arithmetic():
    f = Conv2D(64, (3, 3), padding="same").formula((224, 224, 3))
    assert f.params == "64*3*3*3 + 64 = 1,792"
    assert f.output == "height = ceil(224 / 1) = 224; width = ceil(224 / 1) = 224; channels = filters = 64"
    f = Conv2D(16, 2, strides=2).formula((200, 200, 1))
    assert f.output.startswith("height = ceil((200 - 2 + 1) / 2) = 100")
    f = Conv2D(12, 3, dilation_rate=2).formula((19, 29, 8))
    assert f.output.startswith("height = ceil((19 - ((3 - 1)*2 + 1) + 1) / 1) = 15")
    assert Dense(4096).formula((25088,)).params == "25088*4096 + 4096 = 102,764,544"
    assert BatchNormalization().formula((10, 10, 8)).params == (
        "4*8 = 32: 2*8 trainable (gamma, beta) + 2*8 non-trainable (moving mean, moving variance)")
    assert Flatten().formula((7, 7, 512)).output == "units = 7*7*512 = 25,088"


@pytest.mark.parametrize(
    "layer, input_shape, message",
    [
        (Conv2D(8, 5), (4, 10, 3),
         r"Conv2D: the kernel window's height 5 is larger than the input height 4 with padding='valid': "
         r"height = ceil\(\(4 - 5 \+ 1\) / 1\) = 0"),
        (Conv2D(8, 3, dilation_rate=3), (6, 6, 1), r"window's height 7 \(3 dilated by 3\) is larger"),
        (MaxPooling2D(3), (2, 9, 1), r"MaxPooling2D: the pool window's height 3 is larger than the input height 2"),
        (Conv2D(8, 3), (32,), r"Conv2D: expects an input of rank 3 \(height, width, channels\) without the "
                              r"batch axis, got \(None, 32\)"),
        (GlobalMaxPooling2D(), (5, 5), r"expects an input of rank 3"),
    ],
)
def test_impossible_layers_are_refused_with_the_formula(layer, input_shape, message):
    with pytest.raises(ImpossibleShapeError, match=message):
        layer.output_shape(input_shape)


def test_flops_convention():
    # 2 per multiply-accumulate over every kernel tap, plus 1 per bias add.
    assert Conv2D(8, 3).flops((12, 10, 4)) == 2 * (10 * 8 * 8 * 3 * 3 * 4) + 10 * 8 * 8
    assert Dense(7).flops((20,)) == 2 * 20 * 7 + 7
    assert MaxPooling2D().flops((4, 4, 1)) == 0


@pytest.mark.parametrize(
    "layer, input_shape",
    [
        (Conv2D(8, 3, use_bias=False), (12, 10, 4)),
        (Conv2D(8, (3, 2), strides=2), (12, 10, 4)),
        (Conv2D(8, 3, dilation_rate=2), (12, 12, 3)),
        (Dense(7), (20,)),
        (Dense(7), (3, 5, 20)),
    ],
)
def test_flops_equal_xla_cost_analysis_where_it_is_exact(layer, input_shape):
    """VALID convolutions and Dense: XLA counts every tap, 2 per MAC, 1 per bias add, like us."""
    assert _xla_flops(layer, input_shape) == layer.flops(input_shape)


def test_xla_cost_analysis_skips_same_padding_taps():
    """jax issue 17912: XLA does not count the taps over SAME padding, so it reports fewer FLOPs."""
    layer, shape = Conv2D(8, 3, padding="same"), (12, 10, 4)
    ours, xla = layer.flops(shape), _xla_flops(layer, shape)
    assert ours == 70_080 and xla < ours
    # The border taps: of the 3*3 taps per output, 10*12 outputs lose some to padding.
    valid_taps = sum(
        sum(0 <= i + di < 12 and 0 <= j + dj < 10 for di in (-1, 0, 1) for dj in (-1, 0, 1))
        for i in range(12) for j in range(10))
    assert xla == 2 * valid_taps * 4 * 8 + 12 * 10 * 8


def _xla_flops(layer, input_shape) -> int:
    if hasattr(layer, "lowering"):  # XLA's convolution is the subject (jaxcnn might use patches or oneDNN)
        layer = dataclasses.replace(layer, lowering="conv")
    model = jaxcnn.Sequential([layer], input_shape=input_shape)
    module = model.module()
    x = jnp.zeros((1, *input_shape))
    variables = module.init(jax.random.key(0), x)
    cost = jax.jit(module.apply).lower(variables, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    if cost is None or cost.get("flops", -1) < 0:
        pytest.skip("this backend's cost analysis gives no FLOPs")
    return int(cost["flops"])


def _run(layer, x, **kwargs):
    model = jaxcnn.Sequential([layer], input_shape=x.shape[1:])
    module = model.module()
    variables = module.init(jax.random.key(0), x)
    return module.apply(variables, x, **kwargs), variables


def test_average_pooling_same_excludes_padding_like_keras():
    x = jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    y, _ = _run(AveragePooling2D(2, padding="same"), x)
    # windows [[1,2],[4,5]], [[3],[6]], [[7,8]], [[9]]: averaged over their real elements
    np.testing.assert_allclose(y[0, :, :, 0], [[3.0, 4.5], [7.5, 9.0]])


def test_max_pooling_same_pads_with_minus_infinity():
    x = -jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    y, _ = _run(MaxPooling2D(2, padding="same"), x)
    np.testing.assert_allclose(y[0, :, :, 0], [[-1.0, -3.0], [-7.0, -9.0]])


def test_conv_matches_a_direct_computation():
    x = jax.random.normal(jax.random.key(1), (2, 5, 6, 3))
    y, variables = _run(Conv2D(4, (2, 3), strides=(1, 2), activation="relu"), x)
    kernel, bias = variables["params"]["conv2d"]["kernel"], variables["params"]["conv2d"]["bias"]
    ref = np.zeros((2, 4, 2, 4))
    for i in range(4):
        for j in range(2):
            patch = np.asarray(x[:, i:i + 2, 2 * j:2 * j + 3, :])
            ref[:, i, j, :] = np.einsum("bhwc,hwck->bk", patch, np.asarray(kernel)) + np.asarray(bias)
    np.testing.assert_allclose(y, np.maximum(ref, 0), rtol=1e-5, atol=1e-5)


def test_batch_normalization_trains_and_evaluates_like_keras():
    x = jax.random.normal(jax.random.key(2), (16, 2, 2, 3)) * 3.0 + 1.0
    layer = BatchNormalization(momentum=0.9)
    model = jaxcnn.Sequential([layer], input_shape=(2, 2, 3))
    module = model.module()
    variables = module.init(jax.random.key(0), x)
    y, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / jnp.sqrt(var + 1e-3), rtol=1e-4, atol=1e-4)
    stats = updates["batch_stats"]["batch_normalization"]
    np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var, rtol=1e-5)
    y_eval = module.apply(variables, x)  # moving statistics at init: mean 0, variance 1
    np.testing.assert_allclose(y_eval, x / jnp.sqrt(1.0 + 1e-3), rtol=1e-5)


def test_dropout_is_identity_in_evaluation_and_scales_in_training():
    x = jnp.ones((4, 100))
    y, _ = _run(Dropout(0.25), x)
    np.testing.assert_array_equal(y, x)
    y, _ = _run(Dropout(0.25), x, train=True, rngs={"dropout": jax.random.key(3)})
    values = np.unique(np.asarray(y))
    np.testing.assert_allclose(values, [0.0, 1.0 / 0.75], rtol=1e-6)
    assert 0.15 < float((y == 0).mean()) < 0.35


def test_a_keras_file_with_strides_and_dilation_is_refused_naming_file_and_layer(tmp_path):
    from jaxcnn.config import load

    doc = json.loads((KERAS_FIXTURES / "conv_valid_s2.json").read_text())  # Conv2D strides (2, 2)
    conv = next(entry for entry in doc["config"]["layers"] if entry["class_name"] == "Conv2D")
    conv["config"]["dilation_rate"] = [2, 2]
    path = tmp_path / "dilated.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(LayerArgumentError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: layer 0 'conv2d_18' (Conv2D): `strides` (=(2, 2)) and `dilation_rate` (=(2, 2)) cannot both "
        "exceed 1: Keras refuses `strides > 1` in conjunction with `dilation_rate > 1` too")


def test_an_unused_bias_initializer_is_not_refused():
    assert Dense(4, use_bias=False, bias_initializer="orthogonal").bias_initializer == "orthogonal"
    assert Conv2D(8, 3, kernel_initializer="orthogonal").kernel_initializer == "orthogonal"


@pytest.mark.parametrize("name, scale, uniform", [
    ("glorot_uniform", 1.0, True), ("glorot_normal", 1.0, False), ("he_uniform", 2.0, True),
    ("he_normal", 2.0, False), ("lecun_uniform", 1.0, True), ("lecun_normal", 1.0, False)])
def test_fan_initializers_on_a_bias_use_keras_fans(name, scale, uniform):
    """Keras's compute_fans gives a 1-D weight fan_in = fan_out = n, so each of these draws with
    variance scale / n (glorot: 2 / (n + n) = 1 / n; he: 2 / n; lecun: 1 / n); JAX's own refuse a 1-D
    shape. Uniform: limit sqrt(3 * scale / n); truncated normal: within 2 standard deviations."""
    n = 4000
    model = jaxcnn.Sequential([Dense(n, bias_initializer=name, input_shape=(3,))])
    bias = np.asarray(model.module().init(jax.random.key(0), jnp.zeros((1, 3)))["params"]["dense"]["bias"])
    assert bias.shape == (n,)
    std = np.sqrt(scale / n)
    assert np.std(bias) == pytest.approx(std, rel=0.05)
    if uniform:
        assert np.max(np.abs(bias)) <= np.sqrt(3.0) * std and np.max(np.abs(bias)) > 0.99 * np.sqrt(3.0) * std
    else:
        assert np.max(np.abs(bias)) <= 2.0 * std / 0.87962566103423978  # JAX's truncation at 2 stddevs


def test_fan_initializers_on_kernels_are_jaxs_own():
    key = jax.random.key(3)
    for name, reference in [("glorot_uniform", jax.nn.initializers.glorot_uniform()),
                            ("he_normal", jax.nn.initializers.he_normal()),
                            ("lecun_uniform", jax.nn.initializers.lecun_uniform())]:
        for shape in [(5, 7), (3, 3, 4, 8)]:
            np.testing.assert_array_equal(INITIALIZERS[name](key, shape), reference(key, shape))
