"""Convolution layers: ``Conv2D`` (with ``groups``), ``DepthwiseConv2D``, ``SeparableConv2D`` and
``Conv2DTranspose``, with Keras 3's arguments, defaults, weight layouts and values.

Every kind takes Keras's weight arguments: ``*_initializer`` (a name, a table or Keras's JSON
form: :mod:`jaxcnn.layers.initializers`), ``*_regularizer`` and ``activity_regularizer``,
``*_constraint`` (:mod:`jaxcnn.layers.weights`), ``trainable``, and ``data_format``
(``"channels_last"`` only). ``strides > 1`` together with ``dilation_rate > 1`` is refused, as
Keras refuses it for convolutions.

jaxcnn's ``lowering`` field picks the XLA program (:mod:`jaxcnn.lowerings`): ``"auto"`` (the
measured rule), ``"conv"`` (``lax``), ``"patches"`` (Conv2D without groups only) or ``"onednn"``
(:mod:`jaxcnn.onednn`'s custom calls, where the module may use them; elsewhere the automatic choice).
With ``"onednn"`` the bias and a ReLU activation run inside oneDNN's convolution (post-ops).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import lowerings
from jaxcnn.errors import ImpossibleShapeError, LayerArgumentError
from jaxcnn.layers.base import (
    _CANONICAL_DEFAULTS,
    Formula,
    ParamShapes,
    Shape,
    _choice,
    _data_format,
    _fail,
    _finish,
    _is_int,
    _padding,
    _pair,
    _positive_int,
    _require_rank,
    _set,
    _weights,
    _Windowed,
)
from jaxcnn.layers.initializers import initializer_fn

__all__ = ["Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D"]

_DIMS = ("NHWC", "HWIO", "NHWC")
_WEIGHT_ARGS = {"kernel": "kernel", "bias": "bias"}


def _refuse_strided_dilation(layer: _Windowed) -> None:
    if max(layer.strides) > 1 and max(layer.dilation_rate) > 1:  # Keras 3's BaseConv refuses it too
        raise LayerArgumentError(
            f"`strides` (={layer.strides}) and `dilation_rate` (={layer.dilation_rate}) cannot both "
            "exceed 1: Keras refuses `strides > 1` in conjunction with `dilation_rate > 1` too",
            layer_type=layer.type)


def _bias_param(layer: Any, module: Any, size: int) -> jax.Array | None:
    """The layer's bias ``(size,)`` (float32), or ``None`` without ``use_bias``."""
    if not layer.use_bias:
        return None
    return module.param("bias", initializer_fn(layer.bias_initializer), (size,), jnp.float32)


def _bias(layer: Any, module: Any, y: jax.Array, size: int) -> jax.Array:
    bias = _bias_param(layer, module, size)
    return y if bias is None else y + bias.astype(y.dtype)


def _bfloat16(module: Any, groups: int, batch: int) -> bool:
    """Whether a oneDNN convolution of ``groups`` groups over ``batch`` images runs in oneDNN's
    bfloat16 kernels (:attr:`~jaxcnn.lowerings.LoweringContext.bfloat16_convolutions`). Not a grouped
    one: a stride-2 depthwise 3x3's backward took 34-48 ms in bfloat16 against about 1 ms in float32
    (the MobileNetV2-style net at batch 128, experiments/profile_step.py --precision bfloat16), and a
    depthwise convolution has too few multiplications per byte to gain from bfloat16 anyway. Not a
    small batch (at most ``lowerings.SMALL_BATCH`` images): converting the float32 weights into
    oneDNN's bfloat16 layout at every call costs more than the bfloat16 kernel saves there (batch-1
    inference of VGG-11/32 took 9.3 ms against 5.5 in float32, experiments/bench_cpu.py 2026-12-06)."""
    return (module.lowering.bfloat16_convolutions and groups == 1
            and not (isinstance(batch, int) and batch <= lowerings.SMALL_BATCH))


def _onednn(layer: Any, module: Any, x: jax.Array, kernel: jax.Array, size: int, groups: int) -> jax.Array:
    """``layer``'s convolution of ``x`` with the float32 ``kernel`` in oneDNN, its bias (``(size,)``)
    and a ReLU activation fused, the rest of the activation and the regularizer applied after."""
    fused = layer.activation == "relu"
    y = lowerings.onednn_conv(x, kernel, _bias_param(layer, module, size), strides=layer.strides,
                              padding=layer.padding, dilation=layer.dilation_rate, groups=groups,
                              activation="relu" if fused else None, bfloat16=_bfloat16(module, groups, x.shape[0]))
    return _finish(layer, module, y, activated=fused)


def _unpatched_lowering(layer: Any, context: lowerings.LoweringContext) -> str:
    """``"conv"`` or ``"onednn"`` for a layer without a patches program, its field and ``context``."""
    return lowerings.forced_lowering(layer.lowering, context) or lowerings.choose_unpatched(context)


def _describe_unpatched(layer: Any, context: lowerings.LoweringContext | None) -> str:
    if layer.lowering != "auto":
        return lowerings.display_name(layer.lowering)
    return lowerings.describe_unpatched(context)


class _Unpatched:
    """The lowering of a convolution without a patches program (depthwise, separable, transposed):
    ``"conv"`` or ``"onednn"``, from its ``lowering`` field and the context alone."""

    def lowering_for(self, input_shape: Shape, context: lowerings.LoweringContext, batch: Any = None,
                     train: bool = False) -> str:
        del input_shape, batch, train
        return _unpatched_lowering(self, context)

    def describe_lowering(self, input_shape: Shape, context: lowerings.LoweringContext | None = None) -> str:
        del input_shape
        return _describe_unpatched(self, context)


class _Depthwise:
    """The lowering of a depthwise convolution (DepthwiseConv2D, SeparableConv2D's first stage):
    ``"conv"``, ``"shifted"`` or ``"onednn"`` (:func:`jaxcnn.lowerings.choose_depthwise`)."""

    def lowering_for(self, input_shape: Shape, context: lowerings.LoweringContext, batch: Any = None,
                     train: bool = False) -> str:
        del input_shape, batch, train
        return lowerings.forced_lowering(self.lowering, context) or lowerings.choose_depthwise(context)

    def describe_lowering(self, input_shape: Shape, context: lowerings.LoweringContext | None = None) -> str:
        del input_shape
        if self.lowering != "auto":
            return lowerings.display_name(self.lowering)
        return lowerings.describe_depthwise(context)

    def depthwise(self, module: Any, x: jax.Array, kernel: jax.Array, lowering: str) -> jax.Array:
        """``x`` through the ``(kh, kw, C, m)`` ``kernel`` as ``lowering`` (not ``"onednn"``); an
        automatic ``"shifted"`` stays portable (:func:`jaxcnn.lowerings.depthwise`)."""
        return lowerings.depthwise(x, kernel.astype(x.dtype), strides=self.strides, padding=self.padding,
                                   dilation=self.dilation_rate, lowering=lowering,
                                   portable=self.lowering == "auto")


def _bias_text(layer: Any, n: int) -> tuple[str, int]:
    return (f" + {n}", n) if layer.use_bias else ("", 0)


@dataclasses.dataclass(frozen=True)
class Conv2D(_Windowed):
    """``Conv2D(filters, kernel_size, strides=1, padding="valid", data_format=None, dilation_rate=1,
    groups=1, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
    bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
    activity_regularizer=None, kernel_constraint=None, bias_constraint=None)``.

    Input ``(batch, H, W, D_in)``, output ``(batch, H_out, W_out, filters)``; kernel
    ``(F_h, F_w, D_in / groups, filters)``, bias ``(filters,)``. With ``groups`` > 1 the input
    channels are split into ``groups`` groups, each convolved with ``filters / groups`` filters
    (``lax.conv_general_dilated`` with ``feature_group_count=groups``).
    """

    filters: int
    kernel_size: int | tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: str = "valid"
    data_format: str | None = "channels_last"  # Keras's; "channels_first" is refused
    dilation_rate: int | tuple[int, int] = 1
    groups: int = 1
    activation: str | None = None
    use_bias: bool = True
    kernel_initializer: Any = "glorot_uniform"
    bias_initializer: Any = "zeros"
    kernel_regularizer: Any = None
    bias_regularizer: Any = None
    activity_regularizer: Any = None
    kernel_constraint: Any = None
    bias_constraint: Any = None
    lowering: str = "auto"  # jaxcnn's: "auto" (chosen from the shapes), "conv", "patches" or "onednn"

    has_params: ClassVar[bool] = True
    weight_args: ClassVar[dict[str, str]] = _WEIGHT_ARGS

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(
            self,
            lowering=_choice(t, "lowering", self.lowering, lowerings.CONV_LOWERINGS),
            filters=_positive_int(t, "filters", self.filters),
            kernel_size=_pair(t, "kernel_size", self.kernel_size),
            strides=_pair(t, "strides", self.strides),
            padding=_padding(t, self.padding),
            data_format=_data_format(t, self.data_format),
            dilation_rate=_pair(t, "dilation_rate", self.dilation_rate),
            groups=_positive_int(t, "groups", self.groups),
            **_weights(self, {"kernel": 4}),
        )
        if self.filters % self.groups:
            raise _fail(t, "groups", self.groups, "must divide `filters`: the number of filters must be "
                        f"evenly divisible by the number of groups (Keras), got filters={self.filters}")
        if self.groups > 1 and self.lowering == "patches":
            raise _fail(t, "lowering", self.lowering, "cannot be 'patches' with groups > 1: a grouped "
                        "convolution is lowered as lax.conv or in oneDNN ('conv', 'onednn' or 'auto')")
        _refuse_strided_dilation(self)

    def _in_channels(self, input_shape: Shape) -> int:
        _require_rank(self, input_shape, 3, "height, width, channels")
        c = input_shape[2]
        if c % self.groups:
            raise ImpossibleShapeError(
                f"the number of input channels must be evenly divisible by the number of groups: "
                f"groups={self.groups}, but the input has {c} channels (input shape "
                f"(None, {', '.join(map(str, input_shape))}))", layer_type=self.type)
        return c

    def output_shape(self, input_shape: Shape) -> Shape:
        self._in_channels(input_shape)
        (h, w), _ = self._spatial(input_shape, self.kernel_size, self.strides, self.dilation_rate,
                                  self.padding, "kernel")
        return (h, w, self.filters)

    def param_shapes(self, input_shape: Shape) -> ParamShapes:
        c = self._in_channels(input_shape)
        shapes = {"kernel": (*self.kernel_size, c // self.groups, self.filters)}
        if self.use_bias:
            shapes["bias"] = (self.filters,)
        return {"params": shapes}

    def formula(self, input_shape: Shape) -> Formula:
        c = self._in_channels(input_shape)
        _, shape_text = self._spatial(input_shape, self.kernel_size, self.strides,
                                      self.dilation_rate, self.padding, "kernel")
        k, (fh, fw), g = self.filters, self.kernel_size, self.groups
        bias, nb = _bias_text(self, k)
        d = f"{c}" if g == 1 else f"({c}/{g})"
        n = k * fh * fw * (c // g) + nb
        return Formula(output=f"{shape_text}; channels = filters = {k}",
                       params=f"{k}*{fh}*{fw}*{d}{bias} = {n:,}")

    def flops(self, input_shape: Shape) -> int:
        h, w, k = self.output_shape(input_shape)
        macs = h * w * k * self.kernel_size[0] * self.kernel_size[1] * (input_shape[2] // self.groups)
        return 2 * macs + (h * w * k if self.use_bias else 0)

    def window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        eff = tuple((f - 1) * d + 1 for f, d in zip(self.kernel_size, self.dilation_rate))
        return eff, self.strides

    def lowering_for(self, input_shape: Shape, context: lowerings.LoweringContext, batch: Any = None,
                     train: bool = False) -> str:
        forced = lowerings.forced_lowering(self.lowering, context)
        if forced is not None:
            return forced
        h, w, _ = self.output_shape(tuple(input_shape))
        return lowerings.choose_conv((h, w), context, batch, train=train, in_channels=input_shape[-1],
                                     taps=self.kernel_size[0] * self.kernel_size[1], groups=self.groups)

    def describe_lowering(self, input_shape: Shape, context: lowerings.LoweringContext | None = None) -> str:
        if self.groups > 1 or self.lowering != "auto":
            return _describe_unpatched(self, context)
        h, w, _ = self.output_shape(tuple(input_shape))
        return lowerings.describe_conv((h, w), context, in_channels=input_shape[-1],
                                       taps=self.kernel_size[0] * self.kernel_size[1])

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        kernel = module.param("kernel", initializer_fn(self.kernel_initializer),
                              (*self.kernel_size, x.shape[-1] // self.groups, self.filters), jnp.float32)
        lowering = self.lowering_for(x.shape[1:], module.lowering, batch=x.shape[0], train=train)
        if lowering == "onednn":
            return _onednn(self, module, x, kernel, self.filters, self.groups)
        kernel = kernel.astype(x.dtype)
        if self.groups > 1:
            y = lax.conv_general_dilated(x, kernel, window_strides=self.strides, padding=self.padding.upper(),
                                         rhs_dilation=self.dilation_rate, dimension_numbers=_DIMS,
                                         feature_group_count=self.groups)
        else:
            y = lowerings.conv(x, kernel, strides=self.strides, padding=self.padding,
                               dilation=self.dilation_rate, lowering=lowering)
        return _finish(self, module, _bias(self, module, y, self.filters))


@dataclasses.dataclass(frozen=True)
class DepthwiseConv2D(_Depthwise, _Windowed):
    """``DepthwiseConv2D(kernel_size, strides=1, padding="valid", depth_multiplier=1,
    data_format=None, dilation_rate=1, activation=None, use_bias=True,
    depthwise_initializer="glorot_uniform", bias_initializer="zeros", depthwise_regularizer=None,
    bias_regularizer=None, activity_regularizer=None, depthwise_constraint=None, bias_constraint=None)``.

    Each input channel convolved with its own ``depth_multiplier`` filters: input ``(batch, H, W,
    C)``, output ``(batch, H_out, W_out, C * depth_multiplier)`` (output channel ``c * m + j`` is
    filter ``j`` of channel ``c``, as Keras); kernel ``(F_h, F_w, C, depth_multiplier)`` (Keras's
    layout, named ``kernel`` as Keras names it), bias ``(C * depth_multiplier,)``.
    """

    kernel_size: int | tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: str = "valid"
    depth_multiplier: int = 1
    data_format: str | None = "channels_last"
    dilation_rate: int | tuple[int, int] = 1
    activation: str | None = None
    use_bias: bool = True
    depthwise_initializer: Any = "glorot_uniform"
    bias_initializer: Any = "zeros"
    depthwise_regularizer: Any = None
    bias_regularizer: Any = None
    activity_regularizer: Any = None
    depthwise_constraint: Any = None
    bias_constraint: Any = None
    lowering: str = "auto"  # jaxcnn's: "auto", "conv", "shifted" or "onednn"

    has_params: ClassVar[bool] = True
    weight_args: ClassVar[dict[str, str]] = {"kernel": "depthwise", "bias": "bias"}

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(
            self,
            kernel_size=_pair(t, "kernel_size", self.kernel_size),
            strides=_pair(t, "strides", self.strides),
            padding=_padding(t, self.padding),
            depth_multiplier=_positive_int(t, "depth_multiplier", self.depth_multiplier),
            data_format=_data_format(t, self.data_format),
            dilation_rate=_pair(t, "dilation_rate", self.dilation_rate),
            lowering=_choice(t, "lowering", self.lowering, lowerings.DEPTHWISE_LOWERINGS),
            **_weights(self, {"depthwise": 4}),
        )
        _refuse_strided_dilation(self)

    def output_shape(self, input_shape: Shape) -> Shape:
        (h, w), _ = self._spatial(input_shape, self.kernel_size, self.strides, self.dilation_rate,
                                  self.padding, "kernel")
        return (h, w, input_shape[2] * self.depth_multiplier)

    def param_shapes(self, input_shape: Shape) -> ParamShapes:
        _require_rank(self, input_shape, 3, "height, width, channels")
        c, m = input_shape[2], self.depth_multiplier
        shapes = {"kernel": (*self.kernel_size, c, m)}
        if self.use_bias:
            shapes["bias"] = (c * m,)
        return {"params": shapes}

    def formula(self, input_shape: Shape) -> Formula:
        _, shape_text = self._spatial(input_shape, self.kernel_size, self.strides,
                                      self.dilation_rate, self.padding, "kernel")
        c, m, (fh, fw) = input_shape[2], self.depth_multiplier, self.kernel_size
        bias, nb = _bias_text(self, c * m)
        n = fh * fw * c * m + nb
        return Formula(output=f"{shape_text}; channels = {c}*{m} = {c * m}",
                       params=f"{fh}*{fw}*{c}*{m}{bias} = {n:,}")

    def flops(self, input_shape: Shape) -> int:
        h, w, k = self.output_shape(input_shape)
        macs = h * w * k * self.kernel_size[0] * self.kernel_size[1]
        return 2 * macs + (h * w * k if self.use_bias else 0)

    def window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        eff = tuple((f - 1) * d + 1 for f, d in zip(self.kernel_size, self.dilation_rate))
        return eff, self.strides

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        c, m = x.shape[-1], self.depth_multiplier
        kernel = module.param("kernel", initializer_fn(self.depthwise_initializer),
                              (*self.kernel_size, c, m), jnp.float32)
        lowering = self.lowering_for(x.shape[1:], module.lowering)
        if lowering == "onednn":  # groups = C, kernel (kh, kw, 1, C*m)
            return _onednn(self, module, x, kernel.reshape(*self.kernel_size, 1, c * m), c * m, c)
        y = self.depthwise(module, x, kernel, lowering)
        return _finish(self, module, _bias(self, module, y, c * m))


@dataclasses.dataclass(frozen=True)
class SeparableConv2D(_Depthwise, _Windowed):
    """``SeparableConv2D(filters, kernel_size, strides=1, padding="valid", data_format=None,
    dilation_rate=1, depth_multiplier=1, activation=None, use_bias=True,
    depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
    bias_initializer="zeros", depthwise_regularizer=None, pointwise_regularizer=None,
    bias_regularizer=None, activity_regularizer=None, depthwise_constraint=None,
    pointwise_constraint=None, bias_constraint=None)``.

    A depthwise convolution then a 1x1 convolution: input ``(batch, H, W, C)``, output ``(batch,
    H_out, W_out, filters)``; ``depthwise_kernel (F_h, F_w, C, depth_multiplier)``,
    ``pointwise_kernel (1, 1, C * depth_multiplier, filters)``, bias ``(filters,)``.
    """

    filters: int
    kernel_size: int | tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: str = "valid"
    data_format: str | None = "channels_last"
    dilation_rate: int | tuple[int, int] = 1
    depth_multiplier: int = 1
    activation: str | None = None
    use_bias: bool = True
    depthwise_initializer: Any = "glorot_uniform"
    pointwise_initializer: Any = "glorot_uniform"
    bias_initializer: Any = "zeros"
    depthwise_regularizer: Any = None
    pointwise_regularizer: Any = None
    bias_regularizer: Any = None
    activity_regularizer: Any = None
    depthwise_constraint: Any = None
    pointwise_constraint: Any = None
    bias_constraint: Any = None
    lowering: str = "auto"  # jaxcnn's: "auto", "conv", "shifted" or "onednn" (its depthwise stage; onednn: both)

    has_params: ClassVar[bool] = True
    weight_args: ClassVar[dict[str, str]] = {"depthwise_kernel": "depthwise",
                                             "pointwise_kernel": "pointwise", "bias": "bias"}

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(
            self,
            filters=_positive_int(t, "filters", self.filters),
            kernel_size=_pair(t, "kernel_size", self.kernel_size),
            strides=_pair(t, "strides", self.strides),
            padding=_padding(t, self.padding),
            data_format=_data_format(t, self.data_format),
            dilation_rate=_pair(t, "dilation_rate", self.dilation_rate),
            depth_multiplier=_positive_int(t, "depth_multiplier", self.depth_multiplier),
            lowering=_choice(t, "lowering", self.lowering, lowerings.DEPTHWISE_LOWERINGS),
            **_weights(self, {"depthwise": 4, "pointwise": 4}),
        )
        _refuse_strided_dilation(self)

    def output_shape(self, input_shape: Shape) -> Shape:
        (h, w), _ = self._spatial(input_shape, self.kernel_size, self.strides, self.dilation_rate,
                                  self.padding, "kernel")
        return (h, w, self.filters)

    def param_shapes(self, input_shape: Shape) -> ParamShapes:
        _require_rank(self, input_shape, 3, "height, width, channels")
        c, m = input_shape[2], self.depth_multiplier
        shapes = {"depthwise_kernel": (*self.kernel_size, c, m), "pointwise_kernel": (1, 1, c * m, self.filters)}
        if self.use_bias:
            shapes["bias"] = (self.filters,)
        return {"params": shapes}

    def formula(self, input_shape: Shape) -> Formula:
        _, shape_text = self._spatial(input_shape, self.kernel_size, self.strides,
                                      self.dilation_rate, self.padding, "kernel")
        c, m, k, (fh, fw) = input_shape[2], self.depth_multiplier, self.filters, self.kernel_size
        bias, nb = _bias_text(self, k)
        n = fh * fw * c * m + c * m * k + nb
        return Formula(output=f"{shape_text}; channels = filters = {k}",
                       params=f"{fh}*{fw}*{c}*{m} + {c}*{m}*{k}{bias} = {n:,}")

    def flops(self, input_shape: Shape) -> int:
        h, w, k = self.output_shape(input_shape)
        cm = input_shape[2] * self.depth_multiplier
        macs = h * w * cm * self.kernel_size[0] * self.kernel_size[1] + h * w * cm * k
        return 2 * macs + (h * w * k if self.use_bias else 0)

    def window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        eff = tuple((f - 1) * d + 1 for f, d in zip(self.kernel_size, self.dilation_rate))
        return eff, self.strides

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        c, m = x.shape[-1], self.depth_multiplier
        depthwise = module.param("depthwise_kernel", initializer_fn(self.depthwise_initializer),
                                 (*self.kernel_size, c, m), jnp.float32)
        pointwise = module.param("pointwise_kernel", initializer_fn(self.pointwise_initializer),
                                 (1, 1, c * m, self.filters), jnp.float32)
        lowering = self.lowering_for(x.shape[1:], module.lowering)
        if lowering == "onednn":
            y = lowerings.onednn_conv(x, depthwise.reshape(*self.kernel_size, 1, c * m), strides=self.strides,
                                      padding=self.padding, dilation=self.dilation_rate, groups=c,
                                      bfloat16=_bfloat16(module, c, x.shape[0]))
            fused = self.activation == "relu"
            y = lowerings.onednn_conv(y, pointwise, _bias_param(self, module, self.filters), strides=(1, 1),
                                      padding="valid", dilation=(1, 1), activation="relu" if fused else None,
                                      bfloat16=_bfloat16(module, 1, x.shape[0]))
            return _finish(self, module, y, activated=fused)
        y = self.depthwise(module, x, depthwise, lowering)
        y = lax.conv_general_dilated(y, pointwise.astype(x.dtype), window_strides=(1, 1), padding="VALID",
                                     dimension_numbers=_DIMS)
        return _finish(self, module, _bias(self, module, y, self.filters))


def _transpose_pads(kernel: int, stride: int, dilation: int, padding: str,
                    output_padding: int | None) -> tuple[int, int]:
    """Keras's ``_convert_conv_transpose_padding_args_from_keras_to_jax``: the ``(left, right)``
    padding of the stride-dilated input for ``lax.conv_transpose``."""
    kernel = (kernel - 1) * dilation + 1
    if padding == "valid":
        if output_padding is None:
            output_padding = max(kernel, stride) - kernel
        return kernel - 1, kernel - 1 + output_padding
    if output_padding is None:
        pad_len = stride + kernel - 2
    else:
        pad_len = kernel + kernel % 2 - 2 + output_padding
    left = min(pad_len // 2 + pad_len % 2, kernel - 1)
    return left, pad_len - left


def _transpose_axis(axis: str, size: int, kernel: int, stride: int, dilation: int, padding: str,
                    output_padding: int | None) -> tuple[int, str]:
    """Keras's ``_get_output_shape_given_tf_padding``: ``(output size, formula text)``."""
    eff = (kernel - 1) * dilation + 1
    eff_text = str(kernel) if dilation == 1 else f"(({kernel} - 1)*{dilation} + 1)"
    if padding == "valid":
        op = max(eff, stride) - eff if output_padding is None else output_padding
        out = (size - 1) * stride + eff + op
        return out, f"{axis} = ({size} - 1)*{stride} + {eff_text} + {op} = {out}"
    if output_padding is None:
        return size * stride, f"{axis} = {size}*{stride} = {size * stride}"
    out = (size - 1) * stride + eff % 2 + output_padding
    return out, f"{axis} = ({size} - 1)*{stride} + {eff_text} % 2 + {output_padding} = {out}"


@dataclasses.dataclass(frozen=True)
class Conv2DTranspose(_Unpatched, _Windowed):
    """``Conv2DTranspose(filters, kernel_size, strides=1, padding="valid", output_padding=None,
    data_format=None, dilation_rate=1, activation=None, use_bias=True,
    kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel_regularizer=None,
    bias_regularizer=None, activity_regularizer=None, kernel_constraint=None, bias_constraint=None)``.

    The transposed convolution (the gradient of a convolution with respect to its input): input
    ``(batch, H, W, C)``, output ``(batch, H_out, W_out, filters)`` with, per axis, ``valid``:
    ``(size - 1)*stride + k + output_padding`` (``output_padding`` by default ``max(k, stride) - k``),
    ``same``: ``size*stride``, or ``(size - 1)*stride + k % 2 + output_padding`` where
    ``output_padding`` is given (``k`` the dilated kernel size); kernel ``(F_h, F_w, filters, C)``
    (Keras's layout, out before in), bias ``(filters,)``. Computed as Keras's JAX backend does:
    ``lax.conv_transpose(..., transpose_kernel=True)`` with Keras's explicit padding.
    """

    filters: int
    kernel_size: int | tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: str = "valid"
    output_padding: int | tuple[int, int] | None = None
    data_format: str | None = "channels_last"
    dilation_rate: int | tuple[int, int] = 1
    activation: str | None = None
    use_bias: bool = True
    kernel_initializer: Any = "glorot_uniform"
    bias_initializer: Any = "zeros"
    kernel_regularizer: Any = None
    bias_regularizer: Any = None
    activity_regularizer: Any = None
    kernel_constraint: Any = None
    bias_constraint: Any = None
    lowering: str = "auto"  # jaxcnn's: "auto", "conv" or "onednn"

    has_params: ClassVar[bool] = True
    weight_args: ClassVar[dict[str, str]] = _WEIGHT_ARGS

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(
            self,
            lowering=_choice(t, "lowering", self.lowering, lowerings.UNPATCHED_LOWERINGS),
            filters=_positive_int(t, "filters", self.filters),
            kernel_size=_pair(t, "kernel_size", self.kernel_size),
            strides=_pair(t, "strides", self.strides),
            padding=_padding(t, self.padding),
            output_padding=_output_padding(t, self.output_padding),
            data_format=_data_format(t, self.data_format),
            dilation_rate=_pair(t, "dilation_rate", self.dilation_rate),
            **_weights(self, {"kernel": 4}),
        )
        _refuse_strided_dilation(self)

    def _axes(self, input_shape: Shape) -> tuple[tuple[int, int], str]:
        _require_rank(self, input_shape, 3, "height, width, channels")
        op = self.output_padding or (None, None)
        sizes, texts = [], []
        for i, axis in enumerate(("height", "width")):
            out, text = _transpose_axis(axis, input_shape[i], self.kernel_size[i], self.strides[i],
                                        self.dilation_rate[i], self.padding, op[i])
            if out < 1:
                raise ImpossibleShapeError(f"the output {axis} would be {out}: {text}", layer_type=self.type)
            sizes.append(out)
            texts.append(text)
        return (sizes[0], sizes[1]), "; ".join(texts)

    def output_shape(self, input_shape: Shape) -> Shape:
        (h, w), _ = self._axes(input_shape)
        return (h, w, self.filters)

    def param_shapes(self, input_shape: Shape) -> ParamShapes:
        _require_rank(self, input_shape, 3, "height, width, channels")
        shapes = {"kernel": (*self.kernel_size, self.filters, input_shape[2])}
        if self.use_bias:
            shapes["bias"] = (self.filters,)
        return {"params": shapes}

    def formula(self, input_shape: Shape) -> Formula:
        _, shape_text = self._axes(input_shape)
        k, (fh, fw), c = self.filters, self.kernel_size, input_shape[2]
        bias, nb = _bias_text(self, k)
        n = fh * fw * k * c + nb
        return Formula(output=f"{shape_text}; channels = filters = {k}",
                       params=f"{fh}*{fw}*{k}*{c}{bias} = {n:,}")

    def flops(self, input_shape: Shape) -> int:
        """Every input position times every kernel tap (the taps that fall in the cropped border
        included), as the transposed convolution's multiply-accumulates: ``H*W*C*kh*kw*filters``."""
        h, w, c = input_shape
        macs = h * w * c * self.kernel_size[0] * self.kernel_size[1] * self.filters
        oh, ow, k = self.output_shape(input_shape)
        return 2 * macs + (oh * ow * k if self.use_bias else 0)

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        kernel = module.param("kernel", initializer_fn(self.kernel_initializer),
                              (*self.kernel_size, self.filters, x.shape[-1]), jnp.float32)
        op = self.output_padding or (None, None)
        pads = [_transpose_pads(self.kernel_size[i], self.strides[i], self.dilation_rate[i], self.padding, op[i])
                for i in range(2)]
        if self.lowering_for(x.shape[1:], module.lowering) == "onednn":
            y = lowerings.onednn_conv_transpose(x, kernel, strides=self.strides, padding=(pads[0], pads[1]),
                                                dilation=self.dilation_rate,
                                                bfloat16=module.lowering.bfloat16_convolutions)
        else:
            y = lax.conv_transpose(x, kernel.astype(x.dtype), self.strides, pads, rhs_dilation=self.dilation_rate,
                                   dimension_numbers=_DIMS, transpose_kernel=True)
        return _finish(self, module, _bias(self, module, y, self.filters))


def _output_padding(layer: str, value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    pair = (value, value) if _is_int(value) else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(_is_int(v) and v >= 0 for v in pair):
        raise _fail(layer, "output_padding", value,
                    "must be None, a non-negative integer or a pair of non-negative integers")
    return (pair[0], pair[1])


for _kind in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose"):
    _CANONICAL_DEFAULTS.update({(_kind, "strides"): (1, 1), (_kind, "dilation_rate"): (1, 1)})
del _kind
