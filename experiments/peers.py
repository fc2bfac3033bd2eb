"""The same model in the peer frameworks, for benchmarks: PyTorch (eager, channels_last) and Keras 3.

Both are optional extras (`pip install -e ".[peers]"`), never runtime dependencies of jaxcnn. Each
builder takes a jaxcnn model and returns the peer's model with the same layers (random weights: the
benchmarks measure speed, not accuracy). :func:`torch_model` and :func:`keras_model` take a
:class:`~jaxcnn.Sequential` of Conv2D (stride 1, 'same' or 'valid'), MaxPooling2D and
AveragePooling2D (valid), Flatten, Dense, Dropout, Activation, BatchNormalization.
:func:`torch_graph_model` takes any model, Sequential or graph (ResNet-20, the MobileNetV2-style
net), of those layers and Conv2D of any stride with Keras's 'same' padding (asymmetric where Keras
pads so), DepthwiseConv2D, ReLU (max_value 6: ReLU6), Add and GlobalAveragePooling2D; it has as many
parameters as jaxcnn counts (:func:`torch_count_params`: BatchNormalization's moving mean and
variance are buffers in PyTorch, weights in Keras's count). Only jaxcnn's shape formulas are used to
build it (no JAX computation runs in the process).
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


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """Keras's (TensorFlow's) 'same' padding of one axis: the total split with the extra on the end."""
    effective = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _torch_conv(plan: Any, groups: int, out_channels: int, use_bias: bool) -> Any:
    from torch import nn

    layer = plan.layer
    (h, w), (kh, kw) = plan.input_shape[:2], layer.kernel_size
    (sh, sw), (dh, dw) = layer.strides, layer.dilation_rate
    conv = nn.Conv2d(plan.input_shape[-1], out_channels, (kh, kw), stride=(sh, sw), dilation=(dh, dw),
                     groups=groups, bias=use_bias)
    if layer.padding != "same":
        return conv
    (top, bottom), (left, right) = _same_pads(h, kh, sh, dh), _same_pads(w, kw, sw, dw)
    if top == bottom and left == right:
        conv.padding = (top, left)
        return conv
    return nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)


def _add_module() -> Any:
    """A module summing its inputs (Add)."""
    from torch import nn

    class Add(nn.Module):
        def forward(self, *xs: Any) -> Any:
            total = xs[0]
            for x in xs[1:]:
                total = total + x
            return total

    return Add()


def _torch_layer(plan: Any, *, last: bool, logits: bool) -> Any:
    """The PyTorch module of one planned jaxcnn layer (its activation included)."""
    from torch import nn

    layer, kind, channels = plan.layer, plan.type, plan.input_shape[-1]
    activations = {"relu": nn.ReLU, "relu6": nn.ReLU6, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
                   "softmax": lambda: nn.Softmax(-1), "linear": nn.Identity}
    if kind == "Conv2D":
        core = _torch_conv(plan, layer.groups, layer.filters, layer.use_bias)
    elif kind == "DepthwiseConv2D":
        core = _torch_conv(plan, channels, channels * layer.depth_multiplier, layer.use_bias)
    elif kind in ("MaxPooling2D", "AveragePooling2D"):
        if layer.padding != "valid":
            raise NotImplementedError(f"{kind} with padding {layer.padding!r}")
        core = (nn.MaxPool2d if kind == "MaxPooling2D" else nn.AvgPool2d)(layer.pool_size, layer.strides)
    elif kind == "GlobalAveragePooling2D":
        core = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    elif kind == "Flatten":
        core = nn.Flatten()
    elif kind == "Dense":
        core = nn.Linear(channels, layer.units, bias=layer.use_bias)
    elif kind == "BatchNormalization":
        norm = nn.BatchNorm2d if len(plan.input_shape) == 3 else nn.BatchNorm1d
        core = norm(channels, eps=layer.epsilon, momentum=1 - layer.momentum)  # Keras's momentum is 1 - torch's
    elif kind == "Dropout":
        core = nn.Dropout(layer.rate)
    elif kind == "ReLU":
        if layer.negative_slope or layer.threshold or layer.max_value not in (None, 6.0):
            raise NotImplementedError("ReLU other than max_value None or 6")
        core = nn.ReLU6() if layer.max_value == 6.0 else nn.ReLU()
    elif kind == "Add":
        core = _add_module()
    elif kind == "Activation":
        core = nn.Identity()
    else:
        raise NotImplementedError(kind)
    activation = getattr(layer, "activation", None)
    if activation and not (last and logits and activation in ("softmax", "sigmoid")):
        return nn.Sequential(core, activations[activation]())
    return core


def torch_graph_model(model: jaxcnn.Sequential, *, logits: bool = True) -> Any:
    """A ``torch.nn.Module`` running the model's layers in its order, in eval mode and channels_last.
    ``logits``: the final softmax (or sigmoid) is left out, for training on ``CrossEntropyLoss``."""
    import torch
    from torch import nn

    plans = model.plan()
    first_input = model.input_names[0]

    class Graph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.steps = [(p.name, p.inputs) for p in plans]
            self.layers = nn.ModuleDict({p.name: _torch_layer(p, last=i == len(plans) - 1, logits=logits)
                                         for i, p in enumerate(plans)})

        def forward(self, x: Any) -> Any:
            values, previous = {first_input: x}, x
            for name, inputs in self.steps:
                args = [values[i] for i in inputs] if inputs else [previous]
                previous = values[name] = self.layers[name](*args)
            return previous

    return Graph().eval().to(memory_format=torch.channels_last)


def torch_count_params(net: Any) -> int:
    """Parameters as Keras counts them: the module's parameters and BatchNormalization's moving
    statistics (``running_mean``, ``running_var``; not ``num_batches_tracked``)."""
    buffers = sum(b.numel() for name, b in net.named_buffers() if name.rsplit(".", 1)[-1] in ("running_mean", "running_var"))
    return sum(p.numel() for p in net.parameters()) + buffers
