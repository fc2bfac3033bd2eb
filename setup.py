"""Builds jaxcnn's optional oneDNN extension (csrc/*.cc -> jaxcnn/_onednn_ffi*.so, a plain shared
library that jaxcnn.onednn loads with ctypes) and never lets it fail the install.

oneDNN's headers and library come from the ``onednn-devel-cpu-gomp`` and ``onednn-cpu-gomp`` wheels of
the build environment (pyproject.toml's build requirements), found through importlib.metadata. No
x86-64 Linux, no wheels, no compiler, a compile error, or ``JAXCNN_NO_EXTENSION=1``: a warning, and
jaxcnn installs without the extension (``jaxcnn.onednn.available()`` is then False with the reason).
The rest of the package's metadata is in pyproject.toml.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"


def _wheel_file(dist: str, suffix: str) -> Path:
    """The installed file of wheel ``dist`` whose path ends with ``suffix``."""
    found = metadata.distribution(dist)
    for file in found.files or ():
        if str(file).replace("\\", "/").endswith(suffix):
            return Path(str(found.locate_file(file))).resolve()
    raise FileNotFoundError(f"{dist} has no {suffix}")


def _skip_reason() -> str | None:
    if os.environ.get("JAXCNN_NO_EXTENSION", "") not in ("", "0"):
        return "JAXCNN_NO_EXTENSION is set"
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"it is built for x86-64 Linux only, not {sys.platform} {platform.machine()}"
    return None


def _extension() -> Extension:
    """The extension, its include and library paths filled in at build time (see OptionalBuildExt)."""
    return Extension(
        "jaxcnn._onednn_ffi",
        sources=sorted(str(p.relative_to(HERE)) for p in CSRC.glob("*.cc")),
        include_dirs=["csrc", "csrc/third_party"],
        extra_compile_args=["-std=c++17", "-O3", "-g0", "-fvisibility=hidden", "-w"],
        language="c++",
    )


class OptionalBuildExt(build_ext):
    """build_ext that turns every failure into a warning: the extension is optional."""

    def run(self) -> None:
        reason = _skip_reason()
        if reason is None:
            try:
                self._locate_onednn()
                super().run()
                return
            except Exception as e:  # noqa: BLE001 - any failure leaves jaxcnn without the extension
                reason = f"{type(e).__name__}: {e}"
        self._skipped(reason)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            self._skipped(f"{type(e).__name__}: {e}")

    def get_outputs(self) -> list[str]:
        return [path for path in super().get_outputs() if os.path.exists(path)]

    def _locate_onednn(self) -> None:
        header = _wheel_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
        library = _wheel_file("onednn-cpu-gomp", "libdnnl.so.3")
        for ext in self.extensions:
            ext.include_dirs.append(str(header.parents[2]))
            ext.library_dirs.append(str(library.parent))
            ext.libraries.append(":libdnnl.so.3")

    def _skipped(self, reason: str) -> None:
        message = f"jaxcnn: the oneDNN extension is not built ({' '.join(reason.split())}); jaxcnn works without it"
        print(f"WARNING: {message}", file=sys.stderr)
        self.warn(message)


setup(ext_modules=[_extension()], cmdclass={"build_ext": OptionalBuildExt})
