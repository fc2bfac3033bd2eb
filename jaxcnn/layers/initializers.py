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

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcnn.layers.keras_objects import KerasObject, ObjectError, is_number, parse

__all__ = ["INITIALIZERS", "MATRIX_INITIALIZERS", "Deferred", "Initializer", "deferred", "generate", "initializer_fn",
           "initializer_spec", "spec_name"]

Shape = tuple[int, ...]


def _variance_scaling(scale: float, mode: str, distribution: str) -> Callable[..., Any]:
    """``jax.nn.initializers.variance_scaling(scale, mode, distribution)``'s values (its draw times its
    factor for the shape, :func:`_scaling_factor`), with Keras's fans for a 1-D weight (a bias):
    ``fan_in = fan_out = shape[0]`` (Keras's ``compute_fans``), where JAX refuses a 1-D shape.
    ``distribution`` is Keras's: ``"untruncated_normal"`` is JAX's ``"normal"``. The draw passes an
    optimization barrier before the factor, as in :func:`generate`'s batched draws, so that XLA
    multiplies in the same order in both: unguarded, it folded ``normal``'s ``sqrt(2)`` into the factor
    in one program and not in the other (a difference of one float32 ulp in some values)."""
    draw = _BASE_DRAWS[distribution]

    def init(key: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
        factor = _scaling_factor(scale, mode, distribution, tuple(shape), dtype)
        return jax.lax.optimization_barrier(draw(key, tuple(shape), dtype)) * factor

    return init


def _scaling_factor(scale: float, mode: str, distribution: str, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
    """What ``jax.nn.initializers.variance_scaling(scale, mode, distribution)`` multiplies its draw by for
    ``shape`` (in ``dtype``), computed as it does (its ``_compute_fans`` with the default axes); a 1-D weight
    as :func:`_variance_scaling` does (a ``(1, n)`` weight with ``scale / n``)."""
    if len(shape) == 1:
        scale, mode, shape = scale / shape[0], "fan_in", (1, shape[0])
    receptive = math.prod(shape) / shape[-2] / shape[-1] / 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    denominator = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    variance = jnp.array(scale / denominator, dtype=dtype)
    if distribution == "truncated_normal":
        return jnp.sqrt(variance) / jnp.array(.87962566103423978, dtype)
    if distribution == "uniform":
        return jnp.sqrt(3 * variance)
    return jnp.sqrt(variance)


_BASE_DRAWS: Mapping[str, Callable[..., jax.Array]] = {
    "truncated_normal": lambda key, shape, dtype: jax.random.truncated_normal(key, -2, 2, shape, dtype),
    "uniform": lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -1),
    "untruncated_normal": lambda key, shape, dtype: jax.random.normal(key, shape, dtype),
}
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
        requests = _DEFERRED.get()
        if requests is not None:  # inside deferred(): a placeholder now, the values from generate()
            return requests.add(spec, key, shape, dtype)
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


# ---- batched initialization ------------------------------------------------------------------------
# A model's init traced in one program (jaxcnn.train's jitted init) calls an initializer per weight, and
# each random one is a threefry loop of its own in the program (JAX lowers threefry on CPU as a 5-step
# while loop, which XLA compiles separately): EfficientNetB0's 115 random weights took 11 s of its
# init's 12 s of XLA compilation, against 1 s with every weight zeros. Inside deferred(), the
# initializers return placeholders and record their requests; generate() draws the values of every
# request of one initializer and size class in one vmapped draw over their keys, so the program
# holds a few dozen loops at most: EfficientNetB0's init (at 32x32) compiled in 5.2 s instead of 13.4,
# EfficientNetB7's in 19.5 s instead of 43.8 (the rest is mostly a small kernel a weight, slicing
# its values out of its draw). The values are those of the per-weight calls, bit for bit (tested): with
# threefry's partitionable bits (JAX's default), the draw of a key for n values is the first n of its
# draw for more, and a shape's values are its size's values reshaped; the variance-scaling ones then
# take their shape's factor, computed as JAX computes it.

class _Request(NamedTuple):
    spec: str | Initializer
    key: jax.Array
    shape: Shape
    dtype: Any


class Deferred:
    """The initializer calls made inside :func:`deferred`: each returned a placeholder (zeros of its
    shape) and was recorded; :meth:`fill` puts every request's real values in its placeholder's place."""

    def __init__(self) -> None:
        self._requests: dict[int, tuple[_Request, jax.Array]] = {}

    def add(self, spec: str | Initializer, key: jax.Array, shape: Shape, dtype: Any) -> jax.Array:
        placeholder = jnp.zeros(tuple(shape), dtype)
        self._requests[id(placeholder)] = (_Request(spec, key, tuple(shape), jnp.dtype(dtype)), placeholder)
        return placeholder

    def __len__(self) -> int:
        return len(self._requests)

    def fill(self, tree: Any) -> Any:
        """``tree`` with each placeholder replaced by its request's values (:func:`generate`).

        Raises:
          RuntimeError: a placeholder is not a leaf of ``tree`` (the caller changed it before storing it),
            so its values would be lost.
        """
        leaves, treedef = jax.tree.flatten(tree)
        found = [i for i, leaf in enumerate(leaves)
                 if id(leaf) in self._requests and self._requests[id(leaf)][1] is leaf]
        if len(found) != len(self._requests):
            raise RuntimeError(f"{len(self._requests) - len(found)} of {len(self._requests)} deferred initializer "
                               "values are not leaves of the initialized variables")
        values = generate([self._requests[id(leaves[i])][0] for i in found])
        for i, value in zip(found, values):
            leaves[i] = value
        return jax.tree.unflatten(treedef, leaves)


_DEFERRED: contextvars.ContextVar[Deferred | None] = contextvars.ContextVar("jaxcnn_deferred_init", default=None)


@contextlib.contextmanager
def deferred() -> Iterator[Deferred]:
    """Within it, :func:`initializer_fn`'s functions return placeholders and record their requests in the
    :class:`Deferred` yielded; its :meth:`Deferred.fill` then puts the values in the variables."""
    requests = Deferred()
    token = _DEFERRED.set(requests)
    try:
        yield requests
    finally:
        _DEFERRED.reset(token)


_MAX_DRAW = 1 << 25  # values in one vmapped draw (padding included): 128 MiB of float32


class _Plan(NamedTuple):
    group: tuple[Any, ...]  # requests of one group share one draw
    draw: Callable[..., jax.Array]  # (key, (n,), dtype) -> n values
    size: int
    factor: float | None  # the variance scaling's factor for this shape (a float32 value), or None


_SCALINGS = {name: params for params, name in _NAMED_SCALINGS.items()}
_SHAPE_FREE = ("random_normal", "truncated_normal", "random_uniform")  # values independent of the shape


def _plan(request: _Request) -> _Plan | None:
    """How ``request`` joins a batched draw, or ``None`` where it is computed on its own (orthogonal,
    constants, an empty weight, other dtypes)."""
    size = math.prod(request.shape)
    if size == 0 or request.dtype != jnp.float32:
        return None
    spec, bucket = request.spec, (size - 1).bit_length()
    name = spec_name(spec)
    if name in _SCALINGS or name == "variance_scaling":
        scale, mode, distribution = _SCALINGS[name] if isinstance(spec, str) else (
            spec.params()["scale"], spec.params()["mode"], spec.params()["distribution"])
        return _Plan(("scaling", distribution, bucket), _BASE_DRAWS[distribution], size,
                     _scaling_factor(scale, mode, distribution, request.shape))
    if name in _SHAPE_FREE:
        return _Plan(("function", spec, bucket), _function(spec), size, None)
    return None


def _batchable() -> bool:
    """Whether a key's draw of n values is the first n of its draw of more: threefry keys with
    partitionable bits, JAX's defaults."""
    return jax.config.jax_default_prng_impl == "threefry2x32" and bool(jax.config.jax_threefry_partitionable)


def generate(requests: Sequence[_Request]) -> list[jax.Array]:
    """The values of each request, equal bit for bit to ``initializer_fn(spec)(key, shape, dtype)``:
    requests of one initializer (variance scalings: one distribution) and size class (sizes within a
    power of two) are drawn in one vmapped draw over their keys, padded to the largest and cut to each,
    in draws of at most :data:`_MAX_DRAW` values; the rest are called one by one."""
    values: list[jax.Array | None] = [None] * len(requests)
    groups: dict[tuple[Any, ...], list[tuple[int, _Plan]]] = {}
    for index, request in enumerate(requests):
        plan = _plan(request) if _batchable() else None
        if plan is None:
            values[index] = initializer_fn(request.spec)(request.key, request.shape, request.dtype)
        else:
            groups.setdefault(plan.group, []).append((index, plan))
    for members in groups.values():
        members.sort(key=lambda member: member[1].size)
        while members:
            width = members[-1][1].size
            count = max(1, min(len(members), _MAX_DRAW // width))
            chunk, members = members[-count:], members[:-count]
            draw = chunk[0][1].draw
            keys = jnp.stack([requests[index].key for index, _ in chunk])
            rows = jax.vmap(lambda key, draw=draw, width=width: draw(key, (width,), jnp.float32))(keys)
            if chunk[0][1].factor is not None:
                rows = jax.lax.optimization_barrier(rows)  # as _variance_scaling's, before the factor
            for row, (index, plan) in enumerate(chunk):
                value = rows[row, :plan.size].reshape(requests[index].shape)
                values[index] = value if plan.factor is None else value * plan.factor
    return values  # type: ignore[return-value]
