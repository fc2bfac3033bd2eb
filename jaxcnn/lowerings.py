"""Lowerings: the XLA programs a layer can compile to, and the rule that picks one per layer.

The same layer spec can lower to different XLA programs with the same values and gradients:

* a convolution as ``lax.conv_general_dilated`` (``"conv"``), or as its padded input's shifted
  slices concatenated along channels and one matmul with the reshaped kernel (``"patches"``; its
  weight gradient is then one matmul too, without a hand-written VJP);
* a max or average pooling as ``lax.reduce_window`` (``"reduce_window"``), or, where the windows
  tile the input (``pool_size == strides``, VALID, sizes divisible), as a reshape and a reduction
  (``"reshape"``).

Ties in max pooling: ``"reduce_window"`` differentiates through XLA's select-and-scatter, which
gives a window's whole gradient to its first maximal element (row-major order); ``"reshape"``
differentiates ``max`` as JAX does, sharing it equally among the tied maxima. Both are valid
subgradients; they differ only where a window holds equal maxima (a test shows both).

The rule ``choose_*`` was measured on XLA's CPU backend (2 cores, jax 0.10.2), forward pass:

* a 3x3 convolution on a 2x2 map, 512 to 512 channels, batch 256: 1,617 ms as ``lax.conv``, 26.7 ms
  as patches; from 4x4 maps up ``lax.conv`` is faster at large batches (4x4x512: 81 ms against 109);
* at small batches patches win everywhere: VGG-11/32 at batch 1 runs in 3.4 ms with every
  convolution as patches against 6.5 ms with ``lax.conv``, at batch 4 in 9.2 against 19.4 ms; at
  batch 16 the two are even (28 against 24 ms).

Training (forward and backward, where XLA's CPU convolution gradients run on one core) favours
patches more: 2x2 filters on 32x32x3 at batch 128, 20.1 ms as ``lax.conv`` against 7.0 ms; 3x3 on
32x32x3 to 64 at batch 64, 32.8 against 6.1 ms; 16x16x64 to 128, 70.8 against 57.3 ms; 4x4x512,
64.2 against 55.2 ms; 2x2x512, 780 against 15 ms; only maps of 64 positions or more with 128 input
channels or more stay faster as ``lax.conv`` (8x8x128 to 256: 31.8 against 40.7 ms).

With the experimental flag of :mod:`jaxcnn.xla_flags` (XLA keeps only single dots in YNNPACK),
``lax.conv`` training gets faster and patches slower: 2x2 filters on 32x32x3 at batch 128, 23.0 ms
against 39.4; 16x16x64 to 128, 37.1 against 68.7; 4x4x512, 54.4 against 56.9; patches still win on
2x2 maps (801 against 14.8 ms) and for 3x3 filters over 3 input channels (84.3 against 6.1 ms).

So on CPU a convolution uses patches when its output map has at most 4 positions, or when the batch
is at most 8 (the batch is concrete when a step is traced; a symbolic batch counts as large), or in
training: without the flag unless its output map has 64 positions or more and it has 128 input
channels or more, with the flag only for at least 9 taps over at most 4 input channels. On GPU and
TPU every convolution uses ``lax.conv`` (cuDNN, the TPU's convolution units).

What the rule needs besides a layer's shapes, the batch size and the train flag (the backend, a
mesh, the XLA flags, a batch size to assume for a symbolic batch) is a :class:`LoweringContext`,
fixed when a module is built and carried by it as static data; nothing here asks JAX for its
backend or reads ``XLA_FLAGS`` while a step is traced, and a shape query (``count_params``, ``plan``,
``check``, the summary) starts no backend.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "CONV_LOWERINGS",
    "POOL_LOWERINGS",
    "SMALL_BATCH",
    "LoweringContext",
    "choose_conv",
    "choose_pool",
    "describe_conv",
    "describe_pool",
    "display_name",
    "conv",
    "max_pool",
    "sum_pool",
    "tiles",
]

CONV_LOWERINGS = ("auto", "conv", "patches")
POOL_LOWERINGS = ("auto", "reduce_window", "reshape")
_SMALL_MAP = 4  # output positions (H_out * W_out) at or below which patches win on CPU
SMALL_BATCH = 8  # batch sizes at or below which patches win on CPU
_NAMES = {"conv": "lax.conv"}  # how the summary writes a lowering; the others by their own names


def _fast_cpu_flags_set() -> bool:
    """Whether ``XLA_FLAGS`` holds :data:`jaxcnn.xla_flags.FAST_CPU_FLAGS` (an environment read)."""
    from jaxcnn.xla_flags import FAST_CPU_FLAGS

    flags = os.environ.get("XLA_FLAGS", "").split()
    return all(flag in flags for flag in FAST_CPU_FLAGS)


@dataclasses.dataclass(frozen=True)
class LoweringContext:
    """What the automatic choice depends on besides a layer's shapes, the batch size and the train
    flag: fixed when a module is built (a field of :class:`jaxcnn.flax_module.SequentialModule`),
    hashable, never read from the environment at trace time.

    Attributes:
      backend: ``jax.default_backend()``'s name (``"cpu"``, ``"gpu"``, ``"tpu"``).
      partitioned: traced for a mesh of several devices (:mod:`jaxcnn.parallel`): every automatic
        convolution is ``lax.conv``, which XLA's SPMD partitioner handles natively. The patches
        lowering gave a wrong weight gradient there once a batch held masked padding ahead of a
        BatchNormalization (experiments/xla_spmd_patches_repro.py), so it is not used.
      fast_cpu: XLA runs with :data:`jaxcnn.xla_flags.FAST_CPU_FLAGS`, which change the training rule.
      assumed_batch: the batch size a symbolic batch dimension is taken as (``None``: a large batch);
        an export traced for a symbolic batch carries a small-batch variant built with ``1``.
    """

    backend: str
    partitioned: bool = False
    fast_cpu: bool = False
    assumed_batch: int | None = None

    @classmethod
    def of_process(cls, *, partitioned: bool = False) -> LoweringContext:
        """This process's context: ``jax.default_backend()`` (which starts JAX's backends) and
        whether ``XLA_FLAGS`` holds the fast-CPU flags. For a module that is about to run."""
        return cls(jax.default_backend(), partitioned=partitioned, fast_cpu=_fast_cpu_flags_set())


def choose_conv(output_hw: tuple[int, int], context: LoweringContext, batch: object = None, *,
                train: bool = False, in_channels: int = 0, taps: int = 9) -> str:
    """``"patches"`` or ``"conv"`` for a convolution with this output map, ``in_channels`` input
    channels and ``taps`` kernel taps in ``context``, for ``batch`` examples (an int; ``None`` or a
    symbolic dimension count as ``context.assumed_batch``, a large batch when that is ``None``), in
    a training step or not."""
    if context.backend != "cpu" or context.partitioned:
        return "conv"
    if not isinstance(batch, int):
        batch = context.assumed_batch
    positions = output_hw[0] * output_hw[1]
    if positions <= _SMALL_MAP or (isinstance(batch, int) and batch <= SMALL_BATCH):
        return "patches"
    if train:
        if context.fast_cpu:
            return "patches" if taps >= 9 and in_channels <= 4 else "conv"
        return "conv" if positions >= 64 and in_channels >= 128 else "patches"
    return "conv"


def describe_conv(output_hw: tuple[int, int], context: LoweringContext | None = None, *,
                  in_channels: int = 0, taps: int = 9) -> str:
    """The automatic choice in a few words, for the summary's lowering column: the choice at a
    large batch in inference, then when the other one is taken (``"lax.conv; patches if batch<=8 or
    training"``). With ``context=None`` (the summary starts no backend to learn it) the CPU rule is
    described as such: ``"lax.conv; patches on CPU if batch<=8 or training"``."""
    cpu = context if context is not None else LoweringContext("cpu", fast_cpu=_fast_cpu_flags_set())
    large = choose_conv(output_hw, cpu, in_channels=in_channels, taps=taps)
    conditions = []
    if choose_conv(output_hw, cpu, batch=1, in_channels=in_channels, taps=taps) != large:
        conditions.append(f"batch<={SMALL_BATCH}")
    if choose_conv(output_hw, cpu, train=True, in_channels=in_channels, taps=taps) != large:
        conditions.append("training")
    if context is None:  # off CPU every convolution is lax.conv
        if large == "conv" and not conditions:
            return "lax.conv"
        return "lax.conv; patches on CPU" + (" if " + " or ".join(conditions) if conditions else "")
    if not conditions:
        return display_name(large)
    other = "patches" if large == "conv" else "conv"
    return f"{display_name(large)}; {display_name(other)} if {' or '.join(conditions)}"


def describe_pool(input_hw: tuple[int, int], pool: tuple[int, int], strides: tuple[int, int], padding: str,
                  context: LoweringContext | None = None) -> str:
    """The automatic pooling choice in words, as :func:`describe_conv` (``"reduce_window; reshape
    on CPU"`` with ``context=None``)."""
    if context is not None:
        return choose_pool(input_hw, pool, strides, padding, context)
    return "reduce_window; reshape on CPU" if tiles(input_hw, pool, strides, padding) else "reduce_window"


def display_name(lowering: str) -> str:
    """A lowering as the summary writes it (``"conv"`` is ``"lax.conv"``)."""
    return _NAMES.get(lowering, lowering)


def tiles(input_hw: tuple[int, int], pool: tuple[int, int], strides: tuple[int, int], padding: str) -> bool:
    """Whether the pooling windows tile the input exactly (no overlap, no remainder, no padding)."""
    return (padding == "valid" and tuple(pool) == tuple(strides)
            and input_hw[0] % pool[0] == 0 and input_hw[1] % pool[1] == 0)


def choose_pool(input_hw: tuple[int, int], pool: tuple[int, int], strides: tuple[int, int], padding: str,
                context: LoweringContext) -> str:
    """``"reshape"`` where the windows tile the input on CPU (its backward is 10x faster than
    select-and-scatter there), else ``"reduce_window"``."""
    tiled = context.backend == "cpu" and tiles(input_hw, pool, strides, padding)
    return "reshape" if tiled else "reduce_window"


def conv(x: jax.Array, kernel: jax.Array, *, strides: tuple[int, int], padding: str,
         dilation: tuple[int, int], lowering: str) -> jax.Array:
    """A 2D convolution, NHWC input and HWIO kernel, as ``lowering`` (``"conv"`` or ``"patches"``)."""
    if lowering == "conv":
        return lax.conv_general_dilated(x, kernel, window_strides=strides, padding=padding.upper(),
                                        rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    kh, kw, c, f = kernel.shape
    effective = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    (pt, pb), (pl, pr) = lax.padtype_to_pads(x.shape[1:3], effective, strides, padding.upper())
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho = (xp.shape[1] - effective[0]) // strides[0] + 1
    wo = (xp.shape[2] - effective[1]) // strides[1] + 1
    columns = [
        lax.slice(xp, (0, i * dilation[0], j * dilation[1], 0),
                  (xp.shape[0], i * dilation[0] + (ho - 1) * strides[0] + 1,
                   j * dilation[1] + (wo - 1) * strides[1] + 1, c),
                  (1, strides[0], strides[1], 1))
        for i in range(kh) for j in range(kw)
    ]
    patches = columns[0] if len(columns) == 1 else jnp.concatenate(columns, axis=-1)
    out = jnp.matmul(patches.reshape(-1, kh * kw * c), kernel.reshape(kh * kw * c, f))
    return out.reshape(x.shape[0], ho, wo, f)


def _pads(x: jax.Array, pool: tuple[int, int], strides: tuple[int, int], padding: str) -> list[tuple[int, int]]:
    return lax.padtype_to_pads(x.shape, (1, *pool, 1), (1, *strides, 1), padding.upper())


def max_pool(x: jax.Array, *, pool: tuple[int, int], strides: tuple[int, int], padding: str,
             lowering: str) -> jax.Array:
    """Max pooling (SAME pads with -inf), as ``"reduce_window"`` or ``"reshape"`` (tiling windows only)."""
    if lowering == "reshape":
        b, h, w, c = x.shape
        return x.reshape(b, h // pool[0], pool[0], w // pool[1], pool[1], c).max(axis=(2, 4))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *pool, 1), (1, *strides, 1),
                             _pads(x, pool, strides, padding))


def sum_pool(x: jax.Array, *, pool: tuple[int, int], strides: tuple[int, int], padding: str,
             lowering: str) -> jax.Array:
    """Window sums (average pooling divides them), as ``"reduce_window"`` or ``"reshape"``."""
    if lowering == "reshape":
        b, h, w, c = x.shape
        return x.reshape(b, h // pool[0], pool[0], w // pool[1], pool[1], c).sum(axis=(2, 4))
    return lax.reduce_window(x, 0.0, lax.add, (1, *pool, 1), (1, *strides, 1), _pads(x, pool, strides, padding))
