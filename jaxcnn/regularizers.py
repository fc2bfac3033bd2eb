"""What a training step does with the layers' weight arguments, as Keras 3's trainer does it.

* **Regularization** (:func:`weight_penalty`, :func:`activity_penalty`): the penalties of the
  weight regularizers of the *trainable* layers (Keras's ``_get_regularization_losses`` reads
  ``trainable_weights`` only) and of the activity regularizers (each layer's penalty of its output,
  divided by the batch size: Keras 3's layer_test.py
  ``test_activity_regularization_batch_normalization`` expects ``L2(0.01)`` of ``ones((n, 5)) * 2``
  to be 0.2 for every batch size n) are added to the loss that is minimized *and*
  reported (Keras's ``compute_loss`` sums them into the total loss its loss metric tracks, in
  ``fit`` and ``evaluate``). Per example: the weight penalty is added to every example's loss and
  the activity penalty is computed per example, so that the masked mean over a padded batch is the
  mean loss over its real examples plus the weight penalty plus the activity penalties summed over
  the real examples and divided by their number.
* **Constraints** (:func:`constrain`): each weight's constraint applied to its new value after each
  optimizer update (Keras's optimizer applies ``variable.constraint`` after the update).
* **Frozen layers** (:func:`freeze`): a layer with ``trainable=False`` keeps its parameters: its
  gradients are zeroed before the optimizer (so that they take no part in a global-norm clip) and its
  parameters restored after it (so that no weight decay moves them).

``layers`` are the model's layer specs, each with its ``name`` (the key of its parameters); a
nested model (a layer with ``layers`` of its own) is walked into.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["activity_penalty", "constrain", "freeze", "has_activity", "has_weight_terms", "weight_penalty"]


def _walk(layers: Sequence[Any], params: Any, visit: Callable[[Any, Any, bool], Any],
          trainable: bool = True) -> Any:
    """``params`` with each layer's entry replaced by ``visit(layer, its params, trainable)``."""
    if not isinstance(params, dict):
        params = dict(params)
    out = dict(params)
    for layer in layers:
        if layer.name not in params:
            continue
        on = trainable and getattr(layer, "trainable", True)
        inner = _inner_layers(layer)
        if inner is not None:  # a nested model: its layers, frozen with it
            out[layer.name] = _walk(inner, params[layer.name], visit, on)
        else:
            out[layer.name] = visit(layer, params[layer.name], on)
    return out


def _inner_layers(layer: Any) -> Sequence[Any] | None:
    """The layers of a nested model (:class:`jaxcnn.graph.Nested`, whose ``model`` holds them), or
    ``None`` for a layer."""
    model = getattr(layer, "model", None)
    return getattr(model, "layers", None) if model is not None else None


def _leaves_layers(layers: Sequence[Any]) -> list[Any]:
    found = []
    for layer in layers:
        inner = _inner_layers(layer)
        if inner is None:
            found.append(layer)
        else:  # a frozen nested model counts as frozen, whatever its layers say
            found += _leaves_layers(inner) + ([] if getattr(layer, "trainable", True) else [layer])
    return found


def has_weight_terms(layers: Sequence[Any]) -> bool:
    """Whether any layer has a weight regularizer or constraint or is frozen."""
    return any(getattr(layer, "regularizers", dict)() or getattr(layer, "constraints", dict)()
               or not getattr(layer, "trainable", True) for layer in _leaves_layers(layers))


def has_activity(layers: Sequence[Any]) -> bool:
    """Whether any layer has an activity regularizer."""
    return any(getattr(layer, "activity_regularizer", None) is not None for layer in _leaves_layers(layers))


def weight_penalty(layers: Sequence[Any], params: Any) -> jax.Array:
    """The sum of the weight regularizers' penalties over the trainable layers (a scalar)."""
    total: list[jax.Array] = []

    def visit(layer: Any, p: Any, trainable: bool) -> Any:
        if trainable:
            for weight, regularizer in getattr(layer, "regularizers", dict)().items():
                if weight in p:
                    total.append(regularizer(p[weight].astype(jnp.float32)))
        return p

    _walk(layers, params, visit)
    return sum(total, jnp.zeros((), jnp.float32))


def activity_penalty(collected: Any, batch: int) -> jax.Array:
    """The per-example activity penalties the layers recorded (their ``"losses"`` collection),
    summed over the layers: ``(batch,)``, zeros where none was recorded."""
    leaves = jax.tree.leaves(collected)
    return sum(leaves, jnp.zeros((batch,), jnp.float32))


def constrain(layers: Sequence[Any], params: Any) -> Any:
    """``params`` with each trainable layer's constraints applied to its weights."""
    def visit(layer: Any, p: Any, trainable: bool) -> Any:
        constraints = getattr(layer, "constraints", dict)() if trainable else {}
        return {k: constraints[k](v) if k in constraints else v for k, v in p.items()}
    return _walk(layers, params, visit)


def freeze(layers: Sequence[Any], new: Any, old: Any) -> Any:
    """``new`` with the frozen layers' entries taken from ``old`` (parameters, or gradients with
    ``old`` zeros)."""
    frozen: dict[int, Any] = {}

    def record(layer: Any, p: Any, trainable: bool) -> Any:
        if not trainable:
            frozen[id(layer)] = p
        return p

    _walk(layers, old, record)

    def visit(layer: Any, p: Any, trainable: bool) -> Any:
        return frozen[id(layer)] if not trainable else p

    return _walk(layers, new, visit)
