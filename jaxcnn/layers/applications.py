"""The custom layers ``keras.applications`` writes into its models' JSON: ConvNeXt's ``LayerScale``
(keras/src/applications/convnext.py). InceptionResNetV2's ``CustomScaleLayer`` takes two inputs: it
is a merging layer (:mod:`jaxcnn.layers.merging`)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxcnn.errors import ImpossibleShapeError
from jaxcnn.layers.base import Formula, Layer, ParamShapes, Shape, _fmt_shape, _number, _positive_int, _set

__all__ = ['LayerScale']


@dataclasses.dataclass(frozen=True)
class LayerScale(Layer):
    """ConvNeXt's ``LayerScale(init_values, projection_dim)``: ``x * gamma``, ``gamma`` a trainable
    ``(projection_dim,)`` initialized to ``init_values``; the input's last axis is
    ``projection_dim``."""

    init_values: float
    projection_dim: int

    has_params: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(self, init_values=_number(t, "init_values", self.init_values),
             projection_dim=_positive_int(t, "projection_dim", self.projection_dim))

    def output_shape(self, input_shape: Shape) -> Shape:
        if not input_shape or input_shape[-1] != self.projection_dim:
            raise ImpossibleShapeError(
                f"`projection_dim` (={self.projection_dim}) must be the input's last axis; the input is "
                f"{_fmt_shape(tuple(input_shape))}", layer_type=self.type)
        return tuple(input_shape)

    def param_shapes(self, input_shape: Shape) -> ParamShapes:
        self.output_shape(input_shape)
        return {"params": {"gamma": (self.projection_dim,)}}

    def formula(self, input_shape: Shape) -> Formula:
        self.output_shape(input_shape)
        return Formula(output=f"output = input = {_fmt_shape(tuple(input_shape))}",
                       params=f"gamma (projection_dim,) = {self.projection_dim:,}")

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        gamma = module.param("gamma", jax.nn.initializers.constant(self.init_values), (self.projection_dim,),
                             jnp.float32)
        return x * gamma.astype(x.dtype)
