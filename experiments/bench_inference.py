"""Inference speed: jaxcnn against PyTorch eager (channels_last) and Keras 3 `predict` on JAX, same run.

Run:   KERAS_BACKEND=jax python experiments/bench_inference.py [--xla-fast-cpu]
       (--xla-fast-cpu: the experimental XLA CPU flags of jaxcnn.xla_flags, for every JAX framework in
       the run, Keras included; results then go to bench_inference_fast_cpu.{json,png})
Needs: jaxcnn; PyTorch 2.13 and Keras 3 (`pip install -e ".[peers]"`) for the peers.
Writes experiments/results/bench_inference.json and .png.

For the seed CIFAR CNN (528,054 parameters) and VGG-11 at 32x32 (9,225,610), it measures
  - batch-1 latency: the median over 50 calls of one 32x32x3 image through the model;
  - batch-256 throughput: 256 / the median over 10 calls of a batch of 256;
each in 3 rounds that interleave the frameworks, the median round reported (all rounds in the JSON).
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

os.environ.setdefault("KERAS_BACKEND", "jax")
FAST = "--xla-fast-cpu" in sys.argv  # the experimental XLA CPU flags of jaxcnn.xla_flags, before JAX starts
if FAST:
    from jaxcnn.xla_flags import enable_fast_cpu

    enable_fast_cpu()

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxcnn  # noqa: E402
from jaxcnn.artifact import load_artifact  # noqa: E402
from jaxcnn.checkpoint import Checkpoints, model_fingerprint  # noqa: E402
from jaxcnn.export import export_model  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from peers import have, keras_model, torch_model  # noqa: E402
from timing import median_seconds as timed  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
MODELS = {"cifar_cnn": ROOT / "configs" / "cifar_cnn.toml", "vgg11_32": ROOT / "configs" / "vgg11_32.toml"}
LATENCY_CALLS, THROUGHPUT_CALLS, BATCH, ROUNDS = 50, 10, 256, 3


def measure_all(candidates: dict[str, tuple]) -> dict[str, dict[str, float]]:
    """Latency and throughput of every candidate, measured in ROUNDS interleaved rounds (each
    round measures every framework once), reporting the median round: a burst of load from
    elsewhere on a shared machine then hits one round of every framework, not one framework."""
    rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in candidates}
    for _ in range(ROUNDS):
        for name, (predict_one, predict_batch) in candidates.items():
            rounds[name].append((timed(predict_one, LATENCY_CALLS), timed(predict_batch, THROUGHPUT_CALLS)))
    return {name: {"latency_ms": 1000 * statistics.median(r[0] for r in runs),
                   "throughput": BATCH / statistics.median(r[1] for r in runs),
                   "rounds": [{"latency_ms": 1000 * a, "throughput": BATCH / b} for a, b in runs]}
            for name, runs in rounds.items()}


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
                                 "device": str(jax.devices()[0])}, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                     "models": {}}
    work = pathlib.Path(tempfile.mkdtemp())
    for name, path in MODELS.items():
        model = jaxcnn.load(path)
        one = rng.normal(size=(1, *model.input_shape)).astype(np.float32)
        batch = rng.normal(size=(BATCH, *model.input_shape)).astype(np.float32)
        candidates = {}
        compiled = jaxcnn.compile(model, "sgd")
        state = compiled.init(0)
        candidates["jaxcnn predict (jit, float32)"] = (
            lambda: compiled.predict(state, one).block_until_ready(),
            lambda: compiled.predict(state, batch).block_until_ready())
        for precision in ("float32", "bfloat16"):
            artifact = artifact_for(name, path, work, precision)
            candidates[f"jaxcnn export ({precision})"] = (
                lambda a=artifact: a.predict(one, batch_size=1), lambda a=artifact: a.predict(batch, batch_size=BATCH))
        if have("torch"):
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
            net = torch_model(model)
            t_one = torch.from_numpy(one.transpose(0, 3, 1, 2).copy()).to(memory_format=torch.channels_last)
            t_batch = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy()).to(memory_format=torch.channels_last)
            def inference(inputs, net=net):
                with torch.inference_mode():
                    return net(inputs)

            candidates["pytorch eager (channels_last)"] = (lambda: inference(t_one), lambda: inference(t_batch))
        if have("keras"):
            kmodel = keras_model(model)
            candidates["keras 3 predict (jax)"] = (
                lambda: kmodel.predict_on_batch(one), lambda: kmodel.predict(batch, batch_size=BATCH, verbose=0))
        rows = measure_all(candidates)
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
    stem = "bench_inference_fast_cpu" if FAST else "bench_inference"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, RESULTS / f"{stem}.png")
    print(f"\nwrote {RESULTS / stem}.json and .png")


def plot(results: dict, path: pathlib.Path) -> None:
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
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
