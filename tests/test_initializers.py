"""jaxcnn.layers.initializers: batched (deferred) initialization gives the per-weight values bit for bit,
and puts far fewer random-number loops in the init program."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn.layers import (BatchNormalization, Conv2D, Conv2DTranspose, Dense, DepthwiseConv2D, Flatten,
                           LayerNormalization, PReLU, SeparableConv2D)
from jaxcnn.layers import initializers
from jaxcnn.layers.initializers import _Request, generate, initializer_fn, initializer_spec

SPECS = [
    "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal", "orthogonal",
    "zeros", "ones", "random_normal", "truncated_normal", "random_uniform",
    {"name": "VarianceScaling", "scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
    {"name": "VarianceScaling", "scale": 0.5, "mode": "fan_avg", "distribution": "uniform"},
    {"name": "VarianceScaling", "scale": 3.0, "mode": "fan_in", "distribution": "truncated_normal"},
    {"name": "RandomNormal", "mean": 0.5, "stddev": 2.0},
    {"name": "TruncatedNormal", "mean": -1.0, "stddev": 0.3},
    {"name": "RandomUniform", "minval": -3.0, "maxval": 0.25},
    {"name": "Constant", "value": 0.7},
    {"name": "Orthogonal", "gain": 2.0},
]
# Every rank, sizes within one power of two (3x3x3x16 and 3x3x1x48: 432 values; 64x10 and 10x64) and
# across (the 1-D ones, 1x1x16x32: 512).
SHAPES = [(3, 3, 3, 16), (3, 3, 1, 48), (1, 1, 16, 32), (64, 10), (10, 64), (5,), (48,)]


def _requests():
    requests = []
    for i, spec in enumerate(SPECS):
        canonical = initializer_spec(spec)
        for j, shape in enumerate(SHAPES):
            if initializers.spec_name(canonical) == "orthogonal" and len(shape) < 2:
                continue  # refused for a bias, as in Keras
            requests.append(_Request(canonical, jax.random.fold_in(jax.random.key(7), 100 * i + j), shape,
                                     jnp.dtype(jnp.float32)))
    return requests


@pytest.mark.parametrize("max_draw", [initializers._MAX_DRAW, 64])
def test_batched_draws_equal_each_initializer_called_alone_bit_for_bit(monkeypatch, max_draw):
    """Every initializer and weight rank, sizes within and across a power of two; with draws cut into
    chunks too (max_draw=64: the chunking is the same for every initializer, so there one of each
    distribution: uniform, normal, truncated normal, orthogonal, constant). Both sides in one jitted
    program, as a compiled model's init runs them (each compile takes about 20 s on the 2-core CPU)."""
    monkeypatch.setattr(initializers, "_MAX_DRAW", max_draw)
    requests = _requests()
    if max_draw == 64:
        chunked = ("glorot_uniform", "he_normal", "truncated_normal", "orthogonal", "ones")
        requests = [r for r in requests if initializers.spec_name(r.spec) in chunked]

    def both(keys):
        given = [r._replace(key=k) for r, k in zip(requests, keys)]
        return generate(given), [initializer_fn(r.spec)(r.key, r.shape, r.dtype) for r in given]

    batched, alone = jax.jit(both)([r.key for r in requests])
    for request, value, expected in zip(requests, batched, alone):
        assert value.shape == request.shape and value.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(value), np.asarray(expected), err_msg=str(request[::2]))


def _model():
    return jaxcnn.Sequential([
        Conv2D(8, 3, padding="same", input_shape=(8, 8, 3)), BatchNormalization(),
        DepthwiseConv2D(3, depth_multiplier=2, padding="same", depthwise_initializer="he_uniform"),
        SeparableConv2D(8, 3, padding="same", bias_initializer={"name": "RandomNormal", "stddev": 0.1}),
        Conv2DTranspose(4, 2, strides=2, kernel_initializer="orthogonal"), LayerNormalization(),
        PReLU(alpha_initializer="random_uniform"), Conv2D(16, 1, kernel_initializer="lecun_normal"),
        Flatten(), Dense(10, kernel_initializer={"name": "TruncatedNormal", "stddev": 0.02})])


def test_a_compiled_models_init_is_the_per_weight_init_bit_for_bit():
    compiled = jaxcnn.compile(_model(), "sgd")
    state = compiled.init(3)
    images = jnp.zeros((1, 8, 8, 3))
    alone = compiled.module.init({"params": jax.random.fold_in(jax.random.PRNGKey(3), 0)}, images)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 {"params": state.params, "batch_stats": state.batch_stats}, alone)


def test_deferred_init_draws_in_a_few_loops_not_one_a_weight():
    """The init program's random-number loops (JAX's threefry on CPU is a while loop): one a random
    weight without deferral, one an (initializer, size class) with it."""
    model = jaxcnn.Sequential([Conv2D(8 + i, 3, padding="same", input_shape=(8, 8, 3)) if i == 0
                               else Conv2D(8 + i, 3, padding="same") for i in range(12)])
    compiled = jaxcnn.compile(model, "sgd")
    key = jax.random.PRNGKey(0)
    batched = compiled._init.lower(key).as_text()
    alone = jax.jit(lambda k: compiled.module.init({"params": k}, jnp.zeros((1, 8, 8, 3)))).lower(key).as_text()
    count = lambda text: len(re.findall(r"stablehlo\.while", text))  # noqa: E731
    sizes = [9 * (7 + i if i else 3) * (8 + i) for i in range(12)]  # the 12 glorot_uniform kernels
    classes = {(size - 1).bit_length() for size in sizes}  # 216 to 3,078 values: 4 powers of two
    others = count(alone) - 12  # the loops that derive the keys, in both programs
    assert others >= 0 and count(batched) == len(classes) + others, (count(alone), count(batched), classes)


def test_a_placeholder_left_out_of_the_variables_is_refused():
    with initializers.deferred() as requests:
        kept = initializer_fn("he_normal")(jax.random.key(0), (3, 4))
        initializer_fn("he_normal")(jax.random.key(1), (3, 4))  # never stored
    assert len(requests) == 2
    with pytest.raises(RuntimeError, match="1 of 2 deferred initializer values are not leaves"):
        requests.fill({"kernel": kept})
