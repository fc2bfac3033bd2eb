"""Regenerate the trained-weights fixtures: small models saved by Keras 3 with Keras's own predictions.

Run (Keras 3 with the JAX backend; Keras is needed only here, never by jaxcnn or its tests)::

    pip install "jaxcnn[keras]"        # or: pip install keras
    KERAS_BACKEND=jax python tests/data/keras_weights/make_fixtures.py [NAME ...]

For each model below it writes, with weights drawn by Keras (``keras.utils.set_random_seed(0)``) and
then perturbed so that no bias, gamma, beta or moving statistic keeps its initial value (a weight
that landed in the wrong place must change the predictions):

- ``<name>.keras``: ``model.save``, the Keras 3 archive (config.json, model.weights.h5, metadata.json);
- ``<name>.json``: ``model.to_json()``, the architecture that a weights-only file goes with;
- for the models of :data:`WEIGHTS_FILE`: ``<name>.weights.h5``, ``model.save_weights``, Keras 3's
  weights-only file; for those of :data:`LEGACY_H5`: ``<name>.h5``, ``model.save(..., ".h5")``, the
  legacy full-model HDF5 (``model_config`` and ``model_weights``, weights named by layer as tf.keras
  wrote them);
- ``<name>.expected.npz``: ``inputs`` (8 images drawn with numpy's seed 1) and ``outputs``, Keras's
  ``model.predict(inputs)`` in float32, and Keras's trainable and non-trainable parameter counts.

The models cover every weight role jaxcnn maps (:data:`jaxcnn.keras.weights.KERAS_WEIGHTS`):
``cifar_cnn`` is the seed CIFAR CNN; ``roles`` is a graph model with each weighted layer kind
(Conv2D with and without bias and with groups, DepthwiseConv2D, SeparableConv2D, Conv2DTranspose,
BatchNormalization with ``center``/``scale`` off, LayerNormalization, GroupNormalization, PReLU, an
adapted Normalization, Dense) and a nested Sequential and a nested functional model, with a frozen
layer; ``operations`` has operations on a tensor among its layers (:func:`operations`); ``transfer``
a frozen base model under a new head (:func:`transfer`), its base also written on its own
(``transfer_base.keras``, the file a jaxcnn config nests); and the
keras.applications of :data:`APPLICATIONS`, small variants of real architectures.
"""

from __future__ import annotations

import json
import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import numpy as np
from keras import layers

HERE = pathlib.Path(__file__).resolve().parent
SEED_JSON = HERE.parent / "keras" / "cifar_cnn.json"


def cifar_cnn() -> keras.Model:
    return keras.models.model_from_json(SEED_JSON.read_text())


def roles() -> keras.Model:
    inner_seq = keras.Sequential([
        keras.Input((8, 8, 16)),
        layers.Conv2D(16, 3, padding="same", use_bias=False, name="inner_conv"),
        layers.BatchNormalization(name="inner_bn"),
        layers.ReLU(name="inner_relu"),
    ], name="inner_block")
    x_in = keras.Input((8, 8, 16))
    y = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=1, name="inner_dw")(x_in)
    y = layers.LayerNormalization(name="inner_ln")(y)
    inner_fn = keras.Model(x_in, layers.Add(name="inner_add")([x_in, y]), name="inner_graph")

    x = keras.Input((16, 16, 3), name="image")
    h = layers.Normalization(name="norm")(x)
    h = layers.Conv2D(8, 3, padding="same", name="conv")(h)
    h = layers.BatchNormalization(center=False, name="bn_no_center")(h)
    h = layers.PReLU(shared_axes=[1, 2], name="prelu")(h)
    a = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv_no_bias")(h)
    a = layers.BatchNormalization(scale=False, name="bn_no_scale")(a)
    b = layers.SeparableConv2D(16, 3, strides=2, padding="same", depth_multiplier=2, name="sep")(h)
    b = layers.GroupNormalization(groups=4, name="gn")(b)
    h = layers.Add(name="add")([a, b])
    h = layers.Conv2D(16, 1, groups=4, name="grouped")(h)
    h = inner_seq(h)
    h = inner_fn(h)
    h = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(h)
    h = layers.Conv2DTranspose(8, 3, strides=2, padding="same", name="up", trainable=False)(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    h = layers.Dense(12, activation="relu", name="fc")(h)
    out = layers.Dense(5, activation="softmax", name="head")(h)
    return keras.Model(x, out, name="roles")


def operations() -> keras.Model:
    """Operations on a tensor (``x * 0.5 + 1.0``, as MobileNetV3's hard sigmoid): Keras 3 lists them
    among the layers of its JSON but not in ``model.layers``, so they take no group name in the
    weights file; an ``Add`` layer after the ``Add`` operation keeps the group name ``add``."""
    x = keras.Input((8, 8, 3), name="image")
    h = layers.Conv2D(4, 3, padding="same", name="conv")(x)
    g = h * 0.5 + 1.0
    h = layers.Add(name="sum")([h, g])
    h = layers.BatchNormalization(name="bn")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(x, layers.Dense(3, activation="softmax", name="head")(h), name="operations")


def transfer() -> keras.Model:
    """Transfer learning as Keras's guide writes it: a base model frozen (``base.trainable = False``:
    every layer in it, its BatchNormalization running in inference mode) under a new head."""
    x = keras.Input((16, 16, 3))
    h = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    h = layers.BatchNormalization(name="stem_bn")(h)
    h = layers.ReLU(6.0, name="stem_relu")(h)
    h = layers.DepthwiseConv2D(3, padding="same", name="block_dw")(h)
    h = layers.BatchNormalization(name="block_bn")(h)
    base = keras.Model(x, h, name="base")
    base.trainable = False
    return keras.Sequential([keras.Input((16, 16, 3)), base, layers.GlobalAveragePooling2D(name="pool"),
                             layers.Dense(4, activation="softmax", name="new_head")], name="transfer")


#: keras.applications architectures small enough to commit (about 1 MB of weights each): weights=None,
#: 10 classes, 32x32; their inputs are drawn in 0..255 (MobileNetV3 rescales them itself)
APPLICATIONS = {
    "MobileNet": dict(alpha=0.25),
    # its hard-swish and squeeze-and-excitation blocks (operations on tensors among its layers), without
    # the 1024-wide top: the pooled features are the outputs compared
    "MobileNetV3Small": dict(alpha=0.35, include_top=False, pooling="avg"),
}


def application(name: str) -> keras.Model:
    arguments = {"classes": 10, **APPLICATIONS[name]}
    if arguments.get("include_top") is False:
        del arguments["classes"]
    return getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), **arguments)


MODELS = {"cifar_cnn": cifar_cnn, "roles": roles, "operations": operations, "transfer": transfer,
          **{name: (lambda name=name: application(name)) for name in APPLICATIONS}}
#: the models written with a weights-only file (the others, 2 MB each for cifar_cnn, as a .keras
#: archive and to_json() only), and as a legacy .h5: Keras 3 writes a model with operations into a
#: legacy .h5 that it cannot read back ("Only input tensors may be passed as positional arguments")
WEIGHTS_FILE = ("roles", "operations")
LEGACY_H5 = ("roles",)


def perturb(model: keras.Model, rng: np.random.Generator, *, kernels: bool = True) -> None:
    """Move every weight off its initial value (zeros, ones, a constant), so that a weight mapped
    to the wrong place changes the predictions; variances stay positive. An adapted Normalization
    keeps its statistics (Keras computes from them once, at adapt or load). ``kernels=False`` leaves
    the (already random) kernels of a deep network alone, so its activations stay in range."""
    adapted = {id(w) for layer in model.layers if isinstance(layer, layers.Normalization) for w in layer.weights}
    for weight in model.weights:
        if id(weight) in adapted or (not kernels and weight.path.endswith("kernel")):
            continue
        value = np.asarray(weight.numpy())
        noise = rng.normal(0.0, 0.1, value.shape).astype(value.dtype)
        if weight.path.endswith(("variance", "moving_variance")):
            weight.assign(value * np.exp(noise))
        else:
            weight.assign(value + noise)


def main(names: list[str]) -> None:
    for name in names or MODELS:
        keras.utils.set_random_seed(0)
        model = MODELS[name]()
        rng = np.random.default_rng(0)
        scale = 255.0 if name in APPLICATIONS else 1.0
        inputs = np.random.default_rng(1).uniform(0.0, scale, (8, *model.input_shape[1:])).astype(np.float32)
        for layer in model.layers:
            if isinstance(layer, layers.Normalization):
                layer.adapt(inputs)
        perturb(model, rng, kernels=name not in APPLICATIONS)
        outputs = model.predict(inputs, verbose=0).astype(np.float32)
        model.save(HERE / f"{name}.keras")
        (HERE / f"{name}.json").write_text(json.dumps(json.loads(model.to_json()), indent=1) + "\n")
        if name in WEIGHTS_FILE:
            model.save_weights(HERE / f"{name}.weights.h5")
        if name in LEGACY_H5:
            model.save(HERE / f"{name}.h5")
        if name == "transfer":  # its base on its own: the file a jaxcnn config nests (type = "Model")
            model.get_layer("base").save(HERE / "transfer_base.keras")
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        np.savez(HERE / f"{name}.expected.npz", inputs=inputs, outputs=outputs,
                 keras_version=np.asarray(keras.__version__),
                 trainable_params=np.asarray(trainable),
                 non_trainable_params=np.asarray(model.count_params() - trainable))
        print(f"{name}: {model.count_params():,} parameters, outputs {outputs.shape}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
