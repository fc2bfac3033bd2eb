"""Training: the state, the loss and metrics, and jitted ``train_step``, ``eval_step`` and ``predict``.

``jaxcnn.compile(model, optimizer=..., loss=..., metrics=[...])`` returns a :class:`CompiledModel`.
Every step is a pure function of ``(state, batch)``; the state is a ``flax.struct.PyTreeNode``
replaced, never mutated, and donated to the training step. A batch is ``(images, labels)`` or
``(images, labels, mask)`` with images ``(batch, height, width, channels)``; ``mask`` (``1.0`` for
real examples, ``0.0`` for padding) lets the last, partial batch of an epoch be padded to the full
batch size, so it runs the same compiled program and its metrics are still exact.

The loss is checked against the model's output head at :func:`compile`, and the loss and metrics a
step computes from the logits are :mod:`jaxcnn.losses`'s (its docstring has the table of losses,
heads and label forms, and what Keras computes for each).

The layers' weight arguments act as Keras's trainer makes them act (:mod:`jaxcnn.regularizers`): the
regularizers' penalties are added to the loss that is minimized and reported (in training and in
evaluation), the constraints are applied after each optimizer update, and a frozen layer
(``trainable=False``) is not updated.

Arrays are checked where they enter (``train_step``, ``train_steps``, ``eval_step``, ``predict``),
outside the jitted code, once per shape and dtype: images must be ``(batch, *input_shape)``, labels
of the loss's shape and form, ``mask`` ``(batch,)``, and on a layout the batch must divide over its
devices; an :class:`~jaxcnn.errors.InputError` names the expected shape. The label *range* is
checked for host (NumPy) labels at every call, on the host; labels already on the device are not
read back (that would wait for the device at every step): an out-of-range class there gives a
non-finite loss, which the non-finite guard refuses to apply, and counts as wrong in the accuracies.
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

from jaxcnn import losses as losses_lib
from jaxcnn import regularizers
from jaxcnn.flax_module import SequentialModule, build_module
from jaxcnn.layers import initializers
from jaxcnn.lowerings import LoweringContext
from jaxcnn.errors import ConfigError, InputError
from jaxcnn.losses import LOSSES, Metrics, class_labels
from jaxcnn.graph import Model, nested_weights

__all__ = [
    "LOSSES",
    "CompiledModel",
    "Metrics",
    "TrainState",
    "class_labels",
    "compile",
    "params_sha256",
]

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


def params_sha256(params: Any) -> str:
    """The sha256 of the parameters' bytes, leaves in tree order (``jax.tree.leaves``)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def _signature(arrays: Sequence[Any]) -> tuple[Any, ...]:
    """What decides a check's outcome, the values aside: each array's kind, shape and dtype."""
    return tuple((type(a), getattr(a, "shape", None), getattr(a, "dtype", None)) for a in arrays)


class _Checked:
    """A jitted step or ``predict`` behind a Python-side check of its arrays, run once per kind,
    shape and dtype (``check(name, arrays)``); host labels have their range checked at every call
    (``check_range(labels)``). Every other attribute (``lower``, ``trace``, ``_cache_size``, ...) is
    the jitted function's."""

    def __init__(self, jitted: Callable[..., Any], name: str, check: Callable[[str, tuple[Any, ...]], None],
                 check_range: Callable[[str, np.ndarray], None] | None = None) -> None:
        self._jitted, self._name, self._check, self._check_range = jitted, name, check, check_range
        self._seen: set[tuple[Any, ...]] = set()

    def __call__(self, state: Any, arrays: Any) -> Any:
        given = (arrays,) if self._check_range is None else tuple(arrays)  # predict: the images alone
        key = _signature(given)
        if key not in self._seen:
            self._check(self._name, given)
            self._seen.add(key)
        if self._check_range is not None and isinstance(given[1], np.ndarray):
            self._check_range(self._name, given[1])
        return self._jitted(state, arrays)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._jitted, name)


@dataclasses.dataclass(frozen=True, eq=False)
class CompiledModel:
    """A model with its optimizer, loss and metrics: jitted steps over an explicit state.

    Attributes:
      model: the :class:`~jaxcnn.Sequential` or graph :class:`~jaxcnn.Model`.
      module: the Flax module computing the logits (the final softmax/sigmoid, if any, is applied by
        :meth:`predict`).
      optimizer: the optax transformation.
      loss: one of :data:`LOSSES`.
      head: ``"softmax"``, ``"sigmoid"`` or ``None``: the final activation split off the module
        (``None``: the last layer's own output, logits for a crossentropy).
      top_k: the k of the reported top-k accuracy; 0 where none is reported.
      accuracy: whether accuracy is reported (not under mean_squared_error).
      precision: ``"float32"`` or ``"bfloat16"`` (compute dtype; parameters stay float32). Where the
        module's lowerings run the convolutions in oneDNN's bfloat16 kernels
        (:attr:`~jaxcnn.lowerings.LoweringContext.bfloat16_convolutions`, a CPU with native bfloat16)
        that is what ``"bfloat16"`` means, and the rest of the step computes in float32
        (:attr:`compute_dtype`); elsewhere (GPU, TPU, an export, a mesh) the whole step computes in
        bfloat16.
      on_nonfinite: ``"stop"`` or ``"skip"``: both leave the state unchanged on a non-finite step
        and count it in ``Metrics.nonfinite``; the fit loop stops on ``"stop"``.
      layout: ``None`` (one device, as ``jax.jit`` places it) or a :class:`jaxcnn.parallel.Layout`:
        the state is created and kept on its mesh (replicated, or FSDP-sharded), the batches are
        split over its ``"data"`` axis; a batch must then be laid out by ``layout.put_batch``
        (or be a host array whose size the device count divides).

    ``train_step``, ``train_steps``, ``eval_step`` and ``predict`` check their arrays' shapes (and
    host labels' range) in Python before the jitted call, once per shape and dtype (see the module's
    docstring); their ``lower``, ``trace`` and ``_cache_size`` are the jitted functions'.
    """

    model: Model
    module: SequentialModule
    optimizer: optax.GradientTransformation
    loss: str
    head: str | None
    top_k: int
    accuracy: bool = True
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
        jitted = self._jit()
        for name in ("train_step", "train_steps", "eval_step"):
            put(name, _Checked(jitted[name], name, self._check_arrays, self._check_label_range))
        put("predict", _Checked(jitted["predict"], "predict", self._check_arrays))
        put("_init", jitted["_init"])

    @property
    def compute_dtype(self) -> Any:
        """The dtype the module computes in: ``precision``'s, but float32 where the bfloat16 lies in
        oneDNN's convolutions (:attr:`~jaxcnn.lowerings.LoweringContext.bfloat16_convolutions`)."""
        if self.module.lowering.bfloat16_convolutions:
            return jnp.float32
        return PRECISIONS[self.precision]

    def _jit(self) -> dict[str, Callable[..., Any]]:
        if self.layout is None:
            return {"train_step": jax.jit(self._train_step, donate_argnums=0),
                    "train_steps": jax.jit(self._train_steps, donate_argnums=0),
                    "eval_step": jax.jit(self._eval_step), "predict": jax.jit(self._predict),
                    # One program: eagerly, each initializer's ops compiled one by one (334 compiles, 14 s
                    # for MobileNetV2 at 32x32, against 6 s jitted); the values are the same bits.
                    "_init": jax.jit(self._init_from_key)}
        # Explicit shardings (jaxcnn.parallel): the state per its layout, batches split over "data",
        # metrics replicated. XLA's SPMD partitioner adds the collectives.
        layout = self.layout
        if layout.size > 1 and not self.module.lowering.partitioned:  # the lowerings for a mesh
            object.__setattr__(self, "module", self.module.clone(
                lowering=dataclasses.replace(self.module.lowering, partitioned=True)))
        step, steps, evaluate, predict = self._train_step, self._train_steps, self._eval_step, self._predict
        state = layout.state_shardings(self.abstract_state())
        batch, stacked, replicated = layout.batch_sharding(), layout.batch_sharding(1), layout.replicated
        return {
            "train_step": jax.jit(step, in_shardings=(state, batch), out_shardings=(state, replicated),
                                  donate_argnums=0),
            "train_steps": jax.jit(steps, in_shardings=(state, stacked), out_shardings=(state, replicated),
                                   donate_argnums=0),
            "eval_step": jax.jit(evaluate, in_shardings=(state, batch), out_shardings=replicated),
            "predict": jax.jit(predict, in_shardings=(state, batch), out_shardings=batch),
            "_init": jax.jit(self._init_from_key, out_shardings=state),
        }

    # ---- the arrays that enter (checked in Python, outside jit) ------------------------------
    def _label_shape(self, batch: int) -> tuple[int, ...]:
        out = self.model.output_shape
        return (batch, *out[:-1]) if self.loss == "sparse_categorical_crossentropy" else (batch, *out)

    def _check_arrays(self, name: str, arrays: tuple[Any, ...]) -> None:
        """Refuse arrays that do not fit the model and the loss, naming the expected shape.
        ``name`` is the entry point: ``train_steps`` takes a leading axis of steps."""
        parts = ("images",) if name == "predict" else ("images", "labels", "mask")[:len(arrays)]
        if name != "predict" and len(arrays) not in (2, 3):
            raise InputError(f"{name}: a batch is (images, labels) or (images, labels, mask), not "
                             f"{len(arrays)} arrays")
        for part, array in zip(parts, arrays):
            if not (hasattr(array, "shape") and hasattr(array, "dtype")):
                raise InputError(f"{name}: {part} must be an array (NumPy or jax.Array), not "
                                 f"{type(array).__name__}")
        lead = 2 if name == "train_steps" else 1
        shapes = [tuple(a.shape) for a in arrays]
        leading = shapes[0][:lead]
        axes = "(steps, batch, " if lead == 2 else "(batch, "
        if len(shapes[0]) != lead + len(self.model.input_shape) or shapes[0][lead:] != self.model.input_shape:
            raise InputError(
                f"{name}: images of shape {shapes[0]} do not fit the model's input {self.model.input_shape}: "
                f"expected {axes}{', '.join(map(str, self.model.input_shape))})")
        if name != "predict":
            self._check_labels(name, arrays[1], leading)
        if len(arrays) == 3 and shapes[2] != leading:
            raise InputError(f"{name}: mask of shape {shapes[2]} does not fit images of shape {shapes[0]}: "
                             f"expected {leading}")
        if self.layout is not None and leading[-1] % self.layout.size:
            raise InputError(
                f"{name}: a batch of {leading[-1]} does not divide over the {self.layout.size} devices of the "
                f"layout: pad it to a multiple of {self.layout.size} (jaxcnn.parallel.pad_batch, with a mask)")

    def _check_labels(self, name: str, labels: Any, leading: tuple[int, ...]) -> None:
        expected = (*leading, *self._label_shape(1)[1:])
        accepted = [expected]
        if self.loss in ("binary_crossentropy", "mean_squared_error") and expected[-1] == 1 \
                and len(expected) > len(leading):
            accepted.append(expected[:-1])  # (batch,) for a 1-unit output, as Keras
        shape = tuple(labels.shape)
        if shape not in accepted:
            form = {"sparse_categorical_crossentropy": "integer class indices",
                    "categorical_crossentropy": "one-hot rows"}.get(self.loss, "targets")
            hint = ""
            if self.loss == "categorical_crossentropy" and shape == expected[:-1]:
                hint = ": these look like class indices, which sparse_categorical_crossentropy takes"
            elif self.loss == "sparse_categorical_crossentropy" and shape == (*expected, self.model.output_shape[-1]):
                hint = ": these look like one-hot rows, which categorical_crossentropy takes"
            raise InputError(
                f"{name}: labels of shape {shape} do not fit {self.loss} on the model's output "
                f"{self.model.output_shape}: expected {form} of shape {expected}{hint}")
        if self.loss == "sparse_categorical_crossentropy" and not jnp.issubdtype(labels.dtype, jnp.integer):
            raise InputError(f"{name}: labels of dtype {labels.dtype}: sparse_categorical_crossentropy takes "
                             "integer class indices")

    def _check_label_range(self, name: str, labels: np.ndarray) -> None:
        """Host labels only: class indices in ``0..C-1`` (sparse), values in [0, 1] (binary)."""
        if labels.size == 0:
            return
        if self.loss == "sparse_categorical_crossentropy":
            low, high, classes = labels.min(), labels.max(), self.model.output_shape[-1]
            if low < 0 or high >= classes:
                bad = low if low < 0 else high
                raise InputError(f"{name}: labels hold class {bad}, outside the model's {classes} classes "
                                 f"0..{classes - 1}")
        elif self.loss == "binary_crossentropy":
            low, high = labels.min(), labels.max()
            if low < 0 or high > 1:
                raise InputError(f"{name}: labels hold {low if low < 0 else high}, outside [0, 1]: "
                                 "binary_crossentropy takes 0/1 labels (or probabilities)")

    # ---- state ---------------------------------------------------------------------------
    def init(self, seed: int | jax.Array = 0) -> TrainState:
        """A fresh training state (laid out per ``layout`` when there is one). The parameters' key is
        ``fold_in(key(seed), 0)``; step keys are ``fold_in(fold_in(key(seed), 1), step)``. A model
        read from a Keras file starts from its weights; a model whose nested models were read from
        Keras files (a transfer-learning base) starts those from theirs, its other layers from
        their initializers."""
        base = jax.random.PRNGKey(seed) if isinstance(seed, int) else seed
        state = self._init(base)
        weights = getattr(self.model, "weights", None)
        if weights is not None:
            return self.with_weights(state, weights)
        nested = nested_weights(self.model)  # a transfer-learning base read from a Keras file
        return state if nested is None else self.with_weights(state, nested, partial=True)

    def with_weights(self, state: TrainState, weights: Any, *, partial: bool = False) -> TrainState:
        """``state`` with the parameters and statistics of ``weights`` (a Keras file's, read against
        the model's plan: :class:`jaxcnn.keras.weights.Weights`), placed as ``state``'s are, and a
        fresh optimizer state for them. ``partial``: ``weights`` may hold some layers only (a
        fine-tuning's base: :func:`jaxcnn.keras.files.weights_by_name`); the others keep ``state``'s."""
        def put(tree: Any, loaded: Any, path: str) -> Any:
            if isinstance(tree, Mapping):
                loaded = {} if loaded is None else loaded
                extra = sorted(set(loaded) - set(tree))
                if extra or (not partial and set(loaded) != set(tree)):  # read against the plan: a jaxcnn defect
                    raise AssertionError(f"{weights.source}: the weights read at {path or '/'} ({sorted(loaded)}) "
                                         f"differ from the module's ({sorted(tree)})")
                return {k: put(v, loaded.get(k), f"{path}/{k}") for k, v in tree.items()}
            if loaded is None:
                if not partial:
                    raise AssertionError(f"{weights.source}: no weight read for {path}")
                return tree
            return jax.device_put(np.asarray(loaded, tree.dtype), tree.sharding)
        params = put(state.params, weights.params, "params")
        batch_stats = put(state.batch_stats, weights.batch_stats, "batch_stats")
        opt_state = jax.jit(self.optimizer.init)(params)
        opt_state = jax.tree.map(lambda ref, value: jax.device_put(value, ref.sharding), state.opt_state, opt_state)
        return state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)

    def _init_from_key(self, base: jax.Array) -> TrainState:
        images = jnp.zeros((1, *self.model.input_shape), jnp.float32)
        # the random weights drawn in a few batched draws, not a program loop each (jaxcnn.layers.
        # initializers.generate: the same values; the init of EfficientNetB0 at 32x32 compiled in 5.2 s
        # instead of 13.4, of EfficientNetB7 in 19.5 s instead of 43.8)
        with initializers.deferred() as requests:
            variables = self.module.init({"params": jax.random.fold_in(base, 0)}, images)
        variables = requests.fill(variables)
        params = variables.get("params", {})  # a model without parameters has none
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
        logits, batch_stats, _ = self._forward(params, batch_stats, images, train=train, rng=rng, mask=mask)
        return logits, batch_stats

    def _forward(self, params: Any, batch_stats: Any, images: jax.Array, *, train: bool,
                 rng: jax.Array | None = None, mask: jax.Array | None = None) -> tuple[jax.Array, Any, Any]:
        """``(logits, batch_stats, activity)``: ``activity`` is the layers' recorded activity
        penalties (their ``"losses"`` collection), ``{}`` where no layer has an activity regularizer."""
        dtype = self.compute_dtype
        variables = {"params": params, "batch_stats": batch_stats}
        collect = ["losses"] if regularizers.has_activity(self.model.layers) else []
        if train:
            logits, updates = self.module.apply(
                variables, images.astype(dtype), train=True, rngs={"dropout": rng},
                mutable=["batch_stats", *collect], mask=mask)
            return logits.astype(jnp.float32), updates.get("batch_stats", batch_stats), updates.get("losses", {})
        if collect:
            logits, updates = self.module.apply(variables, images.astype(dtype), mutable=collect)
            return logits.astype(jnp.float32), batch_stats, updates.get("losses", {})
        return self.module.apply(variables, images.astype(dtype)).astype(jnp.float32), batch_stats, {}

    def _regularized_losses(self, params: Any, logits: jax.Array, labels: jax.Array, activity: Any) -> jax.Array:
        """The per-example losses ``(batch,)`` with the regularization terms added (see
        :mod:`jaxcnn.regularizers`): what is minimized and what the loss metric reports, as Keras."""
        losses = self._per_example_loss(logits, labels)
        layers = self.model.layers
        if regularizers.has_weight_terms(layers):
            losses = losses + regularizers.weight_penalty(layers, params)
        if regularizers.has_activity(layers):
            losses = losses + regularizers.activity_penalty(activity, logits.shape[0])
            head = self._head_activity()
            if head is not None:  # the split-off head's own activity: on the probabilities, as Keras
                losses = losses + jax.vmap(head)(self._activate(logits))
        return losses

    def _head_activity(self) -> Any:
        last = self.model.layers[-1]
        return getattr(last, "activity_regularizer", None) if self.head is not None else None

    def _per_example_loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        return losses_lib.per_example_loss(self.loss, self.head, logits, labels)

    def _activate(self, logits: jax.Array) -> jax.Array:
        return losses_lib.activate(self.head, logits)

    def _metrics(self, logits: jax.Array, labels: jax.Array, losses: jax.Array, mask: jax.Array) -> Metrics:
        return losses_lib.metric_sums(self.loss, self.head, logits, labels, losses, mask, top_k=self.top_k,
                                      accuracy=self.accuracy)

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
            logits, batch_stats, activity = self._forward(params, state.batch_stats, images, train=True, rng=rng,
                                                          mask=mask)
            losses = self._regularized_losses(params, logits, labels, activity)
            mean = jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)
            return mean, (batch_stats, logits, losses)

        (loss, (batch_stats, logits, losses)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        if regularizers.has_weight_terms(self.model.layers):  # frozen layers take no part in the update
            grads = regularizers.freeze(self.model.layers, grads, jax.tree.map(jnp.zeros_like, grads))
        finite = jnp.isfinite(loss) & jnp.all(jnp.array(
            [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)] or [True]))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        if self.module.lowering.backend == "cpu":
            # The update runs only where the step is finite. Computed always and then selected with
            # `where`, it made XLA's CPU backend copy every optimizer moment before overwriting it in
            # place (21 copies, a 1,024x500 pair among them, in the seed CNN's Adam step:
            # experiments/profile_step.py); `cond` runs one branch and needs none. On GPU a
            # conditional reads its predicate back to the host, so `where` stays there.
            params, opt_state = jax.lax.cond(finite, self._update, lambda p, o, g: (p, o),
                                             state.params, state.opt_state, grads)
        else:
            params, opt_state = keep(self._update(state.params, state.opt_state, grads),
                                     (state.params, state.opt_state))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  batch_stats=keep(batch_stats, state.batch_stats))
        metrics = self._metrics(logits, labels, losses, mask)
        return new_state, metrics.replace(nonfinite=1.0 - finite.astype(jnp.float32))

    def _update(self, params: Any, opt_state: Any, grads: Any) -> tuple[Any, Any]:
        """The optimizer's step: the new parameters and optimizer state. Keras applies the weight
        constraints after the update; frozen layers keep their parameters."""
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        new = optax.apply_updates(params, updates)
        if regularizers.has_weight_terms(self.model.layers):
            new = regularizers.freeze(self.model.layers, regularizers.constrain(self.model.layers, new), params)
        return new, opt_state

    def _train_steps(self, state: TrainState, batches: Sequence[jax.Array]) -> tuple[TrainState, Metrics]:
        """``k`` training steps in one call, unrolled: ``batches`` holds ``k`` batches stacked on a
        leading axis (``images (k, batch, ...)``, ``labels (k, batch, ...)``, optional ``mask (k, batch)``).
        The same as ``k`` calls of ``train_step`` (tested); the metrics are their sums. Unrolled in
        Python, not ``lax.scan``: a scanned step ran about 15x slower on XLA's CPU backend (issue 5),
        and compilation grows with ``k``. It saves the per-call dispatch, which pays only where a step is
        short next to it (small models on an accelerator); on this 2-core CPU it does not pay
        (experiments/bench_train.py), so the fit loop calls ``train_step``."""
        total = Metrics.empty(self.top_k, self.accuracy)
        for i in range(batches[0].shape[0]):
            state, metrics = self._train_step(state, tuple(b[i] for b in batches))
            total = total.merge(metrics)
        return state, total

    def _eval_step(self, state: TrainState, batch: Sequence[jax.Array]) -> Metrics:
        images, labels, mask = self._unpack(batch)
        logits, _, activity = self._forward(state.params, state.batch_stats, images, train=False)
        return self._metrics(logits, labels, self._regularized_losses(state.params, logits, labels, activity), mask)

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
        dtype = self.compute_dtype

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
        """:meth:`predict` over any number of images ``(N, H, W, C)`` in jitted batches of one shape,
        ``batch_size`` (rounded up to a multiple of the layout's device count), the last padded: one
        compilation whatever ``N``. Returns probabilities ``(N, *output_shape)`` (a linear head's raw
        outputs), or ``output="labels"``: the top-1 class ``(N, *output_shape[:-1])``."""
        from jaxcnn.artifact import batched

        if output not in ("probabilities", "labels"):
            raise ConfigError(f"output (={output!r}) must be 'probabilities' or 'labels'")
        multiple = 1 if self.layout is None else self.layout.size
        result = batched(lambda x: self.predict(state, x), np.asarray(images, np.float32), batch_size,
                         multiple=multiple)
        return np.argmax(result, axis=-1) if output == "labels" else result

    def evaluate(self, state: TrainState, batches: Any) -> dict[str, float]:
        """Exact means of the loss and metrics over an iterable of (padded, masked) batches."""
        total = Metrics.empty(self.top_k, self.accuracy)
        for batch in batches:
            total = total.merge(self.eval_step(state, tuple(batch)))
        return total.compute()


def _native_bfloat16() -> bool:
    """Whether this CPU has oneDNN's native bfloat16 kernels (AVX512_BF16 or AMX)."""
    from jaxcnn import onednn

    return bool(onednn.info()["bfloat16"])


def compile(  # noqa: A001  (the Keras name)
    model: Model,
    optimizer: optax.GradientTransformation | str | Mapping[str, Any] = "adam",
    loss: str | None = None,
    metrics: Sequence[str] = (),
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
      loss: one of :data:`LOSSES` (or ``"mse"``), checked against the model's last layer (the
        module's table). ``None``: the crossentropy of the model's head (sparse categorical for a
        softmax or a linear output of several units, binary for a sigmoid), else mean squared error:
        enough for ``predict`` and shape queries; name the loss for training.
      metrics: ``"accuracy"``, ``"top_k_accuracy"`` (k=5) or ``"top<k>_accuracy"``; the loss is
        always reported, and accuracy (and a top-5 above 5 classes) wherever it applies, asked or
        not. A metric asked for that cannot apply to the loss is refused.
      precision: ``"float32"``, or ``"bfloat16"`` for bfloat16 compute with float32 parameters: on a
        CPU with oneDNN's native bfloat16 kernels, the convolutions in them and the rest in float32
        (:attr:`CompiledModel.compute_dtype`); elsewhere the whole step.
      on_nonfinite: ``"stop"`` or ``"skip"`` (see :class:`CompiledModel`).
      total_steps: the run's length, for learning-rate schedules that need it.
      layout: a :class:`jaxcnn.parallel.Layout` for data-parallel or FSDP training over a mesh.
    """
    from jaxcnn.optimizers import from_config

    model.check()
    if len(model.input_names) != 1 or len(model.output_names) != 1:
        raise ConfigError(
            f"the model has {len(model.input_names)} inputs ({', '.join(model.input_names)}) and "
            f"{len(model.output_names)} outputs ({', '.join(model.output_names)}): training and export "
            "take a model with one input and one output (it can be summarized and proved)", key="model")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}", key="precision")
    if on_nonfinite not in ("stop", "skip"):
        raise ConfigError(f"on_nonfinite (={on_nonfinite!r}) must be 'stop' or 'skip'", key="on_nonfinite")
    if not isinstance(optimizer, optax.GradientTransformation):
        optimizer = from_config(optimizer, total_steps=total_steps)
    loss = losses_lib.default_loss(model) if loss is None else losses_lib.loss_name(loss)
    losses_lib.check_head(loss, model)
    top_k, accuracy = losses_lib.metric_spec(metrics, loss, model.output_shape[-1])
    specs, head = losses_lib.split_head(model)
    if head is not None and getattr(specs[-1], "activity_regularizer", None) is not None:
        # its penalty is of the probabilities (CompiledModel._regularized_losses), not of the logits
        specs = (*specs[:-1], dataclasses.replace(specs[-1], activity_regularizer=None))
    # the lowerings for this process's backend and XLA flags (on a mesh, CompiledModel marks them partitioned)
    context = LoweringContext.of_process()
    if precision == "bfloat16" and context.onednn and _native_bfloat16():
        context = dataclasses.replace(context, bfloat16_convolutions=True)
    module = build_module(model, context, specs=specs)
    return CompiledModel(model=model, module=module, optimizer=optimizer,
                         loss=loss, head=head, top_k=top_k, accuracy=accuracy, precision=precision,
                         on_nonfinite=on_nonfinite, layout=layout)
