"""Every lowering computes the same values and gradients as the reference one; the choice rule.

The ``onednn`` lowerings' values are tested where :mod:`jaxcnn.onednn` is available (its extension
built here); the choice rule and the wiring are tested with its availability forced either way.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

import jaxcnn
import jaxcnn.onednn
from jaxcnn import lowerings
from jaxcnn.errors import ImpossibleShapeError, LayerArgumentError
from jaxcnn.layers import Conv2D, MaxPooling2D
from jaxcnn.lowerings import LoweringContext

CPU, GPU, TPU = LoweringContext("cpu"), LoweringContext("gpu"), LoweringContext("tpu")
FAST_CPU = LoweringContext("cpu", fast_cpu=True)
ONEDNN = LoweringContext("cpu", onednn=True)
needs_onednn = pytest.mark.skipif(not jaxcnn.onednn.available(),
                                  reason=f"oneDNN: {jaxcnn.onednn.unavailable_reason()}")


@pytest.fixture
def without_onednn(monkeypatch):
    """This process as one without the oneDNN extension (the summary's CPU rule then has none)."""
    monkeypatch.setattr(jaxcnn.onednn, "available", lambda: False)

CONV_GRID = [
    # (input h, w, kernel, strides, padding, dilation)
    *[(h, w, k, s, p, d) for (h, w), k, s, p, d in itertools.product(
        [(7, 5), (2, 2), (1, 3)], [(3, 3), (1, 1), (2, 3)], [(1, 1), (2, 1)], ["same", "valid"], [(1, 1), (2, 1)])
      if (p == "same" or (h >= (k[0] - 1) * d[0] + 1 and w >= (k[1] - 1) * d[1] + 1))
      and not (max(s) > 1 and max(d) > 1)],  # Conv2D refuses strides > 1 with dilation > 1, as Keras
]


@pytest.mark.parametrize("lowering", ["patches", pytest.param("onednn", marks=needs_onednn)])
@pytest.mark.parametrize("h, w, kernel, strides, padding, dilation", CONV_GRID)
def test_every_convolution_lowering_equals_lax_conv_in_values_and_gradients(h, w, kernel, strides, padding, dilation,
                                                                           lowering):
    rng = np.random.default_rng(hash((h, w, kernel, strides, padding, dilation)) % 2**32)
    x = jnp.asarray(rng.normal(size=(2, h, w, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(*kernel, 3, 4)), jnp.float32)

    def run(lowering):
        def f(x, k):
            y = lowerings.conv(x, k, strides=strides, padding=padding, dilation=dilation, lowering=lowering)
            return jnp.sum(jnp.sin(y)), y
        (_, y), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, k)
        return y, grads

    y_ref, (gx_ref, gk_ref) = run("conv")
    y, (gx, gk) = run(lowering)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gk, gk_ref, rtol=1e-4, atol=1e-4)


POOL_GRID = [  # (pool, strides, padding, h, w)
    *[(p, p, "valid", h, w) for p, h, w in [((2, 2), 8, 6), ((3, 3), 9, 3), ((2, 1), 4, 5), ((1, 1), 3, 3)]],
    ((3, 3), (2, 2), "valid", 9, 8), ((3, 3), (2, 2), "same", 9, 8), ((2, 2), (2, 2), "same", 7, 5),
    ((3, 2), (1, 1), "same", 4, 6), ((2, 3), (2, 1), "same", 5, 5), ((1, 1), (2, 2), "valid", 5, 4),
]


@needs_onednn
@pytest.mark.parametrize("pool, strides, padding, h, w", POOL_GRID)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_onednn_pooling_equals_reduce_window_in_values_and_gradients(pool, strides, padding, h, w, kind):
    """Overlapping windows and SAME padding too: max pads with -inf, the average excludes the padding."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, h, w, 5)), jnp.float32)  # no ties
    fn = lowerings.max_pool if kind == "max" else lowerings.avg_pool

    def run(lowering):
        f = lambda x: fn(x, pool=pool, strides=strides, padding=padding, lowering=lowering)  # noqa: E731
        return jax.jit(f)(x), jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))(x)

    y_ref, g_ref = run("reduce_window")
    y, g = run("onednn")
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)


GROUPED_GRID = [  # (input h, w, channels, filters, groups, kernel, strides, padding, dilation)
    (6, 7, 4, 6, 2, (3, 3), (1, 1), "same", (1, 1)),
    (6, 7, 4, 8, 4, (3, 3), (2, 2), "same", (1, 1)),  # depthwise: groups = channels, 2 filters each
    (7, 6, 6, 6, 3, (2, 3), (1, 2), "valid", (1, 1)),
    (9, 9, 4, 4, 4, (3, 3), (1, 1), "valid", (2, 2)),
]


@needs_onednn
@pytest.mark.parametrize("h, w, c, f, groups, kernel, strides, padding, dilation", GROUPED_GRID)
def test_onednn_grouped_convolution_with_bias_and_relu_equals_lax_in_values_and_gradients(
        h, w, c, f, groups, kernel, strides, padding, dilation):
    """The bias and ReLU fused in oneDNN against lax's convolution, bias add and ReLU. The ReLU's
    gradient is compared with the mask of the same forward values (oneDNN's): a pre-activation within
    rounding of 0 may fall on either side, and one flipped mask element changes a gradient."""
    rng = np.random.default_rng(groups * 100 + h)
    x = jnp.asarray(rng.normal(size=(2, h, w, c)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(*kernel, c // groups, f)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(f,)), jnp.float32)
    args = dict(strides=strides, padding=padding, dilation=dilation, groups=groups)
    y = lowerings.onednn_conv(x, k, b, activation="relu", **args)
    mask = y > 0
    cotangent = jnp.asarray(rng.normal(size=y.shape), jnp.float32)

    def reference(x, k, b):
        pads = lowerings.conv_pads((h, w), kernel, strides, padding, dilation)
        z = lax.conv_general_dilated(x, k, strides, pads, rhs_dilation=dilation, feature_group_count=groups,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
        return jnp.where(mask, z, 0.0)

    np.testing.assert_allclose(y, reference(x, k, b), rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda *a: jnp.sum(cotangent * lowerings.onednn_conv(*a, activation="relu", **args)),
                     argnums=(0, 1, 2))(x, k, b)
    grads_ref = jax.grad(lambda *a: jnp.sum(cotangent * reference(*a)), argnums=(0, 1, 2))(x, k, b)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


TRANSPOSE_GRID = [  # (input h, w, kernel, strides, pads, dilation)
    (5, 4, (3, 3), (2, 2), ((1, 2), (1, 2)), (1, 1)),
    (4, 4, (2, 3), (1, 2), ((1, 1), (2, 2)), (1, 1)),
    (3, 5, (3, 3), (1, 1), ((2, 2), (2, 2)), (1, 1)),
    (4, 3, (3, 2), (1, 1), ((4, 4), (1, 2)), (2, 1)),
    (3, 3, (4, 4), (3, 3), ((3, 4), (3, 3)), (1, 1)),
]


@needs_onednn
@pytest.mark.parametrize("h, w, kernel, strides, pads, dilation", TRANSPOSE_GRID)
def test_onednn_transposed_convolution_equals_lax_in_values_and_gradients(h, w, kernel, strides, pads, dilation):
    rng = np.random.default_rng(h * 10 + w)
    x = jnp.asarray(rng.normal(size=(2, h, w, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(*kernel, 4, 3)), jnp.float32)  # Keras's layout: (kh, kw, filters, in)

    def run(transpose):
        (_, y), grads = jax.value_and_grad(lambda x, k: (jnp.sum(jnp.sin(y := transpose(x, k))), y),
                                           argnums=(0, 1), has_aux=True)(x, k)
        return y, grads

    y_ref, grads_ref = run(lambda x, k: lax.conv_transpose(x, k, strides, pads, rhs_dilation=dilation,
                                                           dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                           transpose_kernel=True))
    y, grads = run(lambda x, k: lowerings.onednn_conv_transpose(x, k, strides=strides, padding=pads,
                                                               dilation=dilation))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pool, h, w", [((2, 2), 8, 6), ((3, 3), 9, 3), ((2, 1), 4, 5), ((1, 1), 3, 3)])
@pytest.mark.parametrize("kind", ["max", "sum"])
def test_reshape_pooling_equals_reduce_window_in_values_and_gradients(pool, h, w, kind):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, h, w, 3)), jnp.float32)  # no ties
    fn = lowerings.max_pool if kind == "max" else lowerings.sum_pool

    def run(lowering):
        f = lambda x: fn(x, pool=pool, strides=pool, padding="valid", lowering=lowering)  # noqa: E731
        return f(x), jax.grad(lambda x: jnp.sum(f(x) ** 2))(x)

    y_ref, g_ref = run("reduce_window")
    y, g = run("reshape")
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6)


def test_how_ties_in_max_pooling_share_the_gradient():
    """reduce_window (select-and-scatter) gives a window's gradient to its first maximum;
    reshape shares it equally among the tied maxima."""
    x = jnp.array([[3.0, 3.0], [1.0, 3.0]]).reshape(1, 2, 2, 1)
    grads = {lowering: jax.grad(lambda x: jnp.sum(lowerings.max_pool(
        x, pool=(2, 2), strides=(2, 2), padding="valid", lowering=lowering)))(x)[0, :, :, 0]
        for lowering in ("reduce_window", "reshape")}
    np.testing.assert_array_equal(grads["reduce_window"], [[1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(grads["reshape"], [[1 / 3, 1 / 3], [0.0, 1 / 3]], rtol=1e-6)


def test_the_choice_rule_on_cpu_and_elsewhere():
    assert lowerings.choose_conv((2, 2), CPU) == "patches"
    assert lowerings.choose_conv((1, 4), CPU) == "patches"
    assert lowerings.choose_conv((4, 4), CPU) == "conv"
    assert lowerings.choose_conv((4, 4), CPU, batch=8) == "patches"  # small batches: patches
    assert lowerings.choose_conv((32, 32), CPU, batch=1) == "patches"
    assert lowerings.choose_conv((32, 32), CPU, batch=9) == "conv"
    assert lowerings.choose_conv((32, 32), CPU, batch=64, train=True, in_channels=3) == "patches"
    assert lowerings.choose_conv((8, 8), CPU, batch=64, train=True, in_channels=128) == "conv"
    assert lowerings.choose_conv((2, 2), GPU) == "conv"  # cuDNN
    assert lowerings.choose_conv((2, 2), GPU, batch=1) == "conv"
    assert lowerings.choose_conv((1, 1), TPU) == "conv"
    assert lowerings.choose_pool((8, 8), (2, 2), (2, 2), "valid", CPU) == "reshape"
    assert lowerings.choose_pool((7, 8), (2, 2), (2, 2), "valid", CPU) == "reduce_window"
    assert lowerings.choose_pool((8, 8), (3, 3), (2, 2), "valid", CPU) == "reduce_window"
    assert lowerings.choose_pool((8, 8), (2, 2), (2, 2), "same", CPU) == "reduce_window"
    assert lowerings.choose_pool((8, 8), (2, 2), (2, 2), "valid", GPU) == "reduce_window"


def test_the_fast_cpu_context_changes_the_training_rule_without_xla_flags(monkeypatch):
    """With the experimental XLA CPU flag, training keeps lax.conv but for 3x3 over few channels.
    The context says so, not XLA_FLAGS at trace time: the environment is left without the flag."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    for shape, channels, taps, plain, fast in [
        ((32, 32), 3, 4, "patches", "conv"),  # 2x2 filters on 32x32x3
        ((32, 32), 3, 9, "patches", "patches"),  # 3x3 over 3 channels: patches either way
        ((16, 16), 64, 9, "patches", "conv"),
        ((2, 2), 512, 9, "patches", "patches"),  # a tiny map: patches either way
        ((8, 8), 128, 9, "conv", "conv"),
    ]:
        args = dict(batch=64, train=True, in_channels=channels, taps=taps)
        assert (lowerings.choose_conv(shape, CPU, **args), lowerings.choose_conv(shape, FAST_CPU, **args)) == (
            plain, fast), (shape, channels, taps)
    layer, shape = Conv2D(8, 2, padding="same"), (32, 32, 3)
    assert layer.lowering_for(shape, CPU, batch=128, train=True) == "patches"
    assert layer.lowering_for(shape, FAST_CPU, batch=128, train=True) == "conv"
    assert layer.lowering_for(shape, FAST_CPU, batch=128, train=False) == "conv"
    assert layer.describe_lowering(shape, CPU) == "lax.conv; patches if batch<=8 or training"
    assert layer.describe_lowering(shape, FAST_CPU) == "lax.conv; patches if batch<=8"
    # this process's context reads the flags when a module is built
    assert not LoweringContext.of_process().fast_cpu
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
    context = LoweringContext.of_process()
    assert dataclasses.replace(context, onednn=False, onednn_missing=None) == LoweringContext(
        jax.default_backend(), fast_cpu=True)


def test_the_lowering_is_described_in_a_few_plain_words(without_onednn):
    assert lowerings.describe_conv((8, 8), CPU, in_channels=256) == "lax.conv; patches if batch<=8"
    assert lowerings.describe_conv((32, 32), CPU, in_channels=3) == "lax.conv; patches if batch<=8 or training"
    assert lowerings.describe_conv((2, 2), CPU, in_channels=512) == "patches"
    assert lowerings.describe_conv((32, 32), GPU, in_channels=3) == "lax.conv"
    # without a context (the summary starts no backend to learn which it is), the CPU rule is named
    assert lowerings.describe_conv((32, 32), in_channels=3) == "lax.conv; patches on CPU if batch<=8 or training"
    assert lowerings.describe_conv((2, 2), in_channels=512) == "lax.conv; patches on CPU"
    assert lowerings.describe_pool((8, 8), (2, 2), (2, 2), "valid") == "reduce_window; reshape on CPU"
    assert lowerings.describe_pool((8, 8), (2, 2), (2, 2), "valid", CPU) == "reshape"
    assert lowerings.describe_pool((8, 8), (3, 3), (2, 2), "valid") == "reduce_window"


def test_the_summary_shows_the_lowering_and_a_config_can_force_one(tmp_path, without_onednn):
    model = jaxcnn.load("configs/vgg11_32.toml")
    rows = model.summarize().rows
    both, batch = "lax.conv; patches on CPU if batch<=8 or training", "lax.conv; patches on CPU if batch<=8"
    small = "lax.conv; patches on CPU"
    assert [r.lowering for r in rows if r.type == "Conv2D"] == [both, both, batch, batch, both, both, small, small]
    assert {r.lowering for r in rows if r.type == "MaxPooling2D"} == {"reduce_window; reshape on CPU"}
    forced = jaxcnn.Sequential([Conv2D(4, 3, padding="same", lowering="patches", input_shape=(8, 8, 2)),
                                Conv2D(4, 3, padding="same", lowering="conv"), MaxPooling2D(lowering="reduce_window")])
    assert [r.lowering for r in forced.summarize().rows] == ["patches", "lax.conv", "reduce_window"]
    path = tmp_path / "m.toml"
    forced.save(path)
    assert 'lowering = "patches"' in path.read_text() and jaxcnn.load(path) == forced
    with pytest.raises(ImpossibleShapeError, match=r"layer 0 'max_pooling2d' \(MaxPooling2D\): lowering='reshape' "
                                                   r"needs windows that tile the input"):
        jaxcnn.Sequential([MaxPooling2D(3, strides=2, lowering="reshape", input_shape=(9, 9, 1))]).plan()
    with pytest.raises(LayerArgumentError, match=r"`lowering` \(='im2col'\) must be one of 'auto', 'conv', 'patches', "
                                                 r"'onednn'"):
        Conv2D(4, 3, lowering="im2col")


def test_a_whole_model_trains_the_same_under_either_lowering(without_onednn):
    """A step with every convolution forced to lax.conv equals one with every convolution forced to
    patches (to float32 rounding), and the automatic choice (patches at batch 4 on CPU, as the
    compiled HLO shows) equals both."""
    base = jaxcnn.load("configs/vgg11_32.toml").with_input_shape((8, 8, 3))

    def model(lowering):
        layers = [dataclasses.replace(layer, lowering=lowering) if layer.type == "Conv2D" else layer
                  for layer in base.layers[:6]]
        return jaxcnn.Sequential([*layers, jaxcnn.layers.Flatten(), jaxcnn.layers.Dense(10, activation="softmax")],
                                 input_shape=(8, 8, 3))

    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype(np.float32)
    y = np.arange(4, dtype=np.int32)
    results, convolutions = {}, {}
    for lowering in ("conv", "patches", "auto"):
        compiled = jaxcnn.compile(model(lowering), {"name": "sgd", "learning_rate": 0.01})
        state = compiled.init(0)
        convolutions[lowering] = compiled.train_step.lower(state, (x, y)).as_text().count("convolution(")
        state, metrics = compiled.train_step(state, (x, y))
        results[lowering] = (float(metrics.loss), jax.tree.leaves(state.params))
    assert convolutions["conv"] > 0 and convolutions["patches"] == 0
    if jax.default_backend() == "cpu":
        assert convolutions["auto"] == 0
    for lowering in ("patches", "auto"):
        assert results[lowering][0] == pytest.approx(results["conv"][0], rel=1e-5)
        for a, b in zip(results[lowering][1], results["conv"][1]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_on_a_mesh_every_automatic_convolution_is_lax_conv():
    # experiments/xla_spmd_patches_repro.py: the patches lowering's gradient came out wrong from XLA's
    # SPMD partitioner on 8 CPU devices; traced for a mesh, the rule falls back to lax.conv.
    mesh = LoweringContext("cpu", partitioned=True)
    assert lowerings.choose_conv((2, 2), CPU, batch=64, train=True) == "patches"
    assert lowerings.choose_conv((2, 2), mesh, batch=64, train=True) == "conv"
    assert lowerings.choose_conv((32, 32), mesh, batch=1) == "conv"
    # a model compiled for a mesh of several devices is built in that context, on one device not
    from jaxcnn.parallel import Layout

    model = jaxcnn.Sequential([Conv2D(2, 3, input_shape=(8, 8, 1)), jaxcnn.layers.Flatten(), jaxcnn.layers.Dense(2)])
    assert jaxcnn.compile(model, layout=Layout.abstract(2)).module.lowering.partitioned
    assert not jaxcnn.compile(model, layout=Layout.abstract(1)).module.lowering.partitioned
    assert not jaxcnn.compile(model).module.lowering.partitioned


def test_a_depthwise_convolution_is_shifted_slices_on_cpu_without_onednn_and_lax_conv_elsewhere(without_onednn):
    # XLA's CPU grouped convolution ran MobileNetV2's depthwise layers 10-40x slower than the
    # shifted slices (experiments/bench_depthwise.py); cuDNN and the TPU keep their own kernels.
    assert lowerings.choose_depthwise(CPU) == "shifted"
    assert lowerings.choose_depthwise(ONEDNN) == "onednn"
    assert lowerings.choose_depthwise(GPU) == lowerings.choose_depthwise(TPU) == "conv"
    assert lowerings.choose_depthwise(LoweringContext("cpu", partitioned=True)) == "conv"
    layer = jaxcnn.layers.DepthwiseConv2D(3, padding="same")
    assert layer.describe_lowering((8, 8, 4)) == "lax.conv; shifted on CPU"
    assert layer.describe_lowering((8, 8, 4), CPU) == "shifted"
    assert jaxcnn.layers.DepthwiseConv2D(3, lowering="conv").describe_lowering((8, 8, 4)) == "lax.conv"
    with pytest.raises(LayerArgumentError, match="lowering"):
        jaxcnn.layers.Conv2DTranspose(2, 3, lowering="shifted")


def test_an_exported_depthwise_convolution_is_shifted_on_cpu_and_lax_conv_on_the_other_platforms():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 6)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 6, 2)), jnp.float32)

    def f(x, k):
        return lowerings.depthwise(x, k, strides=(2, 2), padding="same", dilation=(1, 1), lowering="shifted",
                                   portable=True)

    both = jax.export.export(jax.jit(f), platforms=("cpu", "cuda", "tpu"))(x, k)
    cpu_only = jax.export.export(jax.jit(f), platforms=("cpu",))(x, k)
    assert "stablehlo.convolution" in both.mlir_module()  # the cuda and tpu branch
    assert "stablehlo.convolution" not in cpu_only.mlir_module()
    reference = lowerings.depthwise(x, k, strides=(2, 2), padding="same", dilation=(1, 1), lowering="conv")
    for exported in (both, cpu_only):
        restored = jax.export.deserialize(exported.serialize())
        np.testing.assert_allclose(restored.call(x, k), reference, rtol=1e-5, atol=1e-5)
