"""The argument forms of Keras's configurable objects (initializers, regularizers, constraints).

One of them is written as

* a name: ``"he_normal"``, ``"HeNormal"``, ``"l2"``, ``"max_norm"`` (Keras's class name or its
  snake-case alias, with the class's default parameters);
* a TOML/Python table: ``{name = "VarianceScaling", scale = 2.0, mode = "fan_out"}`` (``name`` and
  the parameters by Keras's names);
* Keras 3's JSON: ``{"module": "keras.initializers", "class_name": "VarianceScaling",
  "config": {...}, "registered_name": null}``, or tf.keras 2's ``{"class_name": ..., "config": {...}}``.

:func:`parse` turns any of them into ``(snake-case name, parameters)`` with the parameters checked
against the kind's table of defaults; the caller's error names the layer and the argument.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["KerasObject", "ObjectError", "is_number", "parse"]

_KERAS_KEYS = frozenset({"class_name", "config", "module", "registered_name"})


class ObjectError(ValueError):
    """A value that is not a valid object of its kind; the message says why, in one line."""


def _snake(name: str) -> str:
    """Keras's ``to_snake_case``: ``VarianceScaling`` -> ``variance_scaling``, ``L1L2`` -> ``l1l2``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


@dataclasses.dataclass(frozen=True)
class KerasObject:
    """An object with parameters, as a layer argument holds it: hashable and frozen.

    ``name`` is the snake-case name (``"variance_scaling"``), ``config`` the parameters that were
    given, as sorted ``(key, value)`` pairs with lists made tuples."""

    name: str
    config: tuple[tuple[str, Any], ...] = ()

    def params(self) -> dict[str, Any]:
        return dict(self.config)

    def toml_table(self) -> dict[str, Any]:
        """The TOML inline table this object is written as (``{name = ..., scale = ...}``)."""
        return {"name": self.name, **self.params()}

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config)
        return f"{self.name}({args})"


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def parse(value: Any, kind: str, known: Mapping[str, Mapping[str, Any]],
          aliases: Mapping[str, str] | None = None, ignored: tuple[str, ...] = (),
          drop_none: bool = True) -> tuple[str, dict[str, Any]]:
    """``(name, parameters)`` of ``value`` (a name, a ``{name = ..., ...}`` table or a Keras
    ``{"class_name": ..., "config": {...}}`` object). ``known`` maps each snake-case name to its
    parameters' defaults; ``aliases`` maps other snake-case names to known ones; parameters named in
    ``ignored`` (``seed``) are dropped, and with ``drop_none`` those that are ``None`` (Keras's
    "the default", as ``input_axes: null`` in Keras 3.x's VarianceScaling). Raises
    :class:`ObjectError`."""
    aliases = aliases or {}
    if isinstance(value, str):
        raw, params = value, {}
    elif isinstance(value, Mapping) and "class_name" in value:
        extra = sorted(set(value) - _KERAS_KEYS)
        if extra:
            raise ObjectError(f"has unknown key(s) {', '.join(map(repr, extra))} beside `class_name`")
        raw, params = value["class_name"], value.get("config") or {}
        if not isinstance(params, Mapping):
            raise ObjectError(f"`config` must be an object of parameters, got {params!r}")
    elif isinstance(value, Mapping) and "name" in value:
        raw, params = value["name"], {k: v for k, v in value.items() if k != "name"}
    else:
        article = "an" if kind[0] in "aeiou" else "a"
        raise ObjectError(f"must be the name of {article} {kind} or a table {{name = \"...\", ...}} (or "
                          "Keras's {\"class_name\": ..., \"config\": {...}})")
    if not isinstance(raw, str):
        raise ObjectError(f"the {kind}'s name must be a string, got {raw!r}")
    name = _snake(raw)
    name = aliases.get(name, name)
    if name not in known:
        named = "" if value is raw else f"{raw!r} "  # a bare name is already quoted by the caller's (=...)
        raise ObjectError(f"{named}is not a known {kind}; known: {', '.join(known)}")
    params = {k: _freeze(v) for k, v in params.items()
              if k not in ignored and not (drop_none and v is None)}
    unknown = sorted(set(params) - set(known[name]))
    if unknown:
        accepted = ", ".join(known[name]) or "no parameters"
        raise ObjectError(f"{raw} has no parameter(s) {', '.join(unknown)}; it takes {accepted}")
    return name, params


def is_number(value: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
