"""Layer specs to a Flax linen module.

``build_module(model)`` returns a :class:`SequentialModule`: one :class:`LayerModule` submodule a
layer, named as the layer, whose computation is the spec's own ``forward``, applied in the model's
topological order (for a graph model, each to the outputs of the nodes it names). The variables it
creates are ``{"params": {layer_name: {...}}, "batch_stats": {layer_name: {...}}}``.

The lowerings (:mod:`jaxcnn.lowerings`) are chosen for the :class:`~jaxcnn.lowerings.LoweringContext`
the module is built with, a static field: the backend, the mesh and the XLA flags are read once,
when the module is built, never while it is traced. A layer forced to ``lowering="onednn"`` in a
context that would use oneDNN but for its missing extension is refused then, naming the reason
(``jaxcnn info`` prints it too); where the context itself rules oneDNN out (GPU, TPU, a mesh, an
export) such a layer takes the automatic choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax

from jaxcnn.errors import JaxcnnError, LayerArgumentError
from jaxcnn.layers import Layer
from jaxcnn.lowerings import LoweringContext

if TYPE_CHECKING:
    from jaxcnn.graph import Model

__all__ = ["LayerModule", "SequentialModule", "apply_graph", "build_module", "refuse_missing_onednn", "traced_layer",
           "wiring"]

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
    def __call__(self, x: Any, *, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
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
                shapes = ", ".join(str(tuple(a.shape)) for a in x) if isinstance(x, tuple) else tuple(x.shape)
                error.add_note(f"jaxcnn: raised while tracing layer {layer[0]} '{layer[1]}' ({layer[2]}) "
                               f"on input {shapes}")
                setattr(error, _LAYER, layer)
            raise


class SequentialModule(nn.Module):
    """The whole model. ``x`` is ``(batch, height, width, channels)`` (a tuple of such arrays, in
    ``input_names`` order, for a graph with several inputs).

    ``inbound`` is ``None`` for a :class:`~jaxcnn.Sequential` (each layer takes the previous
    output); for a graph model, it names each spec's inputs (nodes of ``input_names`` or earlier
    specs), and the output is the node of ``output_names`` (a tuple where there are several).

    ``train=True`` enables dropout (rng ``"dropout"``) and batch statistics (mutable
    ``"batch_stats"``); ``mask`` (``(batch,)``, 0 for padding) keeps padded examples out of the
    batch statistics. ``capture=True`` returns every layer's output, in order. ``lowering`` is the
    context every automatic lowering is chosen in (see :mod:`jaxcnn.lowerings`).
    """

    specs: tuple[Layer, ...]
    lowering: LoweringContext
    inbound: tuple[tuple[str, ...], ...] | None = None
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    @nn.compact
    def __call__(
        self, x: Any, *, train: bool = False, capture: bool = False, mask: jax.Array | None = None
    ) -> jax.Array | tuple[jax.Array, ...]:
        outputs, result = apply_graph(self.specs, self.inbound, self.input_names, self.output_names, x,
                                      lowering=self.lowering, train=train, mask=mask)
        return tuple(outputs) if capture else result


def apply_graph(specs: Sequence[Layer], inbound: tuple[tuple[str, ...], ...] | None, input_names: Sequence[str],
                output_names: Sequence[str], x: Any, *, lowering: LoweringContext, train: bool,
                mask: jax.Array | None) -> tuple[list[jax.Array], Any]:
    """Run ``specs`` as :class:`LayerModule` submodules of the module being called (one a spec,
    named as it): ``(every layer's output, the model's output)``. ``inbound=None`` chains them; else
    it names each spec's inputs among ``input_names`` and the earlier specs (see
    :class:`SequentialModule`). A nested model's layer runs its own graph through this."""
    outputs = []
    if inbound is None:
        for index, spec in enumerate(specs):
            x = LayerModule(spec, index, lowering, name=spec.name)(x, train=train, mask=mask)
            outputs.append(x)
        return outputs, x
    values = dict(zip(input_names, x if len(input_names) > 1 else (x,)))
    for index, (spec, names) in enumerate(zip(specs, inbound)):
        arg = values[names[0]] if spec.num_inputs == 1 else tuple(values[n] for n in names)
        values[spec.name] = LayerModule(spec, index, lowering, name=spec.name)(arg, train=train, mask=mask)
        outputs.append(values[spec.name])
    result = tuple(values[n] for n in output_names)
    return outputs, result[0] if len(result) == 1 else result


def build_module(model: Model, lowering: LoweringContext | None = None,
                 specs: Sequence[Layer] | None = None) -> SequentialModule:
    """The Flax module of ``model`` (its layers, with their names, wired as its nodes say), its
    lowerings chosen in ``lowering``; ``None`` means this process's
    (:meth:`LoweringContext.of_process`, which starts JAX's backends: pass a context to build a
    module for tracing only). ``specs`` replaces the layers, one for one (training without the
    head's activation)."""
    specs = tuple(model.layers if specs is None else specs)
    lowering = lowering or LoweringContext.of_process()
    refuse_missing_onednn(specs, lowering)
    return SequentialModule(specs=specs, lowering=lowering, **wiring(model))


def refuse_missing_onednn(specs: Sequence[Layer], lowering: LoweringContext) -> None:
    """Raise where a layer of ``specs`` (or of a model nested in them) is forced to
    ``lowering="onednn"`` and ``lowering`` says the oneDNN extension is missing.

    Raises:
      LayerArgumentError: naming the first such layer (index, name, type) and the reason.
    """
    if lowering.onednn_missing is None:
        return
    for index, spec in enumerate(specs):
        nested = getattr(spec, "model", None)
        if nested is not None:
            refuse_missing_onednn(nested.layers, lowering)
        elif getattr(spec, "lowering", None) == "onednn":
            raise LayerArgumentError(
                f"`lowering` (='onednn') cannot be used: {lowering.onednn_missing} (`jaxcnn info` says "
                "which lowerings this machine has)", index=index, layer_name=spec.name, layer_type=spec.type)


def wiring(model: Model) -> dict[str, Any]:
    """The :class:`SequentialModule` fields that wire ``model``'s layers: none for a Sequential."""
    if not model.is_graph:
        return {}
    return {"inbound": tuple(node.inputs for node in model.nodes if not node.is_input),
            "input_names": model.input_names, "output_names": model.output_names}
