"""The convolution kinds: Conv2D(groups), DepthwiseConv2D, SeparableConv2D, Conv2DTranspose.

Shapes: the cases of Keras 3's own layer tests (keras/src/layers/convolutional/conv_test.py
``test_conv2d_basic``, depthwise_conv_test.py ``test_depthwise_conv2d_basic``,
separable_conv_test.py ``test_separable_conv2d_basic``, conv_transpose_test.py
``test_conv2d_transpose_basic``; input and output shapes without the batch axis), through the
Python API and through Keras JSON; parameter counts from Keras's weight shapes (base_conv.py:
``kernel_size + (C_in // groups, filters)``; base_depthwise_conv.py: ``kernel_size + (C_in,
depth_multiplier)``; base_separable_conv.py: ``kernel_size + (C_in, depth_multiplier)`` and ``(1, 1,
C_in * depth_multiplier, filters)``; base_conv_transpose.py: ``kernel_size + (filters, C_in)``).
Values: against NumPy references written from the definitions; gradients: against
``lax.conv_general_dilated`` references.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from jax import lax

import jaxcnn
import jaxcnn.onednn
from jaxcnn import config
from jaxcnn.errors import ImpossibleShapeError, LayerArgumentError
from jaxcnn.flax_module import build_module
from jaxcnn.layers import (
    AveragePooling2D,
    Conv2D,
    Conv2DTranspose,
    DepthwiseConv2D,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    MaxPooling2D,
    SeparableConv2D,
)

# (layer, input shape, output shape, params): Keras's test cases; params by Keras's weight shapes.
KERAS_CASES = [
    # conv_test.py test_conv2d_basic
    (Conv2D(5, 2), (5, 5, 4), (4, 4, 5), 2 * 2 * 4 * 5 + 5),
    (Conv2D(6, 2, padding="same", dilation_rate=(2, 2), groups=2), (4, 4, 4), (4, 4, 6), 2 * 2 * 2 * 6 + 6),
    (Conv2D(6, (2, 2), strides=(2, 1), groups=2), (5, 5, 4), (2, 4, 6), 2 * 2 * 2 * 6 + 6),
    # depthwise_conv_test.py test_depthwise_conv2d_basic
    (DepthwiseConv2D(2, depth_multiplier=5), (5, 5, 4), (4, 4, 20), 2 * 2 * 4 * 5 + 20),
    (DepthwiseConv2D(2, depth_multiplier=6, padding="same", dilation_rate=(2, 2)), (4, 4, 4), (4, 4, 24),
     2 * 2 * 4 * 6 + 24),
    (DepthwiseConv2D((2, 2), strides=(2, 2), depth_multiplier=6), (5, 5, 4), (2, 2, 24), 2 * 2 * 4 * 6 + 24),
    # separable_conv_test.py test_separable_conv2d_basic
    (SeparableConv2D(5, 2, depth_multiplier=5), (5, 5, 4), (4, 4, 5), 2 * 2 * 4 * 5 + 20 * 5 + 5),
    (SeparableConv2D(6, 2, depth_multiplier=6, padding="same", dilation_rate=(2, 2)), (4, 4, 4), (4, 4, 6),
     2 * 2 * 4 * 6 + 24 * 6 + 6),
    (SeparableConv2D(6, (2, 2), strides=(2, 2), depth_multiplier=6), (5, 5, 4), (2, 2, 6),
     2 * 2 * 4 * 6 + 24 * 6 + 6),
    # conv_transpose_test.py test_conv2d_transpose_basic (its channels_first case transposed to channels_last)
    (Conv2DTranspose(5, 2, strides=2), (8, 8, 4), (16, 16, 5), 2 * 2 * 5 * 4 + 5),
    (Conv2DTranspose(6, 2, strides=3, padding="same", output_padding=2), (8, 8, 4), (23, 23, 6),
     2 * 2 * 6 * 4 + 6),
    (Conv2DTranspose(6, (2, 3), strides=(2, 1)), (8, 8, 4), (16, 10, 6), 2 * 3 * 6 * 4 + 6),
    (Conv2DTranspose(2, (7, 7), strides=(16, 16)), (14, 14, 2), (224, 224, 2), 7 * 7 * 2 * 2 + 2),
]


@pytest.mark.parametrize("case", KERAS_CASES, ids=[f"{c[0].type}-{i}" for i, c in enumerate(KERAS_CASES)])
def test_keras_layer_test_shapes_python_api(case):
    layer, input_shape, output_shape, params = case
    model = jaxcnn.Sequential([jaxcnn.layers.Input(input_shape), layer])
    assert model.output_shape == output_shape
    assert model.count_params() == params
    model.check()  # the formulas against jax.eval_shape of the Flax code


def keras_json(class_name: str, conf: dict, input_shape: tuple) -> str:
    """A Keras 3 ``Sequential.to_json()`` of one layer, as Keras writes it."""
    policy = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
              "registered_name": None}
    batch = [None, *input_shape]
    return json.dumps({
        "module": "keras", "class_name": "Sequential", "config": {
            "name": "sequential", "trainable": True, "dtype": policy, "layers": [
                {"module": "keras.layers", "class_name": "InputLayer",
                 "config": {"batch_shape": batch, "dtype": "float32", "sparse": False, "name": "input_layer"},
                 "registered_name": None},
                {"module": "keras.layers", "class_name": class_name,
                 "config": {"name": "layer", "trainable": True, "dtype": policy, "data_format": "channels_last",
                            **conf},
                 "registered_name": None, "build_config": {"input_shape": batch}}]},
        "registered_name": None})


KERAS_JSON_CASES = [
    ("Conv2D", {"filters": 6, "kernel_size": [2, 2], "strides": [2, 1], "padding": "valid", "groups": 2,
                "dilation_rate": [1, 1]}, (5, 5, 4), (2, 4, 6), 54),
    ("DepthwiseConv2D", {"kernel_size": [2, 2], "strides": [1, 1], "padding": "same", "depth_multiplier": 6,
                         "dilation_rate": [2, 2], "depthwise_initializer": {
                             "module": "keras.initializers", "class_name": "GlorotUniform",
                             "config": {"seed": None}, "registered_name": None},
                         "depthwise_regularizer": None, "depthwise_constraint": None}, (4, 4, 4), (4, 4, 24), 120),
    ("DepthwiseConv2D", {"kernel_size": [3, 3], "depth_multiplier": 1, "groups": 1, "padding": "same"},
     (7, 7, 8), (7, 7, 8), 3 * 3 * 8 + 8),  # tf.keras 2 writes Conv2D's groups=1 into it
    ("SeparableConv2D", {"filters": 5, "kernel_size": [2, 2], "depth_multiplier": 5, "pointwise_initializer":
                         "glorot_uniform"}, (5, 5, 4), (4, 4, 5), 185),
    ("Conv2DTranspose", {"filters": 6, "kernel_size": [2, 2], "strides": [3, 3], "padding": "same",
                         "output_padding": [2, 2], "dilation_rate": [1, 1]}, (8, 8, 4), (23, 23, 6), 102),
]


@pytest.mark.parametrize(("class_name", "conf", "input_shape", "output_shape", "params"), KERAS_JSON_CASES)
def test_keras_layer_test_shapes_keras_json(class_name, conf, input_shape, output_shape, params):
    model = config.from_keras_json(keras_json(class_name, conf, input_shape))
    assert model.layers[0].type == class_name
    assert model.output_shape == output_shape
    assert model.count_params() == params
    model.check()


def test_formulas_and_flops_written_out():
    grouped = Conv2D(6, 2, groups=2)
    assert grouped.formula((5, 5, 4)).params == "6*2*2*(4/2) + 6 = 54"
    # 4*4 positions * 6 filters * 2*2 taps * 2 channels per group = 768 MACs; 2*768 + 4*4*6 bias adds
    assert grouped.flops((5, 5, 4)) == 2 * 768 + 96
    depthwise = DepthwiseConv2D(3, depth_multiplier=2)
    assert depthwise.formula((6, 6, 3)).output.endswith("channels = 3*2 = 6")
    assert depthwise.formula((6, 6, 3)).params == "3*3*3*2 + 6 = 60"
    assert depthwise.flops((6, 6, 3)) == 2 * (4 * 4 * 6 * 9) + 4 * 4 * 6
    separable = SeparableConv2D(8, 3, depth_multiplier=2)
    assert separable.formula((6, 6, 3)).params == "3*3*3*2 + 3*2*8 + 8 = 110"
    assert separable.flops((6, 6, 3)) == 2 * (4 * 4 * 6 * 9 + 4 * 4 * 6 * 8) + 4 * 4 * 8
    transpose = Conv2DTranspose(6, 2, strides=3, padding="same", output_padding=2)
    assert transpose.formula((8, 8, 4)).output == (
        "height = (8 - 1)*3 + 2 % 2 + 2 = 23; width = (8 - 1)*3 + 2 % 2 + 2 = 23; channels = filters = 6")
    assert transpose.formula((8, 8, 4)).params == "2*2*6*4 + 6 = 102"
    assert Conv2DTranspose(5, 3, strides=2).formula((4, 4, 2)).output.startswith(
        "height = (4 - 1)*2 + 3 + 0 = 9")
    assert Conv2DTranspose(5, 2, strides=2, padding="same").formula((4, 4, 2)).output.startswith(
        "height = 4*2 = 8")
    # every input position times every tap and filter: 8*8*4 * 2*2 * 6 MACs, plus 23*23*6 bias adds
    assert transpose.flops((8, 8, 4)) == 2 * (8 * 8 * 4 * 4 * 6) + 23 * 23 * 6


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Conv2D(5, 2, groups=2), r"`groups` \(=2\) must divide `filters`.*filters=5"),
        (lambda: Conv2D(4, 2, groups=0), r"`groups` \(=0\) must be a positive integer"),
        (lambda: Conv2D(4, 2, groups=2, lowering="patches"), r"`lowering` \(='patches'\) cannot be 'patches'"),
        (lambda: DepthwiseConv2D(2, strides=2, dilation_rate=(2, 1)), r"`strides > 1` in conjunction"),
        (lambda: SeparableConv2D(2, 2, strides=2, dilation_rate=(2, 1)), r"`strides > 1` in conjunction"),
        (lambda: Conv2DTranspose(2, 2, strides=2, dilation_rate=(2, 1)), r"`strides > 1` in conjunction"),
        (lambda: DepthwiseConv2D(2, depth_multiplier=0), r"`depth_multiplier` \(=0\) must be a positive"),
        (lambda: Conv2DTranspose(2, 2, output_padding=-1), r"`output_padding` \(=-1\) must be None"),
        (lambda: Conv2D(4, 3, data_format="channels_first"),
         r"`data_format` \(='channels_first'\) is not supported: jaxcnn is channels-last"),
        (lambda: SeparableConv2D(4, 3, data_format="NHWC"), r"`data_format` \(='NHWC'\) must be 'channels_last'"),
    ],
)
def test_bad_arguments_refused_in_one_line(make, message):
    with pytest.raises(LayerArgumentError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_data_format_channels_last_accepted_everywhere():
    # Keras's default, passed explicitly all over Keras's own tests; was a TypeError on Conv2D
    for layer in (Conv2D(4, 3, data_format="channels_last"), DepthwiseConv2D(3, data_format=None),
                  SeparableConv2D(4, 3, data_format="channels_last"),
                  Conv2DTranspose(4, 3, data_format="channels_last"),
                  MaxPooling2D(2, data_format="channels_last"), AveragePooling2D(data_format=None),
                  GlobalAveragePooling2D(data_format="channels_last"),
                  GlobalMaxPooling2D(data_format="channels_last", keepdims=True)):
        assert layer.data_format == "channels_last"
        assert "data_format" not in layer.arguments()
    with pytest.raises(LayerArgumentError, match=r"^MaxPooling2D: `data_format` \(='channels_first'\) is not "
                                                  r"supported"):
        MaxPooling2D(data_format="channels_first")


def test_input_channels_not_divisible_by_groups_refused_naming_the_layer():
    model = jaxcnn.Sequential([jaxcnn.layers.Input((8, 8, 3)), Conv2D(4, 3, groups=2, name="grouped")])
    with pytest.raises(ImpossibleShapeError, match=r"'grouped' \(Conv2D\).*groups=2, but the input has 3 channels"):
        model.plan()


def test_transpose_output_of_size_zero_refused():
    # same padding with output_padding 0, an even kernel and a 1-pixel input: (1 - 1)*1 + 2 % 2 + 0 = 0
    model = jaxcnn.Sequential([jaxcnn.layers.Input((1, 1, 3)), Conv2DTranspose(4, 2, padding="same", output_padding=0)])
    with pytest.raises(ImpossibleShapeError, match=r"the output height would be 0"):
        model.plan()


# ---- values --------------------------------------------------------------------------------------


def run(layer, x, params):
    """The layer's Flax forward on ``x`` with ``params`` (NumPy arrays by name)."""
    model = jaxcnn.Sequential([jaxcnn.layers.Input(x.shape[1:]), layer])
    module = build_module(model)
    name = model.layers[0].name
    variables = module.init(jax.random.PRNGKey(0), jnp.asarray(x))
    assert {k: v.shape for k, v in variables["params"][name].items()} == {k: v.shape for k, v in params.items()}
    return np.asarray(module.apply({"params": {name: params}}, jnp.asarray(x)))


def np_conv(x, kernel, strides, padding, dilation, groups=1):
    """Cross-correlation, NHWC and HWIO, Keras's SAME padding (extra pixel at the end), groups."""
    kh, kw, cg, f = kernel.shape
    eff = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    n, h, w, _ = x.shape
    if padding == "same":
        pads = []
        for size, e, s in zip((h, w), eff, strides):
            total = max((-(-size // s) - 1) * s + e - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho = (x.shape[1] - eff[0]) // strides[0] + 1
    wo = (x.shape[2] - eff[1]) // strides[1] + 1
    out = np.zeros((n, ho, wo, f))
    per = f // groups
    for g in range(groups):
        xs = x[..., g * cg:(g + 1) * cg]
        ks = kernel[..., g * per:(g + 1) * per]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, i * dilation[0]: i * dilation[0] + (ho - 1) * strides[0] + 1: strides[0],
                           j * dilation[1]: j * dilation[1] + (wo - 1) * strides[1] + 1: strides[1]]
                out[..., g * per:(g + 1) * per] += patch @ ks[i, j]
    return out


def np_depthwise(x, kernel, strides, padding, dilation):
    """Each channel c with its m filters: output channel c*m + j (Keras's order)."""
    c = kernel.shape[2]
    outs = [np_conv(x[..., ci:ci + 1], kernel[:, :, ci:ci + 1, :], strides, padding, dilation) for ci in range(c)]
    return np.concatenate(outs, axis=-1)


def np_conv_transpose(x, kernel, strides, padding, output_padding, dilation):
    """The transposed convolution as the gradient (adjoint) of a convolution: each input pixel
    scatters ``x[i, j] . kernel[a, b]`` (kernel ``(kh, kw, filters, C_in)``) to output position
    ``(i*s + a*d - crop, ...)``, ``crop = (k_eff - 1) - left pad`` (Keras's padding), then the
    output is cut to Keras's output size ``compute_conv_transpose_output_shape``."""
    kh, kw, f, _ = kernel.shape
    n, h, w, _ = x.shape
    sizes, crops = [], []
    for axis, size in enumerate((h, w)):
        k, s, d = kernel.shape[axis], strides[axis], dilation[axis]
        eff = (k - 1) * d + 1
        op = None if output_padding is None else output_padding[axis]
        if padding == "valid":
            op = max(eff, s) - eff if op is None else op
            out, left = (size - 1) * s + eff + op, eff - 1
        else:
            pad_len = s + eff - 2 if op is None else eff + eff % 2 - 2 + op
            left = min(pad_len // 2 + pad_len % 2, eff - 1)
            out = size * s if op is None else (size - 1) * s + eff % 2 + op
        sizes.append(out)
        crops.append(eff - 1 - left)
    big = np.zeros((n, sizes[0] + h * strides[0] + kh * dilation[0], sizes[1] + w * strides[1] + kw * dilation[1], f))
    for i in range(h):
        for j in range(w):
            for a in range(kh):
                for b in range(kw):
                    big[:, i * strides[0] + a * dilation[0], j * strides[1] + b * dilation[1]] += (
                        x[:, i, j] @ kernel[a, b].T)
    return big[:, crops[0]:crops[0] + sizes[0], crops[1]:crops[1] + sizes[1]]


def rand(*shape, seed=0):
    return np.random.default_rng(seed + len(shape) + sum(shape)).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize(("strides", "padding", "dilation", "groups"), [
    ((1, 1), "valid", (1, 1), 2), ((2, 1), "same", (1, 1), 3), ((1, 1), "same", (2, 2), 6)])
def test_grouped_conv_values(strides, padding, dilation, groups):
    x = rand(2, 7, 6, 6)
    kernel, bias = rand(3, 2, 6 // groups, 12), rand(12)
    layer = Conv2D(12, (3, 2), strides=strides, padding=padding, dilation_rate=dilation, groups=groups)
    y = run(layer, x, {"kernel": kernel, "bias": bias})
    np.testing.assert_allclose(y, np_conv(x, kernel, strides, padding, dilation, groups) + bias, rtol=1e-4, atol=1e-4)


DEPTHWISE_LOWERINGS = ["conv", "shifted", pytest.param("onednn", marks=pytest.mark.skipif(
    not jaxcnn.onednn.available(), reason="the oneDNN extension is not built"))]


# depthwise_conv_test.py DepthwiseConvCorrectnessTest's cases on an (8, 8, 4) input
@pytest.mark.parametrize("lowering", DEPTHWISE_LOWERINGS)
@pytest.mark.parametrize(("m", "k", "strides", "padding", "dilation"), [
    (5, (2, 2), (1, 1), "valid", (1, 1)), (6, (2, 2), (1, 1), "same", (2, 2)), (6, (2, 2), (2, 2), "valid", (1, 1)),
    (2, (3, 3), (2, 2), "same", (1, 1))])
def test_depthwise_values(m, k, strides, padding, dilation, lowering):
    x = rand(2, 8, 8, 4)
    kernel, bias = rand(*k, 4, m), rand(4 * m)
    layer = DepthwiseConv2D(k, strides=strides, padding=padding, depth_multiplier=m, dilation_rate=dilation,
                            lowering=lowering)
    y = run(layer, x, {"kernel": kernel, "bias": bias})
    np.testing.assert_allclose(y, np_depthwise(x, kernel, strides, padding, dilation) + bias, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lowering", DEPTHWISE_LOWERINGS)
@pytest.mark.parametrize(("m", "strides", "padding", "dilation"), [
    (5, (1, 1), "valid", (1, 1)), (6, (1, 1), "same", (2, 2)), (6, (2, 2), "valid", (1, 1))])
def test_separable_values(m, strides, padding, dilation, lowering):
    x = rand(2, 8, 8, 4)
    depthwise, pointwise, bias = rand(2, 2, 4, m), rand(1, 1, 4 * m, 6), rand(6)
    layer = SeparableConv2D(6, 2, strides=strides, padding=padding, depth_multiplier=m, dilation_rate=dilation,
                            lowering=lowering)
    y = run(layer, x, {"depthwise_kernel": depthwise, "pointwise_kernel": pointwise, "bias": bias})
    expected = np_conv(np_depthwise(x, depthwise, strides, padding, dilation), pointwise, (1, 1), "valid", (1, 1))
    np.testing.assert_allclose(y, expected + bias, rtol=1e-4, atol=1e-4)


# conv_transpose_test.py ConvTransposeCorrectnessTest's 2D cases on a (14, 14, 4) input, and more
TRANSPOSE_CASES = [
    (5, (2, 2), (2, 2), "valid", None, (1, 1)),
    (6, (7, 7), (16, 16), "same", (2, 2), (1, 1)),
    (6, (2, 3), (2, 1), "valid", None, (1, 1)),
    (2, (7, 7), (16, 16), "valid", None, (1, 1)),
    (3, (3, 3), (2, 2), "same", None, (1, 1)),
    (3, (3, 4), (2, 3), "valid", (1, 2), (1, 1)),
    (3, (3, 3), (1, 1), "same", None, (2, 2)),
    (3, (2, 3), (1, 1), "valid", (1, 0), (3, 2)),
]


@pytest.mark.parametrize(("filters", "k", "strides", "padding", "output_padding", "dilation"), TRANSPOSE_CASES)
def test_conv_transpose_values(filters, k, strides, padding, output_padding, dilation):
    x = rand(2, 5, 6, 4)
    kernel, bias = rand(*k, filters, 4), rand(filters)
    layer = Conv2DTranspose(filters, k, strides=strides, padding=padding, output_padding=output_padding,
                            dilation_rate=dilation)
    y = run(layer, x, {"kernel": kernel, "bias": bias})
    expected = np_conv_transpose(x, kernel, strides, padding, output_padding, dilation) + bias
    assert y.shape == expected.shape == (2, *layer.output_shape((5, 6, 4))[:2], filters)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


# ---- gradients against lax.conv references ------------------------------------------------------


def grads_of(f, x, kernel):
    g = rand(*jax.eval_shape(f, x, kernel).shape, seed=7)
    return jax.grad(lambda a, b: jnp.sum(f(a, b) * g), argnums=(0, 1))(x, kernel)


def forward_of(layer):
    model = jaxcnn.Sequential([jaxcnn.layers.Input((6, 6, 4)), layer])
    module = build_module(model)
    key = "depthwise_kernel" if isinstance(layer, SeparableConv2D) else "kernel"
    return lambda x, kernel: module.apply({"params": {model.layers[0].name: {key: kernel}}}, x)


def test_grouped_conv_gradients_match_per_group_lax_conv():
    x, kernel = jnp.asarray(rand(2, 6, 6, 4)), jnp.asarray(rand(3, 3, 2, 6))

    def reference(x, kernel):  # each group by itself, concatenated
        return jnp.concatenate([lax.conv_general_dilated(
            x[..., 2 * g:2 * g + 2], kernel[..., 3 * g:3 * g + 3], (1, 1), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC")) for g in range(2)], axis=-1)

    f = forward_of(Conv2D(6, 3, padding="same", groups=2, use_bias=False))
    for got, want in zip(grads_of(f, x, kernel), grads_of(reference, x, kernel)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lowering", DEPTHWISE_LOWERINGS)
@pytest.mark.parametrize("dilation", [(1, 1), (2, 1)])
def test_depthwise_gradients_match_per_channel_lax_conv(lowering, dilation):
    x, kernel = jnp.asarray(rand(2, 6, 6, 4)), jnp.asarray(rand(3, 3, 4, 2))
    strides = (2, 2) if dilation == (1, 1) else (1, 1)  # Keras refuses both above 1

    def reference(x, kernel):
        return jnp.concatenate([lax.conv_general_dilated(
            x[..., c:c + 1], kernel[:, :, c:c + 1, :], strides, "SAME", rhs_dilation=dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC")) for c in range(4)], axis=-1)

    f = forward_of(DepthwiseConv2D(3, strides=strides, padding="same", depth_multiplier=2, dilation_rate=dilation,
                                   use_bias=False, lowering=lowering))
    for got, want in zip(grads_of(f, x, kernel), grads_of(reference, x, kernel)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_transpose_equals_and_differentiates_as_the_gradient_of_a_conv():
    # valid, stride 2, kernel 3: output (6 - 1)*2 + 3 = 13; the adjoint of a valid stride-2 conv
    # of a 13x13 map with the same (3, 3, filters=5, C_in=4) kernel read as HWIO (in=5, out=4).
    x, kernel = jnp.asarray(rand(2, 6, 6, 4)), jnp.asarray(rand(3, 3, 5, 4))

    def reference(x, kernel):
        def conv(z):
            return lax.conv_general_dilated(z, kernel, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.vjp(conv, jnp.zeros((2, 13, 13, 5)))[1](x)[0]

    f = forward_of(Conv2DTranspose(5, 3, strides=2, use_bias=False))
    np.testing.assert_allclose(f(x, kernel), reference(x, kernel), rtol=1e-4, atol=1e-4)
    for got, want in zip(grads_of(f, x, kernel), grads_of(reference, x, kernel)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_grouped_conv_lowering_is_lax_conv():
    from jaxcnn.lowerings import LoweringContext

    layer = Conv2D(4, 3, groups=2)
    assert layer.lowering_for((8, 8, 4), LoweringContext("cpu"), batch=1, train=True) == "conv"
    assert layer.describe_lowering((8, 8, 4), LoweringContext("cpu")) == "lax.conv"  # where oneDNN is not used
    assert Conv2D(4, 3).lowering_for((8, 8, 4), LoweringContext("cpu"), batch=1) == "patches"


@pytest.mark.parametrize(("layer", "input_shape"), [
    (Conv2D(8, 3, groups=4), (12, 10, 4)),
    (DepthwiseConv2D((3, 2), strides=2, depth_multiplier=3), (12, 10, 4)),
    (SeparableConv2D(8, 3, depth_multiplier=2, use_bias=False), (12, 10, 4)),
])
def test_flops_equal_xla_cost_analysis_for_valid_convolutions(layer, input_shape):
    """As for Conv2D (test_layers.py): XLA counts every tap of a VALID convolution, 2 per MAC."""
    from test_layers import _xla_flops

    assert _xla_flops(layer, input_shape) == layer.flops(input_shape)


# ---- random valid layers: formulas equal eval_shape, counts equal Keras's weight shapes ------------

_sizes = st.integers(1, 3)
_paddings = st.sampled_from(["valid", "same"])


@st.composite
def _strided_or_dilated(draw):
    if draw(st.booleans()):
        return {"strides": (draw(_sizes), draw(_sizes)), "dilation_rate": 1}
    return {"strides": 1, "dilation_rate": (draw(_sizes), draw(_sizes))}


@st.composite
def new_convolutions(draw, channels):
    kind = draw(st.sampled_from(["grouped", "depthwise", "separable", "transpose"]))
    common = {"kernel_size": (draw(_sizes), draw(_sizes)), "padding": draw(_paddings),
              "use_bias": draw(st.booleans()), "trainable": draw(st.booleans()), **draw(_strided_or_dilated())}
    if kind == "grouped":
        groups = draw(st.sampled_from([g for g in (1, 2, 3, 4) if channels % g == 0]))
        return Conv2D(groups * draw(_sizes), groups=groups, **common)
    if kind == "depthwise":
        return DepthwiseConv2D(depth_multiplier=draw(_sizes), **common)
    if kind == "separable":
        return SeparableConv2D(draw(_sizes), depth_multiplier=draw(_sizes), **common)
    output_padding = draw(st.one_of(st.none(), st.tuples(st.integers(0, 2), st.integers(0, 2))))
    return Conv2DTranspose(draw(_sizes), output_padding=output_padding, **common)


def _keras_weights(layer, c):
    """The number of weights by Keras's weight shapes (the module docstring's sources), on ``c``
    input channels."""
    kh, kw = layer.kernel_size
    if isinstance(layer, DepthwiseConv2D):
        outputs = c * layer.depth_multiplier
        return kh * kw * c * layer.depth_multiplier + outputs * layer.use_bias
    if isinstance(layer, SeparableConv2D):
        kernels = kh * kw * c * layer.depth_multiplier + c * layer.depth_multiplier * layer.filters
    elif isinstance(layer, Conv2DTranspose):
        kernels = kh * kw * layer.filters * c
    else:
        kernels = kh * kw * (c // layer.groups) * layer.filters
    return kernels + layer.filters * layer.use_bias


@st.composite
def conv_models(draw):
    shape = (draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.sampled_from([1, 2, 4, 6])))
    layers, channels = [], shape[2]
    for _ in range(draw(st.integers(1, 3))):
        layer = draw(new_convolutions(channels))
        layers.append(layer)
        channels = layer.filters if hasattr(layer, "filters") else channels * layer.depth_multiplier
    model = jaxcnn.Sequential([jaxcnn.layers.Input(shape), *layers])
    try:
        model.plan()
    except ImpossibleShapeError:
        assume(False)
    return model


@given(conv_models())
def test_random_convolutions_formulas_equal_eval_shape_and_keras_counts(model):
    result = model.check()
    trainable = frozen = 0
    for layer, proof in zip(model.layers, result.layers):
        assert tuple(proof.output.shape[1:]) == proof.plan.output_shape
        n = _keras_weights(layer, proof.plan.input_shape[-1])
        if layer.trainable:
            trainable += n
        else:
            frozen += n
    assert (model.trainable_params(), model.non_trainable_params()) == (trainable, frozen)
