"""The layer spec protocol: :class:`Layer`, :class:`Input`, :class:`Formula`, the registry of layer
kinds (:data:`LAYER_TYPES`), and the argument normalization the layer kinds share.

Layer specs: frozen data with Keras's argument names and defaults, and their closed-form formulas.

Each spec knows, for a given input shape (without the batch axis), in closed form:

* ``output_shape(input_shape)``: the shape Keras prints, without the batch axis;
* ``param_shapes(input_shape)``: ``{collection: {name: shape}}``; collection ``"params"`` is
  trainable, ``"batch_stats"`` is not (as in Flax);
* ``formula(input_shape)``: the same two results written out with their arithmetic
  (``64*3*3*3 + 64 = 1,792``);
* ``flops(input_shape)``: forward FLOPs per example (see :data:`FLOPS_CONVENTION`);
* ``forward(module, x, train=...)``: the computation, run inside a Flax module (``module.param``,
  ``module.variable``, ``module.make_rng``) on ``x`` of shape ``(batch, *input_shape)``.

Adding a layer kind is one class in the module of its family (``convolutional``, ``pooling``,
``reshaping``, ``core``, ``regularization``, ``activations``, ``normalization``, ``preprocessing``, as
Keras's own source is laid out; ``applications`` for the custom layers of ``keras.applications``):
defining it registers it in :data:`LAYER_TYPES` under its class name. Shapes are ``(height, width,
channels)`` for images, ``(features,)`` after ``Flatten``; the batch axis is never part of a spec's
shapes.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxcnn import lowerings
from jaxcnn.errors import ImpossibleShapeError, LayerArgumentError
from jaxcnn.layers.activation_functions import ACTIVATION_ALIASES, ACTIVATIONS
from jaxcnn.layers.initializers import MATRIX_INITIALIZERS, Initializer, initializer_spec, spec_name
from jaxcnn.layers.keras_objects import ObjectError
from jaxcnn.layers.weights import Constraint, Regularizer, constraint_spec, regularizer_spec

__all__ = ["FLOPS_CONVENTION", "LAYER_TYPES", "Formula", "Input", "Layer", "ParamShapes", "Shape", "snake_case"]

_REGISTRY: dict[str, type[Layer]] = {}
LAYER_TYPES: Mapping[str, type[Layer]] = types.MappingProxyType(_REGISTRY)
"""Every layer kind by its Keras class name (for configs and Keras JSON), in definition order."""

Shape = tuple[int, ...]
ParamShapes = dict[str, dict[str, Shape]]

FLOPS_CONVENTION = (
    "forward FLOPs per example: 2 per multiply-accumulate of the convolutions and Dense (every kernel tap, "
    "including taps over SAME padding), plus 1 per bias add; pooling, normalization, dropout and "
    "activations are not counted"
)


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
    name = ACTIVATION_ALIASES.get(name, name)
    if name not in ACTIVATIONS:
        known = ", ".join(sorted(set(ACTIVATIONS) | set(ACTIVATION_ALIASES) - {"none"}))
        raise _fail(layer, arg, value, f"is not a known activation; known: {known}")
    return None if name == "linear" else name


def _choice(layer: str, arg: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _fail(layer, arg, value, f"must be one of {', '.join(repr(c) for c in choices)}")
    return value


def _initializer(layer: str, arg: str, value: Any) -> str | Initializer:
    """A name, a ``{name = ..., ...}`` table or a Keras initializer object, as
    :func:`~jaxcnn.layers.initializers.initializer_spec` normalizes it."""
    if isinstance(value, Initializer):
        value = value.toml_table()
    try:
        return initializer_spec(value)
    except ObjectError as error:
        raise _fail(layer, arg, value, str(error)) from None


def _regularizer(layer: str, arg: str, value: Any) -> Regularizer | None:
    try:
        return regularizer_spec(value)
    except ObjectError as error:
        raise _fail(layer, arg, value, str(error)) from None


def _constraint(layer: str, arg: str, value: Any, rank: int) -> Constraint | None:
    try:
        return constraint_spec(value, rank)
    except ObjectError as error:
        raise _fail(layer, arg, value, str(error)) from None


def _weights(layer: Layer, kernels: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The normalized weight arguments of a weighted layer: ``activation``, ``use_bias``,
    ``activity_regularizer``, and for each prefix of ``kernels`` (``{"kernel": rank}``;
    ``{"depthwise": 4, "pointwise": 4}`` for SeparableConv2D) and for ``bias`` its
    ``*_initializer``, ``*_regularizer`` and ``*_constraint``."""
    t = layer.type
    use_bias = _bool(t, "use_bias", layer.use_bias)
    out: dict[str, Any] = {
        "activation": _activation(t, "activation", layer.activation),
        "use_bias": use_bias,
        "activity_regularizer": _regularizer(t, "activity_regularizer", layer.activity_regularizer),
    }
    for prefix, rank in {**(kernels or {"kernel": 2}), "bias": 1}.items():
        out[f"{prefix}_initializer"] = _initializer(t, f"{prefix}_initializer",
                                                    getattr(layer, f"{prefix}_initializer"))
        out[f"{prefix}_regularizer"] = _regularizer(t, f"{prefix}_regularizer",
                                                    getattr(layer, f"{prefix}_regularizer"))
        out[f"{prefix}_constraint"] = _constraint(t, f"{prefix}_constraint",
                                                  getattr(layer, f"{prefix}_constraint"), rank)
    if use_bias and spec_name(out["bias_initializer"]) in MATRIX_INITIALIZERS:
        raise _fail(t, "bias_initializer", layer.bias_initializer,
                    "needs a weight of at least 2 dimensions and the bias is 1-D (Keras fails on it at "
                    "build); use 'zeros' or a random initializer")
    return out


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


def _data_format(layer: str, value: Any) -> str:
    """Keras's ``data_format``: ``"channels_last"`` (or ``None``, Keras's default, which resolves to
    it); ``"channels_first"`` is refused by name: jaxcnn's images are ``(height, width, channels)``."""
    if value is None or value == "channels_last":
        return "channels_last"
    if value == "channels_first":
        raise _fail(layer, "data_format", value,
                    "is not supported: jaxcnn is channels-last, (batch, height, width, channels); "
                    "use 'channels_last' (or None)")
    raise _fail(layer, "data_format", value, "must be 'channels_last' (or None)")


def _number(layer: str, arg: str, value: Any, lo: float = -math.inf) -> float:
    """A finite number >= ``lo`` (ints accepted), as a float."""
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or value < lo):
        bound = "" if lo == -math.inf else f" >= {lo:g}"
        raise _fail(layer, arg, value, f"must be a finite number{bound}")
    return float(value)


def _axis_arg(layer: str, arg: str, value: Any) -> int | tuple[int, ...]:
    """Keras's ``axis``: an int or a non-empty list of distinct ints, counting the batch axis as 0
    (``-1`` is the last axis). A one-element list is the int."""
    axes = (value,) if _is_int(value) else value
    if (not isinstance(axes, (tuple, list)) or not axes or not all(_is_int(a) for a in axes)
            or len(set(axes)) != len(axes)):
        raise _fail(layer, arg, value, "must be an integer axis or a list of distinct integer axes")
    return axes[0] if len(axes) == 1 else tuple(axes)


def _resolve_axes(layer: Layer, arg: str, axes: int | tuple[int, ...], input_shape: Shape) -> tuple[int, ...]:
    """Keras axes (batch axis 0, negative from the end) as sorted positions ``1..rank`` in the
    batched array; the batch axis and axes out of range are refused."""
    rank = len(input_shape) + 1
    out = []
    for a in (axes,) if isinstance(axes, int) else axes:
        pos = a + rank if a < 0 else a
        if not 1 <= pos < rank:
            raise ImpossibleShapeError(
                f"`{arg}` (={axes!r}) is out of range for the input {_fmt_shape(tuple(input_shape))}: the axes "
                f"are 1..{rank - 1} (or -1..-{rank - 1}); 0 is the batch axis",
                layer_type=layer.type)
        out.append(pos)
    if len(set(out)) != len(out):
        raise ImpossibleShapeError(f"`{arg}` (={axes!r}) names the same axis twice", layer_type=layer.type)
    return tuple(sorted(out))


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
    trainable: bool = True
    """Keras's ``trainable``: ``False`` freezes the layer's parameters (counted non-trainable, not
    updated by the optimizer, their regularizers not added to the loss) and runs a
    BatchNormalization in inference mode, as Keras 3 does."""

    has_params: ClassVar[bool] = False
    weight_args: ClassVar[Mapping[str, str]] = {}
    """Each parameter's argument prefix: ``{"kernel": "kernel", "bias": "bias"}`` (Dense, Conv2D)
    names ``kernel_regularizer`` and ``kernel_constraint`` for the parameter ``kernel``."""
    num_inputs: ClassVar[int | None] = 1
    """How many inputs the layer takes: 1, or ``None`` for two or more (the merging layers). Where
    it is not 1, ``output_shape``, ``param_shapes``, ``formula`` and ``flops`` take a tuple of
    input shapes, and ``forward`` a tuple of arrays, where a one-input layer takes one."""

    def __init_subclass__(cls, *, register: bool | None = None, **kwargs: Any) -> None:
        """A layer kind joins :data:`LAYER_TYPES` (configs and Keras JSON name it by its class name)
        where it is defined in ``jaxcnn.layers`` under a public name, or where ``register=True``
        (``class MyLayer(Layer, register=True)``: a user's own kind)."""
        super().__init_subclass__(**kwargs)
        if register is None:
            register = cls.__module__.startswith("jaxcnn.layers.") and not cls.__name__.startswith("_")
        if register:
            if cls.__name__ in _REGISTRY and _REGISTRY[cls.__name__] is not cls:
                raise LayerArgumentError(f"a layer kind named {cls.__name__!r} is already registered "
                                         f"({_REGISTRY[cls.__name__].__module__})")
            _REGISTRY[cls.__name__] = cls

    def __post_init__(self) -> None:
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise _fail(self.type, "name", self.name, "must be a non-empty string")
        _set(self, input_shape=_shape(self.type, "input_shape", self.input_shape),
             trainable=_bool(self.type, "trainable", self.trainable))

    def regularizers(self) -> dict[str, Regularizer]:
        """The weight regularizers by parameter name (``{"kernel": L1L2(l1=0.0, l2=0.01)}``)."""
        found = {p: getattr(self, f"{a}_regularizer", None) for p, a in self.weight_args.items()}
        return {p: r for p, r in found.items() if r is not None}

    def constraints(self) -> dict[str, Constraint]:
        """The weight constraints by parameter name, applied after each optimizer update."""
        found = {p: getattr(self, f"{a}_constraint", None) for p, a in self.weight_args.items()}
        return {p: c for p, c in found.items() if c is not None}

    @property
    def type(self) -> str:
        """The Keras class name, as the summary prints it."""
        return type(self).__name__

    def __call__(self, inputs: Any) -> Any:
        """The functional idiom: ``Conv2D(16, 3)(x)`` on a :class:`jaxcnn.graph.Tensor` (a list of
        them for a merging layer) records a node and returns its output tensor."""
        from jaxcnn.graph import call_layer

        return call_layer(self, inputs)

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


def _finish(layer: Layer, module: Any, y: jax.Array, *, activated: bool = False) -> jax.Array:
    """A weighted layer's output: its activation applied (unless ``activated``: a oneDNN
    convolution applied it already), and its activity regularizer's penalty
    recorded per example (``(batch,)``, in the ``"losses"`` collection where the caller made it
    mutable: the training and evaluation steps add its mean over the real examples to the loss,
    Keras's penalty divided by the batch size)."""
    if not activated:
        y = _apply_activation(layer.activation, y)
    regularizer = getattr(layer, "activity_regularizer", None)
    if regularizer is not None and module.is_mutable_collection("losses") and not module.is_initializing():
        module.sow("losses", "activity", jax.vmap(regularizer)(y.astype(jnp.float32)))
    return y


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Windowed(Layer):
    """Shared by Conv2D and the 2D pooling layers."""

    def _spatial(self, input_shape: Shape, window: tuple[int, int], strides: tuple[int, int],
                 dilation: tuple[int, int], padding: str, what: str) -> tuple[tuple[int, int], str]:
        _require_rank(self, input_shape, 3, "height, width, channels")
        h, th = _window_axis(self, "height", input_shape[0], window[0], strides[0], dilation[0], padding, what)
        w, tw = _window_axis(self, "width", input_shape[1], window[1], strides[1], dilation[1], padding, what)
        return (h, w), f"{th}; {tw}"


