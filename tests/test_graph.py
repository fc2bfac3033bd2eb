"""Graph (functional) models: the Python idiom and TOML, Keras's names, shapes and parameters against
Keras's formulas worked by hand, proofs, summaries with ``Connected to``, refusals naming the layers,
training, export and predict, and random graphs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcnn
from jaxcnn.artifact import load_artifact
from jaxcnn.checkpoint import Checkpoints, model_fingerprint
from jaxcnn.cli import main
from jaxcnn.config import from_dict, load, read_document
from jaxcnn.errors import (
    ConfigError,
    ImpossibleShapeError,
    JaxcnnError,
    LayerArgumentError,
)
from jaxcnn.export import export_model
from jaxcnn.graph import Model, Node
from jaxcnn.layers import (
    Activation,
    Add,
    Average,
    BatchNormalization,
    Concatenate,
    Conv2D,
    Dense,
    Flatten,
    GlobalAveragePooling2D,
    Maximum,
    Minimum,
    Multiply,
    Subtract,
)
from jaxcnn.train import compile


def residual_block() -> Model:
    """Conv2D -> Conv2D -> Add with the block's input, then a classifier head."""
    x = jaxcnn.Input((8, 8, 16))
    y = Conv2D(16, 3, padding="same", activation="relu")(x)
    y = Conv2D(16, 3, padding="same")(y)
    y = Add()([y, x])
    y = GlobalAveragePooling2D()(y)
    return jaxcnn.Model(inputs=x, outputs=Dense(10, activation="softmax")(y), name="residual")


def se_block() -> Model:
    """Squeeze-and-excitation: GlobalAveragePooling2D(keepdims=True) -> Dense -> Dense -> Multiply."""
    x = jaxcnn.Input((8, 8, 32))
    s = GlobalAveragePooling2D(keepdims=True)(x)
    s = Dense(8, activation="relu")(s)
    s = Dense(32, activation="sigmoid")(s)
    y = Multiply()([x, s])
    y = GlobalAveragePooling2D()(y)
    return jaxcnn.Model(inputs=x, outputs=Dense(10, activation="softmax")(y), name="se")


RESIDUAL_TOML = """
[model]
name = "residual"

[[layers]]
type = "Input"
shape = [8, 8, 16]

[[layers]]
type = "Conv2D"
filters = 16
kernel_size = 3
padding = "same"
activation = "relu"

[[layers]]
type = "Conv2D"
filters = 16
kernel_size = 3
padding = "same"

[[layers]]
type = "Add"
inputs = ["conv2d_1", "input_layer"]

[[layers]]
type = "GlobalAveragePooling2D"

[[layers]]
type = "Dense"
units = 10
activation = "softmax"
"""

SE_TOML = """
[model]
name = "se"
input_shape = [8, 8, 32]
outputs = ["dense_2"]

[[layers]]
type = "GlobalAveragePooling2D"
keepdims = true

[[layers]]
type = "Dense"
units = 8
activation = "relu"

[[layers]]
type = "Dense"
units = 32
activation = "sigmoid"

[[layers]]
type = "Multiply"
inputs = ["input_layer", "dense_1"]

[[layers]]
type = "GlobalAveragePooling2D"

[[layers]]
type = "Dense"
units = 10
activation = "softmax"
"""

# Keras's figures, by hand from its formulas (Conv2D: filters*kh*kw*C_in + filters; Dense:
# D_in*units + units; 'same' padding at stride 1 keeps H and W; merges and poolings have no weights):
RESIDUAL_FIGURES = [  # (name, type, output shape, params)
    ("conv2d", "Conv2D", (8, 8, 16), 16 * 3 * 3 * 16 + 16),  # 2,320
    ("conv2d_1", "Conv2D", (8, 8, 16), 16 * 3 * 3 * 16 + 16),  # 2,320
    ("add", "Add", (8, 8, 16), 0),  # (8, 8, 16) + (8, 8, 16)
    ("global_average_pooling2d", "GlobalAveragePooling2D", (16,), 0),
    ("dense", "Dense", (10,), 16 * 10 + 10),  # 170
]
SE_FIGURES = [
    ("global_average_pooling2d", "GlobalAveragePooling2D", (1, 1, 32), 0),  # keepdims=True
    ("dense", "Dense", (1, 1, 8), 32 * 8 + 8),  # 264, on the last axis
    ("dense_1", "Dense", (1, 1, 32), 8 * 32 + 32),  # 288
    ("multiply", "Multiply", (8, 8, 32), 0),  # (8, 8, 32) * (1, 1, 32) broadcasts to (8, 8, 32)
    ("global_average_pooling2d_1", "GlobalAveragePooling2D", (32,), 0),
    ("dense_2", "Dense", (10,), 32 * 10 + 10),  # 330
]


def figures(model: Model) -> list[tuple[str, str, tuple[int, ...], int]]:
    return [(p.name, p.type, p.output_shape, p.params) for p in model.plan()]


@pytest.mark.parametrize("build, text, expected, total", [
    (residual_block, RESIDUAL_TOML, RESIDUAL_FIGURES, 4_810),  # 2,320 + 2,320 + 170
    (se_block, SE_TOML, SE_FIGURES, 882),  # 264 + 288 + 330
])
def test_blocks_have_keras_figures_through_python_and_toml_and_are_proved(tmp_path, build, text, expected, total):
    model = build()
    assert figures(model) == expected
    assert model.count_params() == total
    path = tmp_path / "block.toml"
    path.write_text(text)
    loaded = load(path)
    assert loaded == model  # the same nodes, names and wiring
    result = model.check()
    assert [tuple(p.output.shape[1:]) for p in result.layers] == [f[2] for f in expected]
    assert result.total_params == total
    assert load_text(tmp_path, model.to_toml()) == model  # written back, read equal


def load_text(tmp_path, text: str, name: str = "again.toml") -> Model:
    path = tmp_path / name
    path.write_text(text)
    return load(path)


def test_keras_names_are_counted_per_model_and_inputs_are_input_layer():
    x1, x2 = jaxcnn.Input((4, 4, 3)), jaxcnn.Input((4, 4, 3))
    y = Concatenate()([Conv2D(2, 1)(x1), Conv2D(5, 1)(x2)])
    model = jaxcnn.Model([x1, x2], y)
    assert [n.name for n in model.nodes] == ["input_layer", "input_layer_1", "conv2d", "conv2d_1", "concatenate"]
    assert model.name == "functional" and model.input_shapes == ((4, 4, 3), (4, 4, 3))
    assert model.output_shape == (4, 4, 7)  # 2 + 5 channels
    assert model.plan()[2].formula().output == "axis -1: 2 + 5 = 7; output = (None, 4, 4, 7)"


def test_sequential_is_the_special_case_and_accepts_the_functional_input():
    seq = jaxcnn.Sequential([jaxcnn.Input((8, 8, 1)), Conv2D(4, 3), Flatten(), Dense(2)])
    assert seq == jaxcnn.Sequential([jaxcnn.layers.Input((8, 8, 1)), Conv2D(4, 3), Flatten(), Dense(2)])
    assert [n.inputs for n in seq.nodes] == [(), ("input_layer",), ("conv2d",), ("flatten",)]
    assert not seq.is_graph and seq.output_names == ("dense",)
    # the spec jaxcnn.layers.Input works in the functional idiom too, as keras.layers.Input does
    x = jaxcnn.layers.Input((8, 8, 1))
    model = jaxcnn.Model(x, Dense(2)(Flatten()(Conv2D(4, 3)(x))))
    assert figures(model) == figures(seq)
    with pytest.raises(LayerArgumentError, match="layer 0 \\(Add\\): merges several inputs, which a "
                                                 "Sequential cannot give it"):
        jaxcnn.Sequential([jaxcnn.Input((8, 8, 1)), Add()])


def test_the_flax_parameters_are_keyed_by_the_keras_names():
    variables = residual_block().check().variables
    assert sorted(variables["params"]) == ["conv2d", "conv2d_1", "dense"]


def test_the_merging_layers_compute_what_keras_computes():
    import jax.numpy as jnp

    a = jnp.arange(8.0).reshape(1, 2, 2, 2)
    b = jnp.array([10.0, -1.0]).reshape(1, 1, 1, 2)
    x = np.asarray(a)
    y = np.broadcast_to(np.asarray(b), x.shape)
    for layer, want in ((Add(), x + y), (Subtract(), x - y), (Multiply(), x * y), (Average(), (x + y) / 2),
                        (Maximum(), np.maximum(x, y)), (Minimum(), np.minimum(x, y))):
        np.testing.assert_allclose(layer.forward(None, (a, b), train=False), want)
        assert layer.output_shape(((2, 2, 2), (1, 1, 2))) == (2, 2, 2)
    # a lower rank is expanded after the batch axis, as Keras's Merge.call does: (None, 2) -> (None, 1, 1, 2)
    np.testing.assert_allclose(Add().forward(None, (a, b.reshape(1, 2)), train=False), x + y)
    assert Add().output_shape(((2, 2, 2), (2,))) == (2, 2, 2)


def test_arithmetic_with_a_number_is_an_operation_node_as_in_keras(tmp_path):
    # Keras 3: `ReLU(6.0)(y + 3.0) * (1 / 6)` makes the nodes `add (Add)`, `re_lu (ReLU)`,
    # `multiply (Multiply)` (MobileNetV3's hard sigmoid; tests/data/keras_applications/MobileNetV3Small
    # holds Keras's rows: {'name': 'add', 'class': 'Add', 'output_shape': [None, 1, 1, 16], 'params': 0}).
    from jaxcnn.layers import ReLU

    x = jaxcnn.Input((4, 4, 3))
    y = Conv2D(2, 1)(x)
    gate = ReLU(6.0)(y + 3.0) * (1 / 6)
    out = Add()([1.0 - gate, y * gate])
    model = jaxcnn.Model(inputs=x, outputs=out)
    assert [(p.name, p.type, p.output_shape) for p in model.plan()] == [
        ("conv2d", "Conv2D", (4, 4, 2)), ("add", "Add", (4, 4, 2)), ("re_lu", "ReLU", (4, 4, 2)),
        ("multiply", "Multiply", (4, 4, 2)), ("subtract", "Subtract", (4, 4, 2)),
        ("multiply_1", "Multiply", (4, 4, 2)), ("add_1", "Add", (4, 4, 2))]
    assert "add (Add)" in model.summary(print_fn=None)
    compiled = compile(model)
    state = compiled.init(0)
    images = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(np.float32)
    conv = images @ np.asarray(state.params["conv2d"]["kernel"])[0, 0] + np.asarray(state.params["conv2d"]["bias"])
    hard_sigmoid = np.clip(conv + 3.0, 0.0, 6.0) / 6
    np.testing.assert_allclose(np.asarray(compiled.predict(state, images)),
                               (1.0 - hard_sigmoid) + conv * hard_sigmoid, rtol=1e-5, atol=1e-6)
    text = model.to_toml()
    assert "constant = 3.0" in text and "constant_first = true" in text
    (tmp_path / "m.toml").write_text(text)
    assert load(str(tmp_path / "m.toml")) == model
    with pytest.raises(JaxcnnError, match=r"layer 0 'm' \(Add\): .*takes one tensor|layer 'm' \(Add\)"):
        _graph([IN, Node("m", Add(constant=3.0), ("in", "in"))])
    with pytest.raises(JaxcnnError, match=r"`constant` \(='3'\) must be a number"):
        Add(constant="3")
    with pytest.raises(JaxcnnError, match=r"`constant_first` \(=True\) needs a `constant`"):
        Subtract(constant_first=True)


def _graph(nodes, inputs=("in",), outputs=None, **kwargs) -> Model:
    return Model.from_nodes(nodes, inputs=list(inputs), outputs=list(outputs or [nodes[-1].name]), **kwargs)


IN = Node("in", jaxcnn.layers.Input((8, 8, 4)))


@pytest.mark.parametrize("nodes, kwargs, message", [
    ([IN, Node("a", Conv2D(4, 1), ("b",)), Node("b", Conv2D(4, 1), ("a",)), Node("c", Flatten(), ("b",))], {},
     "layer 'a' (Conv2D): key `inputs`: is in a cycle: 'a' <- 'b' <- 'a' (each takes the output of the next; "
     "a graph model must be acyclic)"),
    ([IN, Node("a", Conv2D(4, 1), ("nope",))], {},
     "layer 'a' (Conv2D): key `inputs`: takes an unknown input 'nope'; the nodes are: in"),
    ([IN, Node("in2", jaxcnn.layers.Input((8, 8, 4))), Node("a", Conv2D(4, 1), ("in",))], {"inputs": ["in", "in2"]},
     "layer 'in2' (InputLayer): is an unused input: no output of the model depends on it"),
    ([IN, Node("a", Conv2D(4, 1), ("in",)), Node("a", Flatten(), ("a",))], {},
     "layer 'a' (Flatten): `name` (='a') is used by two layers (Conv2D and Flatten); names must be unique"),
    ([IN, Node("a", Conv2D(8, 1), ("in",)), Node("m", Add(), ("a", "in"))], {},
     "layer 1 'm' (Add): cannot merge inputs of shapes (None, 8, 8, 8), (None, 8, 8, 4): on axis 3 the sizes "
     "8 and 4 differ and neither is 1 (Keras broadcasts equal sizes or a size 1) (its inputs come from 'a', 'in')"),
    ([IN, Node("a", Conv2D(8, 1, strides=2), ("in",)), Node("m", Concatenate(), ("a", "in"))], {},
     "layer 1 'm' (Concatenate): cannot concatenate inputs of shapes (None, 4, 4, 8), (None, 8, 8, 4) on axis -1"),
    ([IN, Node("a", Conv2D(4, 1), ("in",)), Node("b", Conv2D(4, 1), ("in",))], {"outputs": ["b"]},
     "layer 'a' (Conv2D): is an unused layer: no output of the model depends on it (outputs: b)"),
    ([IN, Node("m", Add(), ("in",))], {}, "layer 'm' (Add): key `inputs`: merges two or more inputs, got 1 (in)"),
    ([IN, Node("m", Subtract(), ("in", "in", "in"))], {},
     "layer 0 'm' (Subtract): takes exactly 2 inputs, got 3"),
])
def test_invalid_graphs_are_refused_naming_the_layers(nodes, kwargs, message):
    with pytest.raises(JaxcnnError) as info:
        _graph(nodes, **kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_shared_layer_is_refused_by_name():
    x = jaxcnn.Input((4, 4, 2))
    conv = Conv2D(2, 1)
    with pytest.raises(LayerArgumentError, match="layer 'conv2d' \\(Conv2D\\): is called at 2 places \\(a shared "
                                                 "layer\\); jaxcnn keys parameters by layer name"):
        jaxcnn.Model(x, Add()([conv(x), conv(x)]))


def test_toml_refusals_name_the_file_and_the_layer(tmp_path):
    text = RESIDUAL_TOML.replace('inputs = ["conv2d_1", "input_layer"]', 'inputs = ["conv2d_7", "input_layer"]')
    with pytest.raises(LayerArgumentError) as info:
        load_text(tmp_path, text, "bad.toml")
    assert str(info.value).startswith(f"{tmp_path / 'bad.toml'}: layer 2 'add' (Add): key `inputs`: takes an "
                                      "unknown input 'conv2d_7'; the nodes are: input_layer, conv2d, conv2d_1,")
    with pytest.raises(ConfigError, match="bad2.toml: layer 2 \\(Add\\): `inputs` \\(='conv2d'\\) "
                                          "must be a non-empty list of layer names"):
        load_text(tmp_path, RESIDUAL_TOML.replace('["conv2d_1", "input_layer"]', '"conv2d"'), "bad2.toml")
    with pytest.raises(LayerArgumentError, match="bad3.toml: key `outputs`: the model's outputs name an unknown "
                                                 "node 'dense_9'"):
        load_text(tmp_path, SE_TOML.replace('"dense_2"', '"dense_9"'), "bad3.toml")
    with pytest.raises(ConfigError, match="bad4.toml: layer 0 'conv2d' \\(Conv2D\\): key `input`: unknown key; did you mean "
                                          "`inputs`\\?"):
        load_text(tmp_path, RESIDUAL_TOML.replace('filters = 16\nkernel_size = 3\npadding = "same"\nactivation',
                                                  'input = ["x"]\nfilters = 16\nkernel_size = 3\npadding = "same"\n'
                                                  'name = "conv2d"\nactivation', 1), "bad4.toml")


def test_the_summary_prints_connected_to_as_keras_does():
    text = residual_block().summary(print_fn=None, width=200)
    lines = text.splitlines()
    # Keras 3 (summary_utils.get_connections): "<layer>[<node>][<tensor>]" joined by ", "; an input: "-"
    assert lines[2].split() == ["Layer", "(type)", "Output", "Shape", "Param", "#", "Connected", "to"]
    rows = [line.split(None, 3) for line in lines if "(" in line and "Layer (type)" not in line and ":" not in line]
    assert [r[0] for r in rows] == ["input_layer", "conv2d", "conv2d_1", "add", "global_average_pooling2d", "dense"]
    assert "add (Add)" in text and "conv2d_1[0][0], input_layer[0][0]" in text
    assert lines[3].startswith("=") and len(lines[3]) >= 98  # Keras 2's functional layout: 98 wide
    assert "Total params: 4,810" in text
    rich = residual_block().summary("rich", print_fn=None, width=200)
    assert "Connected to" in rich and "│ conv2d_1[0][0], input_layer[0][0] │" in rich
    layers = __import__("json").loads(residual_block().summary("json", print_fn=None))["layers"]
    assert [(r["name"], r["connected_to"]) for r in layers[:4]] == [
        ("input_layer", []), ("conv2d", ["input_layer"]), ("conv2d_1", ["conv2d"]), ("add", ["conv2d_1", "input_layer"])]


def test_a_chain_graph_prints_as_keras_prints_it_without_connected_to():
    x = jaxcnn.Input((4, 4, 1))
    text = jaxcnn.Model(x, Dense(3)(Flatten()(x))).summary(print_fn=None)
    assert "Connected to" not in text and "input_layer (InputLayer)" in text


def test_a_graph_trains_one_finite_step():
    compiled = compile(se_block(), "adam", loss="sparse_categorical_crossentropy")
    assert compiled.head == "softmax"
    state = compiled.init(0)
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 32)).astype(np.float32)
    y = np.arange(8) % 10
    state, metrics = compiled.train_step(state, (x, y))
    assert int(state.step) == 1
    assert math.isfinite(float(metrics.loss)) and all(np.isfinite(v) for v in jax_leaves(state.params))
    assert np.allclose(np.asarray(compiled.predict(state, x)).sum(-1), 1.0, atol=1e-5)


def jax_leaves(tree):
    import jax

    return [float(np.sum(leaf)) for leaf in jax.tree.leaves(tree)]


def test_a_model_with_two_outputs_is_proved_but_refused_for_training():
    x = jaxcnn.Input((4, 4, 2))
    a, b = Flatten()(x), GlobalAveragePooling2D()(x)
    model = jaxcnn.Model(x, [Dense(3)(a), Dense(2)(b)])
    assert model.output_shapes == ((3,), (2,))
    assert len(model.check().layers) == 4
    with pytest.raises(ConfigError) as info:
        compile(model, "sgd")
    assert str(info.value) == ("key `model`: the model has 1 inputs (input_layer) and 2 outputs (dense, dense_1): "
                               "training and export take a model with one input and one output (it can be "
                               "summarized and proved)")


TRAIN_TOML = """
[model]
name = "digits_residual"
input_shape = [8, 8, 1]

[[layers]]
type = "Conv2D"
name = "stem"
filters = 8
kernel_size = 3
padding = "same"
activation = "relu"

[[layers]]
type = "Conv2D"
filters = 8
kernel_size = 3
padding = "same"

[[layers]]
type = "BatchNormalization"

[[layers]]
type = "Add"
inputs = ["batch_normalization", "stem"]

[[layers]]
type = "Flatten"

[[layers]]
type = "Dense"
units = 10
activation = "softmax"

[data]
name = "digits"
validation = 0.1
test = 0.2
limit = 300

[train]
epochs = 2
batch_size = 32
seed = 3
loss = "sparse_categorical_crossentropy"

[train.optimizer]
name = "adam"
learning_rate = 0.01
"""


def test_a_toml_graph_trains_exports_and_predicts_as_its_checkpoint(tmp_path, capsys):
    config = tmp_path / "graph.toml"
    config.write_text(TRAIN_TOML)
    assert main(["train", str(config), "--workdir", str(tmp_path / "w")]) == 0
    assert "test accuracy" in capsys.readouterr().err
    manifest = export_model(config, tmp_path / "w", tmp_path / "m.jaxcnn")
    assert manifest["output_shape"] == [None, 10]
    model = from_dict(read_document(config), source=str(config))
    compiled = compile(model, "sgd")
    abstract = compiled.abstract_state()
    variables, _ = Checkpoints(tmp_path / "w" / "best", fingerprint=model_fingerprint(model)).restore_variables(
        {"params": abstract.params, "batch_stats": abstract.batch_stats})
    state = compiled.init(0).replace(**variables)
    images = np.random.default_rng(1).normal(size=(5, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(load_artifact(tmp_path / "m.jaxcnn").predict(images),
                               np.asarray(compiled.predict(state, images)), rtol=1e-4, atol=1e-6)


def test_the_resnet20_config_has_the_hand_counted_parameters():
    """He et al.'s CIFAR ResNet-20 on 32x32x1. By hand: stem 3*3*1*16+16 = 160 and BN 4*16 = 64;
    stage 1, 3 blocks of 2 convs 3*3*16*16+16 = 2,320 and 2 BN 64: 3*4,768 = 14,304; stage 2: the
    first block 3*3*16*32+32 = 4,640, 3*3*32*32+32 = 9,248, 2 BN 128 and the projection
    1*1*16*32+32 = 544 (14,688), then 2 blocks of 2*9,248 + 256 = 18,752: 52,192; stage 3: 18,496 +
    36,928 + 512 + 2,112 = 58,048, then 2*(2*36,928 + 512) = 148,736: 206,784; Dense 64*10+10 = 650.
    Total 160+64+14,304+52,192+206,784+650 = 274,154, of which 2*(16+6*16+6*32+6*64) = 1,376 BN
    moving statistics are not trainable."""
    model = load(ROOT / "configs" / "resnet20.toml")
    assert (model.count_params(), model.non_trainable_params()) == (274_154, 1_376)
    assert model.output_shape == (10,) and model.plan()[-3].output_shape == (8, 8, 64)


# ---- random graphs ---------------------------------------------------------------------------

@st.composite
def graphs(draw):
    """A random valid graph on one input: convolutions, dense on channels, SE-style squeezes,
    merges (element-wise with broadcasting, concatenation) of nodes whose shapes fit and nested
    models; every sink is an output."""
    h, c = draw(st.integers(2, 6)), draw(st.integers(1, 4))
    nodes = [Node("in", jaxcnn.layers.Input((h, h, c)))]
    shapes = {"in": (h, h, c)}
    for i in range(draw(st.integers(1, 7))):
        name = f"n{i}"
        source = draw(st.sampled_from(sorted(shapes)))
        shape = shapes[source]
        kind = draw(st.sampled_from(["conv", "dense", "squeeze", "merge", "concat", "nested"]))
        fits = [n for n, s in shapes.items() if n != source and (s == shape or s == (1, 1, shape[2]))]
        if kind == "conv":
            node = Node(name, Conv2D(draw(st.integers(1, 4)), draw(st.integers(1, 2)), padding="same"), (source,))
        elif kind == "dense":
            node = Node(name, Dense(draw(st.integers(1, 4))), (source,))
        elif kind == "nested":  # a Sequential used as a layer: it takes the shape it is given
            inner = jaxcnn.Sequential([Dense(draw(st.integers(1, 3))), Activation("relu")], name=f"inner{i}")
            node = Node(name, inner, (source,))
        elif kind == "squeeze" and len(shape) == 3:
            node = Node(name, GlobalAveragePooling2D(keepdims=True), (source,))
        elif kind == "merge" and fits:
            other = draw(st.sampled_from(fits))
            layer = draw(st.sampled_from([Add, Subtract, Multiply, Average, Maximum, Minimum]))()
            node = Node(name, layer, (source, other))
        elif kind == "concat" and any(s[:2] == shape[:2] for n, s in shapes.items() if n != source):
            other = draw(st.sampled_from([n for n, s in shapes.items() if n != source and s[:2] == shape[:2]]))
            node = Node(name, Concatenate(), (source, other))
        else:
            node = Node(name, Activation("relu"), (source,))
        nodes.append(node)
        shapes[name] = _plan_shape(nodes, name)
    return nodes


def _sinks(nodes):
    used = {i for n in nodes for i in n.inputs}
    return [n.name for n in nodes if n.name not in used and not n.is_input]


def _plan_shape(nodes, name):
    model = Model.from_nodes(nodes, inputs=["in"], outputs=_sinks(nodes))
    return {p.name: p.output_shape for p in model.plan()}[name]


@settings(max_examples=15, deadline=None)
@given(graphs())
def test_random_graphs_have_formulas_equal_to_eval_shape(nodes):
    model = Model.from_nodes(nodes, inputs=["in"], outputs=_sinks(nodes))
    result = model.check()  # raises ShapeMismatchError on any disagreement
    assert [tuple(p.output.shape[1:]) for p in result.layers] == [p.output_shape for p in model.plan()]


@settings(max_examples=25, deadline=None)
@given(graphs(), st.sampled_from(["unknown", "cycle", "twice", "misfit"]), st.data())
def test_random_invalid_graphs_are_refused_naming_a_layer(nodes, fault, data):
    nodes, outputs = list(nodes), _sinks(nodes)
    victim = data.draw(st.integers(1, len(nodes) - 1))
    node = nodes[victim]
    if fault == "unknown":
        nodes[victim] = Node(node.name, node.layer, ("ghost",) + node.inputs[1:])
    elif fault == "cycle":
        nodes[victim] = Node(node.name, node.layer, (node.name,) + node.inputs[1:])
    elif fault == "twice":
        nodes.append(Node(node.name, Flatten(), (node.name,)))
    else:  # a merge of shapes that cannot broadcast: (h, h, c) with (h + 1, h + 1, c) from a fresh input
        h, _, c = nodes[0].layer.shape
        nodes.insert(1, Node("in2", jaxcnn.layers.Input((h + 1, h + 1, c))))
        nodes.append(Node("bad", Add(), ("in", "in2")))
    with pytest.raises(JaxcnnError) as info:
        Model.from_nodes(nodes, inputs=["in", "in2"] if fault == "misfit" else ["in"],
                         outputs=[*outputs, "bad"] if fault == "misfit" else outputs)
    assert info.value.layer_name is not None and f"'{info.value.layer_name}'" in str(info.value)
    if fault == "misfit":
        assert isinstance(info.value, ImpossibleShapeError) and info.value.layer_name == "bad"


def test_a_chain_graph_computes_what_the_same_sequential_computes():
    """The graph wiring (SequentialModule with ``inbound``) against the Sequential chain, on the same
    variables, in inference and in a training pass (dropout off, batch statistics updated)."""
    import jax

    layers = [Conv2D(3, 3, padding="same", activation="relu"), BatchNormalization(), Flatten(), Dense(4)]
    seq = jaxcnn.Sequential([jaxcnn.Input((5, 5, 2)), *layers])
    x = jaxcnn.Input((5, 5, 2))
    y = x
    for layer in layers:
        y = layer(y)
    graph = jaxcnn.Model(x, y)
    images = np.random.default_rng(0).normal(size=(3, 5, 5, 2)).astype(np.float32)
    variables = seq.module().init(jax.random.key(0), images)
    for kwargs in ({}, {"train": True, "mutable": ["batch_stats"]}):
        want = seq.module().apply(variables, images, **kwargs)
        got = graph.module().apply(variables, images, **kwargs)
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_a_nested_model_is_one_layer_with_its_parameters_under_its_name():
    """As a MobileNetV2 base inside a Sequential: Keras prints one row, ``base (Functional)``, whose
    params are its layers' (by hand: Conv2D 3*3*3*4 + 4 = 112, BatchNormalization 4*4 = 16 of which
    2*4 = 8 moving statistics, Conv2D 1*1*3*4 + 4 = 16: 144), then Dense 4*3 + 3 = 15."""
    x = jaxcnn.Input((8, 8, 3))
    y = BatchNormalization()(Conv2D(4, 3, padding="same")(x))
    base = jaxcnn.Model(x, Add()([y, Conv2D(4, 1)(x)]), name="base")
    outer = jaxcnn.Sequential([jaxcnn.Input((8, 8, 3)), base, GlobalAveragePooling2D(),
                               Dense(3, activation="softmax")], name="outer")
    assert figures(outer) == [("base", "Functional", (8, 8, 4), 144),
                              ("global_average_pooling2d", "GlobalAveragePooling2D", (4,), 0), ("dense", "Dense", (3,), 15)]
    assert outer.non_trainable_params() == 8
    variables = outer.check().variables
    assert sorted(variables["params"]["base"]) == ["batch_normalization", "conv2d", "conv2d_1"]
    assert variables["params"]["base"]["conv2d"]["kernel"].shape == (3, 3, 3, 4)
    assert "base (Functional)" in outer.summary(print_fn=None)
    # the functional idiom and the declarative form nest it the same way
    x2 = jaxcnn.Input((8, 8, 3))
    called = jaxcnn.Model(x2, Dense(2)(Flatten()(base(x2))))
    declared = Model.from_nodes([Node("input_layer", jaxcnn.layers.Input((8, 8, 3))), Node("base", base, ("input_layer",)),
                                 Node("flatten", Flatten(), ("base",)), Node("dense", Dense(2), ("flatten",))],
                                inputs=["input_layer"], outputs=["dense"])
    assert called == declared and called.count_params() == 144 + 8 * 8 * 4 * 2 + 2
    compiled = compile(outer, "adam", loss="sparse_categorical_crossentropy")
    state, metrics = compiled.train_step(compiled.init(0), (np.ones((4, 8, 8, 3), np.float32), np.array([0, 1, 2, 0])))
    assert math.isfinite(float(metrics.loss)) and int(state.step) == 1
    # a config nests a model by its file (type = "Model", path = ...): one built in Python has none
    with pytest.raises(ConfigError, match="layer 0 'base' \\(Functional\\): is a nested model that was not read "
                                          "from a file, which a jaxcnn TOML config cannot hold"):
        outer.to_toml()
