"""Lowerings: the XLA programs a layer can compile to, and the rule that picks one per layer.

The same layer spec can lower to different XLA programs with the same values and gradients:

* a convolution as ``lax.conv_general_dilated`` (``"conv"``), or as its padded input's shifted
  slices concatenated along channels and one matmul with the reshaped kernel (``"patches"``; its
  weight gradient is then one matmul too, without a hand-written VJP);
* a max or average pooling as ``lax.reduce_window`` (``"reduce_window"``), or, where the windows
  tile the input (``pool_size == strides``, VALID, sizes divisible), as a reshape and a reduction
  (``"reshape"``);
* a depthwise convolution as a grouped ``lax.conv`` (``"conv"``), or as the sum over its kernel's
  taps of the padded input's strided slices times each tap's per-channel weights (``"shifted"``,
  :func:`depthwise`: one fused elementwise loop);
* either, on CPU, as oneDNN's primitives called through XLA's FFI (``"onednn"``,
  :mod:`jaxcnn.onednn`; a convolution's bias and ReLU run inside its call), where the extension is
  built and the module may use it (:class:`LoweringContext`'s ``onednn``: never on GPU or TPU, on a
  mesh of several devices or in an export, whose ``jax.export`` refuses the custom calls; a layer
  forced to ``"onednn"`` there takes the automatic choice).

Ties in max pooling: ``"reduce_window"`` differentiates through XLA's select-and-scatter, which
gives a window's whole gradient to its first maximal element (row-major order); ``"reshape"``
differentiates ``max`` as JAX does, sharing it equally among the tied maxima. Both are valid
subgradients; they differ only where a window holds equal maxima (a test shows both). ``"onednn"``
gives it to the element oneDNN's workspace recorded, the first maximum as ``"reduce_window"`` does.

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

With oneDNN (experiments/calibrate_onednn.py, experiments/results/calibrate_onednn.{json,txt}: one
layer, convolution with bias and ReLU, timed under each lowering, forward ("inference") and forward
with every gradient ("training"), batches 1, 8, 64 and 128, on the quiet machine; a run under load
6-9 from other work, calibrate_onednn_loaded.*, gave the same verdicts):

* 3x3 convolutions on output maps of 64 positions (8x8) or more: in training at batches 64 and 128
  oneDNN took 0.63x the faster XLA lowering's time (geometric mean of 12 shapes, faster in 11):
  32x32, 64 to 64 channels at batch 128, 101 ms against 294 as ``lax.conv`` and 335 as patches;
  8x8, 256 to 256, 68 against 103 and 137. At batches 1 and 8 about even (1.03x and 0.95x; 32x32
  64 to 64 at batch 8, 5.9 against 10.8 ms as patches; 3 input channels at batch 8, 2.7 against
  2.3). In inference 0.64x at batches 64 and 128, 0.82x at batch 1.
* 3x3 convolutions on 4x4 maps: oneDNN slower in 7 of 8 cases in training (1.1-2.5x the best XLA
  time; 512 to 512 at batch 64: 44 against 39 ms as patches) and in all 8 in inference (1.15-2.2x;
  batch 128: 39 against 28 ms as ``lax.conv``); on 2x2 maps patches stay 1.2-4.2x faster than
  oneDNN (batch 128, training: 19 against 36 ms).
* 1x1 convolutions: in inference oneDNN was fastest in 26 of 36 cases (0.73x at batches 64 and
  128 on maps of 64 positions or more, 0.84x at batch 1); in training it was even at best (0.99x at
  batches 64 and 128, 1.7x at batches 1 and 8), patches (one matmul each way) fastest: 8x8, 256 to
  256 at batch 64, 9.6 ms in oneDNN and as patches, 20.7 as ``lax.conv``.
* max pooling: oneDNN fastest in 35 of 40 training cases (0.33x the best other's time, geometric
  mean) and 38 of 40 in inference: 2x2 windows on 16x16x128 at batch 64, 2.5 ms against 3.6 as
  reshape and 14.2 as ``reduce_window``; 3x3 at stride 2, SAME, on 32x32x64 at batch 128, 7.3
  against 135 as ``reduce_window``.
* depthwise 3x3 convolutions (MobileNetV2-like, 32x32x32 to 4x4x384): oneDNN 3.2-7.6x faster than
  XLA's grouped ``lax.conv`` in training (16x16x96 at batch 64: 11.1 against 84.8 ms), 1.1-7.9x in
  inference; transposed 3x3 convolutions at stride 2: 1.2-12x faster in training (16x16, 64 to 32
  channels at batch 64: 15.0 against 142 ms), 0.6-1.8x in inference.

So where a module may use oneDNN, a convolution uses it when its output map has 64 positions or
more, or for a 1x1 kernel on more than 4 positions outside training (1x1 in training: patches);
maps of at most 4 positions keep patches, and the maps in between (5 to 63 positions) the rule
above; grouped, depthwise, separable and transposed convolutions (no patches program) and every
max or average pooling use oneDNN. The maps between 4x4 and 8x8 were not measured.

That calibration ran oneDNN's forward on the HWIO kernel as given; it now takes oneDNN's own weight
layout (jaxcnn.onednn), which made small maps' forward faster. Re-measured in VGG-11/32's training
step at batch 64 (experiments/profile_step.py, every convolution forced to oneDNN against the rule):
on 4x4 maps oneDNN's forward beats patches (256 to 512: 10.3 against 14.3 ms; 512 to 512: 18.9
against 26.9) but not its backward (34.4 against 26.3; 53.3 against 50.6), even in all; on 2x2 maps
patches stay ahead (forward and backward 42.5 against 51.3 ms for the two layers). So the training
rule stands; inference on maps under 64 positions was not re-measured.

Depthwise convolutions without oneDNN (experiments/bench_depthwise.py, results/bench_depthwise.txt:
MobileNetV2's ten depthwise shapes at 224x224): XLA's CPU backend runs a grouped ``lax.conv`` slowly,
and the shifted form was faster on every shape, 19x in inference at batch 1 (geometric mean; 112x112x32:
11.7 against 0.28 ms), 10x at batch 32 (404 against 42 ms) and 2.7x in training (forward and both
gradients at batch 64 on the 32x32 net's shapes). oneDNN's depthwise kernel is faster still (20 ms
on 112x112x32 at batch 32), so it stays the choice where it may be used; elsewhere on CPU, and in an
export (which cannot hold oneDNN's calls), depthwise convolutions are ``"shifted"``, kept portable:
``lax.platform_dependent`` gives an export's cuda and tpu programs the grouped ``lax.conv`` (cuDNN's
and the TPU's own depthwise kernels), as on a GPU or TPU backend and on a mesh.

What the rule needs besides a layer's shapes, the batch size and the train flag (the backend, a
mesh, the XLA flags, a batch size to assume for a symbolic batch) is a :class:`LoweringContext`,
fixed when a module is built and carried by it as static data; nothing here asks JAX for its
backend or reads ``XLA_FLAGS`` while a step is traced, and a shape query (``count_params``, ``plan``,
``check``, the summary) starts no backend.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "CONV_LOWERINGS",
    "DEPTHWISE_LOWERINGS",
    "POOL_LOWERINGS",
    "SMALL_BATCH",
    "UNPATCHED_LOWERINGS",
    "LoweringContext",
    "avg_pool",
    "choose_conv",
    "choose_pool",
    "choose_depthwise",
    "choose_unpatched",
    "conv",
    "depthwise",
    "conv_pads",
    "describe_conv",
    "describe_depthwise",
    "describe_pool",
    "describe_unpatched",
    "display_name",
    "forced_lowering",
    "max_pool",
    "onednn_available",
    "onednn_conv",
    "onednn_conv_transpose",
    "sum_pool",
    "tiles",
]

CONV_LOWERINGS = ("auto", "conv", "patches", "onednn")
POOL_LOWERINGS = ("auto", "reduce_window", "reshape", "onednn")
# Convolutions without a patches program: grouped (Conv2D groups > 1), depthwise, separable, transposed.
UNPATCHED_LOWERINGS = ("auto", "conv", "onednn")
# Depthwise convolutions (DepthwiseConv2D, SeparableConv2D's first stage) also have "shifted".
DEPTHWISE_LOWERINGS = ("auto", "conv", "shifted", "onednn")
_SMALL_MAP = 4  # output positions (H_out * W_out) at or below which patches win on CPU
_ONEDNN_MAP = 64  # output positions from which oneDNN's convolutions win on CPU (experiments/calibrate_onednn.py)
SMALL_BATCH = 8  # batch sizes at or below which patches win on CPU
_NAMES = {"conv": "lax.conv"}  # how the summary writes a lowering; the others by their own names


def _fast_cpu_flags_set() -> bool:
    """Whether ``XLA_FLAGS`` holds :data:`jaxcnn.xla_flags.FAST_CPU_FLAGS` (an environment read)."""
    from jaxcnn.xla_flags import FAST_CPU_FLAGS

    flags = os.environ.get("XLA_FLAGS", "").split()
    return all(flag in flags for flag in FAST_CPU_FLAGS)


def onednn_available() -> bool:
    """Whether :mod:`jaxcnn.onednn`'s extension is built and loaded here (loading it starts no JAX
    backend)."""
    from jaxcnn import onednn

    return onednn.available()


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
        BatchNormalization (experiments/xla_spmd_patches_repro.py), so it is not used; nor is
        oneDNN, whose custom calls the partitioner cannot split.
      fast_cpu: XLA runs with :data:`jaxcnn.xla_flags.FAST_CPU_FLAGS`, which change the training rule.
      assumed_batch: the batch size a symbolic batch dimension is taken as (``None``: a large batch);
        an export traced for a symbolic batch carries a small-batch variant built with ``1``.
      onednn: the ``"onednn"`` lowerings (:mod:`jaxcnn.onednn`'s XLA FFI custom calls) may be used:
        the backend is the CPU, the extension is available, the module is not partitioned and not
        being exported (``jax.export`` refuses the custom calls; :mod:`jaxcnn.export` clears this).
        Always ``False`` off CPU or when ``partitioned``, whatever is passed.
      bfloat16_convolutions: every convolution runs in oneDNN's bfloat16 kernels (float32 in and out,
        float32 accumulation), the activations between layers and every other layer staying float32:
        the CPU form of ``precision = "bfloat16"`` (:func:`jaxcnn.train.compile` sets it where the
        CPU has native bfloat16 kernels). Measured on the 2-core Zen 4 (experiments/bench_cpu.py):
        computing the whole step in bfloat16 made XLA's elementwise work and BatchNormalization
        slower than in float32 (ResNet-20 304 against 219 ms a step, the MobileNetV2-style net 205
        against 51 ms), while oneDNN's bfloat16 convolutions run at about twice their float32 speed
        (VGG-11/32 with every convolution in them: 222 ms against 357 in float32). ``False`` where
        ``onednn`` is.
      onednn_missing: why oneDNN cannot be used in a context that would otherwise use it (the
        extension's :func:`jaxcnn.onednn.unavailable_reason`), set by :meth:`of_process`; a layer
        forced to ``lowering="onednn"`` is then refused when its module is built
        (:func:`jaxcnn.flax_module.build_module`). Where the context itself rules oneDNN out (GPU,
        TPU, a mesh, an export) a forced ``"onednn"`` takes the automatic choice instead, silently.
    """

    backend: str
    partitioned: bool = False
    fast_cpu: bool = False
    assumed_batch: int | None = None
    onednn: bool = False
    onednn_missing: str | None = None
    bfloat16_convolutions: bool = False

    def __post_init__(self) -> None:
        if self.backend != "cpu" or self.partitioned:
            object.__setattr__(self, "onednn", False)
            object.__setattr__(self, "onednn_missing", None)
        if not self.onednn:
            object.__setattr__(self, "bfloat16_convolutions", False)

    @classmethod
    def of_process(cls, *, partitioned: bool = False) -> LoweringContext:
        """This process's context: ``jax.default_backend()`` (which starts JAX's backends), whether
        ``XLA_FLAGS`` holds the fast-CPU flags, and on CPU whether the oneDNN extension is
        available (and if not, why). For a module that is about to run."""
        backend = jax.default_backend()
        onednn, missing = False, None
        if backend == "cpu" and not partitioned:
            from jaxcnn import onednn as extension

            onednn = extension.available()
            missing = None if onednn else extension.unavailable_reason()
        return cls(backend, partitioned=partitioned, fast_cpu=_fast_cpu_flags_set(), onednn=onednn,
                   onednn_missing=missing)


def _cpu_context() -> LoweringContext:
    """The CPU context the summary describes without starting a backend (``context=None``)."""
    return LoweringContext("cpu", fast_cpu=_fast_cpu_flags_set(), onednn=onednn_available())


def choose_conv(output_hw: tuple[int, int], context: LoweringContext, batch: object = None, *,
                train: bool = False, in_channels: int = 0, taps: int = 9, groups: int = 1) -> str:
    """``"patches"``, ``"conv"`` or ``"onednn"`` for a convolution with this output map,
    ``in_channels`` input channels, ``taps`` kernel taps and ``groups`` groups in ``context``, for
    ``batch`` examples (an int; ``None`` or a symbolic dimension count as ``context.assumed_batch``, a
    large batch when that is ``None``), in a training step or not. A grouped convolution has no
    patches program: :func:`choose_unpatched`."""
    if groups > 1:
        return choose_unpatched(context)
    if context.backend != "cpu" or context.partitioned:
        return "conv"
    if context.bfloat16_convolutions:  # oneDNN's bfloat16 kernels, whatever the shapes
        return "onednn"
    if not isinstance(batch, int):
        batch = context.assumed_batch
    positions = output_hw[0] * output_hw[1]
    if context.onednn:
        choice = _choose_with_onednn(positions, taps, train)
        if choice is not None:
            return choice
    if positions <= _SMALL_MAP or (isinstance(batch, int) and batch <= SMALL_BATCH):
        return "patches"
    if train:
        if context.fast_cpu:
            return "patches" if taps >= 9 and in_channels <= 4 else "conv"
        return "conv" if positions >= 64 and in_channels >= 128 else "patches"
    return "conv"


def _choose_with_onednn(positions: int, taps: int, train: bool) -> str | None:
    """The measured choice where oneDNN may be used (see the module's docstring), ``None`` where
    XLA's own rule decides (3x3-like kernels on 5 to 63 output positions)."""
    if positions <= _SMALL_MAP:
        return "patches"
    if taps == 1:
        return "patches" if train else "onednn"
    return "onednn" if positions >= _ONEDNN_MAP else None


def forced_lowering(lowering: str, context: LoweringContext) -> str | None:
    """The lowering a layer's ``lowering`` field forces in ``context``: the field itself, or ``None``
    (the automatic choice) for ``"auto"`` and for ``"onednn"`` where ``context`` rules oneDNN out
    (GPU, TPU, a mesh, an export; a missing extension was refused when the module was built)."""
    if lowering == "auto" or (lowering == "onednn" and not context.onednn):
        return None
    return lowering


def choose_unpatched(context: LoweringContext) -> str:
    """``"onednn"`` where ``context`` may use it, else ``"conv"``: the choice for the convolutions
    without a patches program (grouped, depthwise, separable, transposed)."""
    return "onednn" if context.onednn else "conv"


def choose_depthwise(context: LoweringContext) -> str:
    """``"onednn"`` where ``context`` may use it, else ``"shifted"`` on CPU (XLA's CPU backend runs a
    grouped ``lax.conv`` 10-40x slower than the shifted slices' one fused loop, see the module's
    docstring), else ``"conv"`` (cuDNN's and the TPU's own depthwise kernels)."""
    if context.onednn:
        return "onednn"
    return "shifted" if context.backend == "cpu" and not context.partitioned else "conv"


def _conditions(choose: Callable[..., str]) -> tuple[str, dict[str, list[str]]]:
    """``choose``'s choice at a large batch in inference, and the conditions (``"batch<=8"``,
    ``"training"``) under which it picks another, grouped by that other choice."""
    large = choose()
    others: dict[str, list[str]] = {}
    for condition, kwargs in ((f"batch<={SMALL_BATCH}", {"batch": 1}), ("training", {"train": True})):
        choice = choose(**kwargs)
        if choice != large:
            others.setdefault(choice, []).append(condition)
    return large, others


def _phrase(large: str, others: dict[str, list[str]], where: str = "") -> str:
    """``"lax.conv; patches if batch<=8 or training"`` (``where`` after each alternative's name)."""
    parts = [f"{display_name(choice)}{where} if {' or '.join(conditions)}" for choice, conditions in others.items()]
    return "; ".join([display_name(large), *parts])


def describe_conv(output_hw: tuple[int, int], context: LoweringContext | None = None, *,
                  in_channels: int = 0, taps: int = 9) -> str:
    """The automatic choice in a few words, for the summary's lowering column: the choice at a
    large batch in inference, then when another one is taken (``"lax.conv; patches if batch<=8 or
    training"``). With ``context=None`` (the summary starts no backend to learn it) the CPU rule of
    this process (with oneDNN where its extension is available) is described as such: ``"lax.conv;
    patches on CPU if batch<=8 or training"``, ``"lax.conv; onednn on CPU"``."""
    cpu = context if context is not None else _cpu_context()
    large, others = _conditions(lambda **kw: choose_conv(output_hw, cpu, in_channels=in_channels, taps=taps, **kw))
    if context is not None:
        return _phrase(large, others)
    if large == "conv":  # off CPU every convolution is lax.conv
        return _phrase(large, others, " on CPU")
    if not others:
        return f"lax.conv; {display_name(large)} on CPU"
    return f"lax.conv; on CPU {_phrase(large, others).replace('; ', ', ')}"


def describe_unpatched(context: LoweringContext | None = None) -> str:
    """:func:`choose_unpatched` in words: ``"lax.conv; onednn on CPU"`` with ``context=None`` where
    this process has the oneDNN extension, else ``"lax.conv"``."""
    if context is not None:
        return display_name(choose_unpatched(context))
    return "lax.conv; onednn on CPU" if _cpu_context().onednn else "lax.conv"


def describe_depthwise(context: LoweringContext | None = None) -> str:
    """:func:`choose_depthwise` in words: ``"lax.conv; onednn on CPU"`` (``"lax.conv; shifted on
    CPU"`` without the extension) with ``context=None``."""
    if context is not None:
        return display_name(choose_depthwise(context))
    return f"lax.conv; {'onednn' if _cpu_context().onednn else 'shifted'} on CPU"


def describe_pool(input_hw: tuple[int, int], pool: tuple[int, int], strides: tuple[int, int], padding: str,
                  context: LoweringContext | None = None) -> str:
    """The automatic pooling choice in words, as :func:`describe_conv` (``"reduce_window; reshape
    on CPU"`` with ``context=None``)."""
    if context is not None:
        return choose_pool(input_hw, pool, strides, padding, context)
    cpu = choose_pool(input_hw, pool, strides, padding, _cpu_context())
    return "reduce_window" if cpu == "reduce_window" else f"reduce_window; {cpu} on CPU"


def display_name(lowering: str) -> str:
    """A lowering as the summary writes it (``"conv"`` is ``"lax.conv"``)."""
    return _NAMES.get(lowering, lowering)


def tiles(input_hw: tuple[int, int], pool: tuple[int, int], strides: tuple[int, int], padding: str) -> bool:
    """Whether the pooling windows tile the input exactly (no overlap, no remainder, no padding)."""
    return (padding == "valid" and tuple(pool) == tuple(strides)
            and input_hw[0] % pool[0] == 0 and input_hw[1] % pool[1] == 0)


def choose_pool(input_hw: tuple[int, int], pool: tuple[int, int], strides: tuple[int, int], padding: str,
                context: LoweringContext) -> str:
    """``"onednn"`` where ``context`` may use it; else ``"reshape"`` where the windows tile the input
    on CPU (its backward is 10x faster than select-and-scatter there), else ``"reduce_window"``."""
    if context.onednn:
        return "onednn"
    tiled = context.backend == "cpu" and tiles(input_hw, pool, strides, padding)
    return "reshape" if tiled else "reduce_window"


def conv_pads(input_hw: tuple[int, int], kernel_hw: tuple[int, int], strides: tuple[int, int], padding: str,
              dilation: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras's ``"same"``/``"valid"`` as explicit ``((top, bottom), (left, right))`` pads."""
    effective = tuple((k - 1) * d + 1 for k, d in zip(kernel_hw, dilation))
    (pt, pb), (pl, pr) = lax.padtype_to_pads(input_hw, effective, strides, padding.upper())
    return (pt, pb), (pl, pr)


def _onednn_dtypes(x: jax.Array, bfloat16: bool) -> tuple[jax.Array, object]:
    """oneDNN takes float32 arrays; a bfloat16 ``x`` (a step computed in bfloat16) or ``bfloat16``
    (:attr:`LoweringContext.bfloat16_convolutions`) computes in its bfloat16 kernels instead."""
    return x.astype(jnp.float32), jnp.bfloat16 if bfloat16 or x.dtype == jnp.bfloat16 else None


def onednn_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, *, strides: tuple[int, int],
                padding: str, dilation: tuple[int, int], groups: int = 1, activation: str | None = None,
                bfloat16: bool = False) -> jax.Array:
    """:func:`jaxcnn.onednn.conv` for Keras's ``padding`` and any input dtype: ``(N, H, W, C)`` and
    ``(KH, KW, C // groups, F)`` to ``(N, H_out, W_out, F)`` in ``x``'s dtype, plus ``bias`` ``(F,)``,
    then ReLU where ``activation == "relu"`` (oneDNN's post-ops). A ``bfloat16`` ``x``, or
    ``bfloat16=True`` for a float32 one, runs oneDNN's bfloat16 kernels with float32 parameters and
    accumulation."""
    from jaxcnn import onednn

    pads = conv_pads(x.shape[1:3], kernel.shape[:2], strides, padding, dilation)
    x32, compute = _onednn_dtypes(x, bfloat16)
    y = onednn.conv(x32, kernel.astype(jnp.float32), None if bias is None else bias.astype(jnp.float32),
                    strides=strides, padding=pads, dilation=dilation, groups=groups, activation=activation,
                    compute_dtype=compute)
    return y.astype(x.dtype)


def onednn_conv_transpose(x: jax.Array, kernel: jax.Array, *, strides: tuple[int, int],
                          padding: tuple[tuple[int, int], tuple[int, int]], dilation: tuple[int, int],
                          bfloat16: bool = False) -> jax.Array:
    """:func:`jaxcnn.onednn.conv_transpose` (``lax.conv_transpose(..., transpose_kernel=True)`` with
    explicit ``padding``) for any input dtype, as :func:`onednn_conv`."""
    from jaxcnn import onednn

    x32, compute = _onednn_dtypes(x, bfloat16)
    y = onednn.conv_transpose(x32, kernel.astype(jnp.float32), strides=strides, padding=padding,
                              dilation=dilation, compute_dtype=compute)
    return y.astype(x.dtype)


def conv(x: jax.Array, kernel: jax.Array, *, strides: tuple[int, int], padding: str,
         dilation: tuple[int, int], lowering: str, bfloat16: bool = False) -> jax.Array:
    """A 2D convolution, NHWC input and HWIO kernel, as ``lowering`` (``"conv"``, ``"patches"`` or
    ``"onednn"``; ``bfloat16``: in oneDNN's bfloat16 kernels)."""
    if lowering == "onednn":
        return onednn_conv(x, kernel, strides=strides, padding=padding, dilation=dilation, bfloat16=bfloat16)
    if lowering == "conv":
        return lax.conv_general_dilated(x, kernel, window_strides=strides, padding=padding.upper(),
                                        rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    kh, kw, c, f = kernel.shape
    effective = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    (pt, pb), (pl, pr) = conv_pads(x.shape[1:3], (kh, kw), strides, padding, dilation)
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


def depthwise(x: jax.Array, kernel: jax.Array, *, strides: tuple[int, int], padding: str,
              dilation: tuple[int, int], lowering: str, portable: bool = False) -> jax.Array:
    """A depthwise convolution, NHWC input, Keras's ``(kh, kw, C, m)`` kernel, output channel
    ``c * m + j`` (filter ``j`` of channel ``c``), as ``lowering``:

    * ``"conv"``: Keras's JAX ``depthwise_conv``, the kernel as ``(kh, kw, 1, C*m)`` with
      ``feature_group_count=C``;
    * ``"shifted"``: the sum over the kernel's taps of the padded input's strided slice times that
      tap's per-channel weights, which XLA fuses into one elementwise loop (its gradients are slices,
      pads and reductions). With ``portable``, the choice made on CPU for a program that may also
      run elsewhere (an export for cuda and tpu): ``lax.platform_dependent`` keeps ``"conv"`` on the
      other platforms, and a program lowered for the CPU alone holds only the shifted form.
    """
    kh, kw, c, m = kernel.shape

    def grouped(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(x, kernel.reshape(kh, kw, 1, c * m), window_strides=strides,
                                        padding=padding.upper(), rhs_dilation=dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)

    if lowering == "conv":
        return grouped(x, kernel)
    if lowering != "shifted":
        raise ValueError(f"depthwise lowering {lowering!r} is not 'conv' or 'shifted'")
    if portable:
        return lax.platform_dependent(x, kernel, cpu=_shifted_depthwise(strides, padding, dilation), default=grouped)
    return _shifted_depthwise(strides, padding, dilation)(x, kernel)


def _shifted_depthwise(strides: tuple[int, int], padding: str,
                       dilation: tuple[int, int]) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The ``"shifted"`` form of :func:`depthwise`, accumulated in float32 (as XLA's convolutions
    accumulate a bfloat16 input) and returned in the input's dtype."""

    def shifted(x: jax.Array, kernel: jax.Array) -> jax.Array:
        kh, kw, c, m = kernel.shape
        (pt, pb), (pl, pr) = conv_pads(x.shape[1:3], (kh, kw), strides, padding, dilation)
        xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        ho = (xp.shape[1] - (kh - 1) * dilation[0] - 1) // strides[0] + 1
        wo = (xp.shape[2] - (kw - 1) * dilation[1] - 1) // strides[1] + 1
        weights = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
        total = None
        for i in range(kh):
            for j in range(kw):
                top, left = i * dilation[0], j * dilation[1]
                tap = lax.slice(xp, (0, top, left, 0),
                                (xp.shape[0], top + (ho - 1) * strides[0] + 1, left + (wo - 1) * strides[1] + 1, c),
                                (1, strides[0], strides[1], 1)).astype(weights.dtype)
                term = tap * weights[i, j, :, 0] if m == 1 else tap[..., None] * weights[i, j]
                total = term if total is None else total + term
        return total.reshape(*total.shape[:3], c * m).astype(x.dtype)

    return shifted


def _pads(x: jax.Array, pool: tuple[int, int], strides: tuple[int, int], padding: str) -> list[tuple[int, int]]:
    return lax.padtype_to_pads(x.shape, (1, *pool, 1), (1, *strides, 1), padding.upper())


def _spatial_pads(x: jax.Array, pool: tuple[int, int], strides: tuple[int, int],
                  padding: str) -> tuple[tuple[int, int], tuple[int, int]]:
    (_, (pt, pb), (pl, pr), _) = _pads(x, pool, strides, padding)
    return (pt, pb), (pl, pr)


def max_pool(x: jax.Array, *, pool: tuple[int, int], strides: tuple[int, int], padding: str,
             lowering: str) -> jax.Array:
    """Max pooling (SAME pads with -inf), as ``"reduce_window"``, ``"reshape"`` (tiling windows
    only) or ``"onednn"``."""
    if lowering == "onednn":
        from jaxcnn import onednn

        pads = _spatial_pads(x, pool, strides, padding)
        return onednn.max_pool(x.astype(jnp.float32), pool=pool, strides=strides, padding=pads).astype(x.dtype)
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


def avg_pool(x: jax.Array, *, pool: tuple[int, int], strides: tuple[int, int], padding: str,
             lowering: str) -> jax.Array:
    """Average pooling over each window's real elements (SAME padding excluded, as Keras), as
    ``"reduce_window"`` or ``"reshape"`` (window sums divided by the counts) or ``"onednn"``."""
    if lowering == "onednn":
        from jaxcnn import onednn

        pads = _spatial_pads(x, pool, strides, padding)
        return onednn.avg_pool(x.astype(jnp.float32), pool=pool, strides=strides, padding=pads).astype(x.dtype)
    total = sum_pool(x, pool=pool, strides=strides, padding=padding, lowering=lowering)
    if padding == "valid":
        return total / (pool[0] * pool[1])
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    return total / sum_pool(ones, pool=pool, strides=strides, padding=padding, lowering="reduce_window")
