"""Where jaxcnn's outputs part from Keras's, layer by layer, for a keras.applications architecture built
and saved as tests/data/keras_weights/check_applications.py does (weights=None, BatchNormalization
statistics moved off 0 and 1, logits instead of the softmax).

    KERAS_BACKEND=jax python experiments/profile_keras_divergence.py EfficientNetV2L [--every 40]

Prints, for every ``--every``-th layer and the last ones, the largest output magnitude in Keras and
max |jaxcnn - Keras| / max |Keras|. A misplaced weight shows as a jump at its layer; float32 rounding
amplified by a deep random network as a steady growth (experiments/results/efficientnetv2l_divergence.txt).
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import numpy as np

import jaxcnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--every", type=int, default=40)
    args = parser.parse_args()
    model = getattr(keras.applications, args.name)(weights=None, input_shape=(args.size, args.size, 3),
                                                   classifier_activation=None)
    rng = np.random.default_rng(0)
    for weight in model.weights:  # as check_applications.py moves them
        if weight.path.endswith("moving_mean"):
            weight.assign(np.asarray(weight.numpy()) + rng.normal(0, 0.05, weight.shape).astype(np.float32))
        elif weight.path.endswith("moving_variance"):
            weight.assign(np.asarray(weight.numpy()) * np.exp(rng.normal(0, 0.1, weight.shape)).astype(np.float32))
    images = rng.uniform(0, 255, (2, args.size, args.size, 3)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        loaded = jaxcnn.load(path)
    compiled = jaxcnn.compile(loaded)
    state = compiled.init(0)
    outputs = compiled.module.apply({"params": state.params, "batch_stats": state.batch_stats}, images, capture=True)
    names = [spec.name for spec in compiled.module.specs]
    picked = [n for i, n in enumerate(names) if i % args.every == 0 or i > len(names) - 6]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in picked])
    for name, want in zip(picked, probe.predict(images, verbose=0)):
        got = np.asarray(outputs[names.index(name)])
        scale = max(float(np.abs(want).max()), 1e-30)
        print(f"{names.index(name):4d} {name:35s} max|k| {scale:10.3g} rel {np.abs(got - want).max() / scale:.2e}")


if __name__ == "__main__":
    main()
