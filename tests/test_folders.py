"""Image folders as training data (jaxcnn.folders, `[data] name = "folder"`), on small files the tests
write: class subfolders, a labels CSV, train/val/test folders, the image formats, resizing and the
refusals."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from jaxcnn import folders
from jaxcnn.data import prepare_from_config
from jaxcnn.errors import ConfigError

CLASSES = ("airplane", "cat", "ship")  # written unsorted below: the labels are the sorted names


def write_image(path: pathlib.Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[array.shape[-1]]
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array, mode).save(path)


def cifar_like(root: pathlib.Path, per_class: int = 4, size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """A CIFAR-10-style folder: one subfolder per class of 32x32 RGB PNGs; returns what was written."""
    rng = np.random.default_rng(seed)
    written = {}
    for name in reversed(CLASSES):
        for i in range(per_class):
            array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            write_image(root / name / f"{i:03d}.png", array)
            written[f"{name}/{i:03d}.png"] = array
    return written


def prepare(table, shape=(32, 32, 3), seed=0, source="<test>"):
    return prepare_from_config(table, input_shape=shape, seed=seed, source=source)


def test_a_class_folder_layout_reads_with_sorted_class_names_and_exact_pixels(tmp_path):
    written = cifar_like(tmp_path / "images")
    data, skipped = folders.load_folder(tmp_path / "images", channels=3)
    assert data.class_names == CLASSES and data.num_classes == 3 and not skipped
    assert data.images.shape == (12, 32, 32, 3) and data.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    np.testing.assert_array_equal(data.images[4], written["cat/000.png"] / np.float32(255))  # PNG is lossless
    train, val, test, recipe = prepare({"name": "folder", "path": str(tmp_path / "images"), "validation": 0.25,
                                        "test": 0.25, "normalize": "none"})
    assert (len(train), len(val), len(test)) == (6, 3, 3) and recipe.class_names == CLASSES
    assert sorted(np.concatenate([val.labels, test.labels]).tolist()) == [0, 0, 1, 1, 2, 2]  # stratified


def test_every_format_and_the_models_channels_choose_the_color_mode(tmp_path):
    rows, cols = np.meshgrid(np.arange(6), np.arange(5), indexing="ij")
    rgb = np.stack([rows * 40, cols * 50, np.full_like(rows, 100)], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it
    for ext in ("png", "bmp", "gif", "jpg"):
        write_image(tmp_path / "a" / f"x.{ext}", rgb)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    gray, _ = folders.load_folder(tmp_path, channels=1)
    color, _ = folders.load_folder(tmp_path, channels=3)
    rgba, _ = folders.load_folder(tmp_path, channels=4)
    assert gray.images.shape == (4, 6, 5, 1) and color.images.shape == (4, 6, 5, 3) and rgba.images.shape == (4, 6, 5, 4)
    by_ext = dict(zip(("bmp", "gif", "jpg", "png"), color.images))  # sorted file names
    np.testing.assert_array_equal(by_ext["png"], rgb / np.float32(255))
    np.testing.assert_array_equal(by_ext["bmp"], rgb / np.float32(255))
    assert np.abs(by_ext["jpg"] - rgb / 255).mean() < 0.05  # lossy, yet the same picture
    np.testing.assert_array_equal(by_ext["gif"], rgb / np.float32(255))  # 30 colours: the palette holds them
    np.testing.assert_array_equal(rgba.images[3][..., 3], 1.0)  # opaque


def test_image_size_resizes_and_crop_to_aspect_ratio_takes_the_centred_window(tmp_path):
    image = np.zeros((4, 8, 1), np.uint8)
    image[:, 2:6] = 255  # the centred 4x4 window is white
    write_image(tmp_path / "a" / "x.png", image)
    write_image(tmp_path / "a" / "y.png", np.zeros((6, 6, 1), np.uint8))
    cropped, _ = folders.load_folder(tmp_path, channels=1, image_size=(2, 2), crop_to_aspect_ratio=True,
                                     interpolation="nearest")
    np.testing.assert_array_equal(cropped.images[0], np.ones((2, 2, 1)))
    squeezed, _ = folders.load_folder(tmp_path, channels=1, image_size=(4, 4), interpolation="nearest")
    assert squeezed.images.shape == (2, 4, 4, 1) and squeezed.images[0].min() == 0.0  # the black edges stay
    with pytest.raises(ConfigError, match=r"several sizes \(4x8 in .*x.png, 6x6 in .*y.png\): give `image_size"):
        folders.load_folder(tmp_path, channels=1)


def test_train_val_test_folders_are_the_splits(tmp_path):
    for part, seed in (("train", 0), ("val", 1), ("test", 2)):
        cifar_like(tmp_path / part, per_class=2 if part != "train" else 4, seed=seed)
    train, val, test, _ = prepare({"name": "folder", "path": str(tmp_path)})
    assert (len(train), len(val), len(test)) == (12, 6, 6)
    assert (train.name, val.name, test.name) == ("folder/train", "folder/val", "folder/test")
    with pytest.raises(ConfigError, match="which are the splits: leave `validation` out"):
        prepare({"name": "folder", "path": str(tmp_path), "validation": 0.2})


def test_a_labels_csv_names_each_file(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(6):
        write_image(tmp_path / "all" / f"{i}.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("file,label\n" + "".join(f"{i}.png,{'dog' if i % 2 else 'bird'}\n" for i in range(6)))
    data, _ = folders.load_folder(tmp_path / "all", channels=3, labels=csv_file)
    assert data.class_names == ("bird", "dog") and data.labels.tolist() == [0, 1, 0, 1, 0, 1]
    csv_file.write_text("0.png,2\n1.png,0\n")
    data, _ = folders.load_folder(tmp_path / "all", channels=3, labels=csv_file)
    assert data.labels.tolist() == [2, 0] and data.num_classes == 3
    csv_file.write_text("7.png,1\n")
    with pytest.raises(ConfigError, match=r"lists '7.png', which is not a file"):
        folders.load_folder(tmp_path / "all", channels=3, labels=csv_file)


def test_a_truncated_image_is_refused_by_path_or_skipped_and_counted(tmp_path):
    cifar_like(tmp_path / "images", per_class=4)
    good = (tmp_path / "images" / "cat" / "000.png").read_bytes()
    bad = tmp_path / "images" / "cat" / "truncated.png"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(ConfigError, match=r"truncated.png: cannot read the image .*on_bad_image = \"skip\""):
        folders.load_folder(tmp_path / "images", channels=3)
    data, skipped = folders.load_folder(tmp_path / "images", channels=3, on_bad_image="skip")
    assert len(data) == 12 and len(skipped) == 1 and skipped[0].startswith(str(bad))

    from jaxcnn.fit import train_and_evaluate

    config = tmp_path / "run.toml"
    config.write_text("""
[model]
input_shape = [32, 32, 3]
[[layers]]
type = "RandomFlip"
mode = "horizontal"
[[layers]]
type = "Flatten"
[[layers]]
type = "Dense"
units = 3
activation = "softmax"
[data]
name = "folder"
path = "images"
on_bad_image = "skip"
validation = 0.25
test = 0.25
[train]
epochs = 1
batch_size = 4
""")
    results = train_and_evaluate(config, tmp_path / "run", progress=False)
    assert results["data"] == {"name": "folder/train", "train": 6, "validation": 3, "test": 3, "skipped_images": 1}
    assert json.loads((tmp_path / "run" / "results.json").read_text())["data"]["skipped_images"] == 1


@pytest.mark.parametrize("make, table, message", [
    (lambda root: None, {}, "holds no image: put each class's images in a subfolder"),
    (lambda root: write_image(root / "loose.png", np.zeros((2, 2, 3), np.uint8)), {},
     "holds 1 image but no class subfolder"),
    (lambda root: (cifar_like(root, per_class=1), (root / "dog").mkdir()), {}, "class folder 'dog' holds no image"),
    (lambda root: cifar_like(root, per_class=1), {"interpolation": "cubic"}, "value 'cubic'"),
    (lambda root: cifar_like(root, per_class=1), {"image_size": [32]}, "must be \\[height, width\\]"),
])
def test_a_bad_folder_is_refused_in_one_line_naming_it(tmp_path, make, table, message):
    root = tmp_path / "images"
    root.mkdir()
    make(root)
    with pytest.raises(ConfigError, match=message) as error:
        prepare({"name": "folder", "path": str(root), **table})
    assert "\n" not in str(error.value)


def test_a_folder_key_on_another_dataset_is_refused():
    with pytest.raises(ConfigError, match=r"data.image_size.*image folder's key"):
        prepare({"name": "digits", "image_size": [8, 8]}, shape=(8, 8, 1))
