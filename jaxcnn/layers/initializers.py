"""Initializers by their Keras names (``keras.initializers``), with Keras's values."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["INITIALIZERS", "MATRIX_INITIALIZERS"]

Shape = tuple[int, ...]


def _variance_scaling(scale: float, mode: str, distribution: str) -> Callable[..., Any]:
    """``jax.nn.initializers.variance_scaling`` with Keras's fans for a 1-D weight (a bias):
    ``fan_in = fan_out = shape[0]`` (Keras's ``compute_fans``), where JAX refuses a 1-D shape."""
    nd = jax.nn.initializers.variance_scaling(scale, mode, distribution)

    def init(key: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
        if len(shape) != 1:
            return nd(key, shape, dtype)
        # As a (1, n) weight with fan_in 1: variance scale / n, every mode's variance for fans n and n.
        one_row = jax.nn.initializers.variance_scaling(scale / shape[0], "fan_in", distribution)
        return one_row(key, (1, shape[0]), dtype).reshape(shape)

    return init


INITIALIZERS: Mapping[str, Callable[..., Any]] = {
    # jax.nn.initializers' glorot_*, he_* and lecun_* (the same variance scalings as Keras's).
    "glorot_uniform": _variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": _variance_scaling(1.0, "fan_avg", "truncated_normal"),
    "he_uniform": _variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": _variance_scaling(2.0, "fan_in", "truncated_normal"),
    "lecun_uniform": _variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": _variance_scaling(1.0, "fan_in", "truncated_normal"),
    "orthogonal": jax.nn.initializers.orthogonal(),  # 2-D or more: refused for a bias
    "zeros": jax.nn.initializers.zeros,
    "ones": jax.nn.initializers.ones,
    # Keras's defaults for these three: stddev 0.05, range [-0.05, 0.05].
    "random_normal": jax.nn.initializers.normal(0.05),
    "truncated_normal": jax.nn.initializers.truncated_normal(0.05),
    "random_uniform": lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -0.05, 0.05
    ),
}

MATRIX_INITIALIZERS = ("orthogonal",)  # need a weight of at least 2 dimensions, in Keras too
