"""The public API: every module of the package declares its public names and each exists, the top
level exports exactly the documented names, and the contract names work when called."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import pathlib
import pkgutil

import numpy as np
import pytest

import jaxcnn

KERAS = pathlib.Path(__file__).parent / "data" / "keras"

# README "Inputs", "Shape checks" and "Training": the names a user reaches as jaxcnn.<name>
DOCUMENTED = {
    "Sequential": "jaxcnn.model", "compile": "jaxcnn.train", "load": "jaxcnn.config",
    "load_weights": "jaxcnn.keras.files", "save_keras": "jaxcnn.keras.save",
    "from_keras_json": "jaxcnn.config", "JaxcnnError": "jaxcnn.errors",
    "Model": "jaxcnn.graph", "Input": "jaxcnn.graph",  # the functional Input (a tensor)
    **{layer: "jaxcnn.layers" for layer in (
        "Activation", "AveragePooling2D", "BatchNormalization", "Conv2D", "Conv2DTranspose", "Dense",
        "DepthwiseConv2D", "Dropout", "Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
        "MaxPooling2D", "SeparableConv2D",
        "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")},
}


def package_modules() -> list[str]:
    """Every public module of the package: not ``__main__`` (the script behind ``python -m jaxcnn``) nor
    ``_onednn_ffi`` (the oneDNN extension: a plain shared library that jaxcnn.onednn loads with ctypes)."""
    return sorted(f"jaxcnn.{m.name}" for m in pkgutil.iter_modules(jaxcnn.__path__) if not m.name.startswith("_"))


def test_the_package_has_the_modules_it_is_known_to_have():
    # pkgutil finds them all: a new module is picked up by the test below without editing it
    assert {"jaxcnn.train", "jaxcnn.fit", "jaxcnn.export", "jaxcnn.artifact", "jaxcnn.parallel",
            "jaxcnn.files", "jaxcnn.optimizers"} <= set(package_modules())


@pytest.mark.parametrize("module_name", package_modules())
def test_every_module_declares_all_and_every_name_in_it_exists(module_name):
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    assert isinstance(names, (list, tuple)) and names, f"{module_name} has no __all__"
    assert len(set(names)) == len(names), f"{module_name}.__all__ repeats a name"
    missing = [name for name in names if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names what it does not define: {missing}"


def test_the_top_level_exports_exactly_the_documented_names():
    assert sorted(jaxcnn.__all__) == sorted([*DOCUMENTED, "errors", "layers", "__version__"])
    for name, home in DOCUMENTED.items():
        assert getattr(jaxcnn, name) is getattr(importlib.import_module(home), name), name
    assert jaxcnn.layers is importlib.import_module("jaxcnn.layers")
    assert jaxcnn.errors is importlib.import_module("jaxcnn.errors")
    assert jaxcnn.__version__ == importlib.metadata.version("jaxcnn")
    with pytest.raises(AttributeError, match="module 'jaxcnn' has no attribute 'Conv3D'"):
        jaxcnn.Conv3D  # noqa: B018


def test_layers_are_reached_by_their_keras_names():
    # every layer type a config may name is the class of that name in jaxcnn.layers (as keras.layers);
    # the README's are also at jaxcnn.<Name>
    documented = set(DOCUMENTED) - {"Sequential", "compile", "load", "load_weights", "save_keras", "from_keras_json",
                                     "JaxcnnError", "Input", "Model"}
    assert documented < set(jaxcnn.layers.LAYER_TYPES)
    for name, cls in jaxcnn.layers.LAYER_TYPES.items():
        assert cls.__name__ == name and getattr(jaxcnn.layers, name) is cls
        assert name not in documented or getattr(jaxcnn, name) is cls


def small():
    """Conv2D(2, 3) on 5x5x1 -> 3x3x2, Flatten -> 18, Dense(2)."""
    return jaxcnn.Sequential([jaxcnn.Conv2D(2, 3, input_shape=(5, 5, 1)), jaxcnn.Flatten(), jaxcnn.Dense(2)])


def test_a_model_reports_its_layers_parameters_summary_and_proof():
    model = small()
    assert [(type(layer).__name__, layer.name) for layer in model.layers] == [
        ("Conv2D", "conv2d"), ("Flatten", "flatten"), ("Dense", "dense")]
    # Keras's counts, by hand: 3*3*1*2 + 2 = 20; 18*2 + 2 = 38
    assert model.count_params() == 58
    text = model.summary(print_fn=None)
    assert "conv2d (Conv2D)              (None, 3, 3, 2)           20" in text
    assert "dense (Dense)                (None, 2)                 38" in text
    assert "Total params: 58" in text
    proof = model.check()
    assert [layer.plan.output_shape for layer in proof.layers] == [(3, 3, 2), (18,), (2,)]
    assert proof.variables["params"]["conv2d"]["kernel"].shape == (3, 3, 1, 2)
    with pytest.raises(jaxcnn.JaxcnnError, match="filters"):
        jaxcnn.Conv2D(0, 3)


def test_load_and_from_keras_json_give_keras_figures(tmp_path):
    text = (KERAS / "conv_same_s2.json").read_text()
    figures = json.loads((KERAS / "conv_same_s2.figures.json").read_text())
    model = jaxcnn.from_keras_json(text)
    assert model.count_params() == figures["total_params"] == 896
    assert [list(p.output_shape) for p in model.plan()] == [layer["output_shape"][1:] for layer in figures["layers"]]
    model.save(tmp_path / "model.toml")
    again = jaxcnn.load(tmp_path / "model.toml")
    assert again.layers == model.layers and again.count_params() == 896


def test_compile_trains_and_predicts():
    compiled = jaxcnn.compile(small(), {"name": "sgd", "learning_rate": 0.1}, metrics=["accuracy"])
    state = compiled.init(0)
    images = np.random.default_rng(0).normal(size=(4, 5, 5, 1)).astype(np.float32)
    labels = np.array([0, 1, 0, 1], np.int32)
    assert compiled.predict(state, images).shape == (4, 2)
    first = float(compiled.eval_step(state, (images, labels)).compute()["loss"])
    for _ in range(5):
        state, metrics = compiled.train_step(state, (images, labels))
    assert int(state.step) == 5 and metrics.compute()["examples"] == 4
    assert float(compiled.eval_step(state, (images, labels)).compute()["loss"]) < first


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
