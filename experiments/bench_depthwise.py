"""Depthwise 3x3 convolutions on CPU: XLA's grouped ``lax.conv`` against the ``"shifted"`` lowering
(:func:`jaxcnn.lowerings.depthwise`) and oneDNN's depthwise kernel, in one process.

    python experiments/bench_depthwise.py [--batches 1,32] [--train-batch 64]

The layers are MobileNetV2's at 224x224 (its 17 blocks' depthwise shapes, deduplicated): inference at
each of ``--batches``, then a training step's work (forward and both gradients) at ``--train-batch``
on the same layers at a 32x32 input (the CIFAR-sized MobileNetV2-style net of bench_cpu.py). Each
figure is the median of 7 calls after one warm-up; the ratio is lax.conv's time over the other's.
The values are checked against lax.conv's (largest absolute difference printed).
Writes experiments/results/bench_depthwise.txt.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import lowerings, onednn
from timing import median_seconds

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
# (input size, channels, stride) of MobileNetV2's depthwise layers at 224x224
MOBILENETV2 = [(112, 32, 1), (112, 96, 2), (56, 144, 1), (56, 144, 2), (28, 192, 1), (28, 192, 2),
               (14, 384, 1), (14, 576, 1), (14, 576, 2), (7, 960, 1)]


def timed(fn, *args) -> float:
    return median_seconds(lambda: jax.block_until_ready(fn(*args)), 7, warmup=1) * 1e3


def forward(lowering: str, stride: int):
    def f(x, k):
        if lowering == "onednn":
            kh, kw, c, m = k.shape
            return lowerings.onednn_conv(x, k.reshape(kh, kw, 1, c * m), strides=(stride, stride), padding="same",
                                         dilation=(1, 1), groups=c)
        return lowerings.depthwise(x, k, strides=(stride, stride), padding="same", dilation=(1, 1), lowering=lowering)
    return f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--train-batch", type=int, default=64)
    args = parser.parse_args()
    arms = ["conv", "shifted"] + (["onednn"] if onednn.available() else [])
    rng = np.random.default_rng(0)
    lines = [f"jax {jax.__version__}, {jax.devices()[0].device_kind}; ms per call, median of 7; "
             f"ratio = lax.conv / shifted", ""]

    def report(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    cases = [("inference", b, size, c, s) for b in map(int, args.batches.split(",")) for size, c, s in MOBILENETV2]
    cases += [("training", args.train_batch, max(size // 7, 2), c, s) for size, c, s in MOBILENETV2]
    report(f"{'work':<10} {'batch':>5} {'input':>12} {'stride':>6} " + " ".join(f"{a:>9}" for a in arms)
           + f" {'ratio':>6} {'max diff':>9}")
    ratios: dict[str, list[float]] = {}
    for work, batch, size, c, stride in cases:
        x = jnp.asarray(rng.normal(size=(batch, size, size, c)), jnp.float32)
        k = jnp.asarray(rng.normal(size=(3, 3, c, 1)), jnp.float32)
        times, outputs = {}, {}
        for arm in arms:
            f = forward(arm, stride)
            if work == "training":
                fn = jax.jit(jax.grad(lambda x, k, f=f: jnp.sum(jnp.sin(f(x, k))), argnums=(0, 1)))
            else:
                fn = jax.jit(f)
            times[arm] = timed(fn, x, k)
            outputs[arm] = fn(x, k)
        diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(outputs["shifted"]),
                                                                 jax.tree.leaves(outputs["conv"])))
        ratio = times["conv"] / times["shifted"]
        ratios.setdefault(f"{work} batch {batch}", []).append(ratio)
        report(f"{work:<10} {batch:>5} {f'{size}x{size}x{c}':>12} {stride:>6} "
               + " ".join(f"{times[a]:>9.2f}" for a in arms) + f" {ratio:>6.1f} {diff:>9.1e}")
    report("")
    for key, values in ratios.items():
        report(f"{key}: shifted {statistics.geometric_mean(values):.1f}x faster than lax.conv (geometric mean)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_depthwise.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
