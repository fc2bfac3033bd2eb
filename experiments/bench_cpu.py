"""Training and inference speed on CPU: jaxcnn (each lowering, bfloat16) against PyTorch, each alone in its process.

Run:   python experiments/bench_cpu.py [--models cifar_cnn,vgg11_32,vgg16_64,resnet20,mobilenetv2_like]
           [--arms ...] [--rounds 3] [--steps 10] [--no-inference] [--torch-python /tmp/torchenv/bin/python]
           [--out experiments/results/bench_cpu]
Quick check that it works: python experiments/bench_cpu.py --rounds 1 --steps 2 --models cifar_cnn --no-inference
A full run (5 models, 7 arms, 3 rounds, inference) takes about half an hour on the 2-core machine
when it is quiet; torch.compile's first round compiles for about a minute a model.
Needs: jaxcnn; PyTorch 2.13 (CPU build) for the peers, in this interpreter or in --torch-python's
(a venv made with --system-site-packages, so it sees jaxcnn too). Without it the torch arms are skipped.
Writes <out>.json and <out>.md (the table the README includes).

Why a process per measurement: PyTorch ran slower when it shared a process with JAX (issue 13: 19.7
against 16.6 ms a seed-CNN step), and XLA's and OpenMP's worker threads of one framework compete with
the other's. So every (model, arm) runs in a fresh subprocess of its own (`--worker`), which builds
the model, times its first training step (compilation included), then ``--steps`` steps, then
inference (batch-1 latency, batch-256 throughput), and prints one JSON line. The parent runs
``--rounds`` rounds; in each it visits the models, and for each model every arm in turn, rotating the
arms' order from round to round, so a slow spell of this shared machine does not fall on one arm. A
figure is the median over all rounds' timed calls; ratios are against PyTorch eager of the same model.

Arms: ``pytorch`` (eager, channels_last, float32), ``torch.compile`` (inductor; recorded as failed
where it does not work here), ``jaxcnn`` (the automatic lowering choice), ``jaxcnn conv`` / ``jaxcnn
patches`` / ``jaxcnn onednn`` (every convolution layer forced to that lowering where the layer takes
it, and under ``onednn`` every pooling layer too; ``conv`` and ``patches`` leave the pools' automatic
choice, since forcing them to ``reduce_window`` made the seed CNN's max-pooling gradient two thirds of
its step, 79 ms, in experiments/profile_step.py; ``onednn`` runs only where
``jaxcnn.onednn.available()``), and ``jaxcnn bfloat16`` (``precision="bfloat16"``). Every worker has
glibc malloc tuned as the ``jaxcnn`` command tunes it (``--no-malloc-tuning`` to compare), and the
jaxcnn workers share a persistent compilation cache made fresh for the run (jaxcnn.compile_cache),
so round 1's first step is compiled ("cold") and later rounds' load it ("warm"); both are reported.

Models (issue 13): the seed CIFAR CNN (batch 128, Adam), VGG-11/32 (batch 64, SGD momentum 0.9),
VGG16 at 64x64 (batch 16, SGD momentum), ResNet-20 at 32x32 with BatchNormalization (batch 128,
SGD momentum), the MobileNetV2-style net (batch 128, Adam). Random data of the model's input shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from timing import call_seconds

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
MODELS = {
    "cifar_cnn": {"config": "cifar_cnn.toml", "input": None, "batch": 128, "optimizer": "adam"},
    "vgg11_32": {"config": "vgg11_32.toml", "input": None, "batch": 64, "optimizer": "sgd"},
    "vgg16_64": {"config": "vgg16.toml", "input": [64, 64, 3], "batch": 16, "optimizer": "sgd"},
    "resnet20": {"config": "resnet20.toml", "input": None, "batch": 128, "optimizer": "sgd"},
    "mobilenetv2_like": {"config": "mobilenetv2_like.toml", "input": None, "batch": 128, "optimizer": "adam"},
}
TORCH_ARMS = ("pytorch", "torch.compile")
JAX_ARMS = ("jaxcnn", "jaxcnn conv", "jaxcnn patches", "jaxcnn onednn", "jaxcnn bfloat16")
ARMS = (*TORCH_ARMS, *JAX_ARMS)
REFERENCE = "pytorch"
CONV_TYPES = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose")
POOL_TYPES = ("MaxPooling2D", "AveragePooling2D")
FORCED = {"conv": {"conv": "conv", "pool": None}, "patches": {"conv": "patches", "pool": None},
          "onednn": {"conv": "onednn", "pool": "onednn"}}
INFER_BATCH = 256


# ---- the worker: one (model, arm) alone in this process -------------------------------------------


@dataclasses.dataclass(frozen=True)
class Job:
    model: str
    arm: str
    steps: int
    inference: bool
    malloc: bool


def force_lowering(doc: dict[str, Any], lowering: str) -> dict[str, Any]:
    """The parsed config ``doc`` with every conv and pool layer that has a ``lowering`` field set to
    ``lowering``'s choice for its kind (:data:`FORCED`; ``None`` there: left automatic)."""
    import jaxcnn.layers

    layers = []
    for table in doc["layers"]:
        kind = table.get("type")
        group = "conv" if kind in CONV_TYPES else "pool" if kind in POOL_TYPES else None
        value = FORCED[lowering][group] if group else None
        cls = getattr(jaxcnn.layers, kind, None) if group else None
        if value is not None and dataclasses.is_dataclass(cls) and "lowering" in {f.name for f in dataclasses.fields(cls)}:
            table = {**table, "lowering": value}
        layers.append(table)
    return {**doc, "layers": layers}


def _load_model(name: str, lowering: str | None = None) -> Any:
    """The benchmark's model, its conv and pool layers forced to ``lowering`` (:func:`force_lowering`)."""
    from jaxcnn.config import from_dict, read_document

    setting = MODELS[name]
    path = ROOT / "configs" / setting["config"]
    doc = read_document(path)
    if lowering is not None:
        doc = force_lowering(doc, lowering)
    model = from_dict(doc, source=str(path), require_input_shape=True)
    return model.with_input_shape(setting["input"]) if setting["input"] else model


def _data(model: Any, batch: int) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *model.input_shape)).astype(np.float32)
    return x, rng.integers(0, model.output_shape[-1], batch).astype(np.int32)


def _timed(fn: Any, n: int) -> list[float]:
    """Milliseconds of each of ``n`` calls of ``fn()`` (which waits for its result)."""
    return [seconds * 1000 for seconds in call_seconds(fn, n)]


def _measure(train_step: Any, infer: Any, job: Job, batch: int) -> dict[str, Any]:
    """First step (compilation included), ``job.steps`` timed steps; then inference at batch 1 and
    :data:`INFER_BATCH` (each call's first run untimed)."""
    start = time.perf_counter()
    train_step()
    result: dict[str, Any] = {"first_step_s": time.perf_counter() - start}
    train_step()
    result["step_ms"] = _timed(train_step, job.steps)
    if job.inference:
        for size, key, calls in ((1, "infer_b1_ms", max(10, 2 * job.steps)), (INFER_BATCH, "infer_b256_ms", 3)):
            call = infer(size)
            call()
            result[key] = _timed(call, calls)
    return result


def _torch_worker(job: Job, model: Any, batch: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from peers import torch_count_params, torch_graph_model

    torch.set_num_threads(os.cpu_count() or 1)
    net = torch_graph_model(model)
    if torch_count_params(net) != model.count_params():
        raise RuntimeError(f"the PyTorch model has {torch_count_params(net):,} parameters, jaxcnn's "
                           f"{model.count_params():,}")
    x, y = _data(model, batch)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(memory_format=torch.channels_last)
    ty = torch.from_numpy(y.astype(np.int64))
    setting = MODELS[job.model]
    opt = (torch.optim.Adam(net.parameters(), 1e-3) if setting["optimizer"] == "adam"
           else torch.optim.SGD(net.parameters(), 0.01, momentum=0.9))
    run = torch.compile(net) if job.arm == "torch.compile" else net
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        net.train()
        opt.zero_grad(set_to_none=True)
        loss_fn(run(tx), ty).backward()
        opt.step()

    def infer(size: int) -> Any:
        images = torch.from_numpy(_data(model, size)[0].transpose(0, 3, 1, 2).copy()).to(
            memory_format=torch.channels_last)

        def call() -> None:
            net.eval()
            with torch.inference_mode():
                run(images)

        return call

    return _measure(step, infer, job, batch)


def _jax_worker(job: Job, batch: int) -> dict[str, Any]:
    import jax

    import jaxcnn

    lowering = job.arm.split(" ", 1)[1] if job.arm in ("jaxcnn conv", "jaxcnn patches", "jaxcnn onednn") else None
    if lowering == "onednn":
        try:
            from jaxcnn import onednn
        except ImportError:
            return {"skipped": "jaxcnn.onednn does not exist in this checkout"}
        if not onednn.available():
            return {"skipped": f"onednn unavailable: {onednn.unavailable_reason()}"}
    model = _load_model(job.model, lowering)
    setting = MODELS[job.model]
    optimizer = ({"name": "adam", "learning_rate": 1e-3} if setting["optimizer"] == "adam"
                 else {"name": "sgd", "learning_rate": 0.01, "momentum": 0.9})
    precision = "bfloat16" if job.arm == "jaxcnn bfloat16" else "float32"
    compiled = jaxcnn.compile(model, optimizer, "sparse_categorical_crossentropy", precision=precision)
    x, y = (jax.device_put(a) for a in _data(model, batch))
    box = [compiled.init(0)]

    def step() -> None:
        box[0], metrics = compiled.train_step(box[0], (x, y))
        jax.block_until_ready(metrics)

    def infer(size: int) -> Any:
        images = jax.device_put(_data(model, size)[0])
        return lambda: jax.block_until_ready(compiled.predict(box[0], images))

    return _measure(step, infer, job, batch)


def worker(job: Job) -> dict[str, Any]:
    """Measure one (model, arm) in this process; the figures as a dict (``skipped`` or ``error``)."""
    if job.malloc:
        from jaxcnn.host import tune_malloc

        tune_malloc()
    if job.arm in TORCH_ARMS:
        model = _load_model(job.model)  # shapes only: jaxcnn's formulas start no JAX backend
        return _torch_worker(job, model, MODELS[job.model]["batch"])
    from jaxcnn import compile_cache

    compile_cache.enable()  # the run's fresh folder (JAXCNN_COMPILATION_CACHE, set by the parent)
    return _jax_worker(job, MODELS[job.model]["batch"])


# ---- the parent: rounds of subprocesses -------------------------------------------------------------


def _torch_python(given: str | None) -> str | None:
    """An interpreter with PyTorch: ``given``, this one, or /tmp/torchenv's; None if none has it."""
    candidates = [given] if given else [sys.executable, "/tmp/torchenv/bin/python"]
    for python in candidates:
        if python == sys.executable and importlib.util.find_spec("torch") is not None:
            return python
        if python and python != sys.executable and pathlib.Path(python).exists():
            probe = subprocess.run([python, "-c", "import torch"], capture_output=True)
            if probe.returncode == 0:
                return python
    return None


def _run_worker(python: str, job: Job, env: dict[str, str], timeout: float) -> dict[str, Any]:
    command = [python, str(pathlib.Path(__file__).resolve()), "--worker", json.dumps(dataclasses.asdict(job))]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {done.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per model and arm: medians over every round's timed calls, the cold and warm first step,
    and ratios to :data:`REFERENCE` (above 1: faster than PyTorch eager)."""
    models: dict[str, Any] = {}
    for name, arms in raw.items():
        rows: dict[str, Any] = {}
        for arm, runs in arms.items():
            good = [r for r in runs if "step_ms" in r]
            note = next((r.get("skipped") or r.get("error") for r in runs if "step_ms" not in r), None)
            row: dict[str, Any] = {"rounds": len(good), "note": note}
            if good:
                row["step_ms"] = _median([t for r in good for t in r["step_ms"]])
                row["round_medians_ms"] = [statistics.median(r["step_ms"]) for r in good]
                row["first_step_cold_s"] = good[0]["first_step_s"]
                row["first_step_warm_s"] = _median([r["first_step_s"] for r in good[1:]])
                for key in ("infer_b1_ms", "infer_b256_ms"):
                    row[key] = _median([t for r in good for t in r.get(key, [])])
                if row["infer_b256_ms"]:
                    row["infer_b256_images_per_s"] = INFER_BATCH / row["infer_b256_ms"] * 1000
            rows[arm] = row
        reference = rows.get(REFERENCE, {})
        for row in rows.values():
            for key in ("step_ms", "infer_b1_ms", "infer_b256_ms"):
                if row.get(key) and reference.get(key):
                    row[f"{key.removesuffix('_ms')}_vs_pytorch"] = reference[key] / row[key]
        setting = MODELS[name]
        models[name] = {"batch": setting["batch"], "optimizer": setting["optimizer"], "arms": rows}
    return models


def _cell(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(results: dict[str, Any]) -> str:
    """The table for the README: per model and arm, the training step and inference, with ratios
    to PyTorch eager (x above 1: faster)."""
    machine = results["machine"]
    lines = [f"Machine: {machine['cpu']}, {machine['cores']} cores; jax {machine['jax']}, torch {machine['torch']}; "
             f"{results['rounds']} rounds of {results['steps']} steps, each framework alone in its process "
             f"(load average {machine['load_average'][0]:.1f} at the start). x PyTorch: PyTorch eager's time over "
             "the arm's (above 1: faster than PyTorch). First step: compilation included; warm: loaded from "
             "the persistent compilation cache (jaxcnn) or inductor's cache (torch.compile).", "",
             "| model | arm | train step ms | x PyTorch | first step cold / warm s | batch-1 ms | x PyTorch "
             "| batch-256 images/s | x PyTorch |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, entry in results["models"].items():
        for arm, row in entry["arms"].items():
            if "step_ms" not in row:
                lines.append(f"| {name} | {arm} | {row['note'] or 'not run'} | | | | | | |")
                continue
            first = f"{row['first_step_cold_s']:.1f}" + (f" / {row['first_step_warm_s']:.1f}"
                                                          if row.get("first_step_warm_s") is not None else "")
            lines.append(
                f"| {name} (batch {entry['batch']}, {entry['optimizer']}) | {arm} | {row['step_ms']:.1f} | "
                f"{_cell(row.get('step_vs_pytorch'), '.2f')} | {first} | {_cell(row.get('infer_b1_ms'), '.2f')} | "
                f"{_cell(row.get('infer_b1_vs_pytorch'), '.2f')} | {_cell(row.get('infer_b256_images_per_s'), ',.0f')} | "
                f"{_cell(row.get('infer_b256_vs_pytorch'), '.2f')} |")
    return "\n".join(lines) + "\n"


def _machine(torch_python: str | None) -> dict[str, Any]:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    torch_version = None
    if torch_python:
        probe = subprocess.run([torch_python, "-c", "import torch; print(torch.__version__)"],
                               capture_output=True, text=True)
        torch_version = probe.stdout.strip() or None
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": os.getloadavg(),
            "platform": platform.platform(), "jax": jax.__version__,
            "torch": torch_version, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, among: {', '.join(ARMS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-inference", action="store_true")
    parser.add_argument("--no-malloc-tuning", action="store_true")
    parser.add_argument("--torch-python", help="an interpreter with PyTorch (default: this one, or /tmp/torchenv's)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one worker may take")
    parser.add_argument("--out", default=str(RESULTS / "bench_cpu"), help="where <out>.json and <out>.md go")
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, str(HERE))
        job = Job(**json.loads(args.worker))
        try:
            print(json.dumps(worker(job)), flush=True)
        except Exception as error:  # one line for the parent's table; the traceback on stderr
            import traceback

            traceback.print_exc()
            print(json.dumps({"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}), flush=True)
        return

    models = [m for m in args.models.split(",") if m]
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [m for m in models if m not in MODELS] + [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown model or arm {unknown[0]!r}")
    torch_python = _torch_python(args.torch_python)
    cache = tempfile.mkdtemp(prefix="jaxcnn-bench-cache-")
    env = {**os.environ, "JAXCNN_COMPILATION_CACHE": cache,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {m: {a: [] for a in arms} for m in models}
    try:
        for round_index in range(args.rounds):
            order = arms[round_index % len(arms):] + arms[:round_index % len(arms)]
            for name in models:
                for arm in order:
                    python = torch_python if arm in TORCH_ARMS else sys.executable
                    if python is None:
                        raw[name][arm].append({"skipped": "PyTorch is not installed (--torch-python)"})
                        continue
                    job = Job(name, arm, args.steps, not args.no_inference, not args.no_malloc_tuning)
                    result = _run_worker(python, job, env, args.timeout)
                    raw[name][arm].append(result)
                    figure = (f"step {statistics.median(result['step_ms']):8.1f} ms, first {result['first_step_s']:6.2f} s"
                              if "step_ms" in result else result.get("skipped") or result.get("error"))
                    print(f"round {round_index + 1}/{args.rounds}  {name:17s} {arm:15s} {figure}", flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    results = {"machine": _machine(torch_python), "rounds": args.rounds, "steps": args.steps,
               "malloc_tuning": not args.no_malloc_tuning, "inference_batch": INFER_BATCH,
               "models": summarize(raw), "raw": raw}
    table = markdown(results)
    print("\n" + table)
    from jaxcnn.files import write_atomic

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    write_atomic(out.with_suffix(".md"), table)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
