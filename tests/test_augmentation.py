"""The augmentation layers (jaxcnn.layers.augmentation) against Keras 3's own: each layer's
transformation on fixed images and fixed random parameters equals Keras's ``transform_images``
(tests/data/augmentation/augmentation.npz, written by Keras through its make_fixtures.py), its
factor ranges and output shape are Keras's; in a model, active in training only, keyed by the step."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn.errors import LayerArgumentError
from jaxcnn.layers import augmentation
from jaxcnn.layers import (Dense, Flatten, RandomBrightness, RandomContrast, RandomCrop, RandomFlip, RandomRotation,
                           RandomTranslation, RandomZoom)

DATA = pathlib.Path(__file__).parent / "data" / "augmentation"
with np.load(DATA / "augmentation.npz") as _data:
    FIXTURES = dict(_data)
CASES = sorted({key.split(".")[0] for key in FIXTURES if "." in key})
# equal but for a few float32 ulps of a resampling coordinate (the same terms, summed in another order),
# times a pixel step of up to 255: 1.5e-5 measured on rotate_constant, 0 on the others
ATOL = 1e-4


def case(name: str) -> tuple[object, dict[str, np.ndarray]]:
    kind, kwargs = json.loads(str(FIXTURES[f"{name}.config"]))
    fields = {key.split(".", 1)[1]: value for key, value in FIXTURES.items() if key.startswith(f"{name}.")}
    return getattr(augmentation, kind)(**kwargs), fields


def transform(layer, images: np.ndarray, params: np.ndarray) -> np.ndarray:
    """jaxcnn's transformation of ``images`` with Keras's drawn ``params``."""
    x = jnp.asarray(images)
    h, w = images.shape[1:3]
    if isinstance(layer, RandomFlip):
        return np.asarray(layer.apply(x, jnp.asarray(params)))
    if isinstance(layer, RandomCrop):
        return np.asarray(layer.apply(x, tuple(int(v) for v in params)))
    if isinstance(layer, RandomTranslation):
        p = jnp.asarray(params)
        return np.asarray(layer.apply(x, augmentation.translation_matrices(p[:, :1], p[:, 1:])))
    if isinstance(layer, RandomRotation):
        return np.asarray(layer.apply(x, augmentation.rotation_matrices(jnp.asarray(params), h, w)))
    if isinstance(layer, RandomZoom):
        p = jnp.asarray(params)
        return np.asarray(layer.apply(x, augmentation.zoom_matrices(p[:, :1], p[:, 1:], h, w)))
    return np.asarray(layer.apply(x, jnp.asarray(params)))


@pytest.mark.parametrize("name", CASES)
def test_each_transformation_equals_keras_on_the_same_random_parameters(name):
    layer, fixture = case(name)
    got = transform(layer, fixture["images"], fixture["params"])
    assert got.shape == fixture["output"].shape
    np.testing.assert_allclose(got, fixture["output"], rtol=0, atol=ATOL)
    assert tuple(layer.output_shape((9, 8, 3))) == tuple(int(d) for d in fixture["output_shape"])


@pytest.mark.parametrize("name", [n for n in CASES if f"{n}.ranges" in FIXTURES])
def test_factor_ranges_are_read_as_keras_reads_them_and_the_draws_stay_inside(name):
    layer, fixture = case(name)
    want = fixture["ranges"]
    if isinstance(layer, (RandomTranslation, RandomZoom)):
        got = [*layer.height_factor, *(layer.width_factor or ())]
    else:
        got = list(layer.factor)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    key = jax.random.PRNGKey(0)
    if isinstance(layer, RandomContrast):  # drawn in [1 - lower, 1 + upper], as Keras draws
        draws = np.asarray(layer.factors(key, 4096)).ravel()
        low, high = 1.0 - want[0], 1.0 + want[1]
    elif isinstance(layer, RandomBrightness):
        draws = np.asarray(layer.deltas(key, 4096)).ravel() / (layer.value_range[1] - layer.value_range[0])
        low, high = want
    elif isinstance(layer, RandomRotation):
        matrices = np.asarray(layer.matrices(key, 4096, 9, 8))
        draws = np.degrees(np.arctan2(matrices[:, 3], matrices[:, 0])) / 360.0
        low, high = want
    else:
        return  # translation and zoom draws: their matrices are checked against Keras above
    assert low - 1e-6 <= draws.min() and draws.max() <= high + 1e-6
    assert draws.min() < low + 0.01 * (high - low) and draws.max() > high - 0.01 * (high - low)


def test_arguments_are_checked_as_keras_checks_them():
    for make, message in [
        (lambda: RandomFlip("diagonal"), r"`mode` \(='diagonal'\) must be one of"),
        (lambda: RandomTranslation(1.5, 0.1), r"`height_factor` \(=1.5\) must be a number or a list of two numbers"),
        (lambda: RandomZoom(-1.0), r"`height_factor` \(=-1.0\) .* in \(-1.0, 1.0\]"),
        (lambda: RandomRotation(0.1, fill_mode="mirror"), r"`fill_mode` \(='mirror'\) must be one of"),
        (lambda: RandomContrast(1.5), r"`factor` \(=1.5\)"),
        (lambda: RandomBrightness(0.2, value_range=[0]), r"`value_range` \(=\[0\]\)"),
        (lambda: RandomCrop(0, 4), r"`height` \(=0\) must be a positive integer"),
        (lambda: RandomFlip(data_format="channels_first"), "channels-last"),
    ]:
        with pytest.raises(LayerArgumentError, match=message):
            make()


def model(*front):
    return jaxcnn.Sequential([*front, Flatten(name="flatten"), Dense(3, name="head")], input_shape=(12, 10, 3))


AUGMENTATIONS = (RandomFlip(), RandomCrop(8, 8), RandomTranslation(0.2, 0.2), RandomRotation(0.1), RandomZoom(0.2),
                 RandomContrast(0.3, value_range=(-4, 4)), RandomBrightness(0.2, value_range=(-4, 4)))


def test_in_a_model_they_augment_in_training_keyed_by_the_step_and_are_the_identity_elsewhere(tmp_path):
    augmented = model(*AUGMENTATIONS)
    plain = model(RandomCrop(8, 8, name="random_crop"))  # the crop's shape, no other augmentation
    assert augmented.count_params() == plain.count_params() == 8 * 8 * 3 * 3 + 3
    compiled = jaxcnn.compile(augmented, "sgd")
    state = compiled.init(0)
    x = np.random.default_rng(0).normal(size=(6, 12, 10, 3)).astype(np.float32)
    labels = np.arange(6) % 3
    # evaluation, predict and an export: the identity (the crop centred)
    reference = jaxcnn.compile(plain, "sgd")
    np.testing.assert_allclose(np.asarray(compiled.predict(state, x)), np.asarray(reference.predict(state, x)),
                               rtol=1e-6, atol=1e-6)
    # training: the step's key; the same state gives the same step, the next step other draws
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    module = compiled.module

    def features(step):
        rngs = {"dropout": jax.random.fold_in(state.rng, step)}
        out, _ = module.apply(variables, jnp.asarray(x), train=True, rngs=rngs, mutable=["batch_stats"])
        return np.asarray(out)

    np.testing.assert_array_equal(features(0), features(0))
    assert not np.allclose(features(0), features(1))
    after, metrics = compiled.train_step(state, (x, labels))
    again, metrics_again = compiled.train_step(compiled.init(0), (x, labels))
    assert float(metrics.loss) == float(metrics_again.loss)
    for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the config round trip and the proof
    path = tmp_path / "augmented.toml"
    augmented.save(path)
    assert jaxcnn.load(path) == augmented
    augmented.check()


def test_a_keras_model_json_with_every_augmentation_layer_reads_with_keras_shapes_and_counts():
    doc = json.loads((DATA / "augmented_model.json").read_text())
    loaded = jaxcnn.load(DATA / "augmented_model.json")
    assert [p.output_shape for p in loaded.plan()] == [tuple(s) for s in doc["keras_output_shapes"]]
    assert loaded.count_params() == doc["keras_count_params"]
    translation = loaded.layers[2]
    assert (translation.height_factor, translation.width_factor, translation.fill_mode, translation.fill_value) == (
        (-0.1, 0.1), (-0.2, 0.3), "constant", 1.0)
    assert loaded.layers[3].interpolation == "nearest" and loaded.layers[0].seed == 3


# A crash or a SIGKILL and a resume with augmentation layers: tests/test_fit.py (write_config(augment=True)).
