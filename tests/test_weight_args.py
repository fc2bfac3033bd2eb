"""The weight arguments of weighted layers: initializers as configs, regularizers added to the
loss, constraints applied after each update, frozen layers; their TOML and Keras JSON forms.

Keras's values: keras/src/initializers/random_initializers.py (VarianceScaling's fans and its
truncated-normal constant 0.87962566103423978; TruncatedNormal cut at two standard deviations),
keras/src/regularizers/regularizers.py (``l1 * sum|w| + l2 * sum w**2``; ``L1(0.01)``,
``L2(0.01)``), keras/src/constraints/constraints.py (norms with ``epsilon`` 1e-7),
keras/src/layers/layer.py (the weight penalties of ``trainable_weights`` only; activity penalties
divided by the batch size) and keras/src/trainers/trainer.py ``compute_loss`` (every penalty summed
into the loss that is minimized and reported).
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_convolutional import keras_json

import jaxcnn
from jaxcnn import config
from jaxcnn.errors import LayerArgumentError, UnsupportedError
from jaxcnn.layers import (
    BatchNormalization,
    Conv2D,
    Dense,
    DepthwiseConv2D,
    Flatten,
    SeparableConv2D,
)
from jaxcnn.layers.initializers import Initializer, initializer_fn, initializer_spec
from jaxcnn.layers.weights import (
    Constraint,
    Regularizer,
    constraint_spec,
    regularizer_spec,
)
from jaxcnn.train import compile

TRUNCATED_STD = 0.87962566103423978  # the standard deviation of a standard normal cut at +-2


def sample(value, shape, seed=0):
    return np.asarray(initializer_fn(initializer_spec(value))(jax.random.PRNGKey(seed), shape, jnp.float32))


# ---- initializers -------------------------------------------------------------------------------


def test_variance_scaling_statistics_follow_keras_fans():
    # kernel (3, 3, 64, 128): fan_in = 64*9 = 576, fan_out = 128*9 = 1152, fan_avg = 864
    shape = (3, 3, 64, 128)
    w = sample({"name": "VarianceScaling", "scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
               shape)
    assert abs(w.std() - math.sqrt(2.0 / 1152)) < 0.02 * math.sqrt(2.0 / 1152)  # 0.041667
    stddev = math.sqrt(2.0 / 1152) / TRUNCATED_STD  # cut at two of these
    assert np.abs(w).max() <= 2 * stddev + 1e-6
    assert abs(w.mean()) < 0.001
    w = sample({"name": "VarianceScaling", "scale": 3.0, "mode": "fan_avg", "distribution": "untruncated_normal"},
               shape)
    assert abs(w.std() - math.sqrt(3.0 / 864)) < 0.02 * math.sqrt(3.0 / 864)  # 0.058926
    assert np.abs(w).max() > 2 * math.sqrt(3.0 / 864)  # not cut
    w = sample({"name": "VarianceScaling", "scale": 0.5, "mode": "fan_in", "distribution": "uniform"}, shape)
    limit = math.sqrt(3 * 0.5 / 576)  # 0.051031
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    assert abs(w.std() - limit / math.sqrt(3)) < 0.02 * limit / math.sqrt(3)


def test_random_initializer_statistics():
    w = sample({"class_name": "TruncatedNormal", "config": {"mean": 1.0, "stddev": 0.5, "seed": None}}, (200_000,))
    assert abs(w.mean() - 1.0) < 0.005
    assert abs(w.std() - 0.5 * TRUNCATED_STD) < 0.005  # 0.43981: cut at 1.0 +- 2*0.5, not rescaled
    assert w.min() >= 0.0 - 1e-6 and w.max() <= 2.0 + 1e-6
    w = sample({"name": "RandomNormal", "mean": -0.5, "stddev": 0.2}, (200_000,))
    assert abs(w.mean() + 0.5) < 0.003 and abs(w.std() - 0.2) < 0.003
    w = sample({"name": "RandomUniform", "minval": -1, "maxval": 3}, (200_000,))
    assert w.min() >= -1 and w.max() <= 3 and abs(w.mean() - 1.0) < 0.02  # mean (3 - 1)/2 = 1
    np.testing.assert_array_equal(sample({"name": "Constant", "value": 0.25}, (3, 4)), np.full((3, 4), 0.25))
    q = sample({"class_name": "Orthogonal", "config": {"gain": 2.0, "seed": None}}, (64, 32)).astype(np.float64)
    np.testing.assert_allclose(q.T @ q, 4.0 * np.eye(32), atol=1e-4)  # gain**2 * I


@pytest.mark.parametrize(("value", "expected"), [
    ("HeNormal", "he_normal"),
    ({"name": "VarianceScaling", "scale": 2.0, "mode": "fan_in", "distribution": "normal"}, "he_normal"),
    ({"module": "keras.initializers", "class_name": "VarianceScaling",
      "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal", "seed": None},
      "registered_name": None},
     Initializer("variance_scaling", (("distribution", "truncated_normal"), ("mode", "fan_out"), ("scale", 2.0)))),
    ({"class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": 0.01, "seed": None}},  # tf.keras 2
     Initializer("random_normal", (("mean", 0.0), ("stddev", 0.01)))),
    ({"name": "Constant", "value": 1}, Initializer("constant", (("value", 1.0),))),
    ({"module": "keras.initializers", "class_name": "OrthogonalInitializer", "config": {"gain": 1.0, "seed": None},
      "registered_name": None}, "orthogonal"),
])
def test_initializer_forms_normalized(value, expected):
    assert initializer_spec(value) == expected
    assert Conv2D(4, 3, kernel_initializer=value).kernel_initializer == expected


@pytest.mark.parametrize(("value", "message"), [
    ({"name": "VarianceScaling", "mode": "fan_sum"}, r"VarianceScaling mode='fan_sum' must be one of fan_in"),
    ({"name": "VarianceScaling", "scale": 0}, r"VarianceScaling scale=0.0 must be positive"),
    ({"name": "RandomNormal", "sd": 0.1}, r"RandomNormal has no parameter\(s\) sd; it takes mean, stddev"),
    ("glorot", r"is not a known initializer; known: glorot_uniform"),
    (3, r"must be the name of an initializer or a table \{name = "),
])
def test_bad_initializer_refused_in_one_line_naming_the_argument(value, message):
    with pytest.raises(LayerArgumentError, match=r"^Dense: `kernel_initializer` \(=.*\) " + message) as info:
        Dense(3, kernel_initializer=value)
    assert "\n" not in str(info.value)


def test_initializer_table_initializes_the_layer():
    model = jaxcnn.Sequential([jaxcnn.layers.Input((4, 4, 16)), DepthwiseConv2D(
        3, depth_multiplier=32, depthwise_initializer={"name": "Constant", "value": 0.5},
        bias_initializer={"name": "RandomUniform", "minval": 1.0, "maxval": 2.0})])
    variables = jaxcnn.flax_module.build_module(model).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 16)))
    params = variables["params"]["depthwise_conv2d"]
    np.testing.assert_array_equal(params["kernel"], np.full((3, 3, 16, 32), 0.5))
    assert 1.0 <= float(params["bias"].min()) and float(params["bias"].max()) <= 2.0


# ---- the forms of regularizers and constraints ----------------------------------------------------


@pytest.mark.parametrize(("value", "l1", "l2"), [
    ("l1", 0.01, 0.0), ("l2", 0.0, 0.01), ("l1_l2", 0.01, 0.01), ("L1L2", 0.0, 0.0),
    ({"name": "L2", "l2": 0.001}, 0.0, 0.001),
    ({"name": "l1_l2", "l2": 0.5}, 0.0, 0.5),  # a table has the class's defaults (0.0)
    ({"module": "keras.regularizers", "class_name": "L2", "config": {"l2": 0.01}, "registered_name": None}, 0.0, 0.01),
    ({"class_name": "L1L2", "config": {"l1": 0.0, "l2": 0.009999999776482582}}, 0.0, 0.009999999776482582),
    ({"class_name": "L1", "config": {"l1": None}}, 0.01, 0.0),  # Keras: None is the default
])
def test_regularizer_forms(value, l1, l2):
    assert regularizer_spec(value).params() == {"l1": l1, "l2": l2}


def test_regularizer_and_constraint_values():
    w = jnp.asarray([[1.0, -2.0], [3.0, 0.5]])
    # 0.1*(1 + 2 + 3 + 0.5) + 0.2*(1 + 4 + 9 + 0.25) = 0.65 + 2.85 = 3.5
    assert float(regularizer_spec({"name": "L1L2", "l1": 0.1, "l2": 0.2})(w)) == pytest.approx(3.5)
    eps = 1e-7
    norms = np.array([math.sqrt(10.0), math.sqrt(4.25)])  # per column (axis 0)
    got = constraint_spec({"name": "MaxNorm", "max_value": 2, "axis": 0}, 2)(w)
    np.testing.assert_allclose(got, np.asarray(w) * (np.minimum(norms, 2.0) / (eps + norms)), rtol=1e-6)
    got = constraint_spec("unit_norm", 2)(w)
    np.testing.assert_allclose(got, np.asarray(w) / (eps + norms), rtol=1e-6)
    got = constraint_spec({"name": "min_max_norm", "min_value": 2.5, "max_value": 3.0, "rate": 0.5}, 2)(w)
    desired = 0.5 * np.clip(norms, 2.5, 3.0) + 0.5 * norms
    np.testing.assert_allclose(got, np.asarray(w) * desired / (eps + norms), rtol=1e-6)
    np.testing.assert_array_equal(constraint_spec("NonNeg", 2)(w), [[1.0, 0.0], [3.0, 0.5]])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kernel_regularizer": "l3"}, r"`kernel_regularizer` \(='l3'\) is not a known regularizer; known: l1"),
    ({"bias_regularizer": {"name": "L2", "l2": -1}}, r"`bias_regularizer` .* l2=-1 must be a non-negative number"),
    ({"kernel_constraint": {"name": "max_norm", "axis": 2}},
     r"`kernel_constraint` .* axis=2 must be an axis \(or a list of axes\) of the 2-D weight"),
    ({"bias_constraint": {"name": "MaxNorm", "max_value": "big"}}, r"max_norm max_value='big' must be a number"),
    ({"trainable": "no"}, r"`trainable` \(='no'\) must be true or false"),
])
def test_bad_weight_arguments_refused_in_one_line(kwargs, message):
    with pytest.raises(LayerArgumentError, match=message) as info:
        Dense(3, **kwargs)
    assert "\n" not in str(info.value)


def test_toml_forms_read_and_written_back(tmp_path):
    text = """
[model]
input_shape = [8, 8, 3]

[[layers]]
type = "Conv2D"
filters = 4
kernel_size = 3
kernel_initializer = {name = "VarianceScaling", scale = 2.0, mode = "fan_out", distribution = "truncated_normal"}
kernel_regularizer = {name = "L2", l2 = 0.001}
activity_regularizer = "l1"
kernel_constraint = {name = "max_norm", max_value = 3.0, axis = [0, 1, 2]}
bias_constraint = "non_neg"
trainable = false

[[layers]]
type = "SeparableConv2D"
filters = 2
kernel_size = 3
depthwise_regularizer = "l2"
pointwise_constraint = "unit_norm"
"""
    path = tmp_path / "model.toml"
    path.write_text(text)
    model = config.load(path)
    conv, separable = model.layers
    assert conv.kernel_initializer == Initializer(
        "variance_scaling", (("distribution", "truncated_normal"), ("mode", "fan_out"), ("scale", 2.0)))
    assert conv.regularizers() == {"kernel": Regularizer("l1_l2", (("l1", 0.0), ("l2", 0.001)))}
    assert conv.activity_regularizer.params() == {"l1": 0.01, "l2": 0.0}
    assert conv.constraints() == {
        "kernel": Constraint("max_norm", (("axis", (0, 1, 2)), ("max_value", 3.0))), "bias": Constraint("non_neg")}
    assert conv.trainable is False
    assert set(separable.regularizers()) == {"depthwise_kernel"}
    assert set(separable.constraints()) == {"pointwise_kernel"}
    written = config.to_toml(model)
    assert 'kernel_regularizer = {name = "l1_l2", l1 = 0.0, l2 = 0.001}' in written
    assert "trainable = false" in written
    again = tmp_path / "again.toml"
    again.write_text(written)
    assert config.load(again).layers == model.layers


def test_keras_json_forms_read():
    conf = {
        "units": 3, "kernel_regularizer": {"module": "keras.regularizers", "class_name": "L2",
                                           "config": {"l2": 0.01}, "registered_name": None},
        "bias_regularizer": {"class_name": "L1L2", "config": {"l1": 0.5, "l2": 0.0}},  # tf.keras 2
        "activity_regularizer": None,
        "kernel_constraint": {"module": "keras.constraints", "class_name": "MaxNorm",
                              "config": {"max_value": 2, "axis": 0}, "registered_name": None},
        "bias_constraint": {"class_name": "NonNeg", "config": {}},
        "kernel_initializer": {"module": "keras.initializers", "class_name": "RandomNormal",
                               "config": {"mean": 0.0, "stddev": 0.02, "seed": None}, "registered_name": None},
    }
    doc = json.loads(keras_json("Dense", conf, (5,)))
    doc["config"]["layers"][1]["config"]["trainable"] = False
    dense = config.from_keras_dict(doc).layers[0]
    assert dense.trainable is False
    assert dense.regularizers()["kernel"].params() == {"l1": 0.0, "l2": 0.01}
    assert dense.regularizers()["bias"].params() == {"l1": 0.5, "l2": 0.0}
    assert dense.constraints()["kernel"] == Constraint("max_norm", (("axis", 0), ("max_value", 2.0)))
    assert dense.kernel_initializer == Initializer("random_normal", (("mean", 0.0), ("stddev", 0.02)))


def test_keras_json_unsupported_regularizer_refused_by_name():
    conf = {"filters": 2, "kernel_size": [3, 3], "kernel_regularizer": {
        "module": "keras.regularizers", "class_name": "OrthogonalRegularizer",
        "config": {"factor": 0.01, "mode": "rows"}, "registered_name": None}}
    with pytest.raises(LayerArgumentError, match=r"layer 0 'layer' \(Conv2D\): `kernel_regularizer` .*"
                                                  r"'OrthogonalRegularizer' is not a known regularizer"):
        config.from_keras_json(keras_json("Conv2D", conf, (8, 8, 1)))
    conf = {"axis": -1, "beta_regularizer": {"class_name": "L2", "config": {"l2": 0.1}}}
    with pytest.raises(UnsupportedError, match=r"beta_regularizer=.* is not supported: jaxcnn has no regularizer "
                                               r"on this weight"):
        config.from_keras_json(keras_json("BatchNormalization", conf, (8, 8, 1)))


# ---- regularization in the loss -----------------------------------------------------------------


def two_dense(**first):
    return jaxcnn.Sequential([jaxcnn.layers.Input((2, 2, 1)), Flatten(), Dense(3, **first), Dense(1)])


def batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2, 2, 1)).astype(np.float32), rng.normal(size=(n, 1)).astype(np.float32)


def test_weight_regularizers_added_to_the_minimized_and_reported_loss_exactly():
    regularized = compile(two_dense(kernel_regularizer={"name": "L1L2", "l1": 0.01, "l2": 0.02},
                                    bias_regularizer={"name": "L2", "l2": 0.5}),
                          optax.sgd(0.1), "mean_squared_error")
    state = regularized.init(3)
    state = state.replace(params=jax.tree.map(lambda p: p + 0.3, state.params))  # a non-zero bias too
    p = jax.tree.map(np.array, state.params)
    k1, b1, k2, b2 = p["dense"]["kernel"], p["dense"]["bias"], p["dense_1"]["kernel"], p["dense_1"]["bias"]
    x, t = batch()
    xf = x.reshape(len(x), -1).astype(np.float64)
    h = xf @ k1 + b1
    out = h @ k2 + b2
    mse = np.mean((out - t) ** 2)
    penalty = 0.01 * np.abs(k1).sum() + 0.02 * (k1 ** 2).sum() + 0.5 * (b1 ** 2).sum()
    assert regularized.evaluate(state, [(x, t)])["loss"] == pytest.approx(mse + penalty, rel=1e-5)
    new, metrics = regularized.train_step(state, (x, t))
    assert metrics.compute()["loss"] == pytest.approx(mse + penalty, rel=1e-5)  # reported as Keras reports it
    # the gradient step includes the penalty's gradient: d/dK1 = dmse/dK1 + 0.01 sign(K1) + 0.04 K1
    dout = 2 * (out - t) / len(x)
    dk1 = xf.T @ (dout @ k2.T) + 0.01 * np.sign(k1) + 0.04 * k1
    db1 = (dout @ k2.T).sum(0) + 1.0 * b1
    np.testing.assert_allclose(new.params["dense"]["kernel"], k1 - 0.1 * dk1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.params["dense"]["bias"], b1 - 0.1 * db1, rtol=1e-5, atol=1e-6)


def test_activity_regularizer_divided_by_the_real_batch_size():
    compiled = compile(two_dense(activity_regularizer={"name": "L2", "l2": 0.1}), optax.sgd(0.0),
                       "mean_squared_error")
    state = compiled.init(0)
    p = jax.tree.map(np.array, state.params)
    x, t = batch(4)
    mask = np.array([1, 1, 0, 0], np.float32)  # a padded batch: two real examples
    h = x.reshape(4, -1) @ p["dense"]["kernel"] + p["dense"]["bias"]
    out = h @ p["dense_1"]["kernel"] + p["dense_1"]["bias"]
    real = slice(0, 2)
    expected = np.mean((out[real] - t[real]) ** 2) + 0.1 * (h[real] ** 2).sum() / 2
    assert compiled.eval_step(state, (x, t, mask)).compute()["loss"] == pytest.approx(expected, rel=1e-5)
    _, metrics = compiled.train_step(state, (x, t, mask))
    assert metrics.compute()["loss"] == pytest.approx(expected, rel=1e-5)


def test_activity_regularizer_of_a_softmax_head_is_on_the_probabilities():
    model = jaxcnn.Sequential([jaxcnn.layers.Input((4,)), Dense(3, activation="softmax", activity_regularizer={
        "name": "L1", "l1": 0.1})])
    plain = jaxcnn.Sequential([jaxcnn.layers.Input((4,)), Dense(3, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1], np.int32)
    regularized = compile(model, "sgd", "sparse_categorical_crossentropy")
    state = regularized.init(0)
    base = compile(plain, "sgd", "sparse_categorical_crossentropy").evaluate(state, [(x, y)])["loss"]
    # 0.1 * sum|p| = 0.1 per example: probabilities sum to 1 (on the logits it would not be 0.1)
    assert regularized.evaluate(state, [(x, y)])["loss"] == pytest.approx(base + 0.1, rel=1e-5)


# ---- constraints after the update -----------------------------------------------------------------


def conv_model(**conv):
    return jaxcnn.Sequential([jaxcnn.layers.Input((6, 6, 2)), Conv2D(3, 3, **conv), Flatten(), Dense(2)])


def test_max_norm_scales_each_filter_down_to_the_norm_after_a_step():
    x = np.random.default_rng(1).normal(size=(4, 6, 6, 2)).astype(np.float32)
    y = np.array([0, 1, 1, 0], np.int32)
    free = compile(conv_model(kernel_initializer={"name": "RandomNormal", "stddev": 1.0}), optax.sgd(0.05),
                   "sparse_categorical_crossentropy")
    constrained = compile(conv_model(kernel_initializer={"name": "RandomNormal", "stddev": 1.0},
                                     kernel_constraint={"name": "max_norm", "max_value": 0.5, "axis": [0, 1, 2]}),
                          optax.sgd(0.05), "sparse_categorical_crossentropy")
    state = free.init(0)
    unconstrained, _ = free.train_step(state, (x, y))
    stepped, _ = constrained.train_step(free.init(0), (x, y))
    w = np.asarray(unconstrained.params["conv2d"]["kernel"], np.float64)
    norms = np.sqrt((w ** 2).sum(axis=(0, 1, 2), keepdims=True))  # one per filter, each above 0.5
    assert norms.min() > 0.5
    expected = w * (np.minimum(norms, 0.5) / (1e-7 + norms))
    got = np.asarray(stepped.params["conv2d"]["kernel"])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(np.sqrt((got ** 2).sum(axis=(0, 1, 2))), 0.5, rtol=1e-5)
    np.testing.assert_array_equal(stepped.params["dense"]["kernel"], unconstrained.params["dense"]["kernel"])


def test_non_neg_bias_after_a_step():
    x = np.random.default_rng(2).normal(size=(4, 6, 6, 2)).astype(np.float32)
    y = np.array([0, 1, 1, 0], np.int32)
    compiled = compile(conv_model(bias_initializer={"name": "Constant", "value": -1.0}, bias_constraint="non_neg"),
                       optax.sgd(0.01), "sparse_categorical_crossentropy")
    state, _ = compiled.train_step(compiled.init(0), (x, y))
    np.testing.assert_array_equal(state.params["conv2d"]["bias"], np.zeros(3))  # -1 + a small step, clipped


# ---- frozen layers --------------------------------------------------------------------------------


def frozen_model():
    return jaxcnn.Sequential([
        jaxcnn.layers.Input((8, 8, 1)), Conv2D(4, 3, trainable=False, kernel_regularizer="l2"),
        BatchNormalization(trainable=False), Flatten(), Dense(10)])


def test_frozen_layers_counted_non_trainable_as_keras():
    model = frozen_model()
    # Conv2D 4*3*3*1 + 4 = 40 and BatchNormalization 4*4 = 16: all non-trainable; Dense 6*6*4*10 + 10 = 1,450
    assert model.count_params() == 40 + 16 + 1450
    assert (model.trainable_params(), model.non_trainable_params()) == (1450, 56)
    text = model.summary(print_fn=None)
    assert "Trainable params: 1,450" in text and "Non-trainable params: 56" in text


def test_frozen_layers_not_updated_and_their_regularizers_not_added():
    model = frozen_model()
    compiled = compile(model, optax.adamw(0.01, weight_decay=0.1), "sparse_categorical_crossentropy")
    unfrozen = compile(jaxcnn.Sequential([jaxcnn.layers.Input((8, 8, 1)), Conv2D(4, 3), BatchNormalization(),
                                          Flatten(), Dense(10)]), "adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 8).astype(np.int32)
    start = compiled.init(0)
    # a frozen BatchNormalization runs in inference mode (Keras 3): the loss is that of inference
    assert compiled.evaluate(start, [(x, y)])["loss"] == pytest.approx(
        unfrozen.evaluate(start, [(x, y)])["loss"], rel=1e-6)  # no l2 term for the frozen kernel
    before = jax.tree.map(np.array, (start.params, start.batch_stats))  # the steps donate the state
    state = start
    for _ in range(3):
        state, _ = compiled.train_step(state, (x, y))
    for name in ("conv2d", "batch_normalization"):
        for key, value in before[0][name].items():
            np.testing.assert_array_equal(state.params[name][key], value)
    for key, value in before[1]["batch_normalization"].items():
        np.testing.assert_array_equal(state.batch_stats["batch_normalization"][key], value)
    assert not np.allclose(state.params["dense"]["kernel"], before[0]["dense"]["kernel"])
    # the training-mode forward equals the inference one: moving statistics, not the batch's
    logits_train, _ = compiled._logits(state.params, state.batch_stats, jnp.asarray(x), train=True,
                                       rng=jax.random.PRNGKey(0))
    logits_eval, _ = compiled._logits(state.params, state.batch_stats, jnp.asarray(x), train=False)
    np.testing.assert_allclose(logits_train, logits_eval, rtol=1e-6)


def test_separable_regularizers_by_weight():
    layer = SeparableConv2D(2, 3, depthwise_regularizer="l1", pointwise_regularizer="l2", bias_regularizer=None)
    assert {k: r.params() for k, r in layer.regularizers().items()} == {
        "depthwise_kernel": {"l1": 0.01, "l2": 0.0}, "pointwise_kernel": {"l1": 0.0, "l2": 0.01}}
    assert DepthwiseConv2D(3, depthwise_constraint="non_neg").constraints() == {"kernel": Constraint("non_neg")}


def test_keras_json_frozen_model_freezes_every_layer():
    text = keras_json("Conv2D", {"filters": 2, "kernel_size": [3, 3]}, (5, 5, 1))
    doc = json.loads(text)
    doc["config"]["trainable"] = False  # was refused: "jaxcnn has no frozen layers"
    model = config.from_keras_dict(doc)
    assert model.layers[0].trainable is False
    assert (model.trainable_params(), model.non_trainable_params()) == (0, 2 * 3 * 3 * 1 + 2)
