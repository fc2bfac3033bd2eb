"""`jaxcnn summary` of keras.applications models against Keras 3's build plus summary, end to end.

Run:   python experiments/bench_keras_summary.py [--keras-python PATH] [--repeats 3]
Shows: for ResNet50 and EfficientNetB7 (816 layers) at their default input sizes, read from the
       Keras 3 `to_json()` files in tests/data/keras_applications/: the wall time of
       `jaxcnn summary FILE` in a fresh process (process start, imports, the Keras JSON read, the
       proof with jax.eval_shape and the printed summary), and of a fresh Keras 3 process (JAX
       backend) that builds the same architecture with `weights=None` and prints its summary; the
       ratio of the two. Then the peak resident memory that proving ConvNeXtXLarge (350M parameters,
       1.4 GB as float32) adds to a process that has read it. Targets (issue 12): within 1.5 s and
       2.0 s, at most a fifth of Keras's time, and less than 50 MB for the proof.
       Writes experiments/results/bench_keras_summary.{json,png}.
Keras is needed only for the reference rows (`pip install keras`, or --keras-python naming a Python
that has it); without it those rows are left out.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "data" / "keras_applications"
RESULTS = ROOT / "experiments" / "results"
MODELS = ("ResNet50", "EfficientNetB7")

_PEAK = """
import gzip, json, resource, sys
import jaxcnn
doc = json.loads(gzip.decompress(open(sys.argv[1], "rb").read()))
model = jaxcnn.from_keras_json(doc["builds"]["default"]["json"])
model.count_params()  # the model read and planned: the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model.check()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"params": model.count_params(), "before_kib": before, "after_kib": after}))
"""

_KERAS = """
import os, sys
os.environ.setdefault("KERAS_BACKEND", "jax")
import keras
model = getattr(keras.applications, sys.argv[1])(weights=None)
model.summary()
"""


def wall(command: list[str], repeats: int, env: dict[str, str] | None = None) -> list[float]:
    """Seconds of each of ``repeats`` runs of ``command`` (its output discarded)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return times


def has_keras(python: str, env: dict[str, str]) -> bool:
    return subprocess.run([python, "-c", "import keras"], capture_output=True, env=env).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras-python", default=sys.executable, help="a Python with Keras 3 installed")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in MODELS:
            build = json.loads(gzip.decompress((FIXTURES / f"{name}.json.gz").read_bytes()))["builds"]["default"]
            path = pathlib.Path(folder) / f"{name}.json"
            path.write_text(build["json"])
            ours = wall([sys.executable, "-m", "jaxcnn", "summary", str(path)], args.repeats)
            row = {"model": name, "layers": len(build["layers"]), "jaxcnn_seconds": ours,
                   "jaxcnn_median": statistics.median(ours)}
            if has_keras(args.keras_python, env):
                theirs = wall([args.keras_python, "-c", _KERAS, name], args.repeats, env)
                row.update(keras_seconds=theirs, keras_median=statistics.median(theirs),
                           ratio=statistics.median(ours) / statistics.median(theirs))
            rows.append(row)
            keras_part = (f", Keras {row['keras_median']:.2f} s, jaxcnn/Keras {row['ratio']:.3f}"
                          if "ratio" in row else " (no Keras here)")
            print(f"{name} ({row['layers']} rows): jaxcnn summary {row['jaxcnn_median']:.2f} s{keras_part}")
    peak = json.loads(subprocess.run([sys.executable, "-c", _PEAK, str(FIXTURES / "ConvNeXtXLarge.json.gz")],
                                     check=True, capture_output=True, text=True).stdout)
    peak["growth_mb"] = (peak["after_kib"] - peak["before_kib"]) / 1024
    print(f"ConvNeXtXLarge ({peak['params']:,} params): proving it grew the peak resident memory by "
          f"{peak['growth_mb']:.1f} MB")
    RESULTS.mkdir(exist_ok=True)
    results = {"models": rows, "prove_convnext_xlarge": peak, "python": sys.version.split()[0]}
    (RESULTS / "bench_keras_summary.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(rows, RESULTS / "bench_keras_summary.png")


def plot(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [r["model"] for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["jaxcnn_median"] for r in rows], 0.4, label="jaxcnn summary")
    if all("keras_median" in r for r in rows):
        ax.bar([x + 0.2 for x in xs], [r["keras_median"] for r in rows], 0.4, label="Keras 3 build + summary")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("seconds, end to end")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
