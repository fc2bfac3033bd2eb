"""Convolution layers: ``Conv2D``."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxcnn import lowerings
from jaxcnn.errors import LayerArgumentError
from jaxcnn.layers.base import (_CANONICAL_DEFAULTS, Formula, ParamShapes, Shape, _Windowed, _apply_activation,
                               _choice, _data_format, _padding, _pair, _positive_int, _require_rank, _set, _weights)
from jaxcnn.layers.initializers import INITIALIZERS

__all__ = ['Conv2D']


@dataclasses.dataclass(frozen=True)
class Conv2D(_Windowed):
    """``Conv2D(filters, kernel_size, strides=1, padding="valid", data_format=None, dilation_rate=1, activation=None,
    use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros")``.

    Input ``(batch, H, W, D_in)``, output ``(batch, H_out, W_out, filters)``; kernel
    ``(F_h, F_w, D_in, filters)``, bias ``(filters,)``.
    """

    filters: int
    kernel_size: int | tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: str = "valid"
    data_format: str | None = "channels_last"  # Keras's; "channels_first" is refused
    dilation_rate: int | tuple[int, int] = 1
    activation: str | None = None
    use_bias: bool = True
    kernel_initializer: str = "glorot_uniform"
    bias_initializer: str = "zeros"
    lowering: str = "auto"  # jaxcnn's: "auto" (chosen from the shapes), "conv" or "patches"

    has_params: ClassVar[bool] = True

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
            **_weights(self),
        )
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:  # Keras 3's BaseConv refuses it too
            raise LayerArgumentError(
                f"`strides` (={self.strides}) and `dilation_rate` (={self.dilation_rate}) cannot both "
                "exceed 1: Keras refuses `strides > 1` in conjunction with `dilation_rate > 1` too",
                layer_type=t)

    def output_shape(self, input_shape: Shape) -> Shape:
        (h, w), _ = self._spatial(input_shape, self.kernel_size, self.strides, self.dilation_rate,
                                  self.padding, "kernel")
        return (h, w, self.filters)

    def param_shapes(self, input_shape: Shape) -> ParamShapes:
        _require_rank(self, input_shape, 3, "height, width, channels")
        shapes = {"kernel": (*self.kernel_size, input_shape[2], self.filters)}
        if self.use_bias:
            shapes["bias"] = (self.filters,)
        return {"params": shapes}

    def formula(self, input_shape: Shape) -> Formula:
        _, shape_text = self._spatial(input_shape, self.kernel_size, self.strides,
                                      self.dilation_rate, self.padding, "kernel")
        k, (fh, fw), d = self.filters, self.kernel_size, input_shape[2]
        n = k * fh * fw * d + (k if self.use_bias else 0)
        bias = f" + {k}" if self.use_bias else ""
        return Formula(
            output=f"{shape_text}; channels = filters = {k}",
            params=f"{k}*{fh}*{fw}*{d}{bias} = {n:,}",
        )

    def flops(self, input_shape: Shape) -> int:
        h, w, k = self.output_shape(input_shape)
        macs = h * w * k * self.kernel_size[0] * self.kernel_size[1] * input_shape[2]
        return 2 * macs + (h * w * k if self.use_bias else 0)

    def window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        eff = tuple((f - 1) * d + 1 for f, d in zip(self.kernel_size, self.dilation_rate))
        return eff, self.strides

    def lowering_for(self, input_shape: Shape, context: lowerings.LoweringContext, batch: Any = None,
                     train: bool = False) -> str:
        if self.lowering != "auto":
            return self.lowering
        h, w, _ = self.output_shape(tuple(input_shape))
        return lowerings.choose_conv((h, w), context, batch, train=train, in_channels=input_shape[-1],
                                     taps=self.kernel_size[0] * self.kernel_size[1])

    def describe_lowering(self, input_shape: Shape, context: lowerings.LoweringContext | None = None) -> str:
        if self.lowering != "auto":
            return lowerings.display_name(self.lowering)
        h, w, _ = self.output_shape(tuple(input_shape))
        return lowerings.describe_conv((h, w), context, in_channels=input_shape[-1],
                                       taps=self.kernel_size[0] * self.kernel_size[1])

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        kernel = module.param(
            "kernel", INITIALIZERS[self.kernel_initializer],
            (*self.kernel_size, x.shape[-1], self.filters), jnp.float32,
        )
        y = lowerings.conv(x, kernel.astype(x.dtype), strides=self.strides, padding=self.padding,
                           dilation=self.dilation_rate,
                           lowering=self.lowering_for(x.shape[1:], module.lowering, batch=x.shape[0],
                                                      train=train))
        if self.use_bias:
            bias = module.param("bias", INITIALIZERS[self.bias_initializer], (self.filters,), jnp.float32)
            y = y + bias.astype(y.dtype)
        return _apply_activation(self.activation, y)


_CANONICAL_DEFAULTS.update({
    ("Conv2D", "strides"): (1, 1),
    ("Conv2D", "dilation_rate"): (1, 1),
})
