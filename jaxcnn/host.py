"""Host-process tuning that pays for XLA on CPU: glibc's malloc keeps the memory a step frees.

XLA's CPU runtime allocates every step's activations and temporaries afresh (tens of MB for the seed
CIFAR CNN at batch 128). With glibc's defaults, blocks above a dynamic threshold are ``mmap``-ed and
unmapped on ``free``, and the heap's top is trimmed back to the kernel, so every step touches new
pages and pays a page fault (and the kernel's zeroing) for each 4 KiB of them. Telling malloc to
keep that memory (``mallopt``: ``M_MMAP_THRESHOLD`` 32 MiB, its maximum; ``M_TRIM_THRESHOLD``
1 GiB; ``M_TOP_PAD`` 256 MiB) made one training step of the seed CIFAR CNN 17-21 ms instead of
33-35 ms on the 2-core development machine (experiments/bench_train.py measures it against
``--no-malloc-tuning``). The price is a resident set that does not shrink after a peak.

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
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
SETTINGS = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 256 << 20))


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
