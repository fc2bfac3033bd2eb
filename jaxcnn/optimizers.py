"""Optimizers from optax, named with their arguments in a config.

    [train.optimizer]
    name = "sgd"                 # any of OPTIMIZERS: the optax function of that name
    learning_rate = 0.1          # Keras's defaults when absent: 0.01 for sgd, 0.001 otherwise
    momentum = 0.9               # the optax function's own arguments, checked against its signature
    nesterov = true
    clip_norm = 1.0              # optional: optax.clip_by_global_norm before the update
    weight_decay = 1e-4          # the optimizer's own where it has one (adamw, lamb, ...), else
                                 # optax.add_decayed_weights
    [train.optimizer.schedule]   # optional learning-rate schedule; its peak is learning_rate
    name = "warmup_cosine"       # constant, cosine, warmup_cosine, piecewise, exponential
    warmup_fraction = 0.05       # or warmup_steps = 100; decay_steps defaults to the run's steps

Every argument's type is checked against the annotation of the optax function it goes to (a number,
an integer, true or false, a dtype name), before anything is traced. An unknown optimizer, schedule
or argument, a wrong type, or a schedule that cannot fit in the run is refused with a
:class:`~jaxcnn.errors.ConfigError` under its config key (``train.optimizer.momentum``,
``train.optimizer.schedule``), naming the value and what is known or how to fix it.
"""

from __future__ import annotations

import difflib
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.errors import ConfigError, describe_value

__all__ = ["OPTIMIZERS", "SCHEDULES", "from_config", "learning_rate_schedule", "schedule_from_config"]

OPTIMIZERS = ("sgd", "adam", "adamw", "nadam", "nadamw", "adamax", "rmsprop", "adagrad", "adadelta",
              "lamb", "lars", "lion", "adafactor", "novograd", "radam", "yogi")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "piecewise", "exponential")
_OWN_KEYS = ("name", "learning_rate", "schedule", "clip_norm", "weight_decay")
_KEY = "train.optimizer"
_SCHEDULE_KEY = "train.optimizer.schedule"

# schedule name -> (optax function, its arguments jaxcnn sets itself, config keys of jaxcnn's own)
_SCHEDULE_FACTORIES: dict[str, tuple[Callable[..., Any], tuple[str, ...], tuple[str, ...]]] = {
    "constant": (optax.constant_schedule, ("value",), ()),
    "cosine": (optax.cosine_decay_schedule, ("init_value",), ()),
    "warmup_cosine": (optax.warmup_cosine_decay_schedule, ("peak_value",), ("warmup_fraction",)),
    "piecewise": (optax.piecewise_constant_schedule, ("init_value", "boundaries_and_scales"),
                  ("boundaries", "scales")),
    "exponential": (optax.exponential_decay, ("init_value",), ()),
}
# jaxcnn's defaults for arguments optax requires (decay_steps defaults to the run's length)
_SCHEDULE_DEFAULTS = {"init_value": 0.0, "warmup_steps": 0, "transition_steps": 1, "decay_rate": 0.96}


def _unknown(what: str, value: str, known: Any) -> str:
    close = difflib.get_close_matches(value, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {value!r}{hint} known: {', '.join(known)}"


def _kind(parameter: inspect.Parameter) -> str:
    """What a config value for an optax argument must be, from its annotation: ``"bool"``,
    ``"integer"``, ``"number"``, ``"dtype"``, ``"mask"`` (true or false: a tree or a function cannot
    be written in a config) or ``""`` (not settable in a config)."""
    annotation = parameter.annotation
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = set(typing.get_args(annotation)) if union else {annotation}
    options.discard(type(None))
    if parameter.name.endswith("dtype") or str in options or np.dtype in options:
        return "dtype"
    if parameter.name.endswith("mask"):
        return "mask"
    if options == {bool}:
        return "bool"
    if options == {int}:
        return "integer"
    return "number" if options & {int, float} and typing.Any not in options else ""


def _optional(parameter: inspect.Parameter) -> bool:
    return parameter.default is None or type(None) in typing.get_args(parameter.annotation)


def _checked(key: str, value: Any, kind: str, *, optional: bool = False) -> Any:
    """``value`` if it is of ``kind`` (see :func:`_kind`); else a ConfigError under ``key``."""
    if value is None and optional:
        return value
    if kind in ("bool", "mask"):
        ok = isinstance(value, bool)
        wanted = "true or false" + " (a mask tree or function cannot be written in a config)" * (kind == "mask")
    elif kind == "integer":
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif kind == "dtype":
        ok, wanted = isinstance(value, str) and _is_dtype(value), "a dtype name such as \"bfloat16\""
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        wanted = "a finite number"
    if not ok:
        raise ConfigError(f"must be {wanted}, got {describe_value(value)}", key=key)
    return value


def _is_dtype(name: str) -> bool:
    try:
        jnp.dtype(name)
    except TypeError:
        return False
    return True


def _positive(key: str, value: Any, kind: str = "number") -> Any:
    if _checked(key, value, kind) <= 0:
        raise ConfigError(f"must be positive, got {describe_value(value)}", key=key)
    return value


def _schedule_arguments(name: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """The optax arguments of schedule ``name`` in ``table``, each checked against its annotation."""
    factory, fixed, own = _SCHEDULE_FACTORIES[name]
    parameters = {p: v for p, v in inspect.signature(factory).parameters.items() if p not in fixed}
    known = [*parameters, *own]
    arguments = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(_unknown(f"argument of schedule {name!r}", key, known or ("none",)),
                              key=f"{_SCHEDULE_KEY}.{key}")
        if key in parameters:
            kind = _kind(parameters[key])
            arguments[key] = _checked(f"{_SCHEDULE_KEY}.{key}", value, kind, optional=_optional(parameters[key]))
    return arguments


def _decay_steps(name: str, table: Mapping[str, Any], total_steps: int | None) -> tuple[int, str]:
    """The schedule's length and how to name it in a message (``"the run's 20 steps"``)."""
    if "decay_steps" in table:
        steps = table["decay_steps"]
        described = f"`decay_steps` (={steps})"
    elif total_steps is None:
        raise ConfigError(f"schedule {name!r} needs `decay_steps` (the run's length is not known here)",
                          key=f"{_SCHEDULE_KEY}.decay_steps")
    else:
        steps = total_steps
        described = f"the run's {total_steps} step{'s' * (total_steps != 1)}"
    if steps < 1:
        raise ConfigError(f"the schedule needs at least 1 decay step, {described} leaves none: "
                          "set decay_steps to a positive number of steps", key=_SCHEDULE_KEY)
    return steps, described


def _warmup_steps(table: Mapping[str, Any], decay_steps: int, described: str) -> int:
    """``warmup_steps``, or ``floor(warmup_fraction * decay_steps)``; always smaller than the schedule."""
    if "warmup_steps" in table and "warmup_fraction" in table:
        raise ConfigError("give either warmup_steps or warmup_fraction, not both", key=_SCHEDULE_KEY)
    if "warmup_fraction" in table:
        fraction = _checked(f"{_SCHEDULE_KEY}.warmup_fraction", table["warmup_fraction"], "number")
        if not 0 <= fraction < 1:
            raise ConfigError(f"must be a fraction of the schedule in [0, 1), got {describe_value(fraction)}",
                              key=f"{_SCHEDULE_KEY}.warmup_fraction")
        return math.floor(fraction * decay_steps)
    warmup = table.get("warmup_steps", _SCHEDULE_DEFAULTS["warmup_steps"])
    if warmup < 0:
        raise ConfigError(f"must not be negative, got {describe_value(warmup)}", key=f"{_SCHEDULE_KEY}.warmup_steps")
    if warmup >= decay_steps:
        raise ConfigError(f"warmup_steps (={warmup}) must be smaller than {described}: lower warmup_steps "
                          "or use warmup_fraction (a share of the schedule, e.g. 0.05)", key=_SCHEDULE_KEY)
    return warmup


def _piecewise(table: Mapping[str, Any]) -> dict[int, float]:
    """``{boundary: scale}`` from the lists ``boundaries`` (increasing step numbers) and ``scales``."""
    boundaries, scales = table.get("boundaries", []), table.get("scales", [])
    for key, value in (("boundaries", boundaries), ("scales", scales)):
        if not isinstance(value, list):
            raise ConfigError(f"must be an array, got {describe_value(value)}", key=f"{_SCHEDULE_KEY}.{key}")
    if len(boundaries) != len(scales):
        raise ConfigError(f"`boundaries` ({len(boundaries)} steps) and `scales` ({len(scales)} factors) "
                          "must be lists of the same length", key=_SCHEDULE_KEY)
    for b in boundaries:
        if _checked(f"{_SCHEDULE_KEY}.boundaries", b, "integer") < 0:
            raise ConfigError(f"must be step numbers >= 0, got {b}", key=f"{_SCHEDULE_KEY}.boundaries")
    if boundaries != sorted(set(boundaries)):
        raise ConfigError(f"must be strictly increasing step numbers, got {boundaries}",
                          key=f"{_SCHEDULE_KEY}.boundaries")
    return {b: _checked(f"{_SCHEDULE_KEY}.scales", s, "number") for b, s in zip(boundaries, scales)}


def schedule_from_config(table: Mapping[str, Any], learning_rate: float, *,
                         total_steps: int | None) -> Callable[[Any], Any]:
    """A learning-rate schedule peaking at ``learning_rate``; ``decay_steps`` defaults to the run's
    ``total_steps``. ``warmup_cosine`` takes ``warmup_steps`` or ``warmup_fraction`` (a share of
    ``decay_steps`` in [0, 1), rounded down to whole steps)."""
    table = dict(table)
    name = table.pop("name", None)
    if not isinstance(name, str) or name not in SCHEDULES:
        raise ConfigError(_unknown("schedule", str(name), SCHEDULES), key=f"{_SCHEDULE_KEY}.name")
    factory, fixed, _ = _SCHEDULE_FACTORIES[name]
    defaults = {k: v for k, v in _SCHEDULE_DEFAULTS.items()
                if k in inspect.signature(factory).parameters and k not in fixed}
    arguments = {**defaults, **_schedule_arguments(name, table)}
    if name == "constant":
        return optax.constant_schedule(learning_rate)
    if name == "piecewise":
        return optax.piecewise_constant_schedule(learning_rate, _piecewise(table))
    if name == "exponential":
        _positive(f"{_SCHEDULE_KEY}.transition_steps", arguments["transition_steps"], "integer")
        if arguments.get("transition_begin", 0) < 0:
            raise ConfigError(f"must not be negative, got {describe_value(arguments['transition_begin'])}",
                              key=f"{_SCHEDULE_KEY}.transition_begin")
        return optax.exponential_decay(learning_rate, **arguments)
    arguments["decay_steps"], described = _decay_steps(name, table, total_steps)
    if name == "cosine":
        return optax.cosine_decay_schedule(learning_rate, **arguments)
    arguments["warmup_steps"] = _warmup_steps(table, arguments["decay_steps"], described)
    return optax.warmup_cosine_decay_schedule(peak_value=learning_rate, **arguments)


def _optimizer_arguments(name: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """The optax arguments of optimizer ``name`` in ``table``, each checked against its annotation."""
    parameters = inspect.signature(getattr(optax, name)).parameters
    settable = {p: v for p, v in parameters.items()
                if p not in ("learning_rate", "weight_decay") and _kind(v)}
    arguments = {}
    for key, value in table.items():
        if key in _OWN_KEYS:
            continue
        if key not in settable:
            raise ConfigError(_unknown(f"argument of optimizer {name!r}", key, [*_OWN_KEYS[1:], *settable]),
                              key=f"{_KEY}.{key}")
        arguments[key] = _checked(f"{_KEY}.{key}", value, _kind(settable[key]), optional=_optional(settable[key]))
    return arguments


def from_config(config: str | Mapping[str, Any], *, total_steps: int | None = None) -> optax.GradientTransformation:
    """The optax transformation a config names (a name, or a table as in this module's docstring).

    ``total_steps`` is the run's length, the default ``decay_steps`` of a schedule.
    """
    table = {"name": config} if isinstance(config, str) else dict(config)
    name = table.get("name")
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ConfigError(_unknown("optimizer", str(name), OPTIMIZERS), key=f"{_KEY}.name")
    kwargs = _optimizer_arguments(name, table)
    lr = learning_rate_schedule(table, total_steps=total_steps)
    chain = []
    if "clip_norm" in table:
        chain.append(optax.clip_by_global_norm(_positive(f"{_KEY}.clip_norm", table["clip_norm"])))
    weight_decay = table.get("weight_decay")
    if weight_decay is not None:
        _checked(f"{_KEY}.weight_decay", weight_decay, "number")
        if "weight_decay" in inspect.signature(getattr(optax, name)).parameters:
            kwargs["weight_decay"] = weight_decay
        else:
            chain.append(optax.add_decayed_weights(weight_decay))
    try:
        chain.append(getattr(optax, name)(learning_rate=lr, **kwargs))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"optax.{name} refused its arguments {kwargs}: {error}", key=_KEY) from None
    return chain[0] if len(chain) == 1 else optax.chain(*chain)


def learning_rate_schedule(config: str | Mapping[str, Any], *, total_steps: int | None = None) -> Any:
    """The learning rate of an optimizer config (as :func:`from_config` reads it): a number, or the
    schedule (a function of the step) for a run of ``total_steps`` steps."""
    table = {"name": config} if isinstance(config, str) else dict(config)
    learning_rate = _checked(f"{_KEY}.learning_rate",
                             table.get("learning_rate", 0.01 if table.get("name") == "sgd" else 0.001), "number")
    if "schedule" not in table:
        return learning_rate
    if not isinstance(table["schedule"], Mapping):
        raise ConfigError(f"must be a table ([train.optimizer.schedule]), got {describe_value(table['schedule'])}",
                          key=_SCHEDULE_KEY)
    try:
        return schedule_from_config(table["schedule"], learning_rate, total_steps=total_steps)
    except (ValueError, TypeError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"optax refused the schedule {dict(table['schedule'])} (the run has "
                          f"{total_steps} steps): {error}", key=_SCHEDULE_KEY) from None
