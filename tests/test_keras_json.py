"""The Keras JSON reader, jaxcnn.keras: its place, functional (graph) models, refusals, fixtures."""

from __future__ import annotations

import gzip
import json
import math
import os
import pathlib
from typing import Any

import jax
import numpy as np
import pytest

import jaxcnn
import jaxcnn.config
import jaxcnn.keras
from jaxcnn import config
from jaxcnn.errors import ConfigError, JaxcnnError, LayerArgumentError, UnsupportedError
from jaxcnn.keras.functional import KerasGraph, keras_graph
from jaxcnn.keras.json import keras_layer
from jaxcnn.layers import LAYER_TYPES, Add, Conv2D, Dense, Input

DATA = pathlib.Path(__file__).parent / "data"
MIXED = DATA / "keras" / "mixed.json"
APPLICATIONS = DATA / "keras_applications"
APPLICATION_FILES = sorted(APPLICATIONS.glob("*.json.gz"))


def test_reader_lives_in_jaxcnn_keras_and_is_re_exported():
    assert jaxcnn.keras.from_keras_json.__module__ == "jaxcnn.keras.json"
    assert jaxcnn.from_keras_json is jaxcnn.keras.from_keras_json
    assert jaxcnn.config.from_keras_json is jaxcnn.keras.from_keras_json
    assert jaxcnn.config.from_keras_dict is jaxcnn.keras.from_keras_dict


# --------------------------------------------------------------------------------------------
# Hand-written Keras JSON: Keras 3's form (as Keras 3.15's to_json() writes it) and tf.keras 2's.

SHAPE = [None, 8, 8, 3]


def reader(layer_class: str, conf: dict, where: dict) -> tuple[Any, int | None]:
    """jaxcnn's own reader where the class exists on this branch; the class name elsewhere (the
    merging layers and others come from the other branches of issue 12)."""
    if layer_class in LAYER_TYPES:
        return keras_layer(layer_class, conf, where)
    return layer_class, None


def ref(spec: str) -> tuple[str, int]:
    """``"conv"`` -> ``("conv", 0)``; ``"conv@1"`` -> ``("conv", 1)``: a layer's node."""
    name, _, k = spec.partition("@")
    return name, int(k or 0)


def k3_tensor(spec: str) -> dict:
    name, k = ref(spec)
    return {"class_name": "__keras_tensor__",
            "config": {"shape": SHAPE, "dtype": "float32", "keras_history": [name, k, 0]}}


def k3(class_name: str, name: str, *calls: str | list[str], module: str = "keras.layers",
       **conf: Any) -> dict:
    """A Keras 3 layer entry called on each of ``calls`` (a node, or a list of nodes to merge)."""
    nodes = [{"args": [[k3_tensor(c) for c in call] if isinstance(call, list) else k3_tensor(call)],
              "kwargs": {}} for call in calls]
    return {"module": module, "class_name": class_name, "config": {"name": name, **conf},
            "registered_name": None, "name": name, "inbound_nodes": nodes}


def k3_input(name: str = "img") -> dict:
    return {"module": "keras.layers", "class_name": "InputLayer",
            "config": {"batch_shape": SHAPE, "dtype": "float32", "sparse": False, "name": name},
            "registered_name": None, "name": name, "inbound_nodes": []}


def k3_model(layers: list[dict], inputs: list, outputs: list, name: str = "net",
             class_name: str = "Functional") -> dict:
    return {"module": "keras.src.models.functional", "class_name": class_name,
            "config": {"name": name, "trainable": True, "layers": layers,
                       "input_layers": inputs, "output_layers": outputs},
            "registered_name": class_name, "build_config": {"input_shape": None},
            "compile_config": None}


def tf2(class_name: str, name: str, *calls: str | list[str], **conf: Any) -> dict:
    """A tf.keras 2 layer entry: ``inbound_nodes`` as ``[[[name, node, tensor, kwargs], ...]]``."""
    nodes = [[[*ref(c), 0, {}] for c in (call if isinstance(call, list) else [call])]
             for call in calls]
    return {"class_name": class_name, "config": {"name": name, **conf}, "name": name,
            "inbound_nodes": nodes}


def tf2_input(name: str = "img") -> dict:
    return {"class_name": "InputLayer", "config": {"batch_input_shape": SHAPE, "dtype": "float32",
                                                    "sparse": False, "ragged": False, "name": name},
            "name": name, "inbound_nodes": []}


def tf2_model(layers: list[dict], inputs: list, outputs: list, name: str = "net") -> dict:
    return {"class_name": "Functional", "config": {"name": name, "layers": layers,
                                                   "input_layers": inputs, "output_layers": outputs},
            "keras_version": "2.15.0", "backend": "tensorflow"}


CONV = {"filters": 3, "kernel_size": [3, 3], "padding": "same"}


def residual(entry, model_of, input_of, *, name="net") -> dict:
    return model_of([
        input_of(),
        entry("Conv2D", "conv_a", "img", **CONV),
        entry("Conv2D", "conv_b", "conv_a", **CONV),
        entry("Add", "add", ["img", "conv_b"]),
        entry("Activation", "relu", "add", activation="relu"),
    ], [["img", 0, 0]], [["relu", 0, 0]], name=name)


def structure(graph: KerasGraph) -> list[tuple[str, tuple[str, ...]]]:
    return [(node.name, node.inputs) for node in graph.nodes]


@pytest.mark.parametrize("form", ["keras3", "tf.keras2"])
def test_residual_block_is_read_into_nodes(form):
    args = (k3, k3_model, k3_input) if form == "keras3" else (tf2, tf2_model, tf2_input)
    graph = keras_graph(residual(*args), layer=reader)
    assert structure(graph) == [
        ("img", ()), ("conv_a", ("img",)), ("conv_b", ("conv_a",)), ("add", ("img", "conv_b")),
        ("relu", ("add",))]
    assert (graph.name, graph.inputs, graph.outputs) == ("net", ("img",), ("relu",))
    nodes = {node.name: node.layer for node in graph.nodes}
    assert nodes["img"] == Input((8, 8, 3), name="img")
    assert nodes["conv_a"] == Conv2D(3, 3, padding="same", name="conv_a")
    assert nodes["add"] == Add(name="add")


def test_keras3_single_input_and_output_written_as_one_reference():
    doc = residual(k3, k3_model, k3_input)
    doc["config"].update(input_layers=["img", 0, 0], output_layers=["relu", 0, 0])
    graph = keras_graph(doc, layer=reader)
    assert (graph.inputs, graph.outputs) == (("img",), ("relu",))


def test_squeeze_excitation_multiply_and_concatenate():
    doc = k3_model([
        k3_input(),
        k3("GlobalAveragePooling2D", "squeeze", "img", keepdims=True),
        k3("Dense", "excite", "squeeze", units=3, activation="sigmoid"),
        k3("Multiply", "scale", ["img", "excite"]),
        k3("Conv2D", "branch", "img", **CONV),
        k3("Concatenate", "cat", ["scale", "branch", "img"], axis=-1),
    ], [["img", 0, 0]], [["cat", 0, 0]])
    graph = keras_graph(doc, layer=reader)
    assert structure(graph) == [
        ("img", ()), ("squeeze", ("img",)), ("excite", ("squeeze",)), ("scale", ("img", "excite")),
        ("branch", ("img",)), ("cat", ("scale", "branch", "img"))]


@pytest.mark.parametrize("form", ["keras3", "tf.keras2"])
def test_shared_layer_nodes_are_named_layer_at_k_and_share_one_spec(form):
    entry, model_of, input_of = (k3, k3_model, k3_input) if form == "keras3" else (tf2, tf2_model, tf2_input)
    # shared(mid(shared(img))): Keras lists `shared` first, with a second node that needs `mid`.
    doc = model_of([
        input_of(),
        entry("Conv2D", "shared", "img", "mid", **CONV),
        entry("Conv2D", "mid", "shared", **CONV),
        entry("Add", "sum", ["shared", "shared@1"]),
    ], [["img", 0, 0]], [["sum", 0, 0]])
    graph = keras_graph(doc, layer=reader)
    assert structure(graph) == [
        ("img", ()), ("shared", ("img",)), ("mid", ("shared",)), ("shared@1", ("mid",)),
        ("sum", ("shared", "shared@1"))]
    nodes = {node.name: node.layer for node in graph.nodes}
    assert nodes["shared"] is nodes["shared@1"]
    assert nodes["shared"] == Conv2D(3, 3, padding="same", name="shared")


def test_nested_sequential_and_functional_inside_a_functional_keras3():
    inner = k3_model([k3_input("inner_in"), k3("Conv2D", "ic", "inner_in", **CONV)],
                     [["inner_in", 0, 0]], [["ic", 0, 0]], name="inner")
    inner.update(name="inner", inbound_nodes=[{"args": [k3_tensor("img")], "kwargs": {"mask": None}}])
    seq = {"module": "keras", "class_name": "Sequential", "registered_name": None,
           "config": {"name": "block", "trainable": True, "dtype": "float32",
                      "layers": [k3_input("block_in"), k3("Dense", "fc", units=2)],
                      "build_input_shape": SHAPE},
           "build_config": {"input_shape": SHAPE}, "compile_config": {}, "name": "block",
           "inbound_nodes": [{"args": [k3_tensor("inner")], "kwargs": {"mask": None}}]}
    for entry in seq["config"]["layers"]:
        entry.pop("inbound_nodes"), entry.pop("name")
    # Keras 3 numbers a nested Functional's first call 1 in output_layers (its built-in node is 0).
    doc = k3_model([k3_input(), inner, seq], [["img", 0, 0]], [["block", 0, 0], ["inner", 1, 0]])
    graph = keras_graph(doc, layer=reader)
    assert structure(graph) == [("img", ()), ("inner", ("img",)), ("block", ("inner",))]
    assert graph.outputs == ("block", "inner")
    nested = {node.name: node.layer for node in graph.nodes}
    assert structure(nested["inner"]) == [("inner_in", ()), ("ic", ("inner_in",))]
    assert (nested["inner"].class_name, nested["inner"].outputs) == ("Functional", ("ic",))
    assert structure(nested["block"]) == [("block_in", ()), ("fc", ("block_in",))]
    assert nested["block"].nodes[1].layer == Dense(2, name="fc")


def test_tf_keras2_counts_a_nested_models_first_call_as_node_1():
    inner = tf2_model([tf2_input("inner_in"), tf2("Conv2D", "ic", "inner_in", **CONV)],
                      [["inner_in", 0, 0]], [["ic", 0, 0]], name="inner")
    del inner["keras_version"], inner["backend"]  # written at the top level only
    inner.update(name="inner", inbound_nodes=[[["img", 0, 0, {}]]])
    doc = tf2_model([tf2_input(), inner, tf2("Activation", "act", "inner@1", activation="relu")],
                    [["img", 0, 0]], [["act", 0, 0]])
    graph = keras_graph(doc, layer=reader)
    assert structure(graph) == [("img", ()), ("inner", ("img",)), ("act", ("inner",))]


def test_sequential_nesting_a_functional_base_is_a_graph():
    base = k3_model([k3_input("base_in"), k3("Conv2D", "base_conv", "base_in", **CONV)],
                    [["base_in", 0, 0]], [["base_conv", 0, 0]], name="base")
    doc = {"module": "keras", "class_name": "Sequential",
           "config": {"name": "transfer", "trainable": True,
                      "layers": [k3_input("x"), base, k3("Flatten", "flat")]}}
    for entry in doc["config"]["layers"]:
        entry.pop("inbound_nodes", None), entry.pop("name", None)
    graph = keras_graph(doc, layer=reader)
    assert structure(graph) == [("x", ()), ("base", ("x",)), ("flat", ("base",))]
    assert graph.nodes[1].layer.class_name == "Functional"
    model = config.from_keras_json(json.dumps(doc), source="t.json")
    assert type(model).__name__ == "Sequential"  # as Keras has it: a Sequential holding a Functional
    assert [(layer.name, layer.type) for layer in model.layers] == [("base", "Functional"), ("flat", "Flatten")]


def test_an_operation_on_a_number_is_the_layer_keras_names_with_a_constant():
    # MobileNetV3's hard sigmoid: ReLU(6)(x + 3.0) * (1 / 6), written as keras.src.ops.numpy calls, which
    # Keras's summary prints as `add (Add)`, `multiply (Multiply)` (tests/data/keras_applications).
    def op(class_name, name, tensor, number, first=False):
        entry = k3(class_name, name, tensor, module="keras.src.ops.numpy")
        args = entry["inbound_nodes"][0]["args"]
        args[:] = [number, args[0]] if first else [args[0], number]
        return entry

    doc = k3_model([k3_input(), op("Add", "add", "img", 3.0), op("Multiply", "mul", "add", 1 / 6),
                    op("Subtract", "sub", "mul", 1.0, first=True), op("Subtract", "sub2", "sub", 0.5),
                    op("Divide", "div", "sub2", 4)],
                   [["img", 0, 0]], [["div", 0, 0]])
    read = []
    graph = keras_graph(doc, layer=lambda cls, conf, where: (read.append((cls, conf)) or cls, None))
    assert structure(graph) == [("img", ()), ("add", ("img",)), ("mul", ("add",)), ("sub", ("mul",)),
                                ("sub2", ("sub",)), ("div", ("sub2",))]
    assert [(cls, conf) for cls, conf in read if len(conf) > 1] == [("Add", {"name": "add", "constant": 3.0}), ("Multiply", {"name": "mul", "constant": 1 / 6}),
                    ("Subtract", {"name": "sub", "constant": 1.0, "constant_first": True}),
                    ("Subtract", {"name": "sub2", "constant": 0.5, "constant_first": False}),
                    ("Rescaling", {"name": "div", "scale": 0.25})]
    model = jaxcnn.from_keras_json(json.dumps(doc))
    assert [(p.type, p.name) for p in model.plan()] == [
        ("Add", "add"), ("Multiply", "mul"), ("Subtract", "sub"), ("Subtract", "sub2"), ("Rescaling", "div")]
    x = np.linspace(-4.0, 4.0, 8 * 8 * 3, dtype=np.float32).reshape(1, 8, 8, 3)
    compiled = jaxcnn.compile(model)
    np.testing.assert_allclose(np.asarray(compiled.predict(compiled.init(0), x)),
                               ((1.0 - (x + 3.0) / 6) - 0.5) / 4, rtol=1e-6, atol=1e-6)
    doc["config"]["layers"][5]["inbound_nodes"][0]["args"].reverse()  # 4 / x
    with pytest.raises(UnsupportedError, match=r"^g\.json: layer 4 'div' \(Divide\): the call arguments "
                       r"\[4\] are not supported: jaxcnn reads a number only in an operation"):
        keras_graph(doc, layer=reader, source="g.json")


# --------------------------------------------------------------------------------------------
# Refusals, located at the layer.


def test_lambda_is_refused_saying_it_holds_python_code():
    text = mixed_with(lambda layers: layers[4].update(
        class_name="Lambda", config={"name": "conv2d_1", "function": {"class_name": "__lambda__"}}))
    with pytest.raises(UnsupportedError, match=(
            r"^m\.json: layer 3 'conv2d_1' \(Lambda\): class_name=\"Lambda\" is not supported: a "
            r"Lambda layer holds Python code .* replace it with a named layer")):
        config.from_keras_json(text, source="m.json")
    doc = residual(k3, k3_model, k3_input)
    doc["config"]["layers"][2]["class_name"] = "Lambda"
    with pytest.raises(UnsupportedError, match=r"layer 1 'conv_b' \(Lambda\): .* holds Python code"):
        keras_graph(doc, source="g.json")


def test_unknown_class_in_a_functional_model_is_refused_by_name():
    doc = residual(k3, k3_model, k3_input)
    doc["config"]["layers"][2]["class_name"] = "LSTM"
    with pytest.raises(UnsupportedError, match=r"^g\.json: layer 1 'conv_b' \(LSTM\): class_name=\"LSTM\" is not supported; jaxcnn supports"):
        keras_graph(doc, source="g.json")


def test_nested_layer_errors_name_the_path_through_the_models():
    inner = k3_model([k3_input("inner_in"), k3("Conv2D", "ic", "inner_in", filters=0, kernel_size=3)],
                     [["inner_in", 0, 0]], [["ic", 0, 0]], name="inner")
    inner.update(name="inner", inbound_nodes=[{"args": [k3_tensor("img")], "kwargs": {}}])
    doc = k3_model([k3_input(), inner], [["img", 0, 0]], [["inner", 1, 0]])
    with pytest.raises(LayerArgumentError, match=r"^g\.json: layer 0 'inner/ic' \(Conv2D\): `filters` \(=0\)"):
        keras_graph(doc, source="g.json")


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda layers: layers[2]["inbound_nodes"][0]["args"][0]["config"].update(
            keras_history=["nowhere", 0, 0]),
         ConfigError, (r"layer 1 'conv_b' \(Conv2D\): \[\"nowhere\", 0, 0\] names the layer "
                       r"'nowhere', which the model does not have")),
        (lambda layers: layers[2]["inbound_nodes"][0]["args"][0]["config"].update(
            keras_history=["conv_a", 1, 0]),
         ConfigError, r"layer 1 'conv_b' \(Conv2D\): \[\"conv_a\", 1, 0\]: node 1 of 'conv_a' does not exist \(it is called 1 time\)"),
        (lambda layers: layers[2]["inbound_nodes"][0]["args"][0]["config"].update(
            keras_history=["conv_a", 0, 1]),
         UnsupportedError, r"layer 1 'conv_b' \(Conv2D\): \[\"conv_a\", 0, 1\]: output 1 of 'conv_a' is not supported: jaxcnn layers have one output"),
        (lambda layers: layers[1]["inbound_nodes"][0]["args"][0]["config"].update(
            keras_history=["relu", 0, 0]),
         ConfigError, r"the graph has a cycle or a missing node: 'conv_a', 'conv_b', 'add', 'relu'"),
        (lambda layers: layers[2].update(name="conv_a"),
         ConfigError, r"layer 1 'conv_b' \(Conv2D\): the layer name 'conv_a' is used twice"),
        (lambda layers: layers[2]["inbound_nodes"][0].update(kwargs={"mask": [1]}),
         UnsupportedError, r"layer 1 'conv_b' \(Conv2D\): the call argument mask=\[1\] is not supported"),
    ],
    ids=["unknown-layer", "node-index", "tensor-index", "cycle", "name-twice", "call-kwargs"],
)
def test_malformed_graphs_are_refused_naming_the_layer(change, error, message):
    doc = residual(k3, k3_model, k3_input)
    change(doc["config"]["layers"])
    with pytest.raises(error, match=r"^g\.json: " + message):
        keras_graph(doc, layer=reader, source="g.json")


def test_keras3_training_flag_on_a_node_is_accepted_tf_keras2_refused():
    # Keras 3 writes Dropout's default `training: false` on every node, and its Functional call
    # replaces it with the model's own `training`; tf.keras 2 honoured it (a frozen base model).
    doc = residual(k3, k3_model, k3_input)
    doc["config"]["layers"][2]["inbound_nodes"][0]["kwargs"] = {"training": False}
    assert [n.name for n in keras_graph(doc, layer=reader).nodes][2] == "conv_b"
    doc = residual(tf2, tf2_model, tf2_input)
    doc["config"]["layers"][2]["inbound_nodes"][0][0][3] = {"training": False}
    with pytest.raises(UnsupportedError, match=r"layer 1 'conv_b' \(Conv2D\): the call argument "
                       r"training=false is not supported: jaxcnn sets training for the whole model"):
        keras_graph(doc, layer=reader, source="g.json")


def test_dict_outputs_and_missing_input_layers_are_refused():
    doc = residual(k3, k3_model, k3_input)
    doc["config"]["output_layers"] = {"out": ["relu", 0, 0]}
    with pytest.raises(UnsupportedError, match=r"^g\.json: key `output_layers`: output_layers as a dict"):
        keras_graph(doc, layer=reader, source="g.json")
    doc["config"].pop("input_layers")
    with pytest.raises(ConfigError, match=r"^g\.json: key `input_layers`: missing `config\.input_layers`"):
        keras_graph(doc, layer=reader, source="g.json")


def test_functional_model_is_built_with_model_from_nodes():
    model = jaxcnn.from_keras_json(json.dumps(residual(k3, k3_model, k3_input)))
    assert [layer.name for layer in model.layers] == ["conv_a", "conv_b", "add", "relu"]
    assert model.output_shape == (8, 8, 3)
    assert model.count_params() == 2 * (3 * 3 * 3 * 3 + 3)  # two Conv2D(3, 3x3) on 3 channels


# --------------------------------------------------------------------------------------------
# Top-level keys, double-encoded text.


def mixed_with(change) -> str:
    doc = json.loads(MIXED.read_text())
    change(doc["config"]["layers"])
    return json.dumps(doc)


def test_misspelled_top_level_and_model_config_keys_are_ignored_as_keras_ignores_them():
    # Keras 3's model_from_json reads class_name, config, module, registered_name, build_config
    # and compile_config; Sequential.from_config reads name, layers and build_input_shape.
    doc = json.loads(MIXED.read_text())
    doc["keras_versoin"] = "3.4.1"
    doc["config"]["nmae"] = "typo"
    assert config.from_keras_json(json.dumps(doc)) == config.from_keras_json(MIXED.read_text())


def test_to_json_text_stored_as_a_json_string_is_read(tmp_path):
    text = MIXED.read_text()
    want = config.from_keras_json(text)
    assert config.from_keras_json(json.dumps(text)) == want
    for name in ("model.json", "model.keras.txt"):
        path = tmp_path / name
        path.write_text(json.dumps(text))
        assert config.load(path) == want


def test_a_json_string_that_is_not_a_model_is_refused():
    with pytest.raises(ConfigError, match=r"^s\.json: the top level must be a JSON object, got a str"):
        config.from_keras_json(json.dumps("hello"), source="s.json")


# --------------------------------------------------------------------------------------------
# keras.applications fixtures (tests/data/keras_applications/make_fixtures.py).


def application(path: pathlib.Path) -> dict:
    return json.loads(gzip.decompress(path.read_bytes()))


def test_every_keras_application_has_a_fixture():
    names = {path.name.removesuffix(".json.gz") for path in APPLICATION_FILES}
    # keras.applications of Keras 3.15, as make_fixtures.architectures() lists them.
    assert {"ResNet50", "MobileNetV2", "EfficientNetB0", "DenseNet121", "ConvNeXtTiny", "InceptionV3",
            "Xception", "VGG16", "NASNetMobile", "InceptionResNetV2", "EfficientNetB7",
            "ConvNeXtXLarge", "nested_MobileNetV2"} <= names
    assert len(names) == 41


@pytest.mark.parametrize("path", APPLICATION_FILES, ids=lambda p: p.name.removesuffix(".json.gz"))
def test_application_parses_into_the_nodes_keras_reports(path):
    doc = application(path)
    for size, build in doc["builds"].items():
        graph = keras_graph(json.loads(build["json"]), layer=lambda cls, conf, where: (cls, None),
                            source=f"{path.name}:{size}")
        assert len(graph.nodes) == build["nodes"], size
        names = [name for name, _ in structure(graph)]
        assert sorted(names) == sorted(row["name"] for row in build["layers"]), size
        assert len(graph.inputs) == len(graph.outputs) == 1


@pytest.mark.parametrize("path", APPLICATION_FILES, ids=lambda p: p.name.removesuffix(".json.gz"))
def test_application_reproduces_keras_figures_and_is_proved(path):
    """Every layer's name, class, output shape and params as Keras 3 printed them for the
    architecture at its small input size (tests/data/keras_applications/make_fixtures.py), the
    totals, and the proof of every layer against jax.eval_shape."""
    build = application(path)["builds"]["small"]
    model = jaxcnn.from_keras_json(build["json"])
    plan = {p.name: p for p in model.plan()}
    rows = [row for row in build["layers"] if row["class"] != "InputLayer"]
    assert sorted(plan) == sorted(row["name"] for row in rows)
    for row in rows:
        p = plan[row["name"]]
        assert (p.type, [None, *p.output_shape], p.params) == (row["class"], row["output_shape"], row["params"]), \
            row["name"]
    assert (model.count_params(), model.trainable_params(), model.non_trainable_params()) == (
        build["total"], build["trainable"], build["non_trainable"])
    model.check()


# One architecture of each family of keras.applications, the smallest: each family's others repeat its
# blocks at other widths and depths. XLA compiles a step in 5 to 600 s on a 2-core CPU (NASNetMobile's
# 770 layers: 607 s; a ConvNeXt: 165 to 285 s), more than CI's time for the 41; set
# JAXCNN_ALL_APPLICATIONS=1 to run them all (about 2 hours on a 2-core CPU).
STEP_FAMILIES = ("ConvNeXtTiny", "DenseNet121", "EfficientNetB0", "EfficientNetV2B0", "InceptionV3", "MobileNet",
                 "MobileNetV2", "MobileNetV3Small", "ResNet50", "ResNet50V2", "VGG16", "Xception",
                 "nested_MobileNetV2")
# Seconds each took in step_and_export.py on the 2-core CPU (2026-12-06, the mean of two runs), to split
# them evenly over the two processes (the longest first, each to the less loaded); an architecture not
# listed counts 60 s.
STEP_SECONDS = {"DenseNet121": 92, "EfficientNetV2B0": 45, "InceptionV3": 43, "EfficientNetB0": 40, "ResNet50": 32,
                "MobileNetV3Small": 29, "nested_MobileNetV2": 29, "ResNet50V2": 27, "MobileNetV2": 26, "Xception": 23,
                "ConvNeXtTiny": 17, "MobileNet": 13, "VGG16": 12}


def _two_shares(names: list[str]) -> list[list[str]]:
    shares: list[list[str]] = [[], []]
    loads = [0.0, 0.0]
    for name in sorted(names, key=lambda n: -STEP_SECONDS.get(n, 60)):
        lighter = loads.index(min(loads))
        shares[lighter].append(name)
        loads[lighter] += STEP_SECONDS.get(name, 60)
    return shares


@pytest.mark.slow
def test_every_application_family_takes_a_finite_training_step_and_exports():
    """An architecture of each keras.applications family (all 41 with JAXCNN_ALL_APPLICATIONS=1) at its
    small input size (32x32, or the smallest it takes) trains one finite SGD step, and its forward pass
    exports with jax.export for a symbolic batch, reloads and serves what ``predict`` gives. Run over
    two processes, one per core (tests/data/keras_applications/step_and_export.py)."""
    import subprocess
    import sys

    names = [path.name.removesuffix(".json.gz") for path in APPLICATION_FILES]
    assert set(STEP_FAMILIES) <= set(names)
    if os.environ.get("JAXCNN_ALL_APPLICATIONS") != "1":
        names = list(STEP_FAMILIES)
    script = APPLICATIONS / "step_and_export.py"
    workers = [subprocess.Popen([sys.executable, str(script), *share], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for share in _two_shares(names)]
    results, errors = {}, []
    for worker in workers:
        out, err = worker.communicate()
        assert worker.returncode == 0, err[-3000:]
        for line in out.splitlines():
            result = json.loads(line)
            results[result["name"]] = result
    assert sorted(results) == sorted(names)
    for name, result in sorted(results.items()):
        if "error" in result:
            errors.append(f"{name}: {result['error']}")
        elif not (math.isfinite(result["loss"]) and result["nonfinite"] == 0.0 and result["step"] == 1
                  and result["finite_weights"]):
            errors.append(f"{name}: step {result}")
        elif not result["export_max_abs_diff"] <= 1e-5 * max(1.0, result["predict_max_abs"]):  # False for NaN
            errors.append(f"{name}: the export serves other values than predict: {result}")
    assert not errors, "\n".join(errors)


# --------------------------------------------------------------------------------------------
# Keras's own layer-test shape cases (tests/data/make_keras_layer_cases.py), with Keras's figures.

LAYER_CASES = json.loads((DATA / "keras_layer_cases.json").read_text())["cases"]


def case_id(case: dict) -> str:
    return f"{case['class']}-{json.dumps(case['init_kwargs'], sort_keys=True)}-{case['input_shape']}"


@pytest.mark.parametrize("case", [c for c in LAYER_CASES if c["class"] in LAYER_TYPES], ids=case_id)
def test_keras_layer_case_reproduced_or_refused_by_name(case):
    where = {"source": "keras_layer_cases.json", "layer_type": case["class"]}
    given = case["input_shape"]  # Keras's tests give the batch size first; a list of them for a merge
    if isinstance(given[0], list):
        batch, shape = given[0][0], tuple(tuple(s[1:]) for s in given)
    else:
        batch, shape = given[0], tuple(given[1:])
    keras = case["keras"]
    if "error" in keras:  # Keras refuses the case: so must jaxcnn
        with pytest.raises(JaxcnnError):
            spec, _ = keras_layer(case["class"], case["init_kwargs"], where)
            spec.output_shape(shape)
        return
    try:
        spec, _ = keras_layer(case["class"], case["init_kwargs"], where)
    except UnsupportedError as error:  # a refusal names the argument: no wrong figure
        assert "is not supported" in str(error)
        return
    params = sum(math.prod(leaf) for tree in spec.param_shapes(shape).values()
                 for leaf in jax.tree.leaves(tree, is_leaf=lambda v: isinstance(v, tuple)))
    assert [batch, *spec.output_shape(shape)] == keras["output_shape"]
    assert params == keras["params"]


def test_keras_layer_cases_cover_the_issues_layers():
    classes = {case["class"] for case in LAYER_CASES}
    assert {"Add", "Concatenate", "Reshape", "Permute", "UpSampling2D", "DepthwiseConv2D",
            "SeparableConv2D", "Conv2DTranspose", "LayerNormalization", "ReLU", "LeakyReLU", "PReLU",
            "ELU", "Softmax", "SpatialDropout2D", "GaussianNoise", "GaussianDropout"} <= classes
