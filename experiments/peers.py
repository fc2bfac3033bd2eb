"""The same model in the peer frameworks, for benchmarks: PyTorch (eager, channels_last) and Keras 3.

Both are optional extras (`pip install -e ".[peers]"`), never runtime dependencies of jaxcnn. Each
builder takes a jaxcnn :class:`~jaxcnn.Sequential` and returns the peer's model with the same layers
(random weights: the benchmarks measure speed, not accuracy). Supported: Conv2D (stride 1, 'same' or
'valid'), MaxPooling2D and AveragePooling2D (valid), Flatten, Dense, Dropout, Activation,
BatchNormalization.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import jaxcnn


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def torch_model(model: jaxcnn.Sequential) -> Any:
    """An ``nn.Sequential`` in eval mode and channels_last memory format (PyTorch's faster CPU layout)."""
    import torch
    from torch import nn

    activations = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softmax": lambda: nn.Softmax(-1)}
    modules: list[Any] = []
    for plan in model.plan():
        layer = plan.layer
        kind = layer.type
        if kind == "Conv2D":
            if layer.strides != (1, 1) and layer.padding == "same":
                raise NotImplementedError("torch 'same' padding needs stride 1")
            modules.append(nn.Conv2d(plan.input_shape[-1], layer.filters, layer.kernel_size, stride=layer.strides,
                                     padding=layer.padding, dilation=layer.dilation_rate, bias=layer.use_bias))
        elif kind in ("MaxPooling2D", "AveragePooling2D"):
            pool = nn.MaxPool2d if kind == "MaxPooling2D" else nn.AvgPool2d
            modules.append(pool(layer.pool_size, layer.strides))
        elif kind == "Flatten":
            modules.append(nn.Flatten())
        elif kind == "Dense":
            modules.append(nn.Linear(plan.input_shape[-1], layer.units, bias=layer.use_bias))
        elif kind == "BatchNormalization":
            modules.append(nn.BatchNorm2d(plan.input_shape[-1]) if len(plan.input_shape) == 3
                           else nn.BatchNorm1d(plan.input_shape[-1]))
        elif kind == "Dropout":
            modules.append(nn.Dropout(layer.rate))
        elif kind != "Activation":
            raise NotImplementedError(kind)
        if getattr(layer, "activation", None):
            modules.append(activations[layer.activation]())
    net = nn.Sequential(*modules).eval()
    return net.to(memory_format=torch.channels_last)


def keras_model(model: jaxcnn.Sequential) -> Any:
    """A ``keras.Sequential`` (Keras 3, on whatever backend KERAS_BACKEND selects) of the same layers."""
    import keras

    layers: list[Any] = [keras.Input(model.input_shape)]
    for layer in model.layers:
        arguments = {k: (list(v) if isinstance(v, tuple) else v) for k, v in layer.arguments().items()}
        layers.append(getattr(keras.layers, layer.type)(**arguments))
    return keras.Sequential(layers)
