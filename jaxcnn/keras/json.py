"""Keras ``model.to_json()`` files read into jaxcnn models.

The three historical forms are read (Keras 3, tf.keras 2, Keras 2.2). Every argument is either
mapped onto the spec, recognised as harmless bookkeeping (``trainable: true``, a float32 ``dtype``,
null regularizers, ...) or refused with an :class:`~jaxcnn.errors.UnsupportedError` naming the
layer, the argument and its value.

Layer indices in errors count the model's layers as the summary does: an ``InputLayer`` is not
counted, and errors about it carry no index.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from jaxcnn.config import _DEFAULT_MODEL_NAME, _construct, _is_int, _parse_json, _planned
from jaxcnn.errors import ConfigError, JaxcnnError, UnsupportedError, describe_value
from jaxcnn.layers import LAYER_TYPES, Layer
from jaxcnn.layers.initializers import Initializer, initializer_spec
from jaxcnn.layers.keras_objects import ObjectError
from jaxcnn.model import Sequential

__all__ = ["from_keras_dict", "from_keras_json"]

# The keys of a layer entry: Keras 3's, a functional model's ``name`` and ``inbound_nodes``, and a
# nested model's ``compile_config`` (its optimizer and loss: not the architecture).
_KERAS_ENTRY_KEYS = frozenset({
    "class_name", "config", "module", "registered_name", "build_config", "name", "inbound_nodes",
    "compile_config",
})
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


def from_keras_json(text: str, *, source: str = "<keras json>") -> Any:
    """The model of a Keras ``model.to_json()`` text, in any of its historical forms:

    * Keras 3: ``config.layers`` starting with an ``InputLayer`` whose config has ``batch_shape``;
    * tf.keras 2: ``config`` is an object with ``layers``; ``batch_input_shape`` on the first layer;
    * Keras 2.2: ``config`` is the bare list of layers; ``batch_input_shape`` on the first layer;
    * a functional model (``Functional``, ``Model``: ``inbound_nodes``, ``input_layers``,
      ``output_layers``), or a model nested as a layer: a graph model (:mod:`jaxcnn.keras.functional`).

    The text may also be the ``to_json()`` text stored as a JSON string (encoded twice). The layer
    names and the model name (``config.name``, else ``"sequential"``) are kept. Top-level and
    model-config keys Keras does not read are ignored, as Keras ignores them.

    Raises:
      UnsupportedError: a subclassed model, a layer class jaxcnn lacks (``Lambda``: Python code), or
        an argument value it does not support (``data_format="channels_first"``, a regularizer, ...).
      ConfigError: malformed JSON or a wrong or missing value, located at the layer.
    """
    return from_keras_dict(_parse_json(text, source), source=source)


def from_keras_dict(doc: Mapping[str, Any], *, source: str = "<keras json>") -> Any:
    """:func:`from_keras_json` of the parsed JSON ``doc``; a model with an input shape is planned."""
    return _planned(_keras_model(doc, source), source, require_input_shape=False, keras=True)


#: Keras model classes: a document of one of them is a model, and so is a layer entry (a nested model).
MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})

#: Why a ``Lambda`` layer is refused (wherever it appears).
LAMBDA_REFUSED = (
    'class_name="Lambda" is not supported: a Lambda layer holds Python code (its function is '
    "stored as marshalled bytecode), which jaxcnn neither reads nor runs; replace it with a named "
    "layer (Rescaling, Activation, Add, Reshape, ...) and save the model again")


def _keras_model(doc: Mapping[str, Any], source: str) -> Any:
    """The jaxcnn model of a parsed Keras document: a Sequential, or a graph model where the document
    is a functional model or nests one (:mod:`jaxcnn.keras.functional`)."""
    class_name = _model_class(doc, source)
    if class_name != "Sequential" or _nests_a_model(doc.get("config")):
        # jaxcnn.keras.functional imports this module.
        from jaxcnn.keras.functional import graph_model, keras_graph

        return graph_model(keras_graph(doc, source=source), source=source)

    config = doc.get("config")
    build_input_shape = None
    frozen = False
    if isinstance(config, list):  # Keras 2.2
        name, entries = _DEFAULT_MODEL_NAME, config
    else:  # Keras 3, tf.keras 2
        name, entries = _model_options(config, source, allow_frozen=True)
        build_input_shape = config.get("build_input_shape")
        frozen = config.get("trainable", True) is False  # Keras freezes every layer of a frozen model

    try:
        model = Sequential(name=name)
    except JaxcnnError as error:
        raise error.located(source=source) from None

    input_shape: tuple[int, ...] | None = None
    axis_checks: list[tuple[int, int, dict[str, Any]]] = []
    index = 0  # the model's layer index; an InputLayer is not counted
    for position, entry in enumerate(entries):
        layer_class, conf, where = _entry(entry, position, index, source)
        if layer_class == "InputLayer":
            if index or input_shape is not None:
                raise ConfigError("an InputLayer must come first, and only once", **where)
            input_shape = _keras_input_layer(conf, where)
            continue
        batch_shape = _entry_batch_shape(conf, where)
        if batch_shape is not None:
            if index or (input_shape is not None and batch_shape != input_shape):
                raise ConfigError(
                    f"a batch input shape {list(batch_shape)} on a layer other than the first "
                    "one; a Sequential model has one input", **where)
            input_shape = batch_shape
        spec, axis = keras_layer(layer_class, conf, where)
        if frozen:
            spec = dataclasses.replace(spec, trainable=False)
        if axis is not None:
            axis_checks.append((index, axis, where))
        model.add(spec)
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


def _model_class(doc: Any, source: str) -> str:
    """The ``class_name`` of a Keras model document, one of :data:`MODEL_CLASSES`. Other top-level
    keys are not checked: Keras 3's ``model_from_json`` reads ``class_name``, ``config``, ``module``,
    ``registered_name``, ``build_config`` and ``compile_config`` and ignores the rest."""
    if not isinstance(doc, Mapping) or "class_name" not in doc:
        raise ConfigError(
            "is not a Keras model description: expected a JSON object with `class_name` and "
            "`config`", source=source)
    class_name = doc["class_name"]
    if class_name not in MODEL_CLASSES:
        raise UnsupportedError(
            f"class_name={_js(class_name)} is not supported: jaxcnn reads Sequential and functional "
            "(Functional, Model) models, not a subclassed model (its graph is Python code)",
            source=source)
    return class_name


def _model_options(config: Any, source: str, prefix: str = "", *,
                   allow_frozen: bool = False) -> tuple[str, list[Any]]:
    """``(name, layer entries)`` of a Keras 3 or tf.keras 2 model ``config`` object, its
    ``trainable`` and ``dtype`` checked. Other keys are ignored, as Keras's ``from_config`` ignores
    them (``Sequential`` reads ``name``, ``layers`` and ``build_input_shape``; ``Functional`` passes
    the rest to the model's constructor, which drops them)."""
    where: dict[str, Any] = dict(source=source, layer_name=prefix.rstrip("/") or None)
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"`config` must be the list of layers or an object with `layers`, got "
            f"{describe_value(config)}", **where)
    trainable = config.get("trainable", True)
    if not isinstance(trainable, bool):
        raise ConfigError(f"model config trainable={_js(trainable)} must be true or false", **where)
    if not trainable and not allow_frozen:
        raise UnsupportedError(
            "model config trainable=false is not supported on a functional or nested model yet (a "
            "frozen Sequential is read: Keras freezes each of its layers)", **where)
    if not _float32(config.get("dtype")):
        raise UnsupportedError(
            f"model config dtype={_js(config['dtype'])} is not supported: jaxcnn computes in "
            "float32", **where)
    entries = config.get("layers")
    if not isinstance(entries, list):
        raise ConfigError(f"`config.layers` must be a list of layers, got {describe_value(entries)}",
                          **where)
    return config.get("name", _DEFAULT_MODEL_NAME), entries


def _nests_a_model(config: Any) -> bool:
    """Whether a Sequential ``config`` (an object or Keras 2.2's list) has a model among its layers."""
    entries = config.get("layers") if isinstance(config, Mapping) else config
    return isinstance(entries, list) and any(
        isinstance(entry, Mapping) and entry.get("class_name") in MODEL_CLASSES for entry in entries)


def _entry(entry: Any, position: int, index: int, source: str,
           prefix: str = "") -> tuple[str, Mapping[str, Any], dict[str, Any]]:
    """``(class name, config, where)`` of the layer ``entry`` at ``position`` in its model's list;
    ``index`` is the layer's index as the summary counts (an InputLayer has none), ``prefix`` the
    names of the models it is nested in (``"outer/"``)."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("class_name"), str):
        raise ConfigError(
            f"layer entry {position} must be an object with a `class_name` string and a "
            "`config` object", source=source, index=index,
            layer_name=prefix.rstrip("/") or None)
    layer_class = entry["class_name"]
    conf = entry.get("config", {})
    layer_name = conf.get("name") if isinstance(conf, Mapping) else None
    where: dict[str, Any] = dict(
        source=source, index=None if layer_class == "InputLayer" else index,
        layer_name=prefix + layer_name if isinstance(layer_name, str) else None,
        layer_type=layer_class)
    if not isinstance(conf, Mapping):
        raise ConfigError(f"`config` must be an object, got {describe_value(conf)}", **where)
    _check_entry(entry, where)
    return layer_class, conf, where


def _entry_batch_shape(conf: Mapping[str, Any], where: dict[str, Any]) -> tuple[int, ...] | None:
    """The batch input shape a layer's config carries (``batch_input_shape``, ``batch_shape``), if any."""
    for key in ("batch_input_shape", "batch_shape"):
        if key in conf:
            return _batch_shape(conf[key], key, where)
    return None


def keras_layer(layer_class: str, conf: Mapping[str, Any],
                where: dict[str, Any]) -> tuple[Layer, int | None]:
    """``(spec, positive BatchNormalization axis to check or None)`` of one Keras layer entry
    (``class_name`` and ``config``); errors are located at ``where``."""
    if layer_class == "Lambda":
        raise UnsupportedError(LAMBDA_REFUSED, **where)
    canonical = _KERAS_ALIASES.get(layer_class, layer_class)
    if canonical not in LAYER_TYPES:
        raise UnsupportedError(
            f"class_name={_js(layer_class)} is not supported; jaxcnn supports "
            f"{', '.join(LAYER_TYPES)}", **where)
    cls = LAYER_TYPES[canonical]
    kwargs, _, axis = _keras_arguments(cls, conf, where)
    return _construct(cls, kwargs, where, missing="missing argument"), axis


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



def _js(value: Any, limit: int = 120) -> str:
    """A value as JSON (as it appears in a Keras file), shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
