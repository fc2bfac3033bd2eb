"""Regularization layers: ``Dropout``, ``SpatialDropout2D``, ``GaussianNoise``, ``GaussianDropout``
(keras/src/layers/regularization/).

Each is the identity in evaluation; in training its key comes from the ``dropout`` rng. Keras's
``seed`` argument is accepted (Keras JSON writes it) and not used: jaxcnn's keys are split from the
one seed of the run (STYLE.md's PRNG rule)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn.errors import ImpossibleShapeError
from jaxcnn.layers.base import Layer, Shape, _data_format, _fail, _float, _fmt_shape, _is_int, _require_rank, _set

__all__ = ['Dropout', 'GaussianDropout', 'GaussianNoise', 'SpatialDropout2D']


def _seed(layer: str, value: Any) -> int | None:
    if value is not None and not _is_int(value):
        raise _fail(layer, "seed", value, "must be an integer or None")
    return value


def _dropped(module: Any, x: jax.Array, rate: float, noise_shape: tuple[Any, ...]) -> jax.Array:
    """Keras's ``backend.random.dropout`` (JAX): a keep mask of ``noise_shape`` drawn with
    probability ``1 - rate``, broadcast over ``x``; kept elements scaled by ``1 / (1 - rate)``."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, noise_shape)
    return jnp.where(jnp.broadcast_to(mask, x.shape), x / keep, jnp.zeros_like(x))


@dataclasses.dataclass(frozen=True)
class Dropout(Layer):
    """``Dropout(rate, noise_shape=None, seed=None)``: in training, zeroes each element with
    probability ``rate`` and scales the rest by ``1 / (1 - rate)``; the identity in evaluation.

    ``noise_shape`` is Keras's: the mask's shape with the batch axis, each entry ``None`` (the
    input's size, as Keras fills it), 1 (the mask is shared along that axis) or the input's size;
    ``(None, 1, 1, C)`` drops whole channels of ``(batch, H, W, C)``. ``-1`` is read as ``None``
    (TOML has no null, and a config written back holds ``-1`` there)."""

    rate: float
    noise_shape: tuple[int | None, ...] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        noise = self.noise_shape
        if noise is not None:
            if (not isinstance(noise, (tuple, list)) or not noise
                    or not all(d is None or (_is_int(d) and (d >= 1 or d == -1)) for d in noise)):
                raise _fail(t, "noise_shape", noise, "must be a list of positive integers or None entries, "
                                                     "the batch axis first, such as [None, 1, 1, 64]")
            noise = tuple(None if d == -1 else d for d in noise)
        _set(self, rate=_float(t, "rate", self.rate, 0.0, 1.0, hi_open=True), noise_shape=noise,
             seed=_seed(t, self.seed))

    def arguments(self) -> dict[str, Any]:
        out = super().arguments()
        if self.noise_shape is not None:  # None entries as -1: TOML has no null
            out["noise_shape"] = [-1 if d is None else d for d in self.noise_shape]
        return out

    def output_shape(self, input_shape: Shape) -> Shape:
        self._noise(input_shape)
        return tuple(input_shape)

    def _noise(self, input_shape: Shape) -> tuple[int | None, ...] | None:
        """The noise shape without its batch entry, ``None`` entries filled from the input."""
        if self.noise_shape is None:
            return None
        noise = self.noise_shape
        if len(noise) != len(input_shape) + 1:
            raise ImpossibleShapeError(
                f"`noise_shape` (={list(noise)}) has {len(noise)} entries; the input "
                f"{_fmt_shape(tuple(input_shape))} has {len(input_shape) + 1} with the batch axis",
                layer_type=self.type)
        if noise[0] not in (None, 1):
            raise ImpossibleShapeError(
                f"`noise_shape` (={list(noise)}) fixes the batch axis to {noise[0]}: give None (the batch "
                "size) or 1 (one mask for the whole batch)", layer_type=self.type)
        for d, size in zip(noise[1:], input_shape):
            if d not in (None, 1, size):
                raise ImpossibleShapeError(
                    f"`noise_shape` (={list(noise)}) does not broadcast over the input "
                    f"{_fmt_shape(tuple(input_shape))}: each entry must be None, 1 or the input's size",
                    layer_type=self.type)
        return tuple(size if d is None else d for d, size in zip(noise[1:], input_shape))

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        noise = self._noise(tuple(x.shape[1:]))
        if noise is None:
            return _dropped(module, x, self.rate, x.shape)
        batch = 1 if self.noise_shape[0] == 1 else x.shape[0]
        return _dropped(module, x, self.rate, (batch, *noise))


@dataclasses.dataclass(frozen=True)
class SpatialDropout2D(Layer):
    """``SpatialDropout2D(rate, data_format=None, seed=None)``: Dropout of whole channels (feature
    maps): the mask of ``(batch, H, W, C)`` has shape ``(batch, 1, 1, C)``."""

    rate: float
    data_format: str | None = "channels_last"
    seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(self, rate=_float(t, "rate", self.rate, 0.0, 1.0, hi_open=True),
             data_format=_data_format(t, self.data_format), seed=_seed(t, self.seed))

    def output_shape(self, input_shape: Shape) -> Shape:
        _require_rank(self, input_shape, 3, "height, width, channels")
        return tuple(input_shape)

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        return _dropped(module, x, self.rate, (x.shape[0], 1, 1, x.shape[3]))


@dataclasses.dataclass(frozen=True)
class GaussianNoise(Layer):
    """``GaussianNoise(stddev, seed=None)``: in training, ``x + N(0, stddev^2)`` elementwise;
    the identity in evaluation. ``stddev`` in [0, 1], as Keras checks it."""

    stddev: float
    seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(self, stddev=_float(t, "stddev", self.stddev, 0.0, 1.0), seed=_seed(t, self.seed))

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        if not train or self.stddev == 0.0:
            return x
        noise = jax.random.normal(module.make_rng("dropout"), x.shape, x.dtype)
        return x + self.stddev * noise


@dataclasses.dataclass(frozen=True)
class GaussianDropout(Layer):
    """``GaussianDropout(rate, seed=None)``: in training, ``x * N(1, rate / (1 - rate))``
    elementwise (mean 1, standard deviation ``sqrt(rate / (1 - rate))``); the identity in
    evaluation."""

    rate: float
    seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(self, rate=_float(t, "rate", self.rate, 0.0, 1.0, hi_open=True), seed=_seed(t, self.seed))

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        stddev = math.sqrt(self.rate / (1.0 - self.rate))
        noise = jax.random.normal(module.make_rng("dropout"), x.shape, x.dtype)
        return x * (1.0 + stddev * noise)
