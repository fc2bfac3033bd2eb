"""``Sequential``: an ordered layer list with Keras's per-model names, and its shape plan.

The plan is the closed-form side of the proof: for every layer, its input and output shapes and
parameter shapes from the formulas in :mod:`jaxcnn.layers`. ``check()`` compares it with
``jax.eval_shape`` of the real Flax code; ``summary()`` prints it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from jaxcnn.errors import LayerArgumentError
from jaxcnn.graph import INPUT_NAME, LayerPlan, Model, Nested, Node, Tensor, _frozen_layer, _plan_node, fresh_name
from jaxcnn.layers import Input, Layer, Shape

__all__ = ["LayerPlan", "Model", "Sequential"]


class Sequential(Model):
    """A linear stack of layers, as ``keras.Sequential``.

    Args:
      layers: layer specs from :mod:`jaxcnn.layers`; the first may be an ``Input(shape)`` or carry
        ``input_shape=`` as in the Keras notebooks.
      name: the model's name, printed on the summary's ``Model:`` line.
      input_shape: ``(height, width, channels)``, when neither of the above gives it.

    Layers without a name get Keras's names, counted per model: ``conv2d``, ``conv2d_1``, ...
    """

    def __init__(
        self,
        layers: Iterable[Layer | Input] = (),
        *,
        name: str = "sequential",
        input_shape: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise LayerArgumentError(f"the model's `name` (={name!r}) must be a non-empty string")
        self._name = name
        self._input_shape: Shape | None = None
        if input_shape is not None:
            self._input_shape = Input(tuple(input_shape)).shape
        self._layers: tuple[Layer, ...] = ()
        for layer in layers:
            self.add(layer)

    # ---- construction -------------------------------------------------------------------
    def add(self, layer: Layer | Input | Tensor) -> None:
        """Append a layer (``model.add(Conv2D(...))``, as in the Keras notebooks); the first may be
        an input, ``jaxcnn.Input(shape)`` or the spec ``jaxcnn.layers.Input(shape)``."""
        index = len(self._layers)
        if isinstance(layer, Tensor) and isinstance(layer.layer, Input):
            layer = layer.layer
        if isinstance(layer, Model):  # a nested model: one layer, named as the model
            layer = Nested(model=layer, name=layer.name)
        if isinstance(layer, Input):
            if index or self._input_shape is not None:
                raise LayerArgumentError(
                    "Input(shape) must come first, and only once", index=index, layer_type="Input")
            self._input_shape = layer.shape
            return
        if not isinstance(layer, Layer):
            raise LayerArgumentError(
                f"is {layer!r} ({type(layer).__name__}), not a layer from jaxcnn.layers", index=index)
        if layer.num_inputs != 1:
            raise LayerArgumentError(
                "merges several inputs, which a Sequential cannot give it: build a graph model "
                "(jaxcnn.Model, or `inputs = [...]` in a TOML config)", index=index, layer_name=layer.name,
                layer_type=layer.type)
        used = {lay.name for lay in self._layers}
        if layer.name is None:
            layer = dataclasses.replace(layer, name=fresh_name(type(layer).default_name(), used))
        elif layer.name in used:
            raise LayerArgumentError(
                f"`name` (={layer.name!r}) is already used by another layer; names must be unique",
                index=index, layer_name=layer.name, layer_type=layer.type)
        if layer.input_shape is not None:
            if index or self._input_shape is not None:
                raise LayerArgumentError(
                    f"`input_shape` (={layer.input_shape}) is only accepted on the first layer",
                    index=index, layer_name=layer.name, layer_type=layer.type)
            self._input_shape = layer.input_shape
            layer = dataclasses.replace(layer, input_shape=None)
        elif not index and self._input_shape is None and isinstance(layer, Nested):
            self._input_shape = _nested_input_shape(layer)  # Keras: Sequential([base, ...]) takes base's input
        self._layers = (*self._layers, layer)

    def frozen(self) -> Sequential:
        """This model with every layer frozen, carrying its weights (:meth:`Model.frozen`)."""
        new = Sequential([_frozen_layer(layer) for layer in self._layers], name=self._name,
                         input_shape=self._input_shape)
        new.weights = self.weights
        return new

    def with_input_shape(self, input_shape: Sequence[int]) -> Sequential:
        """The same layers on another input shape (``jaxcnn summary --input-shape``)."""
        return Sequential(self._layers, name=self._name, input_shape=tuple(input_shape))

    # ---- accessors (``name`` is Model's) ---------------------------------------------------
    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layer specs, each with its name set (``input_shape`` lives on the model)."""
        return self._layers

    @property
    def input_shape(self) -> Shape:
        """``(height, width, channels)``, without the batch axis."""
        if self._input_shape is None:
            raise LayerArgumentError(
                "the model has no input shape: give `input_shape=` on the first layer, start with "
                "Input(shape), or pass Sequential(..., input_shape=...)", key="input_shape")
        return self._input_shape

    @property
    def input_shapes(self) -> tuple[Shape, ...]:
        return (self.input_shape,)

    @property
    def output_shapes(self) -> tuple[Shape, ...]:
        return (self.output_shape,)

    @property
    def output_shape(self) -> Shape:
        plan = self.plan()
        return plan[-1].output_shape if plan else self.input_shape

    @property
    def is_graph(self) -> bool:
        return False

    @property
    def input_names(self) -> tuple[str, ...]:
        """The name of the input node (``input_layer``, unless a layer has that name)."""
        return (fresh_name(INPUT_NAME, (layer.name for layer in self._layers)),)

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self._layers[-1].name,) if self._layers else ()  # type: ignore[return-value]

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The input node, then each layer taking the previous node."""
        (previous,) = self.input_names
        nodes = [Node(previous, Input(self.input_shape, name=previous))]
        for layer in self._layers:
            nodes.append(Node(layer.name, layer, (previous,)))  # type: ignore[arg-type]
            previous = layer.name  # type: ignore[assignment]
        return tuple(nodes)

    def identity(self) -> tuple[Any, ...]:
        return ("Sequential", self._name, self._input_shape, self._layers)

    def plan(self) -> tuple[LayerPlan, ...]:
        """Every layer's shapes from the closed-form formulas, batch axis excluded.

        Raises:
          ImpossibleShapeError: a layer cannot take its input (named by index, name and type).
        """
        if not self._layers:
            raise LayerArgumentError("the model has no layers")
        out: list[LayerPlan] = []
        shape, previous = self.input_shape, self.input_names[0]
        for index, layer in enumerate(self._layers):
            out.append(_plan_node(index, Node(layer.name, layer, (previous,)), (shape,)))  # type: ignore[arg-type]
            shape, previous = out[-1].output_shape, layer.name  # type: ignore[assignment]
        return tuple(out)

    # ---- value semantics ----------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequential):
            return NotImplemented
        return self.identity() == other.identity()

    __hash__ = None  # type: ignore[assignment]  # mutable through add()

    def __repr__(self) -> str:
        layers = ",\n  ".join(repr(layer) for layer in self._layers)
        return f"Sequential([\n  {layers}\n], name={self._name!r}, input_shape={self._input_shape})"


def _nested_input_shape(layer: Nested) -> Shape | None:
    """The input shape of a nested model with one input that has one, else ``None``."""
    try:
        return layer.model.input_shape
    except LayerArgumentError:
        return None
