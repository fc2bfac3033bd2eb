"""Host-process tuning that pays for XLA on CPU: glibc's malloc keeps the memory a step frees.

XLA's CPU runtime allocates every step's activations and temporaries afresh (tens to hundreds of MB
for the seed CIFAR CNN at batch 128). With glibc's defaults, large blocks are ``mmap``-ed and
unmapped on ``free`` and the heap's top is trimmed back to the kernel, so a step can touch new pages
and pay a page fault (and the kernel's zeroing) for each 4 KiB of them. Measured on the 2-core
development machine, with getrusage's minor faults, for one training step of the seed CIFAR CNN
run in turn with a hand-written Flax step (as the benchmark does): 14,890 faults and 32.7 ms a step
with the defaults, 0 faults and 24.2 ms with :data:`SETTINGS`; run alone, both settings see no faults
once warm (18-21 ms).

That held only for blocks under 64 MiB. XLA allocates from its worker threads, and glibc gives each
thread an arena of its own whose heaps are at most 64 MiB: a larger block (ResNet-20's 195 MiB of
temporaries at batch 128) is ``mmap``-ed there whatever ``M_MMAP_MAX`` says (glibc's ``sysmalloc``
falls back to ``mmap`` when a thread's arena cannot hold it) and unmapped when freed. Measured
(``strace`` and getrusage, one training step after warm-up): ResNet-20 at batch 128 took 49,970
minor faults and 258 ms a step, the MobileNetV2-style net 23,381 faults and 113 ms; with every thread
on the main arena (``M_ARENA_MAX`` 1) 0 faults, 206 ms and 101 ms, and the seed CIFAR CNN 18.6 ms
against 15.6 ms. One arena serializes the threads' ``malloc`` calls, of which XLA makes a few a
step. The arena limit holds for threads that have not allocated yet: tune before JAX starts its
thread pools (before the first computation).

The settings: one arena for every thread (``M_ARENA_MAX`` 1), no ``mmap`` for allocations (``M_MMAP_MAX`` 0, so every block
comes from a heap that keeps what is freed), ``M_MMAP_THRESHOLD`` 32 MiB (its maximum; it also turns
off glibc's dynamic threshold), ``M_TRIM_THRESHOLD`` 1 GiB, ``M_TOP_PAD`` 256 MiB. The price: a
resident set that does not shrink after a peak (up to the trim threshold of free memory is kept).

``mallopt`` may be called at any time, but it changes the whole process, so jaxcnn never calls it at
import: the ``jaxcnn`` command does (``--no-malloc-tuning`` or ``JAXCNN_MALLOC_TUNING=0`` to opt
out), and a program calls :func:`tune_malloc` itself. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["ENV", "malloc_tuning_requested", "tune_malloc"]

ENV = "JAXCNN_MALLOC_TUNING"
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -3, -4, -8  # glibc's malloc.h
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, 32 << 20), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30),
            (M_TOP_PAD, 256 << 20))


def malloc_tuning_requested() -> bool:
    """False where the environment opts out (``JAXCNN_MALLOC_TUNING=0``)."""
    return os.environ.get(ENV, "1") not in ("0", "", "false", "no")


def tune_malloc() -> bool:
    """Apply :data:`SETTINGS` with glibc's ``mallopt``; True when every setting was accepted, False
    where the C library is not glibc (macOS, musl, Windows) and nothing was changed."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - a Linux without a usable libc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
