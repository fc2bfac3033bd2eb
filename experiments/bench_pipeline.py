"""The input pipeline's throughput, alone and beside the training step, and a streamed run's peak
memory: the seed CIFAR CNN trained from a folder of 32x32 PNG files.

    python experiments/bench_pipeline.py [--images 50000] [--epochs 1]

1. Writes ``--images`` 32x32 RGB PNGs into runs/png32/<class>/ (10 classes; each image a class's
   colour layout, shifted and noised, about 2.4 KB: no real 32x32 set ships with a package here).
2. The pipeline alone: images per second decoded and batched (batch 128) by ``jaxcnn.stream.Feed``
   with 0 (this process), 1, 2 and 3 worker processes, over one epoch, after the workers' start.
   Twice: decoding the PNG files, and reading the decoded pixels from the cache the scan writes
   (``cache = true``, ``jaxcnn train``'s default), which ``Feed`` reads in that many threads of this
   process instead of worker processes (the JSON's ``workers`` then counts threads).
3. Beside the step: ``jaxcnn train`` of the seed CIFAR CNN (configs/cifar_cnn.toml's layers, batch
   128, Adam) on the folder streamed (the defaults; and without the cache, 1 and 2 workers) and on
   the same folder read into memory (``stream = false``), each in a fresh process: images per
   second of training and ``input_seconds``, the part of it the loop waited for a batch.
4. Peak memory of each of those runs: the largest sum, over the training process and its worker
   processes, of their proportional set sizes (PSS: a page shared by n processes counts 1/n), sampled
   every 50 ms from /proc.

Writes experiments/results/bench_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
FOLDER = ROOT / "runs" / "png32"
RESULTS = ROOT / "experiments" / "results" / "bench_pipeline.json"
BATCH = 128


def write_folder(count: int) -> int:
    """``count`` PNGs, 10 classes; reused when the folder already holds them."""
    from PIL import Image

    if FOLDER.exists() and sum(1 for _ in FOLDER.rglob("*.png")) == count:
        return count
    import shutil

    shutil.rmtree(FOLDER, ignore_errors=True)
    rng = np.random.default_rng(0)
    layouts = rng.integers(0, 256, (10, 8, 8, 3))  # each class's coarse colour layout
    for index in range(count):
        label = index % 10
        coarse = np.roll(layouts[label], rng.integers(-2, 3, 2), axis=(0, 1))
        image = np.kron(coarse, np.ones((4, 4, 1))) + rng.normal(0, 24, (32, 32, 3))
        folder = FOLDER / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB").save(folder / f"{index:06d}.png")
    return count


def pipeline_alone(workers: int, cache: pathlib.Path | None) -> dict:
    from jaxcnn.data import prepare_from_config
    from jaxcnn.stream import Feed, Plan

    train, _, _, _ = prepare_from_config({"name": "folder", "path": str(FOLDER), "validation": 0, "test": 0,
                                          "workers": 2}, input_shape=(32, 32, 3), seed=0, cache_dir=cache)
    assert (train.cache is not None) == (cache is not None)
    with Feed(train, Plan(len(train), BATCH, BATCH), shuffle=True, epochs=1, workers=workers) as feed:
        started = time.perf_counter()
        batches = feed.take(Plan(len(train), BATCH, BATCH).steps)
        first = next(batches)[0]
        begun = time.perf_counter()
        images = sum(int(batch.mask.sum()) for batch, _ in batches)
        seconds = time.perf_counter() - begun
    assert first.images.shape == (BATCH, 32, 32, 3)
    return {"workers": workers, "cache": cache is not None, "images_per_second": images / seconds,
            "start_seconds": begun - started}


def config_text(data: str, epochs: int) -> str:
    layers = (ROOT / "configs" / "cifar_cnn.toml").read_text()
    return layers + f"""
[data]
name = "folder"
path = "{FOLDER}"
validation = 0.02
test = 0.02
{data}

[train]
epochs = {epochs}
batch_size = {BATCH}
checkpoint_every_steps = 0

[train.optimizer]
name = "adam"
learning_rate = 0.001
"""


def _pss(pid: int) -> int:
    """The PSS of ``pid`` and its descendants, bytes (0 for a process gone meanwhile)."""
    total = 0
    try:
        for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
        for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _pss(int(child))
    except OSError:
        pass
    return total


def train_run(name: str, data: str, epochs: int, tmp: pathlib.Path) -> dict:
    config = tmp / f"{name}.toml"
    config.write_text(config_text(data, epochs))
    workdir = tmp / name
    process = subprocess.Popen([sys.executable, "-m", "jaxcnn.cli", "train", str(config), "--workdir", str(workdir),
                                "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0

    def sample() -> None:
        nonlocal peak
        while process.poll() is None:
            peak = max(peak, _pss(process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    _, err = process.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{name}: jaxcnn train failed:\n{err[-3000:]}")
    results = json.loads((workdir / "results.json").read_text())
    return {"run": name, "data": data, "images_per_second": results["images_per_second"],
            "train_seconds": results["train_seconds"], "input_seconds": results["input_seconds"],
            "test_accuracy": results["test_accuracy"], "wall_seconds": wall, "peak_pss_mb": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    import tempfile

    started = time.perf_counter()
    count = write_folder(args.images)
    print(f"{count:,} PNGs in {FOLDER} ({sum(p.stat().st_size for p in FOLDER.rglob('*.png')) / 2**20:.0f} MB), "
          f"{time.perf_counter() - started:.0f} s")
    alone = []
    with tempfile.TemporaryDirectory(dir=ROOT / "runs") as tmp:
        for cache in (None, pathlib.Path(tmp)):
            for workers in (0, 1, 2, 3):
                alone.append(pipeline_alone(workers, cache))
                print(f"pipeline alone, {'from the pixel cache' if cache else 'decoding the PNGs'}, "
                      f"{workers} {'threads' if cache else 'worker processes'}: "
                      f"{alone[-1]['images_per_second']:,.0f} images/s (started in {alone[-1]['start_seconds']:.1f} s)")
    runs = []
    with tempfile.TemporaryDirectory(dir=ROOT / "runs") as tmp:
        for name, data in (("memory", "stream = false"), ("streamed", "# the defaults: workers = 2, cache = true"),
                           ("streamed_no_cache_1", "workers = 1\ncache = false"),
                           ("streamed_no_cache_2", "workers = 2\ncache = false")):
            runs.append(train_run(name, data, args.epochs, pathlib.Path(tmp)))
            r = runs[-1]
            print(f"train {name:19s} {r['images_per_second']:7,.0f} images/s, waited for input "
                  f"{r['input_seconds']:.1f} of {r['train_seconds']:.1f} s, peak memory {r['peak_pss_mb']:,.0f} MB, "
                  f"test accuracy {r['test_accuracy']:.3f}, {r['wall_seconds']:.0f} s in all")
    memory = runs[0]["images_per_second"]
    for r in runs[1:]:
        print(f"{r['run']}: {r['images_per_second'] / memory:.2f}x the training throughput from memory")
    RESULTS.write_text(json.dumps({"images": count, "epochs": args.epochs, "batch": BATCH, "cores": os.cpu_count(),
                                   "pipeline_alone": alone, "training": runs}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
