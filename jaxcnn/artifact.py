"""Exported models at serving time: one file that runs without the model's Python code.

An export file (written by :func:`jaxcnn.export.export_model`) is a zip archive of:

* ``manifest.json``: the format, the jaxcnn and jax versions, the model's name and layer list (as
  TOML, for the record), the input signature ``(None, H, W, C)`` float32, the platforms the forward
  pass was lowered for, the precision, the preprocessing recipe, the class names, and the sha256 of
  the two files below;
* ``forward.jax_export``: ``jax.export`` serialization of the forward pass (StableHLO), with a
  symbolic batch dimension, taking ``(parameters, images)``; ``forward_small.jax_export``: the same
  with the lowerings chosen for small batches (at most ``small_batch`` images), used for those;
* ``params.npz``: the parameters and batch statistics, in the forward pass's argument order.

This module imports jax, numpy and :mod:`jaxcnn.data` (for the preprocessing recipe) only: a
process that serves an export never imports the layer specs or Flax.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxcnn.errors import ExportError
from jaxcnn.files import keras_file_kind

__all__ = ["FORMAT", "RAW_TOLERANCE", "Artifact", "batched", "load_artifact", "predict_files", "read_inputs"]

FORMAT = "jaxcnn-export/1"
_BACKEND_PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "rocm": "rocm", "tpu": "tpu"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: How far outside [0, 1] a float ``.npy`` input may go (rounding) before it is refused.
RAW_TOLERANCE = 1e-3


def batched(fn: Callable[[np.ndarray], Any], images: np.ndarray, batch_size: int, *,
            multiple: int = 1) -> np.ndarray:
    """``fn`` over ``images`` ``(N, ...)`` in batches of one shape, the padding cut off again.

    Every batch holds ``batch_size`` images, rounded up to a multiple of ``multiple`` (the device
    count of a mesh the batch is split over); the last, and a call with fewer images, are padded
    with zero images. So ``fn`` compiles once for a given ``batch_size``, whatever ``N``
    (``N = 0`` runs one batch of padding, for the outputs' shape); the price is a full batch's work
    for a few images: give a small ``batch_size`` where single-image latency matters. Results do
    not depend on the padding (each image is computed alone along the batch axis).
    """
    if batch_size < 1:
        raise ExportError(f"batch_size (={batch_size}) must be positive")
    size = -(-batch_size // multiple) * multiple
    outputs = []
    for start in range(0, max(len(images), 1), size):
        chunk = images[start:start + size]
        real = len(chunk)
        if real < size:
            chunk = np.concatenate([chunk, np.zeros((size - real, *chunk.shape[1:]), chunk.dtype)])
        outputs.append((fn(chunk), real))  # dispatched asynchronously: read back below
    return np.concatenate([np.asarray(y)[:real] for y, real in outputs])


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A loaded export file. ``predict(images)`` runs the forward pass; ``manifest`` says the rest."""

    path: str
    manifest: dict[str, Any]
    exported: Any  # jax.export.Exported
    params: tuple[Any, ...]
    exported_small: Any = None  # the small-batch variant, when the file has one

    def _call(self, params: list[Any], images: Any) -> Any:
        # One jitted wrapper per program: exported.call re-traced at every call costs ~0.5 ms.
        small = self.exported_small is not None and len(images) <= self.manifest.get("small_batch", 0)
        key = "_jitted_small" if small else "_jitted"
        if key not in self.__dict__:
            object.__setattr__(self, key, jax.jit((self.exported_small if small else self.exported).call))
        return self.__dict__[key](params, images)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["input_signature"]["shape"][1:])

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(self.exported.platforms)

    @property
    def class_names(self) -> tuple[str, ...]:
        names = self.manifest.get("class_names") or []
        return tuple(names) if names else tuple(str(i) for i in range(self.manifest["output_shape"][-1]))

    def predict(self, images: Any, *, batch_size: int = 64, output: str = "probabilities") -> np.ndarray:
        """The model's outputs for ``images`` ``(N, H, W, C)`` (already preprocessed model inputs):
        ``output="probabilities"`` (or the raw outputs of a model without a softmax/sigmoid head),
        or ``"labels"`` (the top-1 class index)."""
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[1:] != self.input_shape:
            raise ExportError(
                f"inputs of shape {tuple(images.shape)} do not fit the model's input signature "
                f"(None, {', '.join(map(str, self.input_shape))})", source=self.path)
        if output not in ("probabilities", "labels"):
            raise ExportError(f"output (={output!r}) must be 'probabilities' or 'labels'")
        result = batched(lambda x: self._call(list(self.params), x), images, batch_size)
        return np.argmax(result, axis=-1) if output == "labels" else result


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_artifact(path: str | os.PathLike[str]) -> Artifact:
    """Read and verify an export file; a trained Keras model (``.keras``, a full-model ``.h5``) is
    converted into one in memory first (:func:`_from_keras`).

    Raises:
      ExportError: the file is missing, truncated or corrupt, was written by another jaxcnn version
        or format, or was not lowered for this machine's platform.
    """
    source = os.fsdecode(path)
    if _is_keras_model(source):
        return _from_keras(source)
    try:
        with zipfile.ZipFile(source) as archive:
            manifest = json.loads(archive.read("manifest.json"))
            forward = archive.read("forward.jax_export")
            forward_small = archive.read("forward_small.jax_export")
            params_bytes = archive.read("params.npz")
    except FileNotFoundError:
        raise ExportError("no such file", source=source) from None
    except (zipfile.BadZipFile, KeyError, EOFError, ValueError, OSError) as error:
        raise ExportError(f"is truncated or not a jaxcnn export file ({type(error).__name__}: {error})",
                          source=source) from None
    return _artifact(source, manifest, forward, forward_small, params_bytes)


def _is_keras_model(source: str) -> bool:
    """Whether ``source`` is a trained Keras model (an HDF5 file, or a zip with Keras's
    ``config.json`` and no jaxcnn manifest) rather than a jaxcnn export file."""
    kind = keras_file_kind(source)
    if kind != "keras":
        return kind == "h5"
    try:  # a zip: a Keras archive, or a jaxcnn export file
        with zipfile.ZipFile(source) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return "config.json" in names and "manifest.json" not in names


def _from_keras(source: str) -> Artifact:
    """A trained Keras model converted once, in memory, into what an export file holds (lowered for
    this machine's platform only), then served by the same code (:func:`jaxcnn.export.export_keras`)."""
    from jaxcnn.export import export_keras  # the model code: only for a Keras file

    platform = _BACKEND_PLATFORMS.get(jax.default_backend(), jax.default_backend())
    converted = export_keras(source, None, platforms=(platform,))
    parts = converted["parts"]
    return _artifact(source, converted["manifest"], parts["forward"], parts["forward_small"], parts["params"])


def _artifact(source: str, manifest: Any, forward: bytes, forward_small: bytes, params_bytes: bytes) -> Artifact:
    from jaxcnn import __version__

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ExportError(f"has format {found!r}; this jaxcnn reads {FORMAT!r}", source=source)
    if manifest.get("jaxcnn_version") != __version__:
        raise ExportError(
            f"was written by jaxcnn {manifest.get('jaxcnn_version')}, this is jaxcnn {__version__}: "
            "export the model again with this version", source=source)
    for name, data in (("forward", forward), ("forward_small", forward_small), ("params", params_bytes)):
        if manifest.get("sha256", {}).get(name) != _sha256(data):
            raise ExportError(f"its {name} part is corrupt (sha256 mismatch)", source=source)
    try:
        exported = jax.export.deserialize(bytearray(forward))
        exported_small = jax.export.deserialize(bytearray(forward_small))
        with np.load(io.BytesIO(params_bytes)) as npz:
            params = tuple(npz[f"p{i:05d}"] for i in range(len(npz.files)))
    except Exception as error:  # noqa: BLE001 - any failure here means a damaged file
        raise ExportError(f"cannot be deserialized ({type(error).__name__}: {error})", source=source) from None
    platform = _BACKEND_PLATFORMS.get(jax.default_backend(), jax.default_backend())
    if platform not in exported.platforms:
        raise ExportError(
            f"was lowered for {', '.join(exported.platforms)}, not for this machine's {platform}: export "
            f"it again with --platforms {platform}", source=source)
    # On the device once, not at every call (a batch-1 call would otherwise copy every parameter).
    return Artifact(source, manifest, exported, tuple(jax.device_put(p) for p in params), exported_small)


def _raw_intensities(array: np.ndarray, source: str) -> np.ndarray:
    """A ``.npy``'s values as float32 intensities in [0, 1]: uint8 is scaled from 0..255; any other
    numeric array must already lie in [0, 1] (within :data:`RAW_TOLERANCE`)."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or np.iscomplexobj(array):
        raise ExportError(f"holds {array.dtype} values; the model takes raw images as floats in [0, 1] "
                          "or uint8 0..255", source=source)
    array = np.asarray(array, np.float32)
    if array.size:
        low, high = float(np.min(array)), float(np.max(array))
        if not (np.isfinite(low) and np.isfinite(high)) or low < -RAW_TOLERANCE or high > 1 + RAW_TOLERANCE:
            raise ExportError(
                f"holds values from {low:g} to {high:g}; the model takes raw images as floats in [0, 1] or "
                f"uint8 0..255: scale them (values are refused, not clipped)", source=source)
    return array


def read_inputs(paths: Sequence[str | os.PathLike[str]], manifest: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """Raw inputs -> model inputs, with the preprocessing the model was trained with.

    ``.npy`` files hold raw images as the training data's loader gives them (``(H, W)``,
    ``(H, W, C)``, ``(N, H, W)`` or ``(N, H, W, C)`` of the raw shape; floats in [0, 1], or uint8
    0..255); other values are refused, not clipped (:data:`RAW_TOLERANCE`). PNG and JPEG images
    are converted to the raw channels, resized (bilinear) to the raw height and width, and scaled
    to [0, 1]. The training's preprocessing then applies (its statistics, its fit to the model's
    input shape). Returns the inputs ``(N, *input_shape)`` and a label for each (``file`` or
    ``file[i]``).

    Raises:
      ExportError: a file that cannot be read, of another shape, or with values out of range,
        named with what was found and what the model takes.
    """
    from jaxcnn.data import Preprocessing

    recipe = Preprocessing.from_dict(manifest["preprocessing"])
    raw_h, raw_w, raw_c = recipe.raw_shape
    arrays, names = [], []
    for path in paths:
        source = os.fsdecode(path)
        suffix = pathlib.PurePath(source).suffix.lower()
        if suffix == ".npy":
            try:
                array = np.load(source, allow_pickle=False)
            except (OSError, ValueError) as error:
                raise ExportError(f"cannot read the array: {error}", source=source) from None
            shape = array.shape
            if array.ndim == 2:
                array = array[None, :, :, None]
            elif array.ndim == 3:
                array = array[None] if array.shape == recipe.raw_shape else array[..., None]
            if array.ndim != 4 or array.shape[1:] != recipe.raw_shape:
                raise ExportError(
                    f"holds images of shape {tuple(shape)}; the model takes raw images of "
                    f"shape {recipe.raw_shape} (one, or a stack (N, {raw_h}, {raw_w}, {raw_c}))", source=source)
            arrays.append(_raw_intensities(array, source))
            names += [source] if len(array) == 1 else [f"{source}[{i}]" for i in range(len(array))]
        elif suffix in IMAGE_SUFFIXES:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(source) as image:
                    image = image.convert("L" if raw_c == 1 else "RGB").resize((raw_w, raw_h), Image.BILINEAR)
                    array = np.asarray(image, np.float32) / 255.0
            except (OSError, UnidentifiedImageError) as error:
                raise ExportError(f"cannot read the image: {error}", source=source) from None
            if raw_c not in (1, 3):
                raise ExportError(f"the model takes {raw_c}-channel images; PNG/JPEG give 1 or 3", source=source)
            arrays.append(array.reshape(1, raw_h, raw_w, raw_c))
            names.append(source)
        else:
            raise ExportError(f"unknown input type {suffix or '(none)'!r}: give .npy, .png or .jpg files",
                              source=source)
    if not arrays:
        raise ExportError("no inputs given")
    return recipe.apply(np.concatenate(arrays)), names


def predict_files(artifact_path: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]], *,
                  top_k: int = 5, batch_size: int = 64) -> dict[str, Any]:
    """``jaxcnn predict FILE INPUT...``: the top-k classes of each input, as a JSON-ready dict."""
    artifact = load_artifact(artifact_path)
    images, names = read_inputs(inputs, artifact.manifest)
    probabilities = artifact.predict(images, batch_size=batch_size)
    k = max(1, min(top_k, probabilities.shape[-1]))
    classes = artifact.class_names
    predictions = []
    for name, row in zip(names, probabilities):
        order = np.argsort(-row, kind="stable")[:k]
        predictions.append({"input": name, "top_k": [
            {"class": int(c), "name": classes[c] if c < len(classes) else str(c), "probability": float(row[c])}
            for c in order]})
    return {"model": artifact.manifest["model"], "platform": jax.default_backend(),
            "precision": artifact.manifest["precision"], "predictions": predictions}
