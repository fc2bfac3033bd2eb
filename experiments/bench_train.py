"""Training speed: jaxcnn against hand-written Flax linen, Keras 3 on JAX and PyTorch, in one run.

Superseded for the comparison with PyTorch by experiments/bench_cpu.py (issue 13), which runs each
framework alone in its own process: in one process PyTorch ran slower (19.7 against 16.6 ms a
seed-CNN step), which flatters jaxcnn here. This script stays for the in-process levers below.

Run:   python experiments/bench_train.py [--xla-fast-cpu] [--no-malloc-tuning] [--models cifar_cnn,vgg11_32,vgg16_64] [--steps N]
Needs: jaxcnn; Keras 3 and PyTorch 2.13 (`pip install -e ".[peers]"`) for those peers.
Writes experiments/results/bench_train[_fast_cpu][_default_malloc].{json,png}.

glibc malloc is tuned as the `jaxcnn` command tunes it (jaxcnn.host: freed memory kept, no page
faults on every step's fresh buffers) unless `--no-malloc-tuning`; the setting is process-wide, so
every framework of the run, PyTorch included, runs with it.

Besides jaxcnn as the fit loop runs it, two step-level levers of issue 5 are measured as rows of their
own: 4 training steps per jitted call (`CompiledModel.train_steps`, unrolled) and bfloat16 compute.

Models and settings (issue 5): the seed CIFAR CNN at batch 128 with Adam; VGG-11 for 32x32 inputs at
batch 64 with SGD and momentum 0.9; VGG16 at 64x64 at batch 16 with SGD and momentum. For each
framework: the first step's time (tracing and compilation included), the median step time over
3 rounds of N steps (default 5) that visit the frameworks in turn, images per second, achieved GFLOP/s with training FLOPs counted as 3x the forward
FLOPs of jaxcnn's stated convention (2 per multiply-accumulate, 1 per bias add; the backward pass
costs about twice the forward), and its fraction of a 2048x2048 float32 matmul's rate measured in
the same run. `--xla-fast-cpu` applies the experimental XLA CPU flags of jaxcnn.xla_flags to every
JAX framework in the run (hand-written Flax and Keras too).

The hand-written Flax model is the obvious one: nn.Conv with padding "SAME"/"VALID", nn.max_pool,
reshape, nn.Dense, optax, a jitted train step with the state donated.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
FAST = "--xla-fast-cpu" in sys.argv
if FAST:
    from jaxcnn.xla_flags import enable_fast_cpu

    enable_fast_cpu()
MALLOC = "--no-malloc-tuning" not in sys.argv
if MALLOC:  # as the jaxcnn command does; process-wide, so every framework in the run gets it
    from jaxcnn.host import tune_malloc

    MALLOC = tune_malloc()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxcnn  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from peers import have, keras_model, torch_model  # noqa: E402
from timing import call_seconds  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
SETTINGS = {
    "cifar_cnn": {"config": "cifar_cnn.toml", "input": None, "batch": 128, "optimizer": "adam"},
    "vgg11_32": {"config": "vgg11_32.toml", "input": None, "batch": 64, "optimizer": "sgd"},
    "vgg16_64": {"config": "vgg16.toml", "input": (64, 64, 3), "batch": 16, "optimizer": "sgd"},
}


def optax_optimizer(name: str) -> optax.GradientTransformation:
    return optax.adam(1e-3) if name == "adam" else optax.sgd(0.01, momentum=0.9)


class HandWrittenFlax(nn.Module):
    """The obvious Flax linen translation of a jaxcnn layer list."""

    model: jaxcnn.Sequential

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.model.layers:
            if layer.type == "Conv2D":
                x = nn.Conv(layer.filters, layer.kernel_size, layer.strides, padding=layer.padding.upper())(x)
            elif layer.type == "MaxPooling2D":
                x = nn.max_pool(x, layer.pool_size, layer.strides, padding=layer.padding.upper())
            elif layer.type == "Flatten":
                x = x.reshape(x.shape[0], -1)
            elif layer.type == "Dense":
                x = nn.Dense(layer.units)(x)
            else:
                raise NotImplementedError(layer.type)
            activation = getattr(layer, "activation", None)
            if activation == "relu":
                x = nn.relu(x)
        return x  # logits: the loss applies log-softmax


def first_call(step) -> float:
    """Seconds of the first call of ``step()`` (tracing and compilation included)."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def timed_calls(step, n: int) -> list[float]:
    """Seconds of each of ``n`` calls of ``step()``, which blocks until done."""
    return call_seconds(step, n)


def bench_jaxcnn(model, x, y, optimizer, *, precision="float32"):
    compiled = jaxcnn.compile(model, optimizer, precision=precision)
    box = [compiled.init(0)]

    def step():
        box[0], metrics = compiled.train_step(box[0], (x, y))
        metrics.loss.block_until_ready()

    return step, 1


def bench_jaxcnn_bf16(model, x, y, optimizer):
    """Step-level lever: bfloat16 compute, float32 parameters."""
    return bench_jaxcnn(model, x, y, optimizer, precision="bfloat16")


STEPS_PER_CALL = 4
ROUNDS = 3


def bench_jaxcnn_unrolled(model, x, y, optimizer):
    """Step-level lever: STEPS_PER_CALL steps per jitted call (``train_steps``, unrolled); the
    reported step time is a call's time divided by STEPS_PER_CALL, the first step the first call."""
    compiled = jaxcnn.compile(model, optimizer)
    box = [compiled.init(0)]
    xs, ys = np.stack([x] * STEPS_PER_CALL), np.stack([y] * STEPS_PER_CALL)

    def call():
        box[0], metrics = compiled.train_steps(box[0], (xs, ys))
        metrics.loss.block_until_ready()

    return call, STEPS_PER_CALL


def bench_flax(model, x, y, optimizer):
    module = HandWrittenFlax(model)
    params = module.init(jax.random.key(0), x[:1])["params"]
    tx = optax_optimizer(optimizer)

    @jax.jit
    def train_step(params, opt_state, x, y):
        def loss_fn(p):
            logits = module.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    train_step = jax.jit(train_step.__wrapped__, donate_argnums=(0, 1))
    box = [params, tx.init(params)]

    def step():
        box[0], box[1], loss = train_step(box[0], box[1], x, y)
        loss.block_until_ready()

    return step, 1


def bench_keras(model, x, y, optimizer):
    import keras

    net = keras_model(model)
    opt = keras.optimizers.Adam(1e-3) if optimizer == "adam" else keras.optimizers.SGD(0.01, momentum=0.9)
    net.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    return (lambda: net.train_on_batch(x, y)), 1


def bench_torch(model, x, y, optimizer):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    net = torch_model(model).train()
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(memory_format=torch.channels_last)
    ty = torch.from_numpy(y.astype(np.int64))
    opt = (torch.optim.Adam(net.parameters(), 1e-3) if optimizer == "adam"
           else torch.optim.SGD(net.parameters(), 0.01, momentum=0.9))
    # the model ends in softmax, as the seeds write it: train on its logits like the others
    body = net[:-1] if isinstance(net[-1], torch.nn.Softmax) else net
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(body(tx), ty)
        loss.backward()
        opt.step()

    return step, 1


def matmul_gflops() -> float:
    a = jnp.asarray(np.random.default_rng(0).normal(size=(2048, 2048)), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / statistics.median(times) / 1e9


def main() -> None:
    models = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--models=")), ",".join(SETTINGS)).split(",")
    n = int(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--steps=")), "5"))
    peak = matmul_gflops()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '')!r}, malloc tuning {MALLOC}; 2048x2048 float32 matmul: {peak:.0f} GFLOP/s", flush=True)
    results = {"machine": {"cores": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__},
               "xla_flags": os.environ.get("XLA_FLAGS", ""), "malloc_tuning": MALLOC, "matmul_gflops": peak, "models": {}}
    frameworks = {"jaxcnn": bench_jaxcnn, f"jaxcnn {STEPS_PER_CALL} steps/call": bench_jaxcnn_unrolled,
                  "jaxcnn bfloat16": bench_jaxcnn_bf16, "hand-written flax": bench_flax}
    if have("keras"):
        frameworks["keras 3 (jax) train_on_batch"] = bench_keras
    if have("torch"):
        frameworks["pytorch eager (channels_last)"] = bench_torch
    for name in models:
        setting = SETTINGS[name]
        model = jaxcnn.load(ROOT / "configs" / setting["config"])
        if setting["input"]:
            model = model.with_input_shape(setting["input"])
        batch = setting["batch"]
        rng = np.random.default_rng(0)
        x = rng.normal(size=(batch, *model.input_shape)).astype(np.float32)
        y = rng.integers(0, model.output_shape[-1], batch).astype(np.int32)
        train_flops = 3 * model.summarize(check=False).flops  # per image
        rows = {}
        print(f"\n{name}: {model.count_params():,} params, batch {batch}, {setting['optimizer']}, "
              f"{train_flops / 1e9:.2f} training GFLOP per image", flush=True)
        # Every framework's first call, then ROUNDS rounds of n calls each, interleaved (a slow
        # spell of this shared machine then hits every framework alike); the median over the rounds.
        steps, firsts, times = {}, {}, {}
        for framework, bench in frameworks.items():
            steps[framework] = bench(model, x, y, setting["optimizer"])
            firsts[framework] = first_call(steps[framework][0])
            times[framework] = []
        for _ in range(ROUNDS):
            for framework, (step, per_call) in steps.items():
                time.sleep(1.0)  # the previous framework's worker threads (OpenMP's spin-wait) go idle
                calls = max(2, n // per_call)
                times[framework] += [t / per_call for t in timed_calls(step, calls)]
        for framework in frameworks:
            first, step = firsts[framework], statistics.median(times[framework])
            gflops = train_flops * batch / step / 1e9
            rows[framework] = {"first_step_s": first, "step_ms": step * 1000, "images_per_second": batch / step,
                               "gflops": gflops, "fraction_of_matmul": gflops / peak,
                               "step_ms_range": [min(times[framework]) * 1000, max(times[framework]) * 1000]}
            print(f"  {framework:32s} step {step * 1000:9.1f} ms  first {first:6.2f} s  "
                  f"{batch / step:8.0f} images/s  {gflops:6.1f} GFLOP/s ({gflops / peak:.0%} of matmul)", flush=True)
        steps.clear()
        mine = rows["jaxcnn"]
        for framework, fig in rows.items():
            fig["jaxcnn_speedup"] = fig["step_ms"] / mine["step_ms"]
        print("  jaxcnn speed-up: " + ", ".join(f"{k} x{v['jaxcnn_speedup']:.2f}" for k, v in rows.items()
                                                if k != "jaxcnn"))
        results["models"][name] = {"params": model.count_params(), "batch": batch, "optimizer": setting["optimizer"],
                                   "training_gflop_per_image": train_flops / 1e9, "frameworks": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "bench_train" + ("_fast_cpu" if FAST else "") + ("" if MALLOC else "_default_malloc")
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, RESULTS / f"{stem}.png")
    print(f"\nwrote {RESULTS / stem}.json and .png")


def plot(results: dict, path: pathlib.Path) -> None:
    if not have("matplotlib"):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = results["models"]
    fig, axes = plt.subplots(1, len(entries), figsize=(5 * len(entries), 3.8), squeeze=False)
    for ax, (name, entry) in zip(axes[0], entries.items()):
        names = list(entry["frameworks"])
        ax.barh(names, [entry["frameworks"][k]["images_per_second"] for k in names])
        ax.set_title(f"{name}, batch {entry['batch']}: training images/s", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.set_xscale("log")
    fig.suptitle(f"XLA_FLAGS={results['xla_flags'] or '(none)'}; malloc tuning {results['malloc_tuning']}; matmul {results['matmul_gflops']:.0f} GFLOP/s",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
