"""Keras model files: the architecture and the open weights of a ``.keras`` archive or a legacy
full-model ``.h5``, and weights-only files applied to a model (:mod:`jaxcnn.keras.weights` maps them)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from jaxcnn.errors import ConfigError

__all__ = ["load_weights", "open_keras_file", "weights_by_name"]


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:  # a dependency; this only guards a broken install
        raise ConfigError("reading Keras weights needs h5py: pip install h5py") from None
    return h5py


def open_keras_file(source: str, kind: str) -> tuple[dict[str, Any], Any]:
    """The Keras model document (``{"class_name": ..., "config": ...}``) and the open HDF5 weights of
    a trained Keras model file; ``kind`` is ``"keras"`` (a ``.keras`` zip) or ``"h5"``. A weights-only
    HDF5 file is refused, saying how to give it its architecture."""
    if kind == "keras":
        from jaxcnn.keras.weights import read_archive

        doc, h5, _ = read_archive(source)
        return doc, h5
    h5py = _h5py()
    try:
        h5 = h5py.File(source, "r")
    except OSError as error:
        raise ConfigError(f"cannot be read as an HDF5 file ({error})", source=source) from None
    config = h5.attrs.get("model_config")
    if config is None:
        h5.close()
        raise ConfigError(
            "holds weights only (no `model_config`): give the architecture and this file together, "
            "as `jaxcnn.load(\"model.json\", weights=...)` or `--weights` on the command line", source=source)
    try:
        doc = json.loads(config.decode("utf8") if isinstance(config, bytes) else config)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        h5.close()
        raise ConfigError(f"its `model_config` attribute is not JSON ({error})", source=source) from None
    if not isinstance(doc, Mapping):
        h5.close()
        raise ConfigError("its `model_config` attribute is not a Keras model description", source=source)
    return dict(doc), h5


def load_weights(model: Any, path: str | os.PathLike[str], *, keras_doc: Mapping[str, Any] | None = None) -> Any:
    """``model`` carrying the weights of the file at ``path``: a Keras 3 ``.weights.h5``, a legacy
    ``.h5`` (``save_weights``, or a full model's), or a ``.keras`` archive. ``keras_doc``, the Keras
    description the model was read from, fixes a Keras 3 file's layer order; without it the
    model's own order stands for Keras's (a model built in Python in Keras's order)."""
    from jaxcnn.files import keras_file_kind
    from jaxcnn.keras.weights import read_archive, read_weights

    source = os.fsdecode(path)
    if not os.path.exists(source):
        raise ConfigError("no such file", source=source)
    kind = keras_file_kind(source)
    if kind == "keras":
        doc, h5, _ = read_archive(source)
        keras_doc = keras_doc or doc
    elif kind == "h5":
        try:
            h5 = _h5py().File(source, "r")
        except OSError as error:
            raise ConfigError(f"cannot be read as an HDF5 file ({error})", source=source) from None
    else:
        raise ConfigError("is neither a Keras weights file (HDF5) nor a `.keras` archive", source=source)
    try:
        return model.with_weights(read_weights(h5, model, source=source, keras_doc=keras_doc))
    finally:
        h5.close()


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def weights_by_name(model: Any, weights: Any) -> tuple[Any, list[str], list[str]]:
    """The part of ``weights`` (another model's, read from a Keras file) that ``model`` takes by
    layer name, for a fine-tuning: every layer of ``model`` with weights whose name is a layer of the
    file takes the file's weights, which must have the same names and shapes; the others keep their
    initializers. Returns ``(the partial Weights, the layers taken, the layers left to their
    initializers)``.

    Raises:
      ConfigError: a layer of both with other weights or shapes (the layer, the weight and both shapes
        named), or no layer of ``model`` named as one of the file's.
    """
    from jaxcnn.keras.weights import Weights

    source = weights.source
    taken: list[str] = []
    fresh: list[str] = []
    tree: dict[str, dict[str, Any]] = {"params": {}, "batch_stats": {}}
    stored = {"params": weights.params, "batch_stats": weights.batch_stats}
    for plan in model.plan():
        if not any(plan.param_shapes.values()):
            continue
        if not any(plan.name in stored[c] for c in stored):
            fresh.append(plan.name)
            continue
        where = dict(source=source, index=plan.index, layer_name=plan.name, layer_type=plan.type)
        for collection in stored:
            want = dict(plan.param_shapes.get(collection, {}))
            have = _flat(stored[collection].get(plan.name, {}))
            if set(want) != set(have):
                raise ConfigError(f"the file's layer of this name holds {collection} {sorted(have) or 'none'}, the "
                                  f"model's {sorted(want) or 'none'}: rename the layer to start it from its initializer",
                                  **where)
            for name, shape in want.items():
                if tuple(have[name].shape) != tuple(shape):
                    raise ConfigError(f"its weight {name} has shape {tuple(have[name].shape)} in the file, the "
                                      f"model's is {tuple(shape)}: rename the layer to start it from its initializer",
                                      **where)
            if want:
                tree[collection][plan.name] = stored[collection][plan.name]
        taken.append(plan.name)
    if not taken:
        raise ConfigError(f"no layer of the model ({', '.join(fresh) or 'none with weights'}) is named as a layer "
                          "of this file: the layers to start from the file must keep its names", source=source)
    return Weights(tree["params"], tree["batch_stats"], source), taken, fresh
