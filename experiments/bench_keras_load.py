"""Loading a trained Keras model: time and peak memory of ``jaxcnn.load("model.keras")`` against
Keras 3's ``keras.saving.load_model``, each in a fresh process, on keras.applications models saved by
Keras (``weights=None``, 224x224).

    pip install -e ".[peers]"                         # Keras 3 (only to write the files and as the peer)
    python experiments/bench_keras_load.py [--models ResNet50,MobileNetV2] [--rounds 3]

Issue 14's targets: ResNet50 loads in under 2 s, at a peak memory of at most twice its parameters'
bytes. The peak is the process's maximum resident size (``ru_maxrss``) over what it held after its
imports, so it counts every copy made while reading. Writes experiments/results/bench_keras_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"

WORKER = r"""
import json, os, resource, sys, time
os.environ.setdefault("KERAS_BACKEND", "jax")
which, path = sys.argv[1], sys.argv[2]
if which == "jaxcnn":
    import jaxcnn, jaxcnn.config, jaxcnn.keras.weights, h5py  # imports before the baseline
    import jaxcnn.keras.json, jaxcnn.keras.functional, jaxcnn.keras.files
    load = lambda: jaxcnn.load(path)
else:
    import keras
    load = lambda: keras.saving.load_model(path, compile=False)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open("/proc/self/status") as f:
    rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
start = time.perf_counter()
model = load()
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_over_imports_mb": (peak - max(base, rss)) / 1024}))
"""


def write_models(names: list[str], folder: pathlib.Path) -> dict[str, dict]:
    code = r"""
import json, os, sys
os.environ.setdefault("KERAS_BACKEND", "jax")
import keras
out = {}
for name in sys.argv[2].split(","):
    model = getattr(keras.applications, name)(weights=None)
    path = os.path.join(sys.argv[1], name + ".keras")
    model.save(path)
    out[name] = {"path": path, "params": int(model.count_params()), "file_mb": os.path.getsize(path) / 1e6}
print(json.dumps(out))
"""
    result = subprocess.run([sys.executable, "-c", code, str(folder), ",".join(names)], capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(which: str, path: str) -> dict:
    result = subprocess.run([sys.executable, "-c", WORKER, which, path], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{which} on {path} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ResNet50,MobileNetV2,EfficientNetB0")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    names = args.models.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        files = write_models(names, pathlib.Path(folder))
        for name in names:
            info = files[name]
            params_mb = info["params"] * 4 / 1e6
            runs: dict[str, list[dict]] = {"jaxcnn": [], "keras": []}
            for _ in range(args.rounds):  # alternating, each in a fresh process
                for which in runs:
                    runs[which].append(measure(which, info["path"]))
            row = {"model": name, "params": info["params"], "params_mb": round(params_mb, 1),
                   "file_mb": round(info["file_mb"], 1)}
            for which, values in runs.items():
                row[f"{which}_s"] = round(statistics.median(v["seconds"] for v in values), 3)
                row[f"{which}_peak_mb"] = round(statistics.median(v["peak_over_imports_mb"] for v in values), 1)
            row["jaxcnn_peak_over_params"] = round(row["jaxcnn_peak_mb"] / params_mb, 2)
            row["keras_over_jaxcnn_time"] = round(row["keras_s"] / row["jaxcnn_s"], 2)
            rows.append(row)
            print(f"{name:16s} {info['params']:>11,} params ({params_mb:6.1f} MB): jaxcnn {row['jaxcnn_s']:.2f} s, "
                  f"peak +{row['jaxcnn_peak_mb']:.0f} MB (x{row['jaxcnn_peak_over_params']} of the parameters); "
                  f"Keras {row['keras_s']:.2f} s, peak +{row['keras_peak_mb']:.0f} MB; "
                  f"Keras's time / jaxcnn's: x{row['keras_over_jaxcnn_time']}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    import jax

    out = RESULTS / "bench_keras_load.json"
    out.write_text(json.dumps({"machine": f"{os.cpu_count()} cores", "jax": jax.__version__,
                               "rounds": args.rounds, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
