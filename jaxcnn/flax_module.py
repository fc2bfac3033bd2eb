"""Layer specs to a Flax linen module.

``build_module(model)`` returns a :class:`SequentialModule`: one :class:`LayerModule` submodule a
layer, named as the layer, whose computation is the spec's own ``forward``. The variables it
creates are ``{"params": {layer_name: {...}}, "batch_stats": {layer_name: {...}}}``.

The lowerings (:mod:`jaxcnn.lowerings`) are chosen for the :class:`~jaxcnn.lowerings.LoweringContext`
the module is built with, a static field: the backend, the mesh and the XLA flags are read once,
when the module is built, never while it is traced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import flax.linen as nn
import jax

from jaxcnn.errors import JaxcnnError
from jaxcnn.layers import Layer
from jaxcnn.lowerings import LoweringContext

if TYPE_CHECKING:
    from jaxcnn.model import Sequential

__all__ = ["LayerModule", "SequentialModule", "build_module", "traced_layer"]

_LAYER = "jaxcnn_layer"  # the attribute that names the layer on an error raised while tracing it


def traced_layer(error: BaseException) -> tuple[int, str, str] | None:
    """``(index, name, type)`` of the layer whose Flax code raised ``error`` while being traced,
    or ``None`` where it was not raised inside a :class:`LayerModule`."""
    return getattr(error, _LAYER, None)


class LayerModule(nn.Module):
    """One layer: runs ``spec.forward`` with this module's parameters, variables and rngs, its
    convolutions and poolings lowered as ``lowering`` says.

    A :class:`~jaxcnn.errors.JaxcnnError` from the layer's code is located (index, name, type). Any
    other error while tracing propagates unchanged, with a note naming the layer
    (:func:`traced_layer` reads it; :func:`jaxcnn.check.check` reports it as a ShapeMismatchError).
    """

    spec: Layer
    index: int
    lowering: LoweringContext

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
        try:
            if mask is not None and getattr(self.spec, "uses_mask", False):
                return self.spec.forward(self, x, train=train, mask=mask)
            return self.spec.forward(self, x, train=train)
        except JaxcnnError as error:
            raise error.located(index=self.index, layer_name=self.spec.name,
                                layer_type=self.spec.type) from None
        except Exception as error:
            if traced_layer(error) is None:
                layer = (self.index, self.spec.name, self.spec.type)
                error.add_note(f"jaxcnn: raised while tracing layer {layer[0]} '{layer[1]}' ({layer[2]}) "
                               f"on input {tuple(x.shape)}")
                setattr(error, _LAYER, layer)
            raise


class SequentialModule(nn.Module):
    """The whole model. ``x`` is ``(batch, height, width, channels)``.

    ``train=True`` enables dropout (rng ``"dropout"``) and batch statistics (mutable
    ``"batch_stats"``); ``mask`` (``(batch,)``, 0 for padding) keeps padded examples out of the
    batch statistics. ``capture=True`` returns every layer's output, in order. ``lowering`` is the
    context every automatic lowering is chosen in (see :mod:`jaxcnn.lowerings`).
    """

    specs: tuple[Layer, ...]
    lowering: LoweringContext

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, capture: bool = False, mask: jax.Array | None = None
    ) -> jax.Array | tuple[jax.Array, ...]:
        outputs = []
        for index, spec in enumerate(self.specs):
            x = LayerModule(spec, index, self.lowering, name=spec.name)(x, train=train, mask=mask)
            outputs.append(x)
        return tuple(outputs) if capture else x


def build_module(model: Sequential, lowering: LoweringContext | None = None) -> SequentialModule:
    """The Flax module of ``model`` (its layers, with their names), its lowerings chosen in
    ``lowering``; ``None`` means this process's (:meth:`LoweringContext.of_process`, which starts
    JAX's backends: pass a context to build a module for tracing only)."""
    return SequentialModule(specs=tuple(model.layers), lowering=lowering or LoweringContext.of_process())
