"""Losses, the model's output head, labels and metrics: what :func:`jaxcnn.compile` checks and what a
training step computes from the logits.

The loss is checked against the model's last layer at :func:`jaxcnn.compile`; a pair that makes no sense
is refused there, naming the layer (index, name, type) and the loss. ``z`` is the last layer's
output before its activation, ``p`` the model's output (after it), ``C`` the size of its last axis
(the classes), ``out`` the model's output shape, ``eps = 1e-7`` (``keras.backend.epsilon()``)::

    loss, by last activation         softmax             sigmoid             linear (none)       other
    sparse_categorical_crossentropy  S: from z           refused             S: z are logits     refused
    categorical_crossentropy         O: from z           refused             O: z are logits     refused
    binary_crossentropy              B: Keras on p       L: from z           L: z are logits     refused
    mean_squared_error               M                   M                   M                   M

    S  -log_softmax(z)[y]; labels (batch, *out[:-1]), integer class indices 0..C-1
    O  -sum(y * log_softmax(z)); labels (batch, *out), one-hot (or probabilities)
    B  -mean(y log p' + (1 - y) log(1 - p')), p' = clip(p, eps, 1 - eps): Keras's own formula
    L  -mean(y log sigmoid(z) + (1 - y) log sigmoid(-z))
       B and L: labels (batch, *out) in [0, 1], or (batch, *out[:-1]) when C == 1
    M  mean((p - y) ** 2); labels as B and L; means over the last axis, as Keras

A categorical loss on a sigmoid head is refused: Keras on JAX rescales the sigmoid outputs to sum to
1, Keras on TensorFlow takes a softmax of their logits, and neither is what independent yes/no
outputs mean. Also refused: a categorical loss on a 1-unit output (one class: the loss is always 0), a
crossentropy on a softmax over 1 unit (its output is always 1.0), and a crossentropy after a
softmax/sigmoid that is not the last layer (a ``Dropout`` or ``Flatten`` after it). Each
crossentropy is averaged over every axis but the batch, as Keras's ``sum_over_batch_size``.

Keras 3 on JAX (``from_logits=False``, its default) computes these losses from the probabilities
``p``, clipped to ``[eps, 1 - eps]`` (``keras/src/backend/jax/nn.py``). Where the head is softmax
or sigmoid and the loss its own crossentropy, jaxcnn computes the same quantity from ``z``
(``log_softmax``, ``log_sigmoid``): the value is Keras's wherever Keras's clipping does not bite
(every probability in the loss within ``[1e-7, 1 - 1e-7]``); beyond that it stays the true
crossentropy with a nonzero gradient, where Keras on JAX caps the loss at ``-log(1e-7) = 16.1``
with a zero gradient (Keras on TensorFlow keeps a softmax/sigmoid output's logits,
``_keras_logits``, and takes them there, as jaxcnn does). Binary crossentropy on a softmax has no
logits form: it is Keras's formula on ``p``, clipping included: 0.6365 on ``z = [0, 0, 0]``,
``y = [1, 0, 0]`` (``mean(-log(1/3), -log(2/3), -log(2/3))``; Keras on TensorFlow, which feeds the
kept softmax logits to a sigmoid here, gives 0.693). A linear head is read as logits, as Keras's
``from_logits=True``: Keras's string losses would take its outputs for probabilities (negative
ones clipped to 1e-7), which no one means; ``predict`` returns such a model's raw outputs.

The fit loop (:func:`class_labels`) turns a data set's integer class labels into the loss's form:
as they are for sparse_categorical_crossentropy, one-hot for categorical_crossentropy (and for
binary_crossentropy on a ``C``-unit output), ``(batch, 1)`` floats for binary_crossentropy on a
1-unit output over 2 classes; mean_squared_error (a regression loss) is refused on class labels.

Metrics: ``accuracy`` (top-1: the argmax for the categorical losses, ``p > 0.5`` against the label
for binary crossentropy, as Keras's ``binary_accuracy``) and ``top<k>_accuracy`` for the
categorical losses with ``k`` below the class count. Metrics that cannot apply are refused at
:func:`jaxcnn.compile` (accuracy or top-k under mean_squared_error, top-k under binary crossentropy, or
with ``k >= C``), and not reported: a default top-5 is dropped on 5 classes or fewer.

"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.errors import ConfigError
from jaxcnn.graph import Model

__all__ = [
    "LOSSES",
    "Metrics",
    "activate",
    "check_head",
    "class_labels",
    "default_loss",
    "loss_name",
    "metric_sums",
    "metric_spec",
    "per_example_loss",
    "split_head",
]

LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy",
          "mean_squared_error")
_LOSS_ALIASES = {"mse": "mean_squared_error", "crossentropy": "sparse_categorical_crossentropy"}
_CATEGORICAL = ("sparse_categorical_crossentropy", "categorical_crossentropy")
_EPSILON = 1e-7  # keras.backend.epsilon(): Keras clips probabilities to [eps, 1 - eps]


class Metrics(flax.struct.PyTreeNode):
    """Sums over examples, so that batches of any size (and padded ones) merge exactly.

    ``compute()`` gives the means: ``loss``, and the metrics that apply to the loss: ``accuracy``
    (when ``accuracy``) and ``top{k}_accuracy`` (when ``k`` is not 0).
    """

    count: jax.Array
    loss: jax.Array
    correct: jax.Array  # top-1
    top_k_correct: jax.Array
    nonfinite: jax.Array  # steps whose loss or gradients were not finite (training only)
    k: int = flax.struct.field(pytree_node=False, default=5)  # 0: no top-k accuracy
    accuracy: bool = flax.struct.field(pytree_node=False, default=True)  # False: a regression loss

    def merge(self, other: Metrics) -> Metrics:
        return jax.tree.map(jnp.add, self, other)

    def compute(self) -> dict[str, float]:
        count = max(float(self.count), 1.0)
        means = {"loss": float(self.loss) / count}
        if self.accuracy:
            means["accuracy"] = float(self.correct) / count
        if self.k:
            means[f"top{self.k}_accuracy"] = float(self.top_k_correct) / count
        return {**means, "examples": int(self.count)}

    @classmethod
    def empty(cls, k: int = 5, accuracy: bool = True) -> Metrics:
        zero = jnp.zeros((), jnp.float32)
        return cls(count=zero, loss=zero, correct=zero, top_k_correct=zero, nonfinite=zero, k=k,
                   accuracy=accuracy)


def split_head(model: Model) -> tuple[tuple[Any, ...], str | None]:
    """The layer specs with the final softmax/sigmoid removed, and that activation's name. The last
    layer is the output: a graph with one output has it last in its topological order, since every
    layer leads to it."""
    layers = list(model.layers)
    last = layers[-1]
    activation = getattr(last, "activation", None)
    if activation in ("softmax", "sigmoid"):
        layers[-1] = dataclasses.replace(last, activation=None)  # the same parameters, minus the head
        return tuple(layers), activation
    return tuple(layers), None


def loss_name(loss: str) -> str:
    name = _LOSS_ALIASES.get(loss, loss) if isinstance(loss, str) else loss
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}, mse", key="loss")
    return name


def default_loss(model: Model) -> str:
    """The loss :func:`compile` takes when none is named: the crossentropy of the model's head
    where the head takes one, else mean squared error."""
    activation = getattr(model.layers[-1], "activation", None)
    loss = "binary_crossentropy" if activation == "sigmoid" else "sparse_categorical_crossentropy"
    try:
        check_head(loss, model)
    except ConfigError:
        return "mean_squared_error"
    return loss


def _layer_error(model: Model, index: int, detail: str) -> ConfigError:
    layer = model.layers[index]
    return ConfigError(detail, index=index, layer_name=layer.name, layer_type=layer.type, key="loss")


def check_head(loss: str, model: Model) -> None:
    """Refuse a crossentropy that the model's last layer cannot feed (the module's table)."""
    if loss == "mean_squared_error":
        return
    index = len(model.layers) - 1
    activation = getattr(model.layers[index], "activation", None)
    units = model.output_shape[-1]
    before = index  # a graph with one output: a one-input layer's input comes just before it
    while before > 0 and model.layers[before].type in ("Dropout", "Flatten"):
        before -= 1
    hidden = getattr(model.layers[before], "activation", None)
    if before < index and hidden in ("softmax", "sigmoid"):
        raise _layer_error(model, before, (
            f"{loss} needs the {hidden} to be the model's last layer, but layer {index} "
            f"'{model.layers[index].name}' ({model.layers[index].type}) follows it: put the {hidden} last"))
    if activation not in (None, "softmax", "sigmoid"):
        raise _layer_error(model, index, (
            f"{loss} needs the last layer to end in softmax or sigmoid (probabilities) or in no "
            f"activation (logits), not {activation!r}"))
    if loss in _CATEGORICAL and units < 2:
        raise _layer_error(model, index, (
            f"{loss} needs at least 2 classes, but the output has 1 unit: for a yes/no output use "
            "binary_crossentropy with activation=\"sigmoid\""))
    if loss in _CATEGORICAL and activation == "sigmoid":
        raise _layer_error(model, index, (
            f"{loss} needs one distribution over the classes (activation=\"softmax\", or no activation "
            "for logits), not sigmoid's independent probabilities: use softmax, or binary_crossentropy"))
    if activation == "softmax" and units == 1:
        raise _layer_error(model, index, (
            f"a softmax over 1 unit always outputs 1.0, so {loss} cannot train it: use "
            "activation=\"sigmoid\" for a yes/no output"))


def _parse_metrics(metrics: Sequence[str]) -> tuple[bool, int | None, str | None]:
    """Whether accuracy was asked for, and the k and name of an asked top-k accuracy (or None)."""
    accuracy, k, name = False, None, None
    for metric in metrics:
        if metric in ("accuracy", "acc"):
            accuracy = True
        elif metric == "loss":
            continue
        elif metric == "top_k_accuracy":
            k, name = 5, metric
        elif metric.startswith("top") and metric.endswith("_accuracy") and metric[3:-9].strip("_").isdigit():
            k, name = int(metric[3:-9].strip("_")), metric
        else:
            raise ConfigError(
                f"unknown metric {metric!r}; known: accuracy, top_k_accuracy (k=5), top<k>_accuracy, loss",
                key="metrics")
    return accuracy, k, name


def metric_spec(metrics: Sequence[str], loss: str, classes: int) -> tuple[int, bool]:
    """``(k, accuracy)``: the k of the reported top-k accuracy (0: none) and whether accuracy is
    reported. Metrics asked for that cannot apply to ``loss`` on ``classes`` outputs are refused."""
    accuracy, k, name = _parse_metrics(metrics)
    if k is not None and k < 1:
        raise ConfigError(f"metric {name!r}: k (={k}) must be at least 1", key="metrics")
    if loss == "mean_squared_error":
        if accuracy or k is not None:
            asked = "accuracy" if accuracy else name
            raise ConfigError(f"metric {asked!r} does not apply to mean_squared_error, a regression loss "
                              "(no classes to be right about): remove it", key="metrics")
        return 0, False
    if loss == "binary_crossentropy":
        if k is not None:
            raise ConfigError(f"metric {name!r} ranks classes, so it needs a categorical loss, not "
                              "binary_crossentropy (its accuracy is Keras's binary accuracy)", key="metrics")
        return 0, True
    if k is not None and k >= classes:
        raise ConfigError(f"metric {name!r} needs more than {k} classes, but the model's output has {classes}: "
                          f"every example would count as right", key="metrics")
    default = 5 if 5 < classes else 0  # the top-5 reported unasked, where it means something
    return (default if k is None else k), True


def class_labels(loss: str, model: Model, num_classes: int, *,
                 source: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """How the fit loop feeds a data set's integer class labels ``(batch,)`` (``0..num_classes-1``)
    to ``loss``: a function of the labels giving them as they are (sparse_categorical_crossentropy),
    one-hot ``(batch, num_classes)`` float32 (categorical_crossentropy, and binary_crossentropy on a
    ``num_classes``-unit output), or ``(batch, 1)`` float32 (binary_crossentropy on a 1-unit output
    over 2 classes).

    Raises:
      ConfigError: the model's output does not fit ``num_classes`` classes under ``loss``, or
        ``loss`` is mean_squared_error (a regression loss, not for class labels).
    """
    try:
        name = loss_name(loss)
    except ConfigError as error:
        raise ConfigError(error.detail, source=source, key="train.loss") from None
    out = model.output_shape
    if name == "mean_squared_error":
        raise ConfigError(f"{loss} is a regression loss, and the data are class labels: use "
                          "sparse_categorical_crossentropy (or categorical_crossentropy)",
                          source=source, key="train.loss")
    if name == "binary_crossentropy" and out == (1,) and num_classes == 2:
        return lambda labels: np.asarray(labels, np.float32).reshape(-1, 1)
    if out != (num_classes,):
        last = f"Dense({num_classes}, activation=\"softmax\")"
        if name == "binary_crossentropy":
            last = (f"Dense({num_classes}, activation=\"sigmoid\")"
                    + (" or, for 2 classes, Dense(1, activation=\"sigmoid\")" if num_classes == 2 else ""))
        raise ConfigError(
            f"the model's output {out} does not fit the data's {num_classes} classes: "
            f"the last layer should be {last}", source=source, key="layers")
    if name == "sparse_categorical_crossentropy":
        return lambda labels: labels
    return lambda labels: np.eye(num_classes, dtype=np.float32)[np.asarray(labels)]


def per_example_loss(loss: str, head: str | None, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The loss of each example ``(batch,)`` from the logits ``z`` (the module's output, before
    the head ``head``): this module's table, averaged over every axis but the batch."""
    if loss == "sparse_categorical_crossentropy":
        losses = optax.softmax_cross_entropy_with_integer_labels(
            logits, labels.astype(jnp.int32).reshape(logits.shape[:-1]))
    elif loss == "categorical_crossentropy":
        losses = optax.softmax_cross_entropy(logits, labels.astype(jnp.float32).reshape(logits.shape))
    elif loss == "binary_crossentropy":
        labels = labels.astype(jnp.float32).reshape(logits.shape)
        if head == "softmax":  # no logits form: Keras's formula on the clipped probabilities
            p = jnp.clip(jax.nn.softmax(logits, axis=-1), _EPSILON, 1.0 - _EPSILON)
            losses = -(labels * jnp.log(p) + (1.0 - labels) * jnp.log(1.0 - p))
        else:  # sigmoid, or a linear head's logits
            losses = optax.sigmoid_binary_cross_entropy(logits, labels)
    else:
        outputs = activate(head, logits)
        losses = jnp.square(outputs - labels.astype(jnp.float32).reshape(outputs.shape))
    return losses.reshape(logits.shape[0], -1).mean(-1)


def activate(head: str | None, logits: jax.Array) -> jax.Array:
    """The model's outputs from the logits: the head's softmax or sigmoid applied (or none)."""
    if head == "softmax":
        return jax.nn.softmax(logits, axis=-1)
    if head == "sigmoid":
        return jax.nn.sigmoid(logits)
    return logits


def metric_sums(loss: str, head: str | None, logits: jax.Array, labels: jax.Array, losses: jax.Array,
                mask: jax.Array, *, top_k: int, accuracy: bool) -> Metrics:
    """The batch's :class:`Metrics`: sums over its real examples (``mask`` 1) of ``losses``
    ``(batch,)``, top-1 and (``top_k`` > 0) top-k hits."""
    batch = logits.shape[0]
    correct = in_top_k = jnp.zeros_like(losses)
    if loss in _CATEGORICAL:
        if loss == "sparse_categorical_crossentropy":
            target = labels.astype(jnp.int32).reshape(logits.shape[:-1])
        else:
            target = jnp.argmax(labels.reshape(logits.shape), -1)
        valid = (target >= 0) & (target < logits.shape[-1])  # device labels are not range-checked
        correct = ((jnp.argmax(logits, -1) == target) & valid).reshape(batch, -1).mean(-1)
        if top_k:
            own = jnp.take_along_axis(logits, jnp.clip(target, 0, logits.shape[-1] - 1)[..., None], -1)
            rank = jnp.sum(logits > own, axis=-1)
            in_top_k = ((rank < top_k) & valid).reshape(batch, -1).mean(-1)
    elif loss == "binary_crossentropy":  # Keras's binary_accuracy: p > 0.5 equals the label
        p = jax.nn.softmax(logits, axis=-1) if head == "softmax" else jax.nn.sigmoid(logits)
        labels = labels.astype(jnp.float32).reshape(logits.shape)
        correct = ((p > 0.5).astype(jnp.float32) == labels).reshape(batch, -1).mean(-1)
    return Metrics(count=jnp.sum(mask), loss=jnp.sum(losses * mask), correct=jnp.sum(correct * mask),
                   top_k_correct=jnp.sum(in_top_k * mask), nonfinite=jnp.zeros((), jnp.float32),
                   k=top_k, accuracy=accuracy)
