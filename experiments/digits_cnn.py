"""digits_cnn: the main job's model on scikit-learn's digits, over 3 seeds.

Run:   python experiments/digits_cnn.py [--seeds 0 1 2]
Writes experiments/results/digits_cnn.json (per seed and mean/spread) and digits_cnn.png (test
accuracy per seed and the validation curves). Target (issue 3): at least 98% test accuracy within
60 s of training on a 2-core CPU. Each seed is `jaxcnn train configs/digits_cnn.toml --seed S`
run through the library, in its own workdir under runs/digits_cnn_seeds/.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics

from jaxcnn.fit import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", default=str(ROOT / "configs" / "digits_cnn.toml"))
    args = parser.parse_args()

    runs = []
    for seed in args.seeds:
        workdir = ROOT / "runs" / "digits_cnn_seeds" / f"seed{seed}"
        shutil.rmtree(workdir, ignore_errors=True)  # a fresh run per seed, not a resumption
        results = train_and_evaluate(args.config, workdir, seed=seed, progress=False)
        history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        runs.append({**results, "history": history})
        print(f"seed {seed}: test accuracy {results['test_accuracy']:.4f}, {results['epochs']} epochs, "
              f"{results['train_seconds']:.1f} s of training, {results['images_per_second']:,.0f} images/s",
              flush=True)

    accuracies = [r["test_accuracy"] for r in runs]
    seconds = [r["train_seconds"] for r in runs]
    summary = {
        "config": str(pathlib.Path(args.config).relative_to(ROOT)),
        "seeds": args.seeds,
        "test_accuracy_mean": statistics.mean(accuracies),
        "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "test_accuracy_min": min(accuracies),
        "test_accuracy_max": max(accuracies),
        "train_seconds_mean": statistics.mean(seconds),
        "train_seconds_max": max(seconds),
        "runs": [{k: v for k, v in r.items() if k != "history"} for r in runs],
    }
    print(f"test accuracy {summary['test_accuracy_mean']:.4f} ± {summary['test_accuracy_std']:.4f} "
          f"(min {summary['test_accuracy_min']:.4f}) over seeds {args.seeds}; training "
          f"{summary['train_seconds_mean']:.1f} s on average, {summary['train_seconds_max']:.1f} s at most")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "digits_cnn.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(runs, summary)


def plot(runs: list[dict], summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for run in runs:
        epochs = [h["epoch"] for h in run["history"]]
        left.plot(epochs, [h["val_accuracy"] for h in run["history"]], label=f"seed {run['seed']}")
    left.set_xlabel("epoch")
    left.set_ylabel("validation accuracy")
    left.set_ylim(0.8, 1.0)
    left.legend()
    left.grid(alpha=0.3)
    right.bar([str(r["seed"]) for r in runs], [r["test_accuracy"] for r in runs])
    right.axhline(0.98, color="tab:red", linestyle="--", label="target 98%")
    right.set_ylim(0.95, 1.0)
    right.set_xlabel("seed")
    right.set_ylabel("test accuracy")
    right.legend()
    fig.suptitle(f"digits_cnn: test accuracy {summary['test_accuracy_mean']:.4f} "
                 f"± {summary['test_accuracy_std']:.4f} over {len(runs)} seeds")
    fig.tight_layout()
    fig.savefig(RESULTS / "digits_cnn.png", dpi=90)


if __name__ == "__main__":
    main()
