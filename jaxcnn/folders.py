"""Image folders, as Keras's ``image_dataset_from_directory`` and torchvision's ``ImageFolder`` read
them: one subfolder per class (the sorted folder names are the labels, as Keras sorts them), or a
CSV of ``file,label`` rows; PNG, JPEG, BMP and GIF files decoded by Pillow.

The ``[data]`` table (:func:`jaxcnn.data.prepare_from_config` reads it)::

    [data]
    name = "folder"
    path = "images"              # relative to the config's folder
    # labels = "labels.csv"      # optional: `file,label` rows (a header row `file,label` is skipped);
                                 # labels are class names (sorted into indices) or integers
    # image_size = [32, 32]      # optional: every image resized to it (else they must share a size)
    # interpolation = "bilinear" # bilinear, nearest, bicubic, lanczos3, lanczos5, area
    # crop_to_aspect_ratio = false  # true: the centred window of image_size's aspect ratio, resized
    # on_bad_image = "refuse"    # or "skip": an unreadable or truncated file skipped and counted
    # stream = true              # decode each batch's files as the run needs them (jaxcnn.stream),
                                 # in `workers` processes; false: decode the whole folder into memory
    # workers = 2                # decoding processes (0: in the training process)
    # cache = true               # `jaxcnn train` keeps the decoded images in WORKDIR/pixels/ (as
                                 # many bytes as the images' pixels), so no file is decoded twice
    validation = 0.1             # a seeded, stratified split, as for the other datasets...
    test = 0.1

...or, where ``path`` holds ``train/`` (and ``val/``, ``test/``), those folders are the splits, each
with the same class subfolders (``validation`` and ``test`` fractions are then refused).

The channels come from the model's input (1: grayscale, 3: RGB, 4: RGBA: Keras's ``color_mode``);
images are float32 in [0, 1], as every jaxcnn loader gives them (``jaxcnn predict`` scales a PNG the
same way). Resizing is Pillow's, with the named filter (Keras resizes in TensorFlow: the same filters,
not the same rounding, and Pillow antialiases a downscale).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from jaxcnn.errors import ConfigError, plural

__all__ = ["BAD_IMAGE_CHOICES", "IMAGE_EXTENSIONS", "INTERPOLATIONS", "ImageFile", "decode", "list_folder", "pixels",
           "load_folder", "load_split_folders", "split_folders"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "lanczos3", "lanczos5", "area")
BAD_IMAGE_CHOICES = ("refuse", "skip")
COLOR_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


@dataclasses.dataclass(frozen=True)
class ImageFile:
    path: pathlib.Path
    label: int


def _images_under(folder: pathlib.Path) -> list[pathlib.Path]:
    """The image files under ``folder``, its subfolders included, in sorted order (Keras walks them
    so); hidden files left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [pathlib.Path(root) / f for f in sorted(files)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def list_folder(folder: str | os.PathLike[str], *, labels: str | os.PathLike[str] | None = None,
                class_names: Sequence[str] | None = None) -> tuple[list[ImageFile], tuple[str, ...]]:
    """The labelled image files of ``folder`` and the class names: its class subfolders, sorted
    (``class_names`` given: those, in that order; a subfolder not among them is refused), or the
    ``labels`` CSV. Refused: a missing folder, no class subfolder, an empty class folder, no image."""
    root = pathlib.Path(folder)
    if not root.is_dir():
        raise ConfigError("no such folder" if not root.exists() else "is not a folder", source=str(root))
    if labels is not None:
        return _listed(root, pathlib.Path(labels))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = _images_under(root)
        detail = (f"holds {plural(len(loose), 'image')} but no class subfolder" if loose else "holds no image")
        raise ConfigError(f"{detail}: put each class's images in a subfolder named after it "
                          "(images/cat/1.png, images/dog/2.png), or give `labels = \"file.csv\"`", source=str(root))
    names = tuple(classes) if class_names is None else tuple(class_names)
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise ConfigError(f"holds class folders the training folder lacks: {', '.join(unknown)} "
                          f"(its classes: {', '.join(names)})", source=str(root))
    files: list[ImageFile] = []
    for name in classes:
        found = _images_under(root / name)
        if not found:
            raise ConfigError(f"class folder {name!r} holds no image ({', '.join(IMAGE_EXTENSIONS)})",
                              source=str(root / name))
        files += [ImageFile(path, names.index(name)) for path in found]
    return files, names


def _listed(root: pathlib.Path, table: pathlib.Path) -> tuple[list[ImageFile], tuple[str, ...]]:
    """``file,label`` rows (paths relative to ``root``): class names sorted into indices, or integers."""
    if not table.is_file():
        raise ConfigError("no such labels file", source=str(table))
    with open(table, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if rows and [cell.strip().lower() for cell in rows[0]] == ["file", "label"]:
        rows = rows[1:]
    for number, row in enumerate(rows, 1):
        if len(row) != 2:
            raise ConfigError(f"row {number} ({','.join(row)!r}) is not `file,label`", source=str(table))
    if not rows:
        raise ConfigError("lists no image (`file,label` rows)", source=str(table))
    values = [row[1].strip() for row in rows]
    if all(v.lstrip("-").isdigit() for v in values):
        indices = [int(v) for v in values]
        if min(indices) < 0:
            raise ConfigError(f"label {min(indices)} is negative", source=str(table))
        names = tuple(str(i) for i in range(max(indices) + 1))
    else:
        names = tuple(sorted(set(values)))
        indices = [names.index(v) for v in values]
    files = []
    for (file, _), label in zip(rows, indices):
        path = root / file.strip()
        if not path.is_file():
            raise ConfigError(f"lists {file.strip()!r}, which is not a file under {root}", source=str(table))
        files.append(ImageFile(path, label))
    return files, names


def split_folders(root: str | os.PathLike[str]) -> dict[str, pathlib.Path] | None:
    """``{"train": ..., "val": ..., "test": ...}`` (those present) where ``root`` holds ``train/``."""
    root = pathlib.Path(root)
    if not (root / "train").is_dir():
        return None
    return {part: root / part for part in ("train", "val", "test") if (root / part).is_dir()}


class BadImage(Exception):
    def __init__(self, path: pathlib.Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _filter(interpolation: str) -> int:
    from PIL import Image

    return {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST,
            "bicubic": Image.Resampling.BICUBIC, "lanczos3": Image.Resampling.LANCZOS,
            "lanczos5": Image.Resampling.LANCZOS, "area": Image.Resampling.BOX}[interpolation]


def decode(path: pathlib.Path, *, channels: int, image_size: Sequence[int] | None = None,
           interpolation: str = "bilinear", crop_to_aspect_ratio: bool = False) -> np.ndarray:
    """One image as float32 ``(H, W, channels)`` in [0, 1]: :func:`pixels` divided by 255."""
    return pixels(path, channels=channels, image_size=image_size, interpolation=interpolation,
                  crop_to_aspect_ratio=crop_to_aspect_ratio).astype(np.float32) / 255.0


def pixels(path: pathlib.Path, *, channels: int, image_size: Sequence[int] | None = None,
           interpolation: str = "bilinear", crop_to_aspect_ratio: bool = False) -> np.ndarray:
    """One image as uint8 ``(H, W, channels)``: converted to the channels' color mode (a GIF's
    first frame), resized to ``image_size`` where given (the centred window of its aspect ratio
    first, with ``crop_to_aspect_ratio``: Keras's ``smart_resize``). Raises :class:`BadImage` for a
    file Pillow cannot read whole (unreadable, truncated, not an image)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # decodes the whole file: a truncated one fails here
            image = image.convert(COLOR_MODES[channels])
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadImage(path, str(error) or type(error).__name__) from None
    if image_size is not None:
        height, width = image_size
        if crop_to_aspect_ratio:
            w, h = image.size
            crop_h = min(h, max(1, int(w * height / width)))
            crop_w = min(w, max(1, int(h * width / height)))
            top, left = (h - crop_h) // 2, (w - crop_w) // 2
            image = image.crop((left, top, left + crop_w, top + crop_h))
        if image.size != (width, height):
            image = image.resize((width, height), resample=_filter(interpolation))
    array = np.asarray(image, dtype=np.uint8)
    return array.reshape(*array.shape[:2], channels)


def load_folder(folder: str | os.PathLike[str], *, channels: int, image_size: Sequence[int] | None = None,
                interpolation: str = "bilinear", crop_to_aspect_ratio: bool = False, on_bad_image: str = "refuse",
                labels: str | os.PathLike[str] | None = None, class_names: Sequence[str] | None = None,
                name: str | None = None) -> tuple[object, list[str]]:
    """The images of ``folder`` decoded into a :class:`jaxcnn.data.Dataset` (see :func:`list_folder`
    and :func:`decode`), and the paths skipped (``on_bad_image = "skip"``, each with its reason).
    Refused: a bad image (``on_bad_image = "refuse"``: its path and Pillow's reason), images of
    several sizes without ``image_size`` (two of them named)."""
    from jaxcnn.data import Dataset

    files, names = list_folder(folder, labels=labels, class_names=class_names)
    images, kept, skipped = [], [], []
    for file in files:
        try:  # uint8 until all are read: a quarter of the floats' memory
            images.append(pixels(file.path, channels=channels, image_size=image_size, interpolation=interpolation,
                                 crop_to_aspect_ratio=crop_to_aspect_ratio))
        except BadImage as bad:
            if on_bad_image != "skip":
                raise ConfigError(f"cannot read the image ({bad.reason}); set `on_bad_image = \"skip\"` in [data] "
                                  "to leave such files out", source=str(bad.path)) from None
            skipped.append(f"{bad.path}: {bad.reason}")
            continue
        kept.append(file)
        if images[-1].shape != images[0].shape:
            raise ConfigError(f"holds images of several sizes ({_size(images[0])} in {kept[0].path}, "
                              f"{_size(images[-1])} in {file.path}): give `image_size = [H, W]` in [data] to "
                              "resize them", source=str(folder))
    if not images:
        raise ConfigError(f"holds no readable image ({plural(len(skipped), 'file')} skipped)", source=str(folder))
    stacked = np.stack(images)
    del images
    scaled = np.empty(stacked.shape, np.float32)
    np.divide(stacked, np.float32(255.0), out=scaled)  # decode()'s values, written once
    del stacked
    dataset = Dataset(scaled, np.asarray([f.label for f in kept], np.int32), len(names),
                      name or pathlib.Path(folder).name, class_names=names)
    return dataset, skipped


def _size(image: np.ndarray) -> str:
    return f"{image.shape[0]}x{image.shape[1]}"


def load_split_folders(parts: dict[str, pathlib.Path], **options: object) -> tuple[object, object, object, list[str]]:
    """``(train, val, test, skipped)`` from ``train/``, ``val/`` and ``test/`` folders: the classes
    are the training folder's; a split without its folder is empty."""
    train, skipped = load_folder(parts["train"], name="folder/train", **options)  # type: ignore[arg-type]
    out = [train]
    for part in ("val", "test"):
        if part in parts:
            data, more = load_folder(parts[part], name=f"folder/{part}", class_names=train.class_names,
                                     **options)  # type: ignore[arg-type]
            if data.shape != train.shape:
                raise ConfigError(f"its images are {_size(data.images[0])}, the training folder's "
                                  f"{_size(train.images[0])}: give `image_size = [H, W]` in [data]",
                                  source=str(parts[part]))
            skipped += more
        else:
            data = train.take(np.arange(0))
            data = dataclasses.replace(data, name=f"folder/{part}")
        out.append(data)
    return out[0], out[1], out[2], skipped
