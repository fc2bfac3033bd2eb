"""Regularization layers: ``Dropout``."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn.layers.base import Layer, _float, _set

__all__ = ['Dropout']


@dataclasses.dataclass(frozen=True)
class Dropout(Layer):
    """``Dropout(rate)``: in training, zeroes each element with probability ``rate`` and scales the
    rest by ``1 / (1 - rate)``; the identity in evaluation. Its key comes from the ``dropout`` rng."""

    rate: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, rate=_float(self.type, "rate", self.rate, 0.0, 1.0, hi_open=True))

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(module.make_rng("dropout"), keep, x.shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))
