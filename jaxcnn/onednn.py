# TEMPORARY STAND-IN, replaced by the kernel branch
"""oneDNN convolutions and pooling through XLA's FFI: TEMPORARY STAND-IN with pure ``lax`` calls.

This file only implements the contract of the kernel branch's ``jaxcnn/onednn.py`` (issue 13) so
that the integration (:mod:`jaxcnn.lowerings`, the layers' call sites, ``jaxcnn info``) can be
written and tested before the extension lands. It computes every function with ``lax`` and calls
itself available only where ``JAXCNN_FAKE_ONEDNN=1``. The lead takes the kernel branch's file when
merging; nothing else refers to this one's internals.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.errors import JaxcnnError

__all__ = ["available", "avg_pool", "conv", "conv_transpose", "info", "max_pool", "unavailable_reason"]

FAKE_ENV = "JAXCNN_FAKE_ONEDNN"
_DIMS = ("NHWC", "HWIO", "NHWC")
Pads = tuple[tuple[int, int], tuple[int, int]]


def available() -> bool:
    """Whether the (stand-in) extension may be used: ``JAXCNN_FAKE_ONEDNN=1``."""
    return os.environ.get(FAKE_ENV, "") not in ("", "0")


def unavailable_reason() -> str | None:
    """One line saying why oneDNN is not available; ``None`` when it is."""
    if available():
        return None
    return f"the oneDNN extension is a stand-in here (set {FAKE_ENV}=1 to use its lax version)"


def info() -> dict[str, Any]:
    """``{"available", "reason", "onednn_version", "isa", "bfloat16"}`` as the real module reports them."""
    on = available()
    return {"available": on, "reason": unavailable_reason(), "onednn_version": "stand-in" if on else None,
            "isa": "lax" if on else None, "bfloat16": False}


def _require() -> None:
    if not available():
        raise JaxcnnError(f"oneDNN is not available: {unavailable_reason()}")


def _cast(x: jax.Array, kernel: jax.Array, compute_dtype: Any) -> tuple[jax.Array, jax.Array]:
    dtype = x.dtype if compute_dtype is None else compute_dtype
    return x.astype(dtype), kernel.astype(dtype)


def conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, *, strides: tuple[int, int],
         padding: Pads, dilation: tuple[int, int] = (1, 1), groups: int = 1, activation: str | None = None,
         compute_dtype: Any = None) -> jax.Array:
    """``(N, H, W, C)`` and ``(KH, KW, C // groups, F)`` to ``(N, H_out, W_out, F)``, + bias, then ReLU."""
    _require()
    xc, kc = _cast(x, kernel, compute_dtype)
    y = lax.conv_general_dilated(xc, kc, strides, padding, rhs_dilation=dilation, dimension_numbers=_DIMS,
                                 feature_group_count=groups, preferred_element_type=x.dtype)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return jax.nn.relu(y) if activation == "relu" else y


def conv_transpose(x: jax.Array, kernel: jax.Array, *, strides: tuple[int, int], padding: Pads,
                   dilation: tuple[int, int] = (1, 1), compute_dtype: Any = None) -> jax.Array:
    """``lax.conv_transpose(..., transpose_kernel=True)`` with explicit pads; kernel ``(KH, KW, F, C)``."""
    _require()
    xc, kc = _cast(x, kernel, compute_dtype)
    return lax.conv_transpose(xc, kc, strides, padding, rhs_dilation=dilation, dimension_numbers=_DIMS,
                              transpose_kernel=True, preferred_element_type=x.dtype)


def max_pool(x: jax.Array, *, pool: tuple[int, int], strides: tuple[int, int], padding: Pads) -> jax.Array:
    """Window maxima of ``(N, H, W, C)``, pads of ``-inf``."""
    _require()
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *pool, 1), (1, *strides, 1), ((0, 0), *padding, (0, 0)))


def avg_pool(x: jax.Array, *, pool: tuple[int, int], strides: tuple[int, int], padding: Pads) -> jax.Array:
    """Window means of ``(N, H, W, C)`` over each window's in-bounds elements (padding excluded)."""
    _require()
    pads = ((0, 0), *padding, (0, 0))
    total = lax.reduce_window(x, 0.0, lax.add, (1, *pool, 1), (1, *strides, 1), pads)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    return total / lax.reduce_window(ones, 0.0, lax.add, (1, *pool, 1), (1, *strides, 1), pads)
