"""Activation functions by their Keras names (``keras.activations``), for the ``activation``
argument of the layers and for the ``Activation`` layer."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "ACTIVATION_ALIASES"]


def _linear(x: jax.Array) -> jax.Array:
    return x


def _mish(x: jax.Array) -> jax.Array:
    return x * jnp.tanh(jax.nn.softplus(x))


ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = {
    "linear": _linear,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "sigmoid": jax.nn.sigmoid,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "tanh": jnp.tanh,
    "softmax": functools.partial(jax.nn.softmax, axis=-1),
    "log_softmax": functools.partial(jax.nn.log_softmax, axis=-1),
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # Keras 3's default
    "silu": jax.nn.silu,
    "hard_silu": jax.nn.hard_silu,
    "softplus": jax.nn.softplus,
    "softsign": jax.nn.soft_sign,
    "leaky_relu": functools.partial(jax.nn.leaky_relu, negative_slope=0.2),  # Keras 3's default
    "exponential": jnp.exp,
    "mish": _mish,
}
ACTIVATION_ALIASES = {"swish": "silu", "hard_swish": "hard_silu", "none": "linear"}
