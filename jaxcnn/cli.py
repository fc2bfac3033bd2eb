"""The ``jaxcnn`` command. Thin: each subcommand parses its arguments and calls one library function.

Exit status: 0 when the command succeeded (``check``: the proof holds), 1 with a one-line error
message when it did not, 2 for a usage error, 130 when interrupted (Ctrl-C; ``train`` says where it
resumes), 141 when its output pipe was closed (``jaxcnn summary ... | head``). No traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import pathlib
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from jaxcnn.errors import JaxcnnError, plural

__all__ = ["PREDICT_INPUTS", "main"]

PREDICT_INPUTS = """\
Input conventions: each INPUT is a raw image, as the training data's loader gives
it; the export file then applies the preprocessing the model was trained with (the
training mean and standard deviation, then the [data] fit to the model's input
shape: zero-padded centred, or resized bilinearly).
  .npy       (H, W), (H, W, C), a stack (N, H, W, C), or (N, H, W) of one channel,
             of the raw image shape the model was trained on; floats in [0, 1],
             or uint8 0..255. Float values outside [0, 1] are refused (scale them
             first), never clipped.
  .png .jpg  converted to the raw channels (greyscale, or RGB without alpha),
             resized bilinearly to the raw height and width (the aspect ratio is
             not kept), and scaled from 0..255 to [0, 1].
A trained Keras model (.keras, .h5) takes the same inputs at its own input shape and
sees them as Keras's image loaders give them, 0..255 (its own Rescaling or
Normalization layers, if any, do the rest).
"""


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, such as 224,224,3; got {text!r}")
    return shape


def _columns(text: str) -> tuple[str, ...]:
    from jaxcnn.summary import COLUMNS

    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown column {unknown[0]!r}; known: {', '.join(COLUMNS)}")
    return columns


def _parser() -> argparse.ArgumentParser:
    from jaxcnn import __version__

    parser = argparse.ArgumentParser(
        prog="jaxcnn", description="Keras-style CNN layer lists, proved with jax.eval_shape and compiled to Flax.",
        epilog="Exit status: 0 on success, 1 with a one-line error, 2 for a usage error, 130 when interrupted.")
    parser.add_argument("--version", action="version", version=f"jaxcnn {__version__}",
                        help="print jaxcnn's version and exit")
    parser.add_argument("--xla-fast-cpu", action="store_true",
                        help="opt in to the experimental XLA CPU flags of jaxcnn.xla_flags (also: JAXCNN_XLA_FAST_CPU=1)")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="keep glibc malloc's defaults (jaxcnn.host; also: JAXCNN_MALLOC_TUNING=0)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of the commands below; `jaxcnn COMMAND --help` describes it")

    summary = sub.add_parser("summary", help="print a model's summary (its shapes proved first)")
    summary.add_argument("path", metavar="PATH", help="a TOML or JSON config, a Keras model.to_json() file, or a trained Keras model (.keras, .h5)")
    summary.add_argument("--input-shape", type=_shape, metavar="H,W,C", help="override the model's input shape")
    summary.add_argument("--format", choices=("text", "rich", "json"), default="text",
                         help="text: Keras's classic layout (default); rich: Keras 3's table with byte sizes; "
                              "json: every figure, for tools")
    summary.add_argument("--flops", action="store_true", help="add forward FLOPs per layer")
    summary.add_argument("--columns", type=_columns, default=(), metavar="A,B",
                         help="more columns: memory, receptive_field, formula, lowering (long cells wrap to "
                              "the terminal's width)")
    summary.add_argument("--mesh", choices=("data", "fsdp"),
                         help="add each parameter's sharding and bytes per device under this strategy")
    summary.add_argument("--devices", type=_positive, metavar="N",
                         help="with --mesh: the device count (default: the devices JAX sees; need not exist)")

    check = sub.add_parser("check", help="prove every layer's shapes with jax.eval_shape against the formulas")
    check.add_argument("path", metavar="PATH", help="a TOML or JSON config, a Keras model.to_json() file, or a trained Keras model (.keras, .h5)")
    check.add_argument("--input-shape", type=_shape, metavar="H,W,C", help="override the model's input shape")
    train = sub.add_parser("train", help="train a config's model; resumes from the workdir's newest checkpoint")
    train.add_argument("config", metavar="CONFIG", help="a TOML training config ([model], [[layers]], [data], [train])")
    train.add_argument("--workdir", default=None, metavar="DIR",
                       help="where checkpoints, metrics.jsonl, curves.png and results.json go "
                            "(default: runs/<config name>)")
    train.add_argument("--epochs", type=_positive, metavar="N", help="override [train] epochs")
    train.add_argument("--seed", type=int, metavar="S", help="override [train] seed")
    train.add_argument("--quiet", action="store_true", help="no progress output; only the final result line")
    train.add_argument("--init-from", metavar="FILE",
                       help="a trained Keras model (.keras, .h5): the config's layers named as the file's start "
                       "from its weights, the others from their initializers (fine-tuning)")
    train.add_argument("--mesh", choices=("data", "fsdp"), help="override [mesh] strategy: data parallel, or "
                       "FSDP for large parameters (default: data, over every device JAX sees)")
    train.add_argument("--devices", type=_positive, metavar="N", help="override [mesh] devices (default: all)")
    train.add_argument("--coordinator", metavar="HOST:PORT",
                       help="several processes: the address of process 0's coordinator (jax.distributed)")
    train.add_argument("--num-processes", type=_positive, metavar="N", help="with --coordinator: how many processes")
    train.add_argument("--process-id", type=int, metavar="I", help="with --coordinator: this process's index, 0..N-1")
    export = sub.add_parser("export", help="write a trained model into one file that runs without its code")
    export.add_argument("config", metavar="CONFIG",
                        help="the training config, or a trained Keras model (.keras, .h5) with its own weights")
    export.add_argument("--checkpoint", metavar="DIR",
                        help="a workdir of `jaxcnn train` (its best checkpoint), or a checkpoints folder "
                        "(required with a training config)")
    export.add_argument("--out", required=True, metavar="FILE",
                        help="the export file to write (replaced atomically; its folder is created)")
    export.add_argument("--platforms", default="cpu,cuda,tpu", type=_platforms, metavar="P,Q",
                        help="platforms to lower for (default: cpu,cuda,tpu)")
    export.add_argument("--format", choices=("jaxcnn", "keras"), default="jaxcnn",
                        help="jaxcnn: the jax.export file that `jaxcnn predict` serves (default); keras: a "
                        "Keras 3 .keras archive that keras.saving.load_model reads")
    export.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="the forward pass's precision (default: float32; bfloat16 agrees within 0.05)")

    info = sub.add_parser("info", help="print the versions, the devices, the oneDNN extension's state and the "
                          "lowerings this machine has")
    info.add_argument("--json", action="store_true", help="print every fact as JSON, for tools")

    predict = sub.add_parser(
        "predict", help="run an export file on .npy arrays or PNG/JPEG images",
        description="Print the top-k classes of each input as JSON.", epilog=PREDICT_INPUTS,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("file", metavar="FILE", help="an export file from `jaxcnn export`, or a trained Keras "
                         "model (.keras, .h5: converted once, in memory; its images scaled to 0..255)")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help=".npy, .png or .jpg files (see the input conventions below)")
    predict.add_argument("--top-k", type=_positive, default=5, metavar="K",
                         help="how many classes to list per input (default: 5)")
    predict.add_argument("--batch-size", type=_positive, default=64, metavar="N",
                         help="images per forward pass (default: 64); results do not depend on it")
    return parser


def _platforms(text: str) -> tuple[str, ...]:
    platforms = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in platforms if p not in ("cpu", "cuda", "tpu")]
    if not platforms or unknown:
        raise argparse.ArgumentTypeError(f"expected platforms among cpu, cuda, tpu; got {text!r}")
    return platforms


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = _run(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is handled below
        return code
    except BrokenPipeError:  # `jaxcnn summary ... | head`: stop quietly, as Unix tools do
        _discard_stdout()
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        print(("\n" if _is_tty(sys.stderr) else "") + _interrupted(args), file=sys.stderr)
        return 128 + signal.SIGINT
    except JaxcnnError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # writing an output: a full disk, a read-only folder, a path in the way
        where = f"{os.fsdecode(error.filename)}: " if error.filename is not None else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from jaxcnn import xla_flags

    if args.xla_fast_cpu or xla_flags.fast_cpu_requested():
        xla_flags.enable_fast_cpu()
    if not args.no_malloc_tuning:
        from jaxcnn import host

        if host.malloc_tuning_requested():
            host.tune_malloc()  # this process is the command's own: keep the memory XLA's steps free
    from jaxcnn import compile_cache

    compile_cache.enable()  # a second run's steps load their compiled programs (JAXCNN_COMPILATION_CACHE=off)
    if args.command == "summary":
        from jaxcnn.summary import summarize_file

        print(summarize_file(args.path, input_shape=args.input_shape, format=args.format,
                             flops=args.flops, columns=args.columns, mesh=args.mesh, devices=args.devices))
    elif args.command == "check":
        from jaxcnn.check import check_file

        result = check_file(args.path, input_shape=args.input_shape)
        print(f"ok: {args.path}: {plural(len(result.layers), 'layer')} of {result.model_name!r} proved with "
              f"jax.eval_shape for any batch size; {result.total_params:,} params "
              f"({result.trainable_params:,} trainable, {result.non_trainable_params:,} non-trainable)")
    elif args.command == "train":
        return _train(args)
    elif args.command == "export":
        from jaxcnn.export import export_model

        manifest = export_model(args.config, args.checkpoint, args.out, platforms=args.platforms,
                                precision=args.precision, format=args.format)
        if args.format == "keras":
            print(f"wrote {args.out}: {manifest['model']!r}, input {tuple(manifest['input_signature']['shape'])}, "
                  "a Keras 3 archive (keras.saving.load_model)")
        else:
            print(f"wrote {args.out}: {manifest['model']!r}, input {tuple(manifest['input_signature']['shape'])}, "
                  f"{manifest['precision']}, lowered for {', '.join(manifest['platforms'])}")
    elif args.command == "info":
        import json

        from jaxcnn.about import about, about_text

        facts = about()
        print(json.dumps(facts, indent=1) if args.json else about_text(facts))
    elif args.command == "predict":
        import json

        from jaxcnn.artifact import predict_files

        print(json.dumps(predict_files(args.file, args.inputs, top_k=args.top_k, batch_size=args.batch_size),
                         indent=1))
    return 0


def _train(args: argparse.Namespace) -> int:
    from jaxcnn.fit import train_and_evaluate

    distributed = (args.coordinator, args.num_processes, args.process_id)
    if any(v is not None for v in distributed):
        if any(v is None for v in distributed):
            print("jaxcnn train: error: --coordinator, --num-processes and --process-id go together",
                  file=sys.stderr)
            return 2
        from jaxcnn.parallel import initialize_distributed

        initialize_distributed(*distributed)  # before anything starts JAX's backend
    results = train_and_evaluate(args.config, _workdir(args), epochs=args.epochs, seed=args.seed,
                                 progress=not args.quiet, mesh=args.mesh, devices=args.devices,
                                 init_from=args.init_from)
    if args.quiet:
        import jax

        if jax.process_index() == 0:  # the process that writes results.json
            print(_final_line(results, pathlib.Path(_workdir(args)) / "results.json"))
    return 0


def _final_line(results: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """The one line ``jaxcnn train --quiet`` prints at the end of a run, from the results that
    :func:`jaxcnn.fit.train_and_evaluate` returns (``test_accuracy``, ``test_loss``)."""
    accuracy, loss = results["test_accuracy"], results["test_loss"]
    if isinstance(accuracy, float) and math.isnan(accuracy):
        return f"no test examples to evaluate (results in {os.fsdecode(path)})"
    return f"test accuracy {accuracy:.4f}, test loss {loss:.4f} (results in {os.fsdecode(path)})"


def _workdir(args: argparse.Namespace) -> str:
    return args.workdir or str(pathlib.Path("runs") / pathlib.Path(args.config).stem)


def _interrupted(args: argparse.Namespace) -> str:
    """The line printed on Ctrl-C: for ``train``, where the run can resume."""
    if args.command != "train":
        return f"jaxcnn {args.command}: interrupted"
    folder = pathlib.Path(_workdir(args)) / "checkpoints"
    try:
        steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir()]
    except OSError:
        steps = []
    if not steps:
        return (f"jaxcnn train: interrupted before the first checkpoint was written to {folder}; "
                "the same command starts the run again")
    return (f"jaxcnn train: interrupted; the same command resumes the run from the checkpoint of step "
            f"{max(steps)} in {folder / str(max(steps))}")


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _discard_stdout() -> None:
    """Point the stdout file descriptor at /dev/null, so that the interpreter's last flush of what
    is still buffered does not print "Exception ignored ... BrokenPipeError"."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
