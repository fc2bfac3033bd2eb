"""Pooling layers: ``MaxPooling2D``, ``AveragePooling2D``, ``GlobalAveragePooling2D``,
``GlobalMaxPooling2D``."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxcnn import lowerings
from jaxcnn.errors import ImpossibleShapeError
from jaxcnn.layers.base import (Formula, Layer, Shape, _Windowed, _bool, _choice, _data_format, _fmt_shape, _padding,
                               _pair, _require_rank, _set)

__all__ = ['AveragePooling2D', 'GlobalAveragePooling2D', 'GlobalMaxPooling2D', 'MaxPooling2D']


@dataclasses.dataclass(frozen=True)
class _Pooling2D(_Windowed):
    pool_size: int | tuple[int, int] = 2
    strides: int | tuple[int, int] | None = None
    padding: str = "valid"
    data_format: str | None = "channels_last"  # Keras's; "channels_first" is refused
    lowering: str = "auto"  # jaxcnn's: "auto", "reduce_window", "reshape" (tiling windows only) or "onednn"

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        pool = _pair(t, "pool_size", self.pool_size)
        strides = pool if self.strides is None else _pair(t, "strides", self.strides)
        _set(self, pool_size=pool, strides=strides, padding=_padding(t, self.padding),
             data_format=_data_format(t, self.data_format),
             lowering=_choice(t, "lowering", self.lowering, lowerings.POOL_LOWERINGS))

    def _forced_lowering_applies(self, input_shape: Shape) -> None:
        """A forced ``lowering="reshape"`` whose windows do not tile the input is refused."""
        hw = (input_shape[0], input_shape[1])
        if self.lowering == "reshape" and not lowerings.tiles(hw, self.pool_size, self.strides, self.padding):
            raise ImpossibleShapeError(
                f"lowering='reshape' needs windows that tile the input (pool_size == strides, padding "
                f"'valid', sizes divisible); pool {self.pool_size}, strides {self.strides}, padding "
                f"'{self.padding}' on {hw[0]}x{hw[1]} do not", layer_type=self.type)

    def lowering_for(self, input_shape: Shape, context: lowerings.LoweringContext, batch: Any = None,
                     train: bool = False) -> str:
        del batch, train
        self._forced_lowering_applies(input_shape)
        forced = lowerings.forced_lowering(self.lowering, context)
        if forced is not None:
            return forced
        return lowerings.choose_pool(tuple(input_shape[:2]), self.pool_size, self.strides, self.padding, context)

    def describe_lowering(self, input_shape: Shape, context: lowerings.LoweringContext | None = None) -> str:
        self._forced_lowering_applies(input_shape)
        if self.lowering != "auto":
            return self.lowering
        return lowerings.describe_pool(tuple(input_shape[:2]), self.pool_size, self.strides, self.padding,
                                       context)

    @classmethod
    def _canonical(cls, field: str, default: Any) -> Any:
        return default if field != "pool_size" else (2, 2)

    def arguments(self) -> dict[str, Any]:
        out = super().arguments()
        if self.strides == self.pool_size:  # the Keras default, strides=None
            out.pop("strides", None)
        return out

    def output_shape(self, input_shape: Shape) -> Shape:
        (h, w), _ = self._spatial(input_shape, self.pool_size, self.strides, (1, 1), self.padding, "pool")
        self._forced_lowering_applies(input_shape)
        return (h, w, input_shape[2])

    def formula(self, input_shape: Shape) -> Formula:
        _, text = self._spatial(input_shape, self.pool_size, self.strides, (1, 1), self.padding, "pool")
        return Formula(output=f"{text}; channels = {input_shape[2]}", params="0 (no weights)")

    def window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return self.pool_size, self.strides

    def _window_args(self, module: Any, x: jax.Array) -> dict[str, Any]:
        return {"pool": self.pool_size, "strides": self.strides, "padding": self.padding,
                "lowering": self.lowering_for(x.shape[1:], module.lowering)}


@dataclasses.dataclass(frozen=True)
class MaxPooling2D(_Pooling2D):
    """``MaxPooling2D(pool_size=2, strides=None (= pool_size), padding="valid", data_format=None)``; SAME
    pads with -inf."""

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        return lowerings.max_pool(x, **self._window_args(module, x))


@dataclasses.dataclass(frozen=True)
class AveragePooling2D(_Pooling2D):
    """``AveragePooling2D(pool_size=2, strides=None (= pool_size), padding="valid", data_format=None)``; with SAME
    padding each window is averaged over its real (unpadded) elements, as Keras does."""

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        return lowerings.avg_pool(x, **self._window_args(module, x))


@dataclasses.dataclass(frozen=True)
class _GlobalPooling2D(Layer):
    data_format: str | None = "channels_last"  # Keras's; "channels_first" is refused
    keepdims: bool = False

    mixes_positions: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, data_format=_data_format(self.type, self.data_format),
             keepdims=_bool(self.type, "keepdims", self.keepdims))

    def output_shape(self, input_shape: Shape) -> Shape:
        _require_rank(self, input_shape, 3, "height, width, channels")
        return (1, 1, input_shape[2]) if self.keepdims else (input_shape[2],)

    def formula(self, input_shape: Shape) -> Formula:
        out = self.output_shape(input_shape)
        return Formula(output=f"over height {input_shape[0]} and width {input_shape[1]}: {_fmt_shape(out)}",
                       params="0 (no weights)")


@dataclasses.dataclass(frozen=True)
class GlobalAveragePooling2D(_GlobalPooling2D):
    """``GlobalAveragePooling2D(data_format=None, keepdims=False)``: ``(batch, H, W, C)`` -> ``(batch, C)``."""

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return jnp.mean(x, axis=(1, 2), keepdims=self.keepdims)


@dataclasses.dataclass(frozen=True)
class GlobalMaxPooling2D(_GlobalPooling2D):
    """``GlobalMaxPooling2D(data_format=None, keepdims=False)``: ``(batch, H, W, C)`` -> ``(batch, C)``."""

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return jnp.max(x, axis=(1, 2), keepdims=self.keepdims)
