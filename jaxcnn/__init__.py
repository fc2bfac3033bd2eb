"""jaxcnn: Keras-style CNN layer lists, proved with ``jax.eval_shape`` and compiled to Flax.

    import jaxcnn
    from jaxcnn.layers import Conv2D, MaxPooling2D, Flatten, Dense

    model = jaxcnn.Sequential([
        Conv2D(16, 2, padding="same", activation="relu", input_shape=(32, 32, 3)),
        MaxPooling2D(pool_size=2),
        Flatten(),
        Dense(10, activation="softmax"),
    ])
    model.summary()   # Keras's layout, every figure proved with jax.eval_shape

    x = jaxcnn.Input((32, 32, 16))            # a graph (functional) model, as in Keras
    y = jaxcnn.Conv2D(16, 3, padding="same")(x)
    model = jaxcnn.Model(inputs=x, outputs=jaxcnn.Add()([x, y]))

The public names are imported on first use (PEP 562), so that ``import jaxcnn`` stays cheap and a
process that only serves an exported model (``jaxcnn predict``) never imports the model code.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Activation": "jaxcnn.layers",
    "Add": "jaxcnn.layers",
    "Average": "jaxcnn.layers",
    "Concatenate": "jaxcnn.layers",
    "Maximum": "jaxcnn.layers",
    "Minimum": "jaxcnn.layers",
    "Multiply": "jaxcnn.layers",
    "Subtract": "jaxcnn.layers",
    "AveragePooling2D": "jaxcnn.layers",
    "BatchNormalization": "jaxcnn.layers",
    "Conv2D": "jaxcnn.layers",
    "Conv2DTranspose": "jaxcnn.layers",
    "Dense": "jaxcnn.layers",
    "DepthwiseConv2D": "jaxcnn.layers",
    "Dropout": "jaxcnn.layers",
    "Flatten": "jaxcnn.layers",
    "GlobalAveragePooling2D": "jaxcnn.layers",
    "GlobalMaxPooling2D": "jaxcnn.layers",
    "Input": "jaxcnn.graph",
    "MaxPooling2D": "jaxcnn.layers",
    "SeparableConv2D": "jaxcnn.layers",
    "JaxcnnError": "jaxcnn.errors",
    "Model": "jaxcnn.graph",
    "Sequential": "jaxcnn.model",
    "compile": "jaxcnn.train",
    "from_keras_json": "jaxcnn.keras",
    "load": "jaxcnn.config",
    "load_weights": "jaxcnn.keras.files",
    "save_keras": "jaxcnn.keras.save",
}
_SUBMODULES = ("errors", "layers")

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"jaxcnn.{name}")
    else:
        raise AttributeError(f"module 'jaxcnn' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
