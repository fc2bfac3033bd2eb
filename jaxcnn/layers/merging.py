"""Merging layers: ``Add``, ``Subtract``, ``Multiply``, ``Average``, ``Maximum``, ``Minimum``,
``Concatenate`` (Keras's ``keras/src/layers/merging/``).

They take two or more inputs (``num_inputs = None``): ``output_shape``, ``param_shapes``,
``formula`` and ``flops`` take a tuple of input shapes and ``forward`` a tuple of arrays, each
``(batch, *shape)``. None has parameters.

The element-wise ones broadcast as Keras's ``Merge._compute_elemwise_op_output_shape``: shapes are
aligned on their last axes; on each aligned axis the sizes must be equal or one of them 1 (then
the other is taken), so ``(None, 1, 1, C)`` times ``(None, H, W, C)`` is ``(None, H, W, C)``, as
squeeze-and-excitation blocks multiply. An input of lower rank is expanded after the batch axis
(``expand_dims(x, 1)``) until the ranks agree, as Keras's ``Merge.call`` does.

``Add``, ``Subtract`` and ``Multiply`` with ``constant=c`` take one input and a number: they are
Keras 3's operations on a tensor and a number (``x + 3.0``, ``x * (1 / 6)``, ``3.0 - x`` in a
functional model, which Keras writes into its JSON as ``keras.src.ops.numpy.Add`` with
``args: [x, 3.0]`` and prints in its summary as ``Add``, as MobileNetV3's hard sigmoid does). In
the functional idiom, ``x + 3.0`` on a :class:`jaxcnn.graph.Tensor` makes such a node.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxcnn.errors import ImpossibleShapeError, LayerArgumentError
from jaxcnn.layers.base import Formula, Layer, ParamShapes, Shape, _fail, _fmt_shape, _is_int

__all__ = ["Add", "Average", "Concatenate", "Maximum", "Minimum", "Multiply", "Subtract"]


def _shapes_text(shapes: tuple[Shape, ...]) -> str:
    return ", ".join(_fmt_shape(s) for s in shapes)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Merge(Layer):
    """Shared by the element-wise merging layers."""

    num_inputs: ClassVar[int | None] = None
    min_inputs: ClassVar[int] = 2
    max_inputs: ClassVar[int | None] = None
    op_text: ClassVar[str] = ""

    def _count(self, input_shapes: tuple[Shape, ...]) -> None:
        n = len(input_shapes)
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            exactly = self.max_inputs == self.min_inputs
            want = f"exactly {self.min_inputs}" if exactly else f"at least {self.min_inputs}"
            raise ImpossibleShapeError(f"takes {want} inputs, got {n}: {_shapes_text(input_shapes)}",
                                       layer_type=self.type)

    def output_shape(self, input_shapes: tuple[Shape, ...]) -> Shape:  # type: ignore[override]
        self._count(input_shapes)
        out = tuple(input_shapes[0])
        for shape in input_shapes[1:]:
            out = self._broadcast(out, tuple(shape), input_shapes)
        return out

    def _broadcast(self, a: Shape, b: Shape, all_shapes: tuple[Shape, ...]) -> Shape:
        """Keras's ``_compute_elemwise_op_output_shape(a, b)``, batch axis excluded."""
        if len(a) < len(b):
            a, b = b, a
        out = list(a[: len(a) - len(b)])
        for axis, (i, j) in enumerate(zip(a[len(a) - len(b):], b), start=len(a) - len(b) + 1):
            if i != j and 1 not in (i, j):
                raise ImpossibleShapeError(
                    f"cannot merge inputs of shapes {_shapes_text(all_shapes)}: on axis {axis} the sizes "
                    f"{i} and {j} differ and neither is 1 (Keras broadcasts equal sizes or a size 1)",
                    layer_type=self.type)
            out.append(j if i == 1 else i)
        return tuple(out)

    def param_shapes(self, input_shapes: tuple[Shape, ...]) -> ParamShapes:  # type: ignore[override]
        del input_shapes
        return {}

    def formula(self, input_shapes: tuple[Shape, ...]) -> Formula:  # type: ignore[override]
        out = self.output_shape(input_shapes)
        return Formula(output=f"broadcast({_shapes_text(input_shapes)}) = {_fmt_shape(out)}", params="0")

    def flops(self, input_shapes: tuple[Shape, ...]) -> int:  # type: ignore[override]
        del input_shapes
        return 0

    def forward(self, module: Any, x: tuple[jax.Array, ...], *, train: bool) -> jax.Array:  # type: ignore[override]
        del module, train
        rank = max(a.ndim for a in x)
        arrays = []
        for a in x:
            for _ in range(rank - a.ndim):
                a = jnp.expand_dims(a, 1)
            arrays.append(a)
        return self._merge(arrays)

    def _merge(self, arrays: list[jax.Array]) -> jax.Array:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Arithmetic(_Merge):
    """A merging layer that may instead take one input and a number, ``constant`` (see the module
    docstring); ``constant=None`` is Keras's merging layer."""

    constant: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        c = self.constant
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or c != c):
            raise _fail(self.type, "constant", c, "must be a number (or None for a merge of tensors)")

    @property
    def num_inputs(self) -> int | None:  # type: ignore[override]
        return None if self.constant is None else 1

    def _apply(self, x: Any, c: Any) -> Any:
        """The operation on the tensor ``x`` and the number ``c``."""
        raise NotImplementedError

    def _text(self, shape: str) -> str:
        raise NotImplementedError

    def output_shape(self, input_shapes: Any) -> Shape:  # type: ignore[override]
        if self.constant is None:
            return super().output_shape(input_shapes)
        return tuple(input_shapes)

    def formula(self, input_shapes: Any) -> Formula:  # type: ignore[override]
        if self.constant is None:
            return super().formula(input_shapes)
        return Formula(output=f"{self._text(_fmt_shape(tuple(input_shapes)))}: element-wise, "
                              f"{_fmt_shape(tuple(input_shapes))}", params="0")

    def forward(self, module: Any, x: Any, *, train: bool) -> jax.Array:  # type: ignore[override]
        if self.constant is None:
            return super().forward(module, x, train=train)
        return self._apply(x, jnp.asarray(self.constant, x.dtype))


@dataclasses.dataclass(frozen=True)
class Add(_Arithmetic):
    """``Add()``: the element-wise sum of its inputs; ``Add(constant=c)``: ``x + c``."""

    def _merge(self, arrays: list[jax.Array]) -> jax.Array:
        return functools.reduce(jnp.add, arrays)

    def _apply(self, x: Any, c: Any) -> Any:
        return x + c

    def _text(self, shape: str) -> str:
        return f"{shape} + {self.constant}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Subtract(_Arithmetic):
    """``Subtract()``: the first input minus the second (exactly two inputs); ``Subtract(constant=c)``:
    ``x - c``, or ``c - x`` with ``constant_first=True``."""

    max_inputs: ClassVar[int | None] = 2
    constant_first: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.constant_first, bool):
            raise _fail(self.type, "constant_first", self.constant_first, "must be true or false")
        if self.constant_first and self.constant is None:
            raise _fail(self.type, "constant_first", self.constant_first, "needs a `constant`")

    def _merge(self, arrays: list[jax.Array]) -> jax.Array:
        return arrays[0] - arrays[1]

    def _apply(self, x: Any, c: Any) -> Any:
        return c - x if self.constant_first else x - c

    def _text(self, shape: str) -> str:
        return f"{self.constant} - {shape}" if self.constant_first else f"{shape} - {self.constant}"


@dataclasses.dataclass(frozen=True)
class Multiply(_Arithmetic):
    """``Multiply()``: the element-wise product of its inputs; ``Multiply(constant=c)``: ``x * c``."""

    def _merge(self, arrays: list[jax.Array]) -> jax.Array:
        return functools.reduce(jnp.multiply, arrays)

    def _apply(self, x: Any, c: Any) -> Any:
        return x * c

    def _text(self, shape: str) -> str:
        return f"{shape} * {self.constant}"


@dataclasses.dataclass(frozen=True)
class Average(_Merge):
    """``Average()``: the element-wise mean of its inputs."""

    def _merge(self, arrays: list[jax.Array]) -> jax.Array:
        return functools.reduce(jnp.add, arrays) / len(arrays)


@dataclasses.dataclass(frozen=True)
class Maximum(_Merge):
    """``Maximum()``: the element-wise maximum of its inputs."""

    def _merge(self, arrays: list[jax.Array]) -> jax.Array:
        return functools.reduce(jnp.maximum, arrays)


@dataclasses.dataclass(frozen=True)
class Minimum(_Merge):
    """``Minimum()``: the element-wise minimum of its inputs."""

    def _merge(self, arrays: list[jax.Array]) -> jax.Array:
        return functools.reduce(jnp.minimum, arrays)


@dataclasses.dataclass(frozen=True)
class Concatenate(Layer):
    """``Concatenate(axis=-1)``: the inputs joined along ``axis`` (counted with the batch axis, as
    in Keras: ``axis=3`` or ``-1`` is the channels of ``(batch, H, W, C)``); every other axis must
    agree. ``(None, H, W, C1)`` and ``(None, H, W, C2)`` give ``(None, H, W, C1 + C2)``."""

    axis: int = -1

    num_inputs: ClassVar[int | None] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _is_int(self.axis) or self.axis == 0:
            raise LayerArgumentError(f"`axis` (={self.axis!r}) must be a non-zero integer (axis 0 is the "
                                     "batch axis)", layer_type=self.type)

    def _axis(self, rank: int) -> int:
        """The axis in a shape without the batch axis, of ``rank`` axes."""
        axis = self.axis - 1 if self.axis > 0 else rank + self.axis
        if not 0 <= axis < rank:
            raise ImpossibleShapeError(f"`axis` (={self.axis}) is outside inputs of rank {rank + 1} "
                                       "(batch axis included)", layer_type=self.type)
        return axis

    def output_shape(self, input_shapes: tuple[Shape, ...]) -> Shape:  # type: ignore[override]
        if len(input_shapes) < 2:
            raise ImpossibleShapeError(f"takes at least 2 inputs, got {len(input_shapes)}", layer_type=self.type)
        ranks = {len(s) for s in input_shapes}
        if len(ranks) != 1:
            raise ImpossibleShapeError(f"cannot concatenate inputs of different ranks: "
                                       f"{_shapes_text(input_shapes)}", layer_type=self.type)
        axis = self._axis(len(input_shapes[0]))
        rest = {tuple(d for i, d in enumerate(s) if i != axis) for s in input_shapes}
        if len(rest) != 1:
            raise ImpossibleShapeError(
                f"cannot concatenate inputs of shapes {_shapes_text(input_shapes)} on axis {self.axis}: "
                "every other axis must agree", layer_type=self.type)
        out = list(input_shapes[0])
        out[axis] = sum(s[axis] for s in input_shapes)
        return tuple(out)

    def formula(self, input_shapes: tuple[Shape, ...]) -> Formula:  # type: ignore[override]
        out = self.output_shape(input_shapes)
        axis = self._axis(len(input_shapes[0]))
        sizes = " + ".join(str(s[axis]) for s in input_shapes)
        return Formula(output=f"axis {self.axis}: {sizes} = {out[axis]}; output = {_fmt_shape(out)}", params="0")

    def param_shapes(self, input_shapes: tuple[Shape, ...]) -> ParamShapes:  # type: ignore[override]
        del input_shapes
        return {}

    def flops(self, input_shapes: tuple[Shape, ...]) -> int:  # type: ignore[override]
        del input_shapes
        return 0

    def forward(self, module: Any, x: tuple[jax.Array, ...], *, train: bool) -> jax.Array:  # type: ignore[override]
        del module, train
        return jnp.concatenate(x, axis=self.axis)
