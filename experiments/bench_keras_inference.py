"""Inference of Keras-trained models: jaxcnn against Keras 3 and PyTorch on the same weights, each
framework alone in its own process.

    pip install -e ".[peers]"                         # Keras 3 and torch==2.13.0 (CPU)
    python experiments/bench_keras_inference.py [--models ResNet50,MobileNetV2,EfficientNetB0] [--rounds 2]

Keras writes each keras.applications model (``weights=None``, 224x224, BatchNormalization statistics
moved off 0 and 1) to a ``.keras`` file. Then, in a fresh process per (model, arm, round):

- ``jaxcnn``: ``jaxcnn.load(file)``, ``compile``, the jitted ``predict``;
- ``jaxcnn export``: the file converted into an export file (``jaxcnn.export.export_keras``), served
  by ``jaxcnn.artifact`` as ``jaxcnn predict`` serves it;
- ``keras``: ``keras.saving.load_model(file).predict(x)`` on JAX;
- ``pytorch``: the same architecture in PyTorch eager, channels_last, with the same weights copied in:
  :class:`TorchGraph` below, built from the model's layer graph (each Keras layer one torch op:
  ``F.conv2d`` with Keras's padding, ``F.batch_norm`` in inference mode, ...), so that it is the
  architecture Keras saved, layer for layer. Its graph and weights are handed over in files, so that
  the PyTorch process imports neither JAX nor Keras.

Each reports the batch-1 latency (median of 30 calls after 3 warm-ups) and the batch-32 throughput
(32 / the median of 5 calls), and its outputs on 4 fixed images, compared with Keras's (the largest
absolute difference of the probabilities is printed: the same model, or the comparison is void).
Issue 14's targets: never slower than Keras 3 on JAX, and at least PyTorch's throughput.
Writes experiments/results/bench_keras_inference.{json,md}.
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

from timing import median_seconds

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
ARMS = ("jaxcnn", "jaxcnn export", "keras", "pytorch")
LATENCY_CALLS, THROUGHPUT_CALLS, BATCH = 30, 5, 32


# ---- the workers (each in its own process) ------------------------------------------------------------


def _measure(predict, shape: tuple[int, ...]) -> dict:
    import numpy as np

    rng = np.random.default_rng(7)
    one = rng.uniform(0, 255, (1, *shape)).astype(np.float32)
    batch = rng.uniform(0, 255, (BATCH, *shape)).astype(np.float32)
    probe = np.random.default_rng(1).uniform(0, 255, (4, *shape)).astype(np.float32)
    latency = median_seconds(lambda: predict(one), LATENCY_CALLS)
    throughput = BATCH / median_seconds(lambda: predict(batch), THROUGHPUT_CALLS)
    return {"latency_ms": latency * 1e3, "images_per_s": throughput, "outputs": np.asarray(predict(probe)).tolist()}


def worker_jaxcnn(path: str, export: bool) -> dict:
    import jax
    import numpy as np

    import jaxcnn

    if export:
        from jaxcnn.artifact import load_artifact

        artifact = load_artifact(path)  # a Keras file: converted once, in memory, as `jaxcnn predict` does
        shape = tuple(artifact.manifest["input_signature"]["shape"][1:])
        return _measure(lambda x: artifact.predict(x, batch_size=len(x)), shape)
    model = jaxcnn.load(path)
    compiled = jaxcnn.compile(model)
    state = compiled.init()
    return _measure(lambda x: np.asarray(jax.block_until_ready(compiled.predict(state, x))), model.input_shape)


def worker_keras(path: str) -> dict:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    model = keras.saving.load_model(path, compile=False)
    return _measure(lambda x: model.predict(x, verbose=0, batch_size=len(x)), tuple(model.input_shape[1:]))


def worker_torch(folder: str) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    graph = json.loads(pathlib.Path(folder, "graph.json").read_text())
    with np.load(pathlib.Path(folder, "weights.npz")) as npz:
        weights = {k: npz[k] for k in npz.files}
    net = TorchGraph(graph, weights).eval()
    shape = tuple(graph["input_shape"])

    def predict(x):
        with torch.inference_mode():
            t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
            return net(t).numpy()
    return _measure(predict, shape)


class _Missing(Exception):
    pass


def TorchGraph(graph: dict, weights: dict):  # noqa: N802 - a class built at run time (torch is imported late)
    """The Keras model's layer graph in PyTorch eager: NCHW tensors in channels_last memory, one torch
    op per Keras layer, Keras's arithmetic (its SAME padding, its BatchNormalization epsilon, its
    Normalization's ``max(sqrt(var), eps)``)."""
    import math

    import numpy as np
    import torch
    import torch.nn.functional as F

    def pads(size: int, kernel: int, stride: int, dilation: int, padding: str) -> tuple[int, int]:
        if padding == "valid":
            return 0, 0
        effective = (kernel - 1) * dilation + 1
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + effective - size, 0)
        return total // 2, total - total // 2

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.nodes = graph["nodes"]
            self.tensors = torch.nn.ParameterDict()
            for key, value in weights.items():
                name, _, role = key.rpartition(":")
                array = torch.from_numpy(np.ascontiguousarray(value))
                if role in ("kernel", "depthwise_kernel") and array.ndim == 4:  # HWIO -> OIHW
                    kind = next(n["type"] for n in self.nodes if n["name"] == name)
                    if kind == "DepthwiseConv2D":  # (kh, kw, C, m) -> (C*m, 1, kh, kw)
                        kh, kw, c, m = array.shape
                        array = array.reshape(kh, kw, 1, c * m).permute(3, 2, 0, 1)
                    else:
                        array = array.permute(3, 2, 0, 1)
                    array = array.contiguous(memory_format=torch.channels_last)
                elif role == "kernel" and array.ndim == 2:  # Dense: (in, out) -> (out, in)
                    array = array.t().contiguous()
                self.tensors[key.replace(".", "_").replace(":", "__")] = torch.nn.Parameter(array, requires_grad=False)

        def w(self, name: str, role: str):
            key = f"{name}:{role}".replace(".", "_").replace(":", "__")
            return self.tensors[key] if key in self.tensors else None

        def forward(self, x):
            values = {graph["input_name"]: x}
            for node in self.nodes:
                a = node["args"]
                inputs = [values[i] for i in node["inputs"]]
                x = inputs[0]
                kind, name = node["type"], node["name"]
                if kind in ("Conv2D", "DepthwiseConv2D"):
                    kernel = self.w(name, "kernel")
                    (kh, kw), (sh, sw), (dh, dw) = kernel.shape[2:], a["strides"], a["dilation_rate"]
                    top, bottom = pads(x.shape[2], kh, sh, dh, a["padding"])
                    left, right = pads(x.shape[3], kw, sw, dw, a["padding"])
                    if top or bottom or left or right:
                        x = F.pad(x, (left, right, top, bottom))
                    groups = x.shape[1] if kind == "DepthwiseConv2D" else a.get("groups", 1)
                    x = F.conv2d(x, kernel, self.w(name, "bias"), (sh, sw), 0, (dh, dw), groups)
                    x = activation(x, a.get("activation"))
                elif kind == "BatchNormalization":
                    x = F.batch_norm(x, self.w(name, "mean"), self.w(name, "var"), self.w(name, "scale"),
                                     self.w(name, "bias"), False, 0.0, a["epsilon"])
                elif kind == "Activation":
                    x = activation(x, a["activation"])
                elif kind == "ReLU":
                    if a.get("negative_slope") or a.get("threshold"):
                        raise _Missing("ReLU with negative_slope or threshold")
                    x = F.relu(x) if a.get("max_value") is None else F.hardtanh(x, 0.0, a["max_value"])
                elif kind == "ZeroPadding2D":
                    (t, b), (l, r) = a["padding"]
                    x = F.pad(x, (l, r, t, b))
                elif kind == "MaxPooling2D":
                    (ph, pw), (sh, sw) = a["pool_size"], a["strides"] or a["pool_size"]
                    top, bottom = pads(x.shape[2], ph, sh, 1, a["padding"])
                    left, right = pads(x.shape[3], pw, sw, 1, a["padding"])
                    if top or bottom or left or right:
                        x = F.pad(x, (left, right, top, bottom), value=-math.inf)
                    x = F.max_pool2d(x, (ph, pw), (sh, sw))
                elif kind == "GlobalAveragePooling2D":
                    x = x.mean((2, 3), keepdim=bool(a.get("keepdims")))
                elif kind == "Dense":
                    x = activation(F.linear(x, self.w(name, "kernel"), self.w(name, "bias")), a.get("activation"))
                elif kind == "Add":
                    x = sum(inputs[1:], inputs[0])
                elif kind == "Multiply":
                    for other in inputs[1:]:
                        x = x * other
                elif kind == "Reshape":
                    target = tuple(a["target_shape"])
                    if x.ndim == 2 and target[:-1] == (1, 1):  # (C,) -> (1, 1, C): NCHW (C, 1, 1)
                        x = x.reshape(x.shape[0], target[-1], 1, 1)
                    elif x.ndim == 4 and tuple(x.shape[2:]) == (1, 1) and len(target) == 1:
                        x = x.reshape(x.shape[0], target[0])
                    else:
                        raise _Missing(f"Reshape to {target}")
                elif kind == "Rescaling":
                    x = x * a["scale"] + a.get("offset", 0.0)
                elif kind == "Normalization":
                    mean, var = self.w(name, "mean"), self.w(name, "variance")
                    x = (x - mean.reshape(1, -1, 1, 1)) / torch.clamp(var.reshape(1, -1, 1, 1).sqrt(), min=1e-7)
                elif kind == "Dropout":
                    pass
                else:
                    raise _Missing(kind)
                values[name] = x
            return values[graph["output_name"]]

    def activation(x, name):
        if name in (None, "linear"):
            return x
        return {"relu": F.relu, "swish": F.silu, "silu": F.silu, "sigmoid": torch.sigmoid,
                "softmax": lambda t: F.softmax(t, dim=1)}[name](x)

    return Net()


def describe(path: str, folder: str) -> None:
    """Write the Keras file's layer graph (graph.json) and weights (weights.npz) for the PyTorch worker."""
    import numpy as np

    import jaxcnn

    model = jaxcnn.load(path)
    fields = ("strides", "dilation_rate", "padding", "groups", "activation", "epsilon", "max_value",
              "negative_slope", "threshold", "pool_size", "keepdims", "target_shape", "scale", "offset")
    nodes = []
    for node in model.nodes:
        if node.is_input:
            continue
        args = {f: getattr(node.layer, f) for f in fields if hasattr(node.layer, f)}
        args = json.loads(json.dumps(args, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))
        nodes.append({"name": node.name, "type": node.layer.type, "inputs": list(node.inputs), "args": args})
    arrays = {}
    for collection in ("params", "batch_stats"):
        for layer, values in getattr(model.weights, collection).items():
            for role, value in values.items():
                arrays[f"{layer}:{role}"] = np.asarray(value, np.float32)
    pathlib.Path(folder, "graph.json").write_text(json.dumps(
        {"nodes": nodes, "input_name": model.input_names[0], "output_name": model.output_names[0],
         "input_shape": list(model.input_shape)}))
    np.savez(pathlib.Path(folder, "weights.npz"), **arrays)


# ---- the driver --------------------------------------------------------------------------------------------


def _write_models(names: list[str], folder: pathlib.Path) -> None:
    code = r"""
import os, sys
os.environ.setdefault("KERAS_BACKEND", "jax")
import keras, numpy as np
rng = np.random.default_rng(0)
for name in sys.argv[2].split(","):
    model = getattr(keras.applications, name)(weights=None)
    for w in model.weights:
        if w.path.endswith("moving_mean"):
            w.assign(np.asarray(w.numpy()) + rng.normal(0, 0.05, w.shape).astype(np.float32))
        elif w.path.endswith("moving_variance"):
            w.assign(np.asarray(w.numpy()) * np.exp(rng.normal(0, 0.1, w.shape)).astype(np.float32))
    model.save(os.path.join(sys.argv[1], name + ".keras"))
"""
    subprocess.run([sys.executable, "-c", code, str(folder), ",".join(names)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _run(arm: str, target: str, torch_python: str) -> dict:
    python = torch_python if arm == "pytorch" else sys.executable
    result = subprocess.run([python, __file__, "--worker", arm, target], capture_output=True, text=True,
                            env={**os.environ, "KERAS_BACKEND": "jax"})
    if result.returncode:
        raise SystemExit(f"{arm} on {target} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--describe", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--models", default="ResNet50,MobileNetV2,EfficientNetB0")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--torch-python", default=sys.executable)
    args = parser.parse_args()
    if args.worker:
        arm, target = args.worker
        out = (worker_torch(target) if arm == "pytorch" else worker_keras(target) if arm == "keras"
               else worker_jaxcnn(target, export=arm == "jaxcnn export"))
        print(json.dumps(out))
        return
    if args.describe:
        describe(*args.describe)
        return
    import numpy as np

    names = args.models.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        _write_models(names, folder)
        for name in names:
            path = str(folder / f"{name}.keras")
            torch_folder = folder / f"{name}_torch"
            torch_folder.mkdir()
            subprocess.run([sys.executable, __file__, "--describe", path, str(torch_folder)], check=True)
            runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
            for _ in range(args.rounds):
                for arm in ARMS:
                    runs[arm].append(_run(arm, str(torch_folder) if arm == "pytorch" else path, args.torch_python))
            reference = np.asarray(runs["keras"][0]["outputs"])
            for arm, values in runs.items():
                row = {"model": name, "arm": arm,
                       "latency_ms": statistics.median(v["latency_ms"] for v in values),
                       "images_per_s": statistics.median(v["images_per_s"] for v in values),
                       "max_abs_vs_keras": float(np.abs(np.asarray(values[0]["outputs"]) - reference).max()),
                       "rounds": [{k: v[k] for k in ("latency_ms", "images_per_s")} for v in values]}
                rows.append(row)
            base = {r["arm"]: r for r in rows if r["model"] == name}
            for arm in ARMS:
                r = base[arm]
                r["latency_x_keras"] = base["keras"]["latency_ms"] / r["latency_ms"]
                r["throughput_x_keras"] = r["images_per_s"] / base["keras"]["images_per_s"]
                r["latency_x_pytorch"] = base["pytorch"]["latency_ms"] / r["latency_ms"]
                r["throughput_x_pytorch"] = r["images_per_s"] / base["pytorch"]["images_per_s"]
                print(f"{name:15s} {arm:14s} batch-1 {r['latency_ms']:8.2f} ms (x{r['latency_x_keras']:.2f} Keras, "
                      f"x{r['latency_x_pytorch']:.2f} PyTorch)  batch-{BATCH} {r['images_per_s']:7.1f} images/s "
                      f"(x{r['throughput_x_keras']:.2f} Keras, x{r['throughput_x_pytorch']:.2f} PyTorch)  "
                      f"max |p - Keras's| {r['max_abs_vs_keras']:.1e}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    lines = [f"{os.cpu_count()} cores; {args.rounds} rounds, each (model, framework) alone in its process; "
             "x: the ratio to the peer (above 1: jaxcnn faster).", "",
             f"| model | arm | batch-1 ms | x Keras | x PyTorch | batch-{BATCH} images/s | x Keras | x PyTorch | "
             "max abs vs Keras |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['arm']} | {r['latency_ms']:.2f} | {r['latency_x_keras']:.2f} | "
                     f"{r['latency_x_pytorch']:.2f} | {r['images_per_s']:.1f} | {r['throughput_x_keras']:.2f} | "
                     f"{r['throughput_x_pytorch']:.2f} | {r['max_abs_vs_keras']:.1e} |")
    (RESULTS / "bench_keras_inference.md").write_text("\n".join(lines) + "\n")
    for r in rows:
        r.pop("outputs", None)
    (RESULTS / "bench_keras_inference.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(f"wrote {RESULTS / 'bench_keras_inference.md'}")


if __name__ == "__main__":
    main()
