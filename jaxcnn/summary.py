"""Summaries: the classic Keras text, a rich table like Keras 3's, and JSON for tools.

``summarize(model)`` proves the model first (:func:`jaxcnn.check.check`), so every figure printed
has been derived twice: by the formulas and by ``jax.eval_shape`` of the Flax code.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jaxcnn.errors import JaxcnnError, LayerArgumentError
from jaxcnn.layers import FLOPS_CONVENTION, Formula, Shape

if TYPE_CHECKING:
    from jaxcnn.graph import LayerPlan, Model

__all__ = ["COLUMNS", "DEFAULT_WIDTH", "FLOPS_NOTE", "WRAPPED", "Row", "Summary", "readable_bytes", "render",
           "summarize", "summarize_file", "terminal_width"]

BYTES_PER_PARAM = 4  # float32 parameters
BYTES_PER_ACTIVATION = 4  # float32 activations

# Optional columns: name -> header.
COLUMNS = {
    "flops": "FLOPs",
    "memory": "Activations",
    "receptive_field": "Receptive field",
    "formula": "Formula",
    "lowering": "Lowering",
}
FORMATS = ("text", "rich", "json")
# Columns whose long cells wrap onto more lines to fit the width; the others never wrap.
WRAPPED = ("formula", "lowering")
MIN_WRAPPED_WIDTH = 24  # a wrapped column is never narrower than this, whatever the width
DEFAULT_WIDTH = 100  # when the width is not given and there is no terminal to ask
# The FLOPs footer's convention, short: the whole text is jaxcnn.layers.FLOPS_CONVENTION (in JSON).
FLOPS_NOTE = "2 per multiply-accumulate of Conv2D and Dense, +1 per bias add"


def terminal_width() -> int:
    """The terminal's width in characters (``$COLUMNS`` first), else :data:`DEFAULT_WIDTH`."""
    return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns


def readable_bytes(n: int) -> str:
    """Keras's ``readable_memory_size``: ``2112216`` -> ``'2.01 MB'``."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


@dataclasses.dataclass(frozen=True)
class Row:
    """One layer of a summary. ``output_shape`` starts with ``None``, the batch axis. A graph
    model's inputs have rows too (``type`` ``InputLayer``, ``index`` ``None``), as Keras prints
    them; ``connected_to`` names the nodes a layer takes (Keras's ``Connected to`` column)."""

    index: int | None
    name: str
    type: str
    output_shape: tuple[int | None, ...]
    params: int
    trainable_params: int
    non_trainable_params: int
    param_shapes: dict[str, dict[str, Shape]]
    flops: int
    activation_bytes: int
    receptive_field: tuple[int, int] | None  # None where every output sees the whole input
    formula: Formula
    lowering: str | None = None  # the XLA program chosen on the default backend, where there is a choice
    connected_to: tuple[str, ...] = ()

    @property
    def connections(self) -> str:
        """The ``Connected to`` cell as Keras 3 prints it: ``conv2d[0][0], input_layer[0][0]``."""
        return ", ".join(f"{name}[0][0]" for name in self.connected_to) or "-"

    def cell(self, column: str) -> str:
        if column == "flops":
            return f"{self.flops:,}"
        if column == "memory":
            return readable_bytes(self.activation_bytes)
        if column == "receptive_field":
            return "global" if self.receptive_field is None else "{}x{}".format(*self.receptive_field)
        if column == "formula":
            return f"{self.formula.output} | params: {self.formula.params}"
        if column == "lowering":
            return self.lowering or "-"
        raise KeyError(column)


@dataclasses.dataclass(frozen=True)
class Summary:
    """A model's summary; ``str(summary)`` is the classic Keras text."""

    name: str
    input_shape: tuple[int | None, ...]
    rows: tuple[Row, ...]
    proved: bool
    graph: bool = False  # a graph model's summary: input rows, and "Connected to" where `connected`
    connected: bool = False  # the "Connected to" column (Keras omits it where the graph is a chain)

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def trainable_params(self) -> int:
        return sum(r.trainable_params for r in self.rows)

    @property
    def non_trainable_params(self) -> int:
        return sum(r.non_trainable_params for r in self.rows)

    @property
    def flops(self) -> int:
        return sum(r.flops for r in self.rows)

    def text(self, columns: Sequence[str] = (), *, width: int | None = None) -> str:
        """Keras's classic layout; the cells of :data:`WRAPPED` columns wrap to fit ``width``
        characters (default: the terminal's, :func:`terminal_width`)."""
        return _text(self, _columns(columns), width or terminal_width())

    def rich(self, columns: Sequence[str] = (), *, width: int | None = None) -> str:
        """Keras 3's table, at most ``width`` characters wide where the unwrapped columns fit
        (default: the terminal's width)."""
        return _rich(self, _columns(columns), width or terminal_width())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "proved_by_eval_shape": self.proved,
            "layers": [
                {
                    "index": r.index,
                    "name": r.name,
                    "type": r.type,
                    "output_shape": list(r.output_shape),
                    "params": r.params,
                    "trainable_params": r.trainable_params,
                    "non_trainable_params": r.non_trainable_params,
                    "param_shapes": {c: {k: list(v) for k, v in s.items()} for c, s in r.param_shapes.items()},
                    "param_bytes": r.params * BYTES_PER_PARAM,
                    "flops": r.flops,
                    "activation_bytes": r.activation_bytes,
                    "receptive_field": None if r.receptive_field is None else list(r.receptive_field),
                    "formula": {"output": r.formula.output, "params": r.formula.params},
                    "lowering": r.lowering,
                    **({"connected_to": list(r.connected_to)} if self.graph else {}),
                }
                for r in self.rows
            ],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "total_bytes": self.total_params * BYTES_PER_PARAM,
            "flops": self.flops,
            "flops_convention": FLOPS_CONVENTION,
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        return self.text()


def _receptive_fields(plan: Sequence[LayerPlan], inputs: Sequence[str]) -> list[tuple[int, int] | None]:
    """Per layer, the input window one output position sees (``r += (k - 1) * j``, ``j *= s``),
    following each layer's inputs; a merge sees the widest of its inputs' windows."""
    out: list[tuple[int, int] | None] = []
    state: dict[str, tuple[tuple[int, int], tuple[int, int], bool]] = {n: ((1, 1), (1, 1), False) for n in inputs}
    for p in plan:
        before = [state[n] for n in p.inputs] or [((1, 1), (1, 1), False)]
        field = (max(f[0] for f, _, _ in before), max(f[1] for f, _, _ in before))
        jump = (max(j[0] for _, j, _ in before), max(j[1] for _, j, _ in before))
        whole = any(w for _, _, w in before)
        window = p.layer.window()
        if p.layer.mixes_positions:
            whole = True
        elif window is not None and not whole:
            (kh, kw), (sh, sw) = window
            field = (field[0] + (kh - 1) * jump[0], field[1] + (kw - 1) * jump[1])
            jump = (jump[0] * sh, jump[1] * sw)
        state[p.name] = (field, jump, whole)
        out.append(None if whole else field)
    return out


def _is_chain(model: Model, plan: Sequence[LayerPlan]) -> bool:
    """Whether the graph is a chain (one input, each layer taking one node that nothing else takes):
    Keras then prints a graph model without the ``Connected to`` column."""
    taken = [name for p in plan for name in p.inputs]
    return len(model.input_names) == 1 and all(len(p.inputs) == 1 for p in plan) and len(taken) == len(set(taken))


def summarize(model: Model, *, check: bool = True) -> Summary:
    """The summary of ``model``; with ``check=True`` (the default) its shapes are proved first
    with ``jax.eval_shape`` (:func:`jaxcnn.check.check`), else taken from the formulas alone."""
    if check:
        from jaxcnn.check import check as prove

        plan = tuple(proof.plan for proof in prove(model).layers)
    else:
        plan = model.plan()
    rows = {}
    for p, field in zip(plan, _receptive_fields(plan, model.input_names)):
        elements = 1
        for d in p.output_shape:
            elements *= d
        rows[p.name] = Row(
            index=p.index, name=p.name, type=p.type, output_shape=(None, *p.output_shape),
            params=p.params, trainable_params=p.trainable_params,
            non_trainable_params=p.non_trainable_params,
            param_shapes={c: dict(s) for c, s in p.param_shapes.items()},
            flops=p.flops(), activation_bytes=elements * BYTES_PER_ACTIVATION,
            receptive_field=field, formula=p.formula(),
            lowering=p.layer.describe_lowering(p.layer_input) if p.layer.num_inputs == 1 else None,
            connected_to=p.inputs if model.is_graph else (),
        )
    if not model.is_graph:
        return Summary(model.name, (None, *model.input_shape), tuple(rows.values()), proved=check)
    for node in model.nodes:
        if node.is_input:
            shape = node.layer.shape  # type: ignore[union-attr]
            rows[node.name] = Row(
                index=None, name=node.name, type="InputLayer", output_shape=(None, *shape), params=0,
                trainable_params=0, non_trainable_params=0, param_shapes={}, flops=0,
                activation_bytes=BYTES_PER_ACTIVATION * _product(shape), receptive_field=(1, 1),
                formula=Formula(output=f"input = {_shape_text((None, *shape))}", params="0"))
    ordered = tuple(rows[node.name] for node in model.nodes)
    return Summary(model.name, (None, *model.input_shapes[0]), ordered, proved=check, graph=True,
                   connected=not _is_chain(model, plan))


def _product(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _columns(columns: Sequence[str]) -> tuple[str, ...]:
    for c in columns:
        if c not in COLUMNS:
            raise LayerArgumentError(f"unknown summary column {c!r}; known: {', '.join(COLUMNS)}")
    return tuple(dict.fromkeys(columns))


def _text(s: Summary, columns: tuple[str, ...], width: int) -> str:
    """Keras's ``print_summary`` layout (line length 65, columns at .45 and .85), with columns
    widened to fit their content instead of truncated; the :data:`WRAPPED` columns are narrowed
    (to no less than :data:`MIN_WRAPPED_WIDTH`) and their cells wrapped until a line fits ``width``."""
    connected = ["Connected to"] if s.connected else []
    headers = ["Layer (type)", "Output Shape", "Param #", *connected, *(COLUMNS[c] for c in columns)]
    table = [
        [f"{r.name} ({r.type})", _shape_text(r.output_shape), str(r.params),
         *([r.connections] if s.connected else []), *(r.cell(c) for c in columns)]
        for r in s.rows
    ]
    # Keras 2's functional layout is 98 wide at .33, .55, .67: widths 32, 22, 11, 33
    widths = ([32, 22, 11, 33] if s.connected else [29, 26, 10]) + [len(h) + 2 for h in headers[3 + len(connected):]]
    for line in [headers, *table]:
        for i, cell in enumerate(line):
            widths[i] = max(widths[i], len(cell) + 1)
    first = 3 + len(connected)
    widths = _fit(widths, [first + i for i, c in enumerate(columns) if c in WRAPPED], width)
    length = sum(widths)

    def row(cells: Sequence[str]) -> list[str]:
        wrapped = [textwrap.wrap(cell, w - 1, break_on_hyphens=False) or [""] if len(cell) >= w else [cell]
                   for cell, w in zip(cells, widths)]
        return ["".join((part[k] if k < len(part) else "").ljust(w) for part, w in zip(wrapped, widths))
                for k in range(max(len(part) for part in wrapped))]

    lines = [f'Model: "{s.name}"', "_" * length, *row(headers), "=" * length]
    for i, cells in enumerate(table):
        lines += row(cells)
        lines.append("=" * length if i == len(table) - 1 else "_" * length)
    if not table:
        lines.append("=" * length)
    lines += [
        f"Total params: {s.total_params:,}",
        f"Trainable params: {s.trainable_params:,}",
        f"Non-trainable params: {s.non_trainable_params:,}",
    ]
    if "flops" in columns:
        lines.append(_flops_footer(s))
    lines.append("_" * length)
    return "\n".join(lines)


def _fit(widths: list[int], wrapped: list[int], width: int) -> list[int]:
    """``widths`` with the columns at ``wrapped`` narrowed, widest first, until the sum is at most
    ``width`` or each is down to :data:`MIN_WRAPPED_WIDTH` (or its own width, if less)."""
    widths = list(widths)
    excess = sum(widths) - width
    while excess > 0:
        shrinkable = [i for i in wrapped if widths[i] > MIN_WRAPPED_WIDTH]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        others = [widths[i] for i in shrinkable if i != widest]
        # down to the next widest (so the widest columns shrink together), by at most the excess
        floor = max([MIN_WRAPPED_WIDTH, *others])
        step = min(excess, widths[widest] - floor) or 1
        widths[widest] -= step
        excess -= step
    return widths


def _flops_footer(s: Summary) -> str:
    return f"Forward FLOPs per example: {s.flops:,} ({FLOPS_NOTE})"


def _rich(s: Summary, columns: tuple[str, ...], width: int) -> str:
    """A table like Keras 3's ``model.summary()``, with byte sizes, rendered to plain text at most
    ``width`` characters wide (wider only where the unwrapped columns need it)."""
    from rich.console import Console
    from rich.table import Table

    connected = ["Connected to"] if s.connected else []
    headers = ["Layer (type)", "Output Shape", "Param #", *connected, *(COLUMNS[c] for c in columns)]
    body = [[f"{r.name} ({r.type})", _shape_text(r.output_shape), f"{r.params:,}",
             *([r.connections] if s.connected else []), *(r.cell(c) for c in columns)]
            for r in s.rows]
    wrapped = [False, False, False, *(False for _ in connected), *(c in WRAPPED for c in columns)]
    table = Table(title=f'Model: "{s.name}"', title_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, justify="right" if i == 2 or (i >= 3 + len(connected) and not wrapped[i]) else "left",
                         no_wrap=not wrapped[i],
                         min_width=MIN_WRAPPED_WIDTH if wrapped[i] else None)
    for cells in body:
        table.add_row(*cells)
    # Every unwrapped cell whole, each wrapped column at least its minimum; 3 = a border and 2 spaces.
    needed = 1 + sum(3 + (MIN_WRAPPED_WIDTH if wrap else max(len(cell) for cell in column))
                     for column, wrap in zip(zip(headers, *body), wrapped))
    buffer = io.StringIO()
    Console(file=buffer, width=max(width, needed), color_system=None, force_terminal=False,
            highlight=False).print(table)
    lines = [line.rstrip() for line in buffer.getvalue().splitlines()]
    for label, n in (("Total", s.total_params), ("Trainable", s.trainable_params),
                     ("Non-trainable", s.non_trainable_params)):
        lines.append(f" {label} params: {n:,} ({readable_bytes(n * BYTES_PER_PARAM)})")
    if "flops" in columns:
        lines.append(" " + _flops_footer(s))
    return "\n".join(lines)


def summarize_file(path: str, *, input_shape: Sequence[int] | None = None, format: str = "text",
                   flops: bool = False, columns: Sequence[str] = (), check: bool = True,
                   mesh: str | None = None, devices: int | None = None, width: int | None = None) -> str:
    """``jaxcnn summary PATH``: load a TOML, JSON or Keras JSON file, prove it, render it.

    With ``mesh`` (``"data"`` or ``"fsdp"``) and ``devices`` (default: the devices JAX sees), the
    summary adds each parameter's sharding and the bytes one device holds of it and of its optimizer
    state (the file's ``[train.optimizer]``, else Adam), computed with ``jax.eval_shape`` on an
    abstract mesh: nothing is allocated and the devices need not exist. ``width``: see :func:`render`.

    Every error names ``path``."""
    from jaxcnn.config import load

    model = load(path, input_shape=input_shape, require_input_shape=True)
    try:
        summary = summarize(model, check=check)
    except JaxcnnError as error:
        raise error.located(source=str(path)) from None
    text = render(summary, format, flops=flops, columns=columns, width=width)
    if mesh is None:
        return text
    report = _sharding_report(path, model, mesh, devices)
    if format == "json":
        return json.dumps({**json.loads(text), "sharding": report}, indent=1)
    from jaxcnn.parallel import render_sharding

    return text + "\n" + render_sharding(report)


def _sharding_report(path: str, model: Model, mesh: str, devices: int | None) -> dict[str, Any]:
    import jax

    from jaxcnn.config import read_document
    from jaxcnn.errors import ConfigError
    from jaxcnn.parallel import Layout, MeshConfig, sharding_report
    from jaxcnn.train import compile

    try:
        doc = read_document(path)
    except ConfigError:  # a Keras JSON file: no [train] or [mesh] tables
        doc = {}
    config = MeshConfig.from_table({**doc.get("mesh", {}), "strategy": mesh}, source=str(path))
    layout = Layout.abstract(devices or config.devices or len(jax.devices()), config.strategy,
                             config.fsdp_min_params)
    optimizer = dict(doc.get("train", {}).get("optimizer", {"name": "adam"}))
    return sharding_report(compile(model, optimizer).abstract_state(), layout, [layer.name for layer in model.layers])


def render(summary: Summary, format: str = "text", *, flops: bool = False,
           columns: Sequence[str] = (), width: int | None = None) -> str:
    """``summary`` as ``"text"`` (Keras's classic layout), ``"rich"`` (Keras 3's table) or
    ``"json"``. ``flops=True`` adds the FLOPs column; ``columns`` adds any of :data:`COLUMNS`.
    Long cells of the :data:`WRAPPED` columns wrap to fit ``width`` characters (default: the
    terminal's width, else :data:`DEFAULT_WIDTH`); the default columns never wrap."""
    if format not in FORMATS:
        raise LayerArgumentError(f"unknown summary format {format!r}; known: {', '.join(FORMATS)}")
    cols = ("flops", *columns) if flops else tuple(columns)
    if format == "json":
        _columns(cols)
        return summary.to_json()
    return summary.text(cols, width=width) if format == "text" else summary.rich(cols, width=width)
