"""The proof: ``jax.eval_shape`` of the real Flax ``init`` and ``apply`` against the formulas.

Nothing is computed and nothing is allocated: parameters and activations are
``jax.ShapeDtypeStruct`` values. The batch axis is a symbolic dimension (``jax.export``), so the
proof holds for every batch size, which is what the ``None`` of a printed shape claims. Both the
inference path and the training path (dropout on, batch statistics updated) are traced. No backend
is started either: ``jax.eval_shape`` needs none, and the lowerings are those of :data:`PROOF_LOWERING`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import export

from jaxcnn.flax_module import build_module, traced_layer
from jaxcnn.errors import JaxcnnError, ShapeMismatchError
from jaxcnn.lowerings import LoweringContext
from jaxcnn.graph import LayerPlan, Model

__all__ = ["PROOF_LOWERING", "CheckResult", "LayerProof", "abstract_variables", "check", "check_file"]

PROOF_LOWERING = LoweringContext("cpu")
"""The lowerings the proof traces: CPU's rule, the one with alternatives (patches where it picks
them), chosen without asking JAX for its backend, which would start it. Every lowering gives the same
shapes and values (tests/test_lowerings.py); elsewhere the reference ones run."""

PARAM_DTYPE = jnp.float32
TRAINABLE = "params"
NON_TRAINABLE = "batch_stats"


@dataclasses.dataclass(frozen=True)
class LayerProof:
    """One layer's formulas and what ``jax.eval_shape`` derived for it (batch axis symbolic)."""

    plan: LayerPlan
    output: jax.ShapeDtypeStruct
    variables: Mapping[str, Mapping[str, jax.ShapeDtypeStruct]]


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The model's proof: every layer's shapes agreed with its formulas. ``input_shape`` is the
    (first) input's shape.

    ``variables`` is the abstract variable tree (``ShapeDtypeStruct`` leaves), as ``init`` would
    return it.
    """

    model_name: str
    input_shape: tuple[int, ...]
    layers: tuple[LayerProof, ...]
    variables: Mapping[str, Any]

    @property
    def total_params(self) -> int:
        return sum(p.plan.params for p in self.layers)

    @property
    def trainable_params(self) -> int:
        return sum(p.plan.trainable_params for p in self.layers)

    @property
    def non_trainable_params(self) -> int:
        return sum(p.plan.non_trainable_params for p in self.layers)


def _batch_dim(batch_size: int | None) -> Any:
    if batch_size is not None:
        return batch_size
    (dim,) = export.symbolic_shape("batch")
    return dim


def _show(shape: tuple[Any, ...]) -> str:
    """A shape as Keras prints it: the (symbolic) batch axis as ``None``."""
    dims = [str(d) if isinstance(d, int) else "None" for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def abstract_variables(model: Model, *, batch: Any = None) -> tuple[Any, ...]:
    """``(variables, eval outputs, train outputs, updated batch_stats)`` as ``ShapeDtypeStruct``
    trees, from ``jax.eval_shape`` of the model's Flax ``init`` and ``apply``.

    ``batch`` is an int or a symbolic dimension; ``None`` makes a symbolic one."""
    module = build_module(model, PROOF_LOWERING)
    if batch is None:
        batch = _batch_dim(None)
    inputs = tuple(jax.ShapeDtypeStruct((batch, *shape), jnp.float32) for shape in model.input_shapes)
    images = inputs[0] if len(inputs) == 1 else inputs

    def trace(x: jax.Array) -> tuple[Any, ...]:
        params_key, dropout_key = jax.random.split(jax.random.key(0))
        # init runs the inference path once: its output is that path's proof.
        eval_outputs, variables = module.init_with_output({"params": params_key}, x, capture=True)
        train_outputs, updates = module.apply(
            variables, x, train=True, capture=True,
            rngs={"dropout": dropout_key}, mutable=[NON_TRAINABLE],
        )
        return variables, eval_outputs, train_outputs, updates

    with _collector_paused():
        return jax.eval_shape(trace, images)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the duration: a trace allocates hundreds of thousands
    of objects that live until it ends, and the collector's passes over them took 0.5 s of
    EfficientNetB7's 1.8 s proof (816 layers) for nothing to free."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


def _tree_shapes(tree: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}``; a nested model's variables as ``layer/name``."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, leaf in sorted(tree.items()):
        if isinstance(leaf, Mapping):
            out.update(_tree_shapes(leaf, f"{prefix}{name}/"))
        else:
            out[f"{prefix}{name}"] = (tuple(leaf.shape), str(leaf.dtype))
    return out


_MEMO: dict[Any, CheckResult] = {}
_MEMO_SIZE = 64


def check(model: Model, *, batch_size: int | None = None) -> CheckResult:
    """Prove ``model``'s shapes: formulas against ``jax.eval_shape`` of its Flax code, layer by layer.

    Args:
      model: the model to prove.
      batch_size: a concrete batch size to trace with; ``None`` (the default) traces a symbolic
        batch dimension, proving the shapes for every batch size.

    Returns:
      the :class:`CheckResult`, with every layer's proven output and variables.

    Raises:
      ImpossibleShapeError: a layer cannot take its input (from the formulas, before tracing).
      ShapeMismatchError: ``eval_shape`` and a formula disagree; the message names the layer
        (index, name, type), the formula and both values. Also where a layer's Flax code cannot be
        traced on the input its formulas give (a TypeError or ValueError, chained); outside ``check``
        such an error propagates as it is, with a note naming the layer.

    A proof depends only on the model's name, input shapes, nodes and layer specs (frozen values) and on
    ``batch_size``, so proofs are memoized on them: a summary after a check does not trace again.
    """
    key = (model.identity(), batch_size)
    try:
        hash(key)
    except TypeError:  # a user's layer subclass with an unhashable field: prove without the memo
        return _prove(model, batch_size)
    if key not in _MEMO:
        if len(_MEMO) >= _MEMO_SIZE:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = _prove(model, batch_size)
    return _MEMO[key]


def _prove(model: Model, batch_size: int | None) -> CheckResult:
    plan = model.plan()  # impossible layers are refused here, before any tracing
    batch = _batch_dim(batch_size)
    try:
        variables, eval_outputs, train_outputs, updates = abstract_variables(model, batch=batch)
    except JaxcnnError:
        raise
    except (TypeError, ValueError) as error:  # the layer's Flax code cannot take what the formulas say
        layer = traced_layer(error)
        if layer is None:
            raise
        index, name, kind = layer
        raise ShapeMismatchError(
            f"tracing the layer's Flax code on input "
            f"{', '.join(_show((batch, *shape)) for shape in plan[index].input_shapes)} failed: "
            f"{type(error).__name__}: {_first_line(error)}", index=index, layer_name=name, layer_type=kind,
        ) from error

    names = {p.name for p in plan}
    for collection, tree in variables.items():
        if collection not in (TRAINABLE, NON_TRAINABLE):
            raise ShapeMismatchError(f"init created an unexpected variable collection {collection!r}")
        for extra in set(tree) - names:
            raise ShapeMismatchError(f"init created variables for {extra!r}, which is not a layer")

    proofs = []
    for p in plan:
        formula = p.formula()
        want_out = (batch, *p.output_shape)
        for path, outputs in (("inference", eval_outputs), ("training", train_outputs)):
            got = outputs[p.index]
            if tuple(got.shape) != want_out or got.dtype != jnp.float32:
                raise ShapeMismatchError(
                    f"output shape ({path}): jax.eval_shape gives {_show(tuple(got.shape))} "
                    f"{got.dtype}, the formula gives {_show(want_out)} float32; "
                    f"formula: {formula.output}",
                    index=p.index, layer_name=p.name, layer_type=p.type)
        layer_vars = {}
        for collection in (TRAINABLE, NON_TRAINABLE):
            got = _tree_shapes(variables.get(collection, {}).get(p.name, {}))
            want = {name: (tuple(shape), str(jnp.dtype(PARAM_DTYPE)))
                    for name, shape in sorted(p.param_shapes.get(collection, {}).items())}
            if got != want:
                raise ShapeMismatchError(
                    f"variables in `{collection}`: jax.eval_shape gives {got or 'none'}, the formula "
                    f"gives {want or 'none'}; formula: {formula.params}",
                    index=p.index, layer_name=p.name, layer_type=p.type)
            if got:
                layer_vars[collection] = variables[collection][p.name]
        updated = _tree_shapes(updates.get(NON_TRAINABLE, {}).get(p.name, {}))
        if updated != _tree_shapes(variables.get(NON_TRAINABLE, {}).get(p.name, {})):
            raise ShapeMismatchError(
                f"the training step's updated `{NON_TRAINABLE}` {updated} differ from init's",
                index=p.index, layer_name=p.name, layer_type=p.type)
        proofs.append(LayerProof(p, eval_outputs[p.index], layer_vars))

    return CheckResult(model.name, model.input_shapes[0], tuple(proofs), variables)


def check_file(path: str, *, input_shape: Sequence[int] | None = None) -> CheckResult:
    """``jaxcnn check PATH``: load a TOML, JSON or Keras JSON file and prove it; every error names
    ``path``."""
    from jaxcnn.config import load

    model = load(path, input_shape=input_shape, require_input_shape=True)
    try:
        return check(model)
    except JaxcnnError as error:
        raise error.located(source=str(path)) from None
