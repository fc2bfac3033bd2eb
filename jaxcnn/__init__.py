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
"""

from jaxcnn import errors, layers
from jaxcnn.config import from_keras_json, load
from jaxcnn.errors import JaxcnnError
from jaxcnn.layers import (
    Activation,
    AveragePooling2D,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    Input,
    MaxPooling2D,
)
from jaxcnn.model import Sequential
from jaxcnn.train import compile

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "AveragePooling2D",
    "BatchNormalization",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "Input",
    "JaxcnnError",
    "MaxPooling2D",
    "Sequential",
    "__version__",
    "compile",
    "errors",
    "from_keras_json",
    "layers",
    "load",
]
