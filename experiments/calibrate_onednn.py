"""Calibration of the lowering rule with oneDNN (jaxcnn.lowerings.choose_conv / choose_pool).

Run:   python experiments/calibrate_onednn.py [--batches 1,8,64,128] [--modes train,infer] [--reps 5]
       python experiments/calibrate_onednn.py --ynn [--steps 10]
Needs: the oneDNN extension built (`jaxcnn info` says so); without it only lax.conv and patches run.
Writes experiments/results/calibrate_onednn.json, or with --ynn calibrate_onednn_ynn.json.

Times one layer, as jaxcnn computes it, under each lowering: a convolution with its bias and a ReLU
(fused into oneDNN's call for "onednn", XLA's fusion otherwise), forward only ("infer") and forward
with the gradients in the input, the kernel and the bias ("train", each jitted), over a grid of
VGG-like shapes: output maps 32x32 to 2x2 with 3 to 512 channels, 3x3 SAME and 1x1 kernels, batches
1, 8, 64 and 128; and max pooling (2x2 windows at stride 2: reduce_window, reshape, onednn; 3x3 at
stride 2 SAME: reduce_window, onednn); and depthwise (MobileNetV2-like) and transposed 3x3
convolutions, ``lax`` against oneDNN. Each figure is the median of several runs after one warm-up
run; the machine is shared, so single figures are noisy (read the ratios, not the last digit).

`--ynn` measures, for models whose convolutions and poolings all run in oneDNN (forced with
``lowering="onednn"``; the seed CIFAR CNN at batch 128 with Adam, VGG-11/32 at batch 64 with SGD and
momentum), the training step with XLA's
default flags (YNNPACK fusions on, which include convolutions) against the experimental
`--xla_cpu_experimental_ynn_fusion_type=individual_dot` (jaxcnn.xla_flags.FAST_CPU_FLAGS), each in
a fresh process (XLA reads its flags once), rotating the settings over a few rounds.

What it showed (2026-11-25, oneDNN 3.2.0 avx512_core_bf16, the 2-core Zen 4 machine, quiet;
experiments/results/calibrate_onednn.{json,txt}; a first run under load 6-9 from other work,
calibrate_onednn_loaded.*, gave the same verdicts; the rule in jaxcnn/lowerings.py cites the
figures): oneDNN wins 3x3 convolutions on maps of 8x8 and more (training at batches 64 and 128: 0.63x
the faster XLA lowering's time, 11 of 12 shapes; about even at batches 1 and 8), loses them on 4x4
maps (15 of 16 cases, 1.1-2.5x) and 2x2 maps (1.2-4.2x, patches), wins 1x1 convolutions in inference and does not in
training (patches), wins max pooling nearly everywhere (35 of 40 training cases, 0.33x the best
other's time), depthwise convolutions (3.2-7.6x faster in training) and transposed ones (1.2-12x).

`--ynn`, every convolution and pooling forced to oneDNN, on the quiet machine (load under 1; calibrate_onednn_ynn.{json,txt}, 5
rounds of 10 steps, and calibrate_onednn_ynn_cifar_cnn.json, 5 rounds of 60): the seed CIFAR CNN's
step 9.8 ms with XLA's defaults against 10.0 with `individual_dot` (median of the per-round ratios
1.01), VGG-11/32's 226 against 220 ms (0.98): with the convolutions in oneDNN, XLA's YNNPACK fusions
neither help nor hurt these models (under load 6-9 the same comparison gave 0.81 and 1.09, noise).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"

# (output map side, input channels, output channels): VGG's diagonal, from the input layer down
CONV_SHAPES = [(32, 3, 64), (32, 64, 64), (16, 64, 128), (16, 128, 128), (8, 128, 256), (8, 256, 256),
               (4, 256, 512), (4, 512, 512), (2, 512, 512)]
POOL_SHAPES = [(32, 64), (16, 128), (8, 256), (4, 512), (2, 512)]  # (input map side, channels)
# MobileNetV2-like depthwise 3x3 convolutions (map side, channels), and transposed 3x3 stride-2
# convolutions (input side, input channels, filters): the layers without a patches program
DEPTHWISE_SHAPES = [(32, 32), (16, 96), (8, 192), (4, 384)]
TRANSPOSE_SHAPES = [(8, 128, 64), (16, 64, 32)]


def _time(fn: Callable[[], object], reps: int, budget_s: float = 1.5) -> float:
    """Median milliseconds of ``fn()`` (blocked until ready) over up to ``reps`` runs after a warm-up
    run, fewer where one run takes more than ``budget_s / reps``."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    runs = max(2, min(reps, int(budget_s / max(first, 1e-6))))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _conv_layer(lowering: str, kernel: int) -> Callable:
    """``relu(conv(x, k) + b)`` as jaxcnn's Conv2D computes it under ``lowering``, SAME padding."""
    import jax

    from jaxcnn import lowerings

    def layer(x, k, b):
        if lowering == "onednn":
            return lowerings.onednn_conv(x, k, b, strides=(1, 1), padding="same", dilation=(1, 1), activation="relu")
        y = lowerings.conv(x, k, strides=(1, 1), padding="same", dilation=(1, 1), lowering=lowering)
        return jax.nn.relu(y + b)

    del kernel
    return layer


def _step(layer: Callable, mode: str) -> Callable:
    """The jitted forward (``infer``) or forward and gradients in every argument (``train``)."""
    import jax
    import jax.numpy as jnp

    if mode == "infer":
        return jax.jit(layer)
    return jax.jit(jax.grad(lambda *args: jnp.sum(jnp.sin(layer(*args))), argnums=(0, 1, 2)))


def calibrate_conv(batches: list[int], modes: list[str], lowerings_: list[str], reps: int) -> list[dict]:
    import jax.numpy as jnp
    import numpy as np

    rows = []
    rng = np.random.default_rng(0)
    for mode in modes:
        for side, cin, cout in CONV_SHAPES:
            for kernel in (3, 1):
                for batch in batches:
                    x = jnp.asarray(rng.normal(size=(batch, side, side, cin)), jnp.float32)
                    k = jnp.asarray(rng.normal(size=(kernel, kernel, cin, cout)) / (kernel * np.sqrt(cin)),
                                    jnp.float32)
                    b = jnp.zeros((cout,), jnp.float32)
                    ms = {}
                    for lowering in lowerings_:
                        step = _step(_conv_layer(lowering, kernel), mode)
                        ms[lowering] = _time(lambda: step(x, k, b), reps)  # noqa: B023
                    row = {"kind": "conv", "mode": mode, "batch": batch, "map": side, "in": cin, "out": cout,
                           "kernel": kernel, "ms": ms, "best": min(ms, key=ms.get)}
                    rows.append(row)
                    print(_conv_line(row), flush=True)
    return rows


def calibrate_pool(batches: list[int], modes: list[str], lowerings_: list[str], reps: int) -> list[dict]:
    import jax.numpy as jnp
    import numpy as np

    from jaxcnn import lowerings

    rows = []
    rng = np.random.default_rng(1)
    windows = [((2, 2), (2, 2), "valid", ["reduce_window", "reshape", "onednn"]),
               ((3, 3), (2, 2), "same", ["reduce_window", "onednn"])]
    for mode in modes:
        for side, c in POOL_SHAPES:
            for pool, strides, padding, candidates in windows:
                for batch in batches:
                    x = jnp.asarray(rng.normal(size=(batch, side, side, c)), jnp.float32)
                    ms = {}
                    for lowering in candidates:
                        if lowering == "onednn" and "onednn" not in lowerings_:
                            continue
                        layer = lambda x, _k, _b, lowering=lowering, pool=pool, strides=strides, padding=padding: (
                            lowerings.max_pool(x, pool=pool, strides=strides, padding=padding, lowering=lowering))
                        step = _step(layer, mode)
                        ms[lowering] = _time(lambda: step(x, 0.0, 0.0), reps)  # noqa: B023
                    row = {"kind": "max_pool", "mode": mode, "batch": batch, "map": side, "channels": c,
                           "pool": list(pool), "strides": list(strides), "padding": padding, "ms": ms,
                           "best": min(ms, key=ms.get)}
                    rows.append(row)
                    print(_pool_line(row), flush=True)
    return rows


def calibrate_unpatched(batches: list[int], modes: list[str], reps: int) -> list[dict]:
    """Depthwise (``groups`` = channels) and transposed convolutions: ``lax`` against oneDNN."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from jaxcnn import lowerings

    def depthwise(lowering):
        def layer(x, k, b):
            if lowering == "onednn":
                return lowerings.onednn_conv(x, k, b, strides=(1, 1), padding="same", dilation=(1, 1),
                                             groups=x.shape[-1], activation="relu")
            y = lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=x.shape[-1])
            return jax.nn.relu(y + b)
        return layer

    def transpose(lowering):
        pads = ((2, 2), (2, 2))  # Keras's SAME at stride 2 for a 3x3 kernel (output 2x the input)
        def layer(x, k, b):
            if lowering == "onednn":
                y = lowerings.onednn_conv_transpose(x, k, strides=(2, 2), padding=pads, dilation=(1, 1))
            else:
                y = lax.conv_transpose(x, k, (2, 2), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       transpose_kernel=True)
            return jax.nn.relu(y + b)
        return layer

    rng = np.random.default_rng(2)
    cases = [("depthwise", (side, side, c), (3, 3, 1, c), c, depthwise) for side, c in DEPTHWISE_SHAPES]
    cases += [("transpose", (side, side, cin), (3, 3, f, cin), f, transpose) for side, cin, f in TRANSPOSE_SHAPES]
    rows = []
    for mode in modes:
        for kind, shape, kernel_shape, out, make in cases:
            for batch in batches:
                x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
                k = jnp.asarray(rng.normal(size=kernel_shape) / 3, jnp.float32)
                b = jnp.zeros((out,), jnp.float32)
                ms = {}
                for lowering in ("conv", "onednn"):
                    step = _step(make(lowering), mode)
                    ms[lowering] = _time(lambda: step(x, k, b), reps)  # noqa: B023
                row = {"kind": kind, "mode": mode, "batch": batch, "map": shape[0], "in": shape[2], "out": out,
                       "ms": ms, "best": min(ms, key=ms.get)}
                rows.append(row)
                print(f"{kind:9s} {mode:5s} b{batch:<3d} {shape[0]:2d}x{shape[1]:<2d} {shape[2]:3d}->{out:<3d} "
                      f"{_ratios(ms)}  best {row['best']}", flush=True)
    return rows


def _ratios(ms: dict[str, float]) -> str:
    best = min(ms.values())
    return "  ".join(f"{name} {value:8.2f} ms ({value / best:4.1f}x)" for name, value in ms.items())


def _conv_line(row: dict) -> str:
    return (f"conv {row['mode']:5s} b{row['batch']:<3d} {row['map']:2d}x{row['map']:<2d} {row['in']:3d}->{row['out']:<3d} "
            f"{row['kernel']}x{row['kernel']}  {_ratios(row['ms'])}  best {row['best']}")


def _pool_line(row: dict) -> str:
    return (f"pool {row['mode']:5s} b{row['batch']:<3d} {row['map']:2d}x{row['map']:<2d} c{row['channels']:<3d} "
            f"{row['pool'][0]}x{row['pool'][1]}/{row['strides'][0]} {row['padding']:5s}  {_ratios(row['ms'])}  "
            f"best {row['best']}")


# ---- --ynn: XLA's YNNPACK fusions with every convolution in oneDNN ---------------------------------

YNN_MODELS = {"cifar_cnn": (128, {"name": "adam", "learning_rate": 1e-3}),
              "vgg11_32": (64, {"name": "sgd", "learning_rate": 0.01, "momentum": 0.9})}


def ynn_child(model_name: str, steps: int) -> dict:
    """In this process (its XLA flags already set): the median training step of ``model_name``."""
    import jax
    import numpy as np

    import jaxcnn

    loaded = jaxcnn.load(str(ROOT / "configs" / f"{model_name}.toml"))
    model = jaxcnn.Sequential([dataclasses.replace(layer, lowering="onednn") if hasattr(layer, "lowering") else layer
                               for layer in loaded.layers], input_shape=loaded.input_shape, name=loaded.name)
    batch, optimizer = YNN_MODELS[model_name]
    compiled = jaxcnn.compile(model, optimizer)
    assert compiled.module.lowering.onednn, "the oneDNN extension is not available"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *model.input_shape)).astype(np.float32)
    y = rng.integers(0, model.output_shape[-1], size=batch).astype(np.int32)
    state = compiled.init(0)
    state, metrics = compiled.train_step(state, (x, y))
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled.train_step(state, (x, y))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return {"model": model_name, "xla_flags": os.environ.get("XLA_FLAGS", ""), "median_ms": 1e3 * statistics.median(times)}


def measure_ynn(steps: int, rounds: int, models: list[str]) -> list[dict]:
    from jaxcnn.xla_flags import FAST_CPU_FLAGS

    settings = {"default (YNNPACK fusions on)": "", "individual_dot": " ".join(FAST_CPU_FLAGS)}
    out = []
    for round_ in range(rounds):
        for model_name in models:
            for label, flags in settings.items():
                env = {**os.environ, "XLA_FLAGS": flags, "JAXCNN_XLA_FAST_CPU": "0"}
                code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'experiments')!r}); "
                        f"from calibrate_onednn import ynn_child; print(json.dumps(ynn_child({model_name!r}, {steps})))")
                done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                      check=True)
                row = {**json.loads(done.stdout.strip().splitlines()[-1]), "setting": label, "round": round_}
                out.append(row)
                print(f"round {round_} {model_name:10s} {label:30s} {row['median_ms']:8.1f} ms", flush=True)
    default, fast = settings
    for model_name in models:
        for label in settings:
            values = [r["median_ms"] for r in out if r["model"] == model_name and r["setting"] == label]
            print(f"{model_name:10s} {label:30s} median over rounds {statistics.median(values):8.1f} ms")
        ratios = [fast_row["median_ms"] / default_row["median_ms"]
                  for default_row, fast_row in zip(*([r for r in out if r["model"] == model_name and r["setting"] == s]
                                                     for s in (default, fast)))]
        print(f"{model_name:10s} individual_dot / default, paired by round: "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8,64,128")
    parser.add_argument("--modes", default="train,infer")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--skip-pool", action="store_true")
    parser.add_argument("--only-unpatched", action="store_true",
                        help="only the depthwise and transposed convolutions (written to calibrate_onednn_unpatched.json)")
    parser.add_argument("--ynn", action="store_true", help="measure XLA's YNNPACK flag with oneDNN convolutions")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default=",".join(YNN_MODELS), help="with --ynn: among " + ", ".join(YNN_MODELS))
    args = parser.parse_args()

    from jaxcnn import host, onednn
    from jaxcnn.files import write_atomic

    host.tune_malloc()  # as the jaxcnn command does
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "onednn": onednn.info(), "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if args.ynn:
        models = args.models.split(",")
        result = {**meta, "rows": measure_ynn(args.steps, args.rounds, models)}
        name = "calibrate_onednn_ynn.json" if models == list(YNN_MODELS) else f"calibrate_onednn_ynn_{'_'.join(models)}.json"
        write_atomic(RESULTS / name, json.dumps(result, indent=1))
        return
    candidates = ["conv", "patches"] + (["onednn"] if onednn.available() else [])
    batches = [int(b) for b in args.batches.split(",")]
    modes = args.modes.split(",")
    if args.only_unpatched:
        rows = calibrate_unpatched(batches, modes, args.reps)
        write_atomic(RESULTS / "calibrate_onednn_unpatched.json", json.dumps({**meta, "rows": rows}, indent=1))
        return
    rows = calibrate_conv(batches, modes, candidates, args.reps)
    if not args.skip_pool:
        rows += calibrate_pool(batches, modes, candidates, args.reps)
    if onednn.available():
        rows += calibrate_unpatched(batches, modes, args.reps)
    write_atomic(RESULTS / "calibrate_onednn.json", json.dumps({**meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
