"""Keras files out: a jaxcnn model and its variables written as a Keras 3 ``.keras`` archive that
``keras.saving.load_model`` reads, with the predictions jaxcnn computes.

The archive holds what Keras 3 writes (keras/src/saving/saving_lib.py): ``config.json`` (the model's
Keras configuration: a ``Sequential`` or ``Functional`` with each layer's class and arguments by
Keras's names, the functional form's ``inbound_nodes`` with ``keras_history``), ``model.weights.h5``
(each layer's variables under ``layers/<snake-case class, made unique>/vars/<i>`` in Keras's creation
order, :data:`jaxcnn.keras.weights.KERAS_WEIGHTS` read backwards) and ``metadata.json``.

Operations on a tensor and a number (``x + 3.0``: ``Add(constant=3.0)``) are written as Keras 3
writes them, ``keras.src.ops.numpy`` entries of a functional model. Not written yet, and refused by
name: the applications' own layers (``LayerScale``, ``CustomScaleLayer``). A layer's jaxcnn-only
``lowering`` is dropped (Keras has no such argument, and it changes no value).
"""

from __future__ import annotations

import datetime
import io
import json
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxcnn.errors import ConfigError, UnsupportedError
from jaxcnn.keras.weights import KERAS_WEIGHTS, snake_case_key

__all__ = ["keras_config", "save_keras"]

#: jaxcnn-only layer fields, not written into a Keras configuration
_JAXCNN_ONLY = frozenset({"lowering", "input_shape", "name", "constant"})
#: layer kinds that are not keras.layers classes
_NOT_KERAS_LAYERS = frozenset({"LayerScale", "CustomScaleLayer"})
_FLOAT32 = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}


def _value(value: Any) -> Any:
    """A layer argument as Keras's JSON holds it."""
    from jaxcnn.layers.keras_objects import KerasObject

    if isinstance(value, KerasObject):  # an initializer, regularizer or constraint with parameters
        return {"class_name": value.name, "config": {k: _value(v) for k, v in value.params().items()}}
    if isinstance(value, tuple):
        return [_value(v) for v in value]
    return value


def _layer_entry(layer: Any, input_shape: Any) -> dict[str, Any]:
    if getattr(layer, "constant", None) is not None:  # only a functional model holds operations in Keras
        raise UnsupportedError("is an operation on a tensor and a number (x + c), which a Keras Sequential "
                               "cannot hold: make the model a graph model", layer_name=layer.name, layer_type=layer.type)
    if layer.type in _NOT_KERAS_LAYERS:
        raise UnsupportedError("is a keras.applications layer that jaxcnn cannot write into a Keras file yet",
                               layer_name=layer.name, layer_type=layer.type)
    config: dict[str, Any] = {"name": layer.name, "trainable": bool(getattr(layer, "trainable", True)),
                              "dtype": _FLOAT32}
    for key, value in layer.arguments().items():
        if key not in _JAXCNN_ONLY and key != "trainable":
            config[key] = _value(value)
    entry = {"module": "keras.layers", "class_name": layer.type, "config": config, "registered_name": None}
    if input_shape is not None:
        entry["build_config"] = {"input_shape": _batch(input_shape)}
    return entry


def _batch(shape: Any) -> Any:
    if shape and isinstance(shape[0], (tuple, list)):
        return [_batch(s) for s in shape]
    return [None, *shape]


def _input_entry(name: str, shape: Any) -> dict[str, Any]:
    return {"module": "keras.layers", "class_name": "InputLayer",
            "config": {"batch_shape": _batch(shape), "dtype": "float32", "sparse": False, "ragged": False,
                       "name": name}, "registered_name": None}


def keras_config(model: Any) -> dict[str, Any]:
    """The Keras 3 configuration (``config.json``) of ``model``, a planned jaxcnn model."""
    from jaxcnn.graph import Nested

    plans = {p.name: p for p in model.plan()}
    if not model.is_graph:
        layers = [_input_entry("input_layer", model.input_shape)]
        for p in plans.values():
            layers.append(_nested_entry(p) if isinstance(p.layer, Nested) else _layer_entry(p.layer, p.layer_input))
        return {"module": "keras", "class_name": "Sequential", "registered_name": None,
                "config": {"name": model.name, "trainable": True, "dtype": _FLOAT32, "layers": layers,
                           "build_input_shape": _batch(model.input_shape)},
                "build_config": {"input_shape": _batch(model.input_shape)}}
    shapes = dict(zip(model.input_names, model.input_shapes))
    shapes.update({name: p.output_shape for name, p in plans.items()})
    layers = []
    for node in model.nodes:
        if node.is_input:
            entry = _input_entry(node.name, shapes[node.name])
            entry.update(name=node.name, inbound_nodes=[])
            layers.append(entry)
            continue
        p = plans[node.name]
        tensors = [{"class_name": "__keras_tensor__",
                    "config": {"shape": _batch(shapes[name]), "dtype": "float32", "keras_history": [name, 0, 0]}}
                   for name in node.inputs]
        constant = getattr(p.layer, "constant", None)
        if constant is not None:  # x + c: Keras 3's operation, as it writes MobileNetV3's hard sigmoid
            args = [constant, tensors[0]] if getattr(p.layer, "constant_first", False) else [tensors[0], constant]
            layers.append({"module": "keras.src.ops.numpy", "class_name": p.type, "config": {"name": node.name},
                           "registered_name": p.type, "name": node.name,
                           "inbound_nodes": [{"args": args, "kwargs": {}}]})
            continue
        entry = _nested_entry(p) if isinstance(p.layer, Nested) else _layer_entry(p.layer, p.layer_input)
        entry.update(name=node.name, inbound_nodes=[{"args": [tensors if p.layer.num_inputs != 1 else tensors[0]],
                                                      "kwargs": {}}])
        layers.append(entry)
    ends = lambda names: [[n, 0, 0] for n in names] if len(names) > 1 else [names[0], 0, 0]  # noqa: E731
    return {"module": "keras.src.models.functional", "class_name": "Functional", "registered_name": "Functional",
            "config": {"name": model.name, "trainable": True, "layers": layers,
                       "input_layers": ends(model.input_names), "output_layers": ends(model.output_names)},
            "build_config": {"input_shape": None}}


def _nested_entry(plan: Any) -> dict[str, Any]:
    inner = plan.layer._inner(plan.layer_input)
    entry = keras_config(inner)
    entry["config"]["name"] = plan.name
    entry.pop("build_config", None)
    if not inner.is_graph:
        entry["module"] = "keras"
    return entry


# --------------------------------------------------------------------------------------------
# Weights.


def _write_weights(h5: Any, model: Any, variables: Mapping[str, Any], prefix: str, path: tuple[str, ...]) -> None:
    from jaxcnn.graph import Nested

    used: dict[str, int] = {}
    for plan in model.plan():
        if getattr(plan.layer, "constant", None) is not None:
            continue  # an operation: not in Keras's model.layers, no group name taken
        base = snake_case_key(plan.type)
        key = base if base not in used else f"{base}_{used[base] + 1}"
        used[base] = used.get(base, -1) + 1
        group_path = f"{prefix}layers/{key}"
        if isinstance(plan.layer, Nested):
            _write_weights(h5, plan.layer._inner(plan.layer_input), variables, group_path + "/", (*path, plan.name))
            continue
        roles = KERAS_WEIGHTS.get(plan.type, ())
        present = [(c, n) for _, c, n in roles if n in plan.param_shapes.get(c, {})]
        if not any(plan.param_shapes.values()):
            continue
        group = h5.create_group(f"{group_path}/vars")
        group.attrs["name"] = plan.name
        for i, (collection, name) in enumerate(present):
            node = variables[collection]
            for part in (*path, plan.name):
                node = node[part]
            value = np.asarray(node[name], np.float32)
            if name == "count" and collection == "batch_stats":  # Keras keeps Normalization's count as an int
                value = np.asarray(value, np.int64)
            group.create_dataset(str(i), data=value)


def save_keras(model: Any, variables: Any, path: str | os.PathLike[str]) -> str:
    """Write ``model`` with ``variables`` as a Keras 3 ``.keras`` archive at ``path`` (replaced
    atomically). ``variables``: a training state (``compile(model).init()``, after training), a
    ``{"params": ..., "batch_stats": ...}`` dict as a checkpoint holds them, or ``None`` for the
    weights the model carries (read from a Keras file). Returns the path written.

    Raises:
      UnsupportedError: a layer jaxcnn cannot write into a Keras file yet (named).
      ConfigError: ``path`` cannot be written.
    """
    import h5py

    from jaxcnn import __version__
    from jaxcnn.files import atomic_path

    target = os.fsdecode(path)
    if variables is None:
        if getattr(model, "weights", None) is None:
            raise ConfigError("the model carries no weights: pass its training state", source=target)
        variables = model.weights.variables()
    elif hasattr(variables, "params"):  # a TrainState
        variables = {"params": variables.params, "batch_stats": variables.batch_stats}
    config = keras_config(model)
    buffer = io.BytesIO()
    variables = {"params": variables.get("params", {}), "batch_stats": variables.get("batch_stats", {})}
    with h5py.File(buffer, "w") as h5:
        _write_weights(h5, model, variables, "", ())
        h5.create_group("vars")
    metadata = {"keras_version": "3.0.0", "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
                "writer": f"jaxcnn {__version__}"}
    try:
        with atomic_path(target) as temp, zipfile.ZipFile(temp, "w") as archive:
            archive.writestr("metadata.json", json.dumps(metadata))
            archive.writestr("config.json", json.dumps(config))
            archive.writestr("model.weights.h5", buffer.getvalue())
    except OSError as error:
        raise ConfigError(f"cannot write the Keras file: {error.strerror or error}", source=target) from None
    return target
