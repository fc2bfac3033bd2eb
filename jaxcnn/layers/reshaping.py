"""Reshaping layers: ``Flatten``, ``ZeroPadding2D``, ``Cropping2D``, ``Reshape``, ``Permute``,
``UpSampling2D`` (keras/src/layers/reshaping/)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxcnn.errors import ImpossibleShapeError
from jaxcnn.layers.base import (_CANONICAL_DEFAULTS, Formula, Layer, Shape, _choice, _data_format, _fail,
                               _fmt_shape, _is_int, _pair, _require_rank, _set)

__all__ = ['Cropping2D', 'Flatten', 'Permute', 'Reshape', 'UpSampling2D', 'ZeroPadding2D']

Margins = tuple[tuple[int, int], tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    """``Flatten(data_format=None)``: ``(batch, *dims)`` -> ``(batch, prod(dims))`` in row-major
    (channels-last) order."""

    data_format: str | None = "channels_last"

    mixes_positions: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, data_format=_data_format(self.type, self.data_format))

    def output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)

    def formula(self, input_shape: Shape) -> Formula:
        n = math.prod(input_shape)
        return Formula(output="units = " + "*".join(map(str, input_shape)) + f" = {n:,}", params="0")

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return x.reshape(x.shape[0], -1)


def _margins(layer: str, arg: str, value: Any) -> Margins:
    """Keras's ZeroPadding2D ``padding`` / Cropping2D ``cropping``: an int (all four sides), a pair
    ``(symmetric height, symmetric width)``, or ``((top, bottom), (left, right))``; non-negative."""

    def side(v: Any) -> tuple[int, int] | None:
        if _is_int(v) and v >= 0:
            return (v, v)
        if isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(e) and e >= 0 for e in v):
            return (v[0], v[1])
        return None

    if _is_int(value) and value >= 0:
        return ((value, value), (value, value))
    if isinstance(value, (tuple, list)) and len(value) == 2:
        height, width = side(value[0]), side(value[1])
        if height is not None and width is not None:
            return (height, width)
    raise _fail(layer, arg, value, "must be a non-negative integer, a pair (symmetric height, symmetric "
                                   "width) or ((top, bottom), (left, right)) of non-negative integers")


@dataclasses.dataclass(frozen=True)
class ZeroPadding2D(Layer):
    """``ZeroPadding2D(padding=1, data_format=None)``: zeros added around the image,
    ``(batch, H, W, C)`` -> ``(batch, top + H + bottom, left + W + right, C)``."""

    padding: int | tuple[Any, Any] = 1
    data_format: str | None = "channels_last"

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, padding=_margins(self.type, "padding", self.padding),
             data_format=_data_format(self.type, self.data_format))

    def output_shape(self, input_shape: Shape) -> Shape:
        _require_rank(self, input_shape, 3, "height, width, channels")
        (t, b), (left, r) = self.padding
        return (input_shape[0] + t + b, input_shape[1] + left + r, input_shape[2])

    def formula(self, input_shape: Shape) -> Formula:
        h, w, c = self.output_shape(input_shape)
        (t, b), (left, r) = self.padding
        return Formula(output=f"height = {t} + {input_shape[0]} + {b} = {h}; "
                              f"width = {left} + {input_shape[1]} + {r} = {w}; channels = {c}",
                       params="0 (no weights)")

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return jnp.pad(x, ((0, 0), *self.padding, (0, 0)))


@dataclasses.dataclass(frozen=True)
class Cropping2D(Layer):
    """``Cropping2D(cropping=0, data_format=None)``: rows and columns removed at the edges,
    ``(batch, H, W, C)`` -> ``(batch, H - top - bottom, W - left - right, C)``; Keras refuses a
    cropping that leaves nothing (``top + bottom >= H``) and so does this."""

    cropping: int | tuple[Any, Any] = 0
    data_format: str | None = "channels_last"

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, cropping=_margins(self.type, "cropping", self.cropping),
             data_format=_data_format(self.type, self.data_format))

    def output_shape(self, input_shape: Shape) -> Shape:
        _require_rank(self, input_shape, 3, "height, width, channels")
        out = []
        for axis, size, (a, b) in zip(("height", "width"), input_shape[:2], self.cropping):
            if a + b >= size:
                raise ImpossibleShapeError(
                    f"`cropping` (={self.cropping}) removes {a} + {b} = {a + b} of the input {axis} {size}: "
                    "it must remove less than the whole axis (Keras refuses it too)", layer_type=self.type)
            out.append(size - a - b)
        return (out[0], out[1], input_shape[2])

    def formula(self, input_shape: Shape) -> Formula:
        h, w, c = self.output_shape(input_shape)
        (t, b), (left, r) = self.cropping
        return Formula(output=f"height = {input_shape[0]} - {t} - {b} = {h}; "
                              f"width = {input_shape[1]} - {left} - {r} = {w}; channels = {c}",
                       params="0 (no weights)")

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        (t, b), (left, r) = self.cropping
        h, w = x.shape[1], x.shape[2]
        return x[:, t:h - b, left:w - r, :]


@dataclasses.dataclass(frozen=True)
class Reshape(Layer):
    """``Reshape(target_shape)``: ``(batch, *dims)`` -> ``(batch, *target_shape)`` in row-major order;
    one entry may be ``-1``, inferred from the others (refused where they do not divide the size)."""

    target_shape: tuple[int, ...]

    mixes_positions: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        value = self.target_shape
        if (not isinstance(value, (tuple, list)) or not value
                or not all(_is_int(v) and (v >= 1 or v == -1) for v in value)):
            raise _fail(self.type, "target_shape", value,
                        "must be a non-empty list of positive integers, one of which may be -1")
        if list(value).count(-1) > 1:
            raise _fail(self.type, "target_shape", value, "may hold at most one unknown dimension (-1)")
        _set(self, target_shape=tuple(value))

    def _resolve(self, input_shape: Shape) -> tuple[Shape, str]:
        n = math.prod(input_shape)
        size = "*".join(map(str, input_shape)) + f" = {n:,} elements"
        known = math.prod(d for d in self.target_shape if d != -1)
        if -1 not in self.target_shape:
            if known != n:
                raise ImpossibleShapeError(
                    f"cannot reshape {_fmt_shape(tuple(input_shape))} ({size}) into target_shape "
                    f"{self.target_shape} ({known:,} elements)", layer_type=self.type)
            return self.target_shape, f"target_shape {self.target_shape}: {size}"
        if n % known:
            raise ImpossibleShapeError(
                f"cannot reshape {_fmt_shape(tuple(input_shape))} ({size}) into target_shape "
                f"{self.target_shape}: {n:,} is not a multiple of {known:,}", layer_type=self.type)
        out = tuple(n // known if d == -1 else d for d in self.target_shape)
        return out, f"target_shape {self.target_shape}: -1 = {n:,} / {known:,} = {n // known:,}"

    def output_shape(self, input_shape: Shape) -> Shape:
        return self._resolve(input_shape)[0]

    def formula(self, input_shape: Shape) -> Formula:
        out, text = self._resolve(input_shape)
        return Formula(output=f"{text}; output {_fmt_shape(out)}", params="0 (no weights)")

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return x.reshape(x.shape[0], *self.output_shape(tuple(x.shape[1:])))


@dataclasses.dataclass(frozen=True)
class Permute(Layer):
    """``Permute(dims)``: the axes of ``(batch, *dims_in)`` reordered; ``dims`` is a permutation of
    ``1..rank`` (1-based, the batch axis is not permuted), as in Keras."""

    dims: tuple[int, ...]

    mixes_positions: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        value = self.dims
        if (not isinstance(value, (tuple, list)) or not all(_is_int(v) for v in value)
                or sorted(value) != list(range(1, len(value) + 1))):
            raise _fail(self.type, "dims", value,
                        "must be a permutation of 1..rank (1-based: the indices start from 1, as in Keras)")
        _set(self, dims=tuple(value))

    def output_shape(self, input_shape: Shape) -> Shape:
        _require_rank(self, input_shape, len(self.dims), f"as many axes as dims={self.dims}")
        return tuple(input_shape[d - 1] for d in self.dims)

    def formula(self, input_shape: Shape) -> Formula:
        out = self.output_shape(input_shape)
        return Formula(output=f"input axes {self.dims} of {_fmt_shape(tuple(input_shape))} = {_fmt_shape(out)}",
                       params="0 (no weights)")

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return jnp.transpose(x, (0, *self.dims))


_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos3", "lanczos5")


@dataclasses.dataclass(frozen=True)
class UpSampling2D(Layer):
    """``UpSampling2D(size=2, data_format=None, interpolation="nearest")``: ``(batch, H, W, C)`` ->
    ``(batch, size_h*H, size_w*W, C)``. ``"nearest"`` repeats rows and columns; the others are
    ``jax.image.resize(method=interpolation, antialias=False)``, as Keras 3 computes them
    (keras/src/backend/jax/image.py): half-pixel centres, edges clamped."""

    size: int | tuple[int, int] = 2
    data_format: str | None = "channels_last"
    interpolation: str = "nearest"

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        interpolation = self.interpolation.lower() if isinstance(self.interpolation, str) else self.interpolation
        _set(self, size=_pair(t, "size", self.size), data_format=_data_format(t, self.data_format),
             interpolation=_choice(t, "interpolation", interpolation, _INTERPOLATIONS))

    def output_shape(self, input_shape: Shape) -> Shape:
        _require_rank(self, input_shape, 3, "height, width, channels")
        return (input_shape[0] * self.size[0], input_shape[1] * self.size[1], input_shape[2])

    def formula(self, input_shape: Shape) -> Formula:
        h, w, c = self.output_shape(input_shape)
        return Formula(output=f"height = {input_shape[0]}*{self.size[0]} = {h}; "
                              f"width = {input_shape[1]}*{self.size[1]} = {w}; channels = {c}",
                       params="0 (no weights)")

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        if self.interpolation == "nearest":
            return jnp.repeat(jnp.repeat(x, self.size[0], axis=1), self.size[1], axis=2)
        h, w, c = self.output_shape(tuple(x.shape[1:]))

        def resize(image: jax.Array) -> jax.Array:  # (H, W, C) -> (h, w, C)
            return jax.image.resize(image, (h, w, c), method=self.interpolation, antialias=False)

        return jax.vmap(resize)(x)


_CANONICAL_DEFAULTS.update({
    ("ZeroPadding2D", "padding"): ((1, 1), (1, 1)),
    ("Cropping2D", "cropping"): ((0, 0), (0, 0)),
    ("UpSampling2D", "size"): (2, 2),
})
