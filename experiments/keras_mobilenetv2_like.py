"""Keras 3 on the same MobileNetV2-style model and data as configs/mobilenetv2_like.toml: the reference
for its BatchNormalization momentum.

Run:   KERAS_BACKEND=jax python experiments/keras_mobilenetv2_like.py 0.99   (or 0.9); needs Keras 3
Shows: the model's parameter count (74,026, as jaxcnn counts) and the validation accuracy of each of
       10 epochs on scikit-learn's digits padded to 32x32 (jaxcnn's split, seed 0, Adam 0.002, batch 64).
       Measured with Keras 3.15.1 on JAX: momentum 0.99 gives 0.1 (chance) at every epoch, as jaxcnn
       does; momentum 0.9 gives [0.1, 0.1, 0.878, 0.944, 0.939, 0.944, 0.95, 0.967, 0.911, 0.944]
       (jaxcnn: [0.1, 0.1, 0.878, 0.972, 0.961, 0.967, 0.956, 0.95, 0.95, 0.961]).
"""
import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
from keras import layers as L  # noqa: E402

from jaxcnn import data as D  # noqa: E402
train, val, test, _ = D.prepare_from_config({"name": "digits", "validation": 0.1, "test": 0.2, "fit": "pad"}, input_shape=(32, 32, 1), seed=0)
mom = float(sys.argv[1])
inp = keras.Input((32, 32, 1)); x = inp
x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x); x = L.BatchNormalization(momentum=mom)(x); x = L.ReLU(6.0)(x)
ch = 16
for t, c, s in [(1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 64, 1)]:
    y = x
    if t != 1:
        y = L.Conv2D(ch * t, 1, use_bias=False)(y); y = L.BatchNormalization(momentum=mom)(y); y = L.ReLU(6.0)(y)
    y = L.DepthwiseConv2D(3, strides=s, padding="same", use_bias=False)(y); y = L.BatchNormalization(momentum=mom)(y); y = L.ReLU(6.0)(y)
    y = L.Conv2D(c, 1, use_bias=False)(y); y = L.BatchNormalization(momentum=mom)(y)
    if s == 1 and c == ch:
        y = L.Add()([x, y])
    x, ch = y, c
x = L.Conv2D(128, 1, use_bias=False)(x); x = L.BatchNormalization(momentum=mom)(x); x = L.ReLU(6.0)(x)
x = L.GlobalAveragePooling2D()(x); x = L.Dropout(0.2)(x); x = L.Dense(10, activation="softmax")(x)
m = keras.Model(inp, x)
print("params", m.count_params())
m.compile(optimizer=keras.optimizers.Adam(0.002), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
h = m.fit(train.images, train.labels, batch_size=64, epochs=10, validation_data=(val.images, val.labels), verbose=0)
print("val_accuracy by epoch", [round(v, 3) for v in h.history["val_accuracy"]])
