"""jaxcnn.config: Keras JSON in its three forms, the TOML/JSON config format, and TOML round trips."""

from __future__ import annotations

import json
import os
import pathlib
import re
import tomllib

import pytest

from jaxcnn import config
from jaxcnn.errors import ConfigError, ImpossibleShapeError, JaxcnnError, LayerArgumentError, UnsupportedError
from jaxcnn.layers import (
    Activation,
    AveragePooling2D,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    Input,
    MaxPooling2D,
)
from jaxcnn.model import Sequential

FIXTURES = pathlib.Path(__file__).parent / "data" / "keras"
FIXTURE_NAMES = sorted(
    p.name.removesuffix(".json") for p in FIXTURES.glob("*.json") if not p.name.endswith(".figures.json")
)
KERAS3 = ["cifar_cnn", "conv_same_s2", "conv_valid_s2", "mixed", "pool", "vgg16"]
CONFIGS = sorted((pathlib.Path(__file__).parent.parent / "configs").glob("*.toml"))


def fixture_doc(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def figures(model: Sequential) -> dict:
    """The model's figures in the layout of ``NAME.figures.json``."""
    return {
        "layers": [
            {"type": p.type, "output_shape": [None, *p.output_shape], "params": p.params}
            for p in model.plan()
        ],
        "total_params": model.count_params(),
        "trainable_params": model.trainable_params(),
    }


def write(tmp_path: pathlib.Path, text: str, name: str = "model.toml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# Keras fixtures.


def test_fixtures_present():
    assert set(KERAS3) | {"tfkeras2_mnist_cnn", "keras22_mnist_cnn"} <= set(FIXTURE_NAMES)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_keras_fixture_reproduces_keras_figures(name):
    path = FIXTURES / f"{name}.json"
    want = json.loads((FIXTURES / f"{name}.figures.json").read_text())
    want = {key: want[key] for key in ("layers", "total_params", "trainable_params")}
    from_file = config.load(path)
    from_text = config.from_keras_json(path.read_text())
    assert from_file == from_text
    assert figures(from_file) == want


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_keras_fixture_keeps_layer_and_model_names(name):
    doc = fixture_doc(name)
    entries = doc["config"] if isinstance(doc["config"], list) else doc["config"]["layers"]
    json_names = [e["config"]["name"] for e in entries if e["class_name"] != "InputLayer"]
    model = config.load(FIXTURES / f"{name}.json")
    assert [layer.name for layer in model.layers] == json_names
    expected_model_name = "sequential" if isinstance(doc["config"], list) else doc["config"]["name"]
    assert model.name == expected_model_name


def test_keras_forms_are_detected():
    tf2 = fixture_doc("tfkeras2_mnist_cnn")
    assert isinstance(tf2["config"], dict) and "InputLayer" not in json.dumps(tf2)
    k22 = fixture_doc("keras22_mnist_cnn")
    assert isinstance(k22["config"], list)
    assert config.load(FIXTURES / "tfkeras2_mnist_cnn.json").input_shape == (28, 28, 1)
    assert config.load(FIXTURES / "keras22_mnist_cnn.json").input_shape == (28, 28, 1)
    assert config.load(FIXTURES / "mixed.json").input_shape == (37, 29, 4)


def test_keras_argument_mapping_on_mixed():
    model = config.load(FIXTURES / "mixed.json")
    conv, bn, act, conv1, avg, mx, drop, gap, dense, dense1 = model.layers
    assert model.name == "mixed"
    assert conv == Conv2D(8, (3, 1), strides=(2, 1), padding="same", use_bias=False, name="conv2d")
    assert conv.activation is None  # "linear"
    assert conv1.dilation_rate == (2, 2) and conv1.activation == "tanh"
    assert bn == BatchNormalization(name="batch_normalization")
    assert avg.padding == "same" and avg.strides == (2, 2)
    assert mx.pool_size == (2, 1)
    assert drop.rate == 0.3
    assert dense.activation is None and dense1.activation == "softmax"


def test_keras22_variance_scaling_is_glorot_uniform():
    model = config.load(FIXTURES / "keras22_mnist_cnn.json")
    assert {layer.kernel_initializer for layer in model.layers if hasattr(layer, "kernel_initializer")} == {
        "glorot_uniform"}


# --------------------------------------------------------------------------------------------
# Keras arguments, mapped or refused.


def mixed_with(change) -> str:
    doc = fixture_doc("mixed")
    change(doc, doc["config"]["layers"])
    return json.dumps(doc)


def conv1_with(**values):
    """mixed.json with its second Conv2D ('conv2d_1', layer 3, JSON entry 4) changed."""
    return mixed_with(lambda doc, layers: layers[4]["config"].update(values))


@pytest.mark.parametrize(
    ("initializer", "expected"),
    [
        ({"class_name": "VarianceScaling",
          "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None}},
         "glorot_uniform"),
        ({"class_name": "VarianceScaling",
          "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "normal"}}, "glorot_normal"),
        ({"class_name": "VarianceScaling",
          "config": {"scale": 2.0, "mode": "fan_in", "distribution": "truncated_normal"}}, "he_normal"),
        ({"class_name": "VarianceScaling",
          "config": {"scale": 2, "mode": "fan_in", "distribution": "uniform"}}, "he_uniform"),
        ({"class_name": "VarianceScaling",
          "config": {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal"}}, "lecun_normal"),
        ({"class_name": "VarianceScaling",
          "config": {"scale": 1.0, "mode": "fan_in", "distribution": "uniform"}}, "lecun_uniform"),
        ({"class_name": "HeNormal", "config": {"seed": 3}}, "he_normal"),
        ({"class_name": "GlorotNormal", "config": {"seed": None, "dtype": "float32"}}, "glorot_normal"),
        ({"module": "keras.initializers", "class_name": "LecunUniform", "config": {},
          "registered_name": None}, "lecun_uniform"),
        ({"class_name": "Orthogonal", "config": {"gain": 1.0, "seed": None}}, "orthogonal"),
        ({"class_name": "Ones", "config": {}}, "ones"),
        ({"class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": 0.05, "seed": None}},
         "random_normal"),
        ({"class_name": "RandomUniform", "config": {"minval": -0.05, "maxval": 0.05}}, "random_uniform"),
        ({"class_name": "TruncatedNormal", "config": {"mean": 0.0, "stddev": 0.05}}, "truncated_normal"),
        ("he_uniform", "he_uniform"),
    ],
)
def test_keras_initializers_map_to_names(initializer, expected):
    model = config.from_keras_json(conv1_with(kernel_initializer=initializer))
    assert model.layers[3].kernel_initializer == expected


@pytest.mark.parametrize(
    "initializer",
    [
        {"class_name": "VarianceScaling", "config": {"scale": 3.0, "mode": "fan_sum", "distribution": "uniform"}},
        {"class_name": "VarianceScaling", "config": {"scale": 2.0, "distribution": "cauchy"}},
        {"class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": "wide"}},
        {"class_name": "Identity", "config": {"gain": 2.0}},
        {"class_name": "HeNormal", "config": {"scale": 1.0}},
    ],
)
def test_keras_initializers_refused(initializer):
    with pytest.raises(UnsupportedError, match=r"layer 3 'conv2d_1' \(Conv2D\): kernel_initializer=\{"):
        config.from_keras_json(conv1_with(kernel_initializer=initializer))


@pytest.mark.parametrize("axis", [3, [3], -1, [-1]])
def test_keras_batchnorm_axis(axis):
    text = mixed_with(lambda doc, layers: layers[2]["config"].update(axis=axis))
    assert config.from_keras_json(text).layers[1].axis == -1


def test_keras_batchnorm_other_axis_refused():
    text = mixed_with(lambda doc, layers: layers[2]["config"].update(axis=1))
    with pytest.raises(UnsupportedError, match=r"layer 1 'batch_normalization' .*axis=1 is not supported"):
        config.from_keras_json(text)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"data_format": "channels_first"}, r'data_format="channels_first" is not supported'),
        ({"dtype": "mixed_float16"}, r'dtype="mixed_float16" is not supported'),
        ({"lora_rank": 4}, r"lora_rank=4 is not supported"),
        ({"depth_multiplier": 2}, r"depth_multiplier=2 is not supported"),
        ({"activation": {"class_name": "MyActivation", "config": {}}}, r"activation=.* is not supported"),
    ],
)
def test_keras_unsupported_arguments_refused(values, message):
    with pytest.raises(UnsupportedError, match=r"^mixed\.json: layer 3 'conv2d_1' \(Conv2D\): " + message):
        config.from_keras_json(conv1_with(**values), source="mixed.json")


def test_keras_unknown_class_refused_by_name():
    text = mixed_with(lambda doc, layers: layers[4].update(class_name="LSTM"))
    with pytest.raises(UnsupportedError, match=r"layer 3 'conv2d_1' \(LSTM\): class_name=\"LSTM\" is not supported"):
        config.from_keras_json(text)


def test_keras_functional_model_without_its_input_layers_refused(tmp_path):
    text = mixed_with(lambda doc, layers: doc.update(class_name="Functional"))
    path = write(tmp_path, text, "functional.json")
    with pytest.raises(ConfigError, match=r"functional\.json: key `input_layers`: missing "
                       r"`config\.input_layers`: a Functional model names its input and output layers"):
        config.load(path)


def test_keras_subclassed_model_refused(tmp_path):
    text = mixed_with(lambda doc, layers: doc.update(class_name="MyModel"))
    with pytest.raises(UnsupportedError, match=r'^m\.json: class_name="MyModel" is not supported: jaxcnn '
                       r"reads Sequential and functional \(Functional, Model\) models"):
        config.from_keras_json(text, source="m.json")


def test_keras_fixed_batch_size_and_input_layer_flags_refused():
    text = mixed_with(lambda doc, layers: layers[0]["config"].update(batch_shape=[8, 37, 29, 4]))
    with pytest.raises(UnsupportedError, match=r"\(InputLayer\): batch_shape=\[8, 37, 29, 4\]"):
        config.from_keras_json(text)
    text = mixed_with(lambda doc, layers: layers[0]["config"].update(sparse=True))
    with pytest.raises(UnsupportedError, match=r"sparse=true"):
        config.from_keras_json(text)


def test_keras_custom_layer_module_refused():
    text = mixed_with(lambda doc, layers: layers[8].update(module="my_project.layers"))
    with pytest.raises(UnsupportedError, match=r'module="my_project.layers"'):
        config.from_keras_json(text)


def test_keras_wrong_value_is_located():
    with pytest.raises(LayerArgumentError, match=r"^m\.json: layer 3 'conv2d_1' \(Conv2D\): `filters` \(=0\)"):
        config.from_keras_json(conv1_with(filters=0), source="m.json")
    text = mixed_with(lambda doc, layers: layers[4]["config"].pop("filters"))
    with pytest.raises(ConfigError, match=r"layer 3 'conv2d_1' \(Conv2D\): missing argument `filters`"):
        config.from_keras_json(text)


def test_keras_without_input_shape_uses_build_input_shape_or_none():
    text = mixed_with(lambda doc, layers: layers.pop(0))
    assert config.from_keras_json(text).input_shape == (37, 29, 4)  # from build_input_shape
    text = mixed_with(lambda doc, layers: (layers.pop(0), doc["config"].pop("build_input_shape")))
    model = config.from_keras_json(text)
    with pytest.raises(LayerArgumentError, match="no input shape"):
        model.input_shape  # noqa: B018
    assert model.with_input_shape((37, 29, 4)) == config.load(FIXTURES / "mixed.json")


def test_keras_json_syntax_error():
    with pytest.raises(ConfigError, match=r"^x\.json: JSON syntax error: .*line 1, column"):
        config.from_keras_json('{"class_name": ', source="x.json")


# --------------------------------------------------------------------------------------------
# The TOML / JSON config format.

CIFAR_TOML = """\
# jaxcnn summary cifar.toml
[model]
name = "cifar_cnn"
input_shape = [32, 32, 3]

[[layers]]
type = "Conv2D"
filters = 16
kernel_size = 2
padding = "same"
activation = "relu"

[[layers]]
type = "MaxPooling2D"
pool_size = 2

[[layers]]
type = "Flatten"

[[layers]]
type = "Dense"
units = 10
activation = "softmax"
"""


def test_toml_loads(tmp_path):
    model = config.load(write(tmp_path, CIFAR_TOML))
    assert model == Sequential(
        [Conv2D(16, 2, padding="same", activation="relu"), MaxPooling2D(2), Flatten(),
         Dense(10, activation="softmax")],
        name="cifar_cnn", input_shape=(32, 32, 3))
    assert model.layers[0].kernel_size == (2, 2)
    assert [layer.name for layer in model.layers] == ["conv2d", "max_pooling2d", "flatten", "dense"]


def test_json_config_and_read_document(tmp_path):
    doc = tomllib.loads(CIFAR_TOML)
    path = write(tmp_path, json.dumps(doc), "cifar.json")
    assert config.read_document(path) == doc
    assert config.load(path) == config.load(write(tmp_path, CIFAR_TOML))
    assert config.from_dict(doc) == config.load(path)


def test_input_shape_on_first_layer_or_input_table(tmp_path):
    on_layer = """\
[[layers]]
type = "Conv2D"
filters = 4
kernel_size = [3, 3]
input_shape = [9, 9, 2]
"""
    input_table = """\
[[layers]]
type = "Input"
shape = [9, 9, 2]

[[layers]]
type = "Conv2D"
filters = 4
kernel_size = 3
"""
    a = config.load(write(tmp_path, on_layer, "a.toml"))
    b = config.load(write(tmp_path, input_table, "b.toml"))
    assert a == b and a.input_shape == (9, 9, 2) and a.name == "sequential"
    both = '[model]\ninput_shape = [9, 9, 2]\n\n' + on_layer
    with pytest.raises(ConfigError, match="given twice"):
        config.load(write(tmp_path, both, "c.toml"))


SHAPELESS_CONV = '[[layers]]\ntype = "Conv2D"\nfilters = 4\nkernel_size = 3\n'


def test_a_config_without_input_shape_gets_advice_in_toml_terms(tmp_path):
    path = write(tmp_path, SHAPELESS_CONV, "shapeless.toml")
    assert config.load(path).layers[0].filters == 4  # loading alone does not need the shape
    with pytest.raises(ConfigError) as info:
        config.load(path, require_input_shape=True)
    assert str(info.value) == (
        f"{path}: key `input_shape`: the model has no input shape: give `input_shape = [H, W, C]` on the "
        'first [[layers]] table, or start with an Input table (`type = "Input"`, `shape = [H, W, C]`), or give '
        "`input_shape = [H, W, C]` in [model]")
    assert "Sequential(" not in str(info.value) and "Input(shape)" not in str(info.value)  # no Python advice
    with pytest.raises(ConfigError, match=r"^<dict>: key `input_shape`: the model has no input shape: give"):
        config.from_dict(tomllib.loads(SHAPELESS_CONV), require_input_shape=True)
    # Each of the three ways the message gives is one the loader takes.
    ways = {
        "layer.toml": SHAPELESS_CONV + "input_shape = [8, 8, 1]\n",
        "input.toml": '[[layers]]\ntype = "Input"\nshape = [8, 8, 1]\n\n' + SHAPELESS_CONV,
        "model.toml": "[model]\ninput_shape = [8, 8, 1]\n\n" + SHAPELESS_CONV,
    }
    for name, text in ways.items():
        assert config.load(write(tmp_path, text, name), require_input_shape=True).output_shape == (6, 6, 4)
    assert config.load(path, input_shape=(8, 8, 1), require_input_shape=True).output_shape == (6, 6, 4)


def test_a_keras_file_without_input_shape_gets_keras_advice(tmp_path):
    text = mixed_with(lambda doc, layers: (layers.pop(0), doc["config"].pop("build_input_shape")))
    path = tmp_path / "keras.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(path, require_input_shape=True)
    assert str(info.value) == (
        f"{path}: key `input_shape`: the Keras model has no input shape (no InputLayer, `batch_input_shape` or "
        "`build_input_shape`): give one with --input-shape H,W,C (jaxcnn summary, jaxcnn check) or "
        "load(path, input_shape=...)")
    assert config.load(path, input_shape=(37, 29, 4), require_input_shape=True) == config.load(FIXTURES / "mixed.json")


IMPOSSIBLE_CONV = '[[layers]]\ntype = "Conv2D"\nfilters = 4\nkernel_size = 9\ninput_shape = [4, 4, 1]\n'


def test_an_impossible_layer_in_a_file_is_reported_naming_the_file(tmp_path):
    path = write(tmp_path, IMPOSSIBLE_CONV, "impossible.toml")
    expected = (r"^{}: layer 0 'conv2d' \(Conv2D\): the kernel window's height 9 is larger than the input height "
                r"4 with padding='valid'")
    with pytest.raises(ImpossibleShapeError, match=expected.format(re.escape(str(path)))):
        config.load(path)
    with pytest.raises(ImpossibleShapeError, match=expected.format("m.toml")):  # what `jaxcnn train` loads with
        config.from_dict(tomllib.loads(IMPOSSIBLE_CONV), source="m.toml")
    # An --input-shape override replaces the file's shape before the layers are planned.
    assert config.load(path, input_shape=(16, 16, 1)).output_shape == (8, 8, 4)
    good = write(tmp_path, IMPOSSIBLE_CONV.replace("[4, 4, 1]", "[16, 16, 1]"), "good.toml")
    with pytest.raises(ImpossibleShapeError, match=expected.format(re.escape(str(good))).replace("4 with", "2 with")):
        config.load(good, input_shape=(2, 2, 1))
    keras = mixed_with(lambda doc, layers: layers[0]["config"].update(batch_shape=[None, 4, 4, 4]))
    with pytest.raises(ImpossibleShapeError, match=r"^k\.json: layer 3 'conv2d_1' \(Conv2D\): the kernel window"):
        config.from_keras_json(keras, source="k.json")


def test_unknown_key_refused_with_suggestion(tmp_path):
    path = write(tmp_path, CIFAR_TOML.replace("units = 10", "unit = 10").replace("filters", "filtres"))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: layer 0 (Conv2D): key `filtres`: unknown key; did you mean `filters`?")
    assert "known: type, name, input_shape, trainable, filters, kernel_size, strides" in message
    assert info.value.key == "filtres" and info.value.index == 0


def test_unknown_key_names_the_layer_name(tmp_path):
    text = CIFAR_TOML.replace('type = "Flatten"', 'type = "Flatten"\nname = "flat"\nrate = 0.5')
    with pytest.raises(ConfigError, match=r"layer 2 'flat' \(Flatten\): key `rate`: unknown key; known: type, name"):
        config.load(write(tmp_path, text))


def test_wrong_type_refused(tmp_path):
    path = write(tmp_path, CIFAR_TOML.replace("filters = 16", 'filters = "16"'))
    with pytest.raises(LayerArgumentError) as info:
        config.load(path)
    assert str(info.value) == f"{path}: layer 0 (Conv2D): `filters` (='16') must be a positive integer"
    assert (info.value.source, info.value.index, info.value.layer_type) == (str(path), 0, "Conv2D")


@pytest.mark.parametrize(
    ("replace", "by", "error", "message"),
    [
        ('units = 10', 'units = 10.0', LayerArgumentError, r"layer 3 \(Dense\): `units` \(=10.0\)"),
        ('kernel_size = 2', 'kernel_size = [2, 2, 2]', LayerArgumentError, r"layer 0 \(Conv2D\): `kernel_size`"),
        ('padding = "same"', 'padding = "full"', LayerArgumentError, r"layer 0 \(Conv2D\): `padding` \(='full'\)"),
        ('activation = "relu"', 'activation = "rleu"', LayerArgumentError, r"layer 0 \(Conv2D\): `activation` \(='rleu'\)"),
        ('input_shape = [32, 32, 3]', 'input_shape = [32, 0, 3]', ConfigError, r"`input_shape` \(=\[32, 0, 3\]\) in \[model\]"),
        ('name = "cifar_cnn"', 'name = ""', LayerArgumentError, r"the model's `name`"),
        ('name = "cifar_cnn"', 'nmae = "x"', ConfigError, r"key `nmae`: unknown key in \[model\]; did you mean `name`\?"),
        ('units = 10', 'units = 10\nname = "conv2d"', LayerArgumentError, r"layer 3 'conv2d' \(Dense\): `name` \(='conv2d'\) is already used"),
        ('type = "Flatten"', 'type = "Flatten"\ninput_shape = [3]', LayerArgumentError, r"layer 2 (?:'flatten' )?\(Flatten\): `input_shape`"),
    ],
)
def test_wrong_values_refused_and_located(tmp_path, replace, by, error, message):
    path = write(tmp_path, CIFAR_TOML.replace(replace, by))
    with pytest.raises(error, match="^" + re.escape(str(path)) + ": " + message):
        config.load(path)


def test_toml_syntax_error(tmp_path):
    path = write(tmp_path, CIFAR_TOML.replace("filters = 16", "filters = = 16"))
    with pytest.raises(ConfigError, match=r"model\.toml: TOML syntax error: .*\(at line 8, column 11\)"):
        config.load(path)


def test_unknown_top_level_section(tmp_path):
    path = write(tmp_path, CIFAR_TOML + "\n[optimizer]\nlr = 0.1\n")
    with pytest.raises(ConfigError, match=r"model\.toml: key `optimizer`: unknown top-level section; known: model, layers, data, train"):
        config.load(path)
    with pytest.raises(ConfigError, match="key `optimizer`"):
        config.read_document(path)
    path = write(tmp_path, CIFAR_TOML.replace("[model]", "[modle]"))
    with pytest.raises(ConfigError, match=r"key `modle`: unknown top-level section; did you mean `model`\?"):
        config.load(path)


def test_section_types_checked():
    with pytest.raises(ConfigError, match=r"<dict>: key `layers`: must be an array of tables"):
        config.from_dict({"layers": {"type": "Flatten"}})
    with pytest.raises(ConfigError, match=r"key `model`: must be a table"):
        config.from_dict({"model": [1], "layers": [{"type": "Flatten"}]})


def test_sections_can_be_extended(monkeypatch):
    """A section added to SECTIONS is accepted (and ignored by from_dict) where it was refused before,
    and its declared type is enforced."""
    doc = {**tomllib.loads(CIFAR_TOML), "augment": {"flip": True}}
    with pytest.raises(ConfigError, match=r"key `augment`: unknown top-level section"):
        config.from_dict(doc)
    monkeypatch.setitem(config.SECTIONS, "augment", dict)
    assert config.from_dict(doc) == config.from_dict(tomllib.loads(CIFAR_TOML))
    with pytest.raises(ConfigError, match=r"key `augment`: must be a table, written \[augment\], got an array"):
        config.from_dict({**doc, "augment": [{"flip": True}]})
    monkeypatch.setitem(config.SECTIONS, "augment", list)
    assert config.from_dict({**doc, "augment": [{"flip": True}]}).name == "cifar_cnn"
    with pytest.raises(ConfigError, match=r"key `augment`: must be an array of tables, written \[\[augment\]\], got a table"):
        config.from_dict(doc)


def test_missing_or_unknown_type(tmp_path):
    path = write(tmp_path, CIFAR_TOML.replace('type = "Flatten"\n', ""))
    with pytest.raises(ConfigError, match=r"model\.toml: layer 2: missing key `type`"):
        config.load(path)
    path = write(tmp_path, CIFAR_TOML.replace('"Flatten"', '"Flaten"'))
    with pytest.raises(ConfigError, match=r"layer 2: key `type`: unknown layer type 'Flaten'; did you mean `Flatten`\?"):
        config.load(path)
    path = write(tmp_path, CIFAR_TOML.replace('"Flatten"', "3"))
    with pytest.raises(ConfigError, match=r"layer 2: key `type`: unknown layer type 3"):
        config.load(path)


def test_missing_required_key(tmp_path):
    path = write(tmp_path, CIFAR_TOML.replace("units = 10\n", ""))
    with pytest.raises(ConfigError, match=r"layer 3 \(Dense\): missing required key `units`"):
        config.load(path)


def test_no_layers(tmp_path):
    with pytest.raises(ConfigError, match="has no layers"):
        config.load(write(tmp_path, '[model]\nname = "x"\n'))


def test_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"^{missing}: no such file"):
        config.load(missing)
    with pytest.raises(ConfigError, match="is a directory"):
        config.load(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[model]")
    with pytest.raises(ConfigError, match="bad.toml: is not UTF-8"):
        config.load(bad)
    with pytest.raises(ConfigError, match=r"bad\.json: JSON syntax error"):
        config.load(write(tmp_path, "{", "bad.json"))
    with pytest.raises(ConfigError, match="top level must be a JSON object"):
        config.load(write(tmp_path, "[1]", "list.json"))


def test_read_document_refuses_keras_json():
    with pytest.raises(ConfigError, match="is a Keras model description"):
        config.read_document(FIXTURES / "mixed.json")


def test_format_sniffed_without_extension(tmp_path):
    keras = write(tmp_path, (FIXTURES / "pool.json").read_text(), "pool.model")
    toml = write(tmp_path, CIFAR_TOML, "cifar.cfg")
    assert config.load(keras) == config.load(FIXTURES / "pool.json")
    assert config.load(toml).name == "cifar_cnn"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_project_configs_load_and_round_trip(path, tmp_path):
    model = config.load(path)
    model.plan()
    assert config.load(config.save(model, tmp_path / path.name)) == model


# --------------------------------------------------------------------------------------------
# Writing TOML.


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_toml_round_trip(name, tmp_path):
    model = config.load(FIXTURES / f"{name}.json")
    path = config.save(model, tmp_path / f"{name}.toml")
    assert config.load(path) == model
    assert config.from_dict(tomllib.loads(config.to_toml(model))) == model


def every_layer_model() -> Sequential:
    return Sequential(
        [
            Conv2D(8, (3, 2), strides=(2, 1), padding="same", activation="relu", use_bias=False,
                   kernel_initializer="he_normal", bias_initializer="ones", name="first conv"),
            Conv2D(6, 3, dilation_rate=(2, 1), activation="leaky_relu", kernel_initializer="orthogonal",
                   bias_initializer="random_normal"),
            BatchNormalization(momentum=0.9, epsilon=1e-5, center=False, scale=False),
            Activation("softmax"),
            Activation("linear"),
            MaxPooling2D(pool_size=(3, 2), strides=(1, 2), padding="same"),
            AveragePooling2D(pool_size=3, strides=1),
            Dropout(0.125),
            GlobalMaxPooling2D(keepdims=True),
            GlobalAveragePooling2D(keepdims=True),
            Flatten(name="flat"),
            Dense(5, activation="gelu", use_bias=False, kernel_initializer="lecun_uniform",
                  bias_initializer="truncated_normal"),
            Dense(3, activation="sigmoid", kernel_initializer="glorot_normal",
                  bias_initializer="random_uniform"),
        ],
        name="every_layer",
        input_shape=(33, 31, 5),
    )


ROUND_TRIP_MODELS = {
    "every_layer": every_layer_model,
    "every_layer_no_input_shape": lambda: Sequential(every_layer_model().layers, name="no_shape"),
    "input_layer": lambda: Sequential([Input((4, 4, 1)), Flatten(), Dense(2)]),
    "odd_names": lambda: Sequential(
        [Flatten(name='quote " backslash \\ tab \t newline \n cr \r'),
         Dense(2, name="ünïcødé ✓ 🎉"), Dense(2, name="del \x7f nul \x00 esc \x1b"),
         Dense(2, name="[[layers]] # not a comment = 1")],
        name="model 'name' with \"quotes\"", input_shape=(2, 2)),
    "floats": lambda: Sequential(
        [BatchNormalization(momentum=0.0, epsilon=1e-300), BatchNormalization(momentum=1, epsilon=12345.678),
         Dropout(0.999999), Dropout(1e-9), Dropout(0)],
        input_shape=(3,)),
    "pool_defaults": lambda: Sequential(
        [MaxPooling2D(), AveragePooling2D((2, 2), strides=(2, 2)), MaxPooling2D(2, strides=1)],
        input_shape=(16, 16, 1)),
}


@pytest.mark.parametrize("make", ROUND_TRIP_MODELS.values(), ids=ROUND_TRIP_MODELS.keys())
def test_round_trip(make, tmp_path):
    model = make()
    text = config.to_toml(model, header="jaxcnn summary model.toml\nshows everything")
    assert text.startswith("# jaxcnn summary model.toml\n# shows everything\n\n[model]\n")
    assert config.from_dict(tomllib.loads(text)) == model
    path = config.save(model, tmp_path / "model.toml")
    assert config.load(path) == model
    assert path.read_text(encoding="utf-8") == config.to_toml(model)


def test_to_toml_writes_only_non_default_arguments():
    text = config.to_toml(Sequential([Conv2D(4, 3, name="c"), MaxPooling2D(), Activation(None)],
                                     input_shape=(8, 8, 1)))
    assert text == (
        '[model]\nname = "sequential"\ninput_shape = [8, 8, 1]\n\n'
        '[[layers]]\ntype = "Conv2D"\nname = "c"\nfilters = 4\nkernel_size = [3, 3]\n\n'
        '[[layers]]\ntype = "MaxPooling2D"\nname = "max_pooling2d"\n\n'
        '[[layers]]\ntype = "Activation"\nname = "activation"\nactivation = "linear"\n'
    )


def test_model_methods_use_config(tmp_path):
    model = every_layer_model()
    assert model.output_shape == (3,)  # a valid model, not only a list of specs
    assert model.to_toml() == config.to_toml(model)
    model.save(str(tmp_path / "m.toml"))
    assert config.load(tmp_path / "m.toml") == model


def test_header_with_control_character_writes_nothing(tmp_path):
    target = tmp_path / "m.toml"
    with pytest.raises(ConfigError, match="control character"):
        config.save(every_layer_model(), target, header="bad \x00 header")
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "m.toml"
    target.write_text("old content\n")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(ConfigError, match=r"m\.toml: cannot write the config: No space left on device"):
        config.save(every_layer_model(), target)
    assert target.read_text() == "old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["m.toml"]  # no temporary file left behind
    monkeypatch.undo()
    config.save(every_layer_model(), target)
    assert config.load(target) == every_layer_model()
    assert [p.name for p in tmp_path.iterdir()] == ["m.toml"]


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="cannot write the config"):
        config.save(every_layer_model(), tmp_path / "no" / "such" / "m.toml")


def test_errors_are_jaxcnn_errors():
    for cls in (ConfigError, UnsupportedError, LayerArgumentError):
        assert issubclass(cls, JaxcnnError)
    assert issubclass(UnsupportedError, ConfigError)
    assert {"model", "layers"} <= set(config.SECTIONS)
