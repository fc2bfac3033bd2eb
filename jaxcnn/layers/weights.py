"""The weight arguments of weighted layers beside the initializers: regularizers and constraints,
with Keras's names, parameters, defaults and values.

Regularizers (``kernel_regularizer``, ``bias_regularizer``, ``activity_regularizer``): a name
(``"l1"``, ``"l2"``: factor 0.01; ``"l1_l2"``: 0.01 and 0.01, as Keras's docstring), a table
``{name = "L2", l2 = 0.001}`` / ``{name = "L1L2", l1 = 0.01, l2 = 0.001}`` (``L1L2``'s own defaults
are 0.0 and 0.0, as Keras's class), or Keras's JSON form (``{"module": "keras.regularizers",
"class_name": "L2", "config": {"l2": 0.01}}``). The penalty of a weight ``w`` is
``l1 * sum(|w|) + l2 * sum(w**2)`` (Keras's ``L1L2.__call__``).

Constraints (``kernel_constraint``, ``bias_constraint``): ``max_norm(max_value=2, axis=0)``,
``non_neg``, ``unit_norm(axis=0)``, ``min_max_norm(min_value=0, max_value=1, rate=1, axis=0)``,
applied to the weight as Keras stores it (a Conv2D kernel ``(kh, kw, in, out)``: ``axis=[0, 1, 2]``
constrains each filter), with Keras's ``epsilon`` 1e-7 in the denominators.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn.layers.keras_objects import KerasObject, ObjectError, is_number, parse

__all__ = ["EPSILON", "Constraint", "Regularizer", "constraint_spec", "regularizer_spec"]

EPSILON = 1e-7  # keras.backend.epsilon()

_REGULARIZERS = {"l1": {"l1": 0.01}, "l2": {"l2": 0.01}, "l1_l2": {"l1": 0.01, "l2": 0.01},
                 "l1l2": {"l1": 0.0, "l2": 0.0}}
_CONSTRAINTS: dict[str, dict[str, Any]] = {
    "max_norm": {"max_value": 2.0, "axis": 0},
    "non_neg": {},
    "unit_norm": {"axis": 0},
    "min_max_norm": {"min_value": 0.0, "max_value": 1.0, "rate": 1.0, "axis": 0},
}


class Regularizer(KerasObject):
    """``l1 * sum(|w|) + l2 * sum(w**2)``: ``config`` is ``(("l1", l1), ("l2", l2))``."""

    def __call__(self, w: jax.Array) -> jax.Array:
        p = self.params()
        penalty = jnp.zeros((), jnp.float32)
        if p["l1"]:
            penalty = penalty + p["l1"] * jnp.sum(jnp.abs(w))
        if p["l2"]:
            penalty = penalty + p["l2"] * jnp.sum(jnp.square(w))
        return penalty

    def __str__(self) -> str:
        p = self.params()
        return f"L1L2(l1={p['l1']}, l2={p['l2']})"


class Constraint(KerasObject):
    """A projection applied to a weight after each optimizer update, as Keras applies it."""

    def __call__(self, w: jax.Array) -> jax.Array:
        p = self.params()
        if self.name == "non_neg":
            return jnp.maximum(w, 0.0)
        axis = p["axis"]
        norms = jnp.sqrt(jnp.sum(jnp.square(w), axis=axis, keepdims=True))
        if self.name == "unit_norm":
            return w / (EPSILON + norms)
        if self.name == "max_norm":
            desired = jnp.clip(norms, 0.0, p["max_value"])
        else:  # min_max_norm
            desired = p["rate"] * jnp.clip(norms, p["min_value"], p["max_value"]) + (1 - p["rate"]) * norms
        return w * (desired / (EPSILON + norms))


def regularizer_spec(value: Any) -> Regularizer | None:
    """The canonical form of a regularizer argument (``None``: no regularizer). Raises
    :class:`~jaxcnn.layers.keras_objects.ObjectError` (one line) on a bad value."""
    if value is None or isinstance(value, Regularizer):
        return value
    # The string 'l1_l2' has l1 = l2 = 0.01 (Keras's docstring); a table or object named L1L2 (or
    # l1_l2) has the class's defaults, 0.0 and 0.0.
    name, params = parse(value, "regularizer", _REGULARIZERS,
                         None if isinstance(value, str) else {"l1_l2": "l1l2"})
    full = {"l1": 0.0, "l2": 0.0, **_REGULARIZERS[name], **params}
    for key, factor in full.items():
        if not is_number(factor) or not math.isfinite(factor) or factor < 0:
            raise ObjectError(f"{key}={factor!r} must be a non-negative number (Keras: a non-negative float)")
    return Regularizer("l1_l2", (("l1", float(full["l1"])), ("l2", float(full["l2"]))))


def _axis(value: Any, rank: int) -> int | tuple[int, ...]:
    axes = value if isinstance(value, tuple) else (value,)
    if not axes or not all(isinstance(a, int) and not isinstance(a, bool) and -rank <= a < rank for a in axes):
        raise ObjectError(f"axis={value!r} must be an axis (or a list of axes) of the {rank}-D weight, "
                          f"in [{-rank}, {rank - 1}]")
    return value


def constraint_spec(value: Any, rank: int) -> Constraint | None:
    """The canonical form of a constraint argument on a weight of ``rank`` dimensions (``None``: no
    constraint). Raises :class:`~jaxcnn.layers.keras_objects.ObjectError` (one line) on a bad value."""
    if value is None:
        return None
    if isinstance(value, Constraint):
        value = value.toml_table()
    name, params = parse(value, "constraint", _CONSTRAINTS, drop_none=False)
    full = {**_CONSTRAINTS[name], **params}
    for key, v in full.items():
        if key == "axis":
            full[key] = _axis(v, rank)
        elif not is_number(v):
            raise ObjectError(f"{name} {key}={v!r} must be a number")
        else:
            full[key] = float(v)
    if name == "min_max_norm" and full["min_value"] > full["max_value"]:
        raise ObjectError(f"min_max_norm min_value={full['min_value']} exceeds max_value={full['max_value']}")
    return Constraint(name, tuple(sorted(full.items())))
