"""Errors raised by jaxcnn.

Every error is a :class:`JaxcnnError`. An error about one layer names it the same way
everywhere: ``layer 3 'conv2d_1' (Conv2D): ...``, prefixed by the file it came from when
there is one. Context is attached where it becomes known: a layer's constructor knows only
its type, the model knows the index and name, the config loader knows the file.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = [
    "describe_value",
    "plural",
    "JaxcnnError",
    "LayerArgumentError",
    "ImpossibleShapeError",
    "ShapeMismatchError",
    "ConfigError",
    "UnsupportedError",
    "CheckpointError",
    "NonFiniteError",
    "ExportError",
    "InputError",
]


def describe_value(value: Any) -> str:
    """A config value for an error message, by its TOML/JSON type: ``a string ('16')``, ``an array``."""
    names = {dict: "a table", list: "an array", str: "a string", bool: "a boolean",
             int: "an integer", float: "a float", type(None): "null"}
    for kind, label in names.items():
        if type(value) is kind:
            return f"{label} ({value!r})" if kind in (str, bool, int, float) else label
    return type(value).__name__


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 layer``, ``2 layers``, ``1,024 steps``: a count and its noun, for messages (``nouns``:
    the plural where it is not ``noun + "s"``, as ``"classes"``)."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"


class JaxcnnError(Exception):
    """Base class of every error jaxcnn raises on purpose.

    Attributes:
      detail: what went wrong, without the location.
      source: the file (or other origin) the model came from, if any.
      index, layer_name, layer_type: the layer concerned, if any.
      key: the config key concerned, if any.
    """

    def __init__(
        self,
        detail: str,
        *,
        source: str | None = None,
        index: int | None = None,
        layer_name: str | None = None,
        layer_type: str | None = None,
        key: str | None = None,
    ) -> None:
        self.detail = detail
        self.source = source
        self.index = index
        self.layer_name = layer_name
        self.layer_type = layer_type
        self.key = key
        super().__init__(detail)

    def located(self, **context: Any) -> JaxcnnError:
        """A copy with more context (``source``, ``index``, ``layer_name``, ...); known fields are kept."""
        new = copy.copy(self)
        for field, value in context.items():
            if value is not None and getattr(new, field) is None:
                setattr(new, field, value)
        new.args = (str(new),)
        return new

    def where(self) -> str:
        parts = []
        if self.source:
            parts.append(str(self.source))
        if self.index is not None or self.layer_name:
            layer = "layer"
            if self.index is not None:
                layer += f" {self.index}"
            if self.layer_name:
                layer += f" '{self.layer_name}'"
            if self.layer_type:
                layer += f" ({self.layer_type})"
            parts.append(layer)
        elif self.layer_type:
            parts.append(self.layer_type)
        if self.key:
            parts.append(f"key `{self.key}`")
        return ": ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.detail}" if where else self.detail


class LayerArgumentError(JaxcnnError, ValueError):
    """A layer argument has a wrong type or value (``filters`` (=0) must be a positive integer)."""


class ImpossibleShapeError(JaxcnnError, ValueError):
    """A layer cannot be applied to its input: a window larger than its padded input, a size that
    reaches zero, an input of the wrong rank."""


class ShapeMismatchError(JaxcnnError):
    """``jax.eval_shape`` of the real Flax code disagrees with a layer's closed-form formula."""


class ConfigError(JaxcnnError, ValueError):
    """A config file (TOML, JSON, Keras JSON) is malformed: a syntax error, an unknown key, a wrong type."""


class UnsupportedError(ConfigError):
    """A Keras layer class or argument that jaxcnn does not support (``data_format="channels_first"``)."""


class CheckpointError(JaxcnnError):
    """A checkpoint cannot be used: it is corrupt or truncated, or it belongs to another model."""


class NonFiniteError(JaxcnnError):
    """Training produced a NaN or infinite loss or gradient (the message gives the step and the
    first layer whose activations or gradients were not finite)."""


class ExportError(JaxcnnError):
    """An exported model file cannot be used: truncated, from another jaxcnn version, lowered for
    other platforms, or given inputs of the wrong shape."""


class InputError(JaxcnnError, ValueError):
    """Arrays given to a training step, an evaluation step or ``predict`` do not fit the model or its
    loss: images of another shape than ``(batch, *input_shape)``, labels of another shape or dtype
    than the loss takes, class labels outside the model's classes."""
