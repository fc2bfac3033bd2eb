"""Training from an image folder: the digits written as PNG files, one subfolder per class, trained
with augmentation layers, against the same CNN trained from memory.

    python experiments/digits_folder.py [--seeds 0,1]

1. Writes scikit-learn's 1,797 digits into runs/digits_png/<digit>/<index>.png (8x8 grayscale, the
   0..16 values scaled to 0..255 and rounded), the only real image set this machine has.
2. Times the folder's decoding on its own (``jaxcnn.folders.load_folder``: images per second).
3. For each seed, trains configs/digits_folder.toml (from the folder, with RandomRotation, RandomZoom
   and RandomTranslation in the model), the same config without the augmentation layers, and
   configs/digits_cnn.toml (from memory, no augmentation): test accuracy and loss of each.

Writes experiments/results/digits_folder.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
FOLDER = ROOT / "runs" / "digits_png"
CONFIG = ROOT / "configs" / "digits_folder.toml"
MEMORY = ROOT / "configs" / "digits_cnn.toml"
RESULTS = ROOT / "experiments" / "results" / "digits_folder.json"


def write_folder() -> int:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    shutil.rmtree(FOLDER, ignore_errors=True)
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = FOLDER / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image * 255.0 / 16.0).astype(np.uint8), "L").save(folder / f"{index:04d}.png")
    return len(digits.target)


def without_augmentation(tmp: pathlib.Path) -> pathlib.Path:
    """configs/digits_folder.toml without its three augmentation tables, beside it in ``tmp``."""
    text = CONFIG.read_text()
    tables = text.split("\n[[layers]]")
    kept = [t for t in tables if not t.lstrip().startswith(("# augmentation", 'type = "Random'))
            and "augmentation: in the training step" not in t.split("\n")[0]]
    path = tmp / "digits_folder_plain.toml"
    path.write_text("\n[[layers]]".join(kept).replace('path = "../runs/digits_png"', f'path = "{FOLDER}"'))
    return path


def run(config: pathlib.Path, workdir: pathlib.Path, seed: int) -> dict:
    from jaxcnn.fit import train_and_evaluate

    results = train_and_evaluate(config, workdir, seed=seed, progress=False)
    return {key: results[key] for key in ("test_accuracy", "test_loss", "epochs", "steps", "train_seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    from jaxcnn import folders

    out: dict = {"images_written": write_folder(), "folder": str(FOLDER.relative_to(ROOT))}
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        data, _ = folders.load_folder(FOLDER, channels=1)
        timings.append(time.perf_counter() - start)
    out["decode_images_per_second"] = round(len(data) / statistics.median(timings))
    print(f"decoded {len(data)} PNG files at {out['decode_images_per_second']:,} images/s", flush=True)
    out["runs"] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        plain = without_augmentation(tmp)
        for seed in map(int, args.seeds.split(",")):
            for number, (arm, config) in enumerate((("folder, augmented", CONFIG), ("folder, no augmentation", plain),
                                                    ("memory (digits_cnn.toml)", MEMORY))):
                result = {"arm": arm, "seed": seed, **run(config, tmp / f"run{number}_seed{seed}", seed)}
                print(result, flush=True)
                out["runs"].append(result)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
