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
``reshaping``, ``core``, ``regularization``, ``activations``, ``normalization``, as Keras's own source
is laid out): defining it registers it in :data:`LAYER_TYPES` under its class name. Shapes are ``(height, width, channels)`` for images,
``(features,)`` after ``Flatten``; the batch axis is never part of a spec's shapes.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Mapping
from typing import Any, ClassVar

import jax

from jaxcnn import lowerings
from jaxcnn.errors import ImpossibleShapeError, LayerArgumentError
from jaxcnn.layers.activation_functions import ACTIVATION_ALIASES, ACTIVATIONS
from jaxcnn.layers.initializers import INITIALIZERS, MATRIX_INITIALIZERS

__all__ = ["FLOPS_CONVENTION", "LAYER_TYPES", "Formula", "Input", "Layer", "ParamShapes", "Shape", "snake_case"]

_REGISTRY: dict[str, type[Layer]] = {}
LAYER_TYPES: Mapping[str, type[Layer]] = types.MappingProxyType(_REGISTRY)
"""Every layer kind by its Keras class name (for configs and Keras JSON), in definition order."""

Shape = tuple[int, ...]
ParamShapes = dict[str, dict[str, Shape]]

FLOPS_CONVENTION = (
    "forward FLOPs per example: 2 per multiply-accumulate of Conv2D and Dense (every kernel tap, "
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


def _initializer(layer: str, arg: str, value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in INITIALIZERS:
        raise _fail(
            layer, arg, value, f"is not a known initializer; known: {', '.join(INITIALIZERS)}"
        )
    return value.lower()


def _weights(layer: Layer) -> dict[str, Any]:
    """The normalized arguments Conv2D and Dense share (activation, bias, initializers)."""
    t = layer.type
    use_bias = _bool(t, "use_bias", layer.use_bias)
    bias_initializer = _initializer(t, "bias_initializer", layer.bias_initializer)
    if use_bias and bias_initializer in MATRIX_INITIALIZERS:
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
        _set(self, input_shape=_shape(self.type, "input_shape", self.input_shape))

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Windowed(Layer):
    """Shared by Conv2D and the 2D pooling layers."""

    def _spatial(self, input_shape: Shape, window: tuple[int, int], strides: tuple[int, int],
                 dilation: tuple[int, int], padding: str, what: str) -> tuple[tuple[int, int], str]:
        _require_rank(self, input_shape, 3, "height, width, channels")
        h, th = _window_axis(self, "height", input_shape[0], window[0], strides[0], dilation[0], padding, what)
        w, tw = _window_axis(self, "width", input_shape[1], window[1], strides[1], dilation[1], padding, what)
        return (h, w), f"{th}; {tw}"


