"""Reshaping layers: ``Flatten``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax

from jaxcnn.layers.base import Formula, Layer, Shape

__all__ = ['Flatten']


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    """``Flatten()``: ``(batch, *dims)`` -> ``(batch, prod(dims))`` in row-major (channels-last) order."""

    mixes_positions: ClassVar[bool] = True

    def output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)

    def formula(self, input_shape: Shape) -> Formula:
        n = math.prod(input_shape)
        return Formula(output="units = " + "*".join(map(str, input_shape)) + f" = {n:,}", params="0")

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return x.reshape(x.shape[0], -1)
