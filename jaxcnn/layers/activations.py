"""Activation layers: ``Activation``, ``ReLU``, ``LeakyReLU``, ``PReLU``, ``ELU``, ``Softmax``
(keras/src/layers/activations/)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxcnn.errors import ImpossibleShapeError
from jaxcnn.layers.base import (Formula, Layer, ParamShapes, Shape, _activation, _apply_activation, _axis_arg, _fail,
                               _fmt_shape, _initializer, _is_int, _number, _resolve_axes, _set)
from jaxcnn.layers.initializers import INITIALIZERS

__all__ = ['Activation', 'ELU', 'LeakyReLU', 'PReLU', 'ReLU', 'Softmax']


@dataclasses.dataclass(frozen=True)
class Activation(Layer):
    """``Activation(activation)``: an activation by its Keras name (``"relu"``, ``"softmax"``, ...)."""

    activation: str | None

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, activation=_activation(self.type, "activation", self.activation))

    def arguments(self) -> dict[str, Any]:
        return {"activation": self.activation or "linear"}

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return _apply_activation(self.activation, x)


@dataclasses.dataclass(frozen=True)
class ReLU(Layer):
    """``ReLU(max_value=None, negative_slope=0.0, threshold=0.0)``, as Keras's
    ``activations.relu``: ``x`` where ``x > threshold``; ``negative_slope * (x - threshold)`` below
    it (0 with the default slope); capped at ``max_value``."""

    max_value: float | None = None
    negative_slope: float = 0.0
    threshold: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        max_value = None if self.max_value is None else _number(t, "max_value", self.max_value, 0.0)
        _set(self, max_value=max_value, negative_slope=_number(t, "negative_slope", self.negative_slope, 0.0),
             threshold=_number(t, "threshold", self.threshold, 0.0))

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        # Keras's ReLU.static_call (keras/src/activations/activations.py), step by step.
        slope, threshold, max_value = self.negative_slope, self.threshold, self.max_value
        if slope != 0.0 and max_value is None and threshold == 0.0:
            return jax.nn.leaky_relu(x, negative_slope=slope)
        negative_part = jax.nn.relu(threshold - x) if slope != 0.0 else None
        y = jnp.where(x > threshold, x, 0.0) if threshold != 0.0 else jax.nn.relu(x)
        if max_value is not None:
            y = jnp.clip(y, 0.0, max_value)
        if negative_part is not None:
            y = y - slope * negative_part
        return y


@dataclasses.dataclass(frozen=True)
class LeakyReLU(Layer):
    """``LeakyReLU(negative_slope=0.3)`` (Keras 3's name and default; Keras 2's ``alpha`` is read
    from Keras JSON): ``x`` for ``x >= 0``, ``negative_slope * x`` below."""

    negative_slope: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, negative_slope=_number(self.type, "negative_slope", self.negative_slope, 0.0))

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return jax.nn.leaky_relu(x, negative_slope=self.negative_slope)


@dataclasses.dataclass(frozen=True)
class PReLU(Layer):
    """``PReLU(alpha_initializer="zeros", shared_axes=None)``: ``relu(x) - alpha * relu(-x)`` with a
    trainable ``alpha`` of the input's shape (without the batch axis), 1 along ``shared_axes``
    (Keras's axes: 1 is the first axis after the batch), as Keras builds it."""

    alpha_initializer: str = "zeros"
    shared_axes: int | tuple[int, ...] | None = None

    has_params: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        shared = self.shared_axes
        if shared is not None:
            axes = (shared,) if _is_int(shared) else shared
            if (not isinstance(axes, (tuple, list)) or not axes
                    or not all(_is_int(a) and a >= 1 for a in axes)):
                raise _fail(t, "shared_axes", shared, "must be an axis (1 or more: 0 is the batch axis), "
                                                      "a list of them, or None")
            shared = tuple(axes)
        _set(self, alpha_initializer=_initializer(t, "alpha_initializer", self.alpha_initializer),
             shared_axes=shared)

    def _alpha_shape(self, input_shape: Shape) -> Shape:
        shape = list(input_shape)
        for axis in self.shared_axes or ():
            if axis > len(shape):
                raise ImpossibleShapeError(
                    f"`shared_axes` (={self.shared_axes}) names axis {axis}; the input "
                    f"{_fmt_shape(tuple(input_shape))} has axes 1..{len(shape)}", layer_type=self.type)
            shape[axis - 1] = 1
        return tuple(shape)

    def param_shapes(self, input_shape: Shape) -> ParamShapes:
        return {"params": {"alpha": self._alpha_shape(input_shape)}}

    def formula(self, input_shape: Shape) -> Formula:
        shape = self._alpha_shape(input_shape)
        return Formula(output=f"output = input = {_fmt_shape(tuple(input_shape))}",
                       params=f"alpha {shape} = {'*'.join(map(str, shape))} = {math.prod(shape):,}")

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        alpha = module.param("alpha", INITIALIZERS[self.alpha_initializer], self._alpha_shape(x.shape[1:]),
                             jnp.float32)
        return jax.nn.relu(x) - alpha.astype(x.dtype) * jax.nn.relu(-x)


@dataclasses.dataclass(frozen=True)
class ELU(Layer):
    """``ELU(alpha=1.0)``: ``x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` below."""

    alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, alpha=_number(self.type, "alpha", self.alpha))

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return jax.nn.elu(x, alpha=self.alpha)


@dataclasses.dataclass(frozen=True)
class Softmax(Layer):
    """``Softmax(axis=-1)``: ``exp(x) / sum(exp(x))`` along ``axis`` (an axis or a list of them,
    Keras's numbering: 0 is the batch axis, which is refused)."""

    axis: int | tuple[int, ...] = -1

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, axis=_axis_arg(self.type, "axis", self.axis))

    @property
    def mixes_positions(self) -> bool:  # type: ignore[override]
        """A softmax over more than the last axis mixes positions (conservatively: any other axis)."""
        return self.axis != -1

    def output_shape(self, input_shape: Shape) -> Shape:
        _resolve_axes(self, "axis", self.axis, input_shape)
        return tuple(input_shape)

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return jax.nn.softmax(x, axis=_resolve_axes(self, "axis", self.axis, tuple(x.shape[1:])))
