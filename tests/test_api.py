"""The public API: every name in __all__ imports, and the names other tools rely on exist."""

from __future__ import annotations

import importlib

import jaxcnn


def test_every_public_name_imports():
    for name in jaxcnn.__all__:
        assert getattr(jaxcnn, name) is not None, name
    for module in ["errors", "layers", "model", "flax_module", "check", "summary", "config", "cli", "train", "optimizers", "data", "checkpoint", "fit"]:
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


def test_jaxcnn_compile_is_the_training_compile_whatever_was_imported_first():
    import jaxcnn.check  # noqa: F401  (imports the Flax module code)
    import jaxcnn.train

    assert jaxcnn.compile is jaxcnn.train.compile


def test_importing_jaxcnn_imports_no_model_code():
    import subprocess
    import sys

    code = "import sys, jaxcnn, jaxcnn.cli; print(sorted(m for m in sys.modules if m.startswith(('jaxcnn', 'flax'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['jaxcnn', 'jaxcnn.cli', 'jaxcnn.errors']"
