"""The custom layers ``keras.applications`` writes into its models' JSON: ConvNeXt's ``LayerScale``
(keras/src/applications/convnext.py) and InceptionResNetV2's ``CustomScaleLayer``
(keras/src/applications/inception_resnet_v2.py), a two-input layer like the merging ones."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxcnn.errors import ImpossibleShapeError
from jaxcnn.layers.base import Formula, Layer, ParamShapes, Shape, _fmt_shape, _number, _positive_int, _set
from jaxcnn.layers.merging import _Merge

__all__ = ["CustomScaleLayer", "LayerScale"]


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


@dataclasses.dataclass(frozen=True)
class CustomScaleLayer(_Merge):
    """InceptionResNetV2's ``CustomScaleLayer(scale)``: ``inputs[0] + inputs[1] * scale``, of
    exactly two inputs (broadcast as the merging layers)."""

    scale: float = 1.0

    max_inputs: ClassVar[int | None] = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, scale=_number(self.type, "scale", self.scale))

    def _merge(self, arrays: list[jax.Array]) -> jax.Array:
        return arrays[0] + arrays[1] * self.scale
