"""BatchNormalization + ReLU in training, forward and backward, one layer: jaxcnn against its earlier
form, the two-pass variance, and PyTorch.

Run:   python experiments/bench_batchnorm.py [--repeats 20] [--out experiments/results/bench_batchnorm.json]
Shows: for the activation shapes of ResNet-20 and the MobileNetV2-style net at batch 128, the median
       time of ``value_and_grad`` of ``sum(relu(bn(x)) * t)`` (batch statistics, gradients of x, gamma
       and beta), jitted, for
       * ``jaxcnn``: the real layer (jaxcnn.layers.BatchNormalization in a Flax module, training
         path, moving statistics updated), Keras's affine form ``x * inv + (beta - mean * inv)`` with
         one-pass moments;
       * ``two-pass``: the same affine form with ``jnp.mean``/``jnp.var`` (Keras's ``ops.moments``);
       * ``earlier``: ``(x - mean) * rsqrt(var + eps) * gamma + beta`` with ``jnp.mean``/``jnp.var``,
         jaxcnn's form before issue 13's profile found BatchNormalization at 40% of ResNet-20's step;
       * ``pytorch``: ``torch.nn.BatchNorm2d`` and ReLU on a channels_last tensor, eager, where
         PyTorch is installed (same process: a rough reference, not bench_cpu.py's fair one).
       The largest difference between jaxcnn's and the earlier form's gradient of x is printed too.
What it showed (2-core EPYC, jax 0.10.2; experiments/results/bench_batchnorm.json): see the file and
the BatchNormalization docstring (jaxcnn/layers/normalization.py).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxcnn
from jaxcnn.flax_module import build_module
from jaxcnn.layers import BatchNormalization, Input, ReLU
from jaxcnn.lowerings import LoweringContext
from timing import median_seconds

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SHAPES = ((128, 32, 32, 16), (128, 16, 16, 32), (128, 8, 8, 64), (128, 16, 16, 96), (128, 8, 8, 192))
EPS = 1e-3


def _earlier(x: jax.Array, gamma: jax.Array, beta: jax.Array) -> jax.Array:
    m, v = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))
    return jax.nn.relu((x - m) * lax.rsqrt(v + EPS) * gamma + beta)


def _two_pass(x: jax.Array, gamma: jax.Array, beta: jax.Array) -> jax.Array:
    m, v = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))
    inv = lax.rsqrt(v + EPS) * gamma
    return jax.nn.relu(x * inv + (beta - m * inv))


def _jaxcnn(shape: tuple[int, ...]) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    model = jaxcnn.Sequential([Input(shape[1:]), BatchNormalization(epsilon=EPS), ReLU()])
    module = build_module(model, LoweringContext("cpu"))
    stats = {"mean": jnp.zeros(shape[-1]), "var": jnp.ones(shape[-1])}

    def forward(x: jax.Array, gamma: jax.Array, beta: jax.Array) -> jax.Array:
        variables = {"params": {"batch_normalization": {"scale": gamma, "bias": beta}},
                     "batch_stats": {"batch_normalization": stats}}
        y, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
        return y

    return forward


def _step(forward: Callable[..., jax.Array]) -> Callable[..., object]:
    def loss(x: jax.Array, gamma: jax.Array, beta: jax.Array, t: jax.Array) -> jax.Array:
        return jnp.sum(forward(x, gamma, beta) * t)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def _median_ms(call: Callable[[], object], repeats: int) -> float:
    return 1000 * median_seconds(call, repeats, warmup=1)


def _torch_ms(shape: tuple[int, ...], x: np.ndarray, t: np.ndarray, repeats: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    bn = torch.nn.BatchNorm2d(shape[-1], eps=EPS).to(memory_format=torch.channels_last)
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).requires_grad_()
    tt = torch.from_numpy(t).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

    def call() -> None:
        tx.grad = None
        bn.zero_grad()
        (torch.relu(bn(tx)) * tt).sum().backward()

    return _median_ms(call, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(RESULTS / "bench_batchnorm.json"))
    args = parser.parse_args()
    rows = []
    for shape in SHAPES:
        rng = np.random.default_rng(0)
        x = (rng.normal(size=shape) + 0.5).astype(np.float32)
        t = rng.normal(size=shape).astype(np.float32)
        gamma, beta = jnp.ones(shape[-1]), jnp.zeros(shape[-1])
        xj, tj = jnp.asarray(x), jnp.asarray(t)
        steps = {"jaxcnn": _step(_jaxcnn(shape)), "two-pass": _step(_two_pass), "earlier": _step(_earlier)}
        row: dict[str, object] = {"shape": list(shape)}
        for name, step in steps.items():
            row[name] = _median_ms(lambda s=step: jax.block_until_ready(s(xj, gamma, beta, tj)), args.repeats)
        ours = steps["jaxcnn"](xj, gamma, beta, tj)[1][0]
        before = steps["earlier"](xj, gamma, beta, tj)[1][0]
        row["max_abs_grad_diff"] = float(jnp.max(jnp.abs(ours - before)))
        row["pytorch"] = _torch_ms(shape, x, t, args.repeats)
        rows.append(row)
        torch_text = f"pytorch {row['pytorch']:6.2f}" if row["pytorch"] is not None else "pytorch    n/a"
        print(f"{str(shape):20s} jaxcnn {row['jaxcnn']:6.2f} ms  two-pass {row['two-pass']:6.2f}  "
              f"earlier {row['earlier']:6.2f} (x{row['earlier'] / row['jaxcnn']:.2f})  {torch_text}  "
              f"grad diff {row['max_abs_grad_diff']:.1e}", flush=True)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "jax": jax.__version__, "machine": platform.processor() or platform.machine(),
                               "cpus": os.cpu_count(), "load_average": os.getloadavg()}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
