"""Export a trained model into one file that runs without the model's code (see :mod:`jaxcnn.artifact`).

``jaxcnn export CONFIG --checkpoint DIR --out FILE`` is :func:`export_model`; ``jaxcnn export
model.keras --out FILE`` (a trained Keras model with its own weights) is :func:`export_keras`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import zipfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import lowerings
from jaxcnn.artifact import FORMAT
from jaxcnn.checkpoint import Checkpoints, model_fingerprint
from jaxcnn.config import from_dict, read_document
from jaxcnn.errors import ExportError, JaxcnnError
from jaxcnn.files import atomic_path
from jaxcnn.train import CompiledModel, compile, params_sha256

__all__ = ["FORMATS", "PLATFORMS", "checkpoint_folder", "export_keras", "export_model", "export_parts", "forward_function",
           "keras_preprocessing", "without_onednn", "write_artifact"]

PLATFORMS = ("cpu", "cuda", "tpu")
#: ``jaxcnn export --format``: the jax.export file (:mod:`jaxcnn.artifact`), or a Keras 3 archive
FORMATS = ("jaxcnn", "keras")


def checkpoint_folder(path: str | os.PathLike[str]) -> pathlib.Path:
    """The folder of numbered checkpoints that ``path`` names: a workdir (its ``best/``, else its
    ``checkpoints/``) or such a folder itself."""
    path = pathlib.Path(path)
    for candidate in (path / "best", path / "checkpoints", path):
        if candidate.is_dir() and any(p.name.isdigit() for p in candidate.iterdir()):
            return candidate
    raise ExportError("holds no checkpoint (a workdir of `jaxcnn train`, or its checkpoints/ or best/)",
                      source=str(path))


def without_onednn(compiled: CompiledModel) -> CompiledModel:
    """``compiled`` with its lowerings chosen without oneDNN: ``jax.export`` refuses oneDNN's custom
    calls, so an export traces the lowerings XLA has (lax.conv, patches, reduce_window)."""
    if not compiled.module.lowering.onednn:
        return compiled
    return dataclasses.replace(compiled, module=compiled.module.clone(
        lowering=dataclasses.replace(compiled.module.lowering, onednn=False)))


def forward_function(compiled: CompiledModel, treedef: Any) -> Any:
    """``f(leaves, images) -> outputs``: the inference forward pass over flat parameters, the
    model's head (softmax/sigmoid) applied, in the compiled model's precision, float32 out; traced
    without oneDNN's custom calls, which ``jax.export`` refuses (XLA's own lowerings instead)."""
    compiled = without_onednn(compiled)

    def forward(leaves: list[jax.Array], images: jax.Array) -> jax.Array:
        variables = jax.tree.unflatten(treedef, leaves)
        state_like = variables["params"], variables["batch_stats"]
        logits, _ = compiled._logits(*state_like, images, train=False)
        return compiled._activate(logits).astype(jnp.float32)

    return forward


def export_model(
    config_path: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    *,
    platforms: Sequence[str] = PLATFORMS,
    precision: str = "float32",
    format: str = "jaxcnn",  # noqa: A002  (the command's --format)
) -> dict[str, Any]:
    """Write the model of ``config_path`` with the parameters of ``checkpoint`` to ``out``; a trained
    Keras model (``.keras``, a full-model ``.h5``) with no ``checkpoint`` is written with its own
    weights (:func:`export_keras`). ``format="keras"`` writes a Keras 3 ``.keras`` archive instead
    (:func:`jaxcnn.keras.save.save_keras`), which ``keras.saving.load_model`` reads; its manifest-like
    return value names the file, the model and the parameters' sha256.

    The forward pass is serialized with ``jax.export`` for a symbolic batch dimension, lowered for
    every platform in ``platforms`` at once (a CPU-only machine can lower for cuda and tpu). Returns
    the manifest.
    """
    from jaxcnn.files import keras_file_kind

    source = os.fsdecode(config_path)
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    if checkpoint is None:
        if keras_file_kind(source) is None:
            raise ExportError("a training config needs --checkpoint DIR (the run's checkpoints); only a "
                              "trained Keras model (.keras, .h5) carries its own weights", source=source)
        if format == "keras":
            from jaxcnn.config import load

            model = load(source, require_input_shape=True)
            return _write_keras(model, model.weights.variables(), out, origin={"keras_file": source})
        return export_keras(source, out, platforms=platforms, precision=precision)
    target = _writable_target(out)  # before any work: a wrong --out fails at once
    _check_platforms(platforms)
    model = from_dict(read_document(config_path), source=source)
    compiled = _compiled(model, source, precision)
    folder = checkpoint_folder(checkpoint)
    abstract = compiled.abstract_state()
    restored = Checkpoints(folder, fingerprint=model_fingerprint(model), keep=10**6).restore_variables(
        {"params": abstract.params, "batch_stats": abstract.batch_stats})
    if restored is None:  # pragma: no cover - checkpoint_folder found numbered folders
        raise ExportError("holds no checkpoint", source=str(folder))
    variables, record = restored
    if format == "keras":
        return _write_keras(model, variables, target,
                            origin={"checkpoint": {"folder": str(folder), "step": int(record["step"])}})
    preprocessing = record.get("preprocessing")
    if preprocessing is None:
        raise ExportError("its record has no preprocessing recipe (a checkpoint from an older jaxcnn?)",
                          source=str(folder))
    manifest, parts = export_parts(compiled, variables, preprocessing, platforms=platforms,
                                   origin={"checkpoint": {"folder": str(folder), "step": int(record["step"])}})
    write_artifact(target, manifest, parts)
    return manifest


def _write_keras(model: Any, variables: dict[str, Any], out: str | os.PathLike[str],
                 origin: dict[str, Any]) -> dict[str, Any]:
    from jaxcnn.keras.save import save_keras

    target = _writable_target(out)
    try:
        save_keras(model, variables, target)
    except JaxcnnError as error:
        raise error.located(source=str(target)) from None
    return {"format": "keras", "file": str(target), "model": model.name,
            "input_signature": {"shape": [None, *model.input_shape], "dtype": "float32"},
            "params_sha256": params_sha256(variables["params"]), **origin}


def keras_preprocessing(input_shape: Sequence[int]) -> dict[str, Any]:
    """The serving recipe of a Keras-trained model: images scaled to 0..255, as Keras's image loaders
    (``image_dataset_from_directory``, ``load_img``) give them (a raw intensity in [0, 1] times 255,
    as a standardization with mean 0 and std 1/255), then fitted to the input shape exactly; a model
    that wants another range holds its own ``Rescaling`` or ``Normalization`` layer, as Keras's do."""
    from jaxcnn.data import Preprocessing

    h, w, c = (int(d) for d in input_shape)
    return Preprocessing(raw_shape=(h, w, c), mean=(0.0,) * c, std=(1 / 255,) * c, fit="none",
                         input_shape=(h, w, c)).to_dict()


def export_keras(path: str | os.PathLike[str], out: str | os.PathLike[str] | None, *,
                 platforms: Sequence[str] = PLATFORMS, precision: str = "float32") -> dict[str, Any]:
    """Write a trained Keras model file (``.keras``, a full-model ``.h5``) with its own weights as a
    jaxcnn export file at ``out`` (:func:`keras_preprocessing` serves its images). With ``out=None``
    nothing is written: the manifest and parts are returned for :mod:`jaxcnn.artifact` to load."""
    from jaxcnn.config import load

    source = os.fsdecode(path)
    target = _writable_target(out) if out is not None else None
    _check_platforms(platforms)
    model = load(source, require_input_shape=True)
    if model.weights is None:
        raise ExportError("holds no weights", source=source)
    compiled = _compiled(model, source, precision)
    variables = model.weights.variables()
    manifest, parts = export_parts(compiled, variables, keras_preprocessing(model.input_shape),
                                   platforms=platforms, origin={"keras_file": source})
    if target is None:
        return {"manifest": manifest, "parts": parts}
    write_artifact(target, manifest, parts)
    return manifest


def _check_platforms(platforms: Sequence[str]) -> None:
    for platform in platforms:
        if platform not in PLATFORMS:
            raise ExportError(f"unknown platform {platform!r}; known: {', '.join(PLATFORMS)}")


def _compiled(model: Any, source: str, precision: str) -> CompiledModel:
    try:
        compiled = compile(model, "sgd", precision=precision)  # the optimizer plays no part in serving
    except JaxcnnError as error:
        raise error.located(source=source) from None
    return without_onednn(compiled)


def export_parts(compiled: CompiledModel, variables: dict[str, Any], preprocessing: dict[str, Any], *,
                 platforms: Sequence[str], origin: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and the serialized parts (``forward``, ``forward_small``, ``params``) of the export
    of ``compiled`` with ``variables``; ``origin`` is recorded in the manifest (``checkpoint``: its
    folder and step, or ``keras_file``)."""
    model = compiled.model
    variables = {"params": variables.get("params", {}), "batch_stats": variables.get("batch_stats", {})}
    leaves, treedef = jax.tree.flatten(variables)
    (batch,) = jax.export.symbolic_shape("batch")
    arguments = ([jax.ShapeDtypeStruct(np.shape(leaf), jnp.float32) for leaf in leaves],
                 jax.ShapeDtypeStruct((batch, *model.input_shape), jnp.float32))
    exported = jax.export.export(jax.jit(forward_function(compiled, treedef)), platforms=tuple(platforms))(*arguments)
    forward = exported.serialize()
    # The lowering rule depends on the batch size (jaxcnn.lowerings); a symbolic batch gets the
    # large-batch choice, so a second program with the small-batch choice serves batches <= 8.
    small = dataclasses.replace(compiled, module=compiled.module.clone(
        lowering=dataclasses.replace(compiled.module.lowering, assumed_batch=1)))
    forward_small = jax.export.export(jax.jit(forward_function(small, treedef)),
                                      platforms=tuple(platforms))(*arguments).serialize()
    buffer = io.BytesIO()
    np.savez(buffer, **{f"p{i:05d}": np.asarray(leaf, np.float32) for i, leaf in enumerate(leaves)})
    params = buffer.getvalue()

    from jaxcnn import __version__

    manifest = {
        "format": FORMAT,
        "jaxcnn_version": __version__,
        "jax_version": jax.__version__,
        "model": model.name,
        "layers_toml": _toml_or_none(model),
        "input_signature": {"shape": [None, *model.input_shape], "dtype": "float32"},
        "output_shape": [None, *model.output_shape],
        "outputs": {"softmax": "probabilities", "sigmoid": "probabilities"}.get(compiled.head or "", "logits"),
        "platforms": list(exported.platforms),
        "precision": compiled.precision,
        "preprocessing": preprocessing,
        "class_names": list(preprocessing.get("class_names", [])),
        **origin,
        "params_sha256": params_sha256(variables["params"]),
        "small_batch": lowerings.SMALL_BATCH,
        "sha256": {"forward": hashlib.sha256(forward).hexdigest(),
                   "forward_small": hashlib.sha256(forward_small).hexdigest(),
                   "params": hashlib.sha256(params).hexdigest()},
    }
    return manifest, {"forward": bytes(forward), "forward_small": bytes(forward_small), "params": params}


def _toml_or_none(model: Any) -> str | None:
    """The model's layers as a jaxcnn TOML config, for the reader of the manifest; ``None`` where TOML
    cannot hold the model yet (a nested model, as in a Keras file): the programs do not need it."""
    try:
        return model.to_toml()
    except JaxcnnError:
        return None


def write_artifact(target: pathlib.Path, manifest: dict[str, Any], parts: dict[str, bytes]) -> None:
    """The export file at ``target``, written atomically (a failure leaves no partial file)."""
    try:
        with atomic_path(target) as temp, zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr("manifest.json", json.dumps(manifest, indent=1))
            archive.writestr("forward.jax_export", parts["forward"])
            archive.writestr("forward_small.jax_export", parts["forward_small"])
            archive.writestr("params.npz", parts["params"])
    except OSError as error:  # a full disk, a folder made read-only meanwhile: the temporary file is removed
        raise ExportError(f"cannot write the export file: {error.strerror or error}", source=str(target)) from None


def _writable_target(out: str | os.PathLike[str]) -> pathlib.Path:
    """``out`` as a path whose folder exists (created if missing).

    Raises:
      ExportError: ``out`` is a folder, or its folder cannot be created or written to.
    """
    target = pathlib.Path(os.fsdecode(out))
    if target.is_dir():
        raise ExportError("is a folder, not a file: name the export file to write, such as model.jaxcnn",
                          source=str(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"cannot create its folder: {error.strerror or error}", source=str(target)) from None
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write the export file: its folder {target.parent} is not writable",
                          source=str(target))
    return target
