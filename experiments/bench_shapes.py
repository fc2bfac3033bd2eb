"""Shape checks with no compute: how fast and how lean jaxcnn's proof and summary are, against Keras 3.

Run:   python experiments/bench_shapes.py            (writes experiments/results/bench_shapes.{json,png})
Needs: jaxcnn; Keras 3 (`pip install -e ".[peers]"`) for the comparison, matplotlib for the plot.

It measures in one run, on the machine it runs on:
  1. `jaxcnn summary configs/vgg16.toml` end to end in a fresh process (start-up and imports
     included): wall time and peak RSS, median of 5. Target on the 2-core CPU: 1.5 s, 300 MB.
  2. check + summary of VGG16 in a warm process (median of 10). Target: 0.15 s.
  3. check + summary of 10, 100 and 1,000-layer lists, to show linear growth (time per layer).
  4. the peers on the same model, each in a fresh process: Keras 3 (JAX backend) building VGG16 and
     printing its summary, and Flax's own `nn.tabulate` of the same Flax module; and the ratios.

The closing note of the shape-check issue quotes the figures of the run committed in results/.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import textwrap
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
VGG16 = ROOT / "configs" / "vgg16.toml"


def measure_process(argv: list[str], env: dict[str, str] | None = None, repeat: int = 5) -> dict:
    """Median wall time (start to exit) and peak RSS (the child's own, from ``os.wait4``) of a command."""
    walls, peaks = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **(env or {})})
        out = proc.stdout.read()
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - start)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv} failed:\n{err[-3000:]}")
        peaks.append(usage.ru_maxrss / 1024)  # KB on Linux
    return {"command": " ".join(argv), "wall_s": statistics.median(walls), "wall_all_s": walls,
            "peak_rss_mb": statistics.median(peaks), "output_tail": out[-400:]}


def warm_vgg16(repeat: int = 10) -> dict:
    """check + summary in a warm process. The proofs memo is cleared before each repetition, so each
    one traces the Flax code again (the summary then reuses that proof, as it does in real use)."""
    import jaxcnn
    from jaxcnn import check

    model = jaxcnn.load(VGG16)
    model.summary(print_fn=None)  # warm-up: imports, first traces
    times = []
    for _ in range(repeat):
        check._MEMO.clear()
        start = time.perf_counter()
        model.check()
        model.summary(print_fn=None)
        times.append(time.perf_counter() - start)
    return {"check_and_summary_s": statistics.median(times), "all_s": times}


def scaling(sizes=(10, 100, 1000), repeat: int = 3) -> list[dict]:
    import jaxcnn
    from jaxcnn import check
    from jaxcnn.layers import Conv2D, Dense, Flatten

    rows = []
    for n in sizes:
        layers = [Conv2D(8, 3, padding="same", activation="relu") for _ in range(n - 2)]
        model = jaxcnn.Sequential([*layers, Flatten(), Dense(10)], input_shape=(16, 16, 8))
        times = []
        for _ in range(repeat):
            check._MEMO.clear()
            start = time.perf_counter()
            model.check()
            model.summary(print_fn=None)
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        rows.append({"layers": n, "check_and_summary_s": t, "per_layer_ms": 1000 * t / n})
        print(f"  {n:5d} layers: {t:.3f} s ({1000 * t / n:.2f} ms per layer)", flush=True)
    return rows


KERAS_VGG16 = textwrap.dedent("""
    import keras
    from keras import layers as L
    blocks = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
    model = keras.Sequential([keras.Input((224, 224, 3))])
    for filters, n in blocks:
        for _ in range(n):
            model.add(L.Conv2D(filters, (3, 3), padding="same", activation="relu"))
        model.add(L.MaxPooling2D((2, 2), strides=(2, 2)))
    model.add(L.Flatten())
    model.add(L.Dense(4096, activation="relu"))
    model.add(L.Dense(4096, activation="relu"))
    model.add(L.Dense(1000, activation="softmax"))
    model.summary()
    assert model.count_params() == 138357544
""")

FLAX_TABULATE = textwrap.dedent("""
    import jax, jax.numpy as jnp, flax.linen as nn
    import jaxcnn
    module = jaxcnn.load("configs/vgg16.toml").module()
    print(nn.tabulate(module, jax.random.key(0))(jnp.zeros((1, 224, 224, 3))))
""")


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    import jax

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"jax {jax.__version__}", flush=True)
    results: dict = {"machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version(), "jax": jax.__version__}}

    print("1. `jaxcnn summary configs/vgg16.toml`, fresh process (median of 5)", flush=True)
    jaxcnn_cmd = shutil.which("jaxcnn")
    e2e = measure_process([jaxcnn_cmd, "summary", "configs/vgg16.toml"] if jaxcnn_cmd else
                          [sys.executable, "-m", "jaxcnn.cli", "summary", "configs/vgg16.toml"])
    assert "Total params: 138,357,544" in e2e["output_tail"]
    print(f"   {e2e['wall_s']:.2f} s wall, {e2e['peak_rss_mb']:.0f} MB peak RSS (targets: 1.5 s, 300 MB)")
    results["jaxcnn_summary_vgg16_process"] = e2e

    print("2. check + summary of VGG16 in a warm process (median of 10)", flush=True)
    warm = warm_vgg16()
    print(f"   {warm['check_and_summary_s'] * 1000:.0f} ms (target: 150 ms)")
    results["jaxcnn_warm_vgg16"] = warm

    print("3. check + summary of N-layer lists (median of 3)", flush=True)
    results["scaling"] = scaling()

    print("4. peers on VGG16, fresh process each (median of 3)", flush=True)
    peers = {}
    if have("keras"):
        peers["keras3_build_and_summary"] = measure_process([sys.executable, "-c", KERAS_VGG16], {"KERAS_BACKEND": "jax"}, repeat=3)
    else:
        print("   keras not installed (pip install -e '.[peers]'): skipped")
    peers["flax_tabulate"] = measure_process([sys.executable, "-c", FLAX_TABULATE], repeat=3)
    for name, fig in peers.items():
        ratio_t = fig["wall_s"] / e2e["wall_s"]
        ratio_m = fig["peak_rss_mb"] / e2e["peak_rss_mb"]
        fig["ratio_wall_vs_jaxcnn"], fig["ratio_peak_rss_vs_jaxcnn"] = ratio_t, ratio_m
        print(f"   {name}: {fig['wall_s']:.2f} s, {fig['peak_rss_mb']:.0f} MB; jaxcnn is {ratio_t:.1f}x faster "
              f"and uses {ratio_m:.1f}x less peak memory")
    results["peers_vgg16_process"] = peers

    RESULTS.mkdir(parents=True, exist_ok=True)
    for fig in [e2e, *peers.values()]:
        fig.pop("output_tail", None)
    (RESULTS / "bench_shapes.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS / 'bench_shapes.json'}")
    plot(results)


def plot(results: dict) -> None:
    if not have("matplotlib"):
        print("matplotlib not installed: no plot")
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["jaxcnn summary", *results["peers_vgg16_process"]]
    figs = [results["jaxcnn_summary_vgg16_process"], *results["peers_vgg16_process"].values()]
    x = range(len(names))
    left.bar([i - 0.2 for i in x], [f["wall_s"] for f in figs], 0.4, label="wall (s)")
    ax2 = left.twinx()
    ax2.bar([i + 0.2 for i in x], [f["peak_rss_mb"] for f in figs], 0.4, color="tab:orange", label="peak RSS (MB)")
    left.set_xticks(list(x), names, fontsize=8)
    left.set_ylabel("wall time, fresh process (s)")
    ax2.set_ylabel("peak RSS (MB)")
    left.set_title("VGG16 (138,357,544 params): summary in a fresh process")
    left.legend(handles=[*left.patches[:1], *ax2.patches[:1]], labels=["wall (s)", "peak RSS (MB)"],
                loc="upper right")
    rows = results["scaling"]
    right.loglog([r["layers"] for r in rows], [r["check_and_summary_s"] for r in rows], "o-")
    right.set_xlabel("layers")
    right.set_ylabel("check + summary, warm (s)")
    right.set_title("growth with the layer count")
    fig.tight_layout()
    fig.savefig(RESULTS / "bench_shapes.png", dpi=100)
    print(f"wrote {RESULTS / 'bench_shapes.png'}")


if __name__ == "__main__":
    main()
