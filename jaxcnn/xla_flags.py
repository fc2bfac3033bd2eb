"""Opt-in XLA flags that were measured to pay for these models on CPU. Off by default.

``--xla_cpu_experimental_ynn_fusion_type=individual_dot`` stops XLA's CPU backend from handing whole
fusions to its YNNPACK library and keeps only single dots there. It is an **experimental** XLA flag
(its name says so; the value ``invalid`` also works but logs errors, so jaxcnn never uses it). On the
2-core development machine it made VGG-11/32 inference 794 instead of 653 images/s at batch 256 and
3.0 instead of 7.2 ms at batch 1 (experiments/results/bench_inference*.json).

XLA reads its flags once, when JAX initializes its backends, so a flag must be set before the first
computation. jaxcnn never sets one by itself at import (that would surprise code that imports jaxcnn
as a library): ask for it with ``jaxcnn --xla-fast-cpu ...``, ``JAXCNN_XLA_FAST_CPU=1``, or
:func:`enable_fast_cpu` first thing in a program.
"""

from __future__ import annotations

import os

from jaxcnn.errors import JaxcnnError

__all__ = ["ENV", "FAST_CPU_FLAGS", "enable_fast_cpu", "fast_cpu_requested"]

FAST_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",)
ENV = "JAXCNN_XLA_FAST_CPU"


def fast_cpu_requested() -> bool:
    """Whether the environment asks for the flags (``JAXCNN_XLA_FAST_CPU=1``)."""
    return os.environ.get(ENV, "") not in ("", "0")


def enable_fast_cpu() -> None:
    """Add :data:`FAST_CPU_FLAGS` to ``XLA_FLAGS`` (once).

    Raises:
      JaxcnnError: JAX has already initialized its backends, so the flags could no longer apply.
    """
    try:
        from jax._src import xla_bridge

        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # pragma: no cover - a JAX without this probe
        started = False
    flags = os.environ.get("XLA_FLAGS", "").split()
    missing = [flag for flag in FAST_CPU_FLAGS if flag not in flags]
    if missing and started:
        raise JaxcnnError(
            "XLA flags must be set before JAX starts its backends, and it already has: call "
            "jaxcnn.xla_flags.enable_fast_cpu() (or set JAXCNN_XLA_FAST_CPU=1) before any computation")
    os.environ["XLA_FLAGS"] = " ".join([*flags, *missing])
