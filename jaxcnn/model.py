"""``Sequential``: an ordered layer list with Keras's per-model names, and its shape plan.

The plan is the closed-form side of the proof: for every layer, its input and output shapes and
parameter shapes from the formulas in :mod:`jaxcnn.layers`. ``check()`` compares it with
``jax.eval_shape`` of the real Flax code; ``summary()`` prints it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from jaxcnn.errors import ImpossibleShapeError, JaxcnnError, LayerArgumentError
from jaxcnn.layers import Formula, Input, Layer, ParamShapes, Shape

if TYPE_CHECKING:  # imports that run the other way are done inside the methods
    from jaxcnn.check import CheckResult
    from jaxcnn.summary import Summary

__all__ = ["LayerPlan", "Sequential"]

NON_TRAINABLE_COLLECTIONS = ("batch_stats",)


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """One layer of a model with its shapes from the formulas (batch axis excluded)."""

    index: int
    layer: Layer
    input_shape: Shape
    output_shape: Shape
    param_shapes: ParamShapes

    @property
    def name(self) -> str:
        return self.layer.name  # type: ignore[return-value]  # always set inside a model

    @property
    def type(self) -> str:
        return self.layer.type

    def _count(self, trainable: bool) -> int:
        """A frozen layer's (``trainable=False``) parameters are all non-trainable, as Keras counts."""
        total = 0
        frozen = not getattr(self.layer, "trainable", True)
        for collection, shapes in self.param_shapes.items():
            if (frozen or collection in NON_TRAINABLE_COLLECTIONS) != trainable:
                for shape in shapes.values():
                    n = 1
                    for d in shape:
                        n *= d
                    total += n
        return total

    @property
    def trainable_params(self) -> int:
        return self._count(True)

    @property
    def non_trainable_params(self) -> int:
        return self._count(False)

    @property
    def params(self) -> int:
        return self.trainable_params + self.non_trainable_params

    def formula(self) -> Formula:
        return self.layer.formula(self.input_shape)

    def flops(self) -> int:
        return self.layer.flops(self.input_shape)

    def located(self, error: JaxcnnError) -> JaxcnnError:
        return error.located(index=self.index, layer_name=self.name, layer_type=self.type)


class Sequential:
    """A linear stack of layers, as ``keras.Sequential``.

    Args:
      layers: layer specs from :mod:`jaxcnn.layers`; the first may be an ``Input(shape)`` or carry
        ``input_shape=`` as in the Keras notebooks.
      name: the model's name, printed on the summary's ``Model:`` line.
      input_shape: ``(height, width, channels)``, when neither of the above gives it.

    Layers without a name get Keras's names, counted per model: ``conv2d``, ``conv2d_1``, ...
    """

    def __init__(
        self,
        layers: Iterable[Layer | Input] = (),
        *,
        name: str = "sequential",
        input_shape: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise LayerArgumentError(f"the model's `name` (={name!r}) must be a non-empty string")
        self._name = name
        self._input_shape: Shape | None = None
        if input_shape is not None:
            self._input_shape = Input(tuple(input_shape)).shape
        self._layers: tuple[Layer, ...] = ()
        for layer in layers:
            self.add(layer)

    # ---- construction -------------------------------------------------------------------
    def add(self, layer: Layer | Input) -> None:
        """Append a layer (``model.add(Conv2D(...))``, as in the Keras notebooks)."""
        index = len(self._layers)
        if isinstance(layer, Input):
            if index or self._input_shape is not None:
                raise LayerArgumentError(
                    "Input(shape) must come first, and only once", index=index, layer_type="Input")
            self._input_shape = layer.shape
            return
        if not isinstance(layer, Layer):
            raise LayerArgumentError(
                f"is {layer!r} ({type(layer).__name__}), not a layer from jaxcnn.layers", index=index)
        used = {lay.name for lay in self._layers}
        if layer.name is None:
            layer = dataclasses.replace(layer, name=self._fresh_name(type(layer).default_name(), used))
        elif layer.name in used:
            raise LayerArgumentError(
                f"`name` (={layer.name!r}) is already used by another layer; names must be unique",
                index=index, layer_name=layer.name, layer_type=layer.type)
        if layer.input_shape is not None:
            if index or self._input_shape is not None:
                raise LayerArgumentError(
                    f"`input_shape` (={layer.input_shape}) is only accepted on the first layer",
                    index=index, layer_name=layer.name, layer_type=layer.type)
            self._input_shape = layer.input_shape
            layer = dataclasses.replace(layer, input_shape=None)
        self._layers = (*self._layers, layer)

    @staticmethod
    def _fresh_name(base: str, used: set[str | None]) -> str:
        candidate, n = base, 0
        while candidate in used:
            n += 1
            candidate = f"{base}_{n}"
        return candidate

    def with_input_shape(self, input_shape: Sequence[int]) -> Sequential:
        """The same layers on another input shape (``jaxcnn summary --input-shape``)."""
        return Sequential(self._layers, name=self._name, input_shape=tuple(input_shape))

    # ---- accessors ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layer specs, each with its name set (``input_shape`` lives on the model)."""
        return self._layers

    @property
    def input_shape(self) -> Shape:
        """``(height, width, channels)``, without the batch axis."""
        if self._input_shape is None:
            raise LayerArgumentError(
                "the model has no input shape: give `input_shape=` on the first layer, start with "
                "Input(shape), or pass Sequential(..., input_shape=...)", key="input_shape")
        return self._input_shape

    @property
    def output_shape(self) -> Shape:
        plan = self.plan()
        return plan[-1].output_shape if plan else self.input_shape

    def plan(self) -> tuple[LayerPlan, ...]:
        """Every layer's shapes from the closed-form formulas, batch axis excluded.

        Raises:
          ImpossibleShapeError: a layer cannot take its input (named by index, name and type).
        """
        if not self._layers:
            raise LayerArgumentError("the model has no layers")
        shape = self.input_shape
        out = []
        for index, layer in enumerate(self._layers):
            try:
                output_shape = layer.output_shape(shape)
                param_shapes = layer.param_shapes(shape)
            except JaxcnnError as error:
                raise error.located(index=index, layer_name=layer.name, layer_type=layer.type) from None
            if any(d < 1 for d in output_shape):  # defensive: formulas raise before this
                raise ImpossibleShapeError(
                    f"output shape {output_shape} has a size below 1", index=index,
                    layer_name=layer.name, layer_type=layer.type)
            out.append(LayerPlan(index, layer, shape, output_shape, param_shapes))
            shape = output_shape
        return tuple(out)

    def count_params(self) -> int:
        """Total parameters, trainable and not (as Keras's ``count_params``)."""
        return sum(p.params for p in self.plan())

    def trainable_params(self) -> int:
        return sum(p.trainable_params for p in self.plan())

    def non_trainable_params(self) -> int:
        return sum(p.non_trainable_params for p in self.plan())

    # ---- delegations to the modules above -----------------------------------------------
    def check(self, **kwargs: Any) -> CheckResult:
        """Prove every layer's shapes with ``jax.eval_shape``; see :func:`jaxcnn.check.check`."""
        from jaxcnn.check import check

        return check(self, **kwargs)

    def summarize(self, **kwargs: Any) -> Summary:
        """The summary as an object (rows, totals, ``.text()``, ``.to_json()``); see
        :func:`jaxcnn.summary.summarize`."""
        from jaxcnn.summary import summarize

        return summarize(self, **kwargs)

    def summary(
        self,
        format: str = "text",
        *,
        flops: bool = False,
        columns: Sequence[str] = (),
        print_fn: Callable[[str], Any] | None = print,
        width: int | None = None,
        **kwargs: Any,
    ) -> str | None:
        """Print the summary as Keras does (``format="text"``), or as a rich table or JSON.

        With ``print_fn=None`` the text is returned instead of printed. Long formula and lowering
        cells wrap to ``width`` characters (default: the terminal's width).
        """
        from jaxcnn.summary import render

        text = render(self.summarize(**kwargs), format=format, flops=flops, columns=columns, width=width)
        if print_fn is None:
            return text
        print_fn(text)
        return None

    def module(self) -> Any:
        """The Flax linen module; see :func:`jaxcnn.flax_module.build_module`."""
        from jaxcnn.flax_module import build_module

        return build_module(self)

    def to_toml(self) -> str:
        """The model as a TOML config that :func:`jaxcnn.load` reads back equal."""
        from jaxcnn.config import to_toml

        return to_toml(self)

    def save(self, path: str) -> None:
        """Write :meth:`to_toml` to ``path``."""
        from jaxcnn.config import save

        save(self, path)

    # ---- value semantics ----------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequential):
            return NotImplemented
        return (self._name, self._input_shape, self._layers) == (
            other._name, other._input_shape, other._layers)

    __hash__ = None  # type: ignore[assignment]  # mutable through add()

    def __repr__(self) -> str:
        layers = ",\n  ".join(repr(layer) for layer in self._layers)
        return f"Sequential([\n  {layers}\n], name={self._name!r}, input_shape={self._input_shape})"
