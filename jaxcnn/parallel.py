"""Data-parallel training on JAX's own sharding: a device mesh, ``NamedSharding`` on the state and
the batches, and ``jax.distributed`` for several processes. No collective is written here: the
training step is one ``jax.jit`` with explicit in and out shardings, and XLA's SPMD partitioner
inserts the all-reduces (and, under FSDP, the all-gathers and reduce-scatters).

The ``[mesh]`` table of a training config (every key optional)::

    [mesh]
    strategy = "data"          # "data": the batch split over the devices, the state replicated
                               # "fsdp": as "data", and every parameter of at least
                               #   fsdp_min_params elements, with its optimizer state, sharded
                               #   over the same axis (one dimension, the largest that divides)
    devices = 0                # how many devices, over all processes (0: all of them)
    fsdp_min_params = 1048576
    uneven_batch = "refuse"    # or "pad": a global batch that the device count does not divide is
                               #   padded with masked examples (metrics stay exact)

One mesh axis, ``"data"``. With several processes (``jax.distributed``), the mesh spans every
process's devices; each process puts only its own rows of each global batch on its devices
(:meth:`Layout.put_batch`), so no process ever holds another's shard on a device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from jaxcnn.errors import ConfigError, plural

__all__ = ["AXIS", "STRATEGIES", "Layout", "MeshConfig", "fetch", "initialize_distributed", "pad_batch",
           "render_sharding", "sharding_report"]

AXIS = "data"
STRATEGIES = ("data", "fsdp")
UNEVEN = ("refuse", "pad")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The ``[mesh]`` table (see the module's docstring)."""

    strategy: str = "data"
    devices: int = 0
    fsdp_min_params: int = 1 << 20
    uneven_batch: str = "refuse"

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, source: str = "<config>") -> MeshConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"unknown key; known: {', '.join(sorted(known))}", source=source, key=f"mesh.{key}")
            if key in ("devices", "fsdp_min_params") and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"(={value!r}) must be a non-negative integer", source=source, key=f"mesh.{key}")
        config = cls(**table)
        if config.strategy not in STRATEGIES:
            raise ConfigError(f"(={config.strategy!r}) must be one of {', '.join(STRATEGIES)}",
                              source=source, key="mesh.strategy")
        if config.uneven_batch not in UNEVEN:
            raise ConfigError(f"(={config.uneven_batch!r}) must be 'refuse' or 'pad'", source=source,
                              key="mesh.uneven_batch")
        return config


def initialize_distributed(coordinator: str, num_processes: int, process_id: int) -> None:
    """``jax.distributed.initialize`` for ``jaxcnn train --coordinator HOST:PORT --num-processes N
    --process-id I``; must run before anything starts JAX's backend. On CPU the cross-process
    collectives are gloo's (JAX's default)."""
    if ":" not in coordinator:
        raise ConfigError(f"--coordinator (={coordinator!r}) must be HOST:PORT")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id (={process_id}) must be in [0, {num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """Where the training state and the batches live: a one-axis mesh and a sharding strategy.

    ``mesh`` may be an ``AbstractMesh`` (:meth:`abstract`): shardings and bytes per device are then
    computed for devices this machine does not have, without allocating anything.
    """

    mesh: Mesh | AbstractMesh
    strategy: str = "data"
    fsdp_min_params: int = 1 << 20

    @classmethod
    def create(cls, config: MeshConfig | None = None, devices: Sequence[jax.Device] | None = None) -> Layout:
        """A layout over ``devices`` (default: the first ``config.devices`` of ``jax.devices()``, all
        of them when 0: every process's devices under ``jax.distributed``)."""
        config = config or MeshConfig()
        devices = list(jax.devices() if devices is None else devices)
        if config.devices:
            if config.devices > len(devices):
                raise ConfigError(f"(={config.devices}) is more than the {plural(len(devices), 'device')} JAX sees "
                                  f"({devices[0].platform}); on CPU, set JAX_NUM_CPU_DEVICES before JAX starts",
                                  key="mesh.devices")
            if jax.process_count() > 1 and config.devices != len(devices):
                raise ConfigError(f"(={config.devices}) must be 0 or all {len(devices)} devices with several "
                                  "processes", key="mesh.devices")
            devices = devices[:config.devices]
        return cls(Mesh(np.array(devices), (AXIS,)), config.strategy, config.fsdp_min_params)

    @classmethod
    def abstract(cls, num_devices: int, strategy: str = "data", fsdp_min_params: int = 1 << 20) -> Layout:
        """A layout over ``num_devices`` devices that need not exist (for the summary)."""
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown mesh strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        return cls(AbstractMesh((num_devices,), (AXIS,)), strategy, fsdp_min_params)

    @property
    def size(self) -> int:
        return int(math.prod(self.mesh.axis_sizes))

    # ---- shardings ----------------------------------------------------------------------------
    def spec(self, shape: Sequence[int]) -> PartitionSpec:
        """The partition of one state leaf: replicated, or under FSDP (at least ``fsdp_min_params``
        elements) its largest dimension that the device count divides, split over ``"data"``."""
        if self.strategy == "fsdp" and self.size > 1 and math.prod(shape) >= self.fsdp_min_params:
            candidates = [i for i, d in enumerate(shape) if d % self.size == 0]
            if candidates:
                axis = max(candidates, key=lambda i: (shape[i], -i))
                return PartitionSpec(*[AXIS if i == axis else None for i in range(len(shape))])
        return PartitionSpec()

    def sharding(self, spec: PartitionSpec) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    @property
    def replicated(self) -> NamedSharding:
        return self.sharding(PartitionSpec())

    def batch_sharding(self, leading: int = 0) -> NamedSharding:
        """The batch's sharding: its examples (after ``leading`` stacked axes) split over ``"data"``."""
        return self.sharding(PartitionSpec(*([None] * leading), AXIS))

    def state_shardings(self, abstract_state: Any) -> Any:
        """A ``NamedSharding`` for every leaf of a (abstract) state tree."""
        return jax.tree.map(lambda leaf: self.sharding(self.spec(np.shape(leaf))), abstract_state)

    def with_shardings(self, abstract_state: Any) -> Any:
        """``ShapeDtypeStruct`` leaves carrying their sharding (what orbax restores onto)."""
        return jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                            abstract_state, self.state_shardings(abstract_state))

    def bytes_per_device(self, shape: Sequence[int], dtype: Any) -> int:
        """The bytes one device holds of a leaf, from its shard shape (nothing is allocated)."""
        shard = self.sharding(self.spec(shape)).shard_shape(tuple(shape))
        return int(math.prod(shard)) * np.dtype(dtype).itemsize

    def describe(self, shape: Sequence[int]) -> str:
        """``"replicated"`` or the partition, such as ``"P(data, None)"``."""
        spec = self.spec(shape)
        if not any(spec):
            return "replicated"
        return "P(" + ", ".join("None" if s is None else str(s) for s in spec) + ")"

    # ---- batches ------------------------------------------------------------------------------
    def padded_batch_size(self, batch_size: int, uneven_batch: str = "refuse", *, source: str = "<config>") -> int:
        """The global batch size the steps run with: ``batch_size`` when the device count divides
        it, else refused (``ConfigError``) or rounded up with masked padding (``uneven_batch="pad"``)."""
        if batch_size % self.size == 0:
            return batch_size
        if uneven_batch == "pad":
            return -(-batch_size // self.size) * self.size
        raise ConfigError(
            f"(={batch_size}) does not divide over the {self.size} devices of the mesh; use a multiple of "
            f"{self.size} (such as {max(self.size, batch_size // self.size * self.size)}), or set "
            "[mesh] uneven_batch = \"pad\" to pad each batch with masked examples", source=source,
            key="train.batch_size")

    def local_rows(self, global_size: int) -> slice:
        """The rows of a global batch that this process puts on its devices."""
        count, index = jax.process_count(), jax.process_index()
        per = global_size // count
        return slice(index * per, (index + 1) * per)

    def put_local_batch(self, batch: Any) -> Any:
        """Global arrays, sharded over ``"data"``, from each process's own rows of the batch (the
        rows :class:`jaxcnn.stream.Plan` gives it), every process passing as many."""
        sharding = self.batch_sharding(0)
        if jax.process_count() == 1:
            return jax.device_put(batch, sharding)

        def put(local: np.ndarray) -> jax.Array:
            local = np.asarray(local)
            shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
            return jax.make_array_from_process_local_data(sharding, local, shape)

        return jax.tree.map(put, batch)

    def put_batch(self, batch: Any, leading: int = 0) -> Any:
        """Global arrays, sharded over ``"data"``, from the host batch every process reads; each
        process transfers only its own rows (``jax.make_array_from_process_local_data``)."""
        sharding = self.batch_sharding(leading)
        if jax.process_count() == 1:
            return jax.device_put(batch, sharding)

        def put(array: np.ndarray) -> jax.Array:
            array = np.asarray(array)
            rows = self.local_rows(array.shape[leading])
            local = array[(slice(None),) * leading + (rows,)]
            return jax.make_array_from_process_local_data(sharding, local, array.shape)

        return jax.tree.map(put, batch)


def pad_batch(batch: Any, size: int) -> Any:
    """A :class:`~jaxcnn.data.Batch` padded to ``size`` examples: zero images, label 0, mask 0."""
    n = len(batch.mask)
    if n == size:
        return batch
    return type(batch)(*(np.concatenate([a, np.zeros((size - n, *a.shape[1:]), a.dtype)]) for a in batch))


def fetch(tree: Any) -> Any:
    """A tree of (possibly sharded, possibly multi-process) arrays as host NumPy arrays, whole."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


def _path_names(path: Sequence[Any]) -> tuple[str, ...]:
    """A tree path as the names of its keys (``DictKey("conv2d")`` -> ``"conv2d"``)."""
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def sharding_report(state: Any, layout: Layout, layer_order: Sequence[str] = ()) -> dict[str, Any]:
    """Each parameter's sharding and the bytes one device holds of it and of its optimizer state,
    from an abstract state (``CompiledModel.abstract_state()``: nothing is allocated).

    Returns ``{"devices", "strategy", "parameters": [{"name", "shape", "sharding",
    "param_bytes_per_device", "optimizer_bytes_per_device"}], "totals": {...}}``. A parameter's
    optimizer bytes are those of the optimizer-state leaves at its tree path (optax states hold trees
    shaped as the parameters: Adam's ``mu`` and ``nu`` at ``.../conv2d/kernel``); the other state
    (batch statistics, step counts, the step and the key) is in the totals' ``other``.
    """
    params = {_path_names(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
    per_param: dict[tuple[str, ...], int] = {path: 0 for path in params}
    other = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state):
        names = _path_names(path)
        owner = next((names[-len(p):] for p in params if names[-len(p):] == p), None) if names else None
        nbytes = layout.bytes_per_device(tuple(leaf.shape), leaf.dtype)
        if owner is None:
            other += nbytes
        else:
            per_param[owner] += nbytes
    for leaf in jax.tree.leaves((state.batch_stats, state.step, state.rng)):
        other += layout.bytes_per_device(tuple(leaf.shape), leaf.dtype)
    rows = [{
        "name": "/".join(path),
        "shape": list(leaf.shape),
        "sharding": layout.describe(tuple(leaf.shape)),
        "param_bytes_per_device": layout.bytes_per_device(tuple(leaf.shape), leaf.dtype),
        "optimizer_bytes_per_device": per_param[path],
    } for path, leaf in params.items()]
    order = {name: i for i, name in enumerate(layer_order)}
    rows.sort(key=lambda r: order.get(r["name"].split("/")[0], len(order)))  # the model's layer order
    param_bytes = sum(r["param_bytes_per_device"] for r in rows)
    optimizer = sum(r["optimizer_bytes_per_device"] for r in rows)
    unsharded = sum(int(math.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(state))
    return {
        "devices": layout.size, "strategy": layout.strategy, "axis": AXIS, "parameters": rows,
        "totals": {"param_bytes_per_device": param_bytes, "optimizer_bytes_per_device": optimizer,
                   "other_state_bytes_per_device": other,
                   "state_bytes_per_device": param_bytes + optimizer + other,
                   "state_bytes_unsharded": unsharded},
    }


def render_sharding(report: dict[str, Any]) -> str:
    """The text table of :func:`sharding_report`."""
    from jaxcnn.summary import readable_bytes

    header = ("Parameter", "Shape", "Sharding", "Per device", "+ optimizer")
    lines = [(r["name"], str(tuple(r["shape"])), r["sharding"],
              readable_bytes(r["param_bytes_per_device"]), readable_bytes(r["optimizer_bytes_per_device"]))
             for r in report["parameters"]]
    widths = [max(len(x[i]) for x in (header, *lines)) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    totals = report["totals"]
    out = [f"Sharding over {report['devices']} device{'s' * (report['devices'] > 1)} "
           f"({report['strategy']} parallel, mesh axis {report['axis']!r}), computed with jax.eval_shape:",
           fmt(header), "-" * len(fmt(header)), *map(fmt, lines), "-" * len(fmt(header)),
           f"Training state per device: {readable_bytes(totals['state_bytes_per_device'])} "
           f"(parameters {readable_bytes(totals['param_bytes_per_device'])}, optimizer "
           f"{readable_bytes(totals['optimizer_bytes_per_device'])}, other "
           f"{readable_bytes(totals['other_state_bytes_per_device'])}); unsharded: "
           f"{readable_bytes(totals['state_bytes_unsharded'])}"]
    return "\n".join(out)
