"""Activation layers: ``Activation``."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxcnn.layers.base import Layer, _activation, _apply_activation, _set

__all__ = ['Activation']


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
