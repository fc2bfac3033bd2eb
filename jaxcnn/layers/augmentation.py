"""Image augmentation layers, as Keras 3 writes them (keras/src/layers/preprocessing/image_preprocessing/):
``RandomFlip``, ``RandomCrop``, ``RandomTranslation``, ``RandomRotation``, ``RandomZoom``,
``RandomContrast``, ``RandomBrightness``.

Each is part of the model, runs inside the jitted training step on the device, and draws from the
step's key (``module.make_rng("dropout")``: the run's key folded with the step, then with the layer's
path), so a resumed run augments exactly as an uninterrupted one. Outside training (evaluation,
``predict``, an export) each is the identity, except ``RandomCrop``, whose output has its own shape:
there it takes Keras's deterministic crop (below). The arguments and their checks, the random draws'
ranges and the transformations follow Keras 3.15's code, which the tests run as the oracle; the draws
themselves come from JAX's generator, not Keras's ``SeedGenerator`` (``seed`` is accepted, and
recorded, as Keras writes it).

Two places where Keras's code and its documentation part, and jaxcnn follows the code:

* ``RandomContrast(factor)`` with a number ``f`` draws its contrast factor in ``[1, 1 + f]``, not
  ``[1 - f, 1 + f]`` (Keras stores ``factor = [0, f]``: its bounds are ``(0, 1)`` and a number ``f``
  becomes ``[max(-f, 0), f]``); ``factor=[a, b]`` draws in ``[1 - a, 1 + b]``.
* ``RandomCrop`` outside training: Keras 3.15 returns its input uncropped there (so a model whose
  later layers depend on the cropped shape cannot predict), while its docstring and Keras 2 crop and
  resize deterministically. jaxcnn does the latter, with the code Keras runs in training for an
  input not larger than the target: the output shape is ``(height, width, channels)`` in every mode.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.ndimage import map_coordinates

from jaxcnn.layers.base import Formula, Layer, Shape, _choice, _data_format, _fail, _fmt_shape, _is_int, _positive_int, _require_rank, _set

__all__ = ["RandomBrightness", "RandomContrast", "RandomCrop", "RandomFlip", "RandomRotation", "RandomTranslation",
           "RandomZoom"]

FILL_MODES = ("reflect", "wrap", "constant", "nearest")
INTERPOLATIONS = ("nearest", "bilinear")
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")


def _seed(layer: str, value: Any) -> int | None:
    if value is not None and not _is_int(value):
        raise _fail(layer, "seed", value, "must be an integer or None")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _factor(layer: str, arg: str, value: Any, low: float, high: float, *, open_low: bool = False,
            clamp_low: bool = False) -> tuple[float, float]:
    """Keras's ``_set_factor``: a number ``f`` is ``(-|f|, |f|)`` (``(max(-|f|, low), |f|)`` with
    ``clamp_low``, the base layer's rule), a pair is sorted; every bound within ``[low, high]``
    (``(low, high]`` with ``open_low``). Returned as a sorted pair of floats."""
    within = (lambda v: low < v <= high) if open_low else (lambda v: low <= v <= high)
    interval = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or not all(_is_number(v) for v in value):
            raise _fail(layer, arg, value, f"must be a number or a list of two numbers in {interval}")
        lower, upper = sorted(float(v) for v in value)
        if clamp_low:  # the base layer checks only that the pair overlaps its bounds
            if lower > high or upper < low:
                raise _fail(layer, arg, value, f"must be a number or a list of two numbers in {interval}")
        elif not (within(lower) and within(upper)):
            raise _fail(layer, arg, value, f"must be a number or a list of two numbers in {interval}")
        return lower, upper
    if not _is_number(value) or not within(value):
        raise _fail(layer, arg, value, f"must be a number or a list of two numbers in {interval}")
    magnitude = abs(float(value))
    return (max(-magnitude, low) if clamp_low else -magnitude), magnitude


def _value_range(layer: str, value: Any) -> tuple[float, float]:
    if (not isinstance(value, (tuple, list)) or len(value) != 2 or not all(_is_number(v) for v in value)):
        raise _fail(layer, "value_range", value, "must be a list of two numbers, such as [0, 255]")
    low, high = sorted(float(v) for v in value)
    return low, high


def _fill(layer: Any) -> None:
    t = layer.type
    fill_value = layer.fill_value
    if not _is_number(fill_value):
        raise _fail(t, "fill_value", fill_value, "must be a number")
    _set(layer, fill_mode=_choice(t, "fill_mode", layer.fill_mode, FILL_MODES),
         interpolation=_choice(t, "interpolation", layer.interpolation, INTERPOLATIONS),
         fill_value=float(fill_value), data_format=_data_format(t, layer.data_format), seed=_seed(t, layer.seed))


def affine_transform(images: jax.Array, matrix: jax.Array, *, interpolation: str, fill_mode: str,
                     fill_value: float) -> jax.Array:
    """Keras's ``backend.image.affine_transform`` (JAX), channels last: output pixel ``(y, x)`` of
    image ``i`` samples its input at ``(b0 x + b1 y + b2, a0 x + a1 y + a2)`` (row, column), with
    ``matrix[i] = [a0, a1, a2, b0, b1, b2, ...]``, by ``jax.scipy.ndimage.map_coordinates`` (order 0
    or 1) with ``fill_mode`` outside the image."""
    _, height, width, _ = images.shape
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                              indexing="ij")
    m = matrix.astype(jnp.float32)[:, :6, None, None]
    a0, a1, a2, b0, b1, b2 = (m[:, k] for k in range(6))
    y_in = rows * b1 + cols * b0 + b2  # Keras's order of the terms
    x_in = rows * a1 + cols * a0 + a2
    order = 0 if interpolation == "nearest" else 1

    def one(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
        channel = lambda c: map_coordinates(c, [y, x], order=order, mode=fill_mode, cval=fill_value)  # noqa: E731
        return jax.vmap(channel, in_axes=-1, out_axes=-1)(image)

    return jax.vmap(one)(images.astype(jnp.float32), y_in, x_in).astype(images.dtype)


class _Augmentation(Layer):
    """An augmentation: the identity outside training, ``augment`` (with the step's key) inside."""

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        if not train:
            return x
        return self.augment(module.make_rng("dropout"), x)

    def augment(self, key: jax.Array, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def output_shape(self, input_shape: Shape) -> Shape:
        _require_rank(self, input_shape, 3, "height, width, channels")
        return tuple(input_shape)

    def formula(self, input_shape: Shape) -> Formula:
        out = self.output_shape(input_shape)
        return Formula(output=f"output = input = {_fmt_shape(out)} (the identity outside training)", params="0")


@dataclasses.dataclass(frozen=True)
class RandomFlip(_Augmentation):
    """``RandomFlip(mode="horizontal_and_vertical", seed=None)``: in training each image is flipped
    with probability 1/2 (``"horizontal_and_vertical"``: along both axes together, as Keras draws one
    flag per image for both)."""

    mode: str = "horizontal_and_vertical"
    seed: int | None = None
    data_format: str | None = "channels_last"

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(self, mode=_choice(t, "mode", self.mode, FLIP_MODES), seed=_seed(t, self.seed),
             data_format=_data_format(t, self.data_format))

    def flips(self, key: jax.Array, batch: int) -> jax.Array:
        """Keras's draw: ``uniform(batch) <= 0.5`` per image."""
        return jax.random.uniform(key, (batch, 1, 1, 1)) <= 0.5

    def augment(self, key: jax.Array, x: jax.Array) -> jax.Array:
        return self.apply(x, self.flips(key, x.shape[0]))

    def apply(self, x: jax.Array, flips: jax.Array) -> jax.Array:
        if self.mode in ("horizontal", "horizontal_and_vertical"):
            x = jnp.where(flips, jnp.flip(x, axis=2), x)
        if self.mode in ("vertical", "horizontal_and_vertical"):
            x = jnp.where(flips, jnp.flip(x, axis=1), x)
        return x


@dataclasses.dataclass(frozen=True)
class RandomCrop(Layer):
    """``RandomCrop(height, width, seed=None)``: output ``(height, width, channels)``. In training,
    where the input is larger than the target in both axes, one random window of that size for the
    whole batch (Keras crops a batch at one location); otherwise, and outside training, Keras's
    deterministic window (centred, sized from the target's aspect ratio) resized bilinearly to the
    target where it does not fit exactly."""

    height: int
    width: int
    seed: int | None = None
    data_format: str | None = "channels_last"

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(self, height=_positive_int(t, "height", self.height), width=_positive_int(t, "width", self.width),
             seed=_seed(t, self.seed), data_format=_data_format(t, self.data_format))

    def output_shape(self, input_shape: Shape) -> Shape:
        _require_rank(self, input_shape, 3, "height, width, channels")
        return (self.height, self.width, input_shape[2])

    def formula(self, input_shape: Shape) -> Formula:
        h, w, c = self.output_shape(input_shape)
        return Formula(output=f"(height, width, channels) = ({h}, {w}, {c}): the target size, the input's "
                              "channels", params="0")

    def random_window(self, input_hw: tuple[int, int]) -> bool:
        """Whether a training step draws the window (the input larger than the target in both axes)."""
        return input_hw[0] > self.height and input_hw[1] > self.width

    def centred_start(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """Keras's deterministic window start (``get_random_transformation``'s other branch)."""
        h, w = input_hw
        crop_height = max(min(h, int(float(w * self.height) / self.width)), 1)
        crop_width = max(min(w, int(float(h * self.width) / self.height)), 1)
        return int(float(h - crop_height) / 2), int(float(w - crop_width) / 2)

    def apply(self, x: jax.Array, start: tuple[Any, Any]) -> jax.Array:
        """Keras's ``transform_images``: the window of the target size at ``start`` (clipped at the
        input's edge, as a slice is), resized to the target where it came out smaller."""
        h, w = x.shape[1:3]
        top, left = start
        if self.random_window((h, w)):
            return lax.dynamic_slice(x, (0, top, left, 0), (x.shape[0], self.height, self.width, x.shape[3]))
        window = x[:, top:top + self.height, left:left + self.width, :]
        if window.shape[1:3] != (self.height, self.width):
            window = jax.image.resize(window.astype(jnp.float32), (x.shape[0], self.height, self.width, x.shape[3]),
                                      method="bilinear", antialias=False).astype(x.dtype)
        return window

    def starts(self, key: jax.Array, input_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
        """Keras's draw: ``int(uniform(0, H - height + 1))``, likewise for the width."""
        k1, k2 = jax.random.split(key)
        top = jax.random.uniform(k1, (), maxval=float(input_hw[0] - self.height + 1)).astype(jnp.int32)
        left = jax.random.uniform(k2, (), maxval=float(input_hw[1] - self.width + 1)).astype(jnp.int32)
        return top, left

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        hw = x.shape[1:3]
        if train and self.random_window(hw):
            return self.apply(x, self.starts(module.make_rng("dropout"), hw))
        return self.apply(x, self.centred_start(hw))


class _Affine(_Augmentation):
    """An augmentation that resamples each image through an affine matrix (Keras's
    ``affine_transform``): ``matrices(key, batch, height, width)`` gives the ``(batch, 8)`` matrices."""

    def augment(self, key: jax.Array, x: jax.Array) -> jax.Array:
        return self.apply(x, self.matrices(key, *x.shape[:3]))

    def apply(self, x: jax.Array, matrices: jax.Array) -> jax.Array:
        return affine_transform(x, matrices, interpolation=self.interpolation, fill_mode=self.fill_mode,
                                fill_value=self.fill_value)

    def matrices(self, key: jax.Array, batch: int, height: int, width: int) -> jax.Array:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class RandomTranslation(_Affine):
    """``RandomTranslation(height_factor, width_factor, fill_mode="reflect", interpolation="bilinear",
    seed=None, fill_value=0.0)``: in training each image shifted by ``uniform(height_factor) * H``
    rows and ``uniform(width_factor) * W`` columns (a factor a number ``f``, ``[-f, f]``, or a pair,
    in [-1, 1])."""

    height_factor: Any
    width_factor: Any
    fill_mode: str = "reflect"
    interpolation: str = "bilinear"
    seed: int | None = None
    fill_value: float = 0.0
    data_format: str | None = "channels_last"

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(self, height_factor=_factor(t, "height_factor", self.height_factor, -1.0, 1.0),
             width_factor=_factor(t, "width_factor", self.width_factor, -1.0, 1.0))
        _fill(self)

    def matrices(self, key: jax.Array, batch: int, height: int, width: int) -> jax.Array:
        k1, k2 = jax.random.split(key)
        dy = jax.random.uniform(k1, (batch, 1), minval=self.height_factor[0], maxval=self.height_factor[1]) * height
        dx = jax.random.uniform(k2, (batch, 1), minval=self.width_factor[0], maxval=self.width_factor[1]) * width
        return translation_matrices(dx, dy)


def translation_matrices(dx: jax.Array, dy: jax.Array) -> jax.Array:
    """Keras's ``_get_translation_matrix``: ``[1, 0, -dx, 0, 1, -dy, 0, 0]`` per image."""
    ones, zeros = jnp.ones_like(dx), jnp.zeros_like(dx)
    return jnp.concatenate([ones, zeros, -dx, zeros, ones, -dy, zeros, zeros], axis=1)


@dataclasses.dataclass(frozen=True)
class RandomRotation(_Affine):
    """``RandomRotation(factor, fill_mode="reflect", interpolation="bilinear", seed=None,
    fill_value=0.0)``: in training each image rotated about its centre by ``uniform(factor) * 360``
    degrees (a number ``f``, ``[-f, f]``, or a pair, in [-1, 1])."""

    factor: Any
    fill_mode: str = "reflect"
    interpolation: str = "bilinear"
    seed: int | None = None
    fill_value: float = 0.0
    data_format: str | None = "channels_last"

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, factor=_factor(self.type, "factor", self.factor, -1.0, 1.0, clamp_low=True))
        _fill(self)

    def matrices(self, key: jax.Array, batch: int, height: int, width: int) -> jax.Array:
        angle = jax.random.uniform(key, (batch,), minval=self.factor[0] * 360.0, maxval=self.factor[1] * 360.0)
        return rotation_matrices(angle, height, width)


def rotation_matrices(degrees: jax.Array, height: int, width: int) -> jax.Array:
    """Keras's ``_compute_affine_matrix`` for a rotation about the centre (``0.5 * (size - 1)``), no
    translation, scale or shear."""
    angle = degrees * (math.pi / 180.0)
    cx, cy = 0.5 * (width - 1), 0.5 * (height - 1)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    a0, a1 = cos, -sin
    b0, b1 = sin, cos
    a2 = cx - cx * a0 - cy * a1
    b2 = cy - cx * b0 - cy * b1
    zeros = jnp.zeros_like(angle)
    return jnp.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


@dataclasses.dataclass(frozen=True)
class RandomZoom(_Affine):
    """``RandomZoom(height_factor, width_factor=None, fill_mode="reflect", interpolation="bilinear",
    seed=None, fill_value=0.0)``: in training each image scaled about its centre by ``1 +
    uniform(height_factor)`` vertically and ``1 + uniform(width_factor)`` horizontally (the vertical
    factor for both where ``width_factor`` is None); a factor is a number ``f``, ``[-f, f]``, or a
    pair, in (-1, 1]. Above 1 zooms out, below 1 in, as Keras's matrix does."""

    height_factor: Any
    width_factor: Any = None
    fill_mode: str = "reflect"
    interpolation: str = "bilinear"
    seed: int | None = None
    fill_value: float = 0.0
    data_format: str | None = "channels_last"

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(self, height_factor=_factor(t, "height_factor", self.height_factor, -1.0, 1.0, open_low=True))
        if self.width_factor is not None:
            _set(self, width_factor=_factor(t, "width_factor", self.width_factor, -1.0, 1.0, open_low=True))
        _fill(self)

    def matrices(self, key: jax.Array, batch: int, height: int, width: int) -> jax.Array:
        k1, k2 = jax.random.split(key)
        zy = jax.random.uniform(k1, (batch, 1), minval=1.0 + self.height_factor[0], maxval=1.0 + self.height_factor[1])
        zx = zy if self.width_factor is None else jax.random.uniform(
            k2, (batch, 1), minval=1.0 + self.width_factor[0], maxval=1.0 + self.width_factor[1])
        return zoom_matrices(zx, zy, height, width)


def zoom_matrices(zx: jax.Array, zy: jax.Array, height: int, width: int) -> jax.Array:
    """Keras's ``_get_zoom_matrix``: ``[zx, 0, (W-1)/2 (1-zx), 0, zy, (H-1)/2 (1-zy), 0, 0]``."""
    zeros = jnp.zeros_like(zx)
    x_offset = (width - 1.0) / 2.0 * (1.0 - zx)
    y_offset = (height - 1.0) / 2.0 * (1.0 - zy)
    return jnp.concatenate([zx, zeros, x_offset, zeros, zy, y_offset, zeros, zeros], axis=1)


@dataclasses.dataclass(frozen=True)
class RandomContrast(_Augmentation):
    """``RandomContrast(factor, value_range=(0, 255), seed=None)``: in training each image's pixels
    moved away from (or toward) its per-channel mean by a factor drawn in ``[1 - lower, 1 + upper]``,
    then clipped to ``value_range``; ``factor`` a number ``f`` in [0, 1] (``lower = 0, upper = f``,
    as Keras 3.15 reads it) or a pair."""

    factor: Any
    value_range: Any = (0, 255)
    seed: int | None = None
    data_format: str | None = "channels_last"

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(self, factor=_factor(t, "factor", self.factor, 0.0, 1.0, clamp_low=True),
             value_range=_value_range(t, self.value_range), seed=_seed(t, self.seed),
             data_format=_data_format(t, self.data_format))

    def factors(self, key: jax.Array, batch: int) -> jax.Array:
        return jax.random.uniform(key, (batch, 1, 1, 1), minval=1.0 - self.factor[0], maxval=1.0 + self.factor[1])

    def augment(self, key: jax.Array, x: jax.Array) -> jax.Array:
        return self.apply(x, self.factors(key, x.shape[0]))

    def apply(self, x: jax.Array, factors: jax.Array) -> jax.Array:
        mean = jnp.mean(jnp.mean(x, axis=1, keepdims=True), axis=2, keepdims=True)
        out = (x - mean) * factors.astype(x.dtype) + mean
        return jnp.clip(out, self.value_range[0], self.value_range[1])


@dataclasses.dataclass(frozen=True)
class RandomBrightness(_Augmentation):
    """``RandomBrightness(factor, value_range=(0, 255), seed=None)``: in training each image shifted
    by ``uniform(factor) * (value_range[1] - value_range[0])``, then clipped to ``value_range``;
    ``factor`` a number ``f`` (``[-f, f]``) or a pair, in [-1, 1]."""

    factor: Any
    value_range: Any = (0, 255)
    seed: int | None = None
    data_format: str | None = "channels_last"

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(self, factor=_factor(t, "factor", self.factor, -1.0, 1.0, clamp_low=True),
             value_range=_value_range(t, self.value_range), seed=_seed(t, self.seed),
             data_format=_data_format(t, self.data_format))

    def deltas(self, key: jax.Array, batch: int) -> jax.Array:
        low, high = self.value_range
        return jax.random.uniform(key, (batch, 1, 1, 1), minval=self.factor[0], maxval=self.factor[1]) * (high - low)

    def augment(self, key: jax.Array, x: jax.Array) -> jax.Array:
        return self.apply(x, self.deltas(key, x.shape[0]))

    def apply(self, x: jax.Array, deltas: jax.Array) -> jax.Array:
        return jnp.clip(x + deltas.astype(x.dtype), self.value_range[0], self.value_range[1])
