"""Graph (functional) models: :class:`Node`, :class:`Model`, the functional idiom and the shape plan.

A model is a directed acyclic graph of named nodes: ``Input`` nodes (a shape) and layer nodes, each
naming the nodes whose outputs it takes. Two ways build one, as in Keras:

* the functional idiom: ``x = jaxcnn.Input((32, 32, 3)); y = Conv2D(16, 3)(x);
  model = jaxcnn.Model(inputs=x, outputs=y)`` (calling a spec on a :class:`Tensor` records a node;
  a merging layer takes a list of tensors);
* declaratively, :meth:`Model.from_nodes` (what the TOML and Keras JSON readers build).

Layers without a name get Keras's names, counted per model (``conv2d``, ``conv2d_1``, ...;
``input_layer``, ``input_layer_1`` for inputs). Every consumer (the proof, the summary, the Flax
module, the configs) reads the nodes in :attr:`Model.nodes` order, a topological order that keeps
the order the nodes were declared in wherever it can. A cycle, an unknown or unused input, a name
used twice, a layer no output depends on, a merge of shapes that do not fit: refused when the
model is built (the formulas only, before any tracing), naming the layers.

A shared layer (one spec object called at two places, Keras's node index > 0) is refused by name:
jaxcnn's parameters are keyed by the layer's name, one node each. A model used as a layer of
another (a Keras nested model) is one node, a :class:`Nested` layer.

:class:`jaxcnn.Sequential` (:mod:`jaxcnn.model`) is the special case where each layer takes the
previous one.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from jaxcnn.errors import ImpossibleShapeError, JaxcnnError, LayerArgumentError
from jaxcnn.layers import Formula, Layer, ParamShapes, Shape
from jaxcnn.layers import Input as InputSpec
from jaxcnn.layers.base import _fmt_shape

if TYPE_CHECKING:  # imports that run the other way are done inside the methods
    from jaxcnn.check import CheckResult
    from jaxcnn.summary import Summary

__all__ = ["INPUT_NAME", "Input", "LayerPlan", "Model", "Nested", "Node", "Tensor", "fresh_name", "nested_weights"]

NON_TRAINABLE_COLLECTIONS = ("batch_stats",)
INPUT_NAME = "input_layer"
"""Keras 3's name of an input (its ``InputLayer``), counted per model: ``input_layer_1``, ..."""
DEFAULT_NAME = "functional"
"""Keras 3's name of a functional model."""


def fresh_name(base: str, used: Iterable[str | None]) -> str:
    """``base``, else ``base_1``, ``base_2``, ...: the first not in ``used`` (Keras's per-model names)."""
    taken = set(used)
    candidate, n = base, 0
    while candidate in taken:
        n += 1
        candidate = f"{base}_{n}"
    return candidate


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """One layer of a model with its shapes from the formulas (batch axis excluded).

    ``input_shapes`` holds one shape per input (``inputs`` names the nodes they come from);
    ``input_shape`` is the first of them."""

    index: int
    layer: Layer
    input_shape: Shape
    output_shape: Shape
    param_shapes: ParamShapes
    input_shapes: tuple[Shape, ...] = ()
    inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.input_shapes:
            object.__setattr__(self, "input_shapes", (self.input_shape,))

    @property
    def name(self) -> str:
        return self.layer.name  # type: ignore[return-value]  # always set inside a model

    @property
    def type(self) -> str:
        return self.layer.type

    @property
    def layer_input(self) -> Any:
        """What the layer's formulas take: its input shape, or the tuple of them for a merge."""
        return self.input_shapes[0] if self.layer.num_inputs == 1 else self.input_shapes

    def _count(self, trainable: bool) -> int:
        """A frozen layer's (``trainable=False``) parameters are all non-trainable, as Keras counts; a
        nested model's are counted layer by layer (its frozen layers' as non-trainable)."""
        total = 0
        frozen = not getattr(self.layer, "trainable", True)
        if isinstance(self.layer, Nested) and not frozen:
            return sum(p._count(trainable) for p in self.layer._inner(self.layer_input).plan())
        for collection, shapes in self.param_shapes.items():
            if (frozen or collection in NON_TRAINABLE_COLLECTIONS) != trainable:
                for shape in shapes.values():
                    n = 1
                    for d in shape:
                        n *= d
                    total += n
        return total

    @property
    def trainable_params(self) -> int:
        return self._count(True)

    @property
    def non_trainable_params(self) -> int:
        return self._count(False)

    @property
    def params(self) -> int:
        return self.trainable_params + self.non_trainable_params

    def formula(self) -> Formula:
        return self.layer.formula(self.layer_input)

    def flops(self) -> int:
        return self.layer.flops(self.layer_input)

    def located(self, error: JaxcnnError) -> JaxcnnError:
        return error.located(index=self.index, layer_name=self.name, layer_type=self.type)


@dataclasses.dataclass(frozen=True)
class Node:
    """One node of a graph: ``layer`` (a spec, or an ``Input`` spec for a model input) applied to
    the outputs of the nodes named in ``inputs`` (none for an ``Input``)."""

    name: str
    layer: Layer | InputSpec
    inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            object.__setattr__(self, "inputs", (self.inputs,))
        object.__setattr__(self, "inputs", tuple(self.inputs))

    @property
    def is_input(self) -> bool:
        return isinstance(self.layer, InputSpec)

    @property
    def type(self) -> str:
        return "InputLayer" if self.is_input else self.layer.type


# --------------------------------------------------------------------------------------------
# The functional idiom.

_SERIAL = itertools.count()


class Tensor:
    """A symbolic tensor, as ``keras.KerasTensor``: the output of ``jaxcnn.Input(...)`` or of a
    layer called on tensors. ``shape`` has the batch axis as ``None``."""

    __slots__ = ("inbound", "layer", "serial")

    def __init__(self, layer: Layer | InputSpec, inbound: tuple[Tensor, ...]) -> None:
        self.layer = layer
        self.inbound = inbound
        self.serial = next(_SERIAL)

    @property
    def shape(self) -> tuple[int | None, ...]:
        """``(None, *shape)``, from the formulas."""
        if isinstance(self.layer, InputSpec):
            return (None, *self.layer.shape)
        shapes = tuple(tuple(t.shape[1:]) for t in self.inbound)
        return (None, *self.layer.output_shape(shapes[0] if self.layer.num_inputs == 1 else shapes))

    def __repr__(self) -> str:
        return f"<Tensor shape={self.shape} from {self.layer.type}>"

    # ``x + 3.0``, ``x * y``, ``3.0 - x``: as on a Keras tensor, an Add, Multiply or Subtract node (with
    # ``constant`` for a number), named as Keras names them (``add``, ``add_1``, ...).
    def _operation(self, kind: str, other: Any, *, reflected: bool = False) -> Tensor:
        from jaxcnn import layers

        cls = getattr(layers, kind)
        if isinstance(other, (Tensor, InputSpec)):
            pair = [other, self] if reflected else [self, other]
            return call_layer(cls(), pair)
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            return NotImplemented
        extra = {"constant_first": True} if reflected and kind == "Subtract" else {}
        return call_layer(cls(constant=float(other), **extra), self)

    def __add__(self, other: Any) -> Tensor:
        return self._operation("Add", other)

    def __radd__(self, other: Any) -> Tensor:
        return self._operation("Add", other, reflected=True)

    def __sub__(self, other: Any) -> Tensor:
        return self._operation("Subtract", other)

    def __rsub__(self, other: Any) -> Tensor:
        return self._operation("Subtract", other, reflected=True)

    def __mul__(self, other: Any) -> Tensor:
        return self._operation("Multiply", other)

    def __rmul__(self, other: Any) -> Tensor:
        return self._operation("Multiply", other, reflected=True)


def Input(shape: Sequence[int], name: str | None = None) -> Tensor:
    """``jaxcnn.Input(shape)``: a model input, as ``keras.Input`` (``shape`` without the batch axis)."""
    return Tensor(InputSpec(tuple(shape), name=name), ())


def _tensor(value: Any) -> Any:
    """``value``, or for a ``jaxcnn.layers.Input`` spec its tensor (the same one each time, so that
    ``keras.layers.Input``'s idiom works with the spec too)."""
    if isinstance(value, InputSpec):
        if "_jaxcnn_tensor" not in vars(value):
            object.__setattr__(value, "_jaxcnn_tensor", Tensor(value, ()))
        return vars(value)["_jaxcnn_tensor"]
    return value


def call_layer(layer: Layer, inputs: Any) -> Tensor:
    """``layer(inputs)`` in the functional idiom: a new :class:`Tensor`; ``inputs`` is one tensor,
    or a list of two or more for a merging layer."""
    many = layer.num_inputs != 1
    given = tuple(map(_tensor, inputs)) if isinstance(inputs, (list, tuple)) else (_tensor(inputs),)
    if not all(isinstance(t, Tensor) for t in given) or not given:
        raise LayerArgumentError(
            f"is called on {inputs!r}, not on a tensor from jaxcnn.Input(...) or another layer's call",
            layer_name=layer.name, layer_type=layer.type)
    if many and (not isinstance(inputs, (list, tuple)) or len(given) < 2):
        raise LayerArgumentError("merges two or more tensors: call it on a list of them",
                                 layer_name=layer.name, layer_type=layer.type)
    if not many and len(given) != 1:
        raise LayerArgumentError(f"takes one tensor, got {len(given)}",
                                 layer_name=layer.name, layer_type=layer.type)
    if layer.input_shape is not None:
        raise LayerArgumentError(
            f"`input_shape` (={layer.input_shape}) belongs to the first layer of a Sequential; in a "
            "functional model the shape is jaxcnn.Input(shape)'s", layer_name=layer.name, layer_type=layer.type)
    return Tensor(layer, given)


def _as_tensors(value: Any, what: str) -> tuple[Tensor, ...]:
    given = tuple(map(_tensor, value)) if isinstance(value, (list, tuple)) else (_tensor(value),)
    if not given or not all(isinstance(t, Tensor) for t in given):
        raise LayerArgumentError(f"the model's `{what}` (={value!r}) must be a tensor or a list of "
                                 "tensors from jaxcnn.Input(...) and layer calls", key=what)
    return given


def _nodes_of(inputs: tuple[Tensor, ...], outputs: tuple[Tensor, ...]) -> tuple[list[Node], list[str], list[str]]:
    """The nodes that ``outputs`` depend on, in creation order, named as Keras names them."""
    seen: dict[int, Tensor] = {}
    stack = list(outputs)
    while stack:
        t = stack.pop()
        if id(t) not in seen:
            seen[id(t)] = t
            stack.extend(t.inbound)
    for t in inputs:
        if not isinstance(t.layer, InputSpec):
            raise LayerArgumentError(f"the model's inputs must come from jaxcnn.Input(...), not from a "
                                     f"{t.layer.type} call", key="inputs", layer_type=t.layer.type)
        seen.setdefault(id(t), t)  # an unused input is refused, by name, by from_nodes
    tensors = sorted(seen.values(), key=lambda t: t.serial)
    calls: dict[int, list[Tensor]] = {}
    for t in tensors:
        calls.setdefault(id(t.layer), []).append(t)
    used = {t.layer.name for t in tensors if t.layer.name is not None}
    names: dict[int, str] = {}
    for t in tensors:
        if id(t.layer) in names:
            continue
        if t.layer.name is None:
            base = INPUT_NAME if isinstance(t.layer, InputSpec) else type(t.layer).default_name()
            name = fresh_name(base, used)
            used.add(name)
        else:
            name = t.layer.name
        names[id(t.layer)] = name
        if len(calls[id(t.layer)]) > 1 and not isinstance(t.layer, InputSpec):
            raise LayerArgumentError(
                f"is called at {len(calls[id(t.layer)])} places (a shared layer); jaxcnn keys parameters "
                "by layer name, one place each: create one layer per place", layer_name=name,
                layer_type=t.layer.type)
    tensor_names = {id(t): names[id(t.layer)] for t in tensors}
    nodes = [Node(tensor_names[id(t)], dataclasses.replace(t.layer, name=tensor_names[id(t)]),
                  tuple(tensor_names[id(i)] for i in t.inbound)) for t in tensors]
    return nodes, [tensor_names[id(t)] for t in inputs], [tensor_names[id(t)] for t in outputs]


# --------------------------------------------------------------------------------------------
# The model.


def _names(names: Any, what: str) -> tuple[str, ...]:
    given = (names,) if isinstance(names, str) else tuple(names)
    if not given or not all(isinstance(n, str) and n for n in given):
        raise LayerArgumentError(f"`{what}` (={names!r}) must be a non-empty list of node names", key=what)
    return given


def _validate(nodes: Sequence[Node], inputs: tuple[str, ...], outputs: tuple[str, ...]) -> tuple[Node, ...]:
    """``nodes`` in topological order (declaration order kept where it can be), or the refusal
    naming the layers: a name used twice, an unknown, unused or missing input, a cycle, a layer
    that no output depends on."""
    by_name: dict[str, Node] = {}
    for position, node in enumerate(nodes):
        if not isinstance(node, Node):
            raise LayerArgumentError(f"node {position} is {node!r}, not a jaxcnn.graph.Node")
        if not isinstance(node.name, str) or not node.name:
            raise LayerArgumentError(f"node {position}'s `name` (={node.name!r}) must be a non-empty string")
        if not isinstance(node.layer, (Layer, InputSpec)):
            raise LayerArgumentError(f"is {node.layer!r}, not a layer from jaxcnn.layers", layer_name=node.name)
        if node.name in by_name:
            raise LayerArgumentError(
                f"`name` (={node.name!r}) is used by two layers ({by_name[node.name].type} and "
                f"{node.type}); names must be unique", layer_name=node.name, layer_type=node.type)
        if node.layer.name not in (None, node.name):
            raise LayerArgumentError(f"the node is named {node.name!r} but its layer {node.layer.name!r}",
                                     layer_name=node.name, layer_type=node.type)
        by_name[node.name] = node
    for node in nodes:
        where = {"layer_name": node.name, "layer_type": node.type}
        if node.is_input:
            if node.inputs:
                raise LayerArgumentError("an Input takes no inputs", key="inputs", **where)
            if node.name not in inputs:
                raise LayerArgumentError("is an Input that is not among the model's inputs "
                                         f"({', '.join(inputs)})", **where)
            continue
        for name in node.inputs:
            if name not in by_name:
                known = ", ".join(n for n in by_name if n != node.name)
                raise LayerArgumentError(f"takes an unknown input {name!r}; the nodes are: {known}",
                                         key="inputs", **where)
        if node.layer.num_inputs == 1 and len(node.inputs) != 1:
            raise LayerArgumentError(f"takes one input, got {len(node.inputs)} ({', '.join(node.inputs) or 'none'})",
                                     key="inputs", **where)
        if node.layer.num_inputs is None and len(node.inputs) < 2:
            raise LayerArgumentError(f"merges two or more inputs, got {len(node.inputs)} "
                                     f"({', '.join(node.inputs) or 'none'})", key="inputs", **where)
    for what, names in (("inputs", inputs), ("outputs", outputs)):
        for name in names:
            if name not in by_name:
                raise LayerArgumentError(f"the model's {what} name an unknown node {name!r}; the nodes "
                                         f"are: {', '.join(by_name)}", key=what)
        if len(set(names)) != len(names):
            raise LayerArgumentError(f"the model's {what} ({', '.join(names)}) name a node twice", key=what)
    for name in inputs:
        if not by_name[name].is_input:
            raise LayerArgumentError("is among the model's inputs but is not an Input", key="inputs",
                                     layer_name=name, layer_type=by_name[name].type)
    for name in outputs:
        if by_name[name].is_input:
            raise LayerArgumentError("an Input cannot be an output", key="outputs", layer_name=name,
                                     layer_type="InputLayer")
    order = _topological(nodes)
    needed = set(outputs)
    for node in reversed(order):
        if node.name in needed:
            needed.update(node.inputs)
    for node in order:
        if node.name not in needed:
            what = "input" if node.is_input else "layer"
            raise LayerArgumentError(f"is an unused {what}: no output of the model depends on it "
                                     f"(outputs: {', '.join(outputs)})", layer_name=node.name,
                                     layer_type=node.type)
    return order


def _topological(nodes: Sequence[Node]) -> tuple[Node, ...]:
    """Kahn's order, taking the earliest declared ready node first; a cycle is refused."""
    pending = list(nodes)
    done: set[str] = set()
    order: list[Node] = []
    while pending:
        for i, node in enumerate(pending):
            if all(name in done for name in node.inputs):
                order.append(pending.pop(i))
                done.add(node.name)
                break
        else:
            raise _cycle({n.name: n for n in pending})
    return tuple(order)


def _cycle(pending: dict[str, Node]) -> LayerArgumentError:
    """The refusal of a cycle among ``pending`` (nodes each with an input among them), naming it."""
    walk = [next(iter(pending))]
    while True:
        step = next(name for name in pending[walk[-1]].inputs if name in pending)
        if step in walk:
            cycle = [*walk[walk.index(step):], step]
            break
        walk.append(step)
    first = pending[cycle[0]]
    return LayerArgumentError(
        f"is in a cycle: {' <- '.join(repr(n) for n in cycle)} (each takes the output of the next; a graph "
        "model must be acyclic)", layer_name=first.name, layer_type=first.type, key="inputs")


class Model:
    """A graph of layers, as ``keras.Model`` (functional).

    ``Model(inputs=x, outputs=y, name=...)`` with tensors of the functional idiom, or
    :meth:`from_nodes` with :class:`Node` values. The model is checked at construction (see the
    module's docstring) and planned: an impossible shape is refused here, naming the layer.
    """

    def __init__(self, inputs: Any, outputs: Any, *, name: str = DEFAULT_NAME) -> None:
        nodes, input_names, output_names = _nodes_of(_as_tensors(inputs, "inputs"), _as_tensors(outputs, "outputs"))
        self._set_graph(nodes, input_names, output_names, name)

    @classmethod
    def from_nodes(cls, nodes: Sequence[Node], *, inputs: Sequence[str], outputs: Sequence[str],
                   name: str = DEFAULT_NAME) -> Model:
        """The model of ``nodes`` (any order without a cycle), whose inputs are the ``Input`` nodes
        named in ``inputs`` and whose outputs are the nodes named in ``outputs``."""
        model = cls.__new__(cls)
        Model._set_graph(model, nodes, inputs, outputs, name)
        return model

    def _set_graph(self, nodes: Sequence[Node], inputs: Sequence[str], outputs: Sequence[str], name: str) -> None:
        if not isinstance(name, str) or not name:
            raise LayerArgumentError(f"the model's `name` (={name!r}) must be a non-empty string")
        self._name = name
        self._input_names = _names(inputs, "inputs")
        self._output_names = _names(outputs, "outputs")
        nodes = [dataclasses.replace(n, layer=Nested(model=n.layer, name=n.name))
                 if isinstance(n, Node) and isinstance(n.layer, Model) else n for n in nodes]
        nodes = [dataclasses.replace(n, layer=dataclasses.replace(n.layer, name=n.name))
                 if isinstance(n, Node) and isinstance(n.layer, (Layer, InputSpec)) and n.layer.name is None
                 else n for n in nodes]
        self._nodes = _validate(nodes, self._input_names, self._output_names)
        self.plan()

    def __call__(self, inputs: Any) -> Tensor:
        """The model as a layer of another (a nested model), in the functional idiom."""
        return call_layer(Nested(model=self, name=self.name), inputs)

    # ---- accessors ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def nodes(self) -> tuple[Node, ...]:
        """Every node, inputs included, in topological order."""
        return self._nodes

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._input_names

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._output_names

    @property
    def is_graph(self) -> bool:
        """True for a graph model, False for a :class:`~jaxcnn.Sequential` (each layer takes the
        previous one; its summary has no input rows and no ``Connected to`` column)."""
        return True

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layer specs in topological order, each with its name; ``Input`` nodes excluded."""
        return tuple(n.layer for n in self.nodes if not n.is_input)  # type: ignore[misc]

    @property
    def input_shapes(self) -> tuple[Shape, ...]:
        """One ``(height, width, channels)`` a model input, without the batch axis."""
        by_name = {n.name: n for n in self.nodes}
        return tuple(by_name[name].layer.shape for name in self.input_names)  # type: ignore[union-attr]

    @property
    def input_shape(self) -> Shape:
        """The input shape of a model with one input."""
        return self._single(self.input_shapes, self.input_names, "input")

    @property
    def output_shapes(self) -> tuple[Shape, ...]:
        shapes = {p.name: p.output_shape for p in self.plan()}
        return tuple(shapes[name] for name in self.output_names)

    @property
    def output_shape(self) -> Shape:
        """The output shape of a model with one output."""
        return self._single(self.output_shapes, self.output_names, "output")

    def _single(self, shapes: tuple[Shape, ...], names: tuple[str, ...], what: str) -> Shape:
        if len(shapes) != 1:
            raise LayerArgumentError(f"the model has {len(shapes)} {what}s ({', '.join(names)}): use "
                                     f"`{what}_shapes`", key=f"{what}_shape")
        return shapes[0]

    def with_input_shape(self, input_shape: Sequence[int]) -> Model:
        """The same graph on another input shape (a model with one input)."""
        self.input_shape  # noqa: B018 - refuses a model with several inputs
        (name,) = self.input_names
        nodes = [dataclasses.replace(n, layer=InputSpec(tuple(input_shape), name=name)) if n.name == name else n
                 for n in self.nodes]
        return Model.from_nodes(nodes, inputs=self.input_names, outputs=self.output_names, name=self.name)

    def plan(self) -> tuple[LayerPlan, ...]:
        """Every layer's shapes from the closed-form formulas, batch axis excluded, in
        :attr:`layers` order.

        Raises:
          ImpossibleShapeError: a layer cannot take its inputs (named by index, name and type; a
            merge's message names the layers its inputs come from).
        """
        shapes: dict[str, Shape] = {}
        out = []
        for node in self.nodes:
            if node.is_input:
                shapes[node.name] = node.layer.shape  # type: ignore[union-attr]
                continue
            out.append(_plan_node(len(out), node, tuple(shapes[name] for name in node.inputs)))
            shapes[node.name] = out[-1].output_shape
        return tuple(out)

    def count_params(self) -> int:
        """Total parameters, trainable and not (as Keras's ``count_params``)."""
        return sum(p.params for p in self.plan())

    def trainable_params(self) -> int:
        return sum(p.trainable_params for p in self.plan())

    def non_trainable_params(self) -> int:
        return sum(p.non_trainable_params for p in self.plan())

    def frozen(self) -> Model:
        """This model with every layer frozen (``trainable=False``), a nested model's too, carrying
        its weights: Keras's ``model.trainable = False`` on a transfer-learning base (a frozen
        BatchNormalization keeps its statistics and runs in inference mode)."""
        nodes = [n if n.is_input else dataclasses.replace(n, layer=_frozen_layer(n.layer)) for n in self.nodes]
        new = Model.from_nodes(nodes, inputs=self.input_names, outputs=self.output_names, name=self.name)
        new.weights = self.weights
        return new

    #: Trained variables read from a Keras file (:class:`jaxcnn.keras.weights.Weights`), which
    #: ``compile(model).init()`` starts from; ``None``: the initializers draw them.
    weights: Any = None

    def with_weights(self, weights: Any) -> Model:
        """This model carrying ``weights`` (read against its plan: see :mod:`jaxcnn.keras.weights`)."""
        new = copy.copy(self)
        new.weights = weights
        return new

    def identity(self) -> tuple[Any, ...]:
        """A hashable value equal for equal models (the proof's memo key)."""
        return (type(self).__name__, self.name, self.nodes, self.input_names, self.output_names)

    # ---- delegations to the modules above -----------------------------------------------
    def check(self, **kwargs: Any) -> CheckResult:
        """Prove every layer's shapes with ``jax.eval_shape``; see :func:`jaxcnn.check.check`."""
        from jaxcnn.check import check

        return check(self, **kwargs)

    def summarize(self, **kwargs: Any) -> Summary:
        """The summary as an object (rows, totals, ``.text()``, ``.to_json()``); see
        :func:`jaxcnn.summary.summarize`."""
        from jaxcnn.summary import summarize

        return summarize(self, **kwargs)

    def summary(
        self,
        format: str = "text",
        *,
        flops: bool = False,
        columns: Sequence[str] = (),
        print_fn: Callable[[str], Any] | None = print,
        width: int | None = None,
        **kwargs: Any,
    ) -> str | None:
        """Print the summary as Keras does (``format="text"``), or as a rich table or JSON.

        With ``print_fn=None`` the text is returned instead of printed. Long formula and lowering
        cells wrap to ``width`` characters (default: the terminal's width).
        """
        from jaxcnn.summary import render

        text = render(self.summarize(**kwargs), format=format, flops=flops, columns=columns, width=width)
        if print_fn is None:
            return text
        print_fn(text)
        return None

    def module(self) -> Any:
        """The Flax linen module; see :func:`jaxcnn.flax_module.build_module`."""
        from jaxcnn.flax_module import build_module

        return build_module(self)

    def to_toml(self) -> str:
        """The model as a TOML config that :func:`jaxcnn.load` reads back equal."""
        from jaxcnn.config import to_toml

        return to_toml(self)

    def save(self, path: str) -> None:
        """Write :meth:`to_toml` to ``path``."""
        from jaxcnn.config import save

        save(self, path)

    # ---- value semantics ----------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Model) or type(other) is not type(self):
            return NotImplemented
        return self.identity() == other.identity()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        nodes = ",\n  ".join(repr(node) for node in self.nodes)
        return (f"Model.from_nodes([\n  {nodes}\n], inputs={list(self.input_names)}, "
                f"outputs={list(self.output_names)}, name={self.name!r})")


def _plan_node(index: int, node: Node, input_shapes: tuple[Shape, ...]) -> LayerPlan:
    layer: Layer = node.layer  # type: ignore[assignment]
    arg: Any = input_shapes[0] if layer.num_inputs == 1 else input_shapes
    try:
        output_shape = layer.output_shape(arg)
        param_shapes = layer.param_shapes(arg)
    except JaxcnnError as error:
        if layer.num_inputs != 1:
            error = copy.copy(error)
            error.detail += f" (its inputs come from {', '.join(repr(n) for n in node.inputs)})"
        raise error.located(index=index, layer_name=layer.name, layer_type=layer.type) from None
    if any(d < 1 for d in output_shape):  # defensive: formulas raise before this
        raise ImpossibleShapeError(f"output shape {output_shape} has a size below 1", index=index,
                                   layer_name=layer.name, layer_type=layer.type)
    return LayerPlan(index, layer, input_shapes[0], output_shape, param_shapes, input_shapes, node.inputs)



def _frozen_layer(layer: Layer) -> Layer:
    """``layer`` with ``trainable=False``; a nested model's layers all frozen too."""
    if isinstance(layer, Nested):
        return dataclasses.replace(layer, model=layer.model.frozen(), trainable=False)
    return dataclasses.replace(layer, trainable=False)


def nested_weights(model: Model) -> Any:
    """The weights that ``model``'s nested models carry (read from their Keras files), under their
    names, as one partial :class:`jaxcnn.keras.weights.Weights` that ``compile(model).init()`` starts
    from (its other layers from their initializers); ``None`` where no nested model carries any."""
    params: dict[str, Any] = {}
    batch_stats: dict[str, Any] = {}
    sources: list[str] = []
    for layer in model.layers:
        if not isinstance(layer, Nested):
            continue
        weights = layer.model.weights if layer.model.weights is not None else nested_weights(layer.model)
        if weights is None:
            continue
        params[layer.name] = weights.params
        if weights.batch_stats:
            batch_stats[layer.name] = weights.batch_stats
        sources.append(weights.source)
    if not sources:
        return None
    from jaxcnn.keras.weights import Weights

    return Weights(params, batch_stats, "; ".join(dict.fromkeys(sources)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Nested(Layer):
    """A model used as a layer of another, as Keras nests a ``Sequential`` or a functional model:
    one node, named as the model (``Nested(model=m, name=m.name)``; ``Sequential.add(m)``,
    ``m(x)`` and a :class:`Node` whose layer is a model make one). Its variables are its layers',
    under its name (``params[nested][conv2d][kernel]``; the plan's parameter names are
    ``conv2d/kernel``); it takes its model's input shape (a one-input model may take another that its
    layers fit) and gives its output.

    ``path``: the file the model was read from, as a jaxcnn config's ``type = "Model"`` table wrote
    it (relative to that config's folder), and ``file`` its absolute path; :meth:`Model.to_toml`
    writes ``path`` back, :meth:`Model.save` the path from the new config's folder to ``file``. Both
    ``None`` for a model built in Python or nested inside a Keras file, which a TOML config cannot
    hold. Neither takes part in ``==``: two nested models are equal when their models are."""

    model: Model
    path: str | None = dataclasses.field(default=None, compare=False)
    file: str | None = dataclasses.field(default=None, compare=False, repr=False)

    has_params: ClassVar[bool] = True
    mixes_positions: ClassVar[bool] = True  # the receptive field is not followed inside it
    uses_mask: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.model, Model):
            raise LayerArgumentError(f"`model` (={self.model!r}) must be a jaxcnn model", layer_type="Nested")
        if len(self.model.output_names) != 1:
            raise LayerArgumentError(f"a nested model must have one output, not {len(self.model.output_names)} "
                                     f"({', '.join(self.model.output_names)})", layer_name=self.name,
                                     layer_type=self.type)

    def __hash__(self) -> int:  # a model is not hashable (a Sequential can grow); equal ones share this
        return hash((self.name, self.model.name, len(self.model.layers)))

    @property
    def type(self) -> str:
        """``Sequential`` or ``Functional``, as Keras 3 prints a nested model's class."""
        return "Functional" if self.model.is_graph else "Sequential"

    @property
    def num_inputs(self) -> int | None:  # type: ignore[override]
        return 1 if len(self.model.input_names) == 1 else None

    def _inner(self, input_shape: Any) -> Model:
        shapes = (tuple(input_shape),) if self.num_inputs == 1 else tuple(map(tuple, input_shape))
        try:
            if self.model.input_shapes == shapes:
                return self.model
        except LayerArgumentError:  # a Sequential without an input shape takes the one it is given
            pass
        if self.num_inputs != 1:
            raise ImpossibleShapeError(f"the nested model takes inputs {', '.join(map(_fmt_shape, self.model.input_shapes))}, "
                                       f"not {', '.join(map(_fmt_shape, shapes))}", layer_type=self.type)
        return self.model.with_input_shape(shapes[0])

    def output_shape(self, input_shape: Any) -> Shape:
        return self._inner(input_shape).output_shape

    def param_shapes(self, input_shape: Any) -> ParamShapes:
        out: ParamShapes = {}
        for p in self._inner(input_shape).plan():
            for collection, shapes in p.param_shapes.items():
                for key, shape in shapes.items():
                    out.setdefault(collection, {})[f"{p.name}/{key}"] = shape
        return out

    def formula(self, input_shape: Any) -> Formula:
        plan = self._inner(input_shape).plan()
        total = sum(p.params for p in plan)
        return Formula(output=f"the nested model's output = {_fmt_shape(plan[-1].output_shape)}",
                       params=f"the sum over its {len(plan)} layers = {total:,}")

    def flops(self, input_shape: Any) -> int:
        return sum(p.flops() for p in self._inner(input_shape).plan())

    def forward(self, module: Any, x: Any, *, train: bool, mask: Any = None) -> Any:
        from jaxcnn.flax_module import apply_graph, wiring

        wires = wiring(self.model)
        _, result = apply_graph(self.model.layers, wires.get("inbound"), wires.get("input_names", ()),
                                wires.get("output_names", ()), x, lowering=module.lowering, train=train, mask=mask)
        return result
