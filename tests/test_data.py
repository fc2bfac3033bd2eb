"""jaxcnn.data: loaders, the stratified split, normalization, fit_to_shape, fixed-shape batches,
prefetch and the [data] table."""

from __future__ import annotations

import pickle
import re

import jax
import numpy as np
import pytest

from jaxcnn import data
from jaxcnn.data import Batch, Dataset
from jaxcnn.errors import ConfigError


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return data.load_digits()


def toy(n: int = 40, shape=(4, 4, 1), classes: int = 4, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    images = rng.random((n, *shape), dtype=np.float32)
    labels = np.arange(n) % classes
    return Dataset(images, labels, classes, "toy")


def message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


# --------------------------------------------------------------------------------------------
# Dataset and loaders.


def test_dataset_converts_dtypes_and_checks_shapes():
    ds = Dataset(np.zeros((3, 2, 2, 1), np.float64), np.array([0, 1, 2], np.int64), 3, "x")
    assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int32 and len(ds) == 3
    assert ds.shape == (2, 2, 1)
    assert "x" in repr(ds) and "(3, 2, 2, 1)" in repr(ds)
    with pytest.raises(ValueError, match="N, H, W, C"):
        Dataset(np.zeros((3, 2, 2)), np.zeros(3, int), 3, "x")
    with pytest.raises(ValueError, match="labels"):
        Dataset(np.zeros((3, 2, 2, 1)), np.zeros(2, int), 3, "x")


def test_digits(digits):
    assert digits.images.shape == (1797, 8, 8, 1)
    assert digits.images.dtype == np.float32 and digits.labels.dtype == np.int32
    assert digits.images.min() == 0.0 and digits.images.max() == 1.0
    assert digits.num_classes == 10 and len(digits) == 1797 and digits.name == "digits"
    assert set(np.unique(digits.labels)) == set(range(10))
    from sklearn.datasets import load_digits  # the file read directly equals scikit-learn's loader's reading
    reference = load_digits()
    np.testing.assert_array_equal(digits.images[..., 0], (reference.images / 16).astype(np.float32))
    np.testing.assert_array_equal(digits.labels, reference.target)
    assert digits.class_names == tuple(str(n) for n in reference.target_names)


def write_pickle(path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"filenames": [b"f%d.png" % i for i in range(n)]}


@pytest.fixture
def cifar_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {"data_batch_1": cifar_batch(5, 1), "data_batch_2": cifar_batch(4, 2),
               "test_batch": cifar_batch(3, 3)}
    for name, batch in batches.items():
        write_pickle(folder / name, batch)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return folder, batches


def test_cifar10_loads_train_and_test(cifar_folder):
    folder, batches = cifar_folder
    train = data.load_cifar10(folder)
    assert train.images.shape == (9, 32, 32, 3) and train.images.dtype == np.float32
    assert train.num_classes == 10 and train.class_names[0] == "airplane"
    labels = batches["data_batch_1"][b"labels"] + batches["data_batch_2"][b"labels"]
    assert train.labels.tolist() == labels
    # CHW -> HWC: pixel (row 7, column 11) of channel c is data[c * 1024 + 7 * 32 + 11].
    raw = batches["data_batch_2"][b"data"]
    for c in range(3):
        assert train.images[5 + 2, 7, 11, c] == pytest.approx(raw[2, c * 1024 + 7 * 32 + 11] / 255)
    assert np.array_equal(train.images[0], raw_to_hwc(batches["data_batch_1"][b"data"][0]))
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0

    test = data.load_cifar10(folder, subset="test")
    assert test.images.shape == (3, 32, 32, 3)
    assert test.labels.tolist() == batches["test_batch"][b"labels"]
    # The parent folder of cifar-10-batches-py works too.
    assert len(data.load_cifar10(folder.parent, subset="test")) == 3


def raw_to_hwc(row: np.ndarray) -> np.ndarray:
    return np.stack([row[c * 1024:(c + 1) * 1024].reshape(32, 32) for c in range(3)],
                    axis=-1).astype(np.float32) / 255


def test_cifar10_python3_pickles_with_str_keys(tmp_path):
    batch = {"data": np.full((2, 3072), 255, np.uint8), "labels": [1, 2]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))  # protocol 5, str keys
    test = data.load_cifar10(tmp_path, subset="test")
    assert test.labels.tolist() == [1, 2] and np.all(test.images == 1.0)


def test_cifar10_missing_files(tmp_path, cifar_folder):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="no such folder") as excinfo:
        data.load_cifar10(missing)
    assert str(missing) in message(excinfo)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no such file") as excinfo:
        data.load_cifar10(empty)
    assert str(empty / "data_batch_1") in message(excinfo)
    with pytest.raises(ConfigError, match="no such file") as excinfo:
        data.load_cifar10(empty, subset="test")
    assert str(empty / "test_batch") in message(excinfo)

    folder, _ = cifar_folder
    write_pickle(folder / "data_batch_4", cifar_batch(2, 4))  # a gap: data_batch_3 is missing
    with pytest.raises(ConfigError, match="no such file") as excinfo:
        data.load_cifar10(folder)
    assert str(folder / "data_batch_3") in message(excinfo)

    with pytest.raises(ConfigError, match="subset"):
        data.load_cifar10(folder, subset="validation")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("content, expected", [
    (b"not a pickle at all", "not a CIFAR-10 batch file"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:-20], "not a CIFAR-10 batch file"),
    (pickle.dumps([1, 2, 3]), "must be a pickled dict"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "b'data' and b'labels'"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), r"\(N, 3072\)"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "1 entry for 2 images"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), r"0\.\.9"),
    (pickle.dumps({b"data": Evil(), b"labels": [0]}), "refusing to load the global"),
])
def test_cifar10_corrupt_files(tmp_path, content, expected, capsys):
    path = tmp_path / "test_batch"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=expected) as excinfo:
        data.load_cifar10(tmp_path, subset="test")
    assert str(path) in message(excinfo)
    assert excinfo.value.source == str(path)
    assert "pwned" not in capsys.readouterr().out


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 7), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    path = tmp_path / "mine.npz"
    np.savez(path, images=images, labels=labels)
    ds = data.load_npz(path)
    assert ds.images.shape == (6, 5, 7, 1) and ds.name == "mine" and ds.num_classes == 3
    assert np.allclose(ds.images[..., 0], images / 255)
    assert ds.labels.tolist() == labels.tolist()

    floats = rng.random((4, 3, 3, 2)).astype(np.float64)
    np.savez(path, images=floats, labels=np.array([0, 1, 1, 0]), class_names=np.array(["a", "b", "c"]))
    ds = data.load_npz(path)
    assert ds.images.shape == (4, 3, 3, 2) and ds.images.dtype == np.float32
    assert ds.num_classes == 3 and ds.class_names == ("a", "b", "c")


@pytest.mark.parametrize("arrays, expected", [
    ({"images": np.zeros((2, 3, 3))}, "missing the array"),
    ({"images": np.zeros((2, 3)), "labels": np.zeros(2, int)}, r"\(N, H, W\)"),
    ({"images": np.zeros((2, 3, 3)), "labels": np.zeros(3, int)}, "labels"),
    ({"images": np.zeros((2, 3, 3)), "labels": np.zeros(2)}, "integer class indices"),
    ({"images": np.full((2, 3, 3), 300), "labels": np.zeros(2, int)}, r"0\.\.255"),
    ({"images": np.full((2, 3, 3), np.nan), "labels": np.zeros(2, int)}, "NaN"),
    ({"images": np.zeros((2, 3, 3)), "labels": np.array([0, -1])}, "non-negative"),
])
def test_npz_refusals(tmp_path, arrays, expected):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match=expected) as excinfo:
        data.load_npz(path)
    assert str(path) in message(excinfo)


def test_npz_missing_and_corrupt(tmp_path):
    with pytest.raises(ConfigError, match="no such file") as excinfo:
        data.load_npz(tmp_path / "nope.npz")
    assert str(tmp_path / "nope.npz") in message(excinfo)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(ConfigError, match="not a readable .npz") as excinfo:
        data.load_npz(bad)
    assert str(bad) in message(excinfo)


# --------------------------------------------------------------------------------------------
# split and normalize.


def test_split_disjoint_deterministic_stratified(digits):
    train, val, test = data.split(digits, validation=0.2, test=0.1, seed=3)
    assert (len(train), len(val), len(test)) == (1797 - 359 - 180, 359, 180)
    # Disjoint and complete: identify the examples by their pixels + label.
    keys = [{(x.tobytes(), int(y)) for x, y in zip(part.images, part.labels)}
            for part in (train, val, test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert sum(map(len, keys)) == len({(x.tobytes(), int(y))
                                       for x, y in zip(digits.images, digits.labels)})
    # Stratified: every class within one example of its share.
    counts = np.bincount(digits.labels, minlength=10)
    for part, fraction in ((val, 0.2), (test, 0.1)):
        got = np.bincount(part.labels, minlength=10)
        assert np.all(np.abs(got - counts * fraction) <= 1.5), (got, counts * fraction)
    # Deterministic for a seed, different for another.
    again = data.split(digits, validation=0.2, test=0.1, seed=3)
    for a, b in zip((train, val, test), again):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    other = data.split(digits, validation=0.2, test=0.1, seed=4)
    assert not np.array_equal(other[1].images, val.images)
    # The first examples of train are stratified too (what `limit` keeps).
    assert set(np.unique(train.labels[:30])) == set(range(10))


def test_split_zero_fraction_gives_empty_dataset(digits):
    train, val, test = data.split(digits, validation=0.0, test=0.0)
    assert len(train) == 1797
    for part in (val, test):
        assert part.images.shape == (0, 8, 8, 1) and part.labels.shape == (0,)
        assert part.num_classes == 10


@pytest.mark.parametrize("kwargs, key", [
    ({"validation": 1.0}, "validation"), ({"test": -0.1}, "test"), ({"test": True}, "test"),
    ({"validation": 0.6, "test": 0.5}, "validation"),
])
def test_split_refusals(kwargs, key):
    with pytest.raises(ConfigError) as excinfo:
        data.split(toy(), **kwargs)
    assert excinfo.value.key == key


def test_normalize_uses_train_statistics_only():
    train = toy(20, (3, 3, 2))
    other = Dataset(train.images * 10 + 5, train.labels, 4, "other")
    mean, std = data.normalization_stats(train)
    assert mean.shape == (2,) and std.shape == (2,)
    assert np.allclose(mean, train.images.reshape(-1, 2).mean(0))
    assert np.allclose(std, train.images.reshape(-1, 2).std(0))
    n_train, n_other = data.normalize(train, other)
    assert np.allclose(n_train.images.reshape(-1, 2).mean(0), 0, atol=1e-5)
    assert np.allclose(n_train.images.reshape(-1, 2).std(0), 1, atol=1e-4)
    assert np.allclose(n_other.images, (other.images - mean) / std, atol=1e-5)
    # The other set's own statistics play no part.
    assert not np.allclose(n_other.images.reshape(-1, 2).mean(0), 0, atol=1)
    for mode in ("scale", "none"):
        out = data.normalize(train, other, mode=mode)
        assert out[0] is train and out[1] is other
    assert len(data.normalize(train)) == 1
    with pytest.raises(ConfigError, match="unknown normalize mode"):
        data.normalize(train, mode="minmax")


def test_normalize_constant_channel():
    ds = Dataset(np.full((4, 2, 2, 1), 0.5), np.zeros(4, int), 1, "flat")
    (out,) = data.normalize(ds)
    assert np.all(np.isfinite(out.images)) and np.all(out.images == 0)


# --------------------------------------------------------------------------------------------
# fit_to_shape.


def test_fit_pad_centres_and_repeats_channels():
    ds = toy(3, (4, 4, 1))
    out = data.fit_to_shape(ds, (8, 9, 3))
    assert out.images.shape == (3, 8, 9, 3)
    for c in range(3):
        assert np.array_equal(out.images[:, 2:6, 2:6, c], ds.images[..., 0])
    mask = np.ones((8, 9), bool)
    mask[2:6, 2:6] = False
    assert np.all(out.images[:, mask, :] == 0)
    assert data.fit_to_shape(ds, (4, 4, 1)) is ds
    assert data.fit_to_shape(ds, (4, 4, 1), method="none") is ds


def test_fit_resize():
    ds = Dataset(np.full((2, 4, 4, 1), 0.25), np.zeros(2, int), 1, "c")
    out = data.fit_to_shape(ds, (8, 8, 3), method="resize")
    assert out.images.shape == (2, 8, 8, 3) and np.allclose(out.images, 0.25)
    ramp = Dataset(np.linspace(0, 1, 16).reshape(1, 4, 4, 1), np.zeros(1, int), 1, "r")
    small = data.fit_to_shape(ramp, (2, 2, 1), method="resize")
    expected = jax.image.resize(ramp.images, (1, 2, 2, 1), "bilinear")
    assert np.allclose(small.images, expected)


@pytest.mark.parametrize("have, target, method, expected", [
    ((8, 8, 1), (4, 4, 1), "pad", "larger than"),
    ((8, 8, 1), (8, 4, 1), "pad", "larger than"),
    ((4, 4, 2), (4, 4, 3), "pad", "2 channels"),
    ((4, 4, 3), (4, 4, 1), "resize", "3 channels"),
    ((4, 4, 1), (8, 8, 1), "none", "do not match"),
    ((4, 4, 1), (4, 4, 3), "none", "do not match"),
])
def test_fit_refusals_name_both_shapes(have, target, method, expected):
    with pytest.raises(ConfigError, match=expected) as excinfo:
        data.fit_to_shape(toy(2, have), target, method=method)
    assert str(have) in message(excinfo) and str(target) in message(excinfo)
    assert excinfo.value.key == "fit"


def test_fit_unknown_method():
    with pytest.raises(ConfigError, match="unknown fit method; did you mean `pad`"):
        data.fit_to_shape(toy(), (4, 4, 1), method="pads")


# --------------------------------------------------------------------------------------------
# Batches and prefetch.


def test_num_batches():
    assert data.num_batches(10, 3) == 4
    assert data.num_batches(10, 3, drop_remainder=True) == 3
    assert data.num_batches(9, 3) == 3 == data.num_batches(9, 3, drop_remainder=True)
    assert data.num_batches(0, 3) == 0
    assert data.num_batches(2, 5) == 1 and data.num_batches(2, 5, drop_remainder=True) == 0
    with pytest.raises(ValueError, match="batch_size"):
        data.num_batches(10, 0)


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_cover_the_epoch_once(shuffle):
    ds = Dataset(np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1) + 1, np.arange(10) % 3,
                 3, "ids")
    out = list(data.batches(ds, 4, shuffle=shuffle, seed=1, epoch=2))
    assert len(out) == data.num_batches(10, 4) == 3
    for batch in out:
        assert isinstance(batch, Batch)
        assert batch.images.shape == (4, 1, 1, 1) and batch.labels.shape == (4,)
        assert batch.mask.shape == (4,) and batch.mask.dtype == np.float32
        assert batch.images.dtype == np.float32 and batch.labels.dtype == np.int32
    ids = np.concatenate([b.images.reshape(-1)[b.mask == 1] for b in out])
    assert sorted(ids.tolist()) == list(range(1, 11))
    labels = np.concatenate([b.labels[b.mask == 1] for b in out])
    assert np.array_equal(labels, (ids.astype(int) - 1) % 3)
    assert out[-1].mask.tolist() == [1, 1, 0, 0]
    assert np.all(out[-1].images[2:] == 0) and np.all(out[-1].labels[2:] == 0)
    if not shuffle:
        assert ids.tolist() == list(range(1, 11))
    dropped = list(data.batches(ds, 4, shuffle=shuffle, seed=1, epoch=2, drop_remainder=True))
    assert len(dropped) == 2 and all(b.mask.all() for b in dropped)


def order(ds, **kwargs) -> list[float]:
    return np.concatenate([b.images.reshape(-1) for b in data.batches(ds, 5, **kwargs)]).tolist()


def test_batches_order_is_fixed_by_seed_and_epoch():
    ds = Dataset(np.arange(50, dtype=np.float32).reshape(50, 1, 1, 1), np.zeros(50, int), 1, "ids")
    assert order(ds, shuffle=True, seed=0, epoch=0) == order(ds, shuffle=True, seed=0, epoch=0)
    assert order(ds, shuffle=True, seed=0, epoch=0) != order(ds, shuffle=True, seed=0, epoch=1)
    assert order(ds, shuffle=True, seed=0, epoch=0) != order(ds, shuffle=True, seed=1, epoch=0)
    expected = np.random.default_rng([7, 3]).permutation(50).astype(float).tolist()
    assert order(ds, shuffle=True, seed=7, epoch=3) == expected


@pytest.mark.parametrize("start", [0, 1, 4, 7, 8])
def test_batches_resume_at_start(start):
    ds = toy(37, (2, 2, 1))
    full = list(data.batches(ds, 5, shuffle=True, seed=3, epoch=1))
    resumed = list(data.batches(ds, 5, shuffle=True, seed=3, epoch=1, start=start))
    assert len(resumed) == len(full) - start
    for a, b in zip(full[start:], resumed):
        for x, y in zip(a, b):
            assert np.array_equal(x, y)


def test_batches_refusals_and_edge_cases():
    ds = toy(10)
    with pytest.raises(ValueError, match="start"):
        data.batches(ds, 4, shuffle=False, start=4)
    with pytest.raises(ValueError, match="start"):
        data.batches(ds, 4, shuffle=False, start=-1)
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(ds, 0, shuffle=False)
    (only,) = data.batches(toy(3), 8, shuffle=True)
    assert only.images.shape == (8, 4, 4, 1) and only.mask.sum() == 3
    assert list(data.batches(toy(3).take([]), 8, shuffle=True)) == []


def test_prefetch_to_device():
    ds = toy(11, (2, 2, 1))
    host = list(data.batches(ds, 4, shuffle=True, seed=2))
    pulled = []

    def source():
        for b in host:
            pulled.append(b)
            yield b

    it = data.prefetch_to_device(source(), size=2)
    first = next(it)
    assert len(pulled) == 2  # two batches in flight
    device = [first, *it]
    assert len(device) == len(host)
    for d, h in zip(device, host):
        assert isinstance(d, Batch)
        for x, y in zip(d, h):
            assert isinstance(x, jax.Array)
            assert np.array_equal(np.asarray(x), y)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    (one,) = data.prefetch_to_device(iter(host[:1]), size=3, sharding=sharding)
    assert one.images.sharding == sharding
    assert list(data.prefetch_to_device(iter([]))) == []
    with pytest.raises(ValueError, match="size"):
        next(data.prefetch_to_device(iter(host), size=0))


# --------------------------------------------------------------------------------------------
# dataset_from_config.


def test_config_digits_fit_to_cifar_shape():
    train, val, test = data.dataset_from_config(
        {"name": "digits", "validation": 0.1, "test": 0.2, "fit": "pad"},
        input_shape=(32, 32, 3), seed=0)
    assert (len(train), len(val), len(test)) == (1797 - 180 - 359, 180, 359)
    for part in (train, val, test):
        assert part.images.shape[1:] == (32, 32, 3) and part.num_classes == 10
    # Standardized with the train statistics before padding: train's mean is 0.
    assert np.allclose(train.images[:, 12:20, 12:20, :].mean(axis=(0, 1, 2)), 0, atol=1e-5)
    assert np.all(train.images[:, :12] == 0)
    # Same seed, same split; limit keeps the first training examples.
    again, _, _ = data.dataset_from_config({"limit": 100, "normalize": "scale"},
                                           input_shape=(8, 8, 1), seed=0)
    assert len(again) == 100 and again.images.min() >= 0 and again.images.max() <= 1
    plain, _, _ = data.dataset_from_config({"normalize": "scale"}, input_shape=(8, 8, 1), seed=0)
    assert np.array_equal(again.images, plain.images[:100])
    resized, _, _ = data.dataset_from_config({"fit": "resize", "limit": 10},
                                             input_shape=(16, 16, 1), seed=0)
    assert resized.images.shape == (10, 16, 16, 1)


def test_config_cifar10_relative_path(cifar_folder):
    folder, batches = cifar_folder
    config_file = folder.parent / "run.toml"
    train, val, test = data.dataset_from_config(
        {"name": "cifar10", "path": folder.name, "validation": 0.3, "normalize": "none"},
        input_shape=(32, 32, 3), seed=1, source=str(config_file))
    assert len(train) + len(val) == 9 and len(val) == 3
    assert test.labels.tolist() == batches["test_batch"][b"labels"]
    assert np.array_equal(test.images[0], raw_to_hwc(batches["test_batch"][b"data"][0]))
    _, _, none = data.dataset_from_config(
        {"name": "cifar10", "path": str(folder), "test": 0}, input_shape=(32, 32, 3), seed=1)
    assert none.images.shape == (0, 32, 32, 3)


def test_config_npz(tmp_path):
    path = tmp_path / "sets" / "mine.npz"
    path.parent.mkdir()
    np.savez(path, images=np.zeros((20, 6, 6), np.uint8), labels=np.arange(20) % 2)
    train, val, test = data.dataset_from_config(
        {"name": "npz", "path": "sets/mine.npz", "validation": 0.2, "test": 0.2, "fit": "none"},
        input_shape=(6, 6, 1), seed=0, source=str(tmp_path / "cfg.toml"))
    assert (len(train), len(val), len(test)) == (12, 4, 4)
    assert np.bincount(val.labels).tolist() == [2, 2]


@pytest.mark.parametrize("table, key, expected", [
    ({"nmae": "digits"}, "data.nmae", "unknown key in [data]; did you mean `name`? known: name, "
                                      "path, validation, test, normalize, fit, limit"),
    ({"name": "mnist"}, "data.name", "unknown value 'mnist'; allowed: digits, cifar10, npz"),
    ({"name": 3}, "data.name", "must be one of digits, cifar10, npz, folder; got an integer (3)"),
    ({"normalize": "minmax"}, "data.normalize", "allowed: standardize, scale, none"),
    ({"normalize": True}, "data.normalize", "got a boolean (True)"),
    ({"fit": "crop"}, "data.fit", "allowed: pad, resize, none"),
    ({"validation": 1.0}, "data.validation", "must be a fraction in [0, 1), got a float (1.0)"),
    ({"validation": "0.1"}, "data.validation", "got a string ('0.1')"),
    ({"test": -0.5}, "data.test", "must be a fraction in [0, 1)"),
    ({"test": True}, "data.test", "got a boolean (True)"),
    ({"validation": 0.5, "test": 0.5}, "data.validation", "must be below 1"),
    ({"limit": 0}, "data.limit", "must be a positive integer, got an integer (0)"),
    ({"limit": 2.5}, "data.limit", "got a float (2.5)"),
    ({"limit": True}, "data.limit", "got a boolean (True)"),
    ({"path": "x"}, "data.path", "digits dataset ships with scikit-learn and takes no path"),
    ({"name": "cifar10"}, "data.path", "needs path"),
    ({"name": "npz"}, "data.path", "needs path"),
    ({"name": "npz", "path": 3}, "data.path", "must be a non-empty string, got an integer (3)"),
    ({"name": "npz", "path": ""}, "data.path", "must be a non-empty string"),
    ({"name": "cifar10", "path": "c", "test": 0.1}, "data.test", "its own test set"),
    ({"fit": "none"}, "data.fit", "(8, 8, 1)"),
])
def test_config_refusals(table, key, expected):
    with pytest.raises(ConfigError) as excinfo:
        data.dataset_from_config(table, input_shape=(32, 32, 3), seed=0, source="run.toml")
    error = excinfo.value
    assert error.source == "run.toml" and error.key == key
    assert expected in message(excinfo)
    assert message(excinfo).startswith(f"run.toml: key `{key}`: ")


def test_config_refusals_from_the_files(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        data.dataset_from_config({"name": "cifar10", "path": "nowhere"}, input_shape=(32, 32, 3),
                                 seed=0, source=str(tmp_path / "run.toml"))
    assert excinfo.value.key == "data.path" and excinfo.value.source == str(tmp_path / "run.toml")
    assert str(tmp_path / "nowhere") in message(excinfo) and "no such folder" in message(excinfo)
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "x.npz"))):
        data.dataset_from_config({"name": "npz", "path": "x.npz"}, input_shape=(32, 32, 3),
                                 seed=0, source=str(tmp_path / "run.toml"))
    # "<config>" (no file): relative paths stay relative to the working directory.
    with pytest.raises(ConfigError, match=r"no such file"):
        data.dataset_from_config({"name": "npz", "path": "surely-missing.npz"},
                                 input_shape=(32, 32, 3), seed=0)
    with pytest.raises(ConfigError, match="must be a table") as excinfo:
        data.dataset_from_config([1], input_shape=(32, 32, 3), seed=0)
    assert excinfo.value.key == "data"
    with pytest.raises(ConfigError, match="input shape") as excinfo:
        data.dataset_from_config({}, input_shape=(32, 32), seed=0)
    assert excinfo.value.key == "model.input_shape"
    with pytest.raises(ConfigError, match="larger than") as excinfo:
        data.dataset_from_config({}, input_shape=(4, 4, 1), seed=0)
    assert excinfo.value.key == "data.fit"
    with pytest.raises(ConfigError, match="3 channels") as excinfo:
        data.dataset_from_config({"name": "npz", "path": str(_rgb_npz(tmp_path))},
                                 input_shape=(8, 8, 1), seed=0)
    assert excinfo.value.key == "data.fit"


def _rgb_npz(tmp_path):
    path = tmp_path / "rgb.npz"
    np.savez(path, images=np.zeros((10, 8, 8, 3), np.float32), labels=np.zeros(10, int))
    return path


def test_npz_other_refusals(tmp_path):
    npy = tmp_path / "single.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ConfigError, match="single .npy array") as excinfo:
        data.load_npz(npy)
    assert str(npy) in message(excinfo)
    with pytest.raises(ConfigError, match="is a directory"):
        data.load_npz(tmp_path)
    objects = tmp_path / "objects.npz"
    np.savez(objects, images=np.array([None, 1], dtype=object), labels=np.zeros(2, int))
    with pytest.raises(ConfigError, match="cannot read the arrays") as excinfo:
        data.load_npz(objects)
    assert str(objects) in message(excinfo)
