"""The proof: jax.eval_shape of the Flax code against the formulas, layer by layer, allocating nothing."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import jax
import pytest

import jaxcnn
from jaxcnn.check import check
from jaxcnn.errors import ImpossibleShapeError, ShapeMismatchError
from jaxcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D

from conftest import CONFIGS, ROOT


def test_vgg16_is_proved_for_a_symbolic_batch():
    result = jaxcnn.load(CONFIGS / "vgg16.toml").check()
    assert result.total_params == 138_357_544
    assert len(result.layers) == 22
    last = result.layers[-1].output
    assert str(last.shape[0]) == "batch" and last.shape[1:] == (1000,)
    kernel = result.variables["params"]["dense"]["kernel"]
    assert isinstance(kernel, jax.ShapeDtypeStruct) and kernel.shape == (25088, 4096)


def test_a_concrete_batch_size_can_be_traced_too():
    result = check(jaxcnn.load(CONFIGS / "mixed.toml"), batch_size=3)
    assert result.layers[0].output.shape == (3, 19, 29, 8)
    assert set(result.layers[1].variables) == {"params", "batch_stats"}
    assert result.non_trainable_params == 16


@dataclasses.dataclass(frozen=True)
class _TallConv(Conv2D):
    """A Conv2D whose formula is wrong by one row: the proof must catch it."""

    def output_shape(self, input_shape):
        h, w, c = super().output_shape(input_shape)
        return (h + 1, w, c)


@dataclasses.dataclass(frozen=True)
class _NoBiasFormula(Dense):
    """A Dense whose parameter formula forgets the bias."""

    def param_shapes(self, input_shape):
        return {"params": {"kernel": (input_shape[-1], self.units)}}


def test_a_wrong_output_formula_is_caught_naming_layer_formula_and_both_values():
    model = jaxcnn.Sequential([MaxPooling2D(input_shape=(8, 8, 1)), _TallConv(4, 3, name="tall")])
    with pytest.raises(ShapeMismatchError) as info:
        model.check()
    assert str(info.value) == (
        "layer 1 'tall' (_TallConv): output shape (inference): jax.eval_shape gives (None, 2, 2, 4) "
        "float32, the formula gives (None, 3, 2, 4) float32; formula: height = ceil((4 - 3 + 1) / 1) = 2; "
        "width = ceil((4 - 3 + 1) / 1) = 2; channels = filters = 4")
    assert (info.value.index, info.value.layer_name) == (1, "tall")


def test_a_wrong_parameter_formula_is_caught():
    model = jaxcnn.Sequential([Flatten(input_shape=(2, 3)), _NoBiasFormula(4, name="no_bias_formula")])
    with pytest.raises(ShapeMismatchError, match=(
            r"layer 1 'no_bias_formula' \(_NoBiasFormula\): variables in `params`: jax.eval_shape gives "
            r"\{'bias': \(\(4,\), 'float32'\), 'kernel': \(\(6, 4\), 'float32'\)\}, the formula gives "
            r"\{'kernel': \(\(6, 4\), 'float32'\)\}; formula: 6\*4 \+ 4 = 28")):
        model.check()


@dataclasses.dataclass(frozen=True)
class _Squares(Dense):
    """A Dense whose Flax code assumes a square kernel: it cannot trace where units != input features."""

    def forward(self, module, x, *, train):
        kernel = module.param("kernel", jax.nn.initializers.zeros, (x.shape[-1], self.units))
        return x @ kernel @ kernel


def test_a_tracing_failure_is_a_shape_mismatch_in_check_only():
    model = jaxcnn.Sequential([Flatten(input_shape=(2, 3)), _Squares(4, use_bias=False, name="squares")])
    with pytest.raises(ShapeMismatchError) as info:
        model.check()
    assert str(info.value).startswith(
        "layer 1 'squares' (_Squares): tracing the layer's Flax code on input (None, 6) failed: TypeError: "
        "dot_general requires contracting dimensions to have the same shape, got (4,) and (6,).")
    assert "\n" not in str(info.value)
    # Outside check() (init, a training step) the error is JAX's own, with a note naming the layer.
    module = model.module()
    with pytest.raises(TypeError, match="dot_general requires contracting dimensions") as raw:
        module.init(jax.random.key(0), jax.numpy.zeros((2, 2, 3)))
    assert raw.value.__notes__[0] == "jaxcnn: raised while tracing layer 1 'squares' (_Squares) on input (2, 6)"
    with pytest.raises(TypeError, match="dot_general requires contracting dimensions"):
        module.init(jax.random.key(0), jax.numpy.zeros((2, 2, 3)), train=True)  # the training path too


def test_impossible_layers_are_refused_before_tracing(monkeypatch):
    import jaxcnn.check as check_module

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced")

    monkeypatch.setattr(check_module, "abstract_variables", no_tracing)
    model = jaxcnn.Sequential([Conv2D(2, 3, input_shape=(2, 2, 1))])
    with pytest.raises(ImpossibleShapeError, match=r"layer 0 'conv2d' \(Conv2D\): the kernel window's height 3"):
        model.check()


@pytest.mark.slow
def test_checking_vgg16_allocates_nothing():
    """Peak RSS grows by less than 50 MB (the parameters alone would be 553 MB)."""
    script = textwrap.dedent("""
        import json, resource
        import jaxcnn
        from jaxcnn.layers import Conv2D, Dense, Flatten
        # Warm up JAX and Flax on a tiny model first: their start-up is not the check's cost.
        jaxcnn.Sequential([Conv2D(2, 3, input_shape=(8, 8, 1)), Flatten(), Dense(2)]).check()
        model = jaxcnn.load("configs/vgg16.toml")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = model.check()
        text = model.summary(print_fn=None)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"growth_kb": after - before, "params": result.total_params}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["params"] == 138_357_544
    assert figures["growth_kb"] < 50 * 1024, figures


def test_a_proof_is_memoized_on_the_model_value(monkeypatch):
    import jaxcnn.check as check_module

    calls = []
    real = check_module.abstract_variables
    monkeypatch.setattr(check_module, "abstract_variables", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(check_module, "_MEMO", {})
    layers = [Conv2D(3, 2, input_shape=(6, 6, 1)), Flatten(), Dense(2)]
    jaxcnn.Sequential(layers).check()
    jaxcnn.Sequential(layers).summary(print_fn=None)  # an equal model: the same proof
    assert len(calls) == 1
    jaxcnn.Sequential(layers, name="other").check()
    assert len(calls) == 2
