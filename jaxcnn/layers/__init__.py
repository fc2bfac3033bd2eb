"""Layer specs: frozen data with Keras's argument names and defaults, and their closed-form formulas.

Each spec knows, for a given input shape (without the batch axis), in closed form:

* ``output_shape(input_shape)``: the shape Keras prints, without the batch axis;
* ``param_shapes(input_shape)``: ``{collection: {name: shape}}``; collection ``"params"`` is
  trainable, ``"batch_stats"`` is not (as in Flax);
* ``formula(input_shape)``: the same two results written out with their arithmetic
  (``64*3*3*3 + 64 = 1,792``);
* ``flops(input_shape)``: forward FLOPs per example (see :data:`FLOPS_CONVENTION`);
* ``forward(module, x, train=...)``: the computation, run inside a Flax module (``module.param``,
  ``module.variable``, ``module.make_rng``) on ``x`` of shape ``(batch, *input_shape)``.

The kinds live by family, as in Keras's own source (``keras/src/layers/<family>/``):
:mod:`~jaxcnn.layers.core`, :mod:`~jaxcnn.layers.convolutional`, :mod:`~jaxcnn.layers.pooling`,
:mod:`~jaxcnn.layers.reshaping`, :mod:`~jaxcnn.layers.regularization`,
:mod:`~jaxcnn.layers.activations`, :mod:`~jaxcnn.layers.normalization`, :mod:`~jaxcnn.layers.merging`,
:mod:`~jaxcnn.layers.preprocessing`, :mod:`~jaxcnn.layers.augmentation` (the random image
transformations, active in training) and :mod:`~jaxcnn.layers.applications` (the custom layers
``keras.applications`` writes); the protocol and the
registry are in :mod:`~jaxcnn.layers.base`. Adding a kind is one class in its family's module:
defining it registers it in :data:`LAYER_TYPES`, and this package exports every registered kind.
"""

from __future__ import annotations

from jaxcnn.layers import (activations, applications, augmentation, convolutional, core, merging, normalization,
                           pooling, preprocessing, regularization, reshaping)
from jaxcnn.layers.activation_functions import ACTIVATIONS
from jaxcnn.layers.base import FLOPS_CONVENTION, LAYER_TYPES, Formula, Input, Layer, ParamShapes, Shape, snake_case
from jaxcnn.layers.initializers import INITIALIZERS

_FAMILIES = (activations, applications, augmentation, convolutional, core, merging, normalization, pooling,
             preprocessing, regularization, reshaping)
globals().update({name: cls for name, cls in LAYER_TYPES.items()})  # every kind, by its Keras name

__all__ = ["ACTIVATIONS", "FLOPS_CONVENTION", "INITIALIZERS", "LAYER_TYPES", "Formula", "Input", "Layer",
           "ParamShapes", "Shape", "snake_case"]
__all__ += sorted(LAYER_TYPES)
