"""experiments/bench_cpu.py and experiments/peers.py: the forced lowerings reach every conv and pool
layer, the ratios and the table are computed as stated, and the PyTorch peers of the graph models
have jaxcnn's layers (shapes and parameter counts; skipped without PyTorch)."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))
import bench_cpu  # noqa: E402


@pytest.mark.parametrize(("lowering", "conv", "pool"), [("conv", "conv", "auto"), ("patches", "patches", "auto")])
def test_a_forced_lowering_reaches_every_conv_and_pool_layer(lowering, conv, pool):
    model = bench_cpu._load_model("cifar_cnn", lowering)
    assert [(layer.type, layer.lowering) for layer in model.layers if hasattr(layer, "lowering")] == [
        ("Conv2D", conv), ("MaxPooling2D", pool)] * 3
    assert [layer.lowering for layer in bench_cpu._load_model("cifar_cnn").layers if hasattr(layer, "lowering")] \
        == ["auto"] * 6


def test_the_graph_models_load_with_a_forced_lowering():
    resnet = bench_cpu._load_model("resnet20", "conv")
    assert resnet.count_params() == 274_154  # configs/resnet20.toml's header (counted by hand in test_graph)
    assert {layer.lowering for layer in resnet.layers if layer.type == "Conv2D"} == {"conv"}
    assert bench_cpu._load_model("vgg16_64").input_shape == (64, 64, 3)


def test_ratios_are_pytorch_s_time_over_the_arm_s_and_medians_pool_the_rounds():
    raw = {"cifar_cnn": {
        "pytorch": [{"first_step_s": 0.5, "step_ms": [20.0, 22.0], "infer_b1_ms": [1.0], "infer_b256_ms": [128.0]},
                    {"first_step_s": 0.4, "step_ms": [18.0, 19.0], "infer_b1_ms": [1.0], "infer_b256_ms": [128.0]}],
        "jaxcnn": [{"first_step_s": 4.0, "step_ms": [10.0, 11.0], "infer_b1_ms": [0.5], "infer_b256_ms": [64.0]},
                   {"first_step_s": 0.3, "step_ms": [9.0, 30.0], "infer_b1_ms": [0.5], "infer_b256_ms": [64.0]}],
        "jaxcnn onednn": [{"skipped": "onednn unavailable: no compiler"}] * 2}}
    rows = bench_cpu.summarize(raw)["cifar_cnn"]["arms"]
    torch, mine = rows["pytorch"], rows["jaxcnn"]
    assert torch["step_ms"] == 19.5 and mine["step_ms"] == 10.5  # medians of the 4 steps of 2 rounds
    assert mine["step_vs_pytorch"] == 19.5 / 10.5 and mine["infer_b1_vs_pytorch"] == 2.0
    assert (mine["first_step_cold_s"], mine["first_step_warm_s"]) == (4.0, 0.3)
    assert mine["infer_b256_images_per_s"] == 4000.0  # 256 images in 64 ms
    assert rows["jaxcnn onednn"] == {"rounds": 0, "note": "onednn unavailable: no compiler"}
    table = bench_cpu.markdown({"machine": {"cpu": "EPYC", "cores": 2, "jax": "0.10.2", "torch": "2.13.0+cpu",
                                            "load_average": (0.5, 0.5, 0.5)},
                                "rounds": 2, "steps": 2, "models": bench_cpu.summarize(raw)})
    assert "| cifar_cnn (batch 128, adam) | jaxcnn | 10.5 | 1.86 | 4.0 / 0.3 | 0.50 | 2.00 | 4,000 | 2.00 |" in table
    assert "| cifar_cnn | jaxcnn onednn | onednn unavailable: no compiler |" in table


@pytest.mark.parametrize("name", ["cifar_cnn", "resnet20", "mobilenetv2_like"])
def test_the_pytorch_peer_has_jaxcnn_s_shapes_and_parameter_count(name):
    torch = pytest.importorskip("torch")
    import peers

    model = bench_cpu._load_model(name)
    net = peers.torch_graph_model(model)
    shapes = {}
    for key, module in net.layers.items():
        module.register_forward_hook(lambda m, args, out, key=key: shapes.__setitem__(key, tuple(out.shape[1:])))
    h, w, c = model.input_shape
    net(torch.zeros(2, c, h, w).to(memory_format=torch.channels_last))
    nchw = lambda s: (s[2], s[0], s[1]) if len(s) == 3 else s  # noqa: E731  (PyTorch's axes)
    assert shapes == {plan.name: nchw(plan.output_shape) for plan in model.plan()}
    assert peers.torch_count_params(net) == model.count_params()
