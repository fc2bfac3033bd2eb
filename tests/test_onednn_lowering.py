"""The ``onednn`` lowering wired into jaxcnn: where the context allows it, the choice rule, the
layers' call sites (bias and ReLU fused, the activation applied once), refusals, exports and meshes.

Most tests stand :mod:`jaxcnn.onednn`'s functions in with ``lax`` fakes that record their calls
(:func:`fake_onednn`), so they test jaxcnn's side whether or not the extension is built here; the
values of the real kernels are tested where it is (``needs_onednn``, and tests/test_lowerings.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxcnn
import jaxcnn.onednn
from jaxcnn import lowerings
from jaxcnn.errors import LayerArgumentError
from jaxcnn.flax_module import build_module
from jaxcnn.layers import (
    AveragePooling2D,
    Conv2D,
    Conv2DTranspose,
    Dense,
    DepthwiseConv2D,
    Flatten,
    MaxPooling2D,
    SeparableConv2D,
)
from jaxcnn.layers import base as layers_base
from jaxcnn.lowerings import LoweringContext

CPU, GPU = LoweringContext("cpu"), LoweringContext("gpu")
ONEDNN = LoweringContext("cpu", onednn=True)
DIMS = ("NHWC", "HWIO", "NHWC")
needs_onednn = pytest.mark.skipif(not jaxcnn.onednn.available(),
                                  reason=f"oneDNN: {jaxcnn.onednn.unavailable_reason()}")


class FakeOneDNN:
    """``lax`` versions of :mod:`jaxcnn.onednn`'s functions (its contract), recording each call's
    function name and keyword arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def conv(self, x, kernel, bias=None, *, strides, padding, dilation=(1, 1), groups=1, activation=None,
             compute_dtype=None):
        self.calls.append(("conv", {"bias": bias is not None, "strides": strides, "padding": padding,
                                    "groups": groups, "activation": activation, "compute_dtype": compute_dtype}))
        y = lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=DIMS,
                                     feature_group_count=groups)
        y = y if bias is None else y + bias
        return jnp.maximum(y, 0.0) if activation == "relu" else y

    def conv_transpose(self, x, kernel, *, strides, padding, dilation=(1, 1), compute_dtype=None):
        self.calls.append(("conv_transpose", {"strides": strides, "padding": padding}))
        return lax.conv_transpose(x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=DIMS,
                                  transpose_kernel=True)

    def max_pool(self, x, *, pool, strides, padding):
        self.calls.append(("max_pool", {"pool": pool, "strides": strides, "padding": padding}))
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, *pool, 1), (1, *strides, 1), ((0, 0), *padding, (0, 0)))

    def avg_pool(self, x, *, pool, strides, padding):
        self.calls.append(("avg_pool", {"pool": pool, "strides": strides, "padding": padding}))
        pads = ((0, 0), *padding, (0, 0))
        window = ((1, *pool, 1), (1, *strides, 1), pads)
        ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
        return lax.reduce_window(x, 0.0, lax.add, *window) / lax.reduce_window(ones, 0.0, lax.add, *window)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def fake_onednn(monkeypatch) -> FakeOneDNN:
    """This process as one with the oneDNN extension, its functions the recording fakes."""
    fake = FakeOneDNN()
    monkeypatch.setattr(jaxcnn.onednn, "available", lambda: True)
    monkeypatch.setattr(jaxcnn.onednn, "unavailable_reason", lambda: None)
    for name in ("conv", "conv_transpose", "max_pool", "avg_pool"):
        monkeypatch.setattr(jaxcnn.onednn, name, getattr(fake, name))
    return fake


@pytest.fixture
def missing_onednn(monkeypatch) -> str:
    """This process as one whose oneDNN extension failed to build."""
    reason = "the extension was not built: no C++ compiler was found"
    monkeypatch.setattr(jaxcnn.onednn, "available", lambda: False)
    monkeypatch.setattr(jaxcnn.onednn, "unavailable_reason", lambda: reason)
    return reason


def test_the_context_allows_onednn_only_on_one_cpu_device():
    assert ONEDNN.onednn and not CPU.onednn
    assert not LoweringContext("gpu", onednn=True).onednn  # never on GPU or TPU
    assert not LoweringContext("tpu", onednn=True).onednn
    assert not LoweringContext("cpu", partitioned=True, onednn=True).onednn  # never on a mesh
    assert not dataclasses.replace(ONEDNN, partitioned=True).onednn  # as jaxcnn.train marks a mesh's module


def test_this_process_context_says_whether_the_extension_is_available(monkeypatch, fake_onednn):
    if jax.default_backend() != "cpu":
        pytest.skip("oneDNN is a CPU lowering")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert LoweringContext.of_process() == LoweringContext("cpu", onednn=True)
    assert not LoweringContext.of_process(partitioned=True).onednn
    monkeypatch.setattr(jaxcnn.onednn, "available", lambda: False)
    monkeypatch.setattr(jaxcnn.onednn, "unavailable_reason", lambda: "no compiler")
    assert LoweringContext.of_process() == LoweringContext("cpu", onednn_missing="no compiler")


def test_the_measured_rule_with_onednn():
    """experiments/calibrate_onednn.py (jaxcnn.lowerings's docstring): oneDNN for 3x3 convolutions
    on output maps of 64 positions or more, whatever the batch, in training too; for 1x1 kernels
    outside training (patches in training); patches on maps of 4 positions or fewer; XLA's rule in
    between (4x4 maps, where oneDNN measured slower)."""
    for batch in (1, 8, 64, None):
        for train in (False, True):
            assert lowerings.choose_conv((32, 32), ONEDNN, batch, train=train, in_channels=3) == "onednn"
            assert lowerings.choose_conv((8, 8), ONEDNN, batch, train=train, in_channels=256) == "onednn"
            assert lowerings.choose_conv((16, 4), ONEDNN, batch, train=train, in_channels=256) == "onednn"
            assert lowerings.choose_conv((2, 2), ONEDNN, batch, train=train, in_channels=512) == "patches"
            assert lowerings.choose_conv((2, 2), ONEDNN, batch, train=train, in_channels=512, taps=1) == "patches"
            assert lowerings.choose_conv((16, 16), ONEDNN, batch, train=train, in_channels=128, taps=1) == (
                "patches" if train else "onednn")
            for shape in ((4, 4), (7, 9)):  # fewer than 64 positions: XLA's own rule, as without oneDNN
                args = {"train": train, "in_channels": 512}
                assert lowerings.choose_conv(shape, ONEDNN, batch, **args) == lowerings.choose_conv(
                    shape, CPU, batch, **args)
    assert lowerings.choose_conv((4, 4), ONEDNN, 64, in_channels=512) == "conv"
    assert lowerings.choose_conv((4, 4), ONEDNN, 64, train=True, in_channels=512) == "patches"
    assert lowerings.choose_conv((2, 2), ONEDNN, groups=2) == "onednn"  # grouped: no patches program
    assert lowerings.choose_conv((2, 2), CPU, groups=2) == "conv"
    assert lowerings.choose_conv((32, 32), LoweringContext("cpu", partitioned=True, onednn=True)) == "conv"
    assert lowerings.choose_pool((8, 8), (2, 2), (2, 2), "valid", ONEDNN) == "onednn"
    assert lowerings.choose_pool((9, 9), (3, 3), (2, 2), "same", ONEDNN) == "onednn"
    assert lowerings.choose_unpatched(ONEDNN) == "onednn" and lowerings.choose_unpatched(GPU) == "conv"


def test_the_summary_names_onednn_where_the_extension_is_available(fake_onednn):
    model = jaxcnn.load("configs/vgg11_32.toml")
    rows = model.summarize().rows
    onednn, patches = "lax.conv; onednn on CPU", "lax.conv; patches on CPU"
    xla = "lax.conv; patches on CPU if batch<=8 or training"  # 4x4 maps: oneDNN measured slower
    assert [r.lowering for r in rows if r.type == "Conv2D"] == [onednn] * 4 + [xla] * 2 + [patches] * 2
    assert {r.lowering for r in rows if r.type == "MaxPooling2D"} == {"reduce_window; onednn on CPU"}
    assert lowerings.describe_conv((32, 32), ONEDNN, in_channels=3) == "onednn"
    assert lowerings.describe_conv((2, 2), ONEDNN, in_channels=3) == "patches"
    assert lowerings.describe_conv((4, 4), ONEDNN, in_channels=256) == "lax.conv; patches if batch<=8 or training"
    assert lowerings.describe_conv((8, 8), ONEDNN, in_channels=256, taps=1) == "onednn; patches if training"
    assert lowerings.describe_conv((8, 8), in_channels=256, taps=1) == "lax.conv; on CPU onednn, patches if training"
    assert lowerings.describe_pool((8, 8), (2, 2), (2, 2), "valid", ONEDNN) == "onednn"
    shape = (8, 8, 4)
    assert DepthwiseConv2D(3).describe_lowering(shape) == onednn
    assert DepthwiseConv2D(3).describe_lowering(shape, GPU) == "lax.conv"
    assert Conv2D(4, 3, groups=2).describe_lowering(shape, ONEDNN) == "onednn"
    assert SeparableConv2D(4, 3, lowering="conv").describe_lowering(shape) == "lax.conv"
    assert Conv2DTranspose(4, 3, lowering="onednn").describe_lowering(shape, CPU) == "onednn"


def test_without_the_extension_the_summary_keeps_xla_lowerings(missing_onednn):
    shape = (8, 8, 4)
    assert Conv2D(4, 3).describe_lowering(shape) == "lax.conv; patches on CPU if batch<=8 or training"
    assert DepthwiseConv2D(3).describe_lowering(shape) == "lax.conv; shifted on CPU"
    assert Conv2DTranspose(2, 3).describe_lowering(shape) == "lax.conv"
    assert MaxPooling2D().describe_lowering(shape) == "reduce_window; reshape on CPU"


def test_every_convolution_layer_and_pooling_can_be_forced_and_saved(tmp_path):
    layers = [Conv2D(4, 3, lowering="onednn", input_shape=(8, 8, 2)), DepthwiseConv2D(3, lowering="onednn"),
              SeparableConv2D(4, 1, lowering="conv"), Conv2DTranspose(2, 3, lowering="onednn"),
              MaxPooling2D(lowering="onednn"), AveragePooling2D(lowering="onednn")]
    model = jaxcnn.Sequential(layers)
    path = tmp_path / "m.toml"
    model.save(path)
    assert path.read_text().count('lowering = "onednn"') == 5 and jaxcnn.load(path) == model
    with pytest.raises(LayerArgumentError, match=r"DepthwiseConv2D: `lowering` \(='patches'\) must be one of "
                                                 r"'auto', 'conv', 'shifted', 'onednn'"):
        DepthwiseConv2D(3, lowering="patches")


def test_a_layer_forced_to_onednn_without_the_extension_is_refused_when_its_module_is_built(missing_onednn):
    if jax.default_backend() != "cpu":
        pytest.skip("off CPU a forced onednn takes the automatic choice")
    inner = jaxcnn.Sequential([MaxPooling2D(lowering="onednn")], input_shape=(8, 8, 4), name="inner")
    model = jaxcnn.Sequential([Conv2D(4, 3, padding="same", input_shape=(8, 8, 2)),
                               Conv2D(4, 3, padding="same", lowering="onednn", name="fast"), inner])
    message = (r"layer 1 'fast' \(Conv2D\): `lowering` \(='onednn'\) cannot be used: the extension was not built: "
               r"no C\+\+ compiler was found \(`jaxcnn info` says which lowerings this machine has\)$")
    with pytest.raises(LayerArgumentError, match=message):
        jaxcnn.compile(model)
    with pytest.raises(LayerArgumentError, match=r"layer 0 'max_pooling2d' \(MaxPooling2D\): `lowering` "
                                                 r"\(='onednn'\) cannot be used"):
        jaxcnn.compile(jaxcnn.Sequential([Conv2D(4, 3, input_shape=(8, 8, 2)), inner]))
    # The shape queries and the proof know nothing of the machine: they accept it.
    assert model.count_params() == (3 * 3 * 2 * 4 + 4) + (3 * 3 * 4 * 4 + 4)
    model.check()


def test_where_the_context_rules_onednn_out_a_forced_layer_takes_the_automatic_choice(missing_onednn):
    layer = Conv2D(4, 3, lowering="onednn")
    for context, batch, expected in [(GPU, 64, "conv"), (LoweringContext("cpu", partitioned=True), 64, "conv"),
                                     (CPU, 1, "patches"), (CPU, 64, "conv")]:
        assert layer.lowering_for((8, 8, 2), context, batch=batch) == expected
        build_module(jaxcnn.Sequential([layer], input_shape=(8, 8, 2)), context)  # not refused
    assert MaxPooling2D(lowering="onednn").lowering_for((8, 8, 2), CPU) == "reshape"
    assert DepthwiseConv2D(3, lowering="onednn").lowering_for((8, 8, 2), GPU) == "conv"


def test_a_model_compiled_for_a_mesh_never_uses_onednn(fake_onednn):
    from jaxcnn.parallel import Layout

    if jax.default_backend() != "cpu":
        pytest.skip("oneDNN is a CPU lowering")
    model = jaxcnn.Sequential([Conv2D(2, 3, input_shape=(8, 8, 1)), Flatten(), Dense(2)])
    assert not jaxcnn.compile(model, layout=Layout.abstract(2)).module.lowering.onednn
    assert jaxcnn.compile(model, layout=Layout.abstract(1)).module.lowering.onednn
    assert jaxcnn.compile(model).module.lowering.onednn


def _apply(model, context, x, fake=None):
    """``model``'s output in ``context``, the gradients of ``sum(sin(output))`` in its parameters and
    its input, and the calls ``fake`` (if any) recorded while the output was computed."""
    fake = fake or FakeOneDNN()
    module = build_module(model, context)
    variables = module.init(jax.random.key(0), x)

    def loss(params, x):
        return jnp.sum(jnp.sin(module.apply({**variables, "params": params}, x)))

    fake.calls.clear()
    y = module.apply(variables, x)
    calls = list(fake.calls)
    return y, jax.grad(loss, argnums=(0, 1))(variables.get("params", {}), x), calls


LAYERS = [  # (layer, input shape, the oneDNN calls it makes)
    (Conv2D(6, 3, padding="same", activation="relu"), (7, 6, 4), [("conv", "relu", True, 1)]),
    (Conv2D(6, (2, 3), strides=(2, 1), activation="tanh", use_bias=False), (7, 6, 4), [("conv", None, False, 1)]),
    (Conv2D(6, 3, padding="same", groups=2, dilation_rate=2), (7, 6, 4), [("conv", None, True, 2)]),
    (DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu"), (7, 6, 4),
     [("conv", "relu", True, 4)]),
    (SeparableConv2D(5, 3, strides=2, padding="same", activation="relu"), (7, 6, 4),
     [("conv", None, False, 4), ("conv", "relu", True, 1)]),
    (Conv2DTranspose(3, 3, strides=2, padding="same", activation="relu"), (4, 5, 4), [("conv_transpose",)]),
    (MaxPooling2D(3, strides=2, padding="same"), (7, 6, 4), [("max_pool",)]),
    (AveragePooling2D(2, padding="same"), (7, 5, 4), [("avg_pool",)]),
]


@pytest.mark.parametrize("layer, shape, calls", LAYERS, ids=[f"{i}-{layer.type}" for i, (layer, *_) in enumerate(LAYERS)])
def test_each_layer_calls_onednn_once_with_its_bias_and_relu_fused_and_computes_the_same(fake_onednn, layer, shape,
                                                                                           calls):
    """Each layer's oneDNN call site, through the contract: its calls (bias and ReLU fused where it
    has them, ``groups`` for grouped and depthwise convolutions, explicit pads), and values and
    gradients equal to its XLA lowering's."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *shape)), jnp.float32)
    model = jaxcnn.Sequential([dataclasses.replace(layer, name="layer", lowering="onednn")], input_shape=shape)
    y, grads, made = _apply(model, ONEDNN, x, fake_onednn)
    assert [(name, kw["activation"], kw["bias"], kw["groups"]) if name == "conv" else (name,)
            for name, kw in made] == calls
    xla = jaxcnn.Sequential([dataclasses.replace(layer, name="layer", lowering="auto")], input_shape=shape)
    y_ref, grads_ref, made = _apply(xla, CPU, x, fake_onednn)
    assert made == []
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)


def test_keras_padding_reaches_onednn_as_explicit_pads(fake_onednn):
    """Keras's SAME pads ``max((out - 1)*stride + window - size, 0)`` in all, the odd one after
    (TensorFlow's rule). The convolution: 7 rows, 3-row kernel, stride 2: 4 rows out, (3*2 + 3 - 7) = 2
    pads, (1, 1); 6 columns, 2-column kernel, stride 1: 6 out, (5 + 2 - 6) = 1 pad, (0, 1). The
    pooling of its 4x6 output, 3x3 windows at stride 2: 2 rows out, (2 + 3 - 4) = 1, (0, 1); 3
    columns out, (4 + 3 - 6) = 1, (0, 1)."""
    model = jaxcnn.Sequential([Conv2D(2, (3, 2), strides=(2, 1), padding="same", lowering="onednn"),
                               MaxPooling2D((3, 3), strides=(2, 2), padding="same")], input_shape=(7, 6, 1))
    build_module(model, ONEDNN).init(jax.random.key(0), jnp.zeros((1, 7, 6, 1)))
    (_, conv), (_, pool) = fake_onednn.calls
    assert conv["padding"] == ((1, 1), (0, 1)) and conv["strides"] == (2, 1)
    assert pool["padding"] == ((0, 1), (0, 1)) and pool["pool"] == (3, 3)


def test_a_fused_relu_is_not_applied_again(fake_onednn, monkeypatch):
    """The ReLU runs inside oneDNN's convolution; the layer's activation function is not called after
    it (it is called where oneDNN is not used, and for another activation)."""
    applied = []
    relu = layers_base.ACTIVATIONS["relu"]
    monkeypatch.setitem(layers_base.ACTIVATIONS, "relu", lambda y: applied.append(y.shape) or relu(y))
    model = jaxcnn.Sequential([Conv2D(3, 3, activation="relu", lowering="onednn", input_shape=(6, 6, 2)),
                               SeparableConv2D(3, 3, activation="relu")])
    x = jnp.ones((1, 6, 6, 2))
    build_module(model, ONEDNN).init(jax.random.key(0), x)
    assert applied == [] and [kw["activation"] for _, kw in fake_onednn.calls] == ["relu", None, "relu"]
    build_module(model, CPU).init(jax.random.key(0), x)
    assert applied == [(1, 4, 4, 3), (1, 2, 2, 3)]


def test_a_bfloat16_step_computes_in_onednn_bfloat16_kernels_from_float32_arrays(fake_onednn):
    model = jaxcnn.Sequential([Conv2D(2, 3, lowering="onednn", input_shape=(6, 6, 2))])
    module = build_module(model, ONEDNN)
    variables = module.init(jax.random.key(0), jnp.ones((1, 6, 6, 2)))
    fake_onednn.calls.clear()
    y = module.apply(variables, jnp.ones((1, 6, 6, 2), jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and fake_onednn.calls[0][1]["compute_dtype"] == jnp.bfloat16


def test_bfloat16_convolutions_run_the_ungrouped_ones_in_bfloat16_kernels_on_float32_activations(fake_onednn):
    """The CPU form of precision="bfloat16" (LoweringContext.bfloat16_convolutions): every convolution
    is oneDNN's whatever its shape, the ungrouped ones (and a separable's pointwise half) in its
    bfloat16 kernels, the grouped ones (a depthwise, a separable's depthwise half) in float32, and the
    activations between layers stay float32; a batch of at most SMALL_BATCH images stays float32."""
    model = jaxcnn.Sequential([Conv2D(4, 3, padding="same", input_shape=(2, 2, 2)), DepthwiseConv2D(3, padding="same"),
                               SeparableConv2D(3, 1), Flatten(), Dense(2)])
    context = dataclasses.replace(ONEDNN, bfloat16_convolutions=True)
    assert lowerings.choose_conv((2, 2), context, 64, train=True) == "onednn"  # patches otherwise
    assert lowerings.choose_conv((2, 2), ONEDNN, 64, train=True) == "patches"
    module = build_module(model, context)
    variables = module.init(jax.random.key(0), jnp.ones((1, 2, 2, 2)))
    fake_onednn.calls.clear()
    outputs = module.apply(variables, jnp.ones((16, 2, 2, 2)), capture=True)
    assert [(kw["groups"], kw["compute_dtype"]) for _, kw in fake_onednn.calls] == [
        (1, jnp.bfloat16), (4, None), (4, None), (1, jnp.bfloat16)]
    assert {y.dtype for y in outputs} == {jnp.dtype(jnp.float32)}
    # a small batch (lowerings.SMALL_BATCH) computes in float32: the weights' conversion would dominate
    fake_onednn.calls.clear()
    module.apply(variables, jnp.ones((lowerings.SMALL_BATCH, 2, 2, 2)))
    assert [kw["compute_dtype"] for _, kw in fake_onednn.calls] == [None] * 4
    assert not dataclasses.replace(context, onednn=False).bfloat16_convolutions  # nothing without oneDNN
    assert not dataclasses.replace(context, partitioned=True).bfloat16_convolutions


@needs_onednn
@pytest.mark.parametrize("layer, shape", [(layer, shape) for layer, shape, _ in LAYERS],
                         ids=[f"{i}-{layer.type}" for i, (layer, *_) in enumerate(LAYERS)])
def test_each_layer_in_the_real_onednn_computes_what_xla_does(layer, shape):
    """The same layers through the extension's kernels: values and gradients as XLA's lowering."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *shape)), jnp.float32)
    model = jaxcnn.Sequential([dataclasses.replace(layer, name="layer", lowering="onednn")], input_shape=shape)
    y, grads, _ = _apply(model, ONEDNN, x)
    y_ref, grads_ref, _ = _apply(jaxcnn.Sequential([dataclasses.replace(layer, name="layer")], input_shape=shape),
                                 CPU, x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


@needs_onednn
def test_a_whole_model_trains_the_same_with_onednn():
    """A training step with every convolution and pooling forced to oneDNN (bias and ReLU fused)
    equals one with lax.conv and reduce_window, to float32 rounding."""
    base = jaxcnn.load("configs/vgg11_32.toml").with_input_shape((16, 16, 3))

    def model(conv, pool):
        layers = [dataclasses.replace(layer, lowering=conv if layer.type == "Conv2D" else pool)
                  for layer in base.layers[:6]]
        return jaxcnn.Sequential([*layers, AveragePooling2D(3, strides=1, padding="same", lowering=pool), Flatten(),
                                  Dense(10, activation="softmax")], input_shape=(16, 16, 3))

    x = np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype(np.float32)
    y = np.arange(4, dtype=np.int32)
    results = {}
    for conv, pool in (("conv", "reduce_window"), ("onednn", "onednn")):
        compiled = jaxcnn.compile(model(conv, pool), {"name": "sgd", "learning_rate": 0.01})
        state, metrics = compiled.train_step(compiled.init(0), (x, y))
        results[conv] = (float(metrics.loss), jax.tree.leaves(state.params))
    assert results["onednn"][0] == pytest.approx(results["conv"][0], rel=1e-5)
    for a, b in zip(results["onednn"][1], results["conv"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_an_export_traces_no_onednn_call(fake_onednn, tmp_path):
    """jax.export refuses oneDNN's custom calls: a model trained with them exports with XLA's."""
    from test_fit import write_config

    from jaxcnn.export import export_model
    from jaxcnn.fit import train_and_evaluate

    if jax.default_backend() != "cpu":
        pytest.skip("oneDNN is a CPU lowering")
    config = write_config(tmp_path, epochs=1, limit=64)
    train_and_evaluate(config, tmp_path / "work", progress=False)
    assert "conv" in fake_onednn.names()  # the training used it
    fake_onednn.calls.clear()
    manifest = export_model(config, tmp_path / "work", tmp_path / "model.jaxcnn", platforms=("cpu",))
    assert fake_onednn.calls == [] and manifest["platforms"] == ["cpu"]
