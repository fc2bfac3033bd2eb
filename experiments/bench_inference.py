"""Inference speed: jaxcnn against PyTorch eager (channels_last) and Keras 3 `predict` on JAX, same run.

Run:   KERAS_BACKEND=jax python experiments/bench_inference.py
Needs: jaxcnn; PyTorch 2.13 and Keras 3 (`pip install -e ".[peers]"`) for the peers.
Writes experiments/results/bench_inference.json and .png.

For the seed CIFAR CNN (528,054 parameters) and VGG-11 at 32x32 (9,225,610), it measures
  - batch-1 latency: the median over 50 calls of one 32x32x3 image through the model;
  - batch-256 throughput: 256 / the median over 10 calls of a batch of 256.
jaxcnn is measured three ways: the jitted in-process `predict`, and the exported artifact
(`jaxcnn.artifact`, what `jaxcnn predict` runs) in float32 and bfloat16. Every framework uses the
machine's cores (PyTorch: torch.set_num_threads(os.cpu_count())). Goal on the 2-core CPU (issue 4):
throughput at least PyTorch's, batch-1 latency at most PyTorch's. Ratios > 1 mean jaxcnn is better.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxcnn  # noqa: E402
from jaxcnn.artifact import load_artifact  # noqa: E402
from jaxcnn.checkpoint import Checkpoints, model_fingerprint  # noqa: E402
from jaxcnn.export import export_model  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from peers import have, keras_model, torch_model  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
MODELS = {"cifar_cnn": ROOT / "configs" / "cifar_cnn.toml", "vgg11_32": ROOT / "configs" / "vgg11_32.toml"}
LATENCY_CALLS, THROUGHPUT_CALLS, BATCH = 50, 10, 256


def timed(fn, calls: int) -> float:
    """Median seconds of ``fn()`` over ``calls`` calls, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(predict_one, predict_batch) -> dict[str, float]:
    latency = timed(predict_one, LATENCY_CALLS)
    batch_time = timed(predict_batch, THROUGHPUT_CALLS)
    return {"latency_ms": latency * 1000, "throughput": BATCH / batch_time}


def artifact_for(name: str, path: pathlib.Path, work: pathlib.Path, precision: str) -> object:
    """An export file of ``path``'s model with fresh (random) parameters, through the real writer."""
    model = jaxcnn.load(path)
    compiled = jaxcnn.compile(model, "sgd")
    state = compiled.init(0)
    folder = work / f"{name}_ckpt"
    preprocessing = {"raw_shape": list(model.input_shape), "mean": [], "std": [], "fit": "none",
                     "input_shape": list(model.input_shape), "class_names": []}
    Checkpoints(folder, fingerprint=model_fingerprint(model)).save(0, state, {"preprocessing": preprocessing})
    config = work / f"{name}.toml"
    config.write_text(path.read_text())
    export_model(config, folder, work / f"{name}_{precision}.jaxcnn", platforms=["cpu"], precision=precision)
    return load_artifact(work / f"{name}_{precision}.jaxcnn")


def main() -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}", flush=True)
    rng = np.random.default_rng(0)
    results: dict = {"machine": {"cores": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__,
                                 "device": str(jax.devices()[0])}, "models": {}}
    work = pathlib.Path(tempfile.mkdtemp())
    for name, path in MODELS.items():
        model = jaxcnn.load(path)
        one = rng.normal(size=(1, *model.input_shape)).astype(np.float32)
        batch = rng.normal(size=(BATCH, *model.input_shape)).astype(np.float32)
        rows = {}
        compiled = jaxcnn.compile(model, "sgd")
        state = compiled.init(0)
        rows["jaxcnn predict (jit, float32)"] = measure(
            lambda: compiled.predict(state, one).block_until_ready(),
            lambda: compiled.predict(state, batch).block_until_ready())
        for precision in ("float32", "bfloat16"):
            artifact = artifact_for(name, path, work, precision)
            rows[f"jaxcnn export ({precision})"] = measure(
                lambda a=artifact: a.predict(one, batch_size=1), lambda a=artifact: a.predict(batch, batch_size=BATCH))
        if have("torch"):
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
            net = torch_model(model)
            t_one = torch.from_numpy(one.transpose(0, 3, 1, 2).copy()).to(memory_format=torch.channels_last)
            t_batch = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy()).to(memory_format=torch.channels_last)
            with torch.inference_mode():
                rows["pytorch eager (channels_last)"] = measure(lambda: net(t_one), lambda: net(t_batch))
        if have("keras"):
            kmodel = keras_model(model)
            rows["keras 3 predict (jax)"] = measure(
                lambda: kmodel.predict_on_batch(one), lambda: kmodel.predict(batch, batch_size=BATCH, verbose=0))
        reference = rows.get("pytorch eager (channels_last)")
        print(f"\n{name} ({model.count_params():,} params): latency at batch 1, throughput at batch {BATCH}")
        for framework, fig in rows.items():
            if reference:
                fig["latency_ratio_vs_pytorch"] = reference["latency_ms"] / fig["latency_ms"]
                fig["throughput_ratio_vs_pytorch"] = fig["throughput"] / reference["throughput"]
                ratios = (f"  (vs PyTorch: latency x{fig['latency_ratio_vs_pytorch']:.2f}, "
                          f"throughput x{fig['throughput_ratio_vs_pytorch']:.2f})")
            else:
                ratios = ""
            print(f"  {framework:32s} {fig['latency_ms']:8.2f} ms {fig['throughput']:10,.0f} images/s{ratios}")
        results["models"][name] = {"params": model.count_params(), "frameworks": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_inference.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results)
    print(f"\nwrote {RESULTS / 'bench_inference.json'} and .png")


def plot(results: dict) -> None:
    if not have("matplotlib"):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    for row, (name, entry) in enumerate(results["models"].items()):
        names = list(entry["frameworks"])
        for col, (key, label) in enumerate((("latency_ms", "batch-1 latency (ms, lower is better)"),
                                            ("throughput", f"batch-{BATCH} throughput (images/s)"))):
            ax = axes[row][col]
            ax.barh(names, [entry["frameworks"][n][key] for n in names])
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "bench_inference.png", dpi=90)


if __name__ == "__main__":
    main()
