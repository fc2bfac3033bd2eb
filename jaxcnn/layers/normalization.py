"""Normalization layers: ``BatchNormalization``, ``LayerNormalization``, ``GroupNormalization``
(keras/src/layers/normalization/)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.errors import ImpossibleShapeError
from jaxcnn.layers.base import (Formula, Layer, ParamShapes, Shape, _axis_arg, _bool, _fail, _float, _fmt_shape,
                               _initializer, _is_int, _resolve_axes, _set)
from jaxcnn.layers.initializers import INITIALIZERS

__all__ = ['BatchNormalization', 'GroupNormalization', 'LayerNormalization']


@dataclasses.dataclass(frozen=True)
class BatchNormalization(Layer):
    """``BatchNormalization(axis=-1, momentum=0.99, epsilon=0.001, center=True, scale=True)`` over the
    last (channels) axis. Trainable ``scale`` (Keras's gamma) and ``bias`` (beta) in ``params``;
    non-trainable ``mean`` and ``var`` (moving mean and variance) in ``batch_stats``: 4 x channels
    parameters, 2 x channels of them non-trainable, as Keras counts."""

    axis: int = -1
    momentum: float = 0.99
    epsilon: float = 0.001
    center: bool = True
    scale: bool = True

    has_params: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        if self.axis != -1:
            raise _fail(t, "axis", self.axis, "is not supported: jaxcnn normalizes the last (channels) axis, axis=-1")
        epsilon = _float(t, "epsilon", self.epsilon, 0.0, math.inf)
        if epsilon <= 0:
            raise _fail(t, "epsilon", self.epsilon, "must be positive")
        _set(
            self,
            momentum=_float(t, "momentum", self.momentum, 0.0, 1.0),
            epsilon=epsilon,
            center=_bool(t, "center", self.center),
            scale=_bool(t, "scale", self.scale),
        )

    def param_shapes(self, input_shape: Shape) -> ParamShapes:
        c = (input_shape[-1],)
        params = {}
        if self.scale:
            params["scale"] = c
        if self.center:
            params["bias"] = c
        out: ParamShapes = {"batch_stats": {"mean": c, "var": c}}
        if params:
            out["params"] = params
        return out

    def formula(self, input_shape: Shape) -> Formula:
        c = input_shape[-1]
        k = int(self.scale) + int(self.center)
        trainable = f"{k}*{c} trainable (" + ", ".join(
            n for n, on in (("gamma", self.scale), ("beta", self.center)) if on) + ")"
        return Formula(
            output=f"output = input = {_fmt_shape(tuple(input_shape))}",
            params=f"{k + 2}*{c} = {(k + 2) * c:,}: {trainable if k else '0 trainable'}"
                   f" + 2*{c} non-trainable (moving mean, moving variance)",
        )

    uses_mask = True  # the training statistics are over the real examples of a padded batch

    def forward(self, module: Any, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """``x * inv + (beta - mean * inv)`` with ``inv = gamma * rsqrt(var + epsilon)``: Keras's own
        arithmetic (keras/src/backend/jax/nn.py, ``batch_normalization``), two full-size operations
        that XLA fuses with the next activation. In training the statistics are the batch's
        (:func:`_moments`), and the moving ones are updated as Keras updates them."""
        c = x.shape[-1]
        mean = module.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        var = module.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        if train and self.trainable:  # a frozen BatchNormalization runs in inference mode, as Keras 3
            m, v = _moments(x, mask)
            if not module.is_initializing():
                mean.value = self.momentum * mean.value + (1.0 - self.momentum) * m
                var.value = self.momentum * var.value + (1.0 - self.momentum) * v
        else:
            m, v = mean.value, var.value
        inv = lax.rsqrt(v + self.epsilon)
        if self.scale:
            inv = inv * module.param("scale", jax.nn.initializers.ones, (c,), jnp.float32)
        shift = -m * inv
        if self.center:
            shift = shift + module.param("bias", jax.nn.initializers.zeros, (c,), jnp.float32)
        return x * inv.astype(x.dtype) + shift.astype(x.dtype)


def _moments(x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """The per-channel mean and (biased) variance of ``x`` over every axis but the last, in float32,
    over the real examples only where ``mask`` (``(batch,)``, 0 for padding) is given.

    One pass: the sums of ``x`` and of ``x**2`` in one XLA reduction, ``var = E[x**2] - E[x]**2``
    (clamped at 0), as Flax's ``BatchNorm`` computes it by default (``use_fast_variance``). Keras's
    ``jnp.var`` takes a second pass over ``x``. One layer with a ReLU after it, forward and backward
    at batch 128 (experiments/bench_batchnorm.py): on 32x32x16 maps 4.4 ms, against 5.6 ms with the
    two-pass variance, 23.3 ms for the earlier ``(x - mean) * rsqrt(var) * gamma + beta`` (XLA fused
    it badly with the ReLU) and 6.8 ms for PyTorch's BatchNorm2d and ReLU; the gradients agree
    within 1e-6 with the earlier form's. In ResNet-20's training step this took BatchNormalization
    from 153 to 55 ms of 380 (experiments/profile_step.py). The
    difference from the two-pass variance is rounding, which grows where a channel's mean is large
    against its spread (a mean 1e3 times the standard deviation loses about 6 of float32's 7 digits
    of the variance)."""
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.float32)
    if mask is None:
        n = math.prod(x.shape[:-1])
        s1, s2 = jnp.sum(xf, axes), jnp.sum(xf * xf, axes)
    else:  # padding (mask 0) neither counts in nor shifts the batch's statistics
        w = mask.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        n = jnp.maximum(jnp.sum(w) * math.prod(x.shape[1:-1]), 1.0)
        xw = xf * w
        s1, s2 = jnp.sum(xw, axes), jnp.sum(xw * xf, axes)
    m = s1 / n
    return m, jnp.maximum(s2 / n - m * m, 0.0)


def _epsilon(layer: str, value: Any) -> float:
    epsilon = _float(layer, "epsilon", value, 0.0, math.inf)
    if epsilon <= 0:
        raise _fail(layer, "epsilon", value, "must be positive")
    return epsilon


@dataclasses.dataclass(frozen=True)
class _Affine(Layer):
    """The ``epsilon``, ``center``, ``scale`` and initializer arguments of Layer and Group
    normalization, and their trainable ``gamma`` (scale) and ``beta`` (offset). The fields are
    declared by each kind, in Keras's argument order (``epsilon``, ``center``, ``scale``,
    ``beta_initializer``, ``gamma_initializer``)."""

    has_params: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(self, epsilon=_epsilon(t, self.epsilon), center=_bool(t, "center", self.center),
             scale=_bool(t, "scale", self.scale),
             beta_initializer=_initializer(t, "beta_initializer", self.beta_initializer),
             gamma_initializer=_initializer(t, "gamma_initializer", self.gamma_initializer))

    def _weight_shape(self, input_shape: Shape) -> Shape:
        raise NotImplementedError

    def param_shapes(self, input_shape: Shape) -> ParamShapes:
        shape = self._weight_shape(input_shape)
        params = {name: shape for name, on in (("gamma", self.scale), ("beta", self.center)) if on}
        return {"params": params} if params else {}

    def formula(self, input_shape: Shape) -> Formula:
        shape = self._weight_shape(input_shape)
        names = [name for name, on in (("gamma", self.scale), ("beta", self.center)) if on]
        n = math.prod(shape)
        params = "0 (center and scale off)" if not names else (
            " + ".join(f"{name} {shape}" for name in names) + f" = {len(names)}*{n:,} = {len(names) * n:,}")
        return Formula(output=f"output = input = {_fmt_shape(tuple(input_shape))}", params=params)

    def output_shape(self, input_shape: Shape) -> Shape:
        self._weight_shape(input_shape)
        return tuple(input_shape)

    def _affine(self, module: Any, y: jax.Array, shape: Shape, broadcast: Shape) -> jax.Array:
        """``y * gamma + beta``, the weights of ``shape`` reshaped to ``broadcast``."""
        if self.scale:
            gamma = module.param("gamma", INITIALIZERS[self.gamma_initializer], shape, jnp.float32)
            y = y * gamma.reshape(broadcast)
        if self.center:
            beta = module.param("beta", INITIALIZERS[self.beta_initializer], shape, jnp.float32)
            y = y + beta.reshape(broadcast)
        return y


@dataclasses.dataclass(frozen=True)
class LayerNormalization(_Affine):
    """``LayerNormalization(axis=-1, epsilon=0.001, center=True, scale=True,
    beta_initializer="zeros", gamma_initializer="ones")``: each example normalized over ``axis``
    (an axis or a list of them; Keras's numbering, 0 is the batch axis), ``(x - mean) /
    sqrt(var + epsilon) * gamma + beta``, in float32; ``gamma`` and ``beta`` have the shape of the
    normalized axes, as Keras builds them."""

    axis: int | tuple[int, ...] = -1
    epsilon: float = 0.001
    center: bool = True
    scale: bool = True
    beta_initializer: str = "zeros"
    gamma_initializer: str = "ones"

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, axis=_axis_arg(self.type, "axis", self.axis))

    @property
    def mixes_positions(self) -> bool:  # type: ignore[override]
        """Statistics over more than the last axis mix positions (conservatively: any other axis)."""
        return self.axis != -1

    def _weight_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape[a - 1] for a in _resolve_axes(self, "axis", self.axis, input_shape))

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        axes = _resolve_axes(self, "axis", self.axis, tuple(x.shape[1:]))
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axes, keepdims=True)
        var = jnp.var(xf, axes, keepdims=True)
        y = (xf - mean) * lax.rsqrt(var + self.epsilon)
        broadcast = tuple(x.shape[a] if a in axes else 1 for a in range(1, x.ndim))
        return self._affine(module, y, self._weight_shape(tuple(x.shape[1:])), broadcast).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class GroupNormalization(_Affine):
    """``GroupNormalization(groups=32, axis=-1, epsilon=0.001, center=True, scale=True,
    beta_initializer="zeros", gamma_initializer="ones")``: the ``C`` channels of ``axis`` split in
    ``groups`` groups of ``C / groups``; each example normalized per group over the other axes and
    the group's channels, then ``* gamma + beta`` per channel (``gamma``, ``beta``: ``(C,)``).
    ``groups=-1`` is one group per channel (instance normalization); ``groups`` must divide ``C``
    (refused otherwise, as Keras refuses it)."""

    groups: int = 32
    axis: int = -1
    epsilon: float = 0.001
    center: bool = True
    scale: bool = True
    beta_initializer: str = "zeros"
    gamma_initializer: str = "ones"

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        if not _is_int(self.groups) or (self.groups < 1 and self.groups != -1):
            raise _fail(t, "groups", self.groups, "must be a positive integer, or -1 (instance normalization)")
        if not _is_int(self.axis):
            raise _fail(t, "axis", self.axis, "must be an integer axis")

    mixes_positions: ClassVar[bool] = True  # the statistics are over the whole image

    def _groups(self, input_shape: Shape) -> tuple[int, int]:
        """``(axis position in the batched array, groups)``, checked against the input."""
        (axis,) = _resolve_axes(self, "axis", self.axis, input_shape)
        channels = input_shape[axis - 1]
        groups = channels if self.groups == -1 else self.groups
        if groups > channels:
            raise ImpossibleShapeError(
                f"`groups` (={groups}) cannot be more than the {channels} channels of axis {self.axis} "
                "(Keras refuses it too)", layer_type=self.type)
        if channels % groups:
            raise ImpossibleShapeError(
                f"`groups` (={groups}) must divide the {channels} channels of axis {self.axis}: "
                f"{channels} / {groups} = {channels / groups:g} (Keras refuses it too)", layer_type=self.type)
        return axis, groups

    def _weight_shape(self, input_shape: Shape) -> Shape:
        axis, _ = self._groups(input_shape)
        return (input_shape[axis - 1],)

    def formula(self, input_shape: Shape) -> Formula:
        axis, groups = self._groups(input_shape)
        c = input_shape[axis - 1]
        base = super().formula(input_shape)
        return Formula(output=f"{base.output}; {groups} groups of {c} / {groups} = {c // groups} channels",
                       params=base.params)

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        axis, groups = self._groups(tuple(x.shape[1:]))
        c = x.shape[axis]
        split = (*x.shape[:axis], groups, c // groups, *x.shape[axis + 1:])
        xg = x.astype(jnp.float32).reshape(split)
        reduce = tuple(a for a in range(1, xg.ndim) if a != axis)  # all but the batch and the group
        mean = jnp.mean(xg, reduce, keepdims=True)
        var = jnp.var(xg, reduce, keepdims=True)
        y = ((xg - mean) * lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        broadcast = tuple(c if a == axis else 1 for a in range(1, x.ndim))
        return self._affine(module, y, (c,), broadcast).astype(x.dtype)
