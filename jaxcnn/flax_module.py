"""Layer specs to a Flax linen module.

``build_module(model)`` returns a :class:`SequentialModule`: one :class:`LayerModule` submodule a
layer, named as the layer, whose computation is the spec's own ``forward``. The variables it
creates are ``{"params": {layer_name: {...}}, "batch_stats": {layer_name: {...}}}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import flax.linen as nn
import jax

from jaxcnn.errors import JaxcnnError, ShapeMismatchError
from jaxcnn.layers import Layer

if TYPE_CHECKING:
    from jaxcnn.model import Sequential

__all__ = ["LayerModule", "SequentialModule", "build_module"]


class LayerModule(nn.Module):
    """One layer: runs ``spec.forward`` with this module's parameters, variables and rngs.

    A failure while tracing the layer's code is raised as a :class:`ShapeMismatchError` naming the
    layer (index, name, type), with the original exception chained.
    """

    spec: Layer
    index: int

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
        try:
            if mask is not None and getattr(self.spec, "uses_mask", False):
                return self.spec.forward(self, x, train=train, mask=mask)
            return self.spec.forward(self, x, train=train)
        except JaxcnnError as error:
            raise error.located(index=self.index, layer_name=self.spec.name,
                                layer_type=self.spec.type) from None
        except (TypeError, ValueError) as error:
            raise ShapeMismatchError(
                f"tracing the layer's Flax code on input {tuple(x.shape)} failed: "
                f"{type(error).__name__}: {error}",
                index=self.index, layer_name=self.spec.name, layer_type=self.spec.type,
            ) from error


class SequentialModule(nn.Module):
    """The whole model. ``x`` is ``(batch, height, width, channels)``.

    ``train=True`` enables dropout (rng ``"dropout"``) and batch statistics (mutable
    ``"batch_stats"``); ``mask`` (``(batch,)``, 0 for padding) keeps padded examples out of the
    batch statistics. ``capture=True`` returns every layer's output, in order.
    """

    specs: tuple[Layer, ...]

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, capture: bool = False, mask: jax.Array | None = None
    ) -> jax.Array | tuple[jax.Array, ...]:
        outputs = []
        for index, spec in enumerate(self.specs):
            x = LayerModule(spec, index, name=spec.name)(x, train=train, mask=mask)
            outputs.append(x)
        return tuple(outputs) if capture else x


def build_module(model: Sequential) -> SequentialModule:
    """The Flax module of ``model`` (its layers, with their names)."""
    return SequentialModule(specs=tuple(model.layers))


