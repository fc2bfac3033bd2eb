"""The input pipeline through grain (jaxcnn.stream): which examples each process reads, the iterator's
state, a folder streamed from disk against the same folder in memory, and a streamed run killed with
SIGKILL and resumed, on small image folders the tests write."""

from __future__ import annotations

import json
import pathlib
import re
import time

import numpy as np
import pytest
from PIL import Image

from jaxcnn import stream
from jaxcnn.data import Dataset, batches, prepare_from_config
from jaxcnn.errors import ConfigError
from jaxcnn.fit import train_and_evaluate



def digits_folder(root: pathlib.Path, count: int = 400) -> pathlib.Path:
    """The first ``count`` of scikit-learn's digits as 8x8 grayscale PNGs, one folder per digit."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images[:count], digits.target[:count])):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image * 255.0 / 16.0).astype(np.uint8), "L").save(folder / f"{index:04d}.png")
    return root


CONFIG = """
[model]
name = "tiny"
input_shape = [10, 10, 1]

[[layers]]
type = "RandomTranslation"
height_factor = 0.1
width_factor = 0.1

[[layers]]
type = "Conv2D"
filters = 4
kernel_size = 3
padding = "same"
activation = "relu"

[[layers]]
type = "BatchNormalization"

[[layers]]
type = "MaxPooling2D"

[[layers]]
type = "Flatten"

[[layers]]
type = "Dense"
units = 10
activation = "softmax"

[data]
name = "folder"
path = "digits"
validation = 0.1
test = 0.2
{data}

[train]
epochs = {epochs}
batch_size = 32
seed = 3
checkpoint_every_steps = 2
keep_checkpoints = 2

[train.optimizer]
name = "sgd"
learning_rate = 0.05
momentum = 0.9
"""


def write_config(tmp_path: pathlib.Path, name: str = "run.toml", *, epochs: int = 2, data: str = "") -> pathlib.Path:
    if not (tmp_path / "digits").exists():
        digits_folder(tmp_path / "digits")
    path = tmp_path / name
    path.write_text(CONFIG.format(epochs=epochs, data=data))
    return path


# ---- which examples a process reads --------------------------------------------------------


@pytest.mark.parametrize("n, batch, processes", [(150, 32, 1), (150, 32, 2), (101, 30, 4), (7, 8, 2), (64, 16, 4)])
def test_each_process_reads_only_its_own_files_and_every_example_once_an_epoch(n, batch, processes):
    rows = -(-batch // processes)
    plans = [stream.Plan(n, batch, rows, process=p, processes=processes, sharded=True) for p in range(processes)]
    assert len({plan.steps for plan in plans}) == 1  # every process runs the same steps
    seen = []
    for plan in plans:
        order = stream.local_order(plan, shuffle=True, seed=5, epoch=1)
        mine = [plan.local(order, k) for k in range(plan.steps)]
        assert all(len(m) <= rows for m in mine)
        taken = np.concatenate(mine)
        assert set(taken.tolist()) == set(plan.members().tolist())  # its own files, each once
        seen += taken.tolist()
    assert sorted(seen) == list(range(n))
    steps = plans[0].steps
    assert plans[0].real_examples(steps) == n
    # the examples of the first k steps, all processes together
    for k in range(steps + 1):
        expected = sum(min(len(np.concatenate([[]] + [plan.local(stream.local_order(plan, shuffle=False, seed=0,
                                                                                        epoch=0), j)
                                                   for j in range(k)])), len(plan.members())) for plan in plans)
        assert plans[0].real_examples(k) == expected


def test_a_worker_decodes_only_its_process_files(tmp_path, monkeypatch):
    files, _, _, _ = prepare_from_config({"name": "folder", "path": str(digits_folder(tmp_path / "d", 60)),
                                          "validation": 0, "test": 0, "workers": 0}, input_shape=(8, 8, 1), seed=0)
    asked = []
    original = stream.ImageFiles.pixels
    monkeypatch.setattr(stream.ImageFiles, "pixels", lambda self, index: asked.append(list(index)) or original(self, index))
    plan = stream.Plan(len(files), 16, 8, process=1, processes=2, sharded=True)
    source = stream.BatchSource(files, plan, shuffle=True, seed=0, epochs=2)
    for g in range(len(source)):
        batch = source.batch(source[g])
        assert batch.images.shape == (8, 8, 8, 1) and batch.mask.sum() == len(asked[-1])
    assert {i for index in asked for i in index} == set(range(1, 60, 2))


def test_unsharded_rows_are_the_global_batch_split_between_processes():
    data = Dataset(np.arange(70, dtype=np.float32).reshape(70, 1, 1, 1), np.arange(70) % 10, 10, "d")
    whole = list(batches(data, 32, shuffle=True, seed=1, epoch=2))
    for processes in (1, 2, 4):
        parts = []
        for p in range(processes):
            plan = stream.Plan(70, 32, 32 // processes, process=p, processes=processes)
            source = stream.BatchSource(data, plan, shuffle=True, seed=1, epochs=3)
            parts.append([source.batch(source[2 * plan.steps + k]) for k in range(plan.steps)])
        for k, batch in enumerate(whole):
            np.testing.assert_array_equal(np.concatenate([part[k].images for part in parts]), batch.images)
            np.testing.assert_array_equal(np.concatenate([part[k].mask for part in parts]), batch.mask)


# ---- grain's iterator state ----------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_a_feed_restored_from_its_state_goes_on_with_the_batch_that_was_next(tmp_path, workers):
    files, _, _, _ = prepare_from_config({"name": "folder", "path": str(digits_folder(tmp_path / "d", 100)),
                                          "validation": 0, "test": 0, "workers": workers}, input_shape=(8, 8, 1), seed=0)
    plan = stream.Plan(len(files), 16, 16)
    with stream.Feed(files, plan, shuffle=True, seed=4, epochs=3, workers=workers) as feed:
        pairs = list(feed.take(12))
    assert pairs[6][1]["next"] == 7 and pairs[6][1]["workers"] == workers and "grain" in pairs[6][1]
    state = json.loads(json.dumps(pairs[6][1]))  # as a checkpoint's record keeps it
    with stream.Feed(files, plan, shuffle=True, seed=4, epochs=3, workers=workers) as feed:
        feed.restore(state, 7)
        again = [batch for batch, _ in feed.take(5)]
    for (batch, _), other in zip(pairs[7:], again):
        for a, b in zip(batch, other):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(pairs[0][0].images, pairs[plan.steps][0].images)  # epochs differ in order


def test_the_pixel_cache_read_in_threads_gives_the_decoded_batches_across_epochs(tmp_path):
    table = {"name": "folder", "path": str(digits_folder(tmp_path / "d", 60)), "validation": 0, "test": 0}
    decoded, _, _, _ = prepare_from_config({**table, "workers": 0}, input_shape=(8, 8, 1), seed=0)
    cached, _, _, _ = prepare_from_config(table, input_shape=(8, 8, 1), seed=0, cache_dir=tmp_path / "pixels")
    assert decoded.cache is None and cached.cache == str(tmp_path / "pixels" / "folder.0.u8")
    assert (tmp_path / "pixels" / "folder.0.u8").stat().st_size == 60 * 8 * 8
    plan = stream.Plan(60, 16, 16)
    with stream.Feed(decoded, plan, shuffle=True, seed=1, epochs=10) as a, \
            stream.Feed(cached, plan, shuffle=True, seed=1, epochs=10, workers=2) as b:
        assert b.threads == 2 and b.workers == 0  # a cached folder is read in threads
        for (x, _), (y, _) in zip(a.take(40), b.take(40), strict=True):  # 10 epochs of 4 steps
            for u, v in zip(x, y):
                np.testing.assert_array_equal(u, v)


def test_a_state_of_another_step_is_refused(tmp_path):
    files, _, _, _ = prepare_from_config({"name": "folder", "path": str(digits_folder(tmp_path / "d", 40)),
                                          "validation": 0, "test": 0, "workers": 0}, input_shape=(8, 8, 1), seed=0)
    with stream.Feed(files, stream.Plan(len(files), 8, 8), shuffle=True, epochs=2) as feed:
        (_, state), = feed.take(1)
        with pytest.raises(Exception, match="holds the data pipeline's position of step 1"):
            feed.restore(state, 3)


# ---- a folder streamed from disk -----------------------------------------------------------


def test_a_streamed_folder_is_the_folder_in_memory_batch_for_batch(tmp_path):
    root = digits_folder(tmp_path / "d", 120)
    table = {"name": "folder", "path": str(root), "validation": 0.2, "test": 0.1, "limit": 70}
    memory = prepare_from_config({**table, "stream": False}, input_shape=(10, 10, 3), seed=2)
    streamed = prepare_from_config({**table, "workers": 0}, input_shape=(10, 10, 3), seed=2)
    assert isinstance(streamed[0], stream.ImageFiles) and isinstance(memory[0], Dataset)
    assert streamed[3] == memory[3]  # the preprocessing recorded for serving: the same statistics
    for a, b in zip(memory[:3], streamed[:3]):
        assert (len(a), a.name, a.labels.tolist()) == (len(b), b.name, b.labels.tolist())
        np.testing.assert_array_equal(a.images, b.read(np.arange(len(b))))


def test_a_streamed_run_trains_as_the_run_from_memory_with_or_without_its_pixel_cache(tmp_path):
    memory = train_and_evaluate(write_config(tmp_path, "memory.toml", data="stream = false"), tmp_path / "m",
                                progress=False)
    cached = []
    streamed = train_and_evaluate(write_config(tmp_path, "streamed.toml", data="workers = 1"), tmp_path / "s",
                                  progress=False,
                                  on_step=lambda step: cached.append(sorted(p.name for p in (tmp_path / "s" / "pixels").iterdir())))
    decoded = train_and_evaluate(write_config(tmp_path, "decoded.toml", data="workers = 1\ncache = false"),
                                 tmp_path / "d", progress=False)
    assert memory["params_sha256"] == streamed["params_sha256"] == decoded["params_sha256"]
    assert memory["data"] == streamed["data"] == {"name": "folder/train", "train": 280, "validation": 40,
                                                  "test": 80, "skipped_images": 0}
    assert (memory["test_loss"], memory["test_accuracy"]) == (streamed["test_loss"], streamed["test_accuracy"])
    # the decoded pixels of the listing (400 files of 8x8 bytes) during the run, gone after it
    assert cached[0] == ["folder.0.u8"] and (tmp_path / "s" / "pixels").exists() is False
    assert not (tmp_path / "d" / "pixels").exists()


def test_a_streamed_folders_bad_images_and_sizes_are_found_before_training(tmp_path):
    root = digits_folder(tmp_path / "d", 40)
    good = (root / "3" / "0003.png").read_bytes()
    (root / "3" / "truncated.png").write_bytes(good[: len(good) // 2])
    table = {"name": "folder", "path": str(root), "validation": 0, "test": 0, "workers": 1}
    with pytest.raises(ConfigError, match=r"truncated.png: cannot read the image .*on_bad_image = \"skip\"") as error:
        prepare_from_config(table, input_shape=(8, 8, 1), seed=0)
    assert "\n" not in str(error.value)
    train, _, _, _ = prepare_from_config({**table, "on_bad_image": "skip"}, input_shape=(8, 8, 1), seed=0)
    assert len(train) == 40 and len(train.skipped) == 1 and train.skipped[0].startswith(str(root / "3" / "truncated.png"))
    Image.fromarray(np.zeros((9, 8), np.uint8), "L").save(root / "3" / "tall.png")
    with pytest.raises(ConfigError, match=re.escape(f"{root}: ") + r"holds images of several sizes \(8x8 in .*, 9x8 in .*tall.png\)"):
        prepare_from_config({**table, "on_bad_image": "skip"}, input_shape=(8, 8, 1), seed=0)
    with pytest.raises(ConfigError, match=r"streamed and resized as they are decoded: give `image_size = \[12, 12\]`"):
        prepare_from_config({**table, "on_bad_image": "skip", "image_size": [9, 9], "fit": "resize"},
                            input_shape=(12, 12, 1), seed=0)
    for key, value, message in (("workers", -1, "must be the number of decoding processes"),
                                ("stream", "yes", "must be true .* or false")):
        with pytest.raises(ConfigError, match=rf"data.{key}.*{message}"):
            prepare_from_config({**table, key: value}, input_shape=(8, 8, 1), seed=0)


def _children(pid: int) -> list[int]:
    found = []
    for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


@pytest.mark.slow
def test_sigkill_mid_run_of_a_streamed_folder_then_resume_gives_the_uninterrupted_parameters(tmp_path):
    from test_fit import kill_mid_run_and_resume

    # without the pixel cache: grain's worker processes decode every batch, and its iterator state
    # (saved in each checkpoint) is that of the processes' interleave
    config = write_config(tmp_path, epochs=6, data="workers = 2\ncache = false")
    workers: set[int] = set()
    a, b = kill_mid_run_and_resume(config, tmp_path, at_step=12,
                                   watch=lambda process: workers.update(_children(process.pid)))
    assert a["params_sha256"] == b["params_sha256"]
    assert a["steps"] == b["steps"] == 6 * 9  # 280 examples in batches of 32
    assert workers  # grain's decoding processes were running...
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(pathlib.Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.1)
    alive = [w for w in workers if pathlib.Path(f"/proc/{w}/status").exists()
             and "State:\tZ" not in pathlib.Path(f"/proc/{w}/status").read_text()]
    assert not alive  # ...and did not outlive the killed run
