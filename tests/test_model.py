"""Sequential: Keras's per-model names, input shapes, the plan and its counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import jaxcnn
from jaxcnn.errors import ImpossibleShapeError, LayerArgumentError
from conftest import CONFIGS, ROOT
from jaxcnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D


def test_names_are_counted_per_model_as_a_fresh_keras_session_gives_them():
    def build():
        return jaxcnn.Sequential([Conv2D(8, 3, input_shape=(16, 16, 3)), MaxPooling2D(), Conv2D(8, 3),
                                  MaxPooling2D(), Flatten(), Dense(4), Dense(2)])
    expected = ["conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1", "flatten", "dense", "dense_1"]
    assert [layer.name for layer in build().layers] == expected
    assert [layer.name for layer in build().layers] == expected  # not a process-wide counter


def test_explicit_names_are_kept_and_auto_names_avoid_them():
    model = jaxcnn.Sequential([Input((8, 8, 1)), Conv2D(2, 3, name="conv2d_1"), Conv2D(2, 3), Conv2D(2, 1)])
    assert [layer.name for layer in model.layers] == ["conv2d_1", "conv2d", "conv2d_2"]
    with pytest.raises(LayerArgumentError, match=r"layer 1 'dense' \(Dense\): `name` \(='dense'\) is already used"):
        jaxcnn.Sequential([Dense(2, name="dense", input_shape=(3,)), Dense(2, name="dense")])


def test_input_shape_from_input_first_layer_or_model():
    a = jaxcnn.Sequential([Input((4, 4, 1)), Flatten()])
    b = jaxcnn.Sequential([Flatten(input_shape=(4, 4, 1))])
    c = jaxcnn.Sequential([Flatten()], input_shape=(4, 4, 1))
    d = jaxcnn.Sequential()
    d.add(Flatten(input_shape=(4, 4, 1)))
    assert a == b == c == d
    assert a.input_shape == (4, 4, 1) and a.output_shape == (16,)
    assert a.layers[0].input_shape is None  # the input shape lives on the model


def test_input_shape_mistakes_are_refused():
    with pytest.raises(LayerArgumentError, match=r"layer 1 'dense' \(Dense\): `input_shape` \(=\(3,\)\) is only accepted on the first layer"):
        jaxcnn.Sequential([Flatten(input_shape=(2, 2)), Dense(2, input_shape=(3,))])
    with pytest.raises(LayerArgumentError, match="the model has no input shape"):
        jaxcnn.Sequential([Dense(2)]).plan()
    with pytest.raises(LayerArgumentError, match=r"layer 1 \(Input\): Input\(shape\) must come first"):
        jaxcnn.Sequential([Dense(2, input_shape=(3,)), Input((3,))])
    with pytest.raises(LayerArgumentError, match="is 'relu' \\(str\\), not a layer from jaxcnn.layers"):
        jaxcnn.Sequential([Dense(2, input_shape=(3,)), "relu"])


def test_plan_locates_impossible_layers_by_index_name_and_type():
    model = jaxcnn.Sequential([Conv2D(8, 3, input_shape=(8, 8, 1)), MaxPooling2D(), MaxPooling2D(),
                               Conv2D(4, 3)])
    with pytest.raises(ImpossibleShapeError, match=r"^layer 3 'conv2d_1' \(Conv2D\): the kernel window's height 3 "
                                                    r"is larger than the input height 1"):
        model.plan()
    with pytest.raises(ImpossibleShapeError, match=r"layer 2 'conv2d' \(Conv2D\): expects an input of rank 3"):
        jaxcnn.Sequential([Flatten(input_shape=(4, 4, 1)), Dense(3), Conv2D(2, 1)]).plan()


def test_counts_include_non_trainable_batch_statistics():
    model = jaxcnn.Sequential([Conv2D(8, 3, input_shape=(8, 8, 2), use_bias=False), BatchNormalization(),
                               Dropout(0.1), Flatten(), Dense(3)])
    assert model.count_params() == 8 * 3 * 3 * 2 + 4 * 8 + 36 * 8 * 3 + 3
    assert model.non_trainable_params() == 16
    assert model.trainable_params() == model.count_params() - 16


def test_with_input_shape_keeps_layers_and_names():
    model = jaxcnn.load(CONFIGS / "vgg16.toml").with_input_shape((64, 64, 3))
    assert model.output_shape == (1000,)
    assert model.plan()[-4].output_shape == (2048,)  # 2*2*512 after five poolings of 64
    assert model.count_params() == 138_357_544 - (25088 - 2048) * 4096


def test_model_is_a_value():
    a = jaxcnn.Sequential([Dense(2, input_shape=(3,))], name="m")
    assert a == jaxcnn.Sequential([Dense(2)], name="m", input_shape=(3,))
    assert a != jaxcnn.Sequential([Dense(2)], name="other", input_shape=(3,))
    assert "Dense(" in repr(a)


SHAPE_QUERIES = textwrap.dedent("""
    import json, sys
    from jax._src import xla_bridge
    import jaxcnn
    from jaxcnn.layers import AveragePooling2D, BatchNormalization, Conv2D, Dense, Flatten, MaxPooling2D
    model = jaxcnn.Sequential([Conv2D(4, 3, input_shape=(8, 8, 1)), BatchNormalization(), MaxPooling2D(),
                               AveragePooling2D(1), Flatten(), Dense(3)])
    started = {}
    for name, query in [("count_params", model.count_params), ("plan", model.plan), ("to_toml", model.to_toml),
                        ("load", lambda: jaxcnn.load(sys.argv[1]).count_params()),
                        ("check", model.check), ("summary", lambda: model.summary(print_fn=None, columns=["lowering"]))]:
        query()
        started[name] = xla_bridge.backends_are_initialized()
    jaxcnn.xla_flags.enable_fast_cpu()  # raises once JAX has started its backends
    print(json.dumps(started))
""")


@pytest.mark.slow
def test_shape_queries_start_no_backend_and_leave_the_fast_cpu_flags_possible():
    """count_params, plan, to_toml, load, check and summary in a fresh process never start JAX's
    backends (on a GPU host that would take its memory), so enable_fast_cpu() still works after them."""
    env = {key: value for key, value in os.environ.items() if key not in ("XLA_FLAGS", "JAXCNN_XLA_FAST_CPU")}
    result = subprocess.run([sys.executable, "-c", SHAPE_QUERIES, str(CONFIGS / "vgg11_32.toml")], cwd=ROOT,
                            env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    started = json.loads(result.stdout.strip().splitlines()[-1])
    assert started == {"count_params": False, "plan": False, "to_toml": False, "load": False, "check": False,
                       "summary": False}
