"""The public API: every name in __all__ imports, and the names other tools rely on exist."""

from __future__ import annotations

import importlib

import jaxcnn


def test_every_public_name_imports():
    for name in jaxcnn.__all__:
        assert getattr(jaxcnn, name) is not None, name
    for module in ["errors", "layers", "model", "compile", "check", "summary", "config", "cli", "train", "optimizers", "data", "checkpoint", "fit"]:
        mod = importlib.import_module(f"jaxcnn.{module}")
        for name in getattr(mod, "__all__", []):
            assert hasattr(mod, name), f"jaxcnn.{module}.{name}"


def test_contract_names():
    from jaxcnn.errors import JaxcnnError
    from jaxcnn.layers import (Activation, AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout,
                               Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D, Input, MaxPooling2D)

    assert jaxcnn.errors.JaxcnnError is JaxcnnError
    model = jaxcnn.Sequential([Conv2D(2, 3, input_shape=(5, 5, 1)), Flatten(), Dense(2)])
    for attribute in ["summary", "check", "count_params", "layers"]:
        assert hasattr(model, attribute)
    assert callable(jaxcnn.from_keras_json) and callable(jaxcnn.load)
    del Activation, AveragePooling2D, BatchNormalization, Dropout, GlobalAveragePooling2D
    del GlobalMaxPooling2D, Input, MaxPooling2D
