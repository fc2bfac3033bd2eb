"""Property tests over random layer lists: the formulas equal eval_shape for every valid list, and
every invalid list is refused by an error from jaxcnn.errors naming a layer, never another exception."""

from __future__ import annotations

import dataclasses
import math


import jax
import jax.numpy as jnp
from hypothesis import given
from hypothesis import strategies as st

import jaxcnn
from jaxcnn.errors import JaxcnnError
from jaxcnn.layers import (
    Activation, AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Flatten,
    GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D,
)

pairs = st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
paddings = st.sampled_from(["valid", "same", "SAME", "Valid"])
activations = st.sampled_from([None, "relu", "tanh", "softmax", "gelu", "swish", "leaky_relu", "linear"])



@st.composite
def convolutions(draw):
    """A Conv2D; strides or dilation_rate above 1, never both (Keras refuses that, and so does Conv2D)."""
    strides, dilation = draw(pairs), draw(st.one_of(st.just(1), pairs))
    if max(_pair(strides)) > 1 and max(_pair(dilation)) > 1:
        strides = 1 if draw(st.booleans()) else strides
        dilation = dilation if strides == 1 else 1
    return Conv2D(draw(st.integers(1, 6)), draw(pairs), strides=strides, padding=draw(paddings),
                  dilation_rate=dilation, activation=draw(activations), use_bias=draw(st.booleans()))


def _pair(value):
    return (value, value) if isinstance(value, int) else value


spatial_layers = st.one_of(
    convolutions(),
    st.builds(MaxPooling2D, pool_size=pairs, strides=st.one_of(st.none(), pairs), padding=paddings),
    st.builds(AveragePooling2D, pool_size=pairs, strides=st.one_of(st.none(), pairs), padding=paddings),
    st.builds(BatchNormalization, momentum=st.floats(0.0, 1.0), center=st.booleans(), scale=st.booleans()),
    st.builds(Dropout, st.floats(0.0, 0.9)),
    st.builds(Activation, activations),
)
to_vector = st.one_of(st.builds(Flatten), st.builds(GlobalAveragePooling2D), st.builds(GlobalMaxPooling2D))
vector_layers = st.one_of(
    st.builds(Dense, st.integers(1, 8), activation=activations, use_bias=st.booleans()),
    st.builds(Dropout, st.floats(0.0, 0.9)),
    st.builds(BatchNormalization),
    st.builds(Activation, activations),
)
input_shapes = st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 4))


@st.composite
def layer_lists(draw):
    """A random layer list: spatial layers, then optionally a vector head."""
    layers = draw(st.lists(spatial_layers, min_size=1, max_size=5))
    if draw(st.booleans()):
        layers += [draw(to_vector)] + draw(st.lists(vector_layers, max_size=3))
    return draw(input_shapes), layers


@st.composite
def valid_models(draw):
    """Random layer lists that the formulas accept (an impossible draw is rejected, not kept)."""
    shape, layers = draw(layer_lists())
    model = jaxcnn.Sequential(layers, input_shape=shape)
    try:
        model.plan()
    except JaxcnnError:
        from hypothesis import assume

        assume(False)
    return model


@given(valid_models())
def test_formulas_equal_eval_shape_for_valid_layer_lists(model):
    result = model.check()
    for proof in result.layers:
        assert tuple(proof.output.shape[1:]) == proof.plan.output_shape
        for collection, shapes in proof.plan.param_shapes.items():
            assert {k: v.shape for k, v in proof.variables[collection].items()} == shapes
    trainable, non_trainable = counted_by_init(model)
    assert (trainable, non_trainable) == keras_counts(model, result)
    assert model.count_params() == result.total_params == model.summarize().total_params == trainable + non_trainable
    assert (model.trainable_params(), model.non_trainable_params()) == (trainable, non_trainable)
    assert (result.trainable_params, result.non_trainable_params) == (trainable, non_trainable)
    summary = model.summarize()
    assert (summary.trainable_params, summary.non_trainable_params) == (trainable, non_trainable)


def counted_by_init(model):
    """(trainable, non-trainable) parameters: the leaves of jax.eval_shape of the real Flax init."""
    images = jax.ShapeDtypeStruct((2, *model.input_shape), jnp.float32)
    variables = jax.eval_shape(model.module().init, jax.random.PRNGKey(0), images)
    assert set(variables) <= {"params", "batch_stats"}

    def size(tree):
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))

    return size(variables.get("params", {})), size(variables.get("batch_stats", {}))


def keras_counts(model, result):
    """(trainable, non-trainable) by Keras's per-layer formulas, each layer's input channels taken from
    the eval_shape output of the layer before it (not from jaxcnn's formulas)."""
    trainable = non_trainable = 0
    channels = model.input_shape[-1]
    for layer, proof in zip(model.layers, result.layers):
        if isinstance(layer, Conv2D):  # kernel kh*kw*cin*filters, bias filters
            trainable += math.prod(layer.kernel_size) * channels * layer.filters + layer.filters * layer.use_bias
        elif isinstance(layer, Dense):  # kernel din*units, bias units
            trainable += channels * layer.units + layer.units * layer.use_bias
        elif isinstance(layer, BatchNormalization):  # gamma and beta trained; moving mean and variance not
            trainable += channels * (layer.scale + layer.center)
            non_trainable += 2 * channels
        channels = proof.output.shape[-1]
    return trainable, non_trainable


# Mutations that make one layer impossible, and the index of the layer they make impossible.
@st.composite
def invalid_models(draw):
    shape, layers = draw(layer_lists())
    at = draw(st.integers(0, len(layers)))
    kind = draw(st.sampled_from(["huge_kernel", "huge_pool", "conv_after_flatten", "global_on_vector"]))
    if kind == "huge_kernel":
        bad = Conv2D(2, (13, 1), padding="valid")  # taller than any input (height <= 12)
    elif kind == "huge_pool":
        bad = MaxPooling2D(pool_size=(1, 13))
    elif kind == "conv_after_flatten":
        layers = layers[:at] + [Flatten()]
        bad = Conv2D(2, 1)
        at += 1
    else:
        layers = layers[:at] + [Flatten()]
        bad = GlobalMaxPooling2D()
        at += 1
    layers = layers[:at] + [bad] + layers[at:]
    return jaxcnn.Sequential(layers, input_shape=shape), at


@given(invalid_models())
def test_invalid_layer_lists_are_refused_naming_a_layer(case):
    model, bad_index = case
    try:
        model.check()
    except JaxcnnError as error:
        # An earlier layer may already be impossible (the list before the mutation is random too).
        assert error.index is not None and error.index <= bad_index
        layer = model.layers[error.index]
        assert str(error).startswith(f"layer {error.index} '{layer.name}' ({layer.type}): ")
    else:
        raise AssertionError(f"{model!r} was accepted")


@given(st.dictionaries(
    st.sampled_from(["filters", "kernel_size", "strides", "padding", "dilation_rate", "activation",
                     "use_bias"]),
    st.one_of(st.integers(-2, 3), st.text(max_size=4), st.none(), st.booleans(), st.floats(),
              st.lists(st.integers(-1, 3), max_size=3)),
    min_size=1))
def test_random_arguments_either_build_or_raise_a_jaxcnn_error(kwargs):
    kwargs.setdefault("filters", 2)
    kwargs.setdefault("kernel_size", 1)
    try:
        layer = Conv2D(**kwargs)
    except JaxcnnError as error:
        assert str(error).startswith("Conv2D: `")
    else:
        assert dataclasses.replace(layer) == layer


@given(pairs, pairs)
def test_strides_and_dilation_above_one_together_are_refused_as_keras_does(strides, dilation):
    both = max(_pair(strides)) > 1 and max(_pair(dilation)) > 1
    try:
        Conv2D(2, 3, strides=strides, dilation_rate=dilation)
    except JaxcnnError as error:
        assert both and "cannot both exceed 1" in str(error)
    else:
        assert not both
