"""Every lowering computes the same values and gradients as the reference one; the choice rule."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import lowerings
from jaxcnn.errors import ImpossibleShapeError, LayerArgumentError
from jaxcnn.layers import Conv2D, MaxPooling2D, AveragePooling2D

CONV_GRID = [
    # (input h, w, kernel, strides, padding, dilation)
    *[(h, w, k, s, p, d) for (h, w), k, s, p, d in itertools.product(
        [(7, 5), (2, 2), (1, 3)], [(3, 3), (1, 1), (2, 3)], [(1, 1), (2, 1)], ["same", "valid"], [(1, 1), (2, 1)])
      if p == "same" or (h >= (k[0] - 1) * d[0] + 1 and w >= (k[1] - 1) * d[1] + 1)],
]


@pytest.mark.parametrize("h, w, kernel, strides, padding, dilation", CONV_GRID)
def test_patches_convolution_equals_lax_conv_in_values_and_gradients(h, w, kernel, strides, padding, dilation):
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
    y, (gx, gk) = run("patches")
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gk, gk_ref, rtol=1e-4, atol=1e-4)


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
    assert lowerings.choose_conv((2, 2), "cpu") == "patches"
    assert lowerings.choose_conv((1, 4), "cpu") == "patches"
    assert lowerings.choose_conv((4, 4), "cpu") == "conv"
    assert lowerings.choose_conv((4, 4), "cpu", batch=8) == "patches"  # small batches: patches
    assert lowerings.choose_conv((32, 32), "cpu", batch=1) == "patches"
    assert lowerings.choose_conv((32, 32), "cpu", batch=9) == "conv"
    assert lowerings.choose_conv((32, 32), "cpu", batch=64, train=True, in_channels=3) == "patches"
    assert lowerings.choose_conv((8, 8), "cpu", batch=64, train=True, in_channels=128) == "conv"
    assert lowerings.describe_conv((8, 8), "cpu", in_channels=256) == "conv (patches at batch <= 8)"
    assert lowerings.describe_conv((32, 32), "cpu", in_channels=3) == "conv (patches at batch <= 8 and in training)"
    assert lowerings.choose_conv((2, 2), "gpu") == "conv"  # cuDNN
    # with the experimental XLA CPU flag, training keeps lax.conv but for 3x3 over few channels
    import os
    flags = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    try:
        assert lowerings.choose_conv((32, 32), "cpu", batch=128, train=True, in_channels=3, taps=4) == "conv"
        assert lowerings.choose_conv((32, 32), "cpu", batch=64, train=True, in_channels=3, taps=9) == "patches"
        assert lowerings.choose_conv((16, 16), "cpu", batch=64, train=True, in_channels=64) == "conv"
        assert lowerings.choose_conv((2, 2), "cpu", batch=64, train=True, in_channels=512) == "patches"
    finally:
        if flags is None:
            del os.environ["XLA_FLAGS"]
        else:
            os.environ["XLA_FLAGS"] = flags
    assert lowerings.choose_conv((2, 2), "gpu", batch=1) == "conv"
    assert lowerings.choose_conv((1, 1), "tpu") == "conv"
    assert lowerings.choose_pool((8, 8), (2, 2), (2, 2), "valid", "cpu") == "reshape"
    assert lowerings.choose_pool((7, 8), (2, 2), (2, 2), "valid", "cpu") == "reduce_window"
    assert lowerings.choose_pool((8, 8), (3, 3), (2, 2), "valid", "cpu") == "reduce_window"
    assert lowerings.choose_pool((8, 8), (2, 2), (2, 2), "same", "cpu") == "reduce_window"
    assert lowerings.choose_pool((8, 8), (2, 2), (2, 2), "valid", "gpu") == "reduce_window"


def test_the_summary_shows_the_lowering_and_a_config_can_force_one(tmp_path):
    model = jaxcnn.load("configs/vgg11_32.toml")
    rows = model.summarize().rows
    both = "conv (patches at batch <= 8 and in training)"
    assert [r.lowering for r in rows if r.type == "Conv2D"] == [
        both, both, "conv (patches at batch <= 8)", "conv (patches at batch <= 8)", both, both, "patches", "patches"]
    assert {r.lowering for r in rows if r.type == "MaxPooling2D"} == {"reshape"}
    forced = jaxcnn.Sequential([Conv2D(4, 3, padding="same", lowering="patches", input_shape=(8, 8, 2)),
                                MaxPooling2D(lowering="reduce_window")])
    assert [r.lowering for r in forced.summarize().rows] == ["patches", "reduce_window"]
    path = tmp_path / "m.toml"
    forced.save(path)
    assert 'lowering = "patches"' in path.read_text() and jaxcnn.load(path) == forced
    with pytest.raises(ImpossibleShapeError, match=r"layer 0 'max_pooling2d' \(MaxPooling2D\): lowering='reshape' "
                                                   r"needs windows that tile the input"):
        jaxcnn.Sequential([MaxPooling2D(3, strides=2, lowering="reshape", input_shape=(9, 9, 1))]).plan()
    with pytest.raises(LayerArgumentError, match=r"`lowering` \(='im2col'\) must be one of 'auto', 'conv', 'patches'"):
        Conv2D(4, 3, lowering="im2col")


def vgg_head(lowering):
    """VGG-11's first six layers on 8x8x3 with every Conv2D given ``lowering``, then a Dense head."""
    base = jaxcnn.load("configs/vgg11_32.toml").with_input_shape((8, 8, 3))
    layers = [jaxcnn.layers.Conv2D(**{**{f: getattr(l, f) for f in ("filters", "kernel_size", "padding",
                                                                     "activation")}, "lowering": lowering})
              if l.type == "Conv2D" else l for l in base.layers[:6]]
    return jaxcnn.Sequential([*layers, jaxcnn.layers.Flatten(), jaxcnn.layers.Dense(10, activation="softmax")],
                             input_shape=(8, 8, 3))


@pytest.mark.parametrize("lowering", ["patches", "auto"])
def test_a_whole_model_trains_as_under_lax_conv(lowering):
    """A training step under the patches lowering, forced or chosen automatically (patches at batch 4),
    equals the step under lax.conv, the reference (to float32 rounding)."""
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype(np.float32)
    y = np.arange(4, dtype=np.int32)
    results = []
    for model in (vgg_head(lowering), vgg_head("conv")):
        compiled = jaxcnn.compile(model, {"name": "sgd", "learning_rate": 0.01})
        state, metrics = compiled.train_step(compiled.init(0), (x, y))
        results.append((float(metrics.loss), jax.tree.leaves(state.params)))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_on_a_mesh_every_automatic_convolution_is_lax_conv():
    # experiments/xla_spmd_patches_repro.py: the patches lowering's gradient came out wrong from XLA's
    # SPMD partitioner on 8 CPU devices; traced for a mesh, the rule falls back to lax.conv.
    from jaxcnn.lowerings import choose_conv, partitioned

    assert choose_conv((2, 2), "cpu", batch=64, train=True) == "patches"
    with partitioned():
        assert choose_conv((2, 2), "cpu", batch=64, train=True) == "conv"
        assert choose_conv((32, 32), "cpu", batch=1) == "conv"
    assert choose_conv((2, 2), "cpu", batch=64, train=True) == "patches"
