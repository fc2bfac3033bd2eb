"""Model configs: jaxcnn's TOML/JSON format, Keras ``model.to_json()`` files, and writing TOML back.

The jaxcnn format (TOML, or the same structure as JSON)::

    # header comment: the command that runs it and what it shows
    [model]
    name = "cifar_cnn"          # optional, default "sequential"
    input_shape = [32, 32, 3]   # optional when the first layer has input_shape (or is an Input)

    [[layers]]
    type = "Conv2D"             # a class name from jaxcnn.layers.LAYER_TYPES, or "Input" with `shape`
    filters = 16
    kernel_size = 2             # int or [h, w]: the Keras argument names of the spec's fields
    padding = "same"
    activation = "relu"
    input_shape = [32, 32, 3]   # accepted on the first layer, as the Keras notebooks write it

A graph (functional) model names the inputs of its layers; a layer without ``inputs`` takes the
previous table's output, so every layer list above is valid as it is::

    [model]
    outputs = ["add"]           # optional, default: the last layer

    [[layers]]
    type = "Input"              # one Input table an input of the model
    name = "image"
    shape = [32, 32, 16]

    [[layers]]
    type = "Conv2D"             # takes the previous table's output: "image"
    filters = 16
    kernel_size = 3
    padding = "same"

    [[layers]]
    type = "Add"
    inputs = ["conv2d", "image"]   # by name: written, or Keras's per-model name (conv2d, conv2d_1, ...)

A config is a graph where a layer table has ``inputs``, ``[model]`` has ``outputs``, or there are
several ``Input`` tables; else it is a :class:`~jaxcnn.Sequential`.

A model saved in a file is one layer of another (a transfer-learning base, as Keras nests one)::

    [[layers]]
    type = "Model"
    path = "base.keras"         # .keras / .h5 (with its weights), a Keras JSON, a jaxcnn config;
                                # relative to this config's folder
    name = "base"               # optional, default the file's model name
    trainable = false           # optional: every layer inside frozen (Keras's base.trainable = False)

A nested model read from a Keras file carries its weights: ``compile(model).init()`` starts it from
them and the other layers from their initializers (:func:`jaxcnn.graph.nested_weights`).

Top-level sections are those of :data:`SECTIONS`; a layer table takes ``type`` and its spec's
dataclass fields (``name``, ``input_shape`` and the Keras arguments), nothing else.

Keras ``model.to_json()`` files are read by :mod:`jaxcnn.keras` (:func:`load` tells them apart by
their top-level ``class_name``); ``from_keras_json`` and ``from_keras_dict`` are re-exported here.

Layer indices in errors count the model's layers as the summary does: an ``InputLayer`` (Keras) or
an ``Input`` table (jaxcnn) is not counted, and errors about it carry no index.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import pathlib
import tomllib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jaxcnn.errors import ConfigError, JaxcnnError, LayerArgumentError, describe_value
from jaxcnn.files import from_config, keras_file_kind, write_atomic
from jaxcnn.graph import DEFAULT_NAME as GRAPH_NAME
from jaxcnn.graph import INPUT_NAME, Model, Nested, Node, fresh_name
from jaxcnn.layers import LAYER_TYPES, Input, Layer
from jaxcnn.model import Sequential

if TYPE_CHECKING:  # re-exported by __getattr__ below
    from jaxcnn.keras.json import from_keras_dict, from_keras_json

__all__ = [
    "MODEL_KEYS",
    "NO_INPUT_SHAPE",
    "NO_KERAS_INPUT_SHAPE",
    "SECTIONS",
    "from_dict",
    "from_keras_dict",
    "from_keras_json",
    "load",
    "read_document",
    "save",
    "to_toml",
]

#: Top-level sections of a jaxcnn config, with the type each must have once parsed
#: (``dict``: a TOML table ``[name]``; ``list``: an array of tables ``[[name]]``). Later sections
#: (``train``, ...) are added here; :func:`from_dict` reads only ``model`` and ``layers``.
SECTIONS: dict[str, type] = {"model": dict, "layers": list, "data": dict, "train": dict, "mesh": dict}

#: Keys of the ``[model]`` table.
MODEL_KEYS: tuple[str, ...] = ("name", "input_shape", "outputs")

_DEFAULT_MODEL_NAME = "sequential"


# --------------------------------------------------------------------------------------------
# Reading files.


def load(path: str | os.PathLike[str], *, input_shape: Sequence[int] | None = None,
         require_input_shape: bool = False, weights: str | os.PathLike[str] | None = None) -> Model:
    """Read a model from ``path``: a jaxcnn ``.toml`` or ``.json`` config, a Keras
    ``model.to_json()`` file (a JSON object with a top-level ``class_name``), or a trained Keras model:
    a Keras 3 ``.keras`` archive or a Keras 2 / tf.keras full-model ``.h5``, whose weights the model
    then carries (:attr:`~jaxcnn.Model.weights`; ``compile(model).init()`` starts from them).
    ``weights`` names a weights-only file for the architecture at ``path`` (Keras 3's
    ``.weights.h5``, or the legacy ``.h5`` of ``save_weights``).

    The format follows the extension (``.toml``, ``.json``); for any other extension, text that
    starts with ``{`` is read as JSON and anything else as TOML. ``input_shape`` replaces the file's
    input shape (``jaxcnn summary --input-shape``). A model with an input shape is planned (the
    formulas, no JAX), so an impossible layer is reported here, naming the file; a model without
    one is refused with ``require_input_shape=True``, with advice in the file's own terms.

    Raises:
      ConfigError: the file is missing or unreadable, a syntax error, an unknown key, a wrong value,
        no input shape where one is required (every message names the file, and the layer where
        there is one).
      UnsupportedError: a Keras class or argument jaxcnn does not support.
      ImpossibleShapeError: a layer cannot take its input (the file, layer and formula named).
    """
    source = os.fsdecode(path)
    kind = keras_file_kind(source)
    h5 = None
    if kind is not None:  # a trained Keras model: its architecture, then its weights
        from jaxcnn.keras.files import open_keras_file

        doc, h5 = open_keras_file(source, kind)
    else:
        source, doc = _read(path)
    keras = kind is not None or _is_keras(doc)
    try:
        if keras:
            from jaxcnn.keras.json import _keras_model  # it imports this module's helpers

            model = _keras_model(doc, source)
        else:
            model = _model(doc, source)
        if input_shape is not None:
            try:
                model = model.with_input_shape(input_shape)
            except JaxcnnError as error:
                raise error.located(source=source) from None
        model = _planned(model, source, keras=keras,
                         require_input_shape=require_input_shape or h5 is not None or weights is not None)
        if weights is not None:
            if h5 is not None:
                raise ConfigError(f"holds its own weights; `weights` (={os.fsdecode(weights)!r}) would replace them",
                                  source=source)
            from jaxcnn.keras.files import load_weights

            return load_weights(model, weights, keras_doc=doc if keras else None)
        if h5 is not None:
            from jaxcnn.keras.weights import read_weights

            return model.with_weights(read_weights(h5, model, source=source, keras_doc=doc if kind == "keras" else None))
        return model
    finally:
        if h5 is not None:
            h5.close()


def read_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed jaxcnn TOML/JSON config at ``path``, its top-level sections checked against
    :data:`SECTIONS` (a Keras JSON file is refused: read it with :func:`load`)."""
    source, doc = _read(path)
    if _is_keras(doc):
        raise ConfigError(
            "is a Keras model description (it has a top-level `class_name`), not a jaxcnn config; "
            "read it with jaxcnn.config.load", source=source)
    _check_sections(doc, source)
    return doc


def _read(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    source = os.fsdecode(path)
    try:
        data = pathlib.Path(source).read_bytes()
    except FileNotFoundError:
        raise ConfigError("no such file", source=source) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", source=source) from None
    except OSError as error:
        raise ConfigError(f"cannot read the file: {error.strerror or error}", source=source) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"is not UTF-8 text (invalid byte at offset {error.start})",
                          source=source) from None
    suffix = pathlib.PurePath(source).suffix.lower()
    if suffix == ".toml":
        as_json = False
    elif suffix == ".json":
        as_json = True
    else:
        as_json = text.lstrip().startswith(("{", '"'))  # '"': a to_json() text stored as a string
    doc = _parse_json(text, source) if as_json else _parse_toml(text, source)
    return source, doc


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"TOML syntax error: {error}", source=source) from None


def _parse_json(text: str, source: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"JSON syntax error: {error.msg} (at line {error.lineno}, column {error.colno})",
            source=source) from None
    if isinstance(doc, str) and doc.lstrip().startswith("{"):
        # A model.to_json() text stored as a JSON string (json.dump(model.to_json(), file)).
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError as error:
            raise ConfigError(f"JSON syntax error in the JSON string that holds the model: "
                              f"{error.msg} (at line {error.lineno}, column {error.colno})",
                              source=source) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"the top level must be a JSON object, got {describe_value(doc)}", source=source)
    return doc


def _is_keras(doc: Mapping[str, Any]) -> bool:
    return "class_name" in doc


# --------------------------------------------------------------------------------------------
# The jaxcnn format.


def _check_sections(doc: Mapping[str, Any], source: str) -> None:
    for key, value in doc.items():
        if key not in SECTIONS:
            raise ConfigError(_unknown("top-level section", key, SECTIONS), source=source, key=key)
        expected = SECTIONS[key]
        if not isinstance(value, expected):
            what = {dict: f"a table, written [{key}]", list: f"an array of tables, written [[{key}]]"}
            raise ConfigError(
                f"must be {what.get(expected, expected.__name__)}, got {describe_value(value)}",
                source=source, key=key)


def from_dict(doc: Mapping[str, Any], *, source: str = "<dict>", require_input_shape: bool = False) -> Model:
    """The model described by a parsed jaxcnn config (``{"model": {...}, "layers": [...]}``).

    ``source`` names the origin in error messages. Sections other than ``model`` and ``layers``
    (those :data:`SECTIONS` adds) are accepted and ignored here. A model with an input shape is
    planned, so an impossible layer is reported naming ``source``; ``require_input_shape=True``
    refuses a model without one, saying which TOML keys give it.
    """
    return _planned(_model(doc, source), source, require_input_shape=require_input_shape, keras=False)


#: Where a jaxcnn config gives the input shape, for the error when it does not.
NO_INPUT_SHAPE = (
    "the model has no input shape: give `input_shape = [H, W, C]` on the first [[layers]] table, or "
    'start with an Input table (`type = "Input"`, `shape = [H, W, C]`), or give `input_shape = [H, W, C]` '
    "in [model]")
#: The same for a Keras ``model.to_json()`` file.
NO_KERAS_INPUT_SHAPE = (
    "the Keras model has no input shape (no InputLayer, `batch_input_shape` or `build_input_shape`): "
    "give one with --input-shape H,W,C (jaxcnn summary, jaxcnn check) or load(path, input_shape=...)")


def _planned(model: Model, source: str, *, require_input_shape: bool, keras: bool) -> Model:
    """``model``, planned when it has an input shape (errors located at ``source``); without one,
    refused if ``require_input_shape``."""
    try:
        model.input_shapes  # noqa: B018 - raises when there is none
    except LayerArgumentError:
        if require_input_shape:
            raise ConfigError(NO_KERAS_INPUT_SHAPE if keras else NO_INPUT_SHAPE, source=source,
                              key="input_shape") from None
        return model
    try:
        model.plan()
    except JaxcnnError as error:
        raise error.located(source=source) from None
    return model


def _model(doc: Mapping[str, Any], source: str) -> Model:
    if not isinstance(doc, Mapping):
        raise ConfigError(f"a config must be a table (a dict), got {describe_value(doc)}", source=source)
    _check_sections(doc, source)
    model_table = doc.get("model", {})
    for key in model_table:
        if key not in MODEL_KEYS:
            raise ConfigError(_unknown("key in [model]", key, MODEL_KEYS), source=source, key=key)
    name = model_table.get("name", _DEFAULT_MODEL_NAME)
    model_shape = model_table.get("input_shape")
    if model_shape is not None and not _is_shape(model_shape):
        raise ConfigError(
            f"`input_shape` (={model_shape!r}) in [model] must be a non-empty list of positive "
            "integers, such as [32, 32, 3]", source=source)
    tables = doc.get("layers")
    if not tables:
        raise ConfigError("has no layers: add one [[layers]] table per layer", source=source)
    if _is_graph(model_table, tables):
        return _graph(model_table, tables, source)
    try:
        model = Sequential(
            name=name, input_shape=None if model_shape is None else tuple(model_shape))
    except JaxcnnError as error:
        raise error.located(source=source) from None
    index = 0  # the model's layer index; an Input table is not counted
    for position, table in enumerate(tables):
        spec, where = _layer_spec(table, position, index, source, ())
        is_input = isinstance(spec, Input)
        if model_shape is not None and position == 0 and (is_input or "input_shape" in table):
            raise ConfigError(
                "the input shape is given twice, in [model] and on the first layer; keep one",
                **where)
        try:
            model.add(spec)
        except JaxcnnError as error:
            raise error.located(**where) from None
        if not is_input:
            index += 1
    return model


def _is_graph(model_table: Mapping[str, Any], tables: Sequence[Any]) -> bool:
    """A graph config: ``[model] outputs``, a layer table with ``inputs``, or several Input tables."""
    tables = [t for t in tables if isinstance(t, Mapping)]
    return ("outputs" in model_table or any("inputs" in t for t in tables)
            or sum(t.get("type") == "Input" for t in tables) > 1)


def _layer_spec(table: Mapping[str, Any], position: int, index: int | None, source: str,
                extra: tuple[str, ...]) -> tuple[Layer | Input, dict[str, Any]]:
    """The spec a ``[[layers]]`` table describes, and ``where`` (its location for errors); the keys
    in ``extra`` (``inputs``) are accepted beside the spec's fields and left out of the spec."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"entry {position} of `layers` must be a table ([[layers]]), got {describe_value(table)}",
                          source=source, index=index)
    layer_name = table.get("name") if isinstance(table.get("name"), str) else None
    if "type" not in table:
        raise ConfigError(f"missing key `type`: the layer's class, one of {', '.join(_type_names())}",
                          source=source, index=index, layer_name=layer_name)
    type_name = table["type"]
    if type_name == NESTED_TYPE:
        return _nested_spec(table, index, source, extra, layer_name)
    if type_name != "Input" and (not isinstance(type_name, str) or type_name not in LAYER_TYPES):
        shown = type_name if isinstance(type_name, str) else repr(type_name)
        raise ConfigError(
            _unknown(f"layer type {shown!r}" if isinstance(type_name, str) else
                     f"layer type {shown} (must be a string)", str(shown), _type_names()),
            source=source, index=index, layer_name=layer_name, key="type")
    is_input = type_name == "Input"
    cls: type[Layer] | type[Input] = Input if is_input else LAYER_TYPES[type_name]
    where: dict[str, Any] = dict(source=source, index=None if is_input else index, layer_name=layer_name,
                                 layer_type=type_name)
    fields = dataclasses.fields(cls)
    known = ["type", *(f.name for f in fields), *(() if is_input else extra)]
    for key in table:
        if key not in known:
            raise ConfigError(_unknown("key", key, known), key=key, **where)
    kwargs = {key: value for key, value in table.items() if key != "type" and key not in extra}
    return _construct(cls, kwargs, where, missing="missing required key"), where


#: The ``type`` of a ``[[layers]]`` table that nests a model read from a file (``path``).
NESTED_TYPE = "Model"
_NESTED_KEYS = ("type", "name", "path", "trainable")
_LOADING: list[str] = []  # the files a nested table is being read from, innermost last (a cycle is refused)


def _nested_spec(table: Mapping[str, Any], index: int | None, source: str, extra: tuple[str, ...],
                 layer_name: str | None) -> tuple[Layer, dict[str, Any]]:
    """A ``type = "Model"`` table: the model at ``path`` (a trained Keras ``.keras``/``.h5`` file
    with its weights, a Keras JSON or a jaxcnn config; relative to the config's folder) as one
    layer, named ``name`` (default: the file's model name), every layer in it frozen with
    ``trainable = false`` (Keras's ``base.trainable = False``)."""
    where: dict[str, Any] = dict(source=source, index=index, layer_name=layer_name, layer_type=NESTED_TYPE)
    known = [*_NESTED_KEYS, *extra]
    for key in table:
        if key not in known:
            raise ConfigError(_unknown("key", key, known), key=key, **where)
    path = table.get("path")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"a nested model's table needs `path` (={path!r}): the model file (.keras, .h5, "
                          "a Keras JSON or a jaxcnn config) it reads", key="path", **where)
    trainable = table.get("trainable", True)
    if not isinstance(trainable, bool):
        raise ConfigError(f"`trainable` (={trainable!r}) must be true or false", key="trainable", **where)
    if layer_name is None and "name" in table:
        raise ConfigError(f"`name` (={table['name']!r}) must be a non-empty string", key="name", **where)
    file = os.path.abspath(from_config(path, source))
    if not os.path.exists(file):
        raise ConfigError(f"`path` (={path!r}) names no file ({file})", key="path", **where)
    if file in _LOADING or file == os.path.abspath(source):
        raise ConfigError(f"`path` (={path!r}) nests a model inside itself", key="path", **where)
    _LOADING.append(file)
    try:
        inner = load(file, require_input_shape=True)
    finally:
        _LOADING.pop()
    if not trainable:
        inner = inner.frozen()
    try:
        return Nested(model=inner, name=layer_name or inner.name, path=path, file=file, trainable=trainable), where
    except JaxcnnError as error:
        raise error.located(**where) from None


def _construct(cls: type[Any], kwargs: Mapping[str, Any], where: dict[str, Any], *, missing: str) -> Any:
    """``cls(**kwargs)``, refusing absent required fields (``missing`` starts the message) and
    locating a refusal of the constructor at ``where``; shared by the TOML and Keras readers."""
    absent = [f"`{f.name}`" for f in dataclasses.fields(cls) if _required(f) and f.name not in kwargs]
    if absent:
        raise ConfigError(f"{missing} {', '.join(absent)}", **where)
    try:
        return cls(**kwargs)
    except JaxcnnError as error:
        raise error.located(**where) from None


def _graph(model_table: Mapping[str, Any], tables: Sequence[Any], source: str) -> Model:
    """A graph config's model: one node a table (an implicit first Input where ``[model]`` or the
    first layer gives ``input_shape``), each taking its ``inputs`` or the previous table's output."""
    specs: list[tuple[Layer | Input, dict[str, Any], Any]] = []
    index = 0
    for position, table in enumerate(tables):
        spec, where = _layer_spec(table, position, index, source, ("inputs",))
        inputs = table.get("inputs")
        if inputs is not None and (not isinstance(inputs, list) or not inputs
                                   or not all(isinstance(n, str) and n for n in inputs)):
            raise ConfigError(f"`inputs` (={inputs!r}) must be a non-empty list of layer names, such as "
                              '["conv2d_3", "add_1"]', **where)
        specs.append((spec, where, inputs))
        index += not isinstance(spec, Input)
    model_shape = model_table.get("input_shape")
    first = specs[0][0]
    if isinstance(first, Layer) and first.input_shape is not None:
        if model_shape is not None:
            raise ConfigError("the input shape is given twice, in [model] and on the first layer; keep one",
                              **specs[0][1])
        model_shape = first.input_shape
        specs[0] = (dataclasses.replace(first, input_shape=None), *specs[0][1:])
    for spec, where, _ in specs[1:]:
        if isinstance(spec, Layer) and spec.input_shape is not None:
            raise ConfigError(f"`input_shape` (={list(spec.input_shape)}) is only accepted on the first layer; "
                              'give the graph\'s other inputs as Input tables (`type = "Input"`)', **where)
    if model_shape is not None:
        if isinstance(first, Input):
            raise ConfigError("the input shape is given twice, in [model] and by an Input table; keep one",
                              **specs[0][1])
        specs.insert(0, (Input(tuple(model_shape)), dict(source=source), None))
    elif not isinstance(first, Input):
        raise ConfigError(NO_INPUT_SHAPE, source=source, key="input_shape")
    used = [spec.name for spec, _, _ in specs if spec.name is not None]
    nodes: list[Node] = []
    for spec, where, inputs in specs:
        name = spec.name
        if name is None:
            name = fresh_name(INPUT_NAME if isinstance(spec, Input) else type(spec).default_name(), used)
            used.append(name)
        if isinstance(spec, Input):
            nodes.append(Node(name, dataclasses.replace(spec, name=name)))
            continue
        if inputs is None:
            inputs = [nodes[-1].name]
        nodes.append(Node(name, dataclasses.replace(spec, name=name), tuple(inputs)))
    outputs = model_table.get("outputs", [nodes[-1].name])
    if not isinstance(outputs, list) or not outputs or not all(isinstance(n, str) and n for n in outputs):
        raise ConfigError(f"`outputs` (={outputs!r}) in [model] must be a non-empty list of layer names",
                          source=source, key="outputs")
    try:
        return Model.from_nodes(nodes, inputs=[n.name for n in nodes if n.is_input], outputs=outputs,
                                name=model_table.get("name", GRAPH_NAME))
    except JaxcnnError as error:
        indices = {n.name: i for i, n in enumerate(n for n in nodes if not n.is_input)}
        raise error.located(source=source, index=indices.get(error.layer_name)) from None


def _required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _type_names() -> list[str]:
    return ["Input", NESTED_TYPE, *LAYER_TYPES]


# --------------------------------------------------------------------------------------------
# Writing TOML.


def to_toml(model: Model, *, header: str | None = None, folder: str | os.PathLike[str] | None = None) -> str:
    """The model as a jaxcnn TOML config that :func:`load` reads back ``==`` to ``model``.

    ``[model]`` holds the name and input shape (when the model has one); one ``[[layers]]`` table a
    layer holds its ``type``, ``name`` and the arguments that differ from their defaults.
    ``header`` (one or more lines) is written first, as ``#`` comments. A nested model's ``path`` is
    written as it was read, or, with ``folder`` (where the config goes), relative to that folder.
    """
    lines: list[str] = []
    if header is not None:
        lines += [*_comment_lines(header), ""]
    lines += ["[model]", f"name = {_toml_value(model.name)}"]
    try:
        input_shape: tuple[int, ...] | None = model.input_shape
    except LayerArgumentError:
        input_shape = None
    if model.is_graph:
        return _graph_toml(model, lines, folder)
    if input_shape is not None:
        lines.append(f"input_shape = {_toml_value(input_shape)}")
    for index, layer in enumerate(model.layers):
        lines += _layer_toml(index, layer, (), folder)
    return "\n".join(lines) + "\n"


def _graph_toml(model: Model, lines: list[str], folder: str | os.PathLike[str] | None) -> str:
    lines.append(f"outputs = {_toml_value(list(model.output_names))}")
    index = 0
    for node in model.nodes:
        if node.is_input:
            lines += ["", "[[layers]]", 'type = "Input"', f"name = {_toml_value(node.name)}",
                      f"shape = {_toml_value(node.layer.shape)}"]  # type: ignore[union-attr]
        else:
            lines += _layer_toml(index, node.layer, node.inputs, folder)  # type: ignore[arg-type]
            index += 1
    return "\n".join(lines) + "\n"


def _layer_toml(index: int, layer: Layer, inputs: tuple[str, ...],
                folder: str | os.PathLike[str] | None = None) -> list[str]:
    """One ``[[layers]]`` table: type, name, ``inputs`` (a graph's), the non-default arguments."""
    where: dict[str, Any] = dict(index=index, layer_name=layer.name, layer_type=layer.type)
    lines = ["", "[[layers]]", f"type = {_toml_value(layer.type)}"]
    try:
        if isinstance(layer, Nested):
            if layer.path is None:
                raise ConfigError("is a nested model that was not read from a file, which a jaxcnn TOML config "
                                  "cannot hold (its layers can be written into the outer model instead)")
            lines[-1] = f"type = {_toml_value(NESTED_TYPE)}"
        lines.append(f"name = {_toml_value(layer.name)}")
        if inputs:
            lines.append(f"inputs = {_toml_value(list(inputs))}")
        if isinstance(layer, Nested):
            path = layer.path if folder is None or layer.file is None else os.path.relpath(layer.file, folder)
            return lines + [f"path = {_toml_value(path)}"] + ([] if layer.trainable else ["trainable = false"])
        defaults = {f.name: f.default for f in dataclasses.fields(layer)}
        for key, value in layer.arguments().items():
            if value is None:
                if defaults.get(key) is None:
                    continue
                raise ConfigError(f"`{key}` is None, which TOML cannot write")
            lines.append(f"{key} = {_toml_value(value)}")
    except JaxcnnError as error:
        raise error.located(**where) from None
    return lines


def save(model: Model, path: str | os.PathLike[str], *, header: str | None = None) -> pathlib.Path:
    """Write :func:`to_toml` of ``model`` to ``path`` atomically (a temporary file in the same
    folder, then ``os.replace``): ``path`` is either left as it was or fully written. Returns
    ``path`` as a :class:`pathlib.Path`."""
    target = pathlib.Path(os.fsdecode(path))
    text = to_toml(model, header=header, folder=target.absolute().parent)  # before touching the disk
    try:
        write_atomic(target, text.encode("utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot write the config: {error.strerror or error}",
                          source=str(target)) from None
    return target


# Control characters TOML refuses raw in strings and comments (tab is allowed).
_TOML_CONTROL = {chr(c) for c in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F)}


def _comment_lines(header: str) -> list[str]:
    out = []
    for line in header.splitlines() or [""]:
        if any(c in _TOML_CONTROL for c in line):
            raise ConfigError(f"the header line {line!r} contains a control character TOML "
                              "comments cannot hold")
        line = line.rstrip()
        out.append(line if line.startswith("#") else f"# {line}".rstrip())
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # TOML floats include 1e-05, inf, -inf and nan
    if isinstance(value, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise ConfigError(f"the string {value!r} holds a lone surrogate, which TOML cannot write")
        # json.dumps escapes ", \ and the control characters below U+0020 as TOML basic strings
        # do; TOML also requires DEL to be escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if hasattr(value, "toml_table"):  # an initializer, regularizer or constraint with parameters
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.toml_table().items()) + "}"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) as a TOML value")


# --------------------------------------------------------------------------------------------
# Small helpers.


def _unknown(what: str, name: str, known: Sequence[str] | Mapping[str, Any]) -> str:
    """``unknown key; did you mean `filters`? known: type, name, ...``: the closest known name to
    ``name`` and the list. The caller's error names the key itself (``key=``)."""
    names = list(known)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"; did you mean `{close[0]}`?" if close else ";"
    return f"unknown {what}{hint} known: {', '.join(names)}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_shape(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(
        _is_int(v) and v >= 1 for v in value)


def __getattr__(name: str) -> Any:
    """``from_keras_json`` and ``from_keras_dict``: re-exported from :mod:`jaxcnn.keras` on first
    use (PEP 562), since that module imports this one's helpers."""
    if name in ("from_keras_json", "from_keras_dict"):
        import jaxcnn.keras

        return getattr(jaxcnn.keras, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
