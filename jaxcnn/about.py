"""What this machine gives jaxcnn (``jaxcnn info``): the versions, JAX's backend and devices, whether
the oneDNN extension is available (or why not), and which lowerings (:mod:`jaxcnn.lowerings`) the
modules built here may use. Asking starts JAX's backends (to list the devices)."""

from __future__ import annotations

import platform
from typing import Any

from jaxcnn.errors import plural

__all__ = ["about", "about_text"]

# The layers a lowering applies to, as ``about()["lowerings"]`` keys and ``about_text`` labels.
_GROUPS = {
    "convolution": "Conv2D",
    "unpatched": "grouped Conv2D, Conv2DTranspose",
    "depthwise": "DepthwiseConv2D, SeparableConv2D",
    "pooling": "MaxPooling2D, AveragePooling2D",
}


def about() -> dict[str, Any]:
    """``{"jaxcnn", "python", "jax", "jaxlib", "flax", "backend", "devices", "onednn", "lowerings"}``:
    versions (strings), the default backend's name, its devices (strings), :func:`jaxcnn.onednn.info`,
    and per group of layers (``"convolution"``, ``"unpatched"``, ``"depthwise"``, ``"pooling"``) the lowerings a module
    built in this process may use (:meth:`jaxcnn.lowerings.LoweringContext.of_process`)."""
    import flax
    import jax
    import jaxlib

    from jaxcnn import __version__, lowerings, onednn

    context = lowerings.LoweringContext.of_process()
    groups = {"convolution": lowerings.CONV_LOWERINGS, "unpatched": lowerings.UNPATCHED_LOWERINGS,
              "depthwise": lowerings.DEPTHWISE_LOWERINGS, "pooling": lowerings.POOL_LOWERINGS}
    return {
        "jaxcnn": __version__,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.version.__version__,
        "flax": flax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(device) for device in jax.devices()],
        "onednn": onednn.info(),
        "lowerings": {group: [name for name in names if name != "auto" and (name != "onednn" or context.onednn)]
                      for group, names in groups.items()},
    }


def about_text(facts: dict[str, Any]) -> str:
    """:func:`about`'s facts as the lines ``jaxcnn info`` prints."""
    from jaxcnn.lowerings import display_name

    dnn = facts["onednn"]
    if dnn["available"]:
        kernels = "with" if dnn["bfloat16"] else "without"
        onednn_line = f"available: oneDNN {dnn['onednn_version']}, ISA {dnn['isa']}, {kernels} bfloat16 kernels"
    else:
        onednn_line = f"not available: {dnn['reason']}"
    lines = [
        (f"jaxcnn {facts['jaxcnn']} (Python {facts['python']}; jax {facts['jax']}, jaxlib {facts['jaxlib']}, "
         f"flax {facts['flax']})"),
        f"backend: {facts['backend']}, {plural(len(facts['devices']), 'device')}: {', '.join(facts['devices'])}",
        f"oneDNN extension: {onednn_line}",
        "lowerings here:",
    ]
    for group, label in _GROUPS.items():
        names = ", ".join(display_name(name) for name in facts["lowerings"][group])
        lines.append(f"  {label}: {names}")
    return "\n".join(lines)
