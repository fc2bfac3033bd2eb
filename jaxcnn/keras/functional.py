"""Keras functional (graph) models and nested models, read into a plain intermediate.

:func:`keras_graph` reads a Keras model document (``Functional``/``Model``, or a ``Sequential``
that nests a model) into a :class:`KerasGraph`: its nodes in topological order, each a
:class:`KerasNode` ``(name, layer, inputs)`` with the field names of ``jaxcnn.graph.Node``, and the
names of its input and output nodes. :func:`graph_model` turns that into a jaxcnn graph model with
``jaxcnn.graph.Model.from_nodes``.

The ``inbound_nodes`` of a layer entry are read in both forms Keras writes:

* Keras 3: ``[{"args": [TENSOR], "kwargs": {...}}, ...]``, or ``[{"args": [[TENSOR, TENSOR]], ...}]``
  for a merging layer, where ``TENSOR`` is ``{"class_name": "__keras_tensor__", "config":
  {"keras_history": [layer_name, node_index, tensor_index], ...}}``;
* tf.keras 2 (and Keras 2.2): ``[[[layer_name, node_index, tensor_index, kwargs], ...], ...]``.

Node names: a layer's first node (its first call in the model) is named as the layer; its node ``k``
(``k >= 1``, the layer shared, called ``k + 1`` times) is named ``"layer@k"``, and all the nodes of
one layer hold the same spec object. Node indices are Keras's: the position in the layer's
``inbound_nodes``, except that a nested model's first call is node 1 in tf.keras 2 (everywhere) and
a nested Functional's in Keras 3's ``input_layers``/``output_layers`` (Keras counts the node that
links the nested model's own input to its output; tf.keras 2 leaves it out for a Sequential that
was never built, whose node 1 is then read as its first call too).

A Keras 3 operation on one tensor and one number (``x + 3.0``, ``x * (1 / 6)``: MobileNetV3's hard
sigmoid, written as ``keras.src.ops.numpy.Add``/``Multiply``) is an ``Add``/``Multiply``/``Subtract``
node with ``constant`` (``x / c``: a ``Rescaling``).

A nested model (a ``Sequential``, ``Functional`` or ``Model`` entry among the layers) is a node whose
layer is a :class:`KerasGraph`, read recursively; its layers are located in errors as
``outer/inner``. A nested Sequential without an input layer has no input node: its first node has no
inputs, and takes the input of the node that calls the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from jaxcnn.config import _is_int
from jaxcnn.errors import JaxcnnError, ConfigError, UnsupportedError, describe_value
from jaxcnn.keras.json import (
    MODEL_CLASSES,
    _batch_shape,
    _entry,
    _entry_batch_shape,
    _js,
    _keras_input_layer,
    _model_class,
    _model_options,
    keras_layer,
)
from jaxcnn.layers import Input, snake_case

__all__ = ["KerasGraph", "KerasNode", "LayerReader", "graph_model", "keras_graph"]

#: Why a graph model is refused while ``jaxcnn.graph`` is missing.
#: Reads one layer entry: ``(class_name, config, where) -> (spec, BatchNormalization axis or None)``
#: (:func:`jaxcnn.keras.json.keras_layer`).
LayerReader = Callable[[str, Mapping[str, Any], dict[str, Any]], tuple[Any, int | None]]


class KerasNode(NamedTuple):
    """One node of a Keras graph: ``layer`` applied to the outputs of the nodes named ``inputs``.

    ``layer`` is a layer spec, an :class:`~jaxcnn.layers.Input` (no inputs), or a nested
    :class:`KerasGraph`. Several nodes hold the same layer object where Keras shares the layer."""

    name: str
    layer: Any
    inputs: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class KerasGraph:
    """A Keras model read from JSON: nodes in topological order, input and output node names.

    ``class_name`` is Keras's (``Functional``, ``Model`` or ``Sequential``); ``axis_checks`` holds
    ``(node name, axis)`` for each BatchNormalization written with a positive axis, which must be
    the last axis of its input (batch axis included) once shapes are known."""

    name: str
    class_name: str
    nodes: tuple[KerasNode, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    axis_checks: tuple[tuple[str, int], ...] = ()
    frozen: bool = False  # the model's config says trainable=false: Keras freezes every layer in it


def keras_graph(doc: Mapping[str, Any], *, source: str = "<keras json>",
                layer: LayerReader = keras_layer) -> KerasGraph:
    """The graph of a parsed Keras model document (``{"class_name": ..., "config": ...}``).

    ``layer`` reads each layer entry into a spec (by default jaxcnn's Keras argument mapping).

    Raises:
      ConfigError: a malformed model (an unknown layer in ``inbound_nodes``, a node index out of
        range, a cycle, a name used twice, ...), located at the layer.
      UnsupportedError: a tensor index other than 0 (a layer with several outputs), call arguments
        Keras records on a node (``training=false``), a dict of inputs or outputs, a refused layer.
    """
    return _Reader(source, layer).model(_model_class(doc, source), doc.get("config"), "")


def graph_model(graph: KerasGraph, *, source: str = "<keras json>") -> Any:
    """The jaxcnn model of ``graph``, nested graphs built first: a :class:`~jaxcnn.Sequential` where
    Keras's class is ``Sequential`` (a chain: Keras prints a nested one as ``Sequential``), else
    ``jaxcnn.graph.Model.from_nodes`` of its nodes."""
    from jaxcnn import graph as graph_module
    from jaxcnn.model import Sequential

    def build(graph: KerasGraph, frozen: bool = False) -> Any:
        frozen = frozen or graph.frozen  # model.trainable = False freezes every layer inside, nested ones too
        layers = [build(node.layer, frozen) if isinstance(node.layer, KerasGraph)
                  else dataclasses.replace(node.layer, trainable=False) if frozen and hasattr(node.layer, "trainable")
                  else node.layer for node in graph.nodes]
        if graph.class_name == "Sequential":
            return Sequential(layers, name=graph.name)  # an Input first, if any, gives the input shape
        nodes = [graph_module.Node(node.name, layer, node.inputs) for node, layer in zip(graph.nodes, layers)]
        return graph_module.Model.from_nodes(nodes, inputs=graph.inputs, outputs=graph.outputs, name=graph.name)

    try:
        return build(graph)
    except JaxcnnError as error:
        raise error.located(source=source) from None


# --------------------------------------------------------------------------------------------
# Reading.


@dataclasses.dataclass(frozen=True)
class _Layer:
    """A functional model's layer entry as read: its spec, its inbound nodes, where it is. A Keras 3
    operation (``module`` ``keras.src.ops.*``) is read at each call instead (``layer`` is ``None``,
    ``conf`` its config): on a number it is a layer with a ``constant``, on tensors the layer of its
    class."""

    name: str
    class_name: str
    module: str | None
    layer: Any
    inbound: list[Any]
    where: dict[str, Any]
    axis: int | None
    conf: Any = None

    @property
    def node_count(self) -> int:
        return 1 if self.class_name == "InputLayer" else len(self.inbound)


@dataclasses.dataclass(frozen=True)
class _Reader:
    source: str
    read_layer: LayerReader

    def model(self, class_name: str, config: Any, prefix: str) -> KerasGraph:
        if class_name == "Sequential":
            return self.sequential(config, prefix)
        return self.functional(class_name, config, prefix)

    def nested(self, class_name: str, conf: Mapping[str, Any], prefix: str) -> KerasGraph:
        return self.model(class_name, conf, f"{prefix}{conf.get('name')}/")

    # --- Sequential ------------------------------------------------------------------------

    def sequential(self, config: Any, prefix: str) -> KerasGraph:
        if isinstance(config, list):  # Keras 2.2
            name, entries, build_shape = "sequential", config, None
        else:
            name, entries = _model_options(config, self.source, prefix, allow_frozen=True)
            build_shape = config.get("build_input_shape")
        nodes: list[KerasNode] = []
        axis_checks: list[tuple[str, int]] = []
        inputs: tuple[str, ...] = ()
        index = 0
        for position, entry in enumerate(entries):
            layer_class, conf, where = _entry(entry, position, index, self.source, prefix)
            node_name = conf.get("name") or f"{snake_case(layer_class)}_{position}"
            if layer_class == "InputLayer":
                if nodes:
                    raise ConfigError("an InputLayer must come first, and only once", **where)
                nodes.append(KerasNode(node_name, Input(_keras_input_layer(conf, where),
                                                        name=node_name), ()))
                inputs = (node_name,)
                continue
            batch_shape = _entry_batch_shape(conf, where)
            if batch_shape is not None and not nodes:  # tf.keras 2 names its InputLayer so
                nodes.append(KerasNode(f"{node_name}_input", Input(batch_shape,
                                                                  name=f"{node_name}_input"), ()))
                inputs = (f"{node_name}_input",)
            if layer_class in MODEL_CLASSES:
                spec: Any = self.nested(layer_class, conf, prefix)
            else:
                spec, axis = self.read_layer(layer_class, conf, where)
                if axis is not None:
                    axis_checks.append((node_name, axis))
            previous = (nodes[-1].name,) if nodes else ()
            nodes.append(KerasNode(node_name, spec, previous))
            index += 1
        if not inputs and build_shape is not None and nodes:
            shape = _batch_shape(build_shape, "build_input_shape",
                                 dict(source=self.source, key="build_input_shape"))
            first = nodes[0]
            input_name = f"{first.name}_input"
            nodes[0] = first._replace(inputs=(input_name,))
            nodes.insert(0, KerasNode(input_name, Input(shape, name=input_name), ()))
            inputs = (input_name,)
        if not nodes:
            raise ConfigError("a Sequential model without layers", source=self.source,
                              layer_name=prefix.rstrip("/") or None)
        return KerasGraph(name, "Sequential", tuple(nodes), inputs, (nodes[-1].name,),
                          tuple(axis_checks), frozen=_frozen(config))

    # --- Functional ------------------------------------------------------------------------

    def functional(self, class_name: str, config: Any, prefix: str) -> KerasGraph:
        name, entries = _model_options(config, self.source, prefix, allow_frozen=True)
        model_where: dict[str, Any] = dict(source=self.source, layer_name=prefix.rstrip("/") or None)
        for key in ("input_layers", "output_layers"):
            if key not in config:
                raise ConfigError(f"missing `config.{key}`: a {class_name} model names its "
                                  "input and output layers", key=key, **model_where)
        layers: dict[str, _Layer] = {}
        index = 0
        for position, entry in enumerate(entries):
            layer_class, conf, where = _entry(entry, position, index, self.source, prefix)
            layer_name = entry.get("name", conf.get("name"))
            if not isinstance(layer_name, str):
                raise ConfigError(f"the layer has no name (got {describe_value(layer_name)}): "
                                  "a functional model's layers are named", **where)
            if layer_name in layers:
                raise ConfigError(f"the layer name {layer_name!r} is used twice", **where)
            inbound = entry.get("inbound_nodes", [])
            if not isinstance(inbound, list):
                raise ConfigError(f"`inbound_nodes` must be a list, got {describe_value(inbound)}",
                                  **where)
            axis = None
            if layer_class == "InputLayer":
                spec: Any = Input(_keras_input_layer(conf, where), name=layer_name)
            elif layer_class in MODEL_CLASSES:
                spec = self.nested(layer_class, conf, prefix)
            elif _is_operation(entry.get("module")):
                spec = None
            else:
                spec, axis = self.read_layer(layer_class, conf, where)
            layers[layer_name] = _Layer(layer_name, layer_class, entry.get("module"), spec, inbound,
                                        where, axis, conf)
            if layer_class != "InputLayer":
                index += 1
        if not layers:
            raise ConfigError(f"a {class_name} model without layers", **model_where)

        nodes: list[KerasNode] = []
        axis_checks: list[tuple[str, int]] = []
        for layer in layers.values():
            if layer.class_name == "InputLayer":
                nodes.append(KerasNode(layer.name, layer.layer, ()))
                continue
            if not layer.inbound:
                raise ConfigError("the layer is never called: `inbound_nodes` is empty",
                                  **layer.where)
            for k, node_data in enumerate(layer.inbound):
                node_name = _node_name(layer.name, k)
                refs, constants = _references(node_data, layer.where)
                inputs = tuple(self.resolve(ref, layers, layer.where, legacy=isinstance(node_data, list))
                               for ref in refs)
                if constants:
                    spec = self.constant_operation(layer, constants)
                elif layer.layer is None:
                    spec = self.read_layer(layer.class_name, layer.conf, layer.where)[0]
                else:
                    spec = layer.layer
                nodes.append(KerasNode(node_name, spec, inputs))
                if layer.axis is not None:
                    axis_checks.append((node_name, layer.axis))
        legacy = any(isinstance(data, list) for layer in layers.values() for data in layer.inbound)
        inputs = self.endpoints(config["input_layers"], "input_layers", layers, model_where, legacy)
        for input_name in inputs:
            if layers[input_name.partition("@")[0]].class_name != "InputLayer":
                raise ConfigError(f"input_layers names {input_name!r}, which is not an InputLayer",
                                  key="input_layers", **model_where)
        outputs = self.endpoints(config["output_layers"], "output_layers", layers, model_where, legacy)
        return KerasGraph(name, class_name, _topological(nodes, model_where), inputs, outputs,
                          tuple(axis_checks), frozen=_frozen(config))

    def constant_operation(self, layer: _Layer, constants: list[tuple[int, Any]]) -> Any:
        """The spec of a Keras 3 operation on one tensor and one number: ``x + c``, ``x * c``,
        ``x - c`` and ``c - x`` are ``Add``/``Multiply``/``Subtract(constant=c)``, as Keras names
        them in its summary (MobileNetV3's hard sigmoid writes ``keras.src.ops.numpy.Add`` with
        ``args: [x, 3.0]``); ``x / c`` is ``Rescaling(1 / c)``."""
        position, c = constants[0] if len(constants) == 1 else (None, None)
        operation: tuple[str, dict[str, Any]] | None = None
        if c is not None and _is_operation(layer.module):
            operation = {
                "Add": ("Add", {"constant": c}),
                "Multiply": ("Multiply", {"constant": c}),
                "Subtract": ("Subtract", {"constant": c, "constant_first": position == 0}),
                "Divide": ("Rescaling", {"scale": 1.0 / c}) if position == 1 and c else None,
                "TrueDivide": ("Rescaling", {"scale": 1.0 / c}) if position == 1 and c else None,
            }.get(layer.class_name)
        if operation is None:
            raise UnsupportedError(
                f"the call arguments {_js([value for _, value in constants])} are not supported: "
                "jaxcnn reads a number only in an operation x + c, x * c, x - c, c - x or x / c",
                **layer.where)
        class_name, arguments = operation
        return self.read_layer(class_name, {"name": layer.name, **arguments}, layer.where)[0]

    def resolve(self, ref: Sequence[Any], layers: Mapping[str, _Layer], where: dict[str, Any], *,
                legacy: bool, endpoint: bool = False) -> str:
        """The node name of a reference ``[layer_name, node_index, tensor_index]``."""
        if not (len(ref) >= 3 and isinstance(ref[0], str) and _is_int(ref[1]) and _is_int(ref[2])):
            raise ConfigError(f"a tensor reference {_js(list(ref))} must be [layer_name, node_index, "
                              "tensor_index]", **where)
        name, k, tensor = ref[0], ref[1], ref[2]
        if name not in layers:
            raise ConfigError(f"{_js(list(ref)[:3])} names the layer {name!r}, which the model "
                              "does not have", **where)
        if tensor != 0:
            raise UnsupportedError(
                f"{_js(list(ref)[:3])}: output {tensor} of {name!r} is not supported: jaxcnn "
                "layers have one output", **where)
        target = layers[name]
        # Keras counts a nested model's built-in node (its input linked to its output) first:
        # tf.keras 2 everywhere, Keras 3 in input_layers/output_layers of a nested Functional.
        counts_built_in = (target.class_name in MODEL_CLASSES if legacy
                           else endpoint and target.class_name in ("Functional", "Model"))
        position = max(k - 1, 0) if counts_built_in else k
        if not 0 <= position < target.node_count:
            raise ConfigError(
                f"{_js(list(ref)[:3])}: node {k} of {name!r} does not exist (it is called "
                f"{target.node_count} time{'s' if target.node_count != 1 else ''})", **where)
        return _node_name(name, position)

    def endpoints(self, value: Any, key: str, layers: Mapping[str, _Layer], where: dict[str, Any],
                  legacy: bool) -> tuple[str, ...]:
        """The node names of ``input_layers`` or ``output_layers``: one reference or a list."""
        if isinstance(value, Mapping):
            raise UnsupportedError(f"{key} as a dict is not supported: jaxcnn models take and give "
                                   "tensors in order", key=key, **where)
        if isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str):
            value = [value]  # Keras 3 writes a single input or output as one reference
        if not isinstance(value, list) or not value:
            raise ConfigError(f"`{key}` must be a list of [layer_name, node_index, tensor_index], "
                              f"got {_js(value)}", key=key, **where)
        return tuple(self.resolve(ref if isinstance(ref, list) else [ref], layers,
                                  dict(where, key=key), legacy=legacy, endpoint=True)
                     for ref in value)


def _frozen(config: Any) -> bool:
    """Whether a model's config freezes it (``model.trainable = False``: a transfer-learning base)."""
    return isinstance(config, Mapping) and config.get("trainable", True) is False


def _node_name(layer_name: str, k: int) -> str:
    return layer_name if k == 0 else f"{layer_name}@{k}"


# Call arguments Keras records on a node that change nothing here where they are null.
_HARMLESS_CALL_KWARGS = frozenset({"mask", "training"})


def _references(node_data: Any,
                where: dict[str, Any]) -> tuple[list[Sequence[Any]], list[tuple[int, Any]]]:
    """The ``[layer_name, node_index, tensor_index]`` references of one inbound node, in order, and
    the ``(position, value)`` of the numbers among a Keras 3 operation's arguments."""
    if isinstance(node_data, list):  # tf.keras 2, Keras 2.2: [[name, node, tensor, kwargs], ...]
        for ref in node_data:
            if isinstance(ref, list) and len(ref) == 4:
                _check_call_kwargs(ref[3], where, keras3=False)
        return node_data, []
    if not isinstance(node_data, Mapping) or not isinstance(node_data.get("args"), list):
        raise ConfigError(f"an inbound node must be an object with `args` (Keras 3) or a list "
                          f"(tf.keras 2), got {_js(node_data)}", **where)
    _check_call_kwargs(node_data.get("kwargs", {}), where, keras3=True)
    args = node_data["args"]
    # A layer takes one tensor or one list of them (merging layers); a Keras 3 operation takes
    # tensors as positional arguments (``x + y`` is ``keras.src.ops.numpy.Add``, called ``(x, y)``),
    # and numbers (``x + 3.0``).
    tensors = args[0] if len(args) == 1 and isinstance(args[0], list) else args
    constants = [(i, value) for i, value in enumerate(tensors) if _is_number(value)]
    refs = [_history(tensor, where) for tensor in tensors if not _is_number(tensor)]
    if not refs:
        raise ConfigError("an inbound node without input tensors", **where)
    return refs, constants


def _is_operation(module: Any) -> bool:
    """Whether a layer entry's ``module`` is Keras 3's operations (``keras.src.ops.numpy``)."""
    return isinstance(module, str) and module.startswith("keras.src.ops.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _history(tensor: Any, where: dict[str, Any]) -> Sequence[Any]:
    """The ``keras_history`` of a Keras 3 ``__keras_tensor__``."""
    if not (isinstance(tensor, Mapping) and tensor.get("class_name") == "__keras_tensor__"
            and isinstance(tensor.get("config"), Mapping)
            and isinstance(tensor["config"].get("keras_history"), list)):
        raise UnsupportedError(
            f"the call argument {_js(tensor)} is not supported: jaxcnn layers take the tensors "
            "of other layers", **where)
    return tensor["config"]["keras_history"]


def _check_call_kwargs(kwargs: Any, where: dict[str, Any], *, keras3: bool) -> None:
    """Refuse call arguments recorded on a node, but ``mask: null`` and ``training: null``, and in
    Keras 3 any ``training``: Keras 3 records a layer's default (``Dropout`` writes
    ``training: false`` on every node) and its Functional ``call`` replaces it with the model's own
    ``training`` (``operation_fn``), as jaxcnn does. tf.keras 2 honoured ``training=False`` on a call
    (a frozen base model's BatchNormalization): refused there."""
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"call arguments must be an object, got {_js(kwargs)}", **where)
    for key, value in kwargs.items():
        if key in _HARMLESS_CALL_KWARGS and (value is None or (keras3 and key == "training")):
            continue
        reason = (": jaxcnn sets training for the whole model, not per call"
                  if key == "training" else "")
        raise UnsupportedError(f"the call argument {key}={_js(value)} is not supported{reason}",
                               **where)


def _topological(nodes: list[KerasNode], where: dict[str, Any]) -> tuple[KerasNode, ...]:
    """``nodes`` in an order where every node comes after its inputs, stable otherwise (Keras
    writes a layer where it is first used, so a shared layer's later nodes may come too early)."""
    pending = {node.name: node for node in nodes}
    done: dict[str, KerasNode] = {}
    while pending:
        progressed = False
        for node in list(pending.values()):
            if all(name in done for name in node.inputs):
                done[node.name] = pending.pop(node.name)
                progressed = True
        if not progressed:
            stuck = ", ".join(repr(name) for name in list(pending)[:5])
            raise ConfigError(f"the graph has a cycle or a missing node: {stuck} cannot be computed",
                              **where)
    return tuple(done.values())
