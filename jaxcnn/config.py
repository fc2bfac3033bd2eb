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

Top-level sections are those of :data:`SECTIONS`; a layer table takes ``type`` and its spec's
dataclass fields (``name``, ``input_shape`` and the Keras arguments), nothing else.

Keras ``model.to_json()`` files are read in their three historical forms (Keras 3, tf.keras 2,
Keras 2.2). Every argument is either mapped onto the spec, recognised as harmless bookkeeping
(``trainable: true``, a float32 ``dtype``, null regularizers, ...) or refused with an
:class:`~jaxcnn.errors.UnsupportedError` naming the layer, the argument and its value.

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
from typing import Any

from jaxcnn.errors import ConfigError, JaxcnnError, LayerArgumentError, UnsupportedError, describe_value
from jaxcnn.files import write_atomic
from jaxcnn.graph import DEFAULT_NAME as GRAPH_NAME
from jaxcnn.graph import INPUT_NAME, Model, Nested, Node, fresh_name
from jaxcnn.layers import LAYER_TYPES, Input, Layer
from jaxcnn.layers.initializers import Initializer, initializer_spec
from jaxcnn.layers.keras_objects import ObjectError
from jaxcnn.model import Sequential

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
         require_input_shape: bool = False) -> Model:
    """Read a model from ``path``: a jaxcnn ``.toml`` or ``.json`` config, or a Keras
    ``model.to_json()`` file (a JSON object with a top-level ``class_name``).

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
    source, doc = _read(path)
    keras = _is_keras(doc)
    model = _keras_model(doc, source) if keras else _model(doc, source)
    if input_shape is not None:
        try:
            model = model.with_input_shape(input_shape)
        except JaxcnnError as error:
            raise error.located(source=source) from None
    return _planned(model, source, require_input_shape=require_input_shape, keras=keras)


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
        as_json = text.lstrip().startswith("{")
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
    missing = [f"`{f.name}`" for f in fields if _required(f) and f.name not in kwargs]
    if missing:
        raise ConfigError(f"missing required key {', '.join(missing)}", **where)
    try:
        return cls(**kwargs), where
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
    return ["Input", *LAYER_TYPES]


# --------------------------------------------------------------------------------------------
# Writing TOML.


def to_toml(model: Model, *, header: str | None = None) -> str:
    """The model as a jaxcnn TOML config that :func:`load` reads back ``==`` to ``model``.

    ``[model]`` holds the name and input shape (when the model has one); one ``[[layers]]`` table a
    layer holds its ``type``, ``name`` and the arguments that differ from their defaults.
    ``header`` (one or more lines) is written first, as ``#`` comments.
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
        return _graph_toml(model, lines)
    if input_shape is not None:
        lines.append(f"input_shape = {_toml_value(input_shape)}")
    for index, layer in enumerate(model.layers):
        lines += _layer_toml(index, layer, ())
    return "\n".join(lines) + "\n"


def _graph_toml(model: Model, lines: list[str]) -> str:
    lines.append(f"outputs = {_toml_value(list(model.output_names))}")
    index = 0
    for node in model.nodes:
        if node.is_input:
            lines += ["", "[[layers]]", 'type = "Input"', f"name = {_toml_value(node.name)}",
                      f"shape = {_toml_value(node.layer.shape)}"]  # type: ignore[union-attr]
        else:
            lines += _layer_toml(index, node.layer, node.inputs)  # type: ignore[arg-type]
            index += 1
    return "\n".join(lines) + "\n"


def _layer_toml(index: int, layer: Layer, inputs: tuple[str, ...]) -> list[str]:
    """One ``[[layers]]`` table: type, name, ``inputs`` (a graph's), the non-default arguments."""
    where: dict[str, Any] = dict(index=index, layer_name=layer.name, layer_type=layer.type)
    lines = ["", "[[layers]]", f"type = {_toml_value(layer.type)}"]
    try:
        if isinstance(layer, Nested):
            raise ConfigError("is a nested model, which a jaxcnn TOML config cannot hold yet (its layers "
                              "can be written into the outer model instead)")
        lines.append(f"name = {_toml_value(layer.name)}")
        if inputs:
            lines.append(f"inputs = {_toml_value(list(inputs))}")
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
    text = to_toml(model, header=header)  # before touching the disk: a failure writes nothing
    target = pathlib.Path(os.fsdecode(path))
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
# Keras model.to_json().

_KERAS_TOP_KEYS = frozenset({
    "class_name", "config", "module", "registered_name", "build_config", "compile_config",
    "keras_version", "backend",
})
_KERAS_MODEL_KEYS = frozenset({"name", "layers", "trainable", "dtype", "build_input_shape"})
_KERAS_ENTRY_KEYS = frozenset({"class_name", "config", "module", "registered_name", "build_config"})
_KERAS_INPUT_KEYS = frozenset({
    "name", "batch_shape", "batch_input_shape", "dtype", "sparse", "ragged", "optional",
})
# Keras's aliases of the same classes.
_KERAS_ALIASES = {
    "Convolution2D": "Conv2D",
    "MaxPool2D": "MaxPooling2D",
    "AvgPool2D": "AveragePooling2D",
    "GlobalAvgPool2D": "GlobalAveragePooling2D",
    "GlobalMaxPool2D": "GlobalMaxPooling2D",
}
# Keras 2 argument names of Keras 3's arguments: (class, Keras 2 name) -> the spec's field.
_KERAS_RENAMED = {("LeakyReLU", "alpha"): "negative_slope"}
# Initializers jaxcnn has no argument for: only their Keras defaults are accepted.
_FIXED_INITIALIZERS = {
    "BatchNormalization": {
        "beta_initializer": "zeros",
        "gamma_initializer": "ones",
        "moving_mean_initializer": "zeros",
        "moving_variance_initializer": "ones",
    },
}
class _Refused(Exception):
    """A Keras value jaxcnn does not support; the caller names the layer and the argument."""


def from_keras_json(text: str, *, source: str = "<keras json>") -> Sequential:
    """The model of a Keras ``model.to_json()`` text, in any of its three historical forms:

    * Keras 3: ``config.layers`` starting with an ``InputLayer`` whose config has ``batch_shape``;
    * tf.keras 2: ``config`` is an object with ``layers``; ``batch_input_shape`` on the first layer;
    * Keras 2.2: ``config`` is the bare list of layers; ``batch_input_shape`` on the first layer.

    The layer names and the model name (``config.name``, else ``"sequential"``) are kept.

    Raises:
      UnsupportedError: a model other than ``Sequential``, a layer class jaxcnn lacks, or an
        argument value it does not support (``data_format="channels_first"``, a regularizer, ...).
      ConfigError: malformed JSON or a wrong or missing value, located at the layer.
    """
    return from_keras_dict(_parse_json(text, source), source=source)


def from_keras_dict(doc: Mapping[str, Any], *, source: str = "<keras json>") -> Sequential:
    """:func:`from_keras_json` of the parsed JSON ``doc``; a model with an input shape is planned."""
    return _planned(_keras_model(doc, source), source, require_input_shape=False, keras=True)


def _keras_model(doc: Mapping[str, Any], source: str) -> Sequential:
    if not isinstance(doc, Mapping) or "class_name" not in doc:
        raise ConfigError(
            "is not a Keras model description: expected a JSON object with `class_name` and "
            "`config`", source=source)
    class_name = doc["class_name"]
    if class_name != "Sequential":
        raise UnsupportedError(
            f"class_name={_js(class_name)} is not supported: jaxcnn reads Sequential models only "
            "(a functional or subclassed model is a graph, not a layer list)", source=source)
    for key, value in doc.items():
        if key not in _KERAS_TOP_KEYS:
            raise UnsupportedError(f"top-level key {key}={_js(value)} is not supported",
                                   source=source)

    config = doc.get("config")
    build_input_shape = None
    frozen = False
    if isinstance(config, list):  # Keras 2.2
        name, entries = _DEFAULT_MODEL_NAME, config
    elif isinstance(config, Mapping):  # Keras 3, tf.keras 2
        for key, value in config.items():
            if key not in _KERAS_MODEL_KEYS:
                raise UnsupportedError(f"model config {key}={_js(value)} is not supported",
                                       source=source)
        if not isinstance(config.get("trainable", True), bool):
            raise ConfigError(f"model config trainable={_js(config['trainable'])} must be true or false",
                              source=source)
        frozen = config.get("trainable", True) is False  # Keras freezes every layer of a frozen model
        if not _float32(config.get("dtype")):
            raise UnsupportedError(
                f"model config dtype={_js(config['dtype'])} is not supported: jaxcnn computes in "
                "float32", source=source)
        name = config.get("name", _DEFAULT_MODEL_NAME)
        entries = config.get("layers")
        build_input_shape = config.get("build_input_shape")
        if not isinstance(entries, list):
            raise ConfigError(f"`config.layers` must be a list of layers, got {describe_value(entries)}",
                              source=source)
    else:
        raise ConfigError(
            f"`config` must be the list of layers or an object with `layers`, got "
            f"{describe_value(config)}", source=source)

    try:
        model = Sequential(name=name)
    except JaxcnnError as error:
        raise error.located(source=source) from None

    input_shape: tuple[int, ...] | None = None
    axis_checks: list[tuple[int, int, dict[str, Any]]] = []
    index = 0  # the model's layer index; an InputLayer is not counted
    for position, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("class_name"), str):
            raise ConfigError(
                f"layer entry {position} must be an object with a `class_name` string and a "
                "`config` object", source=source, index=index)
        layer_class = entry["class_name"]
        conf = entry.get("config", {})
        layer_name = conf.get("name") if isinstance(conf, Mapping) else None
        is_input = layer_class == "InputLayer"
        where: dict[str, Any] = dict(source=source, index=None if is_input else index,
                     layer_name=layer_name if isinstance(layer_name, str) else None,
                     layer_type=layer_class)
        if not isinstance(conf, Mapping):
            raise ConfigError(f"`config` must be an object, got {describe_value(conf)}", **where)
        _check_entry(entry, where)

        if is_input:
            if index or input_shape is not None:
                raise ConfigError("an InputLayer must come first, and only once", **where)
            input_shape = _keras_input_layer(conf, where)
            continue

        canonical = _KERAS_ALIASES.get(layer_class, layer_class)
        if canonical not in LAYER_TYPES:
            raise UnsupportedError(
                f"class_name={_js(layer_class)} is not supported; jaxcnn supports "
                f"{', '.join(LAYER_TYPES)}", **where)
        cls = LAYER_TYPES[canonical]
        kwargs, batch_shape, axis = _keras_arguments(cls, conf, where)
        if frozen:
            kwargs["trainable"] = False
        if batch_shape is not None:
            if index or (input_shape is not None and batch_shape != input_shape):
                raise ConfigError(
                    f"a batch input shape {list(batch_shape)} on a layer other than the first "
                    "one; a Sequential model has one input", **where)
            input_shape = batch_shape
        if axis is not None:
            axis_checks.append((index, axis, where))
        missing = [f"`{f.name}`" for f in dataclasses.fields(cls)
                   if _required(f) and f.name not in kwargs]
        if missing:
            raise ConfigError(f"missing argument {', '.join(missing)}", **where)
        try:
            model.add(cls(**kwargs))
        except JaxcnnError as error:
            raise error.located(**where) from None
        index += 1

    if input_shape is None and build_input_shape is not None:
        input_shape = _batch_shape(build_input_shape, "build_input_shape",
                                   dict(source=source, key="build_input_shape"))
    if input_shape is not None:
        try:
            model = model.with_input_shape(input_shape)
        except JaxcnnError as error:
            raise error.located(source=source) from None
    _check_axes(model, axis_checks)
    return model


def _check_entry(entry: Mapping[str, Any], where: dict[str, Any]) -> None:
    for key, value in entry.items():
        if key not in _KERAS_ENTRY_KEYS:
            raise UnsupportedError(f"{key}={_js(value)} is not supported", **where)
    module = entry.get("module")
    if module is not None and not (isinstance(module, str)
                                   and module.split(".")[0] in ("keras", "tf_keras", "tensorflow")):
        raise UnsupportedError(
            f"module={_js(module)} is not supported: only Keras's own layers are", **where)
    registered = entry.get("registered_name")
    if registered is not None and registered != entry["class_name"]:
        raise UnsupportedError(
            f"registered_name={_js(registered)} is not supported: a custom layer", **where)


def _keras_input_layer(conf: Mapping[str, Any], where: dict[str, Any]) -> tuple[int, ...]:
    shape = None
    for key, value in conf.items():
        if key not in _KERAS_INPUT_KEYS:
            raise UnsupportedError(f"{key}={_js(value)} is not supported", **where)
        if key in ("batch_shape", "batch_input_shape"):
            shape = _batch_shape(value, key, where)
        elif key == "dtype" and not _float32(value):
            raise UnsupportedError(f"dtype={_js(value)} is not supported: jaxcnn computes in float32",
                                   **where)
        elif key in ("sparse", "ragged", "optional") and value is not False:
            raise UnsupportedError(f"{key}={_js(value)} is not supported", **where)
    if shape is None:
        raise ConfigError("missing `batch_shape`: the model's input shape", **where)
    return shape


def _batch_shape(value: Any, key: str, where: dict[str, Any]) -> tuple[int, ...]:
    if (not isinstance(value, list) or len(value) < 2
            or not all(_is_int(v) and v >= 1 for v in value[1:])):
        raise ConfigError(
            f"{key}={_js(value)} must be a list [null, dim, ...] of positive dimensions", **where)
    if value[0] is not None:
        raise UnsupportedError(
            f"{key}={_js(value)} is not supported: a fixed batch size; jaxcnn shapes leave the "
            "batch axis free (null)", **where)
    return tuple(value[1:])


def _keras_arguments(
    cls: type[Layer], conf: Mapping[str, Any], where: dict[str, Any]
) -> tuple[dict[str, Any], tuple[int, ...] | None, int | None]:
    """``(spec arguments, batch input shape or None, a positive BatchNormalization axis to check)``."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"input_shape"}
    fixed = _FIXED_INITIALIZERS.get(cls.__name__, {})
    kwargs: dict[str, Any] = {}
    batch_shape = None
    axis_to_check = None
    for key, value in conf.items():
        try:
            if key in ("batch_input_shape", "batch_shape"):
                batch_shape = _batch_shape(value, key, where)
            elif key == "data_format":  # refused here by name, with the spec's field left at its default
                _harmless(key, value)
            elif (field := _KERAS_RENAMED.get((cls.__name__, key), key)) in fields:
                if field.endswith("_initializer"):
                    value = _keras_initializer(value)
                elif field == "activation":
                    value = _keras_activation(value)
                elif field == "axis" and cls.__name__ == "BatchNormalization":
                    value, axis_to_check = _keras_axis(value)
                kwargs[field] = value
            elif key in fixed:
                if _keras_initializer(value) != fixed[key]:
                    raise _Refused(f"jaxcnn initializes it with {fixed[key]}")
            else:
                _harmless(key, value)
        except _Refused as refusal:
            reason = f": {refusal}" if str(refusal) else ""
            raise UnsupportedError(f"{key}={_js(value)} is not supported{reason}", **where) from None
    return kwargs, batch_shape, axis_to_check


def _harmless(key: str, value: Any) -> None:
    """Accept Keras bookkeeping with a value that changes nothing; raise :class:`_Refused` otherwise."""
    if key == "dtype":
        ok, why = _float32(value), "jaxcnn computes in float32"
    elif key == "seed":
        ok, why = True, ""
    elif key == "data_format":
        ok, why = value in ("channels_last", None), "jaxcnn is channels-last: (height, width, channels)"
    elif key == "groups":  # tf.keras 2 writes groups=1 into DepthwiseConv2D's config too
        ok, why = _is_int(value) and value == 1, "only Conv2D takes groups"
    elif key == "noise_shape":
        ok, why = value is None, "only jaxcnn's Dropout has a noise shape"
    elif key in ("synchronized", "renorm", "rms_scaling"):
        ok, why = value is False, ""
    elif key.startswith("renorm_"):
        ok, why = True, ""  # only used with renorm=true, refused above
    elif key.endswith("_regularizer"):
        ok, why = value is None, "jaxcnn has no regularizer on this weight"
    elif key.endswith("_constraint"):
        ok, why = value is None, "jaxcnn has no constraint on this weight"
    elif key == "quantization_config":
        ok, why = value is None, "jaxcnn has no quantization"
    elif key == "lora_rank":
        ok, why = value in (None, 0) and not isinstance(value, bool), "jaxcnn has no LoRA"
    elif key == "lora_alpha":
        ok, why = value is None, "jaxcnn has no LoRA"
    else:
        ok, why = False, "jaxcnn has no such argument"
    if not ok:
        raise _Refused(why)


def _float32(value: Any) -> bool:
    if value is None or value == "float32":
        return True
    if isinstance(value, Mapping) and value.get("class_name") in (
            "DTypePolicy", "FloatDTypePolicy", "Policy"):
        conf = value.get("config")
        return isinstance(conf, Mapping) and conf.get("name") == "float32"
    return False


def _keras_activation(value: Any) -> Any:
    if isinstance(value, Mapping):
        # Keras 3 writes some functions as {"class_name": "function", "config": "relu", ...}.
        if value.get("class_name") == "function" and isinstance(value.get("config"), str):
            return value["config"]
        raise _Refused("a custom activation")
    return value  # a name (or a wrong value): the spec checks it


def _keras_axis(value: Any) -> tuple[int, int | None]:
    """BatchNormalization ``axis``: ``-1``, ``3``, ``[3]``, ... -> ``(-1, positive axis to check)``."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if _is_int(value) and value == -1:
        return -1, None
    if _is_int(value) and value >= 1:
        return -1, value
    raise _Refused("jaxcnn normalizes the last (channels) axis only")


def _check_axes(model: Sequential, checks: list[tuple[int, int, dict[str, Any]]]) -> None:
    """A positive BatchNormalization axis must be the last one of its input (batch axis included)."""
    if not checks:
        return
    try:
        plan = model.plan()
    except JaxcnnError:
        plan = None
    for index, axis, where in checks:
        last = len(plan[index].input_shape) if plan is not None else 3
        if axis != last:
            raise UnsupportedError(
                f"axis={axis} is not supported: jaxcnn normalizes the last (channels) axis only"
                + (f", axis {last} of this input" if plan is not None else ""), **where)


def _keras_initializer(value: Any) -> str | Initializer:
    """A Keras initializer (a name, or ``{"class_name": ..., "config": {...}}`` in Keras 3's or
    tf.keras 2's form) as :func:`jaxcnn.layers.initializers.initializer_spec` reads it; raise
    :class:`_Refused` where it is none that jaxcnn has."""
    try:
        return initializer_spec(value)
    except ObjectError as error:
        raise _Refused(str(error)) from None


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




def _js(value: Any, limit: int = 120) -> str:
    """A value as JSON (as it appears in a Keras file), shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
