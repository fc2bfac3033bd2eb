"""Atomic file writes: a file is either left as it was or replaced whole, never half-written; and
what kind of Keras model file a path holds (:func:`keras_file_kind`).

Every file jaxcnn writes outside orbax's checkpoints (configs, ``results.json``, ``metrics.jsonl``,
``curves.png``, export files) goes through :func:`atomic_path` or :func:`write_atomic`: the data goes
to a temporary file with a fresh random name in the target's folder, is flushed and ``fsync``-ed,
and ``os.replace`` puts it in place (atomic on POSIX and Windows); the folder is then ``fsync``-ed so
the rename itself survives a power cut. A failure or a kill at any point leaves the old file, and
a failure removes the temporary file.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
from collections.abc import Iterator

__all__ = ["atomic_path", "from_config", "keras_file_kind", "write_atomic"]


def _fresh_temp(target: pathlib.Path) -> tuple[pathlib.Path, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            return temp, os.open(temp, flags, 0o666)  # the umask applies, as for an ordinary file
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {target}")  # pragma: no cover


def _fsync_folder(folder: pathlib.Path) -> None:
    if os.name != "posix":  # pragma: no cover - Windows cannot open a folder
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[pathlib.Path]:
    """A temporary path to write ``target``'s new content to (by any writer that takes a path:
    ``zipfile``, ``savefig``); on leaving the block it is synced and renamed onto ``target``.

    Raises:
      IsADirectoryError: ``target`` is a folder (nothing is written).
    """
    target = pathlib.Path(target)
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a folder, not a file")
    temp, fd = _fresh_temp(target)
    os.close(fd)
    try:
        yield temp
        with open(temp, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_folder(target.parent)


def write_atomic(target: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace ``target`` with ``data`` (``str`` is written as UTF-8), atomically."""
    with atomic_path(target) as temp:
        temp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def keras_file_kind(path: str) -> str | None:
    """``"keras"`` for a Keras 3 ``.keras`` archive (a zip), ``"h5"`` for an HDF5 file (a legacy
    full model, or a weights file), by their first bytes; ``None`` for text (a config, Keras JSON)
    or a file that cannot be read (reported by the text reader)."""
    try:
        with open(path, "rb") as file:
            head = file.read(8)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "keras"
    if head == b"\x89HDF\r\n\x1a\n":
        return "h5"
    return None


def from_config(path: str | os.PathLike[str], source: str) -> pathlib.Path:
    """``path`` as a config at ``source`` writes it: a relative one is taken from that config's folder
    when ``source`` is a file path (not ``<config>``, ``<dict>``, ...), else as it stands."""
    p = pathlib.Path(path).expanduser()
    if p.is_absolute() or (source.startswith("<") and source.endswith(">")):
        return p
    return pathlib.Path(source).expanduser().parent / p
