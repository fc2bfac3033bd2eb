"""Trained Keras weights in: the Keras 3 ``.keras`` archive, its ``.weights.h5``, and the legacy HDF5
files of Keras 2 / tf.keras (a full model's ``.h5``, or ``save_weights``), mapped onto a jaxcnn model.

Every weight is placed by its layer and its role, never by position alone:

- **Keras 3** (``model.weights.h5``, alone or inside a ``.keras`` zip): Keras writes a layer's
  variables under ``layers/<key>/vars/<i>``, where ``<key>`` is the snake-case class name made unique
  in ``model.layers`` order (``conv2d``, ``conv2d_1``, ...; keras/src/saving/saving_lib.py,
  ``_save_container_state``: "Do NOT address the saveable via ``saveable.name``"), a nested model's
  under ``layers/<key>/layers/...``, and ``<i>`` counts the layer's variables in creation order,
  trainable first. Recent versions also record the layer's ``name`` on its ``vars`` group, which is
  checked where present. The role of ``vars/<i>`` is the i-th of the layer's Keras weights that its
  configuration creates (:data:`KERAS_WEIGHTS`: a ``Conv2D`` with ``use_bias=False`` has a kernel
  only; a ``BatchNormalization`` with ``center=False`` has gamma, moving mean and moving variance).
- **Legacy HDF5** (``model_weights`` of a full-model file, or the root of ``save_weights``): a group
  per layer name, listing ``weight_names`` (``conv2d/kernel:0``; a nested model's hold its layers'
  names, ``Conv1/kernel:0``). The layer is found by name, the role read from the weight's name.

Every expected weight must be present with the shape the model's formulas give it (Keras's own
layouts: a Conv2D kernel is ``(kh, kw, in/groups, out)``, a DepthwiseConv2D kernel ``(kh, kw, in,
multiplier)``, a Conv2DTranspose kernel ``(kh, kw, out, in)``), and nothing else may be in the file.
A missing, extra or misshapen weight is refused naming the file, the layer, the weight and both
shapes; the whole tree is built before anything is returned, so nothing is half-loaded.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from jaxcnn.errors import ConfigError, UnsupportedError

__all__ = ["KERAS_WEIGHTS", "Weights", "keras_weights", "read_archive", "read_weights", "snake_case_key"]

# jaxcnn layer type -> its Keras weights in Keras's creation order: (Keras's name, jaxcnn's collection,
# jaxcnn's name). A weight the layer's configuration does not create (no bias) is skipped. Where Keras
# versions name a weight differently, the names are joined by "|" (the first is printed).
_KERNEL_BIAS = (("kernel", "params", "kernel"), ("bias", "params", "bias"))
_GAMMA_BETA = (("gamma", "params", "gamma"), ("beta", "params", "beta"))
KERAS_WEIGHTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "Conv2D": _KERNEL_BIAS,
    "Conv2DTranspose": _KERNEL_BIAS,
    # tf.keras 2 named this kernel `depthwise_kernel`, Keras 3 names it `kernel`
    "DepthwiseConv2D": (("depthwise_kernel|kernel", "params", "kernel"), ("bias", "params", "bias")),
    "SeparableConv2D": (("depthwise_kernel", "params", "depthwise_kernel"),
                        ("pointwise_kernel", "params", "pointwise_kernel"), ("bias", "params", "bias")),
    "Dense": _KERNEL_BIAS,
    "BatchNormalization": (("gamma", "params", "scale"), ("beta", "params", "bias"),
                           ("moving_mean", "batch_stats", "mean"), ("moving_variance", "batch_stats", "var")),
    "LayerNormalization": _GAMMA_BETA,
    "GroupNormalization": _GAMMA_BETA,
    "Normalization": (("mean", "batch_stats", "mean"), ("variance", "batch_stats", "variance"),
                      ("count", "batch_stats", "count")),
    "PReLU": (("alpha", "params", "alpha"),),
    "LayerScale": (("gamma", "params", "gamma"),),
}
_NESTED_TYPES = ("Sequential", "Functional")


@dataclasses.dataclass(frozen=True)
class Weights:
    """A model's trained variables read from a Keras file: ``params`` and ``batch_stats`` as jaxcnn's
    Flax module names them (``{layer: {name: array}}``, a nested model's under its name), float32
    numpy arrays, and the file they came from."""

    params: dict[str, Any]
    batch_stats: dict[str, Any]
    source: str

    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}

    def count(self) -> int:
        def size(tree: Mapping[str, Any]) -> int:
            return sum(size(v) if isinstance(v, Mapping) else int(np.size(v)) for v in tree.values())
        return size(self.params) + size(self.batch_stats)


def snake_case_key(class_name: str) -> str:
    """Keras's ``naming.to_snake_case``, which names a layer's group in a Keras 3 weights file."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def keras_weights(layer: Any, param_shapes: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str, tuple[int, ...]]]:
    """The Keras weights ``layer`` has, in Keras's order: ``(keras name, collection, jaxcnn name,
    shape)``, from its planned ``param_shapes``. Raises UnsupportedError for a layer with weights that
    :data:`KERAS_WEIGHTS` does not map."""
    roles = KERAS_WEIGHTS.get(layer.type)
    present = {(c, n) for c, shapes in param_shapes.items() for n in shapes}
    if roles is None:
        if present:
            raise UnsupportedError(f"jaxcnn cannot map the Keras weights of a {layer.type} layer",
                                   layer_name=layer.name, layer_type=layer.type)
        return []
    out = [(k, c, n, tuple(param_shapes[c][n])) for k, c, n in roles if (c, n) in present]
    unmapped = present - {(c, n) for _, c, n, _ in out}
    if unmapped:  # a jaxcnn weight with no Keras role: a gap in the table above, not the user's file
        raise UnsupportedError(f"jaxcnn cannot map its weights {sorted(n for _, n in unmapped)} to Keras's",
                               layer_name=layer.name, layer_type=layer.type)
    return out


# --------------------------------------------------------------------------------------------
# Files.


def read_archive(path: str) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """The parsed ``config.json``, the open ``model.weights.h5`` (an ``h5py.File``) and the parsed
    ``metadata.json`` of a Keras 3 ``.keras`` archive."""
    import h5py

    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names:
                raise ConfigError("is not a Keras 3 `.keras` archive: it has no config.json", source=path)
            config = json.loads(archive.read("config.json"))
            metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
            if "model.weights.h5" not in names:
                shards = sorted(n for n in names if n.endswith(".weights.h5") or n.endswith(".weights.json"))
                what = f"sharded weights ({', '.join(shards)})" if shards else "no model.weights.h5"
                raise UnsupportedError(f"holds {what}; jaxcnn reads one model.weights.h5", source=path)
            data = archive.read("model.weights.h5")
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, KeyError) as error:
        raise ConfigError(f"cannot be read as a Keras 3 `.keras` archive ({error})", source=path) from None
    _check_version(metadata.get("keras_version"), path)
    return config, h5py.File(io.BytesIO(data), "r"), metadata


def _check_version(version: Any, source: str) -> None:
    """Keras 2 and 3 files are read; another major version is refused by name."""
    if version is None:
        return
    text = version.decode() if isinstance(version, bytes) else str(version)
    major = text.split(".")[0]
    if major not in ("2", "3"):
        raise UnsupportedError(f"was written by Keras {text}; jaxcnn reads the files of Keras 2 and 3", source=source)


def read_weights(h5: Any, model: Any, *, source: str, keras_doc: Mapping[str, Any] | None = None) -> Weights:
    """The weights in the open HDF5 file ``h5`` for ``model`` (a planned jaxcnn model read from the
    same architecture). A Keras 3 file is walked in ``keras_doc``'s layer order (the model's own
    Keras configuration: it fixes the group names); without one, the model's own layer order and
    classes stand for it. A legacy file is read by layer name."""
    try:
        if "layers" in h5 or "_layer_checkpoint_dependencies" in h5 or ("vars" in h5 and "layer_names" not in h5.attrs):
            return _Keras3(h5, source).read(model, keras_doc)
        group = h5["model_weights"] if "model_weights" in h5 else h5
        if "layer_names" in group.attrs or "layer_names0" in group.attrs:
            _check_version(h5.attrs.get("keras_version", group.attrs.get("keras_version")), source)
            return _Legacy(group, source).read(model)
    except OSError as error:  # a truncated or corrupt HDF5 file
        raise ConfigError(f"cannot read its weights ({error})", source=source) from None
    raise ConfigError("holds no Keras weights (neither a Keras 3 `layers` group nor legacy `layer_names`)",
                      source=source)


def _array(dataset: Any, source: str, where: str) -> np.ndarray:
    try:
        value = np.asarray(dataset[()])
    except (OSError, TypeError, ValueError) as error:
        raise ConfigError(f"cannot read the weight {where} ({error})", source=source) from None
    if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise ConfigError(f"the weight {where} holds {value.dtype} values, not numbers", source=source)
    return value.astype(np.float32, copy=False)  # a float32 file (the usual) is not copied again


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _put(tree: dict[str, Any], path: tuple[str, ...], collection: str, name: str, value: np.ndarray) -> None:
    node = tree.setdefault(collection, {})
    for part in path:
        node = node.setdefault(part, {})
    node[name] = value


def _layers(model: Any) -> Iterator[tuple[Any, Any]]:
    """``(plan entry, inner model or None)`` of each layer of ``model``, in its layer order."""
    for p in model.plan():
        inner = p.layer._inner(p.layer_input) if p.type in _NESTED_TYPES and hasattr(p.layer, "_inner") else None
        yield p, inner


def _first(name: str) -> str:
    """The printed name of a weight that Keras versions name differently (``a|b``: ``a``)."""
    layer, _, role = name.rpartition("/")
    return f"{layer}/{role.split('|')[0]}" if layer else role.split("|")[0]


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


class _Keras3:
    """Reads ``layers/<key>/vars/<i>`` groups (Keras 3)."""

    def __init__(self, h5: Any, source: str) -> None:
        self.h5 = h5
        self.source = source
        self.tree: dict[str, Any] = {}

    def group(self, path: str) -> Any:
        for candidate in (path, path.replace("layers", "_layer_checkpoint_dependencies")):
            if candidate in self.h5:
                return self.h5[candidate]
        return None

    def read(self, model: Any, doc: Mapping[str, Any] | None) -> Weights:
        self.walk(model, doc, "", ())
        return Weights(self.tree.get("params", {}), self.tree.get("batch_stats", {}), self.source)

    def walk(self, model: Any, doc: Mapping[str, Any] | None, prefix: str, path: tuple[str, ...]) -> None:
        plans = {p.name: (p, inner) for p, inner in _layers(model)}
        entries = _doc_layers(doc) if doc is not None else [
            (p.type, p.name, None) for p, _ in plans.values()
            if getattr(p.layer, "constant", None) is None]  # `x + 3.0` is an operation in Keras, not a layer
        used: dict[str, int] = {}
        seen: set[str] = set()
        for class_name, name, sub_doc in entries:
            if class_name == "InputLayer":
                continue
            base = snake_case_key(class_name)
            key = base if base not in used else f"{base}_{used[base] + 1}"
            used[base] = used.get(base, -1) + 1
            seen.add(key)
            if name not in plans:
                raise ConfigError(f"the weights' layer list names a layer '{name}' the model does not have",
                                  source=self.source)
            plan, inner = plans[name]
            group_path = f"{prefix}layers/{key}"
            group = self.group(group_path)
            where = dict(source=self.source, index=plan.index, layer_name=plan.name, layer_type=plan.type)
            recorded = _recorded_name(group)
            if recorded is not None and recorded != name:
                raise ConfigError(f"its weights' group {group_path} belongs to the layer '{recorded}', "
                                  f"not '{name}'", **where)
            if inner is not None:
                self.walk(inner, sub_doc, group_path + "/", (*path, name))
                continue
            self.layer(plan, group, group_path, (*path, name), where)
        self.refuse_extra(prefix, seen)

    def layer(self, plan: Any, group: Any, group_path: str, path: tuple[str, ...], where: dict[str, Any]) -> None:
        try:
            expected = keras_weights(plan.layer, plan.param_shapes)
        except UnsupportedError as error:
            raise error.located(**where) from None
        stored = group["vars"] if group is not None and "vars" in group else None
        keys = sorted(stored.keys(), key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k)) if stored is not None else []
        if len(keys) != len(expected) or keys != [str(i) for i in range(len(keys))]:
            names = ", ".join(_first(k) for k, *_ in expected) or "none"
            raise ConfigError(f"the file holds {len(keys)} weights for this layer ({group_path}/vars), "
                              f"the layer has {len(expected)} ({names})", **where)
        for i, (keras_name, collection, name, shape) in enumerate(expected):
            value = _array(stored[str(i)], self.source, f"{group_path}/vars/{i}")
            if value.shape != shape:
                raise ConfigError(f"its weight {_first(keras_name)} ({group_path}/vars/{i}) has shape {_fmt(value.shape)} "
                                  f"in the file, the layer's is {_fmt(shape)}", **where)
            _put(self.tree, path, collection, name, value)

    def refuse_extra(self, prefix: str, seen: set[str]) -> None:
        for container in ("layers", "_layer_checkpoint_dependencies"):
            group = self.h5.get(f"{prefix}{container}")
            if group is None:
                continue
            extra = sorted(k for k in group.keys() if k not in seen and _holds_arrays(group[k]))
            if extra:
                raise ConfigError(f"holds weights for layers the model does not have: "
                                  f"{', '.join(f'{prefix}{container}/{k}' for k in extra)}", source=self.source)


def _recorded_name(group: Any) -> str | None:
    """The layer name a Keras 3 weights file records on a layer's ``vars`` group (Keras 3.9 and
    later), or ``None``."""
    if group is None:
        return None
    for holder in (group.get("vars"), group):
        if holder is not None and "name" in holder.attrs:
            return _text(holder.attrs["name"])
    return None


def _holds_arrays(group: Any) -> bool:
    import h5py

    found = []
    group.visititems(lambda _, obj: found.append(True) if isinstance(obj, h5py.Dataset) else None)
    return bool(found)


def _doc_layers(doc: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """``(class_name, name, nested model document or None)`` of each layer entry of a Keras model
    document, in its order (which is ``model.layers``' order, the order Keras saved in). Keras 3's
    operations on tensors (MobileNetV3's ``x + 3.0``, jaxcnn's ``Add(constant=...)``) are entries
    too but not layers, so they are left out."""
    config = doc.get("config", {})
    entries = config if isinstance(config, list) else config.get("layers", [])
    out = []
    for entry in entries:
        if str(entry.get("module", "")).startswith("keras.src.ops."):
            continue  # an operation (`x + 3.0`): not in model.layers, no weights, no group name taken
        class_name = entry.get("class_name")
        conf = entry.get("config", {})
        name = conf.get("name") if isinstance(conf, Mapping) else None
        nested = entry if class_name in _NESTED_TYPES or class_name == "Model" else None
        out.append((class_name, name, nested))
    return out


class _Legacy:
    """Reads the legacy layout: ``<layer name>/<weight name>`` with ``weight_names`` attributes."""

    def __init__(self, group: Any, source: str) -> None:
        self.group = group
        self.source = source
        self.tree: dict[str, Any] = {}

    def attribute(self, group: Any, name: str) -> list[str]:
        if name in group.attrs:
            return [_text(v) for v in group.attrs[name]]
        out: list[str] = []
        chunk = 0
        while f"{name}{chunk}" in group.attrs:  # Keras splits an attribute over 64 KB into chunks
            out.extend(_text(v) for v in group.attrs[f"{name}{chunk}"])
            chunk += 1
        return out

    def read(self, model: Any) -> Weights:
        stored: dict[str, list[str]] = {}
        for layer_name in self.attribute(self.group, "layer_names"):
            if layer_name not in self.group:
                raise ConfigError(f"lists a layer '{layer_name}' that it holds no group for", source=self.source)
            names = self.attribute(self.group[layer_name], "weight_names")
            if names:
                stored[layer_name] = names
        used: set[str] = set()
        for plan, inner in _layers(model):
            where = dict(source=self.source, index=plan.index, layer_name=plan.name, layer_type=plan.type)
            try:  # "<innermost layer>/<Keras name>" -> (the layer's path, its role)
                expected = {f"{path[-1]}/{role[0]}": (path, role) for path, role in self.roles(plan, inner, ())}
            except UnsupportedError as error:
                raise error.located(**where) from None
            aliases = {}  # each name a Keras version gives the weight -> its key in `expected`
            for key in expected:
                layer, names = key.rsplit("/", 1)
                aliases.update({f"{layer}/{alias}": key for alias in names.split("|")})
            names = stored.get(plan.name, [])
            if not expected and not names:
                continue
            used.add(plan.name)
            found: dict[str, str] = {}
            for weight_name in names:
                key = "/".join(weight_name.split(":")[0].split("/")[-2:])
                if "/" not in key:
                    key = f"{plan.name}/{key}"
                if key not in aliases:
                    raise ConfigError(f"the file holds a weight {weight_name} that the layer does not have "
                                      f"(it has {', '.join(map(_first, expected)) or 'none'})", **where)
                key = aliases[key]
                if key in found:
                    raise ConfigError(f"the file holds the weight {key} twice ({found[key]}, {weight_name})", **where)
                found[key] = weight_name
            missing = [_first(k) for k in expected if k not in found]
            if missing:
                raise ConfigError(f"the file lacks the weight{'s' if len(missing) > 1 else ''} "
                                  f"{', '.join(missing)}", **where)
            for key, weight_name in found.items():
                path, (keras_name, collection, name, shape) = expected[key]
                value = _array(self.group[plan.name][weight_name], self.source, f"{plan.name}/{weight_name}")
                if value.shape != shape:
                    raise ConfigError(f"its weight {weight_name} has shape {_fmt(value.shape)} in the file, "
                                      f"the layer's {_first(keras_name)} is {_fmt(shape)}", **where)
                _put(self.tree, path, collection, name, value)
        extra = sorted(set(stored) - used)
        if extra:
            raise ConfigError(f"holds weights for layers the model does not have: {', '.join(extra)}",
                              source=self.source)
        return Weights(self.tree.get("params", {}), self.tree.get("batch_stats", {}), self.source)

    def roles(self, plan: Any, inner: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], tuple[str, str, str, tuple[int, ...]]]]:
        """``(the layer's path, role)`` of each weight of ``plan``'s layer; a nested model's (``inner``)
        are its layers', which legacy files name by the innermost layer's name."""
        path = (*path, plan.name)
        if inner is None:
            for role in keras_weights(plan.layer, plan.param_shapes):
                yield path, role
            return
        for sub, sub_inner in _layers(inner):
            yield from self.roles(sub, sub_inner, path)
