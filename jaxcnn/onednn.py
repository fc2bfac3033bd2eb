"""oneDNN convolutions and pooling on x86-64 Linux CPUs, called from jitted JAX through XLA's FFI.

The kernels are C++ (``csrc/``) built at ``pip install`` into ``jaxcnn/_onednn_ffi*.so`` against the
``onednn-cpu-gomp`` wheel's ``libdnnl.so.3``. Nothing here runs at import: the first call of
:func:`available` (or of a kernel) preloads oneDNN by absolute path, loads the extension with ctypes
and registers its FFI targets for the CPU platform. Anything missing (not x86-64 Linux, the extension
not built, oneDNN not installed) leaves :func:`available` False with a one-line
:func:`unavailable_reason`; every kernel then raises :class:`~jaxcnn.errors.UnsupportedError`.

Arrays are NHWC float32 and kernels HWIO float32, as ``lax.conv_general_dilated`` with
``dimension_numbers=("NHWC", "HWIO", "NHWC")``. Gradients are ``jax.custom_vjp`` rules calling
oneDNN's backward primitives. Max pooling's gradient goes, for each window, to the one element
oneDNN's workspace recorded as its maximum: with ties, the first in row-major window order (the
top-most, then left-most), the same element ``lax.reduce_window``'s gradient picks.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import platform
import sys
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import ImpossibleShapeError, LayerArgumentError, UnsupportedError

__all__ = ["available", "unavailable_reason", "info", "conv", "conv_transpose", "max_pool", "avg_pool"]

Pads = tuple[tuple[int, int], tuple[int, int]]

_RUNTIME_WHEEL = "onednn-cpu-gomp"
_LIBRARY = "libdnnl.so.3"
_TARGETS = ("conv_fwd", "conv_bwd_data", "conv_bwd_weights",
            "max_pool_fwd", "max_pool_bwd", "avg_pool_fwd", "avg_pool_bwd")
# Per convolution handler: weights in the layout oneDNN picks (format_tag::any, reordered from HWIO on
# each call) rather than HWIO as given. With HWIO the backward primitives fall back to kernels 5-30x
# slower (experiments/bench_onednn_kernels.py), and the forward runs a brgconv that is 2-3x slower on
# small maps (64x4x4x512 to 512: 37 against 22 ms a call through the FFI; 64x2x2x512: 13.5 against 9.8;
# a depthwise 3x3 runs as a generic grouped convolution, 3-15 ms against 0.12-0.20) and no faster
# elsewhere (128x32x32x16: 5.4 against 3.1 ms), while the reorder of a 3x3x512x512 kernel takes 0.4 ms.
# Except an ungrouped forward of a small batch (at most _HWIO_FORWARD_MAX_BATCH images): there the reorder,
# one more oneDNN call a convolution, costs more than its faster kernel saves (batch-1 inference of the
# seed CIFAR CNN 0.51-0.53 ms with HWIO against 0.70-1.14 ms, VGG-11/32 5.6-6.7 against 6.7-6.8 ms, in
# three alternating runs). bfloat16 always takes oneDNN's layout, the weights being converted anyway.
_BLOCKED_WEIGHTS = {"conv_fwd": True, "conv_bwd_data": True, "conv_bwd_weights": True}
_HWIO_FORWARD_MAX_BATCH = 8  # lowerings.SMALL_BATCH
# bfloat16 weight gradients only from this many input channels per group: below it oneDNN's bfloat16
# backward weights (jit_bf16, not brgemm) was no faster than float32 (3 channels: 20-37 against 15-19 ms
# at 128x32x32) and, on the loaded shared machine, stalled for up to 2 s in some calls.
_BF16_WEIGHT_GRAD_MIN_CHANNELS = 16


class _Loaded(NamedTuple):
    lib: ctypes.CDLL
    version: str
    isa: str
    bfloat16: bool


# ---- loading -------------------------------------------------------------------------------------

def _extension_path() -> Path | None:
    """The built extension next to this module: a wheel installs it there, and an editable install
    builds it in place (setuptools' strict editable mode links it into the same folder)."""
    found = sorted(Path(__file__).parent.glob("_onednn_ffi*.so"))
    return found[0] if found else None


def _onednn_library() -> Path:
    """``<prefix>/lib/libdnnl.so.3`` of the installed ``onednn-cpu-gomp`` wheel."""
    dist = importlib.metadata.distribution(_RUNTIME_WHEEL)
    for file in dist.files or ():
        if file.name == _LIBRARY:
            return Path(str(dist.locate_file(file))).resolve()
    raise FileNotFoundError(f"the {_RUNTIME_WHEEL} wheel has no {_LIBRARY}")


def _load_library() -> ctypes.CDLL:
    """oneDNN preloaded globally by absolute path, then the extension that links to it."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise OSError(f"oneDNN kernels are built for x86-64 Linux only, not {sys.platform} {platform.machine()}")
    extension = _extension_path()
    if extension is None:
        raise OSError("the oneDNN extension was not built when jaxcnn was installed "
                      "(reinstall on x86-64 Linux with g++ available: pip install -e .)")
    try:
        library = _onednn_library()
    except importlib.metadata.PackageNotFoundError:
        raise OSError(f"the {_RUNTIME_WHEEL} wheel is not installed (pip install {_RUNTIME_WHEEL}==2023.2.0)") from None
    ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(str(extension))


def _register(lib: ctypes.CDLL) -> None:
    for name in _TARGETS:
        symbol = f"jaxcnn_onednn_{name}"
        jax.ffi.register_ffi_target(symbol, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")


@functools.cache
def _load() -> _Loaded | str:
    """The loaded, registered extension, or the one-line reason it is not available."""
    try:
        lib = _load_library()
        _register(lib)
        lib.jaxcnn_onednn_isa.restype = ctypes.c_char_p
        lib.jaxcnn_onednn_max_pool_workspace_bytes.restype = ctypes.c_int64
        lib.jaxcnn_onednn_max_pool_workspace_bytes.argtypes = [ctypes.POINTER(ctypes.c_int64)]
        v = lib.jaxcnn_onednn_version()
        return _Loaded(lib, f"{v // 10000}.{v // 100 % 100}.{v % 100}", lib.jaxcnn_onednn_isa().decode(),
                       bool(lib.jaxcnn_onednn_has_bf16()))
    except Exception as e:  # noqa: BLE001 - whatever fails, jaxcnn works without the extension
        return " ".join(str(e).split()) or type(e).__name__


def available() -> bool:
    """Whether the extension built, loaded and registered its FFI targets (x86-64 Linux only)."""
    return isinstance(_load(), _Loaded)


def unavailable_reason() -> str | None:
    """Why the oneDNN kernels are not available, on one line; None when they are."""
    loaded = _load()
    return None if isinstance(loaded, _Loaded) else loaded


def info() -> dict[str, Any]:
    """``{"available", "reason", "onednn_version" ("3.2.0"), "isa" ("avx512_core_bf16"), "bfloat16"}``;
    ``bfloat16`` is whether the CPU has oneDNN's native bfloat16 kernels."""
    loaded = _load()
    if not isinstance(loaded, _Loaded):
        return {"available": False, "reason": loaded, "onednn_version": None, "isa": None, "bfloat16": False}
    return {"available": True, "reason": None, "onednn_version": loaded.version, "isa": loaded.isa,
            "bfloat16": loaded.bfloat16}


def _require() -> _Loaded:
    loaded = _load()
    if not isinstance(loaded, _Loaded):
        raise UnsupportedError(f"the oneDNN kernels are not available: {loaded}")
    return loaded


# ---- argument checks -----------------------------------------------------------------------------

def _pair(name: str, value: Any, minimum: int) -> tuple[int, int]:
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum for v in value)):
        raise LayerArgumentError(f"`{name}` (={value!r}) must be a pair of integers >= {minimum}")
    return int(value[0]), int(value[1])


def _pads(value: Any) -> Pads:
    def is_pair(v: Any) -> bool:
        return isinstance(v, (tuple, list)) and len(v) == 2 and all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in v)
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(is_pair(v) for v in value):
        raise LayerArgumentError(f"`padding` (={value!r}) must be ((top, bottom), (left, right)) integers")
    (t, b), (l, r) = value
    return (int(t), int(b)), (int(l), int(r))


def _float32(name: str, array: Any, rank: int) -> jax.Array:
    if getattr(array, "dtype", None) != jnp.float32:
        raise LayerArgumentError(f"`{name}` must be float32 for the oneDNN kernels, "
                                 f"got {getattr(array, 'dtype', type(array).__name__)}")
    if array.ndim != rank:
        raise ImpossibleShapeError(f"`{name}` must be {rank}-D, got shape {tuple(array.shape)}")
    return array


def _bf16(compute_dtype: Any) -> bool:
    if compute_dtype is None or jnp.dtype(compute_dtype) == jnp.float32:
        return False
    if jnp.dtype(compute_dtype) == jnp.bfloat16:
        return True
    raise LayerArgumentError(f"`compute_dtype` (={compute_dtype!r}) must be None, float32 or bfloat16")


def _out(size: int, window: int, stride: int, lo: int, hi: int) -> int:
    return (size + lo + hi - window) // stride + 1


# ---- convolution ---------------------------------------------------------------------------------

class _Conv(NamedTuple):
    """A convolution's static settings, as the FFI attributes want them."""

    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right; none negative
    dilation: tuple[int, int]
    groups: int
    bf16: bool

    def attrs(self, target: str, batch: Any) -> dict[str, Any]:
        """The FFI attributes of handler ``jaxcnn_onednn_<target>`` for ``batch`` images."""
        return {"strides": np.array(self.strides, np.int64), "padding": np.array(self.padding, np.int64),
                "dilation": np.array(self.dilation, np.int64), "groups": self.groups, "bf16": self.bf16,
                "blocked": self.blocked(target, batch)}

    def blocked(self, target: str, batch: Any) -> bool:
        """Whether the weights go to oneDNN's own layout (see :data:`_BLOCKED_WEIGHTS`)."""
        if self.bf16 or self.groups > 1:
            return True
        if target == "conv_fwd" and isinstance(batch, int) and batch <= _HWIO_FORWARD_MAX_BATCH:
            return False
        return _BLOCKED_WEIGHTS[target]

    def out_shape(self, x: tuple[int, ...], kernel: tuple[int, ...]) -> tuple[int, int, int, int]:
        (kh, kw), (dh, dw) = kernel[:2], self.dilation
        t, b, l, r = self.padding
        return (x[0], _out(x[1], (kh - 1) * dh + 1, self.strides[0], t, b),
                _out(x[2], (kw - 1) * dw + 1, self.strides[1], l, r), kernel[3])


def _fwd_call(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, cfg: _Conv, relu: bool) -> jax.Array:
    """(N, H, W, C) x (KH, KW, C/G, F) -> (N, OH, OW, F), plus bias, then ReLU."""
    out = jax.ShapeDtypeStruct(cfg.out_shape(x.shape, kernel.shape), jnp.float32)
    b = jnp.zeros((0,), jnp.float32) if bias is None else bias
    return jax.ffi.ffi_call("jaxcnn_onednn_conv_fwd", out)(x, kernel, b, bias=bias is not None, relu=relu,
                                                           **cfg.attrs("conv_fwd", x.shape[0]))


def _bwd_data_call(dy: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], cfg: _Conv) -> jax.Array:
    """dy (N, OH, OW, F) and the kernel -> dx of shape ``x_shape`` (N, H, W, C)."""
    out = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    return jax.ffi.ffi_call("jaxcnn_onednn_conv_bwd_data", out)(dy, kernel, **cfg.attrs("conv_bwd_data", dy.shape[0]))


def _bwd_weights_call(x: jax.Array, dy: jax.Array, k_shape: tuple[int, ...], bias: bool,
                      cfg: _Conv) -> tuple[jax.Array, jax.Array]:
    """x and dy -> the kernel's gradient (``k_shape``) and the bias's ((F,), or (0,) without bias)."""
    outs = (jax.ShapeDtypeStruct(k_shape, jnp.float32),
            jax.ShapeDtypeStruct((k_shape[3] if bias else 0,), jnp.float32))
    cfg = cfg._replace(bf16=cfg.bf16 and k_shape[2] >= _BF16_WEIGHT_GRAD_MIN_CHANNELS)
    return jax.ffi.ffi_call("jaxcnn_onednn_conv_bwd_weights", outs)(x, dy, bias=bias,
                                                                    **cfg.attrs("conv_bwd_weights", x.shape[0]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, cfg: _Conv, relu: bool) -> jax.Array:
    return _fwd_call(x, kernel, bias, cfg, relu)


def _conv_fwd(x, kernel, bias, cfg, relu):
    y = _fwd_call(x, kernel, bias, cfg, relu)
    return y, (x, kernel, y if relu else None, bias)


def _conv_bwd(cfg, relu, res, dy):
    x, kernel, y, bias = res
    has_bias = bias is not None
    if relu:  # the mask of the same forward values the caller saw: ReLU's output > 0
        dy = jnp.where(y > 0, dy, jnp.zeros_like(dy))
    dx = _bwd_data_call(dy, kernel, x.shape, cfg)
    dk, db = _bwd_weights_call(x, dy, kernel.shape, has_bias, cfg)
    return dx, dk, db if has_bias else None


_conv.defvjp(_conv_fwd, _conv_bwd)


def _crop_negative(x: jax.Array, pads: Pads) -> tuple[jax.Array, tuple[int, int, int, int]]:
    """A negative pad drops that many rows or columns of x; the rest stay as pads."""
    (t, b), (l, r) = pads
    h, w = x.shape[1], x.shape[2]
    x = x[:, max(0, -t):h - max(0, -b), max(0, -l):w - max(0, -r), :]
    return x, (max(t, 0), max(b, 0), max(l, 0), max(r, 0))


def conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, *, strides: tuple[int, int],
         padding: Pads, dilation: tuple[int, int] = (1, 1), groups: int = 1, activation: str | None = None,
         compute_dtype: Any = None) -> jax.Array:
    """oneDNN's convolution: x (N, H, W, C) float32, kernel (KH, KW, C/groups, F), bias (F,) or None ->
    (N, OH, OW, F), equal to ``lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation,
    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)`` plus bias, then ReLU when
    ``activation="relu"`` (fused into the convolution). ``compute_dtype=jnp.bfloat16`` runs oneDNN's
    bfloat16 kernels (float32 accumulation and output). Differentiable in x, kernel and bias."""
    _require()
    x, kernel = _float32("x", x, 4), _float32("kernel", kernel, 4)
    if bias is not None:
        bias = _float32("bias", bias, 1)
    if activation not in (None, "relu"):
        raise LayerArgumentError(f"`activation` (={activation!r}) must be None or 'relu' for the oneDNN kernels")
    if not isinstance(groups, int) or groups < 1 or x.shape[3] != kernel.shape[2] * groups \
            or kernel.shape[3] % groups:
        raise ImpossibleShapeError(f"x {tuple(x.shape)} and kernel {tuple(kernel.shape)} do not make a "
                                   f"convolution with groups={groups}: the kernel must be (KH, KW, C/groups, F), "
                                   f"F divisible by groups")
    if bias is not None and bias.shape != (kernel.shape[3],):
        raise ImpossibleShapeError(f"bias {tuple(bias.shape)} must be ({kernel.shape[3]},) "
                                   f"for kernel {tuple(kernel.shape)}")
    x, pads = _crop_negative(x, _pads(padding))
    cfg = _Conv(_pair("strides", strides, 1), pads, _pair("dilation", dilation, 1), groups, _bf16(compute_dtype))
    if min(cfg.out_shape(x.shape, kernel.shape)[1:3]) < 1:
        raise ImpossibleShapeError(f"the window of kernel {tuple(kernel.shape)} (dilation {cfg.dilation}) does not fit "
                                   f"x {tuple(x.shape)} padded by {padding}")
    return _conv(x, kernel, bias, cfg, activation == "relu")


# ---- transposed convolution ----------------------------------------------------------------------
# conv_transpose(x, k) is the gradient with respect to its input of the convolution (y -> x) with the
# same kernel, whose padding is (window - 1 - pad) per side: oneDNN's backward data computes it, and
# its own gradients are that convolution's forward (for x) and backward weights (for the kernel).

@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _transpose(x: jax.Array, kernel: jax.Array, cfg: _Conv, y_shape: tuple[int, ...]) -> jax.Array:
    return _bwd_data_call(x, kernel, y_shape, cfg)


def _transpose_fwd(x, kernel, cfg, y_shape):
    return _bwd_data_call(x, kernel, y_shape, cfg), (x, kernel)


def _transpose_bwd(cfg, y_shape, res, dy):
    x, kernel = res
    dx = _fwd_call(dy, kernel, None, cfg, False)
    dk, _ = _bwd_weights_call(dy, x, kernel.shape, False, cfg)
    return dx, dk


_transpose.defvjp(_transpose_fwd, _transpose_bwd)


def conv_transpose(x: jax.Array, kernel: jax.Array, *, strides: tuple[int, int], padding: Pads,
                   dilation: tuple[int, int] = (1, 1), compute_dtype: Any = None) -> jax.Array:
    """oneDNN's transposed convolution: x (N, H, W, C), kernel (KH, KW, F, C) -> (N, OH, OW, F), equal to
    ``lax.conv_transpose(x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=("NHWC",
    "HWIO", "NHWC"), transpose_kernel=True)`` with explicit pads (as Keras's Conv2DTranspose).
    Differentiable in x and kernel."""
    _require()
    x, kernel = _float32("x", x, 4), _float32("kernel", kernel, 4)
    if kernel.shape[3] != x.shape[3]:
        raise ImpossibleShapeError(f"kernel {tuple(kernel.shape)} must be (KH, KW, filters, {x.shape[3]}) "
                                   f"for x {tuple(x.shape)}")
    (t, b), (l, r) = _pads(padding)
    s, d = _pair("strides", strides, 1), _pair("dilation", dilation, 1)
    window = [(k - 1) * dd + 1 for k, dd in zip(kernel.shape[:2], d)]
    out = [(n - 1) * ss + 1 + lo + hi - wk + 1 for n, ss, lo, hi, wk in zip(x.shape[1:3], s, (t, l), (b, r), window)]
    if min(out) < 1:
        raise ImpossibleShapeError(f"x {tuple(x.shape)} with kernel {tuple(kernel.shape)}, strides {s} and "
                                   f"padding {padding} gives an empty output")
    # The convolution (y -> x) pads window - 1 - pad per side; a negative one there means the rows of y
    # beyond it receive nothing, so they are zeros padded on afterwards.
    fwd = [wk - 1 - p for wk, p in zip((window[0], window[0], window[1], window[1]), (t, b, l, r))]
    extra = [max(0, -p) for p in fwd]
    inner = (x.shape[0], out[0] - extra[0] - extra[1], out[1] - extra[2] - extra[3], kernel.shape[2])
    cfg = _Conv(s, tuple(max(0, p) for p in fwd), d, 1, _bf16(compute_dtype))
    y = _transpose(x, kernel, cfg, inner)
    if any(extra):
        y = jnp.pad(y, ((0, 0), (extra[0], extra[1]), (extra[2], extra[3]), (0, 0)))
    return y


# ---- pooling -------------------------------------------------------------------------------------

class _Pool(NamedTuple):
    x_shape: tuple[int, int, int, int]
    window: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]

    def attrs(self) -> dict[str, Any]:
        return {"window": np.array(self.window, np.int64), "strides": np.array(self.strides, np.int64),
                "padding": np.array(self.padding, np.int64)}

    def out_shape(self) -> tuple[int, int, int, int]:
        x, (t, b, l, r) = self.x_shape, self.padding
        return (x[0], _out(x[1], self.window[0], self.strides[0], t, b),
                _out(x[2], self.window[1], self.strides[1], l, r), x[3])


def _pool_config(x: jax.Array, pool: Any, strides: Any, padding: Any) -> _Pool:
    _float32("x", x, 4)
    window, s = _pair("pool", pool, 1), _pair("strides", strides, 1)
    (t, b), (l, r) = _pads(padding)
    if min(t, b, l, r) < 0 or max(t, b) >= window[0] or max(l, r) >= window[1]:
        raise LayerArgumentError(f"`padding` (={padding!r}) must be non-negative and smaller than the pool {window}")
    cfg = _Pool(tuple(x.shape), window, s, (t, b, l, r))
    if min(cfg.out_shape()[1:3]) < 1:
        raise ImpossibleShapeError(f"pool {window} does not fit x {tuple(x.shape)} padded by {padding}")
    return cfg


def _max_fwd_call(x: jax.Array, cfg: _Pool) -> tuple[jax.Array, jax.Array]:
    y_shape = cfg.out_shape()
    geometry = (ctypes.c_int64 * 14)(*cfg.x_shape, *y_shape[1:3], *cfg.window, *cfg.strides, *cfg.padding)
    size = _require().lib.jaxcnn_onednn_max_pool_workspace_bytes(geometry)
    if size < 0:
        raise ImpossibleShapeError(f"oneDNN refuses max pooling of x {tuple(x.shape)} with {cfg}")
    outs = (jax.ShapeDtypeStruct(y_shape, jnp.float32), jax.ShapeDtypeStruct((size,), jnp.uint8))
    return jax.ffi.ffi_call("jaxcnn_onednn_max_pool_fwd", outs)(x, **cfg.attrs())


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x: jax.Array, cfg: _Pool) -> jax.Array:
    return _max_fwd_call(x, cfg)[0]


def _max_pool_fwd(x, cfg):
    y, workspace = _max_fwd_call(x, cfg)
    return y, workspace


def _max_pool_bwd(cfg, workspace, dy):
    out = jax.ShapeDtypeStruct(cfg.x_shape, jnp.float32)
    return (jax.ffi.ffi_call("jaxcnn_onednn_max_pool_bwd", out)(dy, workspace, **cfg.attrs()),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, *, pool: tuple[int, int], strides: tuple[int, int], padding: Pads) -> jax.Array:
    """oneDNN's max pooling: x (N, H, W, C) float32 -> (N, OH, OW, C), equal to ``lax.reduce_window(x, -inf,
    lax.max, ...)`` with padding ((top, bottom), (left, right)). The gradient of each window goes to the
    element oneDNN recorded as its maximum (with ties, the first in row-major window order)."""
    _require()
    return _max_pool(x, _pool_config(x, pool, strides, padding))


def _avg_fwd_call(x: jax.Array, cfg: _Pool) -> jax.Array:
    out = jax.ShapeDtypeStruct(cfg.out_shape(), jnp.float32)
    return jax.ffi.ffi_call("jaxcnn_onednn_avg_pool_fwd", out)(x, **cfg.attrs())


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _avg_pool(x: jax.Array, cfg: _Pool) -> jax.Array:
    return _avg_fwd_call(x, cfg)


def _avg_pool_fwd(x, cfg):
    return _avg_fwd_call(x, cfg), None


def _avg_pool_bwd(cfg, _, dy):
    out = jax.ShapeDtypeStruct(cfg.x_shape, jnp.float32)
    return (jax.ffi.ffi_call("jaxcnn_onednn_avg_pool_bwd", out)(dy, **cfg.attrs()),)


_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def avg_pool(x: jax.Array, *, pool: tuple[int, int], strides: tuple[int, int], padding: Pads) -> jax.Array:
    """oneDNN's average pooling: x (N, H, W, C) float32 -> (N, OH, OW, C), each output the mean of its
    window's in-bounds elements (padding excluded, as Keras's "same" average). Differentiable."""
    _require()
    return _avg_pool(x, _pool_config(x, pool, strides, padding))
