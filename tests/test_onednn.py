"""jaxcnn.onednn: oneDNN's convolutions and pooling against lax.conv_general_dilated, lax.conv_transpose
and lax.reduce_window, values and gradients; the extension's absence seen as a reason, never a crash."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn import onednn
from jaxcnn.errors import ImpossibleShapeError, LayerArgumentError

needs_onednn = pytest.mark.skipif(not onednn.available(),
                                  reason=f"oneDNN kernels unavailable: {onednn.unavailable_reason()}")
needs_bf16 = pytest.mark.skipif(not onednn.info()["bfloat16"], reason="this CPU has no native bfloat16 kernels")

DIMS = ("NHWC", "HWIO", "NHWC")
ROOT = Path(__file__).resolve().parents[1]


def _random(shape: tuple[int, ...], seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def assert_close(actual: jax.Array, expected: jax.Array, rtol: float = 2e-5) -> None:
    """Equal up to float32 summation order: within rtol of the largest magnitude of ``expected``."""
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=0, atol=rtol * max(np.abs(expected).max(), 1e-30))


def _grads(fn, args: tuple[jax.Array, ...], cotangent: jax.Array) -> tuple[jax.Array, ...]:
    """The gradients of sum(fn(*args) * cotangent) with respect to every argument, under jit."""
    return jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), argnums=tuple(range(len(args)))))(*args)


# (x shape, kernel shape, strides, padding, dilation, groups)
CONV_GRID = {
    "3x3 same s1": ((2, 8, 8, 4), (3, 3, 4, 6), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    "3x3 valid s2 odd": ((2, 9, 7, 3), (3, 3, 3, 5), (2, 2), ((0, 0), (0, 0)), (1, 1), 1),
    "5x5 asymmetric pads": ((1, 11, 10, 4), (5, 5, 4, 3), (2, 1), ((2, 1), (0, 3)), (1, 1), 1),
    "2x2 same-like s2": ((2, 7, 8, 4), (2, 2, 4, 4), (2, 2), ((0, 1), (0, 1)), (1, 1), 1),
    "1x1": ((2, 5, 5, 8), (1, 1, 8, 4), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),
    "3x3 dilation 2": ((1, 12, 11, 4), (3, 3, 4, 4), (1, 1), ((2, 2), (2, 2)), (2, 2), 1),
    "3x3 dilation (2, 1) s2": ((2, 9, 9, 3), (3, 3, 3, 4), (2, 2), ((1, 2), (0, 1)), (2, 1), 1),
    "groups 2": ((2, 7, 7, 4), (3, 3, 2, 6), (1, 1), ((1, 1), (1, 1)), (1, 1), 2),
    "depthwise s2": ((2, 9, 9, 4), (3, 3, 1, 4), (2, 2), ((1, 1), (1, 1)), (1, 1), 4),
    "depthwise multiplier 2": ((1, 8, 8, 3), (3, 3, 1, 6), (1, 1), ((1, 1), (1, 1)), (1, 1), 3),
    "depthwise 5x5 dilation 2": ((1, 13, 13, 8), (5, 5, 1, 8), (1, 1), ((4, 4), (4, 4)), (2, 2), 8),
}


def _lax_conv(x, kernel, bias, strides, padding, dilation, groups):
    y = lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=DIMS,
                                 feature_group_count=groups)
    return y if bias is None else y + bias


@needs_onednn
@pytest.mark.parametrize("case", CONV_GRID, ids=list(CONV_GRID))
def test_conv_values_and_gradients_equal_lax(case):
    x_shape, k_shape, strides, padding, dilation, groups = CONV_GRID[case]
    x, kernel, bias = _random(x_shape, 0), _random(k_shape, 1), _random(k_shape[3:], 2)
    settings = dict(strides=strides, padding=padding, dilation=dilation, groups=groups)
    ours = lambda x, k, b: onednn.conv(x, k, b, **settings)
    theirs = lambda x, k, b: _lax_conv(x, k, b, strides, padding, dilation, groups)
    expected = theirs(x, kernel, bias)
    assert_close(ours(x, kernel, bias), expected)
    cotangent = _random(expected.shape, 3)
    for got, want in zip(_grads(ours, (x, kernel, bias), cotangent), _grads(theirs, (x, kernel, bias), cotangent)):
        assert_close(got, want)


@needs_onednn
def test_negative_padding_crops_x():
    """A negative pad drops rows or columns of x (lax's meaning). The reference crops explicitly: XLA's
    CPU convolution with negative padding returned values of order 1e32 here, in jaxlib 0.10.2."""
    x, kernel, bias = _random((2, 8, 9, 2), 0), _random((3, 3, 2, 3), 1), _random((3,), 2)
    ours = lambda x, k, b: onednn.conv(x, k, b, strides=(1, 1), padding=((-1, 1), (2, -2)))
    theirs = lambda x, k, b: _lax_conv(x[:, 1:, :-2], k, b, (1, 1), ((0, 1), (2, 0)), (1, 1), 1)
    expected = theirs(x, kernel, bias)
    assert expected.shape == (2, 6, 7, 3)
    assert_close(ours(x, kernel, bias), expected)
    cotangent = _random(expected.shape, 3)
    for got, want in zip(_grads(ours, (x, kernel, bias), cotangent), _grads(theirs, (x, kernel, bias), cotangent)):
        assert_close(got, want)


@needs_onednn
def test_conv_without_bias_has_gradients_for_x_and_kernel():
    x, kernel = _random((2, 6, 6, 3), 0), _random((3, 3, 3, 5), 1)
    settings = dict(strides=(1, 1), padding=((1, 1), (1, 1)))
    cotangent = _random((2, 6, 6, 5), 2)
    got = _grads(lambda x, k: onednn.conv(x, k, **settings), (x, kernel), cotangent)
    want = _grads(lambda x, k: _lax_conv(x, k, None, (1, 1), ((1, 1), (1, 1)), (1, 1), 1), (x, kernel), cotangent)
    for g, w in zip(got, want):
        assert_close(g, w)


@needs_onednn
@pytest.mark.parametrize("groups", [1, 4])
def test_fused_bias_relu_gradient_uses_the_mask_of_the_same_forward_values(groups):
    """ReLU's gradient is compared with the mask of OUR forward output: the reference's own pre-activation
    can differ in the last bit and flip an element's mask (one in 8.4 million made a 3.5e-2 relative
    difference in the issue's proof of concept)."""
    x, kernel, bias = _random((4, 10, 10, 8), 0), _random((3, 3, 8 // groups, 8), 1), _random((8,), 2)
    settings = dict(strides=(1, 1), padding=((1, 1), (1, 1)), groups=groups)
    y = onednn.conv(x, kernel, bias, activation="relu", **settings)
    mask = np.asarray(y) > 0
    assert 0.2 < mask.mean() < 0.8  # both sides of the kink are exercised
    pre = lambda x, k, b: _lax_conv(x, k, b, (1, 1), ((1, 1), (1, 1)), (1, 1), groups)
    assert_close(y, jnp.maximum(pre(x, kernel, bias), 0))
    cotangent = _random(y.shape, 3)
    got = _grads(lambda x, k, b: onednn.conv(x, k, b, activation="relu", **settings), (x, kernel, bias), cotangent)
    want = _grads(pre, (x, kernel, bias), jnp.where(mask, cotangent, 0))
    for g, w in zip(got, want):
        assert_close(g, w)


@needs_onednn
@needs_bf16
def test_bfloat16_conv_is_float32_arithmetic_on_bfloat16_rounded_inputs():
    """compute_dtype=bfloat16 rounds x and the kernel (and, backwards, the incoming gradient) to bfloat16
    and accumulates in float32 (the bias gradient too is a float32 sum of the rounded incoming gradient):
    it equals lax's float32 convolution of the rounded values within 1e-4
    of the output's scale, and differs from the unrounded float32 result by the rounding (at most 2e-2
    of the scale: bfloat16 keeps 8 significant bits, a relative error of at most 2^-9 per input)."""
    x, kernel, bias = _random((2, 12, 12, 16), 0), _random((3, 3, 16, 32), 1), _random((32,), 2)
    settings = dict(strides=(1, 1), padding=((1, 1), (1, 1)))
    rounded = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)
    ours = lambda x, k, b: onednn.conv(x, k, b, compute_dtype=jnp.bfloat16, **settings)
    theirs = lambda x, k, b: _lax_conv(x, k, b, (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    y = ours(x, kernel, bias)
    exact = theirs(x, kernel, bias)
    assert_close(y, theirs(rounded(x), rounded(kernel), bias), rtol=1e-4)
    assert_close(y, exact, rtol=2e-2)
    assert np.abs(np.asarray(y - exact)).max() > 1e-5 * np.abs(np.asarray(exact)).max()  # bfloat16 did run
    cotangent = _random(y.shape, 3)
    dx, dk, db = _grads(ours, (x, kernel, bias), cotangent)
    _, vjp = jax.vjp(theirs, rounded(x), rounded(kernel), bias)
    want_dx, want_dk, _ = vjp(rounded(cotangent))
    assert_close(dx, want_dx, rtol=1e-4)
    assert_close(dk, want_dk, rtol=1e-4)
    assert_close(db, jnp.sum(rounded(cotangent), axis=(0, 1, 2)), rtol=1e-5)  # summed from the rounded gradient


@needs_onednn
@needs_bf16
def test_bfloat16_weight_gradient_of_few_input_channels_stays_float32():
    """With fewer than 16 input channels per group (an RGB input layer) the kernel's gradient is computed
    in float32 (oneDNN's bfloat16 kernel there was no faster and stalled under load): it equals lax's
    float32 gradient of the rounded x to float32 precision, while dx is bfloat16 arithmetic."""
    x, kernel = _random((4, 10, 10, 3), 0), _random((3, 3, 3, 16), 1)
    rounded = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)
    ours = lambda x, k: onednn.conv(x, k, strides=(1, 1), padding=((1, 1), (1, 1)), compute_dtype=jnp.bfloat16)
    theirs = lambda x, k: _lax_conv(x, k, None, (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    cotangent = _random((4, 10, 10, 16), 2)
    _, dk = _grads(ours, (x, kernel), cotangent)
    _, vjp = jax.vjp(theirs, x, kernel)
    assert_close(dk, vjp(cotangent)[1])
    _, rounded_vjp = jax.vjp(theirs, rounded(x), rounded(kernel))
    assert np.abs(np.asarray(dk - rounded_vjp(rounded(cotangent))[1])).max() > 1e-4 * np.abs(np.asarray(dk)).max()


# (x shape, kernel shape (KH, KW, filters, C), strides, padding, dilation): pads as Keras's
# Conv2DTranspose gives lax.conv_transpose (jaxcnn/layers/convolutional.py).
TRANSPOSE_GRID = {
    "3x3 s2 same": ((2, 5, 5, 4), (3, 3, 6, 4), (2, 2), ((1, 2), (1, 2)), (1, 1)),
    "3x3 s1 valid": ((1, 6, 7, 3), (3, 3, 2, 3), (1, 1), ((2, 2), (2, 2)), (1, 1)),
    "3x3 s2 valid output_padding 1": ((2, 4, 5, 4), (3, 3, 3, 4), (2, 2), ((2, 3), (2, 3)), (1, 1)),
    "4x4 s2": ((1, 6, 6, 4), (4, 4, 5, 4), (2, 2), ((2, 2), (2, 2)), (1, 1)),
    "2x2 s2 asymmetric": ((2, 5, 4, 2), (2, 2, 3, 2), (2, 1), ((1, 1), (0, 1)), (1, 1)),
    "3x3 dilation 2": ((1, 7, 7, 3), (3, 3, 4, 3), (1, 1), ((2, 2), (2, 2)), (2, 2)),
}


@needs_onednn
@pytest.mark.parametrize("case", TRANSPOSE_GRID, ids=list(TRANSPOSE_GRID))
def test_conv_transpose_values_and_gradients_equal_lax(case):
    x_shape, k_shape, strides, padding, dilation = TRANSPOSE_GRID[case]
    x, kernel = _random(x_shape, 0), _random(k_shape, 1)
    ours = lambda x, k: onednn.conv_transpose(x, k, strides=strides, padding=padding, dilation=dilation)
    theirs = lambda x, k: lax.conv_transpose(x, k, strides, padding, rhs_dilation=dilation, dimension_numbers=DIMS,
                                             transpose_kernel=True)
    expected = theirs(x, kernel)
    assert_close(ours(x, kernel), expected)
    cotangent = _random(expected.shape, 2)
    for got, want in zip(_grads(ours, (x, kernel), cotangent), _grads(theirs, (x, kernel), cotangent)):
        assert_close(got, want)


# (x shape, pool, strides, padding)
POOL_GRID = {
    "2x2 s2 valid": ((2, 8, 8, 3), (2, 2), (2, 2), ((0, 0), (0, 0))),
    "3x3 s2 same": ((2, 9, 9, 5), (3, 3), (2, 2), ((1, 1), (1, 1))),
    "2x2 s2 same odd": ((1, 7, 5, 4), (2, 2), (2, 2), ((0, 1), (0, 1))),
    "3x2 s(1, 2) asymmetric": ((2, 6, 7, 2), (3, 2), (1, 2), ((1, 1), (0, 1))),
    "3x3 s1 same": ((1, 5, 5, 16), (3, 3), (1, 1), ((1, 1), (1, 1))),
}


def _reduce_max(x, pool, strides, padding):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *pool, 1), (1, *strides, 1), ((0, 0), *padding, (0, 0)))


def _reduce_mean_in_bounds(x, pool, strides, padding):
    window = ((1, *pool, 1), (1, *strides, 1), ((0, 0), *padding, (0, 0)))
    total = lax.reduce_window(x, 0.0, lax.add, *window)
    count = lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, *window)
    return total / count


@needs_onednn
@pytest.mark.parametrize("case", POOL_GRID, ids=list(POOL_GRID))
def test_max_pool_equals_reduce_window_without_ties(case):
    x_shape, pool, strides, padding = POOL_GRID[case]
    x = _random(x_shape, 0)  # continuous values: no two equal, so no ties
    settings = dict(pool=pool, strides=strides, padding=padding)
    np.testing.assert_array_equal(onednn.max_pool(x, **settings), _reduce_max(x, pool, strides, padding))
    cotangent = _random(_reduce_max(x, pool, strides, padding).shape, 1)
    (got,) = _grads(lambda x: onednn.max_pool(x, **settings), (x,), cotangent)
    (want,) = _grads(lambda x: _reduce_max(x, pool, strides, padding), (x,), cotangent)
    assert_close(got, want, rtol=1e-6)


@needs_onednn
def test_max_pool_gives_a_tied_windows_gradient_to_its_first_maximum_only():
    """Ties: each window's whole gradient goes to ONE element, the first maximum in row-major window
    order (top-most, then left-most), recorded in oneDNN's workspace; lax.reduce_window's gradient
    picks the same element."""
    x = jnp.asarray([[0, 5, 5, 0],
                     [5, 0, 0, 5],
                     [0, 0, 5, 5],
                     [0, 0, 5, 5]], jnp.float32).reshape(1, 4, 4, 1)
    settings = dict(pool=(2, 2), strides=(2, 2), padding=((0, 0), (0, 0)))
    (dx,) = _grads(lambda x: onednn.max_pool(x, **settings), (x,), jnp.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 1, 1, 0],  # 5 of (0, 1) and (1, 0): (0, 1)
                                                   [0, 0, 0, 0],  # 5 of (0, 2) and (1, 3): (0, 2)
                                                   [1, 0, 1, 0],  # four 0s: (2, 0); four 5s: (2, 2)
                                                   [0, 0, 0, 0]])
    (want,) = _grads(lambda x: _reduce_max(x, (2, 2), (2, 2), ((0, 0), (0, 0))), (x,), jnp.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(dx, want)
    # Overlapping windows of equal values: each sends its 1 to its own top-left element.
    (dx,) = _grads(lambda x: onednn.max_pool(x, pool=(2, 2), strides=(1, 1), padding=((0, 0), (0, 0))),
                   (jnp.ones((1, 3, 3, 1)),), jnp.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


@needs_onednn
@pytest.mark.parametrize("case", POOL_GRID, ids=list(POOL_GRID))
def test_avg_pool_is_the_mean_of_in_bounds_elements(case):
    x_shape, pool, strides, padding = POOL_GRID[case]
    x = _random(x_shape, 0)
    settings = dict(pool=pool, strides=strides, padding=padding)
    expected = _reduce_mean_in_bounds(x, pool, strides, padding)
    assert_close(onednn.avg_pool(x, **settings), expected, rtol=1e-6)
    cotangent = _random(expected.shape, 1)
    (got,) = _grads(lambda x: onednn.avg_pool(x, **settings), (x,), cotangent)
    (want,) = _grads(lambda x: _reduce_mean_in_bounds(x, pool, strides, padding), (x,), cotangent)
    assert_close(got, want, rtol=1e-6)


@needs_onednn
def test_avg_pool_excludes_padding_at_the_corner():
    x = jnp.arange(1.0, 10.0, dtype=jnp.float32).reshape(1, 3, 3, 1)
    y = onednn.avg_pool(x, pool=(2, 2), strides=(2, 2), padding=((0, 1), (0, 1)))
    # windows {1,2,4,5}, {3,6}, {7,8}, {9}: means over in-bounds elements, by hand
    np.testing.assert_array_equal(y[0, :, :, 0], [[3.0, 4.5], [7.5, 9.0]])


@needs_onednn
def test_kernels_work_under_jit_and_agree_with_eager_calls():
    x, kernel, bias = _random((2, 8, 8, 4), 0), _random((3, 3, 4, 4), 1), _random((4,), 2)

    def net(x, kernel, bias):
        y = onednn.conv(x, kernel, bias, strides=(1, 1), padding=((1, 1), (1, 1)), activation="relu")
        y = onednn.max_pool(y, pool=(2, 2), strides=(2, 2), padding=((0, 0), (0, 0)))
        return onednn.avg_pool(y, pool=(2, 2), strides=(2, 2), padding=((0, 0), (0, 0)))

    traces = []
    jitted = jax.jit(lambda *args: traces.append(1) or net(*args))
    np.testing.assert_array_equal(jitted(x, kernel, bias), net(x, kernel, bias))
    np.testing.assert_array_equal(jitted(x + 1, kernel, bias), net(x + 1, kernel, bias))
    assert len(traces) == 1


@needs_onednn
def test_an_empty_batch_has_zero_gradients():
    x, kernel, bias = jnp.ones((0, 6, 6, 3)), jnp.ones((3, 3, 3, 4)), jnp.ones((4,))
    settings = dict(strides=(1, 1), padding=((1, 1), (1, 1)), activation="relu")
    dx, dk, db = _grads(lambda x, k, b: onednn.conv(x, k, b, **settings), (x, kernel, bias), jnp.ones((0, 6, 6, 4)))
    assert dx.shape == (0, 6, 6, 3)
    np.testing.assert_array_equal(dk, np.zeros((3, 3, 3, 4)))
    np.testing.assert_array_equal(db, np.zeros(4))


@needs_onednn
def test_concurrent_callers_get_the_same_results():
    """Python threads calling jitted kernels at once (and XLA running independent custom calls at once)
    share one primitive cache under one lock: every thread's results equal a lone call's."""
    x, kernel, bias = _random((4, 12, 12, 8), 0), _random((3, 3, 8, 8), 1), _random((8,), 2)
    cotangent = _random((4, 12, 12, 8), 3)
    step = jax.jit(jax.grad(lambda x, k, b: jnp.sum(onednn.max_pool(
        onednn.conv(x, k, b, strides=(1, 1), padding=((1, 1), (1, 1)), activation="relu"),
        pool=(1, 1), strides=(1, 1), padding=((0, 0), (0, 0))) * cotangent), argnums=(0, 1, 2)))
    alone = step(x, kernel, bias)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: step(x, kernel, bias), range(16)))
    for result in results:
        for got, want in zip(result, alone):
            np.testing.assert_array_equal(got, want)


@needs_onednn
def test_wrong_dtype_or_shape_is_a_clear_error():
    x, kernel = _random((2, 8, 8, 4), 0), _random((3, 3, 4, 6), 1)
    settings = dict(strides=(1, 1), padding=((1, 1), (1, 1)))
    with pytest.raises(LayerArgumentError, match="`x` must be float32 for the oneDNN kernels, got float16"):
        onednn.conv(x.astype(jnp.float16), kernel, **settings)
    with pytest.raises(ImpossibleShapeError, match=r"x \(2, 8, 8, 4\) and kernel \(3, 3, 3, 6\) do not make a "
                                                   r"convolution with groups=1"):
        onednn.conv(x, _random((3, 3, 3, 6), 1), **settings)
    with pytest.raises(ImpossibleShapeError, match=r"bias \(4,\) must be \(6,\)"):
        onednn.conv(x, kernel, _random((4,), 2), **settings)
    with pytest.raises(LayerArgumentError, match=r"`activation` \(='gelu'\) must be None or 'relu'"):
        onednn.conv(x, kernel, activation="gelu", **settings)
    with pytest.raises(LayerArgumentError, match=r"`strides` \(=\(0, 1\)\) must be a pair of integers >= 1"):
        onednn.conv(x, kernel, strides=(0, 1), padding=((1, 1), (1, 1)))
    with pytest.raises(LayerArgumentError, match=r"`padding` \(=\(\(2, 2\), \(0, 0\)\)\) must be non-negative and "
                                                 r"smaller than the pool \(2, 2\)"):
        onednn.max_pool(x, pool=(2, 2), strides=(2, 2), padding=((2, 2), (0, 0)))
    with pytest.raises(ImpossibleShapeError, match=r"`x` must be 4-D, got shape \(8, 8, 4\)"):
        onednn.avg_pool(x[0], pool=(2, 2), strides=(2, 2), padding=((0, 0), (0, 0)))


@needs_onednn
def test_the_handler_refuses_inconsistent_buffers_with_an_error_not_a_crash():
    """Shapes the handler cannot use come back as an XLA error naming them (never an abort)."""
    x, kernel = _random((2, 8, 8, 4), 0), _random((3, 3, 4, 6), 1)
    wrong = jax.ShapeDtypeStruct((2, 7, 8, 6), jnp.float32)  # 8x8 with SAME 3x3 gives 8x8, not 7x8
    call = jax.ffi.ffi_call("jaxcnn_onednn_conv_fwd", wrong)
    attrs = dict(strides=np.array([1, 1]), padding=np.array([1, 1, 1, 1]), dilation=np.array([1, 1]), groups=1,
                 bias=False, relu=False, bf16=False, blocked=True)
    with pytest.raises(Exception, match=r"jaxcnn_onednn_conv_fwd: x \(2, 8, 8, 4\), kernel \(3, 3, 4, 6\), "
                                        r"y \(2, 7, 8, 6\): y does not match the convolution's output shape"):
        jax.block_until_ready(call(x, kernel, jnp.zeros((0,), jnp.float32), **attrs))


@needs_onednn
def test_info_reports_the_loaded_onednn():
    info = onednn.info()
    assert info["available"] is True and info["reason"] is None
    assert info["onednn_version"] == "3.2.0"  # the pinned onednn-cpu-gomp==2023.2.0 wheel
    assert info["isa"].startswith(("avx", "sse"))


@needs_onednn
@pytest.mark.slow
def test_loading_and_registering_start_no_jax_backend():
    """available() loads the library and registers the FFI targets without starting a JAX backend, so
    importing or asking never fixes the platform before the caller's settings are read."""
    code = ("import jaxcnn.onednn as o\n"
            "from jax._src import xla_bridge\n"  # no public query of whether a backend has started
            "print(o.available(), len(xla_bridge._backends))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "0"]


_UNAVAILABLE = textwrap.dedent("""
    import jaxcnn, jaxcnn.onednn as onednn
    assert "libdnnl" not in open("/proc/self/maps").read(), "loaded at import"
    print(onednn.available())
    print(onednn.unavailable_reason())
    print(onednn.info())
    import jax.numpy as jnp
    try:
        onednn.max_pool(jnp.ones((1, 2, 2, 1)), pool=(2, 2), strides=(2, 2), padding=((0, 0), (0, 0)))
    except jaxcnn.errors.UnsupportedError as e:
        print(e)
""")


def _has_wheel(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _import_without_extension(tmp_path: Path, extension: bytes | None) -> list[str]:
    """Imports a copy of jaxcnn whose extension is missing (None) or is ``extension``'s bytes."""
    shutil.copytree(ROOT / "jaxcnn", tmp_path / "jaxcnn", ignore=shutil.ignore_patterns("_onednn_ffi*", "__pycache__"))
    if extension is not None:
        (tmp_path / "jaxcnn" / "_onednn_ffi.so").write_bytes(extension)
    done = subprocess.run([sys.executable, "-c", _UNAVAILABLE], check=False, capture_output=True, text=True,
                          cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.slow
def test_jaxcnn_imports_without_the_extension_and_says_why(tmp_path):
    available, reason, info, error = _import_without_extension(tmp_path, None)
    assert available == "False"
    assert reason == ("the oneDNN extension was not built when jaxcnn was installed "
                      "(reinstall on x86-64 Linux with g++ available: pip install -e .)")
    assert f"'available': False, 'reason': '{reason}'" in info
    assert error == f"the oneDNN kernels are not available: {reason}"


@pytest.mark.slow
def test_an_extension_that_cannot_load_is_a_reason_not_a_crash(tmp_path):
    available, reason, _, error = _import_without_extension(tmp_path, b"not a shared library\n" * 256)
    assert available == "False"
    if _has_wheel("onednn-cpu-gomp"):
        assert reason.endswith("_onednn_ffi.so: invalid ELF header")
    else:  # oneDNN itself is looked for first, to be preloaded
        assert reason == "the onednn-cpu-gomp wheel is not installed (pip install onednn-cpu-gomp==2023.2.0)"
    assert error.endswith(reason)


def test_the_weight_layout_is_onednns_but_for_a_small_batchs_ungrouped_forward():
    conv = onednn._Conv((1, 1), (1, 1, 1, 1), (1, 1), 1, False)
    assert [conv.blocked("conv_fwd", batch) for batch in (1, 8, 9, 64)] == [False, False, True, True]
    assert conv.blocked("conv_bwd_data", 1) and conv.blocked("conv_bwd_weights", 1)
    assert conv._replace(groups=4).blocked("conv_fwd", 1) and conv._replace(bf16=True).blocked("conv_fwd", 1)
    assert conv.attrs("conv_fwd", 2)["blocked"] is False and conv.attrs("conv_fwd", 16)["blocked"] is True


@needs_onednn
@pytest.mark.parametrize("batch", [2, 16])
def test_both_weight_layouts_compute_lax_convs_values_and_gradients(batch):
    """A batch of 2 runs the forward on the HWIO kernel as given, one of 16 on oneDNN's layout."""
    x, kernel, bias = _random((batch, 6, 6, 8), 0), _random((3, 3, 8, 16), 1), _random((16,), 2)
    ours = lambda x, k, b: onednn.conv(x, k, b, strides=(1, 1), padding=((1, 1), (1, 1)))  # noqa: E731
    ref = lambda x, k, b: lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),  # noqa: E731
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
    np.testing.assert_allclose(jax.jit(ours)(x, kernel, bias), ref(x, kernel, bias), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda *a: jnp.sum(f(*a) * jnp.cos(a[0][..., :1]))  # noqa: E731
    for got, want in zip(jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(x, kernel, bias),
                         jax.grad(loss(ref), argnums=(0, 1, 2))(x, kernel, bias)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
