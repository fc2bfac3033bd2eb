"""Where each millisecond of one jitted training step goes, per layer and pass, on XLA's CPU backend.

Run:   python experiments/profile_step.py [--config configs/cifar_cnn.toml] [--input-shape H,W,C] [--batch 128]
                                          [--optimizer adam|sgd] [--steps 10] [--lowering conv|patches|onednn]
                                          [--precision float32|bfloat16]
Writes experiments/results/profile_step_<config>[_bfloat16].json and prints the table.

How: the step is traced by ``jax.profiler`` (its Perfetto export), in which XLA's CPU runtime records
one event per thunk, named after the optimized HLO instruction it runs. Each instruction of the
compiled program (``train_step.lower(...).compile().as_text()``) is attributed by the ``op_name``
metadata of the operations fused into it: a layer's forward pass (``jvp(SequentialModule)/<layer>``)
or backward pass (``transpose(jvp(...))/<layer>``), the loss and metrics (differentiated but outside
the model), the optimizer's update (the fusions holding its square roots and powers), the non-finite
guard (``isfinite``/``all``/``where`` of the step), and state copies. The sum of the thunks' times can
exceed the step's wall time when XLA runs two thunks at once on its two threads; the difference
is reported.

The host side of the fit loop is timed too: a step dispatched and its metrics merged into the
epoch's sums (jaxcnn.fit's loop) without waiting, against the step waited on alone.

What it showed (seed CIFAR CNN, batch 128, Adam, the automatic lowerings, patches here, before
issue 13's oneDNN lowering; the 2-core EPYC shared with other jobs, load average 5): a step of
21.3 ms waited on, whose thunks' times sum to 32.4 ms (XLA runs independent thunks on its two threads
at once, each slower). Shares of the thunks' time: Conv2D forward 52.5% (the patches' pads,
concatenations and ReLU-mask fusions cost as much as their matmuls), Conv2D backward 25.6%,
MaxPooling2D 9.7%, Dense 10.0% (the 1024x500 weight gradient 7.2%), the Adam update 1.3%, the
non-finite guard 0.7%, the loss and metrics 0.1%. The fit loop's host work is 0.1 ms a step (0.06 ms
dispatch, 0.03 ms merging the metrics), hidden behind the running step: no per-step synchronization.
Before the guard became a ``lax.cond`` (jaxcnn.train), XLA copied the 20 Adam moments before
overwriting them: 23 copies, 1.15 ms a step (1.7%). With every convolution ``lax.conv`` and every
max pooling forced to ``lowering = "reduce_window"`` in the config, the pooling's gradient (XLA's
select-and-scatter, rewritten as iotas and reduce-windows) took 79 ms, two thirds of the step.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile

from jaxcnn.host import tune_malloc

tune_malloc()  # as the jaxcnn command does

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxcnn  # noqa: E402
from bench_cpu import force_lowering  # noqa: E402
from timing import median_seconds  # noqa: E402
from jaxcnn.config import from_dict, read_document  # noqa: E402
from jaxcnn.losses import Metrics  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
OPTIMIZERS = {"adam": {"name": "adam", "learning_rate": 1e-3},
              "sgd": {"name": "sgd", "learning_rate": 0.01, "momentum": 0.9}}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(?:\(.*?\)|\S+)\s+([\w\-]+)\(")
_CONTROL = ("conditional", "while", "call")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def parse_hlo(text: str) -> tuple[dict[str, dict], str]:
    """The optimized HLO module's computations: ``{name: {instruction: (opcode, op_names, calls,
    operands)}}`` and the entry computation's name."""
    computations: dict[str, dict] = {}
    entry, current = "", None
    for line in text.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match and not line.startswith("HloModule"):
                current = computations.setdefault(match.group(1), {})
                entry = match.group(1) if line.startswith("ENTRY") else entry
            continue
        if line.strip() == "}":
            current = None
            continue
        match = _INSTRUCTION.match(line)
        if match:
            ops = re.findall(r'op_name="([^"]*)"', line)
            calls = re.findall(r"(?:calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)", line)
            for branches in re.findall(r"branch_computations=\{([^}]*)\}", line):
                calls += [b.strip().lstrip("%") for b in branches.split(",")]
            args = line[match.end():].split(")", 1)[0]
            current[match.group(1)] = (match.group(2), ops, calls, re.findall(r"%([\w.\-]+)", args))
    return computations, entry


def scheduled(computations: dict[str, dict], entry: str) -> dict[str, str]:
    """The instructions the runtime runs as thunks, each with its computation: the entry's and, inside
    control flow (``conditional``, ``while``, ``call``), its branches' and bodies' (the container
    itself is left out: its time is theirs)."""
    found: dict[str, str] = {}
    todo = [entry]
    while todo:
        comp = todo.pop()
        for name, (opcode, _, calls, _) in computations.get(comp, {}).items():
            if opcode in _CONTROL:
                todo += calls
            else:
                found[name] = comp
    return found


def op_names(computations: dict[str, dict], name: str, computation: str, depth: int = 0) -> tuple[str, list[str]]:
    """An instruction's opcode and the op_names of everything fused or called into it (where there
    are none, those of its operands, else of its users, up to 3 levels away)."""
    opcode, ops, calls, operands = computations[computation][name]
    ops, todo, seen = list(ops), list(calls), set()
    while todo:
        comp = todo.pop()
        if comp in seen or comp not in computations:
            continue
        seen.add(comp)
        for _, (_, inner, more, _) in computations[comp].items():
            ops += inner
            todo += more
    if not ops and depth < 3:  # XLA's rewrites (a convolution's gradient as a YNNPACK fusion, a max
        # pooling's gradient as iotas and reduce-windows) can drop the metadata: take the ops of what
        # it reads, else of what reads it
        instructions = computations[computation]
        for neighbour in [o for o in operands if o in instructions] or [
                user for user, entry in instructions.items() if name in entry[3]]:
            ops += op_names(computations, neighbour, computation, depth + 1)[1]
    return opcode, ops


_HEAVY = ("dot_general", "conv_general_dilated", "reduce_window", "select_and_scatter_add", "custom_call")


def attribute(opcode: str, ops: list[str], layer_types: dict[str, str]) -> tuple[str, str]:
    """(category, detail) of one instruction from the op_names fused into it: a layer's pass (a fusion
    holding any differentiated op is backward, as the forward values it holds are recomputed for
    it; among layers, the one whose matmul, convolution or pooling it holds), the optimizer update,
    the loss, the non-finite guard, a copy, or other."""
    weights: collections.Counter = collections.Counter()
    for op in ops:
        match = re.search(r"(transpose\()?jvp\(\w*Module\)\)?/(\w+)/(?:.*/)?(\w+)$", op)
        if match and match.group(2) in layer_types:
            weights[(match.group(2), bool(match.group(1)))] += 1 + 100 * (match.group(3) in _HEAVY)
    if weights:
        backward = any(key[1] for key in weights)
        (layer, _), _ = max(((k, w) for k, w in weights.items() if k[1] == backward), key=lambda kw: kw[1])
        direction = "backward" if backward else "forward"
        return f"{layer_types[layer]} {direction}", f"{layer} {direction}"
    tails = {op.rsplit("/", 1)[-1] for op in ops}
    if any("/cond/branch" in op for op in ops) or tails & {"sqrt", "integer_pow", "pow", "rsqrt"}:
        return "optimizer update", "optimizer"
    if any("jvp(" in op or "transpose(" in op for op in ops):
        return "loss and metrics (forward and backward)", "loss"
    if tails & {"is_finite", "reduce_and"} or (tails and tails <= {"select_n", "and"}):
        return "non-finite guard (isfinite, where)", "guard"
    if opcode == "copy":
        return "copies", "copy"
    return "other (metrics, step counter, RNG)", "other"


def thunk_times(trace_dir: str, names: set[str], steps: int) -> dict[str, float]:
    """Milliseconds per step of each HLO instruction, from the Perfetto trace's thunk events."""
    path = sorted(glob.glob(f"{trace_dir}/**/*perfetto_trace.json.gz", recursive=True))[-1]
    with gzip.open(path) as handle:
        data = json.load(handle)
    events = data["traceEvents"] if isinstance(data, dict) else data
    totals: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("ph") == "X" and event.get("name") in names:
            totals[event["name"]] += event.get("dur", 0) / 1000 / steps
    return dict(totals)


def median_ms(fn, n: int) -> float:
    return median_seconds(fn, n, warmup=0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "cifar_cnn.toml"))
    parser.add_argument("--input-shape", type=lambda s: tuple(int(v) for v in s.split(",")))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lowering", choices=("conv", "patches", "onednn"),
                        help="force the convolutions (and, for onednn, the pools) to this lowering, as bench_cpu.py does")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="the compute precision (jaxcnn.compile's precision)")
    args = parser.parse_args()

    doc = read_document(args.config)
    model = from_dict(force_lowering(doc, args.lowering) if args.lowering else doc, source=args.config,
                      require_input_shape=True)
    if args.input_shape:
        model = model.with_input_shape(args.input_shape)
    compiled = jaxcnn.compile(model, OPTIMIZERS[args.optimizer], "sparse_categorical_crossentropy",
                              precision=args.precision)
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.normal(size=(args.batch, *model.input_shape)).astype(np.float32))
    y = jax.device_put(rng.integers(0, model.output_shape[-1], args.batch).astype(np.int32))
    box = [compiled.init(0)]

    def step() -> Metrics:
        box[0], metrics = compiled.train_step(box[0], (x, y))
        return metrics

    for _ in range(3):
        jax.block_until_ready(step())
    wall = median_ms(lambda: jax.block_until_ready(step()), args.steps)

    # the fit loop's host side: dispatch, merge into the epoch's sums, no wait
    sums = [Metrics.empty(compiled.top_k, compiled.accuracy)]
    dispatch = median_ms(step, args.steps)
    jax.block_until_ready(box[0])
    metrics = step()
    jax.block_until_ready(box[0])
    merge = median_ms(lambda: sums.__setitem__(0, Metrics.merge(sums[0], metrics)), args.steps)

    def loop() -> None:
        for _ in range(args.steps):
            sums[0] = Metrics.merge(sums[0], step())
        jax.block_until_ready(sums[0])

    looped = median_ms(loop, 3) / args.steps

    text = compiled.train_step.lower(box[0], (x, y)).compile().as_text()
    computations, entry = parse_hlo(text)
    layer_types = {layer.name: layer.type for layer in model.layers}
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(args.steps):
                jax.block_until_ready(step())
        where = scheduled(computations, entry)
        times = thunk_times(trace_dir, set(where), args.steps)

    rows: dict[str, dict] = collections.defaultdict(lambda: {"ms": 0.0, "thunks": 0})
    details: dict[str, dict] = collections.defaultdict(lambda: {"ms": 0.0, "thunks": 0})
    top = []
    for name, ms in times.items():
        opcode, ops = op_names(computations, name, where[name])
        category, detail = attribute(opcode, ops, layer_types)
        for table, key in ((rows, category), (details, detail)):
            table[key]["ms"] += ms
            table[key]["thunks"] += 1
        top.append((ms, name, opcode, detail))
    total = sum(times.values())
    cost = compiled.train_step.lower(box[0], (x, y)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost

    print(f"{model.name}, batch {args.batch}, {args.optimizer}; jax {jax.__version__}; {jax.devices()[0]}")
    print(f"step (waited on) {wall:.2f} ms; thunks' times sum to {total:.2f} ms "
          f"({total - wall:+.2f} ms: thunks run at once on XLA's threads, or host time); "
          f"{cost.get('flops', 0) / 1e9:.2f} GFLOP, {cost.get('bytes accessed', 0) / 1e6:.0f} MB accessed (XLA's count)")
    print(f"\n{'where':44s} {'ms/step':>8s} {'share':>6s} {'thunks':>6s}")
    for key, row in sorted(rows.items(), key=lambda kv: -kv[1]["ms"]):
        print(f"{key:44s} {row['ms']:8.2f} {row['ms'] / total:6.1%} {row['thunks']:6d}")
    print(f"\n{'per layer and pass':44s} {'ms/step':>8s}")
    for key, row in sorted(details.items(), key=lambda kv: -kv[1]["ms"]):
        print(f"{key:44s} {row['ms']:8.2f}")
    print("\nthe 12 costliest thunks:")
    for ms, name, opcode, detail in sorted(top, reverse=True)[:12]:
        print(f"  {ms:7.2f} ms  {name:36s} {opcode:10s} {detail}")
    print(f"\nfit loop, host side: dispatch of a step {dispatch:.3f} ms, merge of its metrics {merge:.3f} ms; "
          f"{looped:.2f} ms a step dispatched and merged without waiting, against {wall:.2f} ms waited on")

    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.precision == "float32" else f"_{args.precision}"
    out = RESULTS / f"profile_step_{model.name}{suffix}.json"
    out.write_text(json.dumps({
        "model": model.name, "batch": args.batch, "optimizer": args.optimizer, "lowering": args.lowering,
        "precision": args.precision,
        "jax": jax.__version__, "load_average": os.getloadavg(), "step_ms": wall, "thunks_ms": total, "flops": cost.get("flops"),
        "categories": rows, "layers": details,
        "top_thunks": [{"ms": ms, "name": n, "opcode": o, "where": d} for ms, n, o, d in sorted(top, reverse=True)[:20]],
        "fit_loop": {"dispatch_ms": dispatch, "merge_ms": merge, "looped_step_ms": looped},
    }, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
