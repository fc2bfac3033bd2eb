"""Normalization layers: ``BatchNormalization``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.layers.base import Formula, Layer, ParamShapes, Shape, _bool, _fail, _float, _fmt_shape, _set

__all__ = ['BatchNormalization']


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
        c = x.shape[-1]
        mean = module.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        var = module.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        if train and self.trainable:  # a frozen BatchNormalization runs in inference mode, as Keras 3
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            if mask is None:
                m, v = jnp.mean(xf, axes), jnp.var(xf, axes)
            else:  # padding (mask 0) neither counts in nor shifts the batch's mean and variance
                w = mask.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
                n = jnp.maximum(jnp.sum(w) * math.prod(x.shape[1:-1]), 1.0)
                m = jnp.sum(xf * w, axes) / n
                v = jnp.sum(jnp.square(xf - m) * w, axes) / n
            if not module.is_initializing():
                mean.value = self.momentum * mean.value + (1.0 - self.momentum) * m
                var.value = self.momentum * var.value + (1.0 - self.momentum) * v
        else:
            m, v = mean.value, var.value
        y = (x - m.astype(x.dtype)) * lax.rsqrt(v + self.epsilon).astype(x.dtype)
        if self.scale:
            y = y * module.param("scale", jax.nn.initializers.ones, (c,), jnp.float32).astype(x.dtype)
        if self.center:
            y = y + module.param("bias", jax.nn.initializers.zeros, (c,), jnp.float32).astype(x.dtype)
        return y
