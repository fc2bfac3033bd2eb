"""Layer specs: frozen data with Keras's argument names and defaults, and their closed-form formulas.

Each spec knows, for a given input shape (without the batch axis), in closed form:

* ``output_shape(input_shape)``: the shape Keras prints, without the batch axis;
* ``param_shapes(input_shape)``: ``{collection: {name: shape}}``; collection ``"params"`` is
  trainable, ``"batch_stats"`` is not (as in Flax);
* ``formula(input_shape)``: the same two results written out with their arithmetic
  (``64*3*3*3 + 64 = 1,792``);
* ``flops(input_shape)``: forward FLOPs per example (see :data:`FLOPS_CONVENTION`);
* ``forward(module, x, train=...)``: the computation, run inside a Flax module (``module.param``,
  ``module.variable``, ``module.make_rng``) on ``x`` of shape ``(batch, *input_shape)``.

Adding a layer kind is one class here. Shapes are ``(height, width, channels)`` for images,
``(features,)`` after ``Flatten``; the batch axis is never part of a spec's shapes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import lowerings
from jaxcnn.errors import ImpossibleShapeError, LayerArgumentError

__all__ = [
    "ACTIVATIONS",
    "FLOPS_CONVENTION",
    "INITIALIZERS",
    "LAYER_TYPES",
    "Activation",
    "AveragePooling2D",
    "BatchNormalization",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "Formula",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "Input",
    "Layer",
    "MaxPooling2D",
]

Shape = tuple[int, ...]
ParamShapes = dict[str, dict[str, Shape]]

FLOPS_CONVENTION = (
    "forward FLOPs per example: 2 per multiply-accumulate of Conv2D and Dense (every kernel tap, "
    "including taps over SAME padding), plus 1 per bias add; pooling, normalization, dropout and "
    "activations are not counted"
)

# --------------------------------------------------------------------------------------------
# Activations and initializers, by their Keras names.


def _linear(x: jax.Array) -> jax.Array:
    return x


def _mish(x: jax.Array) -> jax.Array:
    return x * jnp.tanh(jax.nn.softplus(x))


ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = {
    "linear": _linear,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "sigmoid": jax.nn.sigmoid,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "tanh": jnp.tanh,
    "softmax": functools.partial(jax.nn.softmax, axis=-1),
    "log_softmax": functools.partial(jax.nn.log_softmax, axis=-1),
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # Keras 3's default
    "silu": jax.nn.silu,
    "hard_silu": jax.nn.hard_silu,
    "softplus": jax.nn.softplus,
    "softsign": jax.nn.soft_sign,
    "leaky_relu": functools.partial(jax.nn.leaky_relu, negative_slope=0.2),  # Keras 3's default
    "exponential": jnp.exp,
    "mish": _mish,
}
_ACTIVATION_ALIASES = {"swish": "silu", "hard_swish": "hard_silu", "none": "linear"}


def _variance_scaling(scale: float, mode: str, distribution: str) -> Callable[..., Any]:
    """``jax.nn.initializers.variance_scaling`` with Keras's fans for a 1-D weight (a bias):
    ``fan_in = fan_out = shape[0]`` (Keras's ``compute_fans``), where JAX refuses a 1-D shape."""
    nd = jax.nn.initializers.variance_scaling(scale, mode, distribution)

    def init(key: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
        if len(shape) != 1:
            return nd(key, shape, dtype)
        # As a (1, n) weight with fan_in 1: variance scale / n, every mode's variance for fans n and n.
        one_row = jax.nn.initializers.variance_scaling(scale / shape[0], "fan_in", distribution)
        return one_row(key, (1, shape[0]), dtype).reshape(shape)

    return init


INITIALIZERS: Mapping[str, Callable[..., Any]] = {
    # jax.nn.initializers' glorot_*, he_* and lecun_* (the same variance scalings as Keras's).
    "glorot_uniform": _variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": _variance_scaling(1.0, "fan_avg", "truncated_normal"),
    "he_uniform": _variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": _variance_scaling(2.0, "fan_in", "truncated_normal"),
    "lecun_uniform": _variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": _variance_scaling(1.0, "fan_in", "truncated_normal"),
    "orthogonal": jax.nn.initializers.orthogonal(),  # 2-D or more: refused for a bias
    "zeros": jax.nn.initializers.zeros,
    "ones": jax.nn.initializers.ones,
    # Keras's defaults for these three: stddev 0.05, range [-0.05, 0.05].
    "random_normal": jax.nn.initializers.normal(0.05),
    "truncated_normal": jax.nn.initializers.truncated_normal(0.05),
    "random_uniform": lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -0.05, 0.05
    ),
}


def snake_case(name: str) -> str:
    """Keras's ``to_snake_case``: ``MaxPooling2D`` -> ``max_pooling2d``."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


# --------------------------------------------------------------------------------------------
# Argument normalization. Each function returns the canonical value or raises
# LayerArgumentError naming the argument and its value.


def _fail(layer: str, arg: str, value: Any, expected: str) -> LayerArgumentError:
    return LayerArgumentError(f"`{arg}` (={value!r}) {expected}", layer_type=layer)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(layer: str, arg: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise _fail(layer, arg, value, "must be a positive integer")
    return value


def _pair(layer: str, arg: str, value: Any) -> tuple[int, int]:
    pair = (value, value) if _is_int(value) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(_is_int(v) and v >= 1 for v in pair)
    ):
        raise _fail(layer, arg, value, "must be a positive integer or a pair of positive integers")
    return (pair[0], pair[1])


def _padding(layer: str, value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in ("valid", "same"):
        raise _fail(layer, "padding", value, "must be 'valid' or 'same' (any case)")
    return value.lower()


def _activation(layer: str, arg: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(layer, arg, value, "must be an activation name such as 'relu', or None")
    name = value.lower()
    name = _ACTIVATION_ALIASES.get(name, name)
    if name not in ACTIVATIONS:
        known = ", ".join(sorted(set(ACTIVATIONS) | set(_ACTIVATION_ALIASES) - {"none"}))
        raise _fail(layer, arg, value, f"is not a known activation; known: {known}")
    return None if name == "linear" else name


def _choice(layer: str, arg: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _fail(layer, arg, value, f"must be one of {', '.join(repr(c) for c in choices)}")
    return value


def _initializer(layer: str, arg: str, value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in INITIALIZERS:
        raise _fail(
            layer, arg, value, f"is not a known initializer; known: {', '.join(INITIALIZERS)}"
        )
    return value.lower()


_MATRIX_INITIALIZERS = ("orthogonal",)  # need a weight of at least 2 dimensions, in Keras too


def _weights(layer: Layer) -> dict[str, Any]:
    """The normalized arguments Conv2D and Dense share (activation, bias, initializers)."""
    t = layer.type
    use_bias = _bool(t, "use_bias", layer.use_bias)
    bias_initializer = _initializer(t, "bias_initializer", layer.bias_initializer)
    if use_bias and bias_initializer in _MATRIX_INITIALIZERS:
        raise _fail(t, "bias_initializer", layer.bias_initializer,
                    "needs a weight of at least 2 dimensions and the bias is 1-D (Keras fails on it at "
                    "build); use 'zeros' or a random initializer")
    return {
        "activation": _activation(t, "activation", layer.activation),
        "use_bias": use_bias,
        "kernel_initializer": _initializer(t, "kernel_initializer", layer.kernel_initializer),
        "bias_initializer": bias_initializer,
    }


def _bool(layer: str, arg: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(layer, arg, value, "must be true or false")
    return value


def _float(layer: str, arg: str, value: Any, lo: float, hi: float, hi_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = lo <= value < hi if hi_open else lo <= value <= hi
    if not ok:
        interval = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
        raise _fail(layer, arg, value, f"must be a number in {interval}")
    return float(value)


def _shape(layer: str, arg: str, value: Any) -> Shape | None:
    if value is None:
        return None
    if (
        not isinstance(value, (tuple, list))
        or not value
        or not all(_is_int(v) and v >= 1 for v in value)
    ):
        raise _fail(layer, arg, value, "must be a non-empty list of positive integers, such as (32, 32, 3)")
    return tuple(value)


def _set(obj: Any, **values: Any) -> None:
    for key, value in values.items():
        object.__setattr__(obj, key, value)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _require_rank(layer: Layer, input_shape: Shape, rank: int, what: str) -> None:
    if len(input_shape) != rank:
        raise ImpossibleShapeError(
            f"expects an input of rank {rank} ({what}) without the batch axis, "
            f"got {_fmt_shape(input_shape)}",
            layer_type=layer.type,
        )


def _fmt_shape(shape: Shape) -> str:
    return "(None, " + ", ".join(str(d) for d in shape) + ")"


def _window_axis(
    layer: Layer,
    axis: str,
    size: int,
    window: int,
    stride: int,
    dilation: int,
    padding: str,
    what: str,
) -> tuple[int, str]:
    """One spatial axis of a windowed layer: ``(output size, formula text)``."""
    if padding == "same":
        out = _cdiv(size, stride)
        return out, f"{axis} = ceil({size} / {stride}) = {out}"
    effective = (window - 1) * dilation + 1
    eff_text = str(window) if dilation == 1 else f"(({window} - 1)*{dilation} + 1)"
    out = _cdiv(size - effective + 1, stride)
    text = f"{axis} = ceil(({size} - {eff_text} + 1) / {stride}) = {out}"
    if size < effective:
        dilated = f" ({window} dilated by {dilation})" if dilation > 1 else ""
        raise ImpossibleShapeError(
            f"the {what} window's {axis} {effective}{dilated} is larger than the input {axis} "
            f"{size} with padding='valid': {text}",
            layer_type=layer.type,
        )
    return out, text


# --------------------------------------------------------------------------------------------
# Specs.


@dataclasses.dataclass(frozen=True)
class Formula:
    """A layer's formulas with their arithmetic, for one input shape."""

    output: str
    params: str


@dataclasses.dataclass(frozen=True)
class Input:
    """``Input(shape)``: the model's input, without the batch axis (as ``keras.Input``)."""

    shape: Shape
    name: str | None = None

    def __post_init__(self) -> None:
        _set(self, shape=_shape("Input", "shape", self.shape))
        if self.shape is None:
            raise _fail("Input", "shape", None, "is required")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Layer:
    """Base of all layer specs. ``name=None`` gets Keras's per-model name (``conv2d_1``);
    ``input_shape`` is accepted on the first layer of a model, as in the Keras notebooks."""

    name: str | None = None
    input_shape: Shape | None = None

    has_params: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise _fail(self.type, "name", self.name, "must be a non-empty string")
        _set(self, input_shape=_shape(self.type, "input_shape", self.input_shape))

    @property
    def type(self) -> str:
        """The Keras class name, as the summary prints it."""
        return type(self).__name__

    @classmethod
    def default_name(cls) -> str:
        return snake_case(cls.__name__)

    def arguments(self) -> dict[str, Any]:
        """The arguments that differ from their defaults (``name`` and ``input_shape`` excluded)."""
        out = {}
        for field in dataclasses.fields(self):
            if field.name in ("name", "input_shape"):
                continue
            value = getattr(self, field.name)
            default = field.default
            if default is dataclasses.MISSING or value != type(self)._canonical(field.name, default):
                out[field.name] = value
        return out

    @classmethod
    def _canonical(cls, field: str, default: Any) -> Any:
        # Compare with the normalized default (kernel_size 1 -> (1, 1), ...).
        return _CANONICAL_DEFAULTS.get((cls.__name__, field), default)

    # The closed-form side. Subclasses override what applies.
    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def param_shapes(self, input_shape: Shape) -> ParamShapes:
        del input_shape
        return {}

    def formula(self, input_shape: Shape) -> Formula:
        out = self.output_shape(input_shape)
        return Formula(output=f"output = input = {_fmt_shape(out)}", params="0")

    def flops(self, input_shape: Shape) -> int:
        del input_shape
        return 0

    def window(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """``(effective window, strides)`` for spatial layers, for the receptive field; ``None``
        for layers that act per position."""
        return None

    mixes_positions: ClassVar[bool] = False  # True where every output sees the whole input

    def lowering_for(self, input_shape: Shape, context: lowerings.LoweringContext, batch: Any = None,
                     train: bool = False) -> str | None:
        """The XLA program this layer compiles to for ``batch`` inputs of ``input_shape`` in
        ``context`` (the backend and the rest, fixed when the module was built), in a training step
        or not, where there is a choice (see :mod:`jaxcnn.lowerings`); else ``None``."""
        del input_shape, context, batch, train
        return None

    def describe_lowering(self, input_shape: Shape,
                          context: lowerings.LoweringContext | None = None) -> str | None:
        """:meth:`lowering_for` in a few words for the summary's lowering column, with the batch
        sizes and the training flag where the choice depends on them; ``context=None`` describes it
        without knowing (or starting) the backend. ``None`` where the layer has no choice."""
        del input_shape, context
        return None

    # The computation. ``module`` is the layer's Flax module (jaxcnn.flax_module.LayerModule): its
    # ``param``, ``variable``, ``make_rng``, and ``lowering``, the LoweringContext it was built with.
    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return x


_CANONICAL_DEFAULTS: dict[tuple[str, str], Any] = {}


def _apply_activation(name: str | None, x: jax.Array) -> jax.Array:
    return x if name is None else ACTIVATIONS[name](x)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Windowed(Layer):
    """Shared by Conv2D and the 2D pooling layers."""

    def _spatial(self, input_shape: Shape, window: tuple[int, int], strides: tuple[int, int],
                 dilation: tuple[int, int], padding: str, what: str) -> tuple[tuple[int, int], str]:
        _require_rank(self, input_shape, 3, "height, width, channels")
        h, th = _window_axis(self, "height", input_shape[0], window[0], strides[0], dilation[0], padding, what)
        w, tw = _window_axis(self, "width", input_shape[1], window[1], strides[1], dilation[1], padding, what)
        return (h, w), f"{th}; {tw}"


@dataclasses.dataclass(frozen=True)
class Conv2D(_Windowed):
    """``Conv2D(filters, kernel_size, strides=1, padding="valid", dilation_rate=1, activation=None,
    use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros")``.

    Input ``(batch, H, W, D_in)``, output ``(batch, H_out, W_out, filters)``; kernel
    ``(F_h, F_w, D_in, filters)``, bias ``(filters,)``.
    """

    filters: int
    kernel_size: int | tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: str = "valid"
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


@dataclasses.dataclass(frozen=True)
class _Pooling2D(_Windowed):
    pool_size: int | tuple[int, int] = 2
    strides: int | tuple[int, int] | None = None
    padding: str = "valid"
    lowering: str = "auto"  # jaxcnn's: "auto", "reduce_window" or "reshape" (tiling windows only)

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        pool = _pair(t, "pool_size", self.pool_size)
        strides = pool if self.strides is None else _pair(t, "strides", self.strides)
        _set(self, pool_size=pool, strides=strides, padding=_padding(t, self.padding),
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
        if self.lowering != "auto":
            return self.lowering
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
    """``MaxPooling2D(pool_size=2, strides=None (= pool_size), padding="valid")``; SAME pads with -inf."""

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        return lowerings.max_pool(x, **self._window_args(module, x))


@dataclasses.dataclass(frozen=True)
class AveragePooling2D(_Pooling2D):
    """``AveragePooling2D(pool_size=2, strides=None (= pool_size), padding="valid")``; with SAME
    padding each window is averaged over its real (unpadded) elements, as Keras does."""

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        args = self._window_args(module, x)
        total = lowerings.sum_pool(x, **args)
        if self.padding == "valid":
            return total / (self.pool_size[0] * self.pool_size[1])
        ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
        return total / lowerings.sum_pool(ones, **{**args, "lowering": "reduce_window"})


@dataclasses.dataclass(frozen=True)
class _GlobalPooling2D(Layer):
    keepdims: bool = False

    mixes_positions: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, keepdims=_bool(self.type, "keepdims", self.keepdims))

    def output_shape(self, input_shape: Shape) -> Shape:
        _require_rank(self, input_shape, 3, "height, width, channels")
        return (1, 1, input_shape[2]) if self.keepdims else (input_shape[2],)

    def formula(self, input_shape: Shape) -> Formula:
        out = self.output_shape(input_shape)
        return Formula(output=f"over height {input_shape[0]} and width {input_shape[1]}: {_fmt_shape(out)}",
                       params="0 (no weights)")


@dataclasses.dataclass(frozen=True)
class GlobalAveragePooling2D(_GlobalPooling2D):
    """``GlobalAveragePooling2D(keepdims=False)``: ``(batch, H, W, C)`` -> ``(batch, C)``."""

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return jnp.mean(x, axis=(1, 2), keepdims=self.keepdims)


@dataclasses.dataclass(frozen=True)
class GlobalMaxPooling2D(_GlobalPooling2D):
    """``GlobalMaxPooling2D(keepdims=False)``: ``(batch, H, W, C)`` -> ``(batch, C)``."""

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return jnp.max(x, axis=(1, 2), keepdims=self.keepdims)


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    """``Flatten()``: ``(batch, *dims)`` -> ``(batch, prod(dims))`` in row-major (channels-last) order."""

    mixes_positions: ClassVar[bool] = True

    def output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)

    def formula(self, input_shape: Shape) -> Formula:
        n = math.prod(input_shape)
        return Formula(output="units = " + "*".join(map(str, input_shape)) + f" = {n:,}", params="0")

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return x.reshape(x.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class Dense(Layer):
    """``Dense(units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
    bias_initializer="zeros")``, applied to the last axis as Keras does: ``(batch, ..., D_in)`` ->
    ``(batch, ..., units)``; kernel ``(D_in, units)``, bias ``(units,)``."""

    units: int
    activation: str | None = None
    use_bias: bool = True
    kernel_initializer: str = "glorot_uniform"
    bias_initializer: str = "zeros"

    has_params: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.type
        _set(
            self,
            units=_positive_int(t, "units", self.units),
            **_weights(self),
        )

    def output_shape(self, input_shape: Shape) -> Shape:
        return (*input_shape[:-1], self.units)

    def param_shapes(self, input_shape: Shape) -> ParamShapes:
        shapes = {"kernel": (input_shape[-1], self.units)}
        if self.use_bias:
            shapes["bias"] = (self.units,)
        return {"params": shapes}

    def formula(self, input_shape: Shape) -> Formula:
        d, u = input_shape[-1], self.units
        n = d * u + (u if self.use_bias else 0)
        bias = f" + {u}" if self.use_bias else ""
        return Formula(output=f"units = {u}", params=f"{d}*{u}{bias} = {n:,}")

    def flops(self, input_shape: Shape) -> int:
        positions = math.prod(input_shape[:-1])
        return positions * (2 * input_shape[-1] * self.units + (self.units if self.use_bias else 0))

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        kernel = module.param("kernel", INITIALIZERS[self.kernel_initializer],
                              (x.shape[-1], self.units), jnp.float32)
        y = jnp.matmul(x, kernel.astype(x.dtype))
        if self.use_bias:
            bias = module.param("bias", INITIALIZERS[self.bias_initializer], (self.units,), jnp.float32)
            y = y + bias.astype(y.dtype)
        return _apply_activation(self.activation, y)


@dataclasses.dataclass(frozen=True)
class Dropout(Layer):
    """``Dropout(rate)``: in training, zeroes each element with probability ``rate`` and scales the
    rest by ``1 / (1 - rate)``; the identity in evaluation. Its key comes from the ``dropout`` rng."""

    rate: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, rate=_float(self.type, "rate", self.rate, 0.0, 1.0, hi_open=True))

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(module.make_rng("dropout"), keep, x.shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


@dataclasses.dataclass(frozen=True)
class Activation(Layer):
    """``Activation(activation)``: an activation by its Keras name (``"relu"``, ``"softmax"``, ...)."""

    activation: str | None

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, activation=_activation(self.type, "activation", self.activation))

    def arguments(self) -> dict[str, Any]:
        return {"activation": self.activation or "linear"}

    def forward(self, module: Any, x: jax.Array, *, train: bool) -> jax.Array:
        del module, train
        return _apply_activation(self.activation, x)


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
        if train:
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


LAYER_TYPES: Mapping[str, type[Layer]] = {
    cls.__name__: cls
    for cls in (Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D,
                Flatten, Dense, Dropout, Activation, BatchNormalization)
}
"""Every layer kind by its Keras class name (for configs and Keras JSON)."""
