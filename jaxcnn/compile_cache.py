"""The persistent compilation cache: a second run of the same model loads its compiled steps from disk.

XLA compiles each jitted step the first time it runs (for the seed CIFAR CNN's training step on the
2-core development machine, most of the first step's time). JAX can keep the compiled executables in
a folder and load them in a later process whose program, shapes, JAX version, XLA flags and device are
the same (the cache key covers them all; jax/_src/cache_key.py). On CPU this works in jax 0.10.2
(its ``is_cache_used`` lists "cpu"); what JAX does not enable by itself is the folder.

The ``jaxcnn`` command turns it on at start-up (:func:`enable`), in ``$XDG_CACHE_HOME/jaxcnn/xla``
(``~/.cache/jaxcnn/xla`` without ``XDG_CACHE_HOME``). The environment variable
``JAXCNN_COMPILATION_CACHE`` names another folder, or turns it off (``0``, ``off``, ``false``,
``no``). A cache that JAX was given directly (``JAX_COMPILATION_CACHE_DIR`` or
``jax.config.update("jax_compilation_cache_dir", ...)``) is left as it is. Like the malloc tuning of
:mod:`jaxcnn.host`, this changes the whole process, so importing jaxcnn never does it; a program
calls :func:`enable` itself.

Every program that takes at least :data:`MIN_COMPILE_SECONDS` to compile is written (JAX's default
is 1 s, which would leave out the training step of a small model: 0.8 s for a one-convolution digits
model here, and its evaluation step, 0.13 s). Measured on the 2-core development machine (shared,
so noisy), the seed CIFAR CNN's first Adam step at batch 128 took 2.1-6.2 s compiled and 0.4-0.9 s
loaded from the cache (tracing, lowering and the cache key remain), its initialization 4.7-12.8 s
against 2.2-5.6 s.

The key names the device kind ("cpu"), not the processor's instruction set: where a home folder is
shared between machines of different CPUs, point ``JAXCNN_COMPILATION_CACHE`` at a folder per
machine. The folder is not pruned (JAX's size limit needs the ``filelock`` package, which jaxcnn
does not require): delete it at will; entries are rebuilt on the next run. :class:`CacheEvents`
counts JAX's own cache hits and misses over a block of code, which the fit loop uses to record
whether the first step's program came from the cache (``results.json``: ``first_step_cache``).
"""

from __future__ import annotations

import os
import pathlib
from types import TracebackType

__all__ = ["ENV", "MIN_COMPILE_SECONDS", "CacheEvents", "default_directory", "enable", "requested_directory"]

ENV = "JAXCNN_COMPILATION_CACHE"
MIN_COMPILE_SECONDS = 0.1
_OFF = ("0", "off", "false", "no")
_HIT, _MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"


def default_directory() -> pathlib.Path:
    """``$XDG_CACHE_HOME/jaxcnn/xla``, or ``~/.cache/jaxcnn/xla`` where ``XDG_CACHE_HOME`` is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "jaxcnn" / "xla"


def requested_directory() -> pathlib.Path | None:
    """The folder the environment asks for: ``JAXCNN_COMPILATION_CACHE`` (``None`` when it says off),
    else :func:`default_directory`."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in _OFF:
        return None
    return pathlib.Path(value).expanduser() if value else default_directory()


def enable(path: str | os.PathLike[str] | None = None) -> pathlib.Path | None:
    """Point JAX's persistent compilation cache at ``path`` (default: :func:`requested_directory`).

    Call it before the first computation of the process (JAX sets its cache up once). Returns the
    folder in use: the one JAX was already given, if any (left unchanged), else ``path``; ``None``
    where the environment turns the cache off and no path is given.
    """
    import jax

    given = jax.config.jax_compilation_cache_dir
    if given:
        return pathlib.Path(given)
    folder = pathlib.Path(path) if path is not None else requested_directory()
    if folder is None:
        return None
    jax.config.update("jax_compilation_cache_dir", os.fspath(folder))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return folder


class CacheEvents:
    """Counts JAX's persistent-cache hits and misses (``jax.monitoring`` events) while the block runs::

        with CacheEvents() as events:
            state, metrics = compiled.train_step(state, batch)
        events.outcome  # "hit", "miss" or "off"
    """

    def __init__(self) -> None:
        self.hits = self.misses = 0

    def _listen(self, event: str, **_: object) -> None:
        if event == _HIT:
            self.hits += 1
        elif event == _MISS:
            self.misses += 1

    def __enter__(self) -> CacheEvents:
        import jax

        jax.monitoring.register_event_listener(self._listen)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        import jax

        jax.monitoring.unregister_event_listener(self._listen)

    @property
    def outcome(self) -> str:
        """``"miss"`` if any program was compiled afresh, else ``"hit"`` if any came from the cache,
        else ``"off"`` (the cache was not consulted: disabled, or nothing was compiled)."""
        if self.misses:
            return "miss"
        return "hit" if self.hits else "off"
