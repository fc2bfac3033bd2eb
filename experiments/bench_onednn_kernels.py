"""Convolution forward and backward: jaxcnn.onednn against lax.conv at the seed CIFAR CNN's shapes.

Run:   python experiments/bench_onednn_kernels.py [--reps N] [--rounds R]
Needs: jaxcnn with its oneDNN extension built (`pip install -e .` on x86-64 Linux).
Writes experiments/results/bench_onednn_kernels.json.

Each arm is one jitted function computing the gradients with respect to x, the kernel and the bias of
sum(relu(conv(x, kernel) + bias) * t), batch 128, 3x3 SAME: lax.conv_general_dilated with the bias
add and ReLU left to XLA's fusions; oneDNN with bias and ReLU fused as post-ops, its weights in the
layout jaxcnn.onednn chooses per primitive ("onednn"), for every primitive in the layout oneDNN picks
("blocked", reordered from HWIO on each call) or as HWIO ("plain"); and oneDNN's bfloat16 kernels.
The seed CNN's 2x2 max poolings are timed the same way, gradient with respect to x, against
lax.reduce_window. The figure is the median over R rounds (visiting the arms in turn) of the mean of
N calls; the ratio is the first arm's (lax's) time over the arm's (above 1: the arm is faster).
glibc malloc is tuned as the `jaxcnn` command tunes it. Times on a shared machine are rough.

Measured (2-core AMD EPYC Zen 4 while other engineers ran jobs, load average 6, so rough; ms per
forward and backward, the first arm's time over the arm's in brackets):
                           lax    onednn         blocked        plain          bf16
    conv 128x32x32x3->32   60.3   47.6 (1.27x)   46.7 (1.29x)   62.6 (0.96x)  40.8 (1.48x)
    conv 128x32x32x32->32 125.0  102.0 (1.23x)  103.3 (1.21x)  152.1 (0.82x)  55.4 (2.26x)
    conv 128x16x16x32->64  54.0   52.0 (1.04x)   42.2 (1.28x)   61.9 (0.87x)  17.1 (3.17x)
    conv 128x16x16x64->64 112.1   80.7 (1.39x)   84.4 (1.33x)  120.1 (0.93x)  42.4 (2.64x)
                           reduce_window  onednn
    max pool 128x32x32x32  152.2           6.3 (24x)
    max pool 128x16x16x64   37.8           1.8 (21x)
An earlier run at load 7-8 gave 1.10-1.50x for "onednn" and 1.7-3.5x for bf16.
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
POOLS = [(32, 32, 32), (16, 16, 64)]  # (height, width, channels) of its 2x2 max poolings
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


def _compare(label: str, steps: dict, args: tuple, rounds: int, reps: int) -> dict:
    """The median ms of each jitted step over the rounds (arms visited in turn), printed with ratios."""
    for step in steps.values():
        jax.block_until_ready(step(*args))
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(_time(step, args, reps))
    row = {"shape": label}
    row.update({name: round(statistics.median(ms), 3) for name, ms in times.items()})
    first = next(iter(steps))
    print(f"{label:>26}: " + "  ".join(
        f"{name} {row[name]:7.2f} ms ({row[first] / row[name]:.2f}x)" for name in steps))
    return row


def _pool_steps(t):
    window = dict(pool=(2, 2), strides=(2, 2), padding=((0, 0), (0, 0)))
    reduce = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    ours = lambda x: onednn.max_pool(x, **window)
    return {name: jax.jit(jax.grad(lambda x, f=f: jnp.sum(f(x) * t)))
            for name, f in (("reduce_window", reduce), ("onednn", ours))}


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
        results.append(_compare(f"conv {BATCH}x{h}x{w}x{c}->{f}", steps, (x, kernel, bias), args.rounds, args.reps))
    for h, w, c in POOLS:
        x = jnp.asarray(rng.standard_normal((BATCH, h, w, c)), jnp.float32)
        t = jnp.asarray(rng.standard_normal((BATCH, h // 2, w // 2, c)), jnp.float32)
        results.append(_compare(f"max pool 2x2 {BATCH}x{h}x{w}x{c}", _pool_steps(t), (x,), args.rounds, args.reps))
    out = pathlib.Path(__file__).parent / "results" / "bench_onednn_kernels.json"
    record = {"info": onednn.info(), "batch": BATCH, "load_average": os.getloadavg(), "rows": results}
    write_atomic(out, json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
