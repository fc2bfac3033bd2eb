"""Regenerate augmentation.npz: Keras 3's own augmentation layers on fixed images and fixed random
parameters, the oracle for jaxcnn.layers.augmentation (tests/test_augmentation.py runs without Keras).

    KERAS_BACKEND=jax python tests/data/augmentation/make_fixtures.py

For each case: Keras's layer built with the case's arguments, one transformation drawn by Keras (its
``get_random_transformation`` with a fixed seed) or given, and ``transform_images(images,
transformation, training=True)``. Stored per case ``<id>.images``/``<id>.params``/``<id>.output``,
with the layer's arguments as JSON (``<id>.config``), Keras's factor ranges as it reads them
(``<id>.ranges``) and its ``compute_output_shape`` (``<id>.output_shape``). Also
``augmented_model.json``: a model holding every augmentation layer, its ``to_json()`` with Keras's
output shapes and parameter count beside it.
"""

from __future__ import annotations

import json
import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
L = keras.layers

CASES = {
    "flip_h": ("RandomFlip", {"mode": "horizontal"}),
    "flip_v": ("RandomFlip", {"mode": "vertical"}),
    "flip_hv": ("RandomFlip", {}),
    "crop_random": ("RandomCrop", {"height": 5, "width": 4}),
    "crop_wide": ("RandomCrop", {"height": 9, "width": 4}),  # the input not taller: the centred window
    "crop_up": ("RandomCrop", {"height": 10, "width": 12}),  # larger than the input: window, resize
    "translate_reflect": ("RandomTranslation", {"height_factor": 0.3, "width_factor": [-0.2, 0.4]}),
    "translate_constant_nearest": ("RandomTranslation", {"height_factor": 0.3, "width_factor": 0.3,
                                                         "fill_mode": "constant", "fill_value": 2.5,
                                                         "interpolation": "nearest"}),
    "translate_wrap": ("RandomTranslation", {"height_factor": 0.4, "width_factor": 0.4, "fill_mode": "wrap"}),
    "translate_edge": ("RandomTranslation", {"height_factor": 0.4, "width_factor": 0.4, "fill_mode": "nearest"}),
    "rotate": ("RandomRotation", {"factor": 0.2}),
    "rotate_constant": ("RandomRotation", {"factor": [-0.5, 0.1], "fill_mode": "constant"}),
    "zoom": ("RandomZoom", {"height_factor": 0.3}),
    "zoom_both": ("RandomZoom", {"height_factor": [-0.3, -0.1], "width_factor": [0.1, 0.5], "fill_mode": "wrap"}),
    "contrast": ("RandomContrast", {"factor": 0.4}),
    "contrast_pair": ("RandomContrast", {"factor": [0.3, 0.6], "value_range": [0, 1]}),
    "brightness": ("RandomBrightness", {"factor": 0.3}),
    "brightness_pair": ("RandomBrightness", {"factor": [-0.5, 0.2], "value_range": [-1, 1]}),
}
# Keras's reading of each factor argument (attribute names differ by layer)
RANGES = {
    "RandomTranslation": lambda l: [l.height_lower, l.height_upper, l.width_lower, l.width_upper],
    "RandomZoom": lambda l: [l.height_lower, l.height_upper, *((l.width_lower, l.width_upper)
                                                              if l.width_factor is not None else ())],
    "RandomRotation": lambda l: list(l.factor),
    "RandomContrast": lambda l: list(l.factor),
    "RandomBrightness": lambda l: list(l.factor),
}


def params(kind: str, transformation) -> np.ndarray:
    """The random draws of a Keras transformation, in the form jaxcnn's ``apply`` takes them."""
    if kind == "RandomFlip":
        return np.asarray(transformation["flips"])
    if kind == "RandomCrop":
        return np.asarray(transformation, np.int32)
    if kind == "RandomTranslation":
        return np.asarray(transformation["translations"])  # (batch, 2): dx, dy
    if kind == "RandomRotation":
        return np.asarray(transformation["angle"])
    if kind == "RandomZoom":
        return np.concatenate([transformation["width_zoom"], transformation["height_zoom"]], axis=1)
    if kind == "RandomContrast":
        return np.asarray(transformation["contrast_factor"])
    return np.asarray(transformation["rgb_delta"])


def main() -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for case, (kind, kwargs) in CASES.items():
        layer = getattr(L, kind)(**kwargs, seed=1)
        scale = 1.0 if kwargs.get("value_range") in ([0, 1], [-1, 1]) else 255.0
        low = -1.0 if kwargs.get("value_range") == [-1, 1] else 0.0
        images = rng.uniform(low, scale, (4, 9, 8, 3)).astype(np.float32)
        transformation = layer.get_random_transformation(images, training=True, seed=keras.random.SeedGenerator(7))
        output = np.asarray(layer.transform_images(images, transformation, training=True))
        out[f"{case}.images"] = images
        out[f"{case}.params"] = params(kind, transformation)
        out[f"{case}.output"] = output.astype(np.float32)
        out[f"{case}.config"] = np.asarray(json.dumps([kind, kwargs]))
        out[f"{case}.output_shape"] = np.asarray(layer.compute_output_shape((None, 9, 8, 3))[1:])
        if kind in RANGES:
            out[f"{case}.ranges"] = np.asarray(RANGES[kind](layer), np.float64)
        print(case, output.shape)
    np.savez_compressed(HERE / "augmentation.npz", keras_version=np.asarray(keras.__version__), **out)
    # a model holding every augmentation layer, as to_json() writes it, with Keras's output shapes
    model = keras.Sequential([keras.Input((12, 10, 3)), L.RandomFlip("horizontal", seed=3), L.RandomCrop(8, 8),
                              L.RandomTranslation(0.1, (-0.2, 0.3), fill_mode="constant", fill_value=1.0),
                              L.RandomRotation(0.1, interpolation="nearest"), L.RandomZoom(0.2, 0.1, fill_mode="wrap"),
                              L.RandomContrast(0.2), L.RandomBrightness(0.1), L.Flatten(), L.Dense(4)],
                             name="augmented")
    doc = json.loads(model.to_json())
    doc["keras_output_shapes"] = [list(layer.output.shape[1:]) for layer in model.layers]
    doc["keras_count_params"] = model.count_params()
    (HERE / "augmented_model.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
