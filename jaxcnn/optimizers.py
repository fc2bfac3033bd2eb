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
    warmup_steps = 100

An unknown optimizer, schedule or argument is refused with a :class:`~jaxcnn.errors.ConfigError`
naming it and listing what is known.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import optax

from jaxcnn.errors import ConfigError

__all__ = ["OPTIMIZERS", "SCHEDULES", "from_config", "learning_rate_schedule", "schedule_from_config"]

OPTIMIZERS = ("sgd", "adam", "adamw", "nadam", "nadamw", "adamax", "rmsprop", "adagrad", "adadelta",
              "lamb", "lars", "lion", "adafactor", "novograd", "radam", "yogi")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "piecewise", "exponential")
_OWN_KEYS = ("name", "learning_rate", "schedule", "clip_norm", "weight_decay")


def _unknown(what: str, value: str, known: Any) -> str:
    close = difflib.get_close_matches(value, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {value!r}{hint} known: {', '.join(known)}"


def _number(key: str, value: Any, *, integer: bool = False, where: str = "optimizer") -> Any:
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"`{key}` (={value!r}) must be {kind}", key=f"{where}.{key}")
    return value


def schedule_from_config(table: Mapping[str, Any], learning_rate: float, *,
                         total_steps: int | None) -> Callable[[Any], Any]:
    """A learning-rate schedule peaking at ``learning_rate``; ``decay_steps`` defaults to the run's
    ``total_steps``."""
    table = dict(table)
    name = table.pop("name", None)
    if name not in SCHEDULES:
        raise ConfigError(_unknown("schedule", str(name), SCHEDULES), key="optimizer.schedule.name")
    allowed = {
        "constant": (),
        "cosine": ("decay_steps", "alpha"),
        "warmup_cosine": ("warmup_steps", "decay_steps", "init_value", "end_value"),
        "piecewise": ("boundaries", "scales"),
        "exponential": ("transition_steps", "decay_rate", "staircase"),
    }[name]
    for key in table:
        if key not in allowed:
            raise ConfigError(_unknown(f"argument of schedule {name!r}", key, allowed or ("none",)),
                              key=f"optimizer.schedule.{key}")
    where = "optimizer.schedule"

    def decay_steps() -> int:
        steps = table.get("decay_steps", total_steps)
        if steps is None:
            raise ConfigError(f"schedule {name!r} needs `decay_steps` (the run's length is not known here)",
                              key=f"{where}.decay_steps")
        return _number("decay_steps", steps, integer=True, where=where)

    if name == "constant":
        return optax.constant_schedule(learning_rate)
    if name == "cosine":
        return optax.cosine_decay_schedule(learning_rate, decay_steps(),
                                           alpha=_number("alpha", table.get("alpha", 0.0), where=where))
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=_number("init_value", table.get("init_value", 0.0), where=where),
            peak_value=learning_rate,
            warmup_steps=_number("warmup_steps", table.get("warmup_steps", 0), integer=True, where=where),
            decay_steps=decay_steps(),
            end_value=_number("end_value", table.get("end_value", 0.0), where=where))
    if name == "piecewise":
        boundaries, scales = table.get("boundaries", []), table.get("scales", [])
        if not isinstance(boundaries, list) or not isinstance(scales, list) or len(boundaries) != len(scales):
            raise ConfigError("`boundaries` and `scales` must be lists of the same length",
                              key=f"{where}.boundaries")
        return optax.piecewise_constant_schedule(learning_rate, {
            _number("boundaries", b, integer=True, where=where): _number("scales", s, where=where)
            for b, s in zip(boundaries, scales)})
    return optax.exponential_decay(
        learning_rate,
        transition_steps=_number("transition_steps", table.get("transition_steps", 1), integer=True, where=where),
        decay_rate=_number("decay_rate", table.get("decay_rate", 0.96), where=where),
        staircase=bool(table.get("staircase", False)))


def from_config(config: str | Mapping[str, Any], *, total_steps: int | None = None) -> optax.GradientTransformation:
    """The optax transformation a config names (a name, or a table as in this module's docstring)."""
    table = {"name": config} if isinstance(config, str) else dict(config)
    name = table.get("name")
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ConfigError(_unknown("optimizer", str(name), OPTIMIZERS), key="optimizer.name")
    factory = getattr(optax, name)
    signature = inspect.signature(factory).parameters
    own_args = [p for p in signature if p not in ("learning_rate", "weight_decay", "mask")]
    for key in table:
        if key not in _OWN_KEYS and key not in own_args:
            raise ConfigError(_unknown(f"argument of optimizer {name!r}", key, [*_OWN_KEYS[1:], *own_args]),
                              key=f"optimizer.{key}")
    learning_rate = _number("learning_rate", table.get("learning_rate", 0.01 if name == "sgd" else 0.001))
    lr: Any = learning_rate
    if "schedule" in table:
        if not isinstance(table["schedule"], Mapping):
            raise ConfigError("must be a table ([train.optimizer.schedule])", key="optimizer.schedule")
        try:
            lr = schedule_from_config(table["schedule"], learning_rate, total_steps=total_steps)
        except (ValueError, TypeError) as error:
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(f"optax refused the schedule {dict(table['schedule'])} (the run has "
                              f"{total_steps} steps): {error}", key="optimizer.schedule") from None
    kwargs = {}
    for key in own_args:
        if key in table:
            value = table[key]
            default = signature[key].default
            if isinstance(default, bool) or key == "nesterov":
                if not isinstance(value, bool):
                    raise ConfigError(f"`{key}` (={value!r}) must be true or false", key=f"optimizer.{key}")
            elif not isinstance(value, str):
                _number(key, value)
            kwargs[key] = value
    chain = []
    if "clip_norm" in table:
        chain.append(optax.clip_by_global_norm(_number("clip_norm", table["clip_norm"])))
    weight_decay = table.get("weight_decay")
    if weight_decay is not None:
        _number("weight_decay", weight_decay)
        if "weight_decay" in signature:
            kwargs["weight_decay"] = weight_decay
        else:
            chain.append(optax.add_decayed_weights(weight_decay))
    try:
        chain.append(factory(learning_rate=lr, **kwargs))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"optax.{name} refused its arguments {kwargs}: {error}", key="optimizer") from None
    return chain[0] if len(chain) == 1 else optax.chain(*chain)


def learning_rate_schedule(config: str | Mapping[str, Any], *, total_steps: int | None = None) -> Any:
    """The learning rate :func:`from_config` gives the optimizer: a number, or the schedule (a
    function of the step) for a run of ``total_steps`` steps."""
    optimizer = from_config(config, total_steps=total_steps)  # validates the whole table
    del optimizer
    table = {"name": config} if isinstance(config, str) else dict(config)
    learning_rate = table.get("learning_rate", 0.01 if table["name"] == "sgd" else 0.001)
    if "schedule" not in table:
        return learning_rate
    return schedule_from_config(table["schedule"], learning_rate, total_steps=total_steps)
