"""Convolution forward and backward: jaxcnn.onednn against lax.conv at the seed CIFAR CNN's shapes.

Run:   python experiments/bench_onednn_kernels.py [--reps N] [--rounds R]
Needs: jaxcnn with its oneDNN extension built (`pip install -e .` on x86-64 Linux).
Writes experiments/results/bench_onednn_kernels.json.

Each arm is one jitted function computing the gradients with respect to x, the kernel and the bias of
sum(relu(conv(x, kernel) + bias) * t), batch 128, 3x3 SAME: lax.conv_general_dilated with the bias
add and ReLU left to XLA's fusions; oneDNN with bias and ReLU fused as post-ops, its weights in the
layout jaxcnn.onednn chooses per primitive ("onednn"), for every primitive in the layout oneDNN picks
("blocked", reordered from HWIO on each call) or as HWIO ("plain"); and oneDNN's bfloat16 kernels.
The figure is the median over R rounds (visiting the arms in turn) of the mean of N calls; the ratio is lax's time over the arm's (above 1: the arm is faster).
glibc malloc is tuned as the `jaxcnn` command tunes it. Times on a shared machine are rough.

Measured (2-core AMD EPYC Zen 4 while other engineers ran jobs: load average 7-8, so rough; ms per
forward and backward, lax's time over the arm's in brackets):
                      lax    onednn         blocked        plain          bf16
    128x32x32x3->32   63.7   48.4 (1.32x)   42.7 (1.49x)   93.5 (0.68x)  36.5 (1.74x)
    128x32x32x32->32 117.2  106.5 (1.10x)  116.5 (1.01x)  172.5 (0.68x)  52.1 (2.25x)
    128x16x16x32->64  57.4   47.6 (1.21x)   51.7 (1.11x)   88.1 (0.65x)  26.8 (2.15x)
    128x16x16x64->64 110.6   73.9 (1.50x)   58.1 (1.90x)   92.9 (1.19x)  31.8 (3.48x)
HWIO weights for oneDNN's backward primitives are what makes "plain" slow; the forward is the same
kernel either way. The figures on a quiet machine are the lead's to take.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import time

from jaxcnn.host import tune_malloc

tune_malloc()

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import onednn
from jaxcnn.files import write_atomic

SHAPES = [  # (height, width, in channels, filters) of the seed CIFAR CNN's convolutions
    (32, 32, 3, 32),
    (32, 32, 32, 32),
    (16, 16, 32, 64),
    (16, 16, 64, 64),
]
BATCH = 128
PADS = ((1, 1), (1, 1))


def _lax(x, kernel, bias):
    y = lax.conv_general_dilated(x, kernel, (1, 1), PADS, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y + bias)


CHOSEN = dict(onednn._BLOCKED_WEIGHTS)


def _onednn(blocked: dict[str, bool], compute_dtype=None):
    def conv(x, kernel, bias):
        onednn._BLOCKED_WEIGHTS = blocked  # read while tracing: each arm is traced once, with its own
        return onednn.conv(x, kernel, bias, strides=(1, 1), padding=PADS, activation="relu",
                           compute_dtype=compute_dtype)
    return conv


ARMS = {"lax": _lax, "onednn": _onednn(CHOSEN), "onednn blocked": _onednn(dict.fromkeys(CHOSEN, True)),
        "onednn plain": _onednn(dict.fromkeys(CHOSEN, False)), "onednn bf16": _onednn(CHOSEN, jnp.bfloat16)}


def _step(conv, t):
    return jax.jit(jax.grad(lambda x, k, b: jnp.sum(conv(x, k, b) * t), argnums=(0, 1, 2)))


def _time(fn, args, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / reps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not onednn.available():
        raise SystemExit(f"oneDNN kernels unavailable: {onednn.unavailable_reason()}")
    arms = {k: v for k, v in ARMS.items() if k != "onednn bf16" or onednn.info()["bfloat16"]}
    rng = np.random.default_rng(0)
    results = []
    for h, w, c, f in SHAPES:
        x = jnp.asarray(rng.standard_normal((BATCH, h, w, c)), jnp.float32)
        kernel = jnp.asarray(rng.standard_normal((3, 3, c, f)) * 0.1, jnp.float32)
        bias = jnp.asarray(rng.standard_normal(f) * 0.1, jnp.float32)
        t = jnp.asarray(rng.standard_normal((BATCH, h, w, f)), jnp.float32)
        steps = {name: _step(conv, t) for name, conv in arms.items()}
        for step in steps.values():
            jax.block_until_ready(step(x, kernel, bias))
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                times[name].append(_time(step, (x, kernel, bias), args.reps))
        row = {"shape": f"{BATCH}x{h}x{w}x{c}->{f}"}
        row.update({name: round(statistics.median(ms), 3) for name, ms in times.items()})
        results.append(row)
        print(f"{row['shape']:>18}: " + "  ".join(
            f"{name} {row[name]:7.2f} ms ({row['lax'] / row[name]:.2f}x)" for name in steps))
    out = pathlib.Path(__file__).parent / "results" / "bench_onednn_kernels.json"
    record = {"info": onednn.info(), "batch": BATCH, "load_average": os.getloadavg(), "rows": results}
    write_atomic(out, json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
