"""Core layers: ``Dense``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxcnn.layers.base import Formula, Layer, ParamShapes, Shape, _finish, _positive_int, _set, _weights
from jaxcnn.layers.initializers import initializer_fn

__all__ = ['Dense']


@dataclasses.dataclass(frozen=True)
class Dense(Layer):
    """``Dense(units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
    bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
    activity_regularizer=None, kernel_constraint=None, bias_constraint=None)``, applied to the last axis as Keras does: ``(batch, ..., D_in)`` ->
    ``(batch, ..., units)``; kernel ``(D_in, units)``, bias ``(units,)``."""

    units: int
    activation: str | None = None
    use_bias: bool = True
    kernel_initializer: Any = "glorot_uniform"
    bias_initializer: Any = "zeros"
    kernel_regularizer: Any = None
    bias_regularizer: Any = None
    activity_regularizer: Any = None
    kernel_constraint: Any = None
    bias_constraint: Any = None

    has_params: ClassVar[bool] = True
    weight_args: ClassVar[dict[str, str]] = {"kernel": "kernel", "bias": "bias"}

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(
            self,
            units=_positive_int(t, "units", self.units),
            **_weights(self),
        )

    def output_shape(self, input_shape: Shape) -> Shape:
        return (*input_shape[:-1], self.units)

    def param_shapes(self, input_shape: Shape) -> ParamShapes:
        shapes = {"kernel": (input_shape[-1], self.units)}
        if self.use_bias:
            shapes["bias"] = (self.units,)
        return {"params": shapes}

    def formula(self, input_shape: Shape) -> Formula:
        d, u = input_shape[-1], self.units
        n = d * u + (u if self.use_bias else 0)
        bias = f" + {u}" if self.use_bias else ""
        return Formula(output=f"units = {u}", params=f"{d}*{u}{bias} = {n:,}")

    def flops(self, input_shape: Shape) -> int:
        positions = math.prod(input_shape[:-1])
        return positions * (2 * input_shape[-1] * self.units + (self.units if self.use_bias else 0))

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        kernel = module.param("kernel", initializer_fn(self.kernel_initializer),
                              (x.shape[-1], self.units), jnp.float32)
        y = jnp.matmul(x, kernel.astype(x.dtype))
        if self.use_bias:
            bias = module.param("bias", initializer_fn(self.bias_initializer), (self.units,), jnp.float32)
            y = y + bias.astype(y.dtype)
        return _finish(self, module, y)
