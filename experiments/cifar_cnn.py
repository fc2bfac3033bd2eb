"""The seed CIFAR CNN (528,054 parameters) trained with jaxcnn.

Run:   python experiments/cifar_cnn.py --cifar10 PATH/cifar-10-batches-py   (CIFAR-10, python format)
       python experiments/cifar_cnn.py                                       (no local copy: a demo on
                                                                              digits padded to 32x32x3)
Writes experiments/results/cifar_cnn_{cifar10,digits32}.json and .png (the curves). Nothing is
downloaded: CIFAR-10 is read from the folder given. The model is configs/cifar_cnn.toml exactly
(the seed notebook's layers); the script adds the [data] and [train] tables and writes the
resulting config into the workdir, so the run can be repeated with `jaxcnn train`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil

from jaxcnn.fit import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"

TRAIN = """
[train]
epochs = {epochs}
batch_size = 64
seed = {seed}
checkpoint_every_steps = 200
early_stopping_patience = 5

[train.optimizer]
name = "adam"
learning_rate = 0.001
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar10", metavar="DIR", help="a local CIFAR-10 (python format) folder")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.cifar10:
        tag, epochs = "cifar10", args.epochs or 20
        data = f'[data]\nname = "cifar10"\npath = {json.dumps(str(pathlib.Path(args.cifar10).absolute()))}\nvalidation = 0.1\n'
    else:
        tag, epochs = "digits32", args.epochs or 15
        data = '[data]\nname = "digits"\nvalidation = 0.1\ntest = 0.2\nfit = "pad"\n'
    model = (ROOT / "configs" / "cifar_cnn.toml").read_text()
    if not args.cifar10:  # digits are 8x8x1: padded (and repeated to 3 channels) to the seed's 32x32x3
        model = model.replace("# Seed notebook 000", "# Demo on digits padded to 32x32x3. Seed notebook 000", 1)
    workdir = ROOT / "runs" / f"cifar_cnn_{tag}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    config = workdir / "train.toml"
    config.write_text(model + "\n" + data + TRAIN.format(epochs=epochs, seed=args.seed))
    results = train_and_evaluate(config, workdir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"cifar_cnn_{tag}.json").write_text(json.dumps(results, indent=1) + "\n")
    shutil.copy(workdir / "curves.png", RESULTS / f"cifar_cnn_{tag}.png")
    print(f"{tag}: test accuracy {results['test_accuracy']:.4f} after {results['epochs']} epochs, "
          f"{results['train_seconds']:.1f} s of training at {results['images_per_second']:,.0f} images/s")


if __name__ == "__main__":
    main()
