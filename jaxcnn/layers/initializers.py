"""Initializers by their Keras names (``keras.initializers``), with Keras's values, and with
parameters (``VarianceScaling(scale, mode, distribution)``, ``RandomNormal(mean, stddev)``, ...).

A layer's ``*_initializer`` argument is a name (``"he_normal"``, ``"HeNormal"``), a table
``{name = "VarianceScaling", scale = 2.0, mode = "fan_out", distribution = "truncated_normal"}``, or
Keras's JSON form of one (Keras 3: ``{"module": "keras.initializers", "class_name": ..., "config":
{...}, "registered_name": null}``; tf.keras 2: ``{"class_name": ..., "config": {...}}``).
:func:`initializer_spec` normalizes it: a name where the parameters are the named initializer's
(or Keras's defaults), else an :class:`Initializer` holding them. ``seed`` is ignored (jaxcnn draws
every weight from its own key) and so is ``dtype`` (weights are float32).

Keras's values: ``TruncatedNormal(mean, stddev)`` is ``mean + stddev * z`` with ``z`` a standard
normal cut at +-2 (its standard deviation is ``0.87962566103423978 * stddev``); ``VarianceScaling``
with ``distribution="truncated_normal"`` divides its stddev ``sqrt(scale / fan)`` by that constant
so that the samples' standard deviation is ``sqrt(scale / fan)``; ``"untruncated_normal"`` draws a
plain normal of that stddev; ``"uniform"`` draws from ``[-sqrt(3 scale / fan), +sqrt(3 scale / fan)]``.
Keras 2's ``distribution="normal"`` is the truncated one (Keras 3 reads it so too). Fans are
Keras's ``compute_fans``: ``fan_in = shape[-2] * prod(shape[:-2])``, ``fan_out = shape[-1] *
prod(shape[:-2])``, and ``shape[0]`` for both of a 1-D weight.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn.layers.keras_objects import KerasObject, ObjectError, is_number, parse

__all__ = ["INITIALIZERS", "MATRIX_INITIALIZERS", "Initializer", "initializer_fn", "initializer_spec", "spec_name"]

Shape = tuple[int, ...]


def _variance_scaling(scale: float, mode: str, distribution: str) -> Callable[..., Any]:
    """``jax.nn.initializers.variance_scaling`` with Keras's fans for a 1-D weight (a bias):
    ``fan_in = fan_out = shape[0]`` (Keras's ``compute_fans``), where JAX refuses a 1-D shape.
    ``distribution`` is Keras's: ``"untruncated_normal"`` is JAX's ``"normal"``."""
    jax_distribution = "normal" if distribution == "untruncated_normal" else distribution
    nd = jax.nn.initializers.variance_scaling(scale, mode, jax_distribution)

    def init(key: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
        if len(shape) != 1:
            return nd(key, shape, dtype)
        # As a (1, n) weight with fan_in 1: variance scale / n, every mode's variance for fans n and n.
        one_row = jax.nn.initializers.variance_scaling(scale / shape[0], "fan_in", jax_distribution)
        return one_row(key, (1, shape[0]), dtype).reshape(shape)

    return init


def _random_normal(mean: float, stddev: float) -> Callable[..., Any]:
    def init(key: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
        return mean + stddev * jax.random.normal(key, shape, dtype)
    return init


def _truncated_normal(mean: float, stddev: float) -> Callable[..., Any]:
    def init(key: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
        return mean + stddev * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)
    return init


def _random_uniform(minval: float, maxval: float) -> Callable[..., Any]:
    def init(key: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval, maxval)
    return init


def _constant(value: float) -> Callable[..., Any]:
    def init(key: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
        del key
        return jnp.full(shape, value, dtype)
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

# Each initializer's parameters with Keras 3's defaults.
_PARAMETERS: dict[str, dict[str, Any]] = {
    "glorot_uniform": {}, "glorot_normal": {}, "he_uniform": {}, "he_normal": {},
    "lecun_uniform": {}, "lecun_normal": {}, "zeros": {}, "ones": {},
    "variance_scaling": {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal"},
    "orthogonal": {"gain": 1.0},
    "constant": {"value": 0.0},
    "random_normal": {"mean": 0.0, "stddev": 0.05},
    "truncated_normal": {"mean": 0.0, "stddev": 0.05},
    "random_uniform": {"minval": -0.05, "maxval": 0.05},
}
# Keras 3 serializes Orthogonal as OrthogonalInitializer; the others are Keras's own aliases.
_ALIASES = {"orthogonal_initializer": "orthogonal", "zero": "zeros", "one": "ones",
            "normal": "random_normal", "uniform": "random_uniform"}
# VarianceScaling(scale, mode, distribution) of the named initializers.
_NAMED_SCALINGS = {
    (1.0, "fan_avg", "uniform"): "glorot_uniform",
    (1.0, "fan_avg", "truncated_normal"): "glorot_normal",
    (2.0, "fan_in", "uniform"): "he_uniform",
    (2.0, "fan_in", "truncated_normal"): "he_normal",
    (1.0, "fan_in", "uniform"): "lecun_uniform",
    (1.0, "fan_in", "truncated_normal"): "lecun_normal",
}
_MODES = ("fan_in", "fan_out", "fan_avg")
_DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")


class Initializer(KerasObject):
    """An initializer with parameters other than its name's defaults: ``name`` is the snake-case
    name (``"variance_scaling"``), ``config`` every parameter (``(("distribution", "uniform"),
    ("mode", "fan_out"), ("scale", 2.0))``)."""


def _check_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    full = {**_PARAMETERS[name], **params}
    for key, value in full.items():
        if key == "mode":
            if value not in _MODES:
                raise ObjectError(f"VarianceScaling mode={value!r} must be one of {', '.join(_MODES)}")
        elif key == "distribution":
            value = "truncated_normal" if value == "normal" else value  # Keras 2's name, as Keras 3 reads it
            if value not in _DISTRIBUTIONS:
                raise ObjectError(f"VarianceScaling distribution={value!r} must be one of "
                                  f"{', '.join(_DISTRIBUTIONS)} (or 'normal', the truncated one)")
            full[key] = value
        elif not is_number(value):
            raise ObjectError(f"{name} {key}={value!r} must be a number")
        else:
            full[key] = float(value)
    if name == "variance_scaling" and full["scale"] <= 0:
        raise ObjectError(f"VarianceScaling scale={full['scale']!r} must be positive")
    if name in ("random_normal", "truncated_normal") and full["stddev"] < 0:
        raise ObjectError(f"{name} stddev={full['stddev']!r} must not be negative")
    return full


def initializer_spec(value: Any) -> str | Initializer:
    """The canonical form of an initializer argument: a key of :data:`INITIALIZERS` where its
    values are that named initializer's, else an :class:`Initializer`. Raises
    :class:`~jaxcnn.layers.keras_objects.ObjectError` (one line) on a bad value."""
    name, params = parse(value, "initializer", _PARAMETERS, _ALIASES, ignored=("seed", "dtype"))
    full = _check_params(name, params)
    if name == "variance_scaling":
        named = _NAMED_SCALINGS.get((full["scale"], full["mode"], full["distribution"]))
        if named is not None:
            return named
    if name in INITIALIZERS and full == _PARAMETERS[name]:
        return name
    return Initializer(name, tuple(sorted(full.items())))


def spec_name(spec: str | Initializer) -> str:
    """The initializer's snake-case name."""
    return spec if isinstance(spec, str) else spec.name


@functools.cache
def initializer_fn(spec: str | Initializer) -> Callable[..., Any]:
    """The function ``(key, shape, dtype) -> array`` of a canonical initializer, one per spec.

    It is jitted with the shape and dtype static, so that a trace (a proof's ``jax.eval_shape``, a
    jitted ``init``) traces each initializer once per shape and takes the cached jaxpr for every
    other weight of that shape: EfficientNetB7's proof traced 1,422 initializer calls, a third of its
    time. The values are the same bits as the plain function's."""
    jitted = jax.jit(_function(spec), static_argnums=(1, 2))

    def init(key: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
        return jitted(key, tuple(shape), jnp.dtype(dtype))

    return init


def _function(spec: str | Initializer) -> Callable[..., Any]:
    if isinstance(spec, str):
        return INITIALIZERS[spec]
    p = spec.params()
    makers: dict[str, Callable[[], Callable[..., Any]]] = {
        "variance_scaling": lambda: _variance_scaling(p["scale"], p["mode"], p["distribution"]),
        "orthogonal": lambda: jax.nn.initializers.orthogonal(scale=p["gain"]),
        "constant": lambda: _constant(p["value"]),
        "random_normal": lambda: _random_normal(p["mean"], p["stddev"]),
        "truncated_normal": lambda: _truncated_normal(p["mean"], p["stddev"]),
        "random_uniform": lambda: _random_uniform(p["minval"], p["maxval"]),
    }
    return makers[spec.name]()
