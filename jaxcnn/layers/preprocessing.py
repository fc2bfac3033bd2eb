"""Preprocessing layers that are part of a model: ``Rescaling``, ``Normalization``
(keras/src/layers/preprocessing/)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import ImpossibleShapeError
from jaxcnn.layers.base import (Formula, Layer, ParamShapes, Shape, _bool, _fail, _fmt_shape, _is_int, _resolve_axes,
                               _set)

__all__ = ['Normalization', 'Rescaling']

Values = float | tuple[Any, ...]

_KERAS_EPSILON = 1e-7
"""Keras's ``backend.epsilon()``: Normalization divides by ``max(sqrt(variance), 1e-7)``."""


def _values(layer: str, arg: str, value: Any) -> Values:
    """A number or a (nested) list of numbers, as a float or nested tuples of floats (hashable)."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if (array is None or isinstance(value, (bool, str)) or array.size == 0 or not np.all(np.isfinite(array))
            or (isinstance(value, (tuple, list)) and any(isinstance(v, bool) for v in np.ravel(value)))):
        raise _fail(layer, arg, value, "must be a finite number or a list of finite numbers")
    return float(array) if array.ndim == 0 else _nested(array.tolist())


def _nested(value: Any) -> Any:
    return tuple(_nested(v) for v in value) if isinstance(value, list) else value


def _broadcasts(shape: Shape, onto: Shape) -> bool:
    """Whether ``shape`` broadcasts onto ``onto`` (numpy's rule) without changing it."""
    if len(shape) > len(onto):
        return False
    return all(d in (1, o) for d, o in zip(reversed(shape), reversed(onto)))


@dataclasses.dataclass(frozen=True)
class Rescaling(Layer):
    """``Rescaling(scale, offset=0.0)``: ``x * scale + offset``; ``scale`` and ``offset`` are numbers or
    lists broadcast against the input's trailing axes (``[s_r, s_g, s_b]`` per channel)."""

    scale: Values
    offset: Values = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(self, scale=_values(t, "scale", self.scale), offset=_values(t, "offset", self.offset))

    def output_shape(self, input_shape: Shape) -> Shape:
        for arg in ("scale", "offset"):
            shape = np.shape(getattr(self, arg))
            if not _broadcasts(shape, tuple(input_shape)):
                raise ImpossibleShapeError(
                    f"`{arg}` of shape {shape} does not broadcast over the input {_fmt_shape(tuple(input_shape))}",
                    layer_type=self.type)
        return tuple(input_shape)

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        scale = jnp.asarray(self.scale, x.dtype)
        offset = jnp.asarray(self.offset, x.dtype)
        return x * scale + offset


@dataclasses.dataclass(frozen=True)
class Normalization(Layer):
    """``Normalization(axis=-1, mean=None, variance=None, invert=False)``: ``(x - mean) /
    max(sqrt(variance), 1e-7)`` (``invert=True``: ``mean + x * max(sqrt(variance), 1e-7)``), with a
    mean and variance per index of the kept ``axis`` (an axis, a list of them, or ``None`` for one
    scalar; Keras's numbering, 0 is the batch axis).

    With ``mean`` and ``variance`` given, they are constants and the layer has no weights (Keras
    counts 0). Without them, as in Keras, the layer holds non-trainable weights ``mean`` (zeros),
    ``variance`` (ones) of the kept axes' shape and a scalar ``count`` (in ``batch_stats``): ``2*C + 1``
    non-trainable parameters for ``C`` channels, as Keras counts them (Keras's ``count`` is an
    integer, here a float32 scalar; it is not used in the computation). Un-adapted, such a layer is
    the identity until weights are loaded, as in Keras; ``adapt()`` is not provided."""

    axis: int | tuple[int, ...] | None = -1
    mean: Values | None = None
    variance: Values | None = None
    invert: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        axis = self.axis
        axes = () if axis is None else (axis,) if _is_int(axis) else axis
        if (not isinstance(axes, (tuple, list)) or not all(_is_int(a) for a in axes)
                or len(set(axes)) != len(axes)):
            raise _fail(t, "axis", axis, "must be an integer axis, a list of distinct axes, or None")
        axis = None if not axes else axes[0] if len(axes) == 1 else tuple(axes)
        if (self.mean is None) != (self.variance is None):
            raise _fail(t, "mean" if self.variance is None else "variance",
                        self.mean if self.variance is None else self.variance,
                        "is given without its pair: `mean` and `variance` must be given together (Keras "
                        "refuses one alone too)")
        mean = variance = None
        if self.mean is not None:
            mean, variance = _values(t, "mean", self.mean), _values(t, "variance", self.variance)
            if np.shape(mean) != np.shape(variance):
                raise _fail(t, "variance", self.variance,
                            f"must have the shape of `mean` {np.shape(mean)}, has {np.shape(variance)}")
            if np.ndim(mean) > len(axes):
                raise _fail(t, "mean", self.mean,
                            f"has rank {np.ndim(mean)}, more than the {len(axes)} axes of axis={axis!r}")
            if np.any(np.asarray(variance) < 0):
                raise _fail(t, "variance", self.variance, "must not be negative")
        _set(self, axis=axis, mean=mean, variance=variance, invert=_bool(t, "invert", self.invert))

    @property
    def has_params(self) -> bool:  # type: ignore[override]
        return self.mean is None

    def _kept(self, input_shape: Shape) -> tuple[tuple[int, ...], Shape]:
        """``(kept axis positions in the batched array, the mean's and variance's shape)``."""
        keep = () if self.axis is None else _resolve_axes(self, "axis", self.axis, input_shape)
        return keep, tuple(input_shape[a - 1] for a in keep)

    def _broadcast(self, input_shape: Shape, values: Values) -> np.ndarray:
        """Given values as Keras places them: aligned right to left onto the kept axes, then
        broadcast; shape ``input_shape`` with 1 on the reduced axes (batch axis excluded)."""
        keep, kept = self._kept(input_shape)
        array = np.asarray(values, np.float32)
        expanded = [1] * len(input_shape)
        for i in range(1, array.ndim + 1):
            expanded[keep[-i] - 1] = array.shape[-i]
        target = tuple(input_shape[a] if a + 1 in keep else 1 for a in range(len(input_shape)))
        if not _broadcasts(tuple(expanded), target):
            raise ImpossibleShapeError(
                f"`mean` and `variance` of shape {array.shape} do not fit the kept axes {kept} of the input "
                f"{_fmt_shape(tuple(input_shape))} (axis={self.axis!r})", layer_type=self.type)
        return np.broadcast_to(array.reshape(expanded), target)

    def output_shape(self, input_shape: Shape) -> Shape:
        if self.mean is not None:
            self._broadcast(tuple(input_shape), self.mean)
        else:
            self._kept(input_shape)
        return tuple(input_shape)

    def param_shapes(self, input_shape: Shape) -> ParamShapes:
        if self.mean is not None:
            return {}
        _, kept = self._kept(input_shape)
        return {"batch_stats": {"mean": kept, "variance": kept, "count": ()}}

    def formula(self, input_shape: Shape) -> Formula:
        output = f"output = input = {_fmt_shape(tuple(input_shape))}"
        if self.mean is not None:
            self.output_shape(input_shape)
            return Formula(output=output, params="0 (mean and variance given: constants, no weights)")
        _, kept = self._kept(input_shape)
        n = math.prod(kept)
        return Formula(output=output, params=f"2*{n:,} + 1 = {2 * n + 1:,} non-trainable (mean {kept}, "
                                             f"variance {kept}, count ())")

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        shape = tuple(x.shape[1:])
        if self.mean is not None:
            mean = jnp.asarray(self._broadcast(shape, self.mean), x.dtype)
            variance = jnp.asarray(self._broadcast(shape, self.variance), x.dtype)
        else:
            keep, kept = self._kept(shape)
            target = tuple(shape[a] if a + 1 in keep else 1 for a in range(len(shape)))
            mean = module.variable("batch_stats", "mean", jnp.zeros, kept, jnp.float32).value
            variance = module.variable("batch_stats", "variance", jnp.ones, kept, jnp.float32).value
            module.variable("batch_stats", "count", jnp.zeros, (), jnp.float32)
            mean, variance = mean.reshape(target).astype(x.dtype), variance.reshape(target).astype(x.dtype)
        std = jnp.maximum(jnp.sqrt(variance), _KERAS_EPSILON)
        return mean + x * std if self.invert else (x - mean) / std
