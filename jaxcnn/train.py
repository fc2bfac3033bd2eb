"""Training: the state, the loss and metrics, and jitted ``train_step``, ``eval_step`` and ``predict``.

``jaxcnn.compile(model, optimizer=..., loss=..., metrics=[...])`` returns a :class:`CompiledModel`.
Every step is a pure function of ``(state, batch)``; the state is a ``flax.struct.PyTreeNode``
replaced, never mutated, and donated to the training step. A batch is ``(images, labels)`` or
``(images, labels, mask)`` with images ``(batch, height, width, channels)``; ``mask`` (``1.0`` for
real examples, ``0.0`` for padding) lets the last, partial batch of an epoch be padded to the full
batch size, so it runs the same compiled program and its metrics are still exact.

Where the model ends in softmax (or sigmoid) and the loss is a crossentropy, the loss is computed
from the logits (``log_softmax``), so it stays finite where ``log(softmax(x))`` overflows; the
model's outputs (``predict``) are still the probabilities.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.flax_module import SequentialModule
from jaxcnn.lowerings import LoweringContext
from jaxcnn.errors import ConfigError
from jaxcnn.model import Sequential

__all__ = [
    "LOSSES",
    "CompiledModel",
    "Metrics",
    "TrainState",
    "compile",
    "params_sha256",
]

LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy",
          "mean_squared_error")
_LOSS_ALIASES = {"mse": "mean_squared_error", "crossentropy": "sparse_categorical_crossentropy"}
PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(flax.struct.PyTreeNode):
    """Everything a training run carries from step to step. Arrays only; replaced, never mutated.

    ``rng`` is the run's base key (raw ``uint32[2]``); step ``s`` uses ``fold_in(rng, s)``.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


class Metrics(flax.struct.PyTreeNode):
    """Sums over examples, so that batches of any size (and padded ones) merge exactly.

    ``compute()`` gives the means: ``loss``, ``accuracy``, ``top{k}_accuracy``.
    """

    count: jax.Array
    loss: jax.Array
    correct: jax.Array  # top-1
    top_k_correct: jax.Array
    nonfinite: jax.Array  # steps whose loss or gradients were not finite (training only)
    k: int = flax.struct.field(pytree_node=False, default=5)

    def merge(self, other: Metrics) -> Metrics:
        return jax.tree.map(jnp.add, self, other)

    def compute(self) -> dict[str, float]:
        count = max(float(self.count), 1.0)
        return {
            "loss": float(self.loss) / count,
            "accuracy": float(self.correct) / count,
            f"top{self.k}_accuracy": float(self.top_k_correct) / count,
            "examples": int(self.count),
        }

    @classmethod
    def empty(cls, k: int = 5) -> Metrics:
        zero = jnp.zeros((), jnp.float32)
        return cls(count=zero, loss=zero, correct=zero, top_k_correct=zero, nonfinite=zero, k=k)


def params_sha256(params: Any) -> str:
    """The sha256 of the parameters' bytes, leaves in tree order (``jax.tree.leaves``)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def _split_head(model: Sequential) -> tuple[tuple[Any, ...], str | None]:
    """The layer specs with the final softmax/sigmoid removed, and that activation's name."""
    layers = list(model.layers)
    last = layers[-1]
    activation = getattr(last, "activation", None)
    if activation in ("softmax", "sigmoid"):
        layers[-1] = dataclasses.replace(last, activation=None)  # the same parameters, minus the head
        return tuple(layers), activation
    return tuple(layers), None


def _loss_name(loss: str) -> str:
    name = _LOSS_ALIASES.get(loss, loss) if isinstance(loss, str) else loss
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}, mse", key="loss")
    return name


def _metric_k(metrics: Sequence[str]) -> int:
    k = 5
    for metric in metrics:
        if metric in ("accuracy", "loss", "acc"):
            continue
        if metric == "top_k_accuracy":
            continue
        if metric.startswith("top") and metric.endswith("_accuracy") and metric[3:-9].strip("_").isdigit():
            k = int(metric[3:-9].strip("_"))
            continue
        raise ConfigError(
            f"unknown metric {metric!r}; known: accuracy, top_k_accuracy (k=5), top<k>_accuracy, loss",
            key="metrics")
    return k


@dataclasses.dataclass(frozen=True, eq=False)
class CompiledModel:
    """A model with its optimizer, loss and metrics: jitted steps over an explicit state.

    Attributes:
      model: the :class:`~jaxcnn.Sequential`.
      module: the Flax module computing the logits (the final softmax/sigmoid, if any, is applied by
        :meth:`predict`).
      optimizer: the optax transformation.
      loss: one of :data:`LOSSES`.
      head: ``"softmax"``, ``"sigmoid"`` or ``None``: the model's final activation.
      precision: ``"float32"`` or ``"bfloat16"`` (compute dtype; parameters stay float32).
      on_nonfinite: ``"stop"`` or ``"skip"``: both leave the state unchanged on a non-finite step
        and count it in ``Metrics.nonfinite``; the fit loop stops on ``"stop"``.
      layout: ``None`` (one device, as ``jax.jit`` places it) or a :class:`jaxcnn.parallel.Layout`:
        the state is created and kept on its mesh (replicated, or FSDP-sharded), the batches are
        split over its ``"data"`` axis; a batch must then be laid out by ``layout.put_batch``
        (or be a host array whose size the device count divides).
    """

    model: Sequential
    module: SequentialModule
    optimizer: optax.GradientTransformation
    loss: str
    head: str | None
    top_k: int
    precision: str = "float32"
    on_nonfinite: str = "stop"
    layout: Any = None  # a jaxcnn.parallel.Layout: jit with explicit shardings over its mesh
    train_step: Callable[..., tuple[TrainState, Metrics]] = dataclasses.field(init=False)
    train_steps: Callable[..., tuple[TrainState, Metrics]] = dataclasses.field(init=False)
    eval_step: Callable[..., Metrics] = dataclasses.field(init=False)
    predict: Callable[..., jax.Array] = dataclasses.field(init=False)
    _init: Callable[[jax.Array], TrainState] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        put = lambda name, f: object.__setattr__(self, name, f)  # noqa: E731  (a frozen dataclass)
        if self.layout is None:
            put("train_step", jax.jit(self._train_step, donate_argnums=0))
            put("train_steps", jax.jit(self._train_steps, donate_argnums=0))
            put("eval_step", jax.jit(self._eval_step))
            put("predict", jax.jit(self._predict))
            put("_init", self._init_from_key)
            return
        # Explicit shardings (jaxcnn.parallel): the state per its layout, batches split over "data",
        # metrics replicated. XLA's SPMD partitioner adds the collectives.
        layout = self.layout
        if layout.size > 1 and not self.module.lowering.partitioned:  # the lowerings for a mesh
            put("module", self.module.clone(lowering=dataclasses.replace(self.module.lowering, partitioned=True)))
        step, steps, evaluate, predict = self._train_step, self._train_steps, self._eval_step, self._predict
        state = layout.state_shardings(self.abstract_state())
        batch, stacked, replicated = layout.batch_sharding(), layout.batch_sharding(1), layout.replicated
        put("train_step", jax.jit(step, in_shardings=(state, batch),
                                  out_shardings=(state, replicated), donate_argnums=0))
        put("train_steps", jax.jit(steps, in_shardings=(state, stacked),
                                   out_shardings=(state, replicated), donate_argnums=0))
        put("eval_step", jax.jit(evaluate, in_shardings=(state, batch), out_shardings=replicated))
        put("predict", jax.jit(predict, in_shardings=(state, batch), out_shardings=batch))
        put("_init", jax.jit(self._init_from_key, out_shardings=state))

    # ---- state ---------------------------------------------------------------------------
    def init(self, seed: int | jax.Array = 0) -> TrainState:
        """A fresh training state (laid out per ``layout`` when there is one). The parameters' key is
        ``fold_in(key(seed), 0)``; step keys are ``fold_in(fold_in(key(seed), 1), step)``."""
        base = jax.random.PRNGKey(seed) if isinstance(seed, int) else seed
        return self._init(base)

    def _init_from_key(self, base: jax.Array) -> TrainState:
        images = jnp.zeros((1, *self.model.input_shape), jnp.float32)
        variables = self.module.init({"params": jax.random.fold_in(base, 0)}, images)
        params = variables["params"]
        batch_stats = variables.get("batch_stats", {})
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
            opt_state=self.optimizer.init(params), rng=jax.random.fold_in(base, 1))

    def abstract_state(self) -> TrainState:
        """The state's shapes and dtypes (``ShapeDtypeStruct`` leaves), computed without allocating."""
        return jax.eval_shape(self._init_from_key, jax.random.PRNGKey(0))

    # ---- the pieces of a step --------------------------------------------------------------
    def _logits(self, params: Any, batch_stats: Any, images: jax.Array, *, train: bool,
                rng: jax.Array | None = None, mask: jax.Array | None = None) -> tuple[jax.Array, Any]:
        dtype = PRECISIONS[self.precision]
        variables = {"params": params, "batch_stats": batch_stats}
        if train:
            logits, updates = self.module.apply(
                variables, images.astype(dtype), train=True, rngs={"dropout": rng},
                mutable=["batch_stats"], mask=mask)
            return logits.astype(jnp.float32), updates.get("batch_stats", batch_stats)
        return self.module.apply(variables, images.astype(dtype)).astype(jnp.float32), batch_stats

    def _per_example_loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        """Per-example loss from the logits (the head's activation folded in where it is stable)."""
        if self.loss == "sparse_categorical_crossentropy":
            if self.head == "sigmoid":
                raise ConfigError("sparse_categorical_crossentropy needs a softmax (or linear) output, not sigmoid")
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))
        if self.loss == "categorical_crossentropy":
            return optax.softmax_cross_entropy(logits, labels.astype(jnp.float32))
        if self.loss == "binary_crossentropy":
            labels = labels.astype(jnp.float32).reshape(logits.shape)
            return optax.sigmoid_binary_cross_entropy(logits, labels).reshape(logits.shape[0], -1).mean(-1)
        outputs = self._activate(logits)
        labels = labels.astype(jnp.float32).reshape(outputs.shape)
        return jnp.square(outputs - labels).reshape(outputs.shape[0], -1).mean(-1)

    def _activate(self, logits: jax.Array) -> jax.Array:
        if self.head == "softmax":
            return jax.nn.softmax(logits, axis=-1)
        if self.head == "sigmoid":
            return jax.nn.sigmoid(logits)
        return logits

    def _metrics(self, logits: jax.Array, labels: jax.Array, losses: jax.Array, mask: jax.Array) -> Metrics:
        if self.loss in ("sparse_categorical_crossentropy", "categorical_crossentropy") and logits.ndim == 2:
            target = labels if self.loss == "sparse_categorical_crossentropy" else jnp.argmax(labels, -1)
            target = target.astype(jnp.int32)
            correct = (jnp.argmax(logits, -1) == target).astype(jnp.float32)
            k = min(self.top_k, logits.shape[-1])
            rank = jnp.sum(logits > jnp.take_along_axis(logits, target[:, None], -1), axis=-1)
            top_k = (rank < k).astype(jnp.float32)
        elif self.loss == "binary_crossentropy":
            predicted = (logits > 0).astype(jnp.float32)
            correct = jnp.mean(predicted.reshape(len(predicted), -1)
                               == labels.astype(jnp.float32).reshape(len(predicted), -1), -1)
            top_k = correct
        else:
            correct = top_k = jnp.zeros_like(losses)
        return Metrics(count=jnp.sum(mask), loss=jnp.sum(losses * mask), correct=jnp.sum(correct * mask),
                       top_k_correct=jnp.sum(top_k * mask), nonfinite=jnp.zeros((), jnp.float32),
                       k=self.top_k)

    @staticmethod
    def _unpack(batch: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
        if len(batch) == 3:
            images, labels, mask = batch
        else:
            images, labels = batch
            mask = jnp.ones((images.shape[0],), jnp.float32)
        return images, labels, mask.astype(jnp.float32)

    # ---- the steps (jitted in __post_init__) ------------------------------------------------
    def _train_step(self, state: TrainState, batch: Sequence[jax.Array]) -> tuple[TrainState, Metrics]:
        images, labels, mask = self._unpack(batch)
        rng = jax.random.fold_in(state.rng, state.step)

        def objective(params: Any) -> tuple[jax.Array, tuple[Any, jax.Array, jax.Array]]:
            logits, batch_stats = self._logits(params, state.batch_stats, images, train=True, rng=rng, mask=mask)
            losses = self._per_example_loss(logits, labels)
            mean = jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)
            return mean, (batch_stats, logits, losses)

        (loss, (batch_stats, logits, losses)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.all(jnp.array(
            [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)] or [True]))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = state.replace(
            step=state.step + 1,
            params=keep(params, state.params),
            batch_stats=keep(batch_stats, state.batch_stats),
            opt_state=keep(opt_state, state.opt_state),
        )
        metrics = self._metrics(logits, labels, losses, mask)
        return new_state, metrics.replace(nonfinite=1.0 - finite.astype(jnp.float32))

    def _train_steps(self, state: TrainState, batches: Sequence[jax.Array]) -> tuple[TrainState, Metrics]:
        """``k`` training steps in one call, unrolled: ``batches`` holds ``k`` batches stacked on a
        leading axis (``images (k, batch, ...)``, ``labels (k, batch, ...)``, optional ``mask (k, batch)``).
        The same as ``k`` calls of ``train_step`` (tested); the metrics are their sums. Unrolled in
        Python, not ``lax.scan``: a scanned step ran about 15x slower on XLA's CPU backend (issue 5),
        and compilation grows with ``k``. It saves the per-call dispatch, which pays only where a step is
        short next to it (small models on an accelerator); on this 2-core CPU it does not pay
        (experiments/bench_train.py), so the fit loop calls ``train_step``."""
        total = Metrics.empty(self.top_k)
        for i in range(batches[0].shape[0]):
            state, metrics = self._train_step(state, tuple(b[i] for b in batches))
            total = total.merge(metrics)
        return state, total

    def _eval_step(self, state: TrainState, batch: Sequence[jax.Array]) -> Metrics:
        images, labels, mask = self._unpack(batch)
        logits, _ = self._logits(state.params, state.batch_stats, images, train=False)
        return self._metrics(logits, labels, self._per_example_loss(logits, labels), mask)

    def _predict(self, state: TrainState, images: jax.Array) -> jax.Array:
        """The model's outputs, ``(batch, *output_shape)``: probabilities where it ends in softmax."""
        logits, _ = self._logits(state.params, state.batch_stats, images, train=False)
        return self._activate(logits)

    def layer_statistics(self, state: TrainState, batch: Sequence[jax.Array]) -> list[dict[str, Any]]:
        """Per layer, on one batch in training mode: the largest absolute activation, whether the
        activations, the parameters and their gradients are finite, and the gradient norm. For the
        diagnosis of a non-finite step: computed as the training step computes that step (``state``
        is the state before it: the same dropout key ``fold_in(rng, step)`` and mask), jitted as it
        is (on its mesh, with its shardings and lowerings). Compiled on first use."""
        if "_layer_arrays_jitted" not in self.__dict__:
            if self.layout is None:
                jitted = jax.jit(self._layer_arrays)
            else:
                layout = self.layout  # self.module has the mesh's lowerings (__post_init__)
                jitted = jax.jit(self._layer_arrays, in_shardings=(layout.state_shardings(self.abstract_state()),
                                                       layout.batch_sharding()), out_shardings=layout.replicated)
            object.__setattr__(self, "_layer_arrays_jitted", jitted)
        arrays = jax.device_get(self.__dict__["_layer_arrays_jitted"](state, tuple(batch)))
        return [{
            "index": index, "name": spec.name, "type": spec.type,
            "max_abs_activation": float(arrays["max_abs_activation"][index]),
            "activations_finite": bool(arrays["activations_finite"][index]),
            "params_finite": bool(arrays["params_finite"][index]),
            "grads_finite": bool(arrays["grads_finite"][index]),
            "grad_norm": float(arrays["grad_norm"][index]),
        } for index, spec in enumerate(self.module.specs)]

    def _layer_arrays(self, state: TrainState, batch: Sequence[jax.Array]) -> dict[str, jax.Array]:
        """:meth:`layer_statistics` as arrays of shape ``(layers,)``."""
        images, labels, mask = self._unpack(batch)
        rng = jax.random.fold_in(state.rng, state.step)
        dtype = PRECISIONS[self.precision]

        def objective(params: Any) -> tuple[jax.Array, Any]:
            outputs, _ = self.module.apply({"params": params, "batch_stats": state.batch_stats},
                                           images.astype(dtype), train=True, capture=True,
                                           rngs={"dropout": rng}, mutable=["batch_stats"], mask=mask)
            losses = self._per_example_loss(outputs[-1].astype(jnp.float32), labels)
            return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0), outputs

        (_, outputs), grads = jax.value_and_grad(objective, has_aux=True)(state.params)

        def finite(tree: Any) -> jax.Array:
            return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] or [True]))

        columns: dict[str, list[jax.Array]] = {k: [] for k in (
            "max_abs_activation", "activations_finite", "params_finite", "grads_finite", "grad_norm")}
        for spec, out in zip(self.module.specs, outputs):
            g = grads.get(spec.name, {})
            columns["max_abs_activation"].append(jnp.max(jnp.abs(out.astype(jnp.float32))))
            columns["activations_finite"].append(jnp.all(jnp.isfinite(out)))
            columns["params_finite"].append(finite(state.params.get(spec.name, {})))
            columns["grads_finite"].append(finite(g))
            columns["grad_norm"].append(optax.tree.norm(g) if jax.tree.leaves(g) else jnp.zeros(()))
        return {k: jnp.stack(v) for k, v in columns.items()}

    def predict_batched(self, state: TrainState, images: Any, *, batch_size: int = 256,
                        output: str = "probabilities") -> np.ndarray:
        """:meth:`predict` over any number of images ``(N, H, W, C)`` in fixed-size jitted batches
        (the last padded: no new compilation), as probabilities or ``output="labels"`` (top-1)."""
        from jaxcnn.artifact import batched

        if output not in ("probabilities", "labels"):
            raise ConfigError(f"output (={output!r}) must be 'probabilities' or 'labels'")
        result = batched(lambda x: self.predict(state, x), np.asarray(images, np.float32), batch_size)
        return np.argmax(result, axis=-1) if output == "labels" else result

    def evaluate(self, state: TrainState, batches: Any) -> dict[str, float]:
        """Exact means of the loss and metrics over an iterable of (padded, masked) batches."""
        total = Metrics.empty(self.top_k)
        for batch in batches:
            total = total.merge(self.eval_step(state, tuple(batch)))
        return total.compute()


def compile(  # noqa: A001  (the Keras name)
    model: Sequential,
    optimizer: optax.GradientTransformation | str | Mapping[str, Any] = "adam",
    loss: str = "sparse_categorical_crossentropy",
    metrics: Sequence[str] = ("accuracy",),
    *,
    precision: str = "float32",
    on_nonfinite: str = "stop",
    total_steps: int | None = None,
    layout: Any = None,
) -> CompiledModel:
    """Compile ``model`` for training, as Keras's ``model.compile``.

    Args:
      model: the model; its shapes are proved first (:meth:`Sequential.check`), before any step is
        traced.
      optimizer: an optax transformation, an optimizer name (``"adam"``), or a config table
        (``{"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "schedule": {...}}``; see
        :func:`jaxcnn.optimizers.from_config`).
      loss: one of :data:`LOSSES` (or ``"mse"``).
      metrics: ``"accuracy"``, ``"top_k_accuracy"`` (k=5) or ``"top<k>_accuracy"``; the loss is
        always reported.
      precision: ``"float32"``, or ``"bfloat16"`` for bfloat16 compute with float32 parameters.
      on_nonfinite: ``"stop"`` or ``"skip"`` (see :class:`CompiledModel`).
      total_steps: the run's length, for learning-rate schedules that need it.
      layout: a :class:`jaxcnn.parallel.Layout` for data-parallel or FSDP training over a mesh.
    """
    from jaxcnn.optimizers import from_config

    model.check()
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}", key="precision")
    if on_nonfinite not in ("stop", "skip"):
        raise ConfigError(f"on_nonfinite (={on_nonfinite!r}) must be 'stop' or 'skip'", key="on_nonfinite")
    if not isinstance(optimizer, optax.GradientTransformation):
        optimizer = from_config(optimizer, total_steps=total_steps)
    specs, head = _split_head(model)
    # the lowerings for this process's backend and XLA flags (on a mesh, CompiledModel marks them partitioned)
    module = SequentialModule(specs=specs, lowering=LoweringContext.of_process())
    return CompiledModel(model=model, module=module, optimizer=optimizer,
                         loss=_loss_name(loss), head=head, top_k=_metric_k(metrics), precision=precision,
                         on_nonfinite=on_nonfinite, layout=layout)
